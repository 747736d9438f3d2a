"""Helpers for the appliance tests: re-running the playbook, the root CLI, Jupyter's API."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_VENV = Path(os.environ.get("JUSNAP_ANSIBLE_VENV", "/opt/jusnap-ansible"))
PROGRAMS_FILE = Path("/etc/supervisor/conf.d/jusnap.conf")
TOKEN_FILE = Path("/etc/jusnap/jupyter-token")
JUSNAP_CLI = "/opt/jusnap/venv/bin/jusnap"
NOTEBOOKS = Path("/home/jusnap/notebooks")
JUPYTER = "http://127.0.0.1:8888/"
DAEMON_PROGRAM = "jusnap"
JUPYTER_PROGRAM = "jupyter"

RECAP_RE = re.compile(
    r"^localhost\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


@dataclass
class Provision:
    rc: int
    output: str
    log: Path

    @property
    def recap(self) -> dict[str, int]:
        found = RECAP_RE.findall(self.output)
        assert found, f"no PLAY RECAP in the output:\n{self.output[-3000:]}"
        ok, changed, unreachable, failed = (int(x) for x in found[-1])
        return {"ok": ok, "changed": changed, "unreachable": unreachable, "failed": failed}

    def changed_tasks(self) -> list[str]:
        """Names of the tasks that reported a change (for failure messages)."""
        out, task = [], ""
        for line in self.output.splitlines():
            m = re.match(r"^(?:TASK|RUNNING HANDLER) \[(.*)\]", line)
            if m:
                task = m.group(1)
            elif line.startswith("changed:"):
                out.append(f"{task}: {line}")
        return out


def provision(*extra: str, timeout: float = 1500) -> Provision:
    """``.ci/provision.sh`` (quick mode: the Ansible venv and CRIU source exist) with extra args."""
    env = {**os.environ, "JUSNAP_PROVISION_QUICK": "1", "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1"}
    r = subprocess.run(
        ["bash", str(REPO / ".ci" / "provision.sh"), *extra],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    m = re.search(r"log: (\S+)\)", r.stdout)
    return Provision(
        r.returncode, r.stdout + r.stderr, Path(m.group(1)) if m else Path("/dev/null")
    )


def run(*argv: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        stdin=subprocess.DEVNULL,
    )


def jusnap(*args: str, timeout: float = 300) -> Any:
    """The root CLI on the daemon's socket (root is the administrator: sees every kernel)."""
    deadline = time.monotonic() + 60
    while True:
        r = run(JUSNAP_CLI, "--json", *args, timeout=timeout, check=False)
        # 75: busy with another snapshot (e.g. the automatic one after a cell): try again.
        if r.returncode != 75 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.returncode == 0, f"jusnap {' '.join(args)}: rc {r.returncode}: {r.stderr}{r.stdout}"
    return json.loads(r.stdout) if r.stdout.strip() else None


def program_pid(name: str) -> int:
    r = run("supervisorctl", "pid", name, check=False)
    text = r.stdout.strip()
    return int(text) if text.isdigit() else 0


def wait_for(what: str, predicate: Any, timeout: float = 90, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            last = predicate()
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def token() -> str:
    return TOKEN_FILE.read_text().strip()


def jupyter_api(
    method: str,
    path: str,
    body: Any = None,
    expect: int | None = None,
    base: str = JUPYTER,
    **kw: Any,
) -> Any:
    r = requests.request(
        method,
        base + path,
        json=body,
        headers={"Authorization": f"token {token()}"},
        timeout=300,
        **kw,
    )
    if expect is not None:
        assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text[:500]}"
    return r.json() if r.content else None


def write_notebook(name: str, cells: list[str]) -> str:
    """A notebook owned by the jusnap user, with the Jusnap kernel."""
    import pwd

    nb = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": f"c{i}",
                "metadata": {},
                "outputs": [],
                "source": src,
            }
            for i, src in enumerate(cells)
        ],
        "metadata": {
            "kernelspec": {
                "name": "jusnap-python3",
                "display_name": "Python 3 (Jusnap)",
                "language": "python",
            },
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path = NOTEBOOKS / name
    path.write_text(json.dumps(nb, indent=1))
    user = pwd.getpwnam("jusnap")
    os.chown(path, user.pw_uid, user.pw_gid)
    return name


def cleanup_kernel(kernel_id: str) -> None:
    """Delete a kernel's snapshots and stop it (as root, through the daemon), even while the
    daemon restarts or is busy; a kernel the daemon cannot stop is killed."""
    pid = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        r = run(JUSNAP_CLI, "--json", "kernels", check=False)
        if r.returncode == 0:
            found = [k for k in json.loads(r.stdout or "[]") if k["id"] == kernel_id]
            if not found:
                return
            pid = found[0].get("pid") or pid
            run(JUSNAP_CLI, "clear", kernel_id, "--yes", check=False, timeout=120)
            if run(JUSNAP_CLI, "stop", kernel_id, check=False, timeout=120).returncode in (0, 3):
                return
        time.sleep(1)
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
