"""A kernel's stdout and stderr are kept, bounded, across snapshots, restores and daemon
restarts, and shown by ``jusnap logs`` and ``GET /kernels/{id}/logs`` (issue 15: "a crashed
kernel leaves no traceback anywhere").

Real CRIU, real kernels as the test user, the real daemon and CLI.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import time

from jusnap.snapshots import Engine

from tests.conftest import Daemon, KernelSession, shutdown_all
from tests.helpers import connect, nudge, run_cell, wait_until


def _logs(daemon: Daemon, kid: str, *extra: str, user: object = None) -> dict:
    r = daemon.cli("--json", "logs", kid, *extra, user=user)  # type: ignore[arg-type]
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_crashed_kernel_leaves_its_output_and_traceback(
    daemon: Daemon, second_user: pwd.struct_passwd
) -> None:
    r = daemon.cli("--json", "start")
    assert r.returncode == 0, r.stderr
    k = json.loads(r.stdout)
    kc = connect(k["connection"])
    try:
        run_cell(
            kc, "import os, sys\nprint('to stderr before the daemon restart', file=sys.stderr)"
        )
        # The file outlives the daemon: a restarted daemon reads what the kernel wrote since.
        daemon.kill()
        daemon.start()
        run_cell(kc, "print('last words', file=sys.stderr, flush=True)\nprint('and stdout')")
        kc.execute("os.abort()")
        wait_until(
            lambda: json.loads(daemon.cli("--json", "kernels").stdout)[0]["status"] == "dead",
            30,
            what="the kernel to die",
        )
    finally:
        kc.stop_channels()
    text = _logs(daemon, k["id"])["text"]
    for line in ("to stderr before the daemon restart", "last words", "and stdout"):
        assert line in text, text
    # faulthandler's traceback of the fatal signal, with the cell's frame.
    assert "Fatal Python error: Aborted" in text, text
    assert "--- jusnap" in text  # the daemon's own start line
    # The human form, a prefix of the id, as for every kernel command.
    r = daemon.cli("logs", k["id"][:8])
    assert r.returncode == 0 and "last words" in r.stdout, r.stderr
    # Owner only: another local user gets the answer of an unknown kernel.
    r = daemon.cli("logs", k["id"], user=second_user)
    assert r.returncode != 0 and "last words" not in r.stdout + r.stderr
    assert "no such kernel" in r.stderr
    # Out of other users' reach on disk, too.
    path = daemon.state_dir / "logs" / f"{k['id']}.log"
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == k["run_uid"]
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o711 and path.parent.stat().st_uid == 0


def test_snapshots_and_restores_work_while_the_log_grows(engine: Engine) -> None:
    ks = KernelSession(engine)
    try:
        ks.run("import sys\nprint('one', file=sys.stderr)")
        first = engine.snapshot(ks.id)
        ks.run("print('two', file=sys.stderr)")  # the file grew after the dump
        engine.restore(first.id)
        ks.after_restore()
        ks.run("print('three', file=sys.stderr)")
        second = engine.snapshot(ks.id)
        ks.run("print('four', file=sys.stderr)")
        engine.restore(second.id)
        ks.after_restore()
        ks.run("print('five', file=sys.stderr)")
        time.sleep(0.5)  # ipykernel flushes its echo with each IOPub flush
        text = engine.kernels.logs(ks.id)[0].decode()
        positions = [text.index(w) for w in ("one", "two", "three", "four", "five")]
        assert positions == sorted(positions), text
        assert text.count("restored snapshot") == 2, text
    finally:
        ks.close()


def test_the_log_stays_bounded_while_a_cell_prints_a_lot(make_settings) -> None:
    e = Engine(make_settings(**{"jusnap.ipython.log_limit": "1"})).start()
    ks = KernelSession(e)
    limit = 1024 * 1024
    path = e.supervisor.logs.path(ks.id)
    try:
        kc = ks.client
        # 24 MiB of output in large writes over ~2.5 s; the daemon trims the file as it grows.
        msg_id = kc.execute(
            "import sys, time\nfor i in range(48):\n"
            "    sys.stdout.write(f'{i:04d}' + 'y' * 524_284 + '\\n'); time.sleep(0.05)\n"
            # After the keeper's next trim (every 0.5 s): a line written in the instant of a
            # trim can be lost (docs/reliability.md), not one written after it.
            "time.sleep(1.2); print('the end')"
        )
        biggest = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                msg = kc.get_shell_msg(timeout=0.1)
            except Exception:
                biggest = max(biggest, path.stat().st_size)
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                break
        time.sleep(2 * 0.5 + 0.5)  # two checks of the keeper
        size = path.stat().st_size
        old = path.with_name(path.name + ".1").stat().st_size
        assert size <= limit and old <= limit, (size, old)
        # Trimmed while it ran (every 0.5 s), not only at the end.
        assert biggest < 12 * limit, biggest
        text, truncated = e.kernels.logs(ks.id, limit=2 * limit)
        assert truncated  # the first 22 MiB are gone
        assert b"the end" in text, text[-300:]
        # A trimmed (truncated) log does not disturb a restore either.
        snap = e.snapshot(ks.id)
        ks.run("print('x' * 100_000)")
        e.restore(snap.id)
        nudge(kc)
        assert run_cell(kc, "print(1 + 1)").strip() == "2"
        assert os.path.exists(path)
    finally:
        ks.close()
        shutdown_all(e)
