"""Standalone check of the GPU bundle and of jusnap.hooks.cuda on a real NVIDIA machine.

Not a pytest module: it validates, without the engine, that the carried CRIU runs, the carried
wheels import and start an ipykernel, and that CudaHook + plain CRIU snapshot and restore a
process holding 1 GiB of CUDA memory bit-exact (also with queued GPU work, after a simulated
dump failure, and twice from one image). Run it through ``run_on_device.sh smoke``; results
go to stdout and ``$OUT/smoke.json``.

    python3 tests/gpu/device_smoke.py            # orchestrator (root)
    python3 tests/gpu/device_smoke.py worker DIR # the CUDA process being snapshotted
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

RESULTS: dict = {}
CHILDREN: list[int] = []  # killed on the way out, whatever happened


def note(key: str, value) -> None:
    RESULTS[key] = value
    print(f"[smoke] {key}: {json.dumps(value, default=str)}", flush=True)


# --------------------------------------------------------------------------------------------
# worker: holds CUDA memory; SIGUSR1 = write a report, SIGUSR2 = queue a long chain of matmuls
# --------------------------------------------------------------------------------------------


def worker(workdir: Path) -> None:
    ready = workdir / "ready.json"
    try:
        import hashlib

        import torch

        torch.manual_seed(0)
        x = torch.randint(-(2**31), 2**31 - 1, (256 * 2**20,), dtype=torch.int32, device="cuda")
        a = torch.randn(4096, 4096, device="cuda") / 64
        y = torch.randn(4096, 4096, device="cuda")
        torch.cuda.synchronize()
        flags = {"report": False, "work": False}
        loops = 0

        def on_usr1(*_):
            flags["report"] = True

        def on_usr2(*_):
            flags["work"] = True

        signal.signal(signal.SIGUSR1, on_usr1)
        signal.signal(signal.SIGUSR2, on_usr2)

        def write(path: Path, data: dict) -> None:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            tmp.rename(path)

        def digest(t) -> str:
            return hashlib.sha256(t.cpu().numpy().tobytes()).hexdigest()

        write(
            ready,
            {
                "ok": True,
                "pid": os.getpid(),
                "reserved": torch.cuda.memory_reserved(),
                "allocated": torch.cuda.memory_allocated(),
            },
        )
        while True:
            if flags["work"]:
                flags["work"] = False
                for _ in range(1500):  # ~4 s of GPU work, launched without synchronizing
                    y = torch.tanh(a @ y)
                    loops += 1
            if flags["report"]:
                flags["report"] = False
                t0 = time.monotonic()
                torch.cuda.synchronize()
                write(
                    workdir / "report.json",
                    {
                        "x_sha256": digest(x),
                        "x_sum": int(x.to(torch.int64).sum().item()),
                        "y_sha256": digest(y),
                        "loops": loops,
                        "reserved": torch.cuda.memory_reserved(),
                        "report_seconds": time.monotonic() - t0,
                    },
                )
            time.sleep(0.05)
    except BaseException:
        ready.write_text(json.dumps({"ok": False, "error": traceback.format_exc()}))
        raise


# --------------------------------------------------------------------------------------------
# orchestrator
# --------------------------------------------------------------------------------------------


def run(argv: list[str], timeout: float = 120) -> tuple[int, str, float]:
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        out = (p.stdout + p.stderr).strip()
        return p.returncode, out[-3000:], time.monotonic() - t0
    except subprocess.TimeoutExpired as exc:
        return 124, f"timeout: {exc}", time.monotonic() - t0


def wait_file(path: Path, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        time.sleep(0.05)
    raise TimeoutError(f"{path} did not appear within {timeout}s")


def report(pid: int, workdir: Path, timeout: float = 60) -> dict:
    path = workdir / "report.json"
    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    return wait_file(path, timeout)


def reap(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = 0
        if done == pid or not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.05)
    raise TimeoutError(f"pid {pid} did not exit")


def kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    reap(pid)


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    out = Path(os.environ.get("OUT", "/tmp/smoke-out"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/jusnap-smoke")
    subprocess.run(["rm", "-rf", str(work)], check=False)
    work.mkdir(parents=True)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: restored trees re-parent to us

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "app"))
    from jusnap.config import GpuSettings
    from jusnap.errors import JusnapError
    from jusnap.hooks.cuda import CudaDriver, CudaHook, GpuSystem, state_name

    criu = os.environ.get("JUSNAP_CRIU", "criu")
    system = GpuSystem()
    note("kernel", os.uname().release)
    note(
        "gpu_system",
        {
            "device_present": system.device_present(),
            "models": system.gpu_models(),
            "driver_version": system.driver_version(),
            "mig_access_minors": sorted(system.mig_access_minors()),
            "mps_server": system.mps_server_running(),
        },
    )

    # Start the CUDA processes first: torch's import is the slow part.
    wdir = work / "worker"
    wdir.mkdir()
    nullfd = os.open(os.devnull, os.O_RDWR)
    worker_p = subprocess.Popen(
        [sys.executable, __file__, "worker", str(wdir)],
        stdin=nullfd,
        stdout=nullfd,
        stderr=nullfd,
        start_new_session=True,
        cwd=wdir,
    )
    init_only = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import torch,time,pathlib; torch.cuda.init(); "
            "pathlib.Path('/tmp/jusnap-smoke/initonly').write_text('ok'); time.sleep(300)",
        ],
        stdin=nullfd,
        stdout=nullfd,
        stderr=nullfd,
        start_new_session=True,
    )
    CHILDREN.extend([worker_p.pid, init_only.pid])

    note("criu_version", run([criu, "--version"])[:2])
    rc, text, _ = run([criu, "check"])
    note("criu_check", [rc, text[-600:]])

    t0 = time.monotonic()
    try:
        import ipykernel
        import jupyter_client
        import zmq
        from jupyter_client.manager import start_new_kernel

        km, kc = start_new_kernel(kernel_name="python3", startup_timeout=60)
        outputs: list[str] = []
        kc.execute_interactive(
            "import sys; print(sys.version.split()[0], 6*7)",
            timeout=60,
            output_hook=lambda m: outputs.append(m["content"].get("text", "")),
        )
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        note(
            "jupyter",
            {
                "ipykernel": ipykernel.__version__,
                "jupyter_client": jupyter_client.__version__,
                "pyzmq": zmq.__version__,
                "kernel_output": "".join(outputs).strip(),
                "seconds": round(time.monotonic() - t0, 2),
            },
        )
    except Exception:
        note("jupyter_error", traceback.format_exc()[-1500:])

    driver = CudaDriver()
    hook = CudaHook(GpuSettings(lock_timeout_ms=10_000), driver=driver, system=system)
    try:
        note("driver_api", [driver.version(), driver.has_checkpoint_api()])
    except Exception as exc:
        note("driver_error", repr(exc))

    ready = wait_file(wdir / "ready.json", 120)
    note("worker_ready", ready)
    if not ready.get("ok"):
        return 1
    pid = worker_p.pid

    try:
        deadline = time.monotonic() + 60
        while not (work / "initonly").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        ipid = init_only.pid
        info = {"detect": hook.detect(ipid), "files": sorted(system.nvidia_files(ipid))}
        try:
            info["state"] = state_name(driver.get_state(ipid))
        except Exception as exc:
            info["state_error"] = repr(exc)
        note("init_only_process", info)
    except Exception as exc:
        note("init_only_error", repr(exc))
    finally:
        kill_and_reap(init_only.pid)

    note("detect", [hook.detect(pid), sorted(system.nvidia_files(pid))])
    try:
        hook.preflight_dump(pid)
        note("preflight_dump", "ok")
    except JusnapError as exc:
        note("preflight_dump", f"Refused: {exc}")
    base = report(pid, wdir)
    note("baseline", base)

    # A: simulated dump failure inside the context: the worker must come back running.
    t0 = time.monotonic()
    try:
        with hook.around_dump(pid) as meta:
            note("meta_A", meta)
            raise RuntimeError("simulated dump failure")
    except RuntimeError as exc:
        note(
            "A_failed_dump_cleanup",
            {
                "error": str(exc),
                "state": state_name(driver.get_state(pid)),
                "timings": hook.last_timings,
                "seconds": round(time.monotonic() - t0, 2),
            },
        )
    rep = report(pid, wdir)
    note("A_after", {"x_equal": rep["x_sha256"] == base["x_sha256"], **rep})

    # B: queued GPU work, then lock/checkpoint/criu dump --leave-running/resume.
    img = work / "img"
    img.mkdir()
    os.kill(pid, signal.SIGUSR2)
    time.sleep(0.5)
    dump_result = None
    try:
        with hook.around_dump(pid) as meta:
            dump_result = run(
                [
                    criu,
                    "dump",
                    "-t",
                    str(pid),
                    "-D",
                    str(img),
                    "--leave-running",
                    "--ghost-limit",
                    "64M",
                    "-v4",
                    "-o",
                    "dump.log",
                ],
                timeout=180,
            )
            if dump_result[0] != 0:
                raise RuntimeError(f"criu dump failed rc={dump_result[0]}: {dump_result[1]}")
        note("B_meta", meta)
        note("B_timings", hook.last_timings)
    except Exception as exc:
        note("B_error", repr(exc)[-2000:])
    finally:
        if dump_result:
            note("B_dump", {"rc": dump_result[0], "seconds": round(dump_result[2], 3)})
        log = img / "dump.log"
        if log.exists():
            (out / "dump.log").write_text(log.read_text()[-4_000_000:])
    note("B_state_after", state_name(driver.get_state(pid)))
    live = report(pid, wdir, timeout=120)
    note("B_live_after", {"x_equal": live["x_sha256"] == base["x_sha256"], **live})
    if not dump_result or dump_result[0] != 0:
        kill_and_reap(pid)
        return 1
    note("image_bytes", du(img))

    # C: kill, criu restore (twice from the same image), CUDA restore, verify.
    for round_no in (1, 2):
        kill_and_reap(pid)
        (work / "restored.pid").unlink(missing_ok=True)  # criu refuses an existing pidfile
        rc, text, secs = run(
            [
                criu,
                "restore",
                "-D",
                str(img),
                "--restore-detached",
                "-v4",
                "-o",
                f"restore{round_no}.log",
                "--pidfile",
                str(work / "restored.pid"),
            ],
            timeout=180,
        )
        note(f"C{round_no}_criu_restore", {"rc": rc, "seconds": round(secs, 3), "out": text[-500:]})
        rlog = img / f"restore{round_no}.log"
        if rlog.exists():
            (out / f"restore{round_no}.log").write_text(rlog.read_text()[-4_000_000:])
        if rc != 0:
            return 1
        rpid = int((work / "restored.pid").read_text())
        note(f"C{round_no}_pid", [rpid, pid, state_name(driver.get_state(rpid))])
        t0 = time.monotonic()
        try:
            hook.after_restore(rpid, meta)
        except Exception as exc:
            note(f"C{round_no}_after_restore_error", repr(exc))
            kill_and_reap(rpid)
            return 1
        note(f"C{round_no}_cuda_restore", {**hook.last_timings, "wall": time.monotonic() - t0})
        rep = report(rpid, wdir, timeout=120)
        note(
            f"C{round_no}_verify",
            {
                "x_equal": rep["x_sha256"] == base["x_sha256"],
                "y_equal_live": rep["y_sha256"] == live["y_sha256"],
                "loops": rep["loops"],
                "live_loops": live["loops"],
                "detect": hook.detect(rpid),
            },
        )
        pid = rpid
        CHILDREN.append(rpid)
    kill_and_reap(pid)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "worker":
        worker(Path(sys.argv[2]))
        sys.exit(0)
    code = 1
    try:
        code = main()
    except Exception:
        note("fatal", traceback.format_exc()[-3000:])
    finally:
        for child in CHILDREN:
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)
        out = Path(os.environ.get("OUT", "/tmp/smoke-out"))
        out.mkdir(parents=True, exist_ok=True)
        (out / "smoke.json").write_text(json.dumps(RESULTS, indent=1, default=str))
    sys.exit(code)
