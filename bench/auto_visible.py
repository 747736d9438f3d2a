"""How soon a cell's automatic snapshot is listed, end to end, on the real stack.

Run by hand as root on a quiet machine (not in CI):

    sudo PYTHONPATH=app:python_modules/jusnap_jupyter:. /opt/jusnap-test/venv/bin/python \\
        bench/auto_visible.py --size 1.5G --repeat 3 [--data random,typical] [--cooldown 5s]

Issue 12's target: "an automatic snapshot of a 1.5 GB kernel visible ≤ 3 s after its cell".
Nothing is called inside the daemon: a real daemon (``jusnap serve``, gunicorn, as production
runs it, made by ``tests/stack.py``) launches a kernel with the kernelspec's argv
(``--ext=jusnap_jupyter.autosnap``, what the Jusnap provisioner sends), so the automatic
snapshot goes the production way: IPython's ``post_run_cell`` → the extension's thread →
``POST .../snapshots {"trigger": "auto", "wait": false}`` → the daemon answers, waits for the
kernel to hang up, dumps, makes the hot entry durable, checks it and records it. A client polls
the kernel's snapshot list (``GET /kernels/<id>/snapshots``, what the notebook's menu reads)
every 20 ms, from the cell's ``execute_reply`` until a snapshot of that cell (its execution
count) is listed.

Per run, on a fresh kernel:

* **cell 1** builds the data (``--size`` of numpy data, random or typical, as in
  ``engine_vs_criu.py``): the big snapshot;
* **cell 2**, run as soon as cell 1's snapshot is listed, changes a little: its snapshot waits
  for the cooldown (5 s by default) and is taken by the trailing snapshot (``trailing.py``)
  while the big one is still being committed into the store;
* **cell 3**, the same small change once the cooldown has passed and the store holds the
  earlier snapshots (``GET /store`` waits for that): a small change at a human pace.

A small change still dumps the whole kernel (no incremental dump on this kernel). ``request`` is
from the execute_reply to the dump's start (the snapshot's ``created_at``: the extension's
request, the daemon's decision, waiting for the kernel to hang up and for the cell's end); the
rest is the dump, the hot entry (fsync), the image check and the registry. Prints a Markdown
table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pwd
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jusnap.client import Client

from bench.engine_vs_criu import DATA, _cpu, parse_size
from tests.helpers import connect
from tests.stack import PYTHON, Daemon, make_state_dir, stop_kernels, write_conf

POLL = 0.02
SMALL = "small = [i * i for i in range(1000)]"
KERNEL_ARGV = [PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}",
               "--ext=jusnap_jupyter.autosnap"]  # fmt: skip


def execute(kc: Any, code: str, timeout: float = 600) -> tuple[int, float, float]:
    """Run a cell; (its execution count, monotonic and wall time its execute_reply arrived)."""
    msg_id = kc.execute(code)
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            at, wall = time.monotonic(), time.time()
            content = reply["content"]
            if content["status"] != "ok":
                raise RuntimeError(f"cell failed: {content.get('ename')}: {content.get('evalue')}")
            return int(content["execution_count"]), at, wall


def wait_listed(
    api: Client, kernel_id: str, count: int, known: set[str], since: float, timeout: float = 300
) -> tuple[float, float, dict[str, Any], int]:
    """Poll the list every 20 ms until an automatic snapshot of cell ``count`` is listed;
    (seconds from ``since`` until the first new automatic snapshot was listed, with or without
    a cell number; until the one of cell ``count``; that snapshot; polls made). A dump that
    caught the kernel before its cell had ended is listed without a number (``_dump``), and the
    snapshot of the cell follows it."""
    polls = 0
    first = None
    deadline = since + timeout
    while time.monotonic() < deadline:
        polls += 1
        for s in api.snapshots(kernel_id):
            if s["trigger"] != "auto" or s["id"] in known:
                continue
            first = first if first is not None else time.monotonic() - since
            if s["execution_count"] == count:
                known.add(s["id"])
                return first, time.monotonic() - since, s, polls
        time.sleep(POLL)
    raise TimeoutError(f"no automatic snapshot of cell {count} within {timeout:.0f} s")


def one_run(api: Client, size: int, data: str, cooldown: float) -> dict[str, float]:
    k = api.launch(argv=KERNEL_ARGV)
    kc = connect(k["connection"])
    row: dict[str, float] = {}
    known: set[str] = set()
    try:
        load = os.getloadavg()[0]
        count, at, wall = execute(kc, DATA[data].format(size=size))
        first, seen, snap, polls = wait_listed(api, k["id"], count, known, at)
        row.update(big_first=first, big_visible=seen, big_request=snap["created_at"] - wall,
                   big_polls=polls, big_frozen=snap["frozen_seconds"],
                   image_bytes=snap["size_bytes"])  # fmt: skip
        count, at, wall = execute(kc, SMALL)  # at once: cooldown, the big one's commit
        first, seen, snap, _ = wait_listed(api, k["id"], count, known, at)
        row.update(next_first=first, next_visible=seen, next_request=snap["created_at"] - wall)
        api.store()  # waits until the store holds every snapshot
        time.sleep(max(0.0, snap["created_at"] + cooldown - time.time()))
        count, at, wall = execute(kc, SMALL + "; small.append(1)")
        first, seen, snap, _ = wait_listed(api, k["id"], count, known, at)
        row.update(settled_first=first, settled_visible=seen,
                   settled_request=snap["created_at"] - wall,
                   settled_frozen=snap["frozen_seconds"], load1=load)  # fmt: skip
    finally:
        kc.stop_channels()
        api.auto(k["id"], enabled=False)  # no final snapshot at the shutdown
        api.shutdown(k["id"])
    return row


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", default="1.5G")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--data", default="random,typical")
    ap.add_argument("--cooldown", default="5s", help="jusnap.ipython.cooldown (default: 5s)")
    ap.add_argument("--user", default=os.environ.get("JUSNAP_TEST_USER", "jusnap-test"))
    ap.add_argument("--criu", default="/usr/local/lib/jusnap/criu")
    ap.add_argument("--out", default="docs/bench/auto_visible.json")
    args = ap.parse_args()
    size = parse_size(args.size)
    cooldown = float(args.cooldown.rstrip("s"))
    state = make_state_dir("jusnap-bench-auto-")
    conf = write_conf(state, args.criu, pwd.getpwnam(args.user), auto_snapshot=True,
                      cooldown=args.cooldown, restore_timeout=None)  # fmt: skip
    daemon = Daemon(state, conf)
    load = os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
    try:
        daemon.start()
        api = Client(daemon.socket, timeout=600)
        for data in args.data.split(","):
            runs = []
            for i in range(args.repeat):
                runs.append(one_run(api, size, data, cooldown))
                print(f"  {data} run {i + 1}/{args.repeat}: "
                      + ", ".join(f"{k}={v:.3f}" for k, v in runs[-1].items()), flush=True)  # fmt: skip
            results[data] = {
                "median": {key: statistics.median(r[key] for r in runs) for key in runs[0]},
                "runs": runs,
            }
    finally:
        stop_kernels(daemon)
        daemon.stop()
        shutil.rmtree(state, ignore_errors=True)
    criu = subprocess.run([args.criu, "--version"], capture_output=True, text=True).stdout
    machine = {
        "cpu": _cpu(), "cores": os.cpu_count(), "kernel": platform.release(),
        "criu": criu.split()[1] if criu else "?", "size": args.size, "cooldown": cooldown,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg_before": [round(x, 2) for x in load],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    print(table(results, machine))
    return 0


def table(results: dict[str, dict[str, Any]], machine: dict[str, Any]) -> str:
    def cell(r: dict[str, Any], key: str) -> str:
        runs = ", ".join(f"{x[key]:.2f}" for x in r["runs"])
        return f"**{r['median'][key]:.2f} s** ({runs})"

    lines = [
        f"{machine['cpu']}, {machine['cores']} cores, Linux {machine['kernel']}, CRIU "
        f"{machine['criu']}, {machine['date']}, cooldown {machine['cooldown']:g} s, load "
        f"{machine['loadavg_before']} → {machine['loadavg_after']}. Median (runs).",
        "",
        f"| {machine['size']} kernel data | image | cell 1 (builds it) → first listed | → listed "
        "with its number | request | frozen | cell 2 at once → listed | cell 3, settled → listed "
        "| load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for data, r in results.items():
        m = r["median"]
        lines.append(
            f"| {data} | {m['image_bytes'] / 1024**2:.0f} MiB | {cell(r, 'big_first')} "
            f"| {cell(r, 'big_visible')} "
            f"| {m['big_request']:.2f} s | {m['big_frozen']:.2f} s | {cell(r, 'next_visible')} "
            f"| {cell(r, 'settled_visible')} | {m['load1']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
