"""Every exit code the README documents, produced for real: the `jusnap` CLI against the real
daemon (gunicorn, Unix socket), real CRIU and kernels running as the kernel user.

The codes used to be guessed from HTTP statuses, so a failed snapshot (500) exited 6, the code
of a failed restore. Each case below makes the failure happen rather than faking an answer.
"""

from __future__ import annotations

import json
import pwd
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from jusnap.client import ApiError, Client

from tests.conftest import Daemon
from tests.helpers import connect, nudge, run_cell
from tests.stack import write_conf

UNKNOWN_KERNEL = "00000000-0000-4000-8000-000000000000"


def _exits(d: Daemon, code: int, *args: str, user: str | None = None, text: str = "") -> str:
    r = d.cli(*args, user=user)
    assert r.returncode == code, (args, r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert text in r.stderr, (args, r.stderr)
    return r.stdout


def _start(d: Daemon) -> dict[str, Any]:
    k = json.loads(_exits(d, 0, "--json", "start"))
    assert isinstance(k, dict)
    return k


def _wait_status(c: Client, kernel_id: str, status: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while c.kernel(kernel_id)["status"] != status:
        assert time.monotonic() < deadline, f"kernel {kernel_id} never became {status}"
        time.sleep(0.1)


def test_bad_command_line_daemon_down_and_bad_configuration(daemon: Daemon, tmp_path: Path) -> None:
    _exits(daemon, 0, "health")
    _exits(daemon, 64, "no-such-command", text="invalid choice")
    _exits(daemon, 64, "snapshot")  # missing argument
    _exits(daemon, 64, "restore", "not-an-id", text="not a snapshot id")
    _exits(daemon, 69, "--socket", str(tmp_path / "nobody-listens.sock"), "health",
           text="not running")  # fmt: skip
    bad = tmp_path / "conf.yml"
    bad.write_text("jusnap:\n  log_level: loud\n")
    _exits(daemon, 78, "check", "--config", str(bad), text="jusnap.log_level")
    _exits(daemon, 3, "snapshots", UNKNOWN_KERNEL, text="no such kernel")
    _exits(daemon, 3, "show", "01ARZ3NDEKTSV4RRFFQ69G5FAV", text="no such snapshot")


def test_not_allowed_and_reads_create_nothing(daemon: Daemon) -> None:
    """A system account (not root, the kernel user or a login user) may not launch kernels (77); asking
    for the store's usage must not create that user's chunk store on disk."""
    _exits(daemon, 77, "start", user="nobody", text="may launch kernels")
    chunks = daemon.state_dir / "chunks"
    assert chunks.is_dir()
    before = sorted(p.name for p in chunks.iterdir())
    assert json.loads(_exits(daemon, 0, "--json", "du", user="nobody"))["usage"] == []
    assert sorted(p.name for p in chunks.iterdir()) == before


def test_snapshot_and_restore_failures(daemon: Daemon) -> None:
    """5, 6, 7: a dump CRIU refuses, a restore CRIU refuses (rolled back), a restore refused
    before anything was touched."""
    k = _start(daemon)
    kc = connect(k["connection"])
    held = Path(f"/tmp/jusnap-exit-{uuid.uuid4().hex}")  # the kernel user can write /tmp
    try:
        # 5: an unlinked file larger than the ghost limit (64 MB) cannot be dumped
        run_cell(kc, "import os\n"
                     f"ghost = open('{held}.ghost', 'wb'); ghost.write(b'x' * (80 << 20))\n"
                     f"ghost.flush(); os.unlink('{held}.ghost')")  # fmt: skip
        _exits(daemon, 5, "snapshot", k["id"], text="ghost limit")
        run_cell(kc, "ghost.close()")

        # 6: a file the snapshot had open is gone: CRIU's restore fails, the kernel is rolled
        # back (its pre-restore snapshot holds the file as an unlinked, "ghost" file)
        run_cell(kc, f"held = open('{held}', 'w'); held.write('a'); held.flush(); x = 'snap'")
        sid = _exits(daemon, 0, "snapshot", k["id"]).split()[0]
        run_cell(kc, "x = 'after'")
        held.unlink()
        _exits(daemon, 6, "restore", sid, text="restore failed")
        nudge(kc)
        assert run_cell(kc, "print(x)").strip() == "after"  # the previous state is back

    finally:
        kc.stop_channels()
        held.unlink(missing_ok=True)


def test_kernel_busy_and_not_running(daemon: Daemon) -> None:
    """75: an operation that does not queue (restart) while a snapshot runs; 4: a snapshot of a
    kernel that was killed."""
    api = Client(daemon.socket)
    k = _start(daemon)
    kc = connect(k["connection"])
    try:
        # random bytes neither dedupe nor compress: the snapshot takes seconds to store
        run_cell(kc, "import os; blob = os.urandom(400 << 20)", timeout=120)
        for _attempt in range(3):
            snap = subprocess.Popen(
                [*daemon.cli_argv(), "snapshot", k["id"]],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            deadline = time.monotonic() + 60
            while api.kernel(k["id"]).get("operation") != "snapshot" and snap.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            r = daemon.cli("restart", k["id"])
            _out, err = snap.communicate(timeout=300)
            assert snap.returncode == 0, err
            if r.returncode != 0:
                break
        assert r.returncode == 75, (r.returncode, r.stderr)
        assert "busy" in r.stderr
        run_cell(kc, "del blob")
    finally:
        kc.stop_channels()

    _exits(daemon, 0, "signal", k["id"], "SIGKILL")
    _wait_status(api, k["id"], "dead")
    _exits(daemon, 4, "snapshot", k["id"], text="not running")


def test_unexpected_daemon_failure_exits_1(daemon: Daemon) -> None:
    """1: the daemon fails in a way nobody planned for (its chunk directory became a file):
    it answers 500 internal_error, which is neither a failed snapshot nor a failed restore."""
    chunks = daemon.state_dir / "chunks"
    saved = daemon.state_dir / "chunks.saved"
    chunks.rename(saved)
    chunks.write_text("not a directory")
    try:
        _exits(daemon, 1, "du", text="internal error")
    finally:
        chunks.unlink()
        saved.rename(chunks)
    _exits(daemon, 0, "du")


def test_ids_with_a_trailing_newline_do_not_make_a_second_kernel(daemon: Daemon) -> None:
    """Regression: ``"<id>\\n"`` passed the old ``^...$`` check and became a second kernel with
    the same visible id."""
    api = Client(daemon.socket)
    kid = str(uuid.uuid4())
    assert api.launch(kernel_id=kid)["id"] == kid
    for body in ({"kernel_id": kid + "\n"}, {"kernel_id": str(uuid.uuid4()) + "\n"}):
        try:
            api.request("POST", "/kernels", body)
        except ApiError as exc:
            assert (exc.http_status, exc.code) == (422, "validation_failed"), exc.to_dict()
        else:
            raise AssertionError(f"{body!r} was accepted")
    try:
        api.request("GET", f"/kernels/{kid}%0A")
    except ApiError as exc:
        assert (exc.http_status, exc.code) == (400, "invalid_request"), exc.to_dict()
    else:
        raise AssertionError("an id with a newline was found")
    assert [k["id"] for k in api.kernels()] == [kid]
    # a JSON 0 is not a boolean
    try:
        api.auto(kid, enabled=0)
    except ApiError as exc:
        assert exc.http_status == 422
    else:
        raise AssertionError('"enabled": 0 was accepted')
    assert api.auto(kid)["enabled"] is True


def test_refused_before_anything_is_touched(
    criu_binary: str, kernel_user: pwd.struct_passwd, state_dir: Path
) -> None:
    """7: a snapshot of a kernel without its own PID namespace comes back at its old PID,
    which its own kernel still holds: restoring it into another kernel, or forking it, is
    refused before anything happens (namespaced kernels, the default, have neither limit)."""
    conf = write_conf(state_dir, criu_binary, kernel_user)
    daemon = Daemon(state_dir, conf, ("--jusnap.kernels.namespaces=off",))
    daemon.start()
    try:
        k = _start(daemon)
        sid = _exits(daemon, 0, "snapshot", k["id"]).split()[0]
        other = _start(daemon)
        _exits(daemon, 7, "restore", sid, "--into", other["id"], text="process id")
        _exits(daemon, 7, "fork", sid, text="process id")
        assert {x["id"] for x in Client(daemon.socket).kernels()} == {k["id"], other["id"]}
    finally:
        daemon.stop()
        subprocess.run(["pkill", "-KILL", "-f", f"{state_dir}/kernels/"], check=False)
