"""A real PyTorch kernel on a real NVIDIA GPU, snapshotted and restored in place by the engine.

Skipped only where no NVIDIA device exists. Everything else (CRIU, the driver's checkpoint API,
the jupyter stack) must be there: on a GPU machine a missing piece is a failure, not a skip.
Runs as root (kernel as root, CRIU privileged); run it with tests/gpu/run_on_device.sh.

The tests share one kernel and run in file order; each step's timings are printed and written
as JSON to $JUSNAP_GPU_REPORT when set. The fork tests at the end use a second engine whose
kernels run as the unprivileged test user in their own PID namespace (a fork needs a PID of its
own); they were written without a GPU and have not run on one yet.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.blocking import BlockingKernelClient
from jusnap.config import GpuSettings, load_settings
from jusnap.hooks import HookSet
from jusnap.hooks.cuda import CudaHook, free_torch_cache_code
from jusnap.snapshots import Engine

from tests.helpers import connect, drain, run_cell

if not Path("/dev/nvidiactl").exists():
    pytest.skip("no NVIDIA device (/dev/nvidiactl missing)", allow_module_level=True)

pytestmark = pytest.mark.gpu

GIB = 1024**3
REPORT: dict[str, Any] = {"steps": {}}
STATE: dict[str, Any] = {}

SETUP = r"""
import hashlib, json, time, torch
torch.backends.cuda.matmul.allow_tf32 = False
g = torch.Generator(device="cuda").manual_seed(1234)
big = torch.randint(-2**31, 2**31 - 1, (256 * 2**20,), dtype=torch.int32, device="cuda",
                    generator=g)                                   # 1 GiB
weights = torch.randn(64 * 2**20, device="cuda", generator=g)      # 256 MiB float32
halfs = torch.randn(32 * 2**20, device="cuda", generator=g).to(torch.bfloat16)  # 64 MiB bf16

def digest(t):
    raw = t.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy()
    return hashlib.sha256(raw).hexdigest()

X = torch.randn(8192, 64, device="cuda", generator=g)
Y = (X[:, :8].sin().sum(1, keepdim=True) + 0.1 * X[:, 8:16].pow(2).sum(1, keepdim=True))
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                            torch.nn.ReLU(), torch.nn.Linear(256, 1)).cuda()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
losses = []

def train(steps):
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(X), Y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[-1]

def state():
    tensors = {"big": big, "weights": weights, "halfs": halfs}
    tensors.update({f"param.{n}": p for n, p in model.named_parameters()})
    for i, (p, s) in enumerate(opt.state.items()):
        tensors.update({f"opt.{i}.{k}": v for k, v in s.items() if torch.is_tensor(v)})
    return {
        "digests": {k: digest(v) for k, v in tensors.items()},
        "big_sum": int(big.sum(dtype=torch.int64).item()),
        "steps": len(losses),
        "loss": losses[-1] if losses else None,
        "reserved": torch.cuda.memory_reserved(),
        "allocated": torch.cuda.memory_allocated(),
    }

train(50)
print(json.dumps({"loss": losses[-1], "first": losses[0]}))
"""


def cell_json(kc: BlockingKernelClient, code: str, timeout: float = 300) -> Any:
    out = run_cell(kc, code, timeout=timeout).strip().splitlines()
    return json.loads(out[-1])


def kernel_state(kc: BlockingKernelClient) -> dict[str, Any]:
    return cell_json(kc, "print(json.dumps(state()))")


def record(step: str, **values: Any) -> None:
    REPORT["steps"][step] = values
    print(f"\n[gpu] {step}: {json.dumps(values, default=str)}", flush=True)


def snapshot_timings(snap: Any, wall: float) -> dict[str, Any]:
    cuda = snap.hooks.get("cuda", {})
    return {
        "wall_seconds": round(wall, 3),
        "frozen_seconds_criu": round(snap.frozen_seconds, 3),
        "lock_seconds": cuda.get("lock_seconds"),
        "checkpoint_seconds": cuda.get("checkpoint_seconds"),
        "gpu_memory_bytes": cuda.get("gpu_memory_bytes"),
        "image_bytes": snap.size_bytes,
    }


def restore_timings(result: Any, hook: CudaHook, wall: float) -> dict[str, Any]:
    pre = result.pre_restore.hooks.get("cuda", {}) if result.pre_restore else {}
    return {
        "wall_seconds": round(wall, 3),
        "engine_seconds": round(result.seconds, 3),
        "criu_restore_seconds": round(result.criu_seconds, 3),
        "cuda_restore_seconds": round(hook.last_timings.get("cuda_restore_seconds", -1), 3),
        "handshake_seconds": round(result.handshake_seconds, 3),
        "pre_restore_checkpoint_seconds": pre.get("checkpoint_seconds"),
        "pre_restore_image_bytes": result.pre_restore.size_bytes if result.pre_restore else None,
    }


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hook() -> CudaHook:
    return CudaHook(GpuSettings(lock_timeout_ms=60_000))


@contextlib.contextmanager
def _engine(hook: CudaHook, state_dir: Path, what: str, **settings: str) -> Iterator[Engine]:
    """An engine driving the real CUDA hook on ``state_dir``; its kernels go at the end and
    the GPU report is written."""
    criu = os.environ.get("JUSNAP_CRIU") or shutil.which("criu")
    assert criu, "set JUSNAP_CRIU to a CRIU >= 4 binary (tests/gpu/run_on_device.sh does)"
    s = load_settings(
        None,
        {
            "jusnap.state_dir": str(state_dir),
            "jusnap.criu.binary": criu,
            "jusnap.criu.dump_timeout": "300s",
            "jusnap.criu.restore_timeout": "300s",
            "jusnap.http.socket": str(state_dir / "jusnap.sock"),
            "jusnap.ipython.python_interpreter": sys.executable,
            "jusnap.ipython.handshake_timeout": "60s",
            **settings,
        },
    )
    eng = Engine(s, HookSet([hook])).start()
    try:
        yield eng
    finally:
        for k in eng.kernels.list():
            try:
                eng.kernels.shutdown(k.id)
            except Exception as exc:
                print(f"[gpu] {what} teardown: {exc}")
        eng.close()
        _write_report()


@pytest.fixture(scope="module")
def gpu_engine(tmp_path_factory: pytest.TempPathFactory, hook: CudaHook) -> Iterator[Engine]:
    """The engine as root runs it here: kernels as root, so CRIU runs in privileged mode."""
    state_dir = tmp_path_factory.mktemp("jusnap-gpu")
    with _engine(
        hook, state_dir, "gpu", **{"jusnap.os.uid": str(os.geteuid()),
                                   "jusnap.os.gid": str(os.getegid())}
    ) as eng:  # fmt: skip
        yield eng


@pytest.fixture(scope="module")
def gpu_kernel(gpu_engine: Engine) -> Iterator[tuple[Any, BlockingKernelClient]]:
    env = {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    k = gpu_engine.kernels.launch(owner_uid=os.geteuid(), env=env)
    kc = connect(k.connection, timeout=120)
    try:
        yield k, kc
    finally:
        kc.stop_channels()


def _write_report() -> None:
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=False,
        ).stdout.strip()  # fmt: skip
    except OSError:
        smi = ""
    REPORT["gpu"] = smi
    REPORT["kernel"] = os.uname().release
    path = os.environ.get("JUSNAP_GPU_REPORT")
    print("\n[gpu] report:\n" + json.dumps(REPORT, indent=1, default=str), flush=True)
    if path:
        Path(path).write_text(json.dumps(REPORT, indent=1, default=str))


# --- the scenarios --------------------------------------------------------------------------


def test_snapshot_restore_bit_exact_and_training_continues(
    gpu_engine: Engine, gpu_kernel: tuple[Any, BlockingKernelClient], hook: CudaHook
) -> None:
    engine, (k, kc) = gpu_engine, gpu_kernel
    t0 = time.monotonic()
    first = cell_json(kc, SETUP, timeout=600)
    assert first["loss"] < first["first"], "training does not learn at all"
    # free_torch_cache: a dropped temporary leaves reserved memory the snippet gives back.
    before = cell_json(
        kc,
        "tmp = torch.empty(512 * 2**20, dtype=torch.uint8, device='cuda'); del tmp\n"
        "print(json.dumps(torch.cuda.memory_reserved()))",
    )
    run_cell(kc, free_torch_cache_code())
    after = cell_json(kc, "print(json.dumps(torch.cuda.memory_reserved()))")
    assert after <= before - 512 * 2**20, (before, after)
    assert hook.detect(k.pid)
    saved = kernel_state(kc)
    record(
        "setup",
        seconds=round(time.monotonic() - t0, 2),
        reserved_before_free=before,
        reserved_after_free=after,
        **{x: saved[x] for x in ("loss", "reserved", "allocated")},
    )

    run_cell(kc, free_torch_cache_code())  # what gpu.free_torch_cache does before a snapshot
    t0 = time.monotonic()
    snap = engine.snapshot(k.id, label="trained 50 steps")
    wall = time.monotonic() - t0
    cuda = snap.hooks["cuda"]
    assert cuda["gpu_memory_bytes"] >= GIB
    assert cuda["gpu_model"] and cuda["driver_version"]
    record(
        "snapshot",
        **snapshot_timings(snap, wall),
        resume_seconds=hook.last_timings.get("resume_seconds"),
        gpu_model=cuda["gpu_model"],
        driver=cuda["driver_version"],
    )

    # The live kernel goes on after the snapshot: that continuation is the reference.
    live = cell_json(kc, "print(json.dumps([train(20)] + losses[-20:]))")
    run_cell(kc, "big.add_(1); weights.mul_(2); marker = 'after snapshot'")
    assert kernel_state(kc)["digests"]["big"] != saved["digests"]["big"]

    t0 = time.monotonic()
    result = engine.restore(snap.id)
    wall = time.monotonic() - t0
    record("restore_1", **restore_timings(result, hook, wall))
    drain(kc)
    back = kernel_state(kc)
    assert back["digests"] == saved["digests"], "GPU tensors differ after restore"
    assert back["big_sum"] == saved["big_sum"]
    assert back["steps"] == 50
    assert run_cell(kc, "print('marker' in globals())").strip() == "False"

    again = cell_json(kc, "print(json.dumps([train(20)] + losses[-20:]))")
    assert again[0] < saved["loss"], "training did not continue to lower the loss"
    exact = again == live
    assert again == pytest.approx(live, rel=1e-5), "training after restore diverged from live"
    record(
        "training_after_restore",
        loss_at_snapshot=saved["loss"],
        loss_after_20=again[0],
        identical_to_live_continuation=exact,
    )
    STATE.update(snapshot=snap, saved=saved, live=live)


def test_restore_same_snapshot_twice(
    gpu_engine: Engine, gpu_kernel: tuple[Any, BlockingKernelClient], hook: CudaHook
) -> None:
    if "snapshot" not in STATE:
        pytest.skip("needs the first scenario's snapshot")
    engine, (_, kc) = gpu_engine, gpu_kernel
    snap, saved = STATE["snapshot"], STATE["saved"]
    t0 = time.monotonic()
    result = engine.restore(snap.id)
    wall = time.monotonic() - t0
    record("restore_2", **restore_timings(result, hook, wall))
    drain(kc)
    back = kernel_state(kc)
    assert back["digests"] == saved["digests"]
    assert back["steps"] == 50
    again = cell_json(kc, "print(json.dumps([train(20)] + losses[-20:]))")
    assert again == pytest.approx(STATE["live"], rel=1e-5)
    assert again[0] < saved["loss"]


MATMULS = r"""
a = torch.randn(4096, 4096, device="cuda", generator=g) / 64
y = torch.randn(4096, 4096, device="cuda", generator=g)
print(json.dumps(digest(y)))
"""

LONG_CELL = r"""
for _ in range(2500):          # ~5 s of queued GPU work; no synchronize until the digest
    y = torch.tanh(a @ y)
print(json.dumps(digest(y)))
"""


def test_snapshot_mid_computation(
    gpu_engine: Engine, gpu_kernel: tuple[Any, BlockingKernelClient], hook: CudaHook
) -> None:
    engine, (k, kc) = gpu_engine, gpu_kernel
    cell_json(kc, MATMULS)
    drain(kc)
    msg_id = kc.execute(LONG_CELL)
    time.sleep(1.0)  # the cell is now launching kernels / blocked on a full launch queue
    t0 = time.monotonic()
    snap = engine.snapshot(k.id, label="mid-computation")
    wall = time.monotonic() - t0
    record("snapshot_mid_cell", **snapshot_timings(snap, wall))

    # The live kernel finishes the cell: its result is the reference.
    live = None
    deadline = time.monotonic() + 300
    while live is None and time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=300)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            live = json.loads(msg["content"]["text"].strip().splitlines()[-1])
    assert live, "the interrupted cell never finished in the live kernel"

    t0 = time.monotonic()
    result = engine.restore(snap.id)
    wall = time.monotonic() - t0
    record("restore_mid_cell", **restore_timings(result, hook, wall))
    drain(kc)
    # The restored kernel resumes the cell where the snapshot caught it; this cell queues
    # behind it and sees its final result.
    restored = cell_json(kc, "print(json.dumps(digest(y)))", timeout=300)
    assert restored == live, "the resumed computation ended differently from the live one"
    record("mid_cell_result", identical=restored == live)


# --- forks: a second live copy beside the original --------------------------------------------
#
# A fork runs beside its original, so both need a PID of their own: only a kernel launched in
# its own PID namespace forks while it runs, and root's kernels are never namespaced. These
# tests therefore use an engine of their own whose kernels run as the unprivileged test user
# (tests/conftest.py's kernel_user, made with useradd if missing), state under /var/tmp.
# Written without a GPU and not yet run on one (docs/gpu.md, "Forks and placement").

FORK_SETUP = r"""
import hashlib, json, torch
g = torch.Generator(device="cuda").manual_seed(7)
t = torch.randn(64 * 2**20, device="cuda", generator=g)            # 256 MiB float32

def fact():
    raw = t.reshape(-1).contiguous().view(torch.uint8).cpu().numpy()
    try:
        uuid = str(torch.cuda.get_device_properties(0).uuid)
    except Exception:
        uuid = None
    return {"digest": hashlib.sha256(raw).hexdigest(), "first": float(t[0].item()), "gpu": uuid}

print(json.dumps(fact()))
"""


@pytest.fixture(scope="module")
def fork_engine(kernel_user: Any, hook: CudaHook) -> Iterator[Engine]:
    """Kernels as the unprivileged test user, each in its own PID namespace: a fork beside a
    running kernel needs one (root's kernels never get it)."""
    from tests.stack import make_state_dir

    state_dir = make_state_dir("jusnap-gpu-fork-")
    try:
        with _engine(
            hook, state_dir, "fork", **{"jusnap.os.uid": kernel_user.pw_name,
                                        "jusnap.kernels.namespaces": "on"}
        ) as eng:  # fmt: skip
            yield eng
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def fork_original(fork_engine: Engine) -> Iterator[tuple[Any, BlockingKernelClient]]:
    env = {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    k = fork_engine.kernels.launch(owner_uid=0, env=env)
    kc = connect(k.connection, timeout=120)
    try:
        yield k, kc
    finally:
        kc.stop_channels()


def test_fork_a_gpu_kernel_beside_it(
    fork_engine: Engine, fork_original: tuple[Any, BlockingKernelClient], hook: CudaHook
) -> None:
    from jusnap.fork import fork

    engine, (a, ka) = fork_engine, fork_original
    saved = cell_json(ka, FORK_SETUP, timeout=600)
    snap = engine.snapshot(a.id, label="before fork")
    cuda = snap.hooks["cuda"]
    assert snap.namespaced, "the original is not in its own PID namespace: it cannot fork"
    assert cuda["gpu_uuids"] and all(u.startswith("GPU-") for u in cuda["gpu_uuids"])
    # The original goes on; its tensor changes after the snapshot.
    after_a = cell_json(ka, "t.add_(1); print(json.dumps(fact()))")
    assert after_a["digest"] != saved["digest"]

    t0 = time.monotonic()
    result = fork(engine, snap.id, None)
    wall = time.monotonic() - t0
    placement = hook.last_placement
    record(
        "fork",
        wall_seconds=round(wall, 3),
        engine_seconds=round(result.seconds, 3),
        criu_restore_seconds=round(result.criu_seconds, 3),
        cuda_restore_seconds=round(hook.last_timings.get("cuda_restore_seconds", -1), 3),
        recorded_gpus=cuda["gpu_uuids"],
        placement=placement.where if placement else None,
        moved=placement.moved if placement else None,
    )
    b = result.kernel
    kb = connect(b.connection, timeout=120)
    try:
        assert b.pid != a.pid and engine.supervisor.alive(engine.kernels.get(a.id))
        drain(kb)
        # The fork holds the snapshot's tensor, bit for bit; the original keeps its own.
        forked = cell_json(kb, "print(json.dumps(fact()))")
        assert forked["digest"] == saved["digest"], (
            "the fork's GPU tensor differs from the snapshot"
        )
        assert cell_json(ka, "print(json.dumps(fact()))")["digest"] == after_a["digest"]
        # Both compute on the GPU, and their values diverge.
        fb = cell_json(kb, "t.mul_(2); print(json.dumps(fact()))")
        fa = cell_json(ka, "t.sub_(3); print(json.dumps(fact()))")
        assert fb["first"] == pytest.approx(saved["first"] * 2, rel=1e-6)
        assert fa["first"] == pytest.approx(saved["first"] + 1 - 3, rel=1e-6, abs=1e-6)
        assert fa["digest"] != fb["digest"]
        record("fork_diverged", original_gpu=fa["gpu"], fork_gpu=fb["gpu"])
    finally:
        kb.stop_channels()
        engine.kernels.shutdown(b.id)


FILL_GPU = r"""
free, _total = torch.cuda.mem_get_info()
filler = torch.empty(max(0, free - 300 * 2**20), dtype=torch.uint8, device="cuda")
print(json.dumps(torch.cuda.mem_get_info()[0]))
"""


def test_fork_without_gpu_room_leaves_nothing(
    fork_engine: Engine, fork_original: tuple[Any, BlockingKernelClient], hook: CudaHook
) -> None:
    """With every GPU of the model full, the fork is refused (422) before anything is made,
    once fork.py asks ``preflight_restore(..., beside=True)``; until then the driver's own
    restore fails and the fork is rolled back. Either way: no fork, the original untouched."""
    from jusnap.errors import Refused, RestoreFailed
    from jusnap.fork import fork

    engine, (a, ka) = fork_engine, fork_original
    gpus = len(hook.system.gpus())
    if gpus > 1:
        pytest.skip(f"{gpus} GPUs: filling one leaves the others free")
    cell_json(ka, "print(json.dumps(fact()))")
    snap = engine.snapshot(a.id, label="before filling the GPU")
    kernels_before = {k.id for k in engine.kernels.list()}
    left = cell_json(ka, FILL_GPU)
    try:
        before = cell_json(ka, "print(json.dumps(fact()))")
        with pytest.raises((Refused, RestoreFailed)) as info:
            fork(engine, snap.id, None)
        record("fork_no_room", free_bytes=left, error=type(info.value).__name__,
               message=str(info.value))  # fmt: skip
        assert {k.id for k in engine.kernels.list()} == kernels_before
        assert cell_json(ka, "print(json.dumps(fact()))") == before
    finally:
        run_cell(ka, "del filler; torch.cuda.empty_cache()")
