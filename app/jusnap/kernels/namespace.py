"""Kernels in their own PID + mount namespace: when, how they are launched, how to tell.

A namespaced kernel is PID 1 of a PID namespace of its own, in a mount namespace whose tree
is only ``/`` (nosuid there), ``/dev`` (the host's, external to CRIU) and the namespace's
``/proc``; it runs with no_new_privs, its uid, gid and groups, and no capability. Every
restored copy is PID 1 of a fresh namespace, so a restore never needs the dumped PID to be
free (docs/fork-design.md measures the recipe; ``nsinit.py`` is the root-side launcher).

The daemon learns the kernel's outer PID from the launcher's stdout (a root process it
started), and checks it: a child of the daemon (the launcher exited, the subreaper adopted
the kernel), PID 1 inside, the kernel's uid.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import JusnapError
from ..proc import Creds, Reaper, uids
from .nsinit import TREE, mountpoints

log = logging.getLogger(__name__)

NSINIT = Path(__file__).with_name("nsinit.py")
LAUNCH_TIMEOUT = 30.0


def wanted(setting: str) -> bool:
    """Whether kernels should be namespaced at all (``jusnap.kernels.namespaces``).

    ``auto``: when the daemon is root (only root can make the namespaces; a daemon run as a
    user, in development, keeps plain kernels); ``on``: the same, but a launch that cannot be
    namespaced is refused instead of falling back; ``off``: never.
    """
    return setting in ("auto", "on") and os.geteuid() == 0


def _mount_of(path: str, points: Sequence[str]) -> str:
    """The mount point ``path`` (absolute, resolved) lies on."""
    best = "/"
    for mp in points:
        if (path == mp or path.startswith(mp.rstrip("/") + "/")) and len(mp) > len(best):
            best = mp
    return best


def unreachable(paths: Sequence[str]) -> str | None:
    """Why a kernel needing ``paths`` cannot run in the minimal tree (None: it can).

    Only ``/`` and ``/dev`` are kept: a path on any other mount (a data volume, an NFS home,
    a tmpfs ``/tmp``) would not be there inside the namespace.
    """
    points = mountpoints()
    for p in paths:
        real = os.path.realpath(p)
        mp = _mount_of(real, points)
        if mp not in TREE or mp == "/proc":
            return f"{p} is on the mount {mp}, which a namespaced kernel does not see"
    return None


def nspid(pid: int) -> list[int] | None:
    """``pid``'s PIDs from the root namespace inwards (``NSpid``); None when gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(v) for v in line.split()[1:]]
    except (OSError, ValueError):
        return None
    return None


def is_namespace_init(pid: int) -> bool:
    """Whether ``pid`` is PID 1 of a PID namespace one level below ours (a namespaced
    kernel, or its restored copy). Its own PID namespace is something a process cannot
    change for itself."""
    ids = nspid(pid)
    return ids is not None and len(ids) == 2 and ids[1] == 1


def same_user_ns(pid: int) -> bool:
    """``pid`` is in our user namespace: a PID namespace it sits in was then made by a
    holder of CAP_SYS_ADMIN here (the launcher or CRIU), not by the kernel's user inside a
    user namespace of its own."""
    try:
        return Path(f"/proc/{pid}/ns/user").readlink() == Path("/proc/self/ns/user").readlink()
    except OSError:
        return False


def launch(
    reaper: Reaper,
    argv: Sequence[str],
    creds: Creds,
    log_path: Path,
    cwds: Sequence[str],
    env: dict[str, str],
) -> int:
    """Start ``argv`` as the namespace's PID 1; return its outer PID (a child of ours)."""
    cmd = [
        sys.executable, "-I", str(NSINIT), str(creds.uid), str(creds.gid),
        ",".join(str(g) for g in creds.groups), str(log_path),
        ":".join(c for c in cwds if ":" not in c), "--", *argv,
    ]  # fmt: skip
    p = reaper.spawn(
        cmd,
        None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        close_fds=True,
        cwd="/",
        env=env,
    )
    try:
        try:
            out, err = p.communicate(timeout=LAUNCH_TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            raise JusnapError("namespaced launch timed out") from None
    finally:
        reaper.release(p)
    line = out.decode(errors="replace").strip().splitlines()[-1:] or [""]
    if p.returncode != 0 or not line[0].startswith("pid "):
        why = line[0].removeprefix("error: ") or err.decode(errors="replace").strip()[-200:]
        raise JusnapError(f"cannot start kernel {argv[0]!r}: {why or f'exit {p.returncode}'}")
    pid = int(line[0].split()[1])
    why = _not_ours(pid, creds.uid)
    if why:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        raise JusnapError(f"namespaced launch: {why}")
    return pid


def _not_ours(pid: int, uid: int) -> str | None:
    if not is_namespace_init(pid):
        return f"process {pid} is not PID 1 of its own namespace"
    if uids(pid) != (uid, uid, uid, uid):
        return f"process {pid} does not run as uid {uid}"
    try:
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return f"process {pid} is gone"
    if ppid != os.getpid():
        return f"process {pid} is not a child of the daemon"
    return None


__all__ = ["is_namespace_init", "launch", "nspid", "same_user_ns", "unreachable", "wanted"]
