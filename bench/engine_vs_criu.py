"""Jusnap's snapshot and restore against raw `criu` on the same kernel, in one run.

Run by hand as root on a quiet machine (not in CI):

    sudo /opt/jusnap-test/venv/bin/python bench/engine_vs_criu.py --sizes 100M,1G,4G --repeat 3

For each size a fresh ipykernel (as the unprivileged test user, like production) fills a numpy
array with random bytes (incompressible, every page touched), then, alternating:

* Jusnap: ``Engine.snapshot`` (freeze = CRIU's own frozen time; wall = the whole call, with
  the copy into the daemon-only store) and ``Engine.restore`` timed to the first answered
  ``execute`` (this includes Jusnap's safety net: the pre-restore snapshot of the current
  state, verifying and staging the images, and waiting for the client to reconnect);
* raw CRIU: ``criu dump --leave-running`` with the same flags, and kill + ``criu restore`` +
  first answered ``execute`` (no safety net, no store).

Every call the engine makes into CRIU, the store, the image check and the Jupyter handshake
is timed as a *phase* (wrappers installed by :class:`Phases`), so the JSON says where each
restore and snapshot spent its time: ``pre_dump`` / ``pre_commit`` (the safety snapshot),
``stage`` (rebuilding the target's images from the store), ``check`` (image verification),
``criu_restore``, ``handshake``, ``peers`` (waiting for the client to reconnect), and for a
snapshot ``dump`` against ``commit``. Phases may overlap (background commits, concurrent
staging): each is reported with its own wall time, and ``kernel_down`` is the time from the
kernel's stop to its first answered execute.

``--fork`` adds a fork of the same snapshot per run, beside the running kernel (``fork.py``):
``jusnap_fork_to_execute`` is the time from the call to the fork's first answered execute
(staging, port rewrite, CRIU, fixup and handshake included); the fork is shut down after.

Prints a Markdown table and writes JSON next to it (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jusnap.fork as fork_mod
import jusnap.snapshots as snapshots_mod
from jupyter_client.blocking import BlockingKernelClient
from jusnap.config import load_settings
from jusnap.criu import frozen_seconds
from jusnap.kernels.namespace import is_namespace_init
from jusnap.proc import kill_tree, start_time
from jusnap.snapshots import Engine

from tests.helpers import connect, run_cell

UNITS = {"M": 1024**2, "G": 1024**3}


DATA = {
    # incompressible, every page touched
    "random": "import numpy as np; data = np.frombuffer(np.random.bytes({size}), dtype=np.uint8)",
    # what notebooks hold more often: numbers with structure (zstd shrinks these ~7x)
    "typical": "import numpy as np; data = np.arange({size} // 8, dtype=np.float64) * 0.5",
}


class Phases:
    """Wall time of each call the engine makes into its parts, as (name, start, end) spans."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, float, float]] = []
        self.lock = threading.Lock()
        self.restoring = False

    def wrap(self, owner: Any, attr: str, name: str | Callable[[], str]) -> None:
        inner = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            label = name() if callable(name) else name
            t0 = time.monotonic()
            try:
                return inner(*args, **kwargs)
            finally:
                with self.lock:
                    self.spans.append((label, t0, time.monotonic()))

        setattr(owner, attr, timed)

    def install(self, engine: Engine) -> None:
        during = lambda what: lambda: f"pre_{what}" if self.restoring else what  # noqa: E731
        self.wrap(engine.criu, "dump", during("dump"))
        self.wrap(engine.store, "commit", during("commit"))
        self.wrap(engine.store, "stage_out", "stage")
        self.wrap(engine, "_check_staged", "check")
        self.wrap(engine.supervisor, "stop", "stop")
        self.wrap(engine.criu, "restore", "criu_restore")
        self.wrap(snapshots_mod, "handshake", "handshake")
        self.wrap(snapshots_mod, "wait_for_peers", "peers")
        self.wrap(engine.hot, "put", during("hot_put"))
        self.wrap(engine.hot, "verify", "hot_verify")
        if hasattr(engine, "_state_held_by"):  # does the newest snapshot hold the state?
            self.wrap(engine, "_state_held_by", during("held_check"))
        self.wrap(engine.registry, "begin_restore", "journal")
        self.wrap(engine.kernels, "unwatch", "unwatch")
        self.wrap(snapshots_mod.lazyrestore, "start", "lazy_start")
        # The registry's durable writes (one fsync each) and the work after the handshake.
        self.wrap(engine.registry, "put_kernel", "put_kernel")
        self.wrap(engine.registry, "end_restore", "end_journal")
        self.wrap(engine, "_keep_hot", "keep_hot")
        self.wrap(engine.kernels, "watch", "watch")
        self.wrap(fork_mod, "handshake", "handshake")
        self.wrap(fork_mod, "_new_kernel", "new_kernel")
        self.wrap(engine, "fixup", "fixup")
        if hasattr(snapshots_mod.Staged, "wait_verified"):  # verified while the kernel stops
            self.wrap(snapshots_mod.Staged, "wait_verified", "verify_wait")

    def take(self, t0: float, settle: float = 0.0) -> dict[str, float]:
        """Seconds per phase since ``t0`` (summed when a phase ran more than once); waits
        up to ``settle`` s for background work (a commit after the restore) to end."""
        deadline = time.monotonic() + settle
        while settle and time.monotonic() < deadline:
            with self.lock:
                names = {n for n, a, _ in self.spans if a >= t0}
            if "pre_commit" in names or "pre_dump" not in names:
                break
            time.sleep(0.05)
        with self.lock:
            spans = [s for s in self.spans if s[1] >= t0]
            self.spans = []
        out: dict[str, float] = {}
        for name, a, b in spans:
            out[name] = out.get(name, 0.0) + (b - a)
        stops = [a for n, a, _ in spans if n == "stop"]
        if stops:
            out["stop_at"] = min(stops) - t0
        return out


def parse_size(text: str) -> int:
    return int(float(text[:-1]) * UNITS[text[-1].upper()])


def first_execute(kc: Any, timeout: float = 120) -> float:
    """Seconds until an execute request is answered (the user's view of 'usable')."""
    t0 = time.monotonic()
    msg_id = kc.execute("_bench = 1", silent=False, store_history=False)
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return time.monotonic() - t0


class IOPubReader:
    """Reads the client's IOPub socket all the time, as the Jupyter server's event loop does:
    after a restore the client subscribes again at once (a client that never reads its socket
    makes every restore wait its full second for the subscription, see docs/reliability.md)."""

    def __init__(self, kc: Any) -> None:
        self.kc = kc
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            # queue.Empty, or a socket between reconnects
            with contextlib.suppress(Exception):
                self.kc.get_iopub_msg(timeout=0.01)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def raw_dump(engine: Engine, pid: int, creds: Any, images: Path) -> tuple[float, float]:
    images.mkdir(parents=True)
    os.chown(images, creds.uid, creds.gid)
    os.chown(images.parent, creds.uid, creds.gid)  # criu's work dir: logs
    t0 = time.monotonic()
    engine.criu.dump(pid, images, images.parent, creds, namespaced=is_namespace_init(pid))
    wall = time.monotonic() - t0
    return frozen_seconds(images.parent) or wall, wall  # stats-dump is in the work dir


def raw_restore(
    engine: Engine, k: Any, creds: Any, images: Path, kc: Any, lazy: bool = False
) -> tuple[float, float]:
    """Kill the kernel, restore it with plain criu (``lazy``: behind ``criu lazy-pages``);
    seconds to the first answered execute, and until every page is in (lazy-pages exited)."""
    t0 = time.monotonic()
    kill_tree(k.pid, k.started, signal.SIGKILL)
    engine.reaper.wait_gone(k.pid, k.started, 30)
    server = engine.criu.lazy_pages(images, images.parent, creds) if lazy else None
    # A plain kernel comes back at its PIDs, a namespaced one as PID 1 of a new namespace,
    # with its own /dev/shm bound back.
    ns = any(images.glob("mountpoints-*.img"))
    shm = engine.supervisor.prepare_shm(k) if ns else None
    result = engine.criu.restore(images, images.parent, creds, lazy, (), ns, shm)
    k.pid = result.pid if ns and result.pid else k.pid
    k.started = start_time(k.pid)
    engine.registry.put_kernel(k)
    first_execute(kc)
    answered = time.monotonic() - t0
    if server is not None:
        server.wait(600)
        engine.reaper.release(server)
    return answered, time.monotonic() - t0


def bench_size(
    engine: Engine,
    size: int,
    repeat: int,
    work: Path,
    phases: Phases,
    data: str,
    tier: str,
    keep_newest: bool = False,
    fork: bool = False,
) -> dict[str, Any]:
    # Where the kernel's packages come from a non-default path (the GPU machine), pass it on.
    env = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else None
    k = engine.kernels.launch(owner_uid=0, env=env)
    kc = connect(k.connection)
    run_cell(kc, DATA[data].format(size=size), timeout=600)
    reader = IOPubReader(kc)
    creds = engine.supervisor.creds(k)
    rows: dict[str, list[float]] = {key: [] for key in (
        "jusnap_freeze", "jusnap_snapshot_wall", "jusnap_snapshot_stored", "jusnap_restore_to_execute",
        "criu_freeze", "criu_dump_wall", "criu_restore_to_execute", "image_bytes",
        "pre_restore_dumped", "jusnap_restore_all_pages", "criu_restore_all_pages")}  # fmt: skip
    lazy = engine.storage.lazy_for  # the engine's own decision, recorded per restore
    for i in range(repeat):
        snap = engine.snapshot(k.id)
        rows["jusnap_freeze"].append(snap.frozen_seconds)
        engine.wait_stored()  # else the next snapshot waits for this one's commit

        # Before the newest snapshot: CRIU's parasite runs in the kernel, and its CPU time (over
        # 0.1 s at 4 GB) after that snapshot read as "the kernel ran something since"
        # (Engine._state_held_by), so every 4 GB restore dumped the kernel first.
        raw = work / f"raw-{size}-{i}"
        freeze, wall = raw_dump(engine, engine.kernels.get(k.id).pid, creds, raw / "img")
        rows["criu_freeze"].append(freeze)
        rows["criu_dump_wall"].append(wall)

        t0 = time.monotonic()
        snap2 = engine.snapshot(k.id)  # timed separately from the first (page cache warm-up)
        rows["jusnap_snapshot_wall"].append(time.monotonic() - t0)
        engine.wait_stored()  # a snapshot is recorded before the store has it
        rows["jusnap_snapshot_stored"].append(time.monotonic() - t0)
        _add(rows, "snapshot", phases.take(t0))
        rows["image_bytes"].append(snap2.size_bytes)
        if not keep_newest:
            engine.delete_snapshot(snap2.id)

        if tier == "store":
            engine.hot.drop(snap.id)  # rebuilt from the content-addressed store
        phases.take(0.0)  # drop the spans of the raw run's helpers
        phases.restoring = True
        t0 = time.monotonic()
        was_lazy = lazy(snap, engine.criu.lazy_capable(creds))
        result = engine.restore(snap.id)
        first_execute(kc)
        done = time.monotonic()
        phases.restoring = False
        rows["jusnap_restore_to_execute"].append(done - t0)
        engine._lazy.wait(k.id, 600)  # every page in (at once when eager)
        rows["jusnap_restore_all_pages"].append(time.monotonic() - t0)
        rows.setdefault("jusnap_lazy", []).append(float(was_lazy))
        spent = phases.take(t0, settle=120.0)
        if "stop_at" in spent:
            spent["kernel_down"] = done - t0 - spent.pop("stop_at")
        _add(rows, "restore", spent)
        pre = result.pre_restore
        rows["pre_restore_dumped"].append(float(pre is not None and pre.trigger == "pre-restore"))
        if result.pre_restore and result.pre_restore.id != snap2.id:
            _wait_deletable(engine, result.pre_restore.id)
        if keep_newest:
            engine.delete_snapshot(snap2.id)
        if fork:
            phases.take(0.0)
            t0 = time.monotonic()
            rows.setdefault("jusnap_fork_to_execute", []).append(fork_to_execute(engine, snap.id))
            _add(rows, "fork", phases.take(t0))
        engine.delete_snapshot(snap.id)

        answered, all_in = raw_restore(
            engine, engine.kernels.get(k.id), creds, raw / "img", kc, was_lazy
        )
        rows["criu_restore_to_execute"].append(answered)
        rows["criu_restore_all_pages"].append(all_in)
        shutil.rmtree(raw)
        print(
            f"  {size >> 20} MiB run {i + 1}/{repeat}: "
            + ", ".join(f"{key}={v[-1]:.3f}" for key, v in rows.items() if key != "image_bytes"),
            flush=True,
        )
    reader.close()
    kc.stop_channels()
    engine.kernels.shutdown(k.id)
    return {key: statistics.median(v) for key, v in rows.items()}


def fork_to_execute(engine: Engine, snapshot_id: str) -> float:
    """Fork the snapshot beside the running kernel; seconds to the fork's first execute."""
    t0 = time.monotonic()
    result = fork_mod.fork(engine, snapshot_id, None)
    kc = BlockingKernelClient()
    kc.load_connection_info(result.kernel.connection)
    kc.start_channels()
    try:
        first_execute(kc)
        return time.monotonic() - t0
    finally:
        kc.stop_channels()
        engine.kernels.shutdown(result.kernel.id)


def _add(rows: dict[str, list[float]], prefix: str, spent: dict[str, float]) -> None:
    for name, seconds in spent.items():
        rows.setdefault(f"{prefix}_{name}", []).append(seconds)


def _wait_deletable(engine: Engine, snapshot_id: str, timeout: float = 120.0) -> None:
    """Delete a pre-restore snapshot, which may still be committing in the background."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            engine.delete_snapshot(snapshot_id)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="100M,1G,4G")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--user", default=os.environ.get("JUSNAP_TEST_USER", "jusnap-test"))
    ap.add_argument("--criu", default="/usr/local/lib/jusnap/criu")
    ap.add_argument("--data", choices=sorted(DATA), default="random")
    ap.add_argument(
        "--tier", choices=("hot", "store"), default="hot",
        help="restore the snapshot from its hot-tier copy, or drop that first (the store)",
    )  # fmt: skip
    ap.add_argument(
        "--keep-newest", action="store_true",
        help="keep the newest snapshot (the kernel's current state) while an older one is"
        " restored: the common case with automatic snapshots, where no pre-restore dump is needed",
    )  # fmt: skip
    ap.add_argument(
        "--lazy", action="store_true",
        help="restore with lazy pages (jusnap.store.lazy_pages: true, lazy_unprivileged: true;"
        " needs the criu role's patched CRIU); raw criu then restores lazily too",
    )  # fmt: skip
    ap.add_argument("--fork", action="store_true",
                    help="also fork each snapshot beside the running kernel (fork latency)")  # fmt: skip
    ap.add_argument("--out", default="docs/bench/engine_vs_criu.json")
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="jusnap-bench-", dir="/var/tmp"))
    state.chmod(0o711)
    settings = load_settings(None, {
        "jusnap.state_dir": str(state), "jusnap.criu.binary": args.criu, "jusnap.os.uid": args.user,
        "jusnap.ipython.python_interpreter": sys.executable, "jusnap.http.socket": str(state / "s.sock"),
        **({"jusnap.store.lazy_pages": "true", "jusnap.store.lazy_unprivileged": "true"} if args.lazy else {}),
    })  # fmt: skip
    engine = Engine(settings).start()
    phases = Phases()
    phases.install(engine)
    results = {}
    load = os.getloadavg()
    try:
        for text in args.sizes.split(","):
            print(f"== {text}", flush=True)
            results[text] = bench_size(
                engine,
                parse_size(text),
                args.repeat,
                state / "work",
                phases,
                args.data,
                args.tier,
                args.keep_newest,
                args.fork,
            )
    finally:
        engine.close()
        subprocess.run(["pkill", "-KILL", "-f", f"{state}/kernels/"], check=False)
        shutil.rmtree(state, ignore_errors=True)
    machine = {
        "cpu": _cpu(), "cores": os.cpu_count(), "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3),
        "kernel": platform.release(), "criu": subprocess.run([args.criu, "--version"], capture_output=True, text=True).stdout.split()[1],
        "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "data": args.data, "tier": args.tier, "keep_newest": args.keep_newest, "lazy": args.lazy, "loadavg_before": [round(x, 2) for x in load],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    print(table(results, machine))
    print()
    print(phase_table(results))
    return 0


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def table(results: dict[str, dict[str, float]], machine: dict[str, Any]) -> str:
    lines = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, Linux {machine['kernel']}, CRIU {machine['criu']}, {machine['date']}. Median of runs.",
        "",
        "| kernel data | image | freeze: Jusnap / raw criu | snapshot recorded (stored): Jusnap / raw criu | restore to first execute: Jusnap / raw criu | all pages in: Jusnap / raw criu |",
        "|---|---|---|---|---|---|",
    ]
    forked = all("jusnap_fork_to_execute" in r for r in results.values())
    if forked:
        lines[2] += " fork to first execute (beside the kernel) |"
        lines[3] += "---|"
    for size, r in results.items():
        lines.append(
            f"| {size} | {r['image_bytes'] / 1024**2:.0f} MiB "
            f"| {r['jusnap_freeze']:.3f} s / {r['criu_freeze']:.3f} s ({_pct(r['jusnap_freeze'], r['criu_freeze'])}) "
            f"| {r['jusnap_snapshot_wall']:.2f} s ({r.get('jusnap_snapshot_stored', r['jusnap_snapshot_wall']):.2f} s) / {r['criu_dump_wall']:.2f} s "
            f"| {r['jusnap_restore_to_execute']:.2f} s / {r['criu_restore_to_execute']:.2f} s "
            f"| {r.get('jusnap_restore_all_pages', 0):.2f} s / {r.get('criu_restore_all_pages', 0):.2f} s |"
            + (f" {r['jusnap_fork_to_execute']:.2f} s |" if forked else "")
        )
    return "\n".join(lines)


RESTORE_PHASES = ("pre_held_check", "journal", "unwatch", "pre_dump", "pre_hot_put", "pre_commit", "stage", "hot_verify", "check", "stop",
                  "verify_wait", "lazy_start", "criu_restore", "handshake", "peers", "put_kernel", "end_journal", "keep_hot",
                  "kernel_down")  # fmt: skip
SNAPSHOT_PHASES = ("dump", "hot_put", "commit")


def phase_table(results: dict[str, dict[str, float]]) -> str:
    """Where the time went: median seconds per phase (phases may overlap)."""
    cols = [f"restore_{p}" for p in RESTORE_PHASES] + [f"snapshot_{p}" for p in SNAPSHOT_PHASES]
    cols = [c for c in cols if any(c in r for r in results.values())]
    lines = ["| kernel data | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for size, r in results.items():
        cells = [f"{r[c]:.2f}" if c in r else "–" for c in cols]
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pct(a: float, b: float) -> str:
    return f"{(a / b - 1) * 100:+.0f}%" if b else "n/a"


if __name__ == "__main__":
    sys.exit(main())
