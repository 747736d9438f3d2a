"""CudaHook sequencing and refusals, with a fake CUDA driver and a fake /proc tree (no GPU)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
from jusnap.config import GpuSettings
from jusnap.errors import ConfigError, JusnapError, Refused, RestoreFailed, SnapshotFailed
from jusnap.hooks import HookSet
from jusnap.hooks.cuda.driver import (
    MIN_DRIVER_API_VERSION,
    CudaDriver,
    CudaError,
    DriverUnavailable,
    ProcessState,
)
from jusnap.hooks.cuda.hook import CudaHook, free_torch_cache_code
from jusnap.hooks.cuda.procfs import GpuSystem

PID = 4242
GIB = 1024**3
UUID0 = "GPU-5f2c7b4e-1a2b-3c4d-5e6f-0123456789ab"


class FakeMemory:
    """Free bytes per GPU UUID, as NVML would say; ``None`` = NVML unavailable."""

    def __init__(self, free: dict[str, int] | None = None) -> None:
        self.free = free
        self.asked: list[list[str]] = []

    def free_bytes(self, uuids: object) -> dict[str, int]:
        from jusnap.hooks.cuda.nvml import NvmlUnavailable

        self.asked.append(list(uuids))  # type: ignore[call-overload]
        if self.free is None:
            raise NvmlUnavailable("cannot load libnvidia-ml.so.1: not found")
        return {u: f for u, f in self.free.items() if u in self.asked[-1]}


class FakeDriver:
    """Records calls; each method can be told to fail; states follow the driver's rules."""

    def __init__(self, version: int = 13000, has_api: bool = True) -> None:
        self.calls: list[tuple] = []
        self.states: dict[int, int] = {}
        self.fail: dict[str, CudaError | DriverUnavailable] = {}
        self.after: dict[str, object] = {}  # name -> callable(pid), run after a successful call
        self._version = version
        self._has_api = has_api
        self.forced_state: int | None = None

    def _enter(self, name: str, pid: int | None = None, *args: object) -> None:
        self.calls.append((name, *(() if pid is None else (pid,)), *args))
        if name in self.fail:
            raise self.fail[name]

    def version(self) -> int:
        self._enter("version")
        return self._version

    def has_checkpoint_api(self) -> bool:
        return self._has_api

    def get_state(self, pid: int) -> int:
        self._enter("get_state", pid)
        if self.forced_state is not None:
            return self.forced_state
        return self.states.get(pid, ProcessState.RUNNING)

    def _move(self, name: str, pid: int, want: int, new: int, *args: object) -> None:
        self._enter(name, pid, *args)
        if self.states.get(pid, ProcessState.RUNNING) != want:
            raise CudaError(f"cuCheckpointProcess{name.title()}", 401, "illegal state")
        self.states[pid] = new
        hook = self.after.get(name)
        if callable(hook):
            hook(pid)

    def lock(self, pid: int, timeout_ms: int) -> None:
        self._move("lock", pid, ProcessState.RUNNING, ProcessState.LOCKED, timeout_ms)

    def checkpoint(self, pid: int) -> None:
        self._move("checkpoint", pid, ProcessState.LOCKED, ProcessState.CHECKPOINTED)

    def restore(self, pid: int, gpu_pairs: tuple[tuple[str, str], ...] = ()) -> None:
        pairs = (tuple(gpu_pairs),) if gpu_pairs else ()  # recorded only when given
        self._move("restore", pid, ProcessState.CHECKPOINTED, ProcessState.LOCKED, *pairs)

    def unlock(self, pid: int) -> None:
        self._move("unlock", pid, ProcessState.LOCKED, ProcessState.RUNNING)

    def names(self) -> list[str]:
        return [c[0] for c in self.calls if c[0] != "version"]


def err(call: str = "cuCheckpointProcessX", code: int = 999) -> CudaError:
    return CudaError(call, code, "unknown error")


class FakeProc:
    """A /proc and /dev tree under tmp_path shaped like what the NVIDIA driver publishes."""

    def __init__(self, root: Path) -> None:
        self.proc = root / "proc"
        self.dev = root / "dev"
        self.dev.mkdir(parents=True)
        (self.dev / "nvidiactl").touch()
        gpu = self.proc / "driver/nvidia/gpus/0000:00:06.0"
        gpu.mkdir(parents=True)
        self.set_model("NVIDIA H200")
        (self.proc / "driver/nvidia/version").write_text(
            "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build"
            "  (nixbld@)  \nGCC version:  gcc version 15.3.0 (GCC) \n"
        )
        self.add_process(PID, gpu=True)

    def set_model(self, model: str) -> None:
        self.add_gpu("0000:00:06.0", model, UUID0, 0)

    def add_gpu(self, pci: str, model: str, uuid: str, minor: int) -> None:
        """A GPU's ``information`` file, laid out as driver 580 prints it."""
        info = self.proc / "driver/nvidia/gpus" / pci / "information"
        info.parent.mkdir(parents=True, exist_ok=True)
        info.write_text(
            f"Model: \t\t {model}\nIRQ:   \t\t 42\nGPU UUID: \t {uuid}\n"
            "Video BIOS: \t 96.00.af.00.01\nBus Type: \t PCIe\nDMA Size: \t 52 bits\n"
            f"DMA Mask: \t 0xfffffffffffff\nBus Location: \t {pci}\n"
            f"Device Minor: \t {minor}\nGPU Firmware: \t 580.159.04\nGPU Excluded:\t No\n"
        )

    def add_process(self, pid: int, gpu: bool = True, rss_kb: int = 700_000) -> Path:
        base = self.proc / str(pid)
        (base / "fd").mkdir(parents=True)
        (base / "net").mkdir()
        (base / "net/unix").write_text("Num       RefCount Protocol Flags    Type St Inode Path\n")
        (base / "fd/0").symlink_to("/dev/null")
        maps = "7f0000000000-7f0000001000 r-xp 00000000 fe:00 123 /usr/lib/libc.so.6\n"
        if gpu:
            for n, dev in enumerate(["/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia-uvm"], 10):
                (base / f"fd/{n}").symlink_to(dev)
            (base / "fd/13").symlink_to("/dev/nvidia-caps/nvidia-cap1")
            (base / "fd/14").symlink_to("/dev/nvidia-caps/nvidia-cap2")
            maps += "7f0000100000-7f0000200000 rw-s 00000000 00:06 9 /dev/nvidia0\n"
        (base / "maps").write_text(maps)
        (base / "comm").write_text("python3\n")
        self.set_rss(pid, rss_kb)
        return base

    def set_rss(self, pid: int, rss_kb: int) -> None:
        (self.proc / str(pid) / "status").write_text(
            f"Name:\tpython3\nVmRSS:\t{rss_kb} kB\nThreads:\t9\n"
        )

    def drop_gpu_files(self, pid: int) -> None:
        """What the CUDA checkpoint does: every NVIDIA fd and mapping goes away."""
        base = self.proc / str(pid)
        for link in (base / "fd").iterdir():
            if str(link.readlink()).startswith("/dev/nvidia"):
                link.unlink()
        lines = (base / "maps").read_text().splitlines()
        (base / "maps").write_text("".join(f"{ln}\n" for ln in lines if "/dev/nvidia" not in ln))

    def enable_mig(self, gi_minor: int = 21, ci_minor: int = 22) -> None:
        mig = self.proc / "driver/nvidia/capabilities/gpu0/mig"
        (mig / "gi1/ci0").mkdir(parents=True)
        (mig / "config").write_text("DeviceFileMinor: 1\nDeviceFileMode: 256\n")
        (mig / "gi1/access").write_text(f"DeviceFileMinor: {gi_minor}\nDeviceFileMode: 292\n")
        (mig / "gi1/ci0/access").write_text(f"DeviceFileMinor: {ci_minor}\n")


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    return FakeProc(tmp_path)


@pytest.fixture
def driver(proc: FakeProc) -> FakeDriver:
    d = FakeDriver()

    def checkpointed(pid: int) -> None:
        proc.drop_gpu_files(pid)
        proc.set_rss(pid, 700_000 + 3 * GIB // 1024)

    d.after["checkpoint"] = checkpointed
    return d


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 0.5
        return self.now


@pytest.fixture
def memory() -> FakeMemory:
    return FakeMemory({UUID0: 100 * GIB})


@pytest.fixture
def hook(proc: FakeProc, driver: FakeDriver, memory: FakeMemory) -> CudaHook:
    return CudaHook(
        GpuSettings(lock_timeout_ms=1234),
        driver=driver,
        system=GpuSystem(proc.proc, proc.dev),
        clock=Clock(),
        memory=memory,
    )


# --- detect ---------------------------------------------------------------------------------


def test_detect_gpu_process(hook: CudaHook) -> None:
    assert hook.detect(PID)


def test_detect_cpu_process(hook: CudaHook, proc: FakeProc) -> None:
    proc.add_process(7, gpu=False)
    assert not hook.detect(7)


def test_detect_by_mapping_only(hook: CudaHook, proc: FakeProc) -> None:
    base = proc.add_process(8, gpu=False)
    (base / "maps").write_text("7f00-7f01 rw-s 00000000 00:06 9 /dev/nvidia-uvm\n")
    assert hook.detect(8)


def test_detect_by_fd_only(hook: CudaHook, proc: FakeProc) -> None:
    base = proc.add_process(9, gpu=False)
    (base / "fd/20").symlink_to("/dev/nvidiactl")
    assert hook.detect(9)


def test_detect_vanished_process(hook: CudaHook) -> None:
    assert not hook.detect(99999)


def test_detect_makes_no_driver_call(hook: CudaHook, driver: FakeDriver) -> None:
    hook.detect(PID)
    assert driver.calls == []


# --- around_dump: success -------------------------------------------------------------------


def test_dump_sequence_and_metadata(hook: CudaHook, driver: FakeDriver) -> None:
    with hook.around_dump(PID) as meta:
        assert driver.names() == ["lock", "checkpoint"]
        assert driver.states[PID] == ProcessState.CHECKPOINTED
    assert driver.names() == ["lock", "checkpoint", "restore", "unlock", "get_state"]
    assert ("lock", PID, 1234) in driver.calls
    assert driver.states[PID] == ProcessState.RUNNING
    assert meta["gpu_model"] == "NVIDIA H200"
    assert meta["driver_version"] == "580.159.04"
    assert meta["driver_api"] == 13000
    assert meta["gpu_memory_bytes"] == 3 * GIB
    # Read before the checkpoint, which (in the fake as in the driver) closes /dev/nvidia0.
    assert meta["gpu_uuids"] == [UUID0]
    assert meta["checkpoint_seconds"] == pytest.approx(0.5)
    assert set(hook.last_timings) == {"lock_seconds", "checkpoint_seconds", "resume_seconds"}


def test_dump_metadata_is_json(hook: CudaHook) -> None:
    import json

    with hook.around_dump(PID) as meta:
        json.dumps(meta)


def test_hookset_collects_under_name(hook: CudaHook, driver: FakeDriver) -> None:
    hooks = HookSet([hook])
    active = hooks.for_pid(PID)
    assert active == [hook]
    with hooks.around_dump(PID, active) as collected:
        assert collected["cuda"]["gpu_model"] == "NVIDIA H200"
    # preflight ran first (get_state), then the sequence.
    assert driver.names()[0] == "get_state"
    assert driver.states[PID] == ProcessState.RUNNING


# --- around_dump: failures ------------------------------------------------------------------


def test_lock_fails(hook: CudaHook, driver: FakeDriver) -> None:
    driver.fail["lock"] = err("cuCheckpointProcessLock", 909)
    with (
        pytest.raises(SnapshotFailed, match=r"could not lock .* within 1234 ms"),
        hook.around_dump(PID),
    ):
        pytest.fail("body must not run")
    assert "checkpoint" not in driver.names()
    assert "restore" not in driver.names()
    assert "unlock" not in driver.names()


def test_lock_fails_but_left_locked_is_unlocked(hook: CudaHook, driver: FakeDriver) -> None:
    driver.fail["lock"] = err("cuCheckpointProcessLock")
    driver.states[PID] = ProcessState.LOCKED  # the failed lock still took hold
    with (
        pytest.raises(SnapshotFailed),
        hook.around_dump(PID),
    ):
        pass
    assert "unlock" in driver.names()
    assert "restore" not in driver.names()
    assert driver.states[PID] == ProcessState.RUNNING


def test_checkpoint_fails(hook: CudaHook, driver: FakeDriver) -> None:
    driver.fail["checkpoint"] = err("cuCheckpointProcessCheckpoint", 2)
    with (
        pytest.raises(SnapshotFailed, match="CUDA checkpoint of the kernel failed"),
        hook.around_dump(PID),
    ):
        pytest.fail("body must not run")
    assert driver.names() == ["lock", "checkpoint", "get_state", "unlock", "get_state"]
    assert driver.states[PID] == ProcessState.RUNNING


def test_checkpoint_fails_after_moving_memory(hook: CudaHook, driver: FakeDriver) -> None:
    def half_done(pid: int) -> None:
        driver.states[pid] = ProcessState.CHECKPOINTED
        raise err("cuCheckpointProcessCheckpoint")

    driver.checkpoint = half_done  # type: ignore[method-assign]
    with (
        pytest.raises(SnapshotFailed),
        hook.around_dump(PID),
    ):
        pass
    assert driver.names()[-3:] == ["restore", "unlock", "get_state"]
    assert driver.states[PID] == ProcessState.RUNNING


def test_dump_raises_inside_context(hook: CudaHook, driver: FakeDriver) -> None:
    with (
        pytest.raises(RuntimeError, match="criu dump failed"),
        hook.around_dump(PID),
    ):
        raise RuntimeError("criu dump failed")
    assert driver.names()[-3:] == ["restore", "unlock", "get_state"]
    assert driver.states[PID] == ProcessState.RUNNING


def test_keyboard_interrupt_inside_context(hook: CudaHook, driver: FakeDriver) -> None:
    with (
        pytest.raises(KeyboardInterrupt),
        hook.around_dump(PID),
    ):
        raise KeyboardInterrupt
    assert driver.states[PID] == ProcessState.RUNNING


def test_jusnap_error_inside_context_is_kept(hook: CudaHook, driver: FakeDriver) -> None:
    with (
        pytest.raises(JusnapError, match="store full"),
        hook.around_dump(PID),
    ):
        raise SnapshotFailed("store full")
    assert driver.states[PID] == ProcessState.RUNNING


def test_restore_fails_during_cleanup_still_unlocks(hook: CudaHook, driver: FakeDriver) -> None:
    driver.fail["restore"] = err("cuCheckpointProcessRestore")
    with (
        pytest.raises(SnapshotFailed, match="could not be resumed") as info,
        hook.around_dump(PID),
    ):
        raise RuntimeError("criu dump failed")
    assert driver.names()[-3:] == ["restore", "unlock", "get_state"]
    assert isinstance(info.value.__context__, RuntimeError)  # the dump error is not lost
    assert "cuCheckpointProcessRestore failed" in str(info.value)
    assert info.value.details["cuda_state"] == ProcessState.CHECKPOINTED


def test_restore_fails_after_successful_dump(hook: CudaHook, driver: FakeDriver) -> None:
    driver.fail["restore"] = err("cuCheckpointProcessRestore")
    with (
        pytest.raises(SnapshotFailed, match="next CUDA call may hang"),
        hook.around_dump(PID),
    ):
        pass
    assert "unlock" in driver.names()


def test_unlock_fails_during_cleanup(hook: CudaHook, driver: FakeDriver) -> None:
    driver.fail["unlock"] = err("cuCheckpointProcessUnlock")
    with (
        pytest.raises(SnapshotFailed, match="cuCheckpointProcessUnlock failed") as info,
        hook.around_dump(PID),
    ):
        pass
    assert driver.names()[-3:] == ["restore", "unlock", "get_state"]
    assert info.value.details["cuda_state"] == ProcessState.LOCKED


def test_cleanup_verifies_state(hook: CudaHook, driver: FakeDriver) -> None:
    driver.after["unlock"] = lambda pid: setattr(driver, "forced_state", ProcessState.FAILED)
    with (
        pytest.raises(SnapshotFailed, match="CUDA state is failed afterwards"),
        hook.around_dump(PID),
    ):
        pass


def test_cleanup_state_query_fails(hook: CudaHook, driver: FakeDriver) -> None:
    driver.after["unlock"] = lambda pid: driver.fail.__setitem__("get_state", err())
    with (
        pytest.raises(SnapshotFailed, match="unknown afterwards"),
        hook.around_dump(PID),
    ):
        pass


def test_device_files_left_after_checkpoint(
    hook: CudaHook, driver: FakeDriver, proc: FakeProc
) -> None:
    driver.after["checkpoint"] = lambda pid: None  # e.g. an NVML handle keeps nvidiactl open
    with (
        pytest.raises(SnapshotFailed, match="still holds NVIDIA device files"),
        hook.around_dump(PID),
    ):
        pytest.fail("criu must not run")
    assert driver.names()[-3:] == ["restore", "unlock", "get_state"]
    assert driver.states[PID] == ProcessState.RUNNING


def test_rss_unreadable_gives_no_memory_figure(
    hook: CudaHook, driver: FakeDriver, proc: FakeProc
) -> None:
    (proc.proc / str(PID) / "status").unlink()
    driver.after["checkpoint"] = lambda pid: proc.drop_gpu_files(pid)
    with hook.around_dump(PID) as meta:
        assert meta["gpu_memory_bytes"] is None


# --- after_restore --------------------------------------------------------------------------


def test_after_restore_sequence(hook: CudaHook, driver: FakeDriver) -> None:
    driver.states[PID] = ProcessState.CHECKPOINTED  # what criu restore brings back
    hook.after_restore(PID, {"gpu_model": "NVIDIA H200"})
    assert driver.names() == ["restore", "unlock", "get_state"]
    assert driver.states[PID] == ProcessState.RUNNING
    assert {"restore_seconds", "cuda_restore_seconds"} <= set(hook.last_timings)


def test_after_restore_restore_fails(hook: CudaHook, driver: FakeDriver) -> None:
    driver.states[PID] = ProcessState.CHECKPOINTED
    driver.fail["restore"] = err("cuCheckpointProcessRestore", 2)
    with pytest.raises(RestoreFailed, match="CUDA state did not come back"):
        hook.after_restore(PID, {})
    assert "unlock" not in driver.names()


def test_after_restore_unlock_fails(hook: CudaHook, driver: FakeDriver) -> None:
    driver.states[PID] = ProcessState.CHECKPOINTED
    driver.fail["unlock"] = err("cuCheckpointProcessUnlock")
    with pytest.raises(RestoreFailed, match="cuCheckpointProcessUnlock failed"):
        hook.after_restore(PID, {})


def test_after_restore_not_running(hook: CudaHook, driver: FakeDriver) -> None:
    driver.states[PID] = ProcessState.CHECKPOINTED
    driver.after["unlock"] = lambda pid: setattr(driver, "forced_state", ProcessState.LOCKED)
    with pytest.raises(RestoreFailed, match="CUDA state is locked"):
        hook.after_restore(PID, {})


def test_after_restore_driver_missing(hook: CudaHook, driver: FakeDriver) -> None:
    driver.fail["restore"] = DriverUnavailable("cannot load libcuda.so.1")
    with pytest.raises(RestoreFailed, match="libcuda"):
        hook.after_restore(PID, {})


# --- preflight_dump -------------------------------------------------------------------------


def test_preflight_dump_ok(hook: CudaHook, driver: FakeDriver) -> None:
    hook.preflight_dump(PID)
    assert driver.names() == ["get_state"]


def test_refuse_driver_missing(hook: CudaHook, driver: FakeDriver) -> None:
    driver.fail["version"] = DriverUnavailable("cannot load libcuda.so.1: not found")
    with pytest.raises(Refused, match=r"NVIDIA driver is not usable here .*libcuda"):
        hook.preflight_dump(PID)


def test_refuse_old_driver(hook: CudaHook, driver: FakeDriver) -> None:
    driver._version = 12040
    with pytest.raises(Refused, match=r"supports CUDA 12\.4, checkpointing needs CUDA 12\.8"):
        hook.preflight_dump(PID)
    assert "lock" not in driver.names()


def test_refuse_driver_without_entry_points(hook: CudaHook, driver: FakeDriver) -> None:
    driver._has_api = False
    with pytest.raises(Refused, match="r570 or newer"):
        hook.preflight_dump(PID)


def test_minimum_driver_accepted(hook: CudaHook, driver: FakeDriver) -> None:
    driver._version = MIN_DRIVER_API_VERSION
    hook.preflight_dump(PID)


def test_refuse_mig(hook: CudaHook, proc: FakeProc) -> None:
    proc.enable_mig(gi_minor=21)
    (proc.proc / str(PID) / "fd/30").symlink_to("/dev/nvidia-caps/nvidia-cap21")
    with pytest.raises(Refused, match="MIG"):
        hook.preflight_dump(PID)


def test_mig_config_caps_alone_are_not_mig(hook: CudaHook, proc: FakeProc) -> None:
    # Every CUDA process opens nvidia-cap1/2 (MIG config/monitor), MIG or not (seen on H200).
    proc.enable_mig(gi_minor=21)
    hook.preflight_dump(PID)


def test_refuse_mps_client(hook: CudaHook, proc: FakeProc) -> None:
    base = proc.proc / str(PID)
    (base / "fd/40").symlink_to("socket:[555]")
    with (base / "net/unix").open("a") as f:
        f.write(
            "0000000000000000: 00000003 00000000 00000000 0001 03 555 /tmp/nvidia-mps/control\n"
        )
    with pytest.raises(Refused, match="MPS"):
        hook.preflight_dump(PID)


def test_other_unix_sockets_are_not_mps(hook: CudaHook, proc: FakeProc) -> None:
    base = proc.proc / str(PID)
    (base / "fd/40").symlink_to("socket:[556]")
    with (base / "net/unix").open("a") as f:
        f.write("0000000000000000: 00000003 00000000 00000000 0001 03 556 /run/dbus/socket\n")
    hook.preflight_dump(PID)


def test_refuse_mps_server_running(hook: CudaHook, proc: FakeProc) -> None:
    server = proc.add_process(77, gpu=True)
    (server / "comm").write_text("nvidia-cuda-mps-server\n")
    with pytest.raises(Refused, match="MPS"):
        hook.preflight_dump(PID)


@pytest.mark.parametrize("state", [ProcessState.LOCKED, ProcessState.CHECKPOINTED, 3, 7])
def test_refuse_not_running(hook: CudaHook, driver: FakeDriver, state: int) -> None:
    driver.states[PID] = state
    with pytest.raises(Refused, match="not running"):
        hook.preflight_dump(PID)
    assert "lock" not in driver.names()


def test_refuse_when_state_unknown(hook: CudaHook, driver: FakeDriver) -> None:
    driver.fail["get_state"] = err("cuCheckpointProcessGetState", 3)
    with pytest.raises(Refused, match="cuCheckpointProcessGetState failed"):
        hook.preflight_dump(PID)


def test_refusals_are_one_line(hook: CudaHook, driver: FakeDriver) -> None:
    driver._version = 11080
    with pytest.raises(Refused) as info:
        hook.preflight_dump(PID)
    assert "\n" not in info.value.message
    assert info.value.http_status == 422


# --- preflight_restore ----------------------------------------------------------------------

META = {"gpu_model": "NVIDIA H200", "driver_version": "580.159.04", "driver_api": 13000}


def test_preflight_restore_ok(hook: CudaHook) -> None:
    hook.preflight_restore(dict(META))


def test_refuse_restore_without_device(hook: CudaHook, proc: FakeProc) -> None:
    (proc.dev / "nvidiactl").unlink()
    with pytest.raises(Refused, match="no NVIDIA GPU is present"):
        hook.preflight_restore(dict(META))


def test_refuse_restore_other_model(hook: CudaHook, proc: FakeProc) -> None:
    proc.set_model("NVIDIA H100 80GB HBM3")
    with pytest.raises(Refused, match="taken on NVIDIA H200 onto NVIDIA H100 80GB HBM3"):
        hook.preflight_restore(dict(META))


def test_refuse_restore_other_driver(hook: CudaHook) -> None:
    with pytest.raises(Refused, match=r"driver 575\.51\.03 under driver 580\.159\.04"):
        hook.preflight_restore({**META, "driver_version": "575.51.03"})


def test_refuse_restore_old_driver(hook: CudaHook, driver: FakeDriver) -> None:
    driver._version = 12020
    with pytest.raises(Refused, match="cannot restore"):
        hook.preflight_restore(dict(META))


def test_restore_tolerates_unknown_facts(hook: CudaHook, proc: FakeProc) -> None:
    # No /proc/driver/nvidia (e.g. a sandbox): nothing to compare against, so no refusal.
    shutil.rmtree(proc.proc / "driver")
    hook.preflight_restore(dict(META))


# --- GpuSystem parsing ----------------------------------------------------------------------


def test_driver_version_formats(tmp_path: Path) -> None:
    system = GpuSystem(tmp_path, tmp_path)
    (tmp_path / "driver/nvidia").mkdir(parents=True)
    version = tmp_path / "driver/nvidia/version"
    version.write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n"
    )
    assert system.driver_version() == "550.54.15"
    version.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  R\n")
    assert system.driver_version() == "580.159.04"
    version.write_text("garbage\n")
    assert system.driver_version() is None


def test_models_and_rss(proc: FakeProc) -> None:
    system = GpuSystem(proc.proc, proc.dev)
    assert system.gpu_models() == ["NVIDIA H200"]
    assert system.rss_bytes(PID) == 700_000 * 1024
    assert system.rss_bytes(31337) is None
    assert system.device_present()


# --- settings (the jusnap.gpu section; its values are tested in test_config_gpu.py) --------


def test_hook_from_config_section() -> None:
    gpu = GpuSettings(lock_timeout_ms=2500, free_torch_cache=True)
    hook = CudaHook.from_settings(gpu)
    assert hook.settings is gpu
    assert isinstance(hook.driver, CudaDriver)  # lazy: nothing loaded yet
    assert CudaHook().settings == GpuSettings()


def test_hook_from_raw_mapping_as_before() -> None:
    """The daemon passed the untyped ``gpu:`` mapping before the section existed."""
    hook = CudaHook.from_settings({"auto_snapshot": False, "auto_cooldown_seconds": "120"})
    assert hook.settings == GpuSettings(auto_snapshot=False, auto_cooldown_seconds=120.0)
    assert CudaHook.from_settings(None).settings == GpuSettings()
    with pytest.raises(ConfigError, match=r"unknown setting 'jusnap\.gpu\.lock_timeout'"):
        CudaHook.from_settings({"lock_timeout": 5})


def test_old_names_still_import() -> None:
    """``from jusnap.hooks.cuda import ...`` as the GPU tests and older code do."""
    from jusnap.hooks import cuda

    assert cuda.CudaSettings is GpuSettings
    assert cuda.CudaHook is CudaHook and cuda.GpuSystem is GpuSystem
    assert cuda.CudaDriver is CudaDriver and cuda.free_torch_cache_code is free_torch_cache_code
    for name in cuda.__all__:
        assert hasattr(cuda, name), name


@pytest.mark.parametrize(("enabled", "cooldown"), [(True, 60.0), (False, 300.0)])
def test_auto_policy_follows_settings(
    proc: FakeProc, driver: FakeDriver, enabled: bool, cooldown: float
) -> None:
    settings = GpuSettings(auto_snapshot=enabled, auto_cooldown_seconds=cooldown)
    hook = CudaHook(settings, driver=driver, system=GpuSystem(proc.proc, proc.dev))
    policy = hook.auto_policy(PID)
    assert (policy.enabled, policy.min_cooldown) == (enabled, cooldown)
    assert driver.calls == []


def test_prepare_code_only_when_asked(proc: FakeProc, driver: FakeDriver) -> None:
    system = GpuSystem(proc.proc, proc.dev)
    assert CudaHook(GpuSettings(), driver=driver, system=system).prepare_code(PID) is None
    hook = CudaHook(GpuSettings(free_torch_cache=True), driver=driver, system=system)
    assert hook.prepare_code(PID) == free_torch_cache_code()


# --- the torch cache snippet ----------------------------------------------------------------


def _run_snippet(namespace: dict) -> None:
    exec(compile(free_torch_cache_code(), "<jusnap>", "exec"), namespace)


def test_torch_cache_snippet_never_imports_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    ns: dict = {}
    _run_snippet(ns)
    assert "torch" not in sys.modules
    assert [k for k in ns if not k.startswith("__")] == []  # leaves the user namespace clean


def _fake_torch(initialized: bool, boom: bool = False) -> types.ModuleType:
    torch = types.ModuleType("torch")
    calls: list[str] = []

    def empty_cache() -> None:
        calls.append("empty_cache")
        if boom:
            raise RuntimeError("CUDA error")

    torch.cuda = types.SimpleNamespace(  # type: ignore[attr-defined]
        is_initialized=lambda: initialized, empty_cache=empty_cache
    )
    torch.calls = calls  # type: ignore[attr-defined]
    return torch


@pytest.mark.parametrize(("initialized", "expected"), [(True, ["empty_cache"]), (False, [])])
def test_torch_cache_snippet_empties_cache(
    monkeypatch: pytest.MonkeyPatch, initialized: bool, expected: list[str]
) -> None:
    torch = _fake_torch(initialized)
    monkeypatch.setitem(sys.modules, "torch", torch)
    _run_snippet({})
    assert torch.calls == expected


def test_torch_cache_snippet_swallows_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(True, boom=True))
    _run_snippet({})


# --- the ctypes binding, against a stand-in libcuda -----------------------------------------


def test_driver_missing_library() -> None:
    drv = CudaDriver("/nonexistent/libcuda.so.1")
    with pytest.raises(DriverUnavailable, match="cannot load"):
        drv.version()


FAKE_LIBCUDA = r"""
#include <stdio.h>
#include <string.h>
typedef struct { unsigned int timeoutMs; unsigned int reserved0;
                 unsigned long long reserved1[7]; } LockArgs;
static int state = 0, inits = 0;
static char seen[256];
const char *jusnap_seen(void) { return seen; }
int cuDriverGetVersion(int *v) { *v = 12080; return 0; }
int cuInit(unsigned f) { inits++; return 0; }
int cuGetErrorString(int e, const char **s) { *s = "operation not permitted"; return 0; }
int cuCheckpointProcessGetState(int pid, int *s) {
  if (!inits) return 3;  /* CUDA_ERROR_NOT_INITIALIZED until cuInit */
  *s = state; return 0; }
int cuCheckpointProcessLock(int pid, LockArgs *a) {
  static const unsigned char zero[60];
  snprintf(seen, sizeof seen, "lock %d %u %zu %d", pid, a->timeoutMs, sizeof *a,
           !memcmp((char *)a + 4, zero, 60));
  state = 1; return 0; }
int cuCheckpointProcessCheckpoint(int pid, void *a) { if (a) return 1; state = 2; return 0; }
int cuCheckpointProcessRestore(int pid, void *a) { if (pid == 13) return 800; state = 1; return 0; }
int cuCheckpointProcessUnlock(int pid, void *a) { if (a) return 1; state = 0; return 0; }
"""


@pytest.fixture(scope="module")
def fake_libcuda(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build a stand-in libcuda")
    d = tmp_path_factory.mktemp("libcuda")
    (d / "fake.c").write_text(FAKE_LIBCUDA)
    subprocess.run(
        [cc, "-shared", "-fPIC", "-o", str(d / "libcuda.so.1"), str(d / "fake.c")], check=True
    )
    return d / "libcuda.so.1"


def test_ctypes_binding_layout(fake_libcuda: Path) -> None:
    import ctypes

    drv = CudaDriver(str(fake_libcuda))
    assert drv.version() == 12080
    assert drv.has_checkpoint_api()
    assert drv.get_state(5) == ProcessState.RUNNING  # retried after cuInit
    drv.lock(5, 4321)
    seen = ctypes.CDLL(str(fake_libcuda))
    seen.jusnap_seen.restype = ctypes.c_char_p
    assert seen.jusnap_seen() == b"lock 5 4321 64 1"  # timeoutMs first, 64 bytes, zeroed
    drv.checkpoint(5)  # NULL args, else the stand-in fails
    assert drv.get_state(5) == ProcessState.CHECKPOINTED
    drv.restore(5)
    drv.unlock(5)
    assert drv.get_state(5) == ProcessState.RUNNING
    with pytest.raises(CudaError, match="operation not permitted") as info:
        drv.restore(13)
    assert info.value.code == 800
    assert info.value.call == "cuCheckpointProcessRestore"
