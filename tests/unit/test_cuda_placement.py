"""Which GPU a restored or forked GPU kernel's state goes onto: the GPU UUIDs a dump records
(from a fake /proc), the restore arguments' layout (ctypes, and a stand-in libcuda reading
them from C), a stand-in NVML, and the placement policy. No GPU: nothing here has run against
real hardware (see docs/gpu.md, "Forks and placement")."""

from __future__ import annotations

import ctypes
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
from jusnap.config import GpuSettings
from jusnap.errors import Refused
from jusnap.hooks import HookSet
from jusnap.hooks.cuda.driver import (
    GPU_PAIRS_MIN_DRIVER_API,
    CUcheckpointGpuPair,
    CUcheckpointRestoreArgs,
    CudaDriver,
    ProcessState,
    restore_args,
    uuid_bytes,
)
from jusnap.hooks.cuda.hook import CudaHook
from jusnap.hooks.cuda.nvml import Nvml, NvmlMemory, NvmlUnavailable
from jusnap.hooks.cuda.placement import CONTEXT_MARGIN_BYTES, NoRoom, needed_bytes, plan
from jusnap.hooks.cuda.procfs import GpuInfo, GpuSystem

from tests.unit.test_cuda_hook import PID, UUID0, Clock, FakeDriver, FakeMemory, FakeProc

GIB = 1024**3
H200 = "NVIDIA H200"
H100 = "NVIDIA H100 80GB HBM3"
UUID1 = "GPU-11111111-2222-3333-4444-555555555555"
UUID2 = "GPU-22222222-3333-4444-5555-666666666666"
UUID3 = "GPU-33333333-4444-5555-6666-777777777777"
NEW_API = GPU_PAIRS_MIN_DRIVER_API
OLD_API = 12080


def gpu(uuid: str, model: str = H200, minor: int = 0) -> GpuInfo:
    return GpuInfo(pci=f"0000:00:0{minor}.0", model=model, uuid=uuid, minor=minor)


def meta(gib: float = 12.0, uuids: list[str] | None = None, model: str = H200) -> dict:
    return {
        "gpu_model": model,
        "gpu_uuids": [UUID0] if uuids is None else uuids,
        "gpu_memory_bytes": int(gib * GIB),
    }


# --- UUIDs and the restore arguments --------------------------------------------------------


def test_uuid_bytes() -> None:
    raw = uuid_bytes("GPU-5f2c7b4e-1a2b-3c4d-5e6f-0123456789ab")
    assert raw == bytes.fromhex("5f2c7b4e1a2b3c4d5e6f0123456789ab")
    assert len(raw) == 16
    assert uuid_bytes("GPU-" + UUID0[4:].upper()) == raw  # hex case does not matter


@pytest.mark.parametrize(
    "bad",
    [
        "5f2c7b4e-1a2b-3c4d-5e6f-0123456789ab",  # no GPU- prefix
        "MIG-5f2c7b4e-1a2b-3c4d-5e6f-0123456789ab",  # a MIG instance
        "GPU-5f2c7b4e-1a2b-3c4d-5e6f-0123456789",  # short
        "GPU-5f2c7b4e1a2b3c4d5e6f0123456789ab",  # no dashes
        "GPU-zf2c7b4e-1a2b-3c4d-5e6f-0123456789ab",  # not hex
        "",
    ],
)
def test_uuid_bytes_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="not a GPU UUID"):
        uuid_bytes(bad)


def test_restore_args_layout() -> None:
    assert ctypes.sizeof(CUcheckpointRestoreArgs) == 64
    assert CUcheckpointRestoreArgs.gpuPairs.offset == 0
    assert CUcheckpointRestoreArgs.gpuPairsCount.offset == 8
    assert ctypes.sizeof(CUcheckpointGpuPair) == 32
    assert CUcheckpointGpuPair.oldUuid.offset == 0
    assert CUcheckpointGpuPair.newUuid.offset == 16


def test_restore_args_content() -> None:
    args, pairs = restore_args([(UUID0, UUID1), (UUID2, UUID2)])
    raw = bytes(args)
    assert raw[8:12] == (2).to_bytes(4, "little")
    assert raw[12:] == bytes(52)  # reserved: zero
    assert ctypes.addressof(args.gpuPairs.contents) == ctypes.addressof(pairs)
    assert bytes(pairs[0]) == uuid_bytes(UUID0) + uuid_bytes(UUID1)
    assert bytes(pairs[1]) == uuid_bytes(UUID2) * 2


# A stand-in libcuda whose cuCheckpointProcessRestore reports what it was given, read the way
# a C caller of the documented struct reads it.
FAKE_LIBCUDA = r"""
#include <stdio.h>
#include <string.h>
typedef struct { unsigned char b[16]; } Uuid;
typedef struct { Uuid oldUuid, newUuid; } Pair;
typedef struct { Pair *gpuPairs; unsigned int gpuPairsCount; char reserved[52]; } RestoreArgs;
static char seen[512];
const char *jusnap_seen(void) { return seen; }
int cuDriverGetVersion(int *v) { *v = 13010; return 0; }
int cuInit(unsigned f) { return 0; }
int cuGetErrorString(int e, const char **s) { *s = "bad"; return 0; }
int cuCheckpointProcessGetState(int pid, int *s) { *s = 0; return 0; }
int cuCheckpointProcessLock(int pid, void *a) { return 0; }
int cuCheckpointProcessCheckpoint(int pid, void *a) { return 0; }
int cuCheckpointProcessUnlock(int pid, void *a) { return 0; }
int cuCheckpointProcessRestore(int pid, RestoreArgs *a) {
  static const char zero[52];
  int n = 0;
  if (!a) { snprintf(seen, sizeof seen, "restore %d NULL", pid); return 0; }
  n = snprintf(seen, sizeof seen, "restore %d %zu %u %d", pid, sizeof *a, a->gpuPairsCount,
               !memcmp(a->reserved, zero, sizeof zero));
  for (unsigned i = 0; i < a->gpuPairsCount; i++) {
    n += snprintf(seen + n, sizeof seen - n, " ");
    for (int j = 0; j < 16; j++) n += snprintf(seen + n, sizeof seen - n, "%02x",
                                               a->gpuPairs[i].oldUuid.b[j]);
    n += snprintf(seen + n, sizeof seen - n, ">");
    for (int j = 0; j < 16; j++) n += snprintf(seen + n, sizeof seen - n, "%02x",
                                               a->gpuPairs[i].newUuid.b[j]);
  }
  return 0; }
"""

FAKE_NVML = r"""
#include <string.h>
typedef struct { unsigned long long total, free, used; } Memory;
static int inits, shutdowns, fail_init;
int jusnap_inits(void) { return inits - shutdowns; }
void jusnap_fail_init(int f) { fail_init = f; }
int nvmlInit_v2(void) { if (fail_init) return 9; inits++; return 0; }
int nvmlShutdown(void) { shutdowns++; return 0; }
int nvmlDeviceGetHandleByUUID(const char *uuid, void **h) {
  if (!strcmp(uuid, "GPU-11111111-2222-3333-4444-555555555555")) { *h = (void *)1; return 0; }
  if (!strcmp(uuid, "GPU-22222222-3333-4444-5555-666666666666")) { *h = (void *)2; return 0; }
  return 6; /* NVML_ERROR_NOT_FOUND */ }
int nvmlDeviceGetMemoryInfo(void *h, Memory *m) {
  m->total = 150ULL << 30; m->free = (unsigned long long)(long)h * (10ULL << 30);
  m->used = m->total - m->free; return 0; }
"""


def _build(tmp_path_factory: pytest.TempPathFactory, name: str, source: str) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build a stand-in library")
    d = tmp_path_factory.mktemp(name)
    (d / "fake.c").write_text(source)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(d / name), str(d / "fake.c")], check=True)
    return d / name


@pytest.fixture(scope="module")
def fake_libcuda(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory, "libcuda.so.1", FAKE_LIBCUDA)


@pytest.fixture(scope="module")
def fake_nvml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory, "libnvidia-ml.so.1", FAKE_NVML)


def test_driver_restore_with_pairs_as_c_sees_it(fake_libcuda: Path) -> None:
    drv = CudaDriver(str(fake_libcuda))
    seen = ctypes.CDLL(str(fake_libcuda))
    seen.jusnap_seen.restype = ctypes.c_char_p
    drv.restore(7)
    assert seen.jusnap_seen() == b"restore 7 NULL"  # no pairs: exactly the old call
    drv.restore(7, [(UUID0, UUID1)])
    old, new = uuid_bytes(UUID0).hex(), uuid_bytes(UUID1).hex()
    assert seen.jusnap_seen() == f"restore 7 64 1 1 {old}>{new}".encode()


def test_nvml_free_bytes(fake_nvml: Path) -> None:
    nvml = Nvml(str(fake_nvml))
    assert ctypes.sizeof(NvmlMemory) == 24
    free = nvml.free_bytes([UUID1, UUID2, UUID3])
    assert free == {UUID1: 10 * GIB, UUID2: 20 * GIB}  # UUID3: unknown to NVML, left out
    lib = ctypes.CDLL(str(fake_nvml))
    assert lib.jusnap_inits() == 0  # shut down again: the daemon keeps no NVML handle


def test_nvml_init_fails(fake_nvml: Path) -> None:
    lib = ctypes.CDLL(str(fake_nvml))
    lib.jusnap_fail_init(1)
    try:
        with pytest.raises(NvmlUnavailable, match="nvmlInit_v2 failed"):
            Nvml(str(fake_nvml)).free_bytes([UUID1])
    finally:
        lib.jusnap_fail_init(0)


def test_nvml_missing_library() -> None:
    with pytest.raises(NvmlUnavailable, match="cannot load"):
        Nvml("/nonexistent/libnvidia-ml.so.1").free_bytes([UUID1])


# --- /proc: which GPUs a process uses -------------------------------------------------------


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    p = FakeProc(tmp_path)
    p.add_gpu("0000:00:07.0", H200, UUID1, 1)
    p.add_gpu("0000:00:08.0", H100, UUID2, 2)
    return p


def test_gpus_from_proc(proc: FakeProc) -> None:
    system = GpuSystem(proc.proc, proc.dev)
    assert system.gpus() == [
        GpuInfo("0000:00:06.0", H200, UUID0, 0),
        GpuInfo("0000:00:07.0", H200, UUID1, 1),
        GpuInfo("0000:00:08.0", H100, UUID2, 2),
    ]
    assert system.gpu_models() == [H200, H200, H100]


def test_gpu_uuids_of_a_process(proc: FakeProc) -> None:
    system = GpuSystem(proc.proc, proc.dev)
    assert system.gpu_uuids(PID) == [UUID0]  # nvidiactl, nvidia-uvm, nvidia-caps: not GPUs
    base = proc.add_process(77, gpu=False)
    for n, dev in enumerate(
        ["/dev/nvidia2", "/dev/nvidiactl", "/dev/nvidia-modeset", "/dev/nvidia1", "/dev/nvidia9"],
        20,
    ):
        (base / f"fd/{n}").symlink_to(dev)
    assert system.gpu_uuids(77) == [UUID1, UUID2]  # minor order; minor 9 is no GPU: left out
    assert system.gpu_uuids(78) == []  # gone
    proc.drop_gpu_files(77)
    assert system.gpu_uuids(77) == []


def test_gpu_info_without_uuid_lines(tmp_path: Path) -> None:
    # An older driver's information file: no UUID/minor lines, so no UUIDs (placement off).
    info = tmp_path / "driver/nvidia/gpus/0000:00:06.0/information"
    info.parent.mkdir(parents=True)
    info.write_text("Model: \t\t NVIDIA H200\nIRQ: \t\t 42\n")
    system = GpuSystem(tmp_path, tmp_path)
    assert system.gpus() == [GpuInfo("0000:00:06.0", H200, None, None)]


# --- the policy (pure) ----------------------------------------------------------------------


def test_margin() -> None:
    assert (
        needed_bytes({"gpu_memory_bytes": 10 * GIB}) == 10 * GIB + GIB // 2 + CONTEXT_MARGIN_BYTES
    )
    assert needed_bytes({"gpu_memory_bytes": None}) == CONTEXT_MARGIN_BYTES
    assert needed_bytes({}) == CONTEXT_MARGIN_BYTES


def test_same_gpu_has_room() -> None:
    p = plan(
        meta(12), [gpu(UUID0), gpu(UUID1, minor=1)], {UUID0: 20 * GIB, UUID1: 100 * GIB}, NEW_API
    )
    assert p.pairs == ()  # as recorded, NULL args, even though UUID1 has more free
    assert not p.moved
    assert UUID0 in p.where


def test_moves_to_the_freest_same_model_gpu() -> None:
    gpus = [gpu(UUID0), gpu(UUID1, minor=1), gpu(UUID2, minor=2), gpu(UUID3, H100, 3)]
    free = {UUID0: 2 * GIB, UUID1: 20 * GIB, UUID2: 40 * GIB, UUID3: 80 * GIB}
    p = plan(meta(12), gpus, free, NEW_API)
    assert p.pairs == ((UUID0, UUID2),)  # the H100 has more free, but is another chip
    assert p.moved
    assert f"{UUID0} moved to {UUID2}" in p.where


def test_recorded_gpu_absent_moves() -> None:
    p = plan(meta(12), [gpu(UUID1, minor=1)], {UUID1: 20 * GIB}, NEW_API)
    assert p.pairs == ((UUID0, UUID1),)


def test_margin_decides() -> None:
    # 12 GiB recorded needs 12 + 0.6 + 0.5 GiB: 12.9 GiB free is too little.
    free = {UUID0: int(12.9 * GIB), UUID1: int(13.2 * GIB)}
    assert plan(meta(12), [gpu(UUID0), gpu(UUID1, minor=1)], free, NEW_API).pairs == (
        (UUID0, UUID1),
    )


def test_refuses_when_no_gpu_fits() -> None:
    gpus = [gpu(UUID0), gpu(UUID1, minor=1), gpu(UUID3, H100, 3)]
    free = {UUID0: 2 * GIB, UUID1: 3 * GIB, UUID3: 80 * GIB}
    with pytest.raises(NoRoom) as info:
        plan(meta(11.2), gpus, free, NEW_API)
    text = str(info.value)
    assert text.startswith("no NVIDIA H200 has 12.3 GiB free for this snapshot's GPU memory: ")
    assert f"{UUID0} (recorded) 2.0 GiB free" in text
    assert f"{UUID1} 3.0 GiB free" in text
    assert UUID3 not in text  # another model is no candidate
    assert "\n" not in text


def test_old_driver_cannot_move() -> None:
    free = {UUID0: 2 * GIB, UUID1: 40 * GIB}
    with pytest.raises(NoRoom, match=r"CUDA 12\.8\) cannot restore onto another GPU \(CUDA 13\.1"):
        plan(meta(12), [gpu(UUID0), gpu(UUID1, minor=1)], free, OLD_API)
    with pytest.raises(NoRoom, match="is not on this machine"):
        plan(meta(12), [gpu(UUID1, minor=1)], {UUID1: 40 * GIB}, OLD_API)


def test_old_snapshot_without_uuids_restores_as_recorded() -> None:
    old = {"gpu_model": H200, "gpu_memory_bytes": 50 * GIB}  # before gpu_uuids existed
    p = plan(old, [gpu(UUID0)], {UUID0: GIB}, NEW_API)
    assert p.pairs == ()
    assert plan({**old, "gpu_uuids": []}, [gpu(UUID0)], {UUID0: GIB}, NEW_API).pairs == ()


def test_nvml_missing_restores_as_recorded() -> None:
    p = plan(meta(12), [gpu(UUID0), gpu(UUID1, minor=1)], None, NEW_API)
    assert p.pairs == ()
    assert "free memory unknown" in p.where


def test_several_gpus_restore_as_recorded() -> None:
    p = plan(
        meta(12, [UUID0, UUID1]), [gpu(UUID0), gpu(UUID1, minor=1)], {UUID0: 0, UUID1: 0}, NEW_API
    )
    assert p.pairs == ()


def test_unknown_free_of_recorded_gpu_restores_as_recorded() -> None:
    # NVML answered, but not about this GPU: nothing says it is full.
    assert plan(meta(12), [gpu(UUID0), gpu(UUID1, minor=1)], {UUID1: 40 * GIB}, NEW_API).pairs == ()


# --- the hook: dump records, fork preflight refuses, after_restore places ---------------------


@pytest.fixture
def driver(proc: FakeProc) -> FakeDriver:
    d = FakeDriver(version=NEW_API)
    d.after["checkpoint"] = proc.drop_gpu_files
    return d


@pytest.fixture
def memory() -> FakeMemory:
    return FakeMemory({UUID0: 2 * GIB, UUID1: 40 * GIB, UUID2: 80 * GIB})


@pytest.fixture
def hook(proc: FakeProc, driver: FakeDriver, memory: FakeMemory) -> CudaHook:
    return CudaHook(
        GpuSettings(),
        driver=driver,
        system=GpuSystem(proc.proc, proc.dev),
        clock=Clock(),
        memory=memory,
    )


def restore_meta(gib: float = 12.0) -> dict:
    return {**meta(gib), "driver_version": "580.159.04", "driver_api": NEW_API}


def test_dump_records_the_gpu_used(hook: CudaHook, proc: FakeProc) -> None:
    base = proc.proc / str(PID) / "fd"
    (base / "11").unlink()  # /dev/nvidia0
    (base / "11").symlink_to("/dev/nvidia1")  # the kernel uses GPU 1, not GPU 0
    (proc.proc / str(PID) / "maps").write_text("")
    with hook.around_dump(PID) as m:
        assert m["gpu_uuids"] == [UUID1]
        assert m["gpu_model"] == H200


def test_dump_records_the_used_gpus_model(hook: CudaHook, proc: FakeProc) -> None:
    base = proc.proc / str(PID) / "fd"
    (base / "11").unlink()  # /dev/nvidia0
    (base / "11").symlink_to("/dev/nvidia2")
    (proc.proc / str(PID) / "maps").write_text("")
    with hook.around_dump(PID) as m:
        assert m["gpu_uuids"] == [UUID2]
        assert m["gpu_model"] == H100  # not the machine's first GPU's model


def test_fork_preflight_refuses_before_anything(hook: CudaHook, memory: FakeMemory) -> None:
    memory.free = {UUID0: 2 * GIB, UUID1: 3 * GIB, UUID2: 80 * GIB}
    with pytest.raises(Refused) as info:
        hook.preflight_restore(restore_meta(11.2), beside=True)
    assert info.value.http_status == 422
    text = str(info.value)
    assert "no NVIDIA H200 has 12.3 GiB free for this snapshot's GPU memory" in text
    assert "\n" not in text


def test_fork_preflight_through_the_hookset(hook: CudaHook, memory: FakeMemory) -> None:
    memory.free = {UUID0: GIB, UUID1: GIB}
    hooks = HookSet([hook])
    with pytest.raises(Refused, match="no NVIDIA H200 has"):
        hooks.preflight_restore({"cuda": restore_meta()}, beside=True)
    hooks.preflight_restore({"cuda": restore_meta()})  # in place: decided after the restore


def test_fork_preflight_accepts_a_move(hook: CudaHook, driver: FakeDriver) -> None:
    hook.preflight_restore(restore_meta(), beside=True)
    assert driver.names() == []  # asks the driver its version only


def test_restore_in_place_preflight_does_not_judge_memory(
    hook: CudaHook, memory: FakeMemory
) -> None:
    # The kernel being replaced still holds its GPU memory now; it is freed before after_restore.
    memory.free = {UUID0: 0, UUID1: 0}
    hook.preflight_restore(restore_meta())


def test_after_restore_as_recorded(
    hook: CudaHook, driver: FakeDriver, memory: FakeMemory, caplog: pytest.LogCaptureFixture
) -> None:
    memory.free = {UUID0: 40 * GIB, UUID1: 80 * GIB}
    driver.states[PID] = ProcessState.CHECKPOINTED
    with caplog.at_level(logging.INFO, logger="jusnap.hooks.cuda.hook"):
        hook.after_restore(PID, restore_meta())
    assert ("restore", PID) in driver.calls  # NULL args: no pairs recorded
    assert driver.names() == ["restore", "unlock", "get_state"]
    assert hook.last_placement is not None and not hook.last_placement.moved
    assert f"CUDA state restored onto {UUID0} as recorded" in caplog.text


def test_after_restore_moves(
    hook: CudaHook, driver: FakeDriver, caplog: pytest.LogCaptureFixture
) -> None:
    driver.states[PID] = ProcessState.CHECKPOINTED
    with caplog.at_level(logging.INFO, logger="jusnap.hooks.cuda.hook"):
        hook.after_restore(PID, restore_meta())
    assert ("restore", PID, ((UUID0, UUID1),)) in driver.calls  # UUID2 is an H100
    assert driver.states[PID] == ProcessState.RUNNING
    assert hook.last_placement is not None and hook.last_placement.moved
    assert f"CUDA state restored onto {UUID0} moved to {UUID1}" in caplog.text


def test_after_restore_without_room_lets_the_driver_decide(
    hook: CudaHook, driver: FakeDriver, memory: FakeMemory, caplog: pytest.LogCaptureFixture
) -> None:
    memory.free = {UUID0: GIB, UUID1: GIB}
    driver.states[PID] = ProcessState.CHECKPOINTED
    with caplog.at_level(logging.INFO, logger="jusnap.hooks.cuda.hook"):
        hook.after_restore(PID, restore_meta())
    assert ("restore", PID) in driver.calls  # as before placement existed
    assert "no NVIDIA H200 has" in caplog.text


def test_after_restore_nvml_missing(
    hook: CudaHook, driver: FakeDriver, memory: FakeMemory, caplog: pytest.LogCaptureFixture
) -> None:
    memory.free = None
    driver.states[PID] = ProcessState.CHECKPOINTED
    with caplog.at_level(logging.INFO, logger="jusnap.hooks.cuda.hook"):
        hook.after_restore(PID, restore_meta())
    assert ("restore", PID) in driver.calls
    assert "no free-memory figures (cannot load libnvidia-ml.so.1" in caplog.text


def test_after_restore_old_snapshot(hook: CudaHook, driver: FakeDriver) -> None:
    driver.states[PID] = ProcessState.CHECKPOINTED
    old = {"gpu_model": H200, "driver_version": "580.159.04", "gpu_memory_bytes": 99 * GIB}
    hook.after_restore(PID, old)
    assert ("restore", PID) in driver.calls


def test_after_restore_old_driver_stays(hook: CudaHook, driver: FakeDriver) -> None:
    driver._version = OLD_API  # the snapshot's GPU is full, but this driver cannot move it
    driver.states[PID] = ProcessState.CHECKPOINTED
    hook.after_restore(PID, restore_meta())
    assert ("restore", PID) in driver.calls


def test_bad_recorded_uuid_restores_as_recorded() -> None:
    bad = {**meta(12), "gpu_uuids": ["MIG-5f2c7b4e-1a2b-3c4d-5e6f-0123456789ab"]}
    assert plan(bad, [gpu(UUID1, minor=1)], {UUID1: 40 * GIB}, NEW_API).pairs == ()
    assert plan({**meta(12), "gpu_uuids": "GPU-x"}, [], {}, NEW_API).pairs == ()


def test_a_gpu_with_a_bad_uuid_is_no_target() -> None:
    gpus = [gpu(UUID0), gpu("GPU-garbage", minor=1), gpu(UUID1, minor=2)]
    free = {UUID0: GIB, "GPU-garbage": 99 * GIB, UUID1: 20 * GIB}
    assert plan(meta(12), gpus, free, NEW_API).pairs == ((UUID0, UUID1),)


def test_nvml_is_asked_only_when_it_matters(
    hook: CudaHook, driver: FakeDriver, memory: FakeMemory
) -> None:
    driver.states[PID] = ProcessState.CHECKPOINTED
    hook.after_restore(PID, {"gpu_model": H200, "driver_version": "580.159.04"})
    driver.states[PID] = ProcessState.CHECKPOINTED
    hook.after_restore(PID, {**restore_meta(), "gpu_uuids": [UUID0, UUID1]})
    assert memory.asked == []  # old snapshot, several GPUs: the policy needs no figures
    driver.states[PID] = ProcessState.CHECKPOINTED
    hook.after_restore(PID, restore_meta())
    assert memory.asked == [[UUID0, UUID1, UUID2]]
    assert "placement_seconds" in hook.last_timings


def test_hookset_keeps_hooks_without_beside() -> None:
    """A hook written before ``beside`` existed still takes a restore in place."""
    from jusnap.hooks import CheckpointHook

    seen: list[dict] = []

    class Old(CheckpointHook):
        name = "old"

        def detect(self, pid: int) -> bool:
            return False

        def around_dump(self, pid: int):  # type: ignore[override]
            raise NotImplementedError

        def preflight_restore(self, meta: dict) -> None:  # type: ignore[override]
            seen.append(meta)

    HookSet([Old()]).preflight_restore({"old": {"x": 1}})
    assert seen == [{"x": 1}]
