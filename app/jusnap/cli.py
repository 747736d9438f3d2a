"""``jusnap``: the command line, a thin layer over the daemon's API.

Every command prints a readable table or line by default and the API's JSON with ``--json``.
Failures print one line on stderr and exit with a code that says what kind of failure it was
(see ``EXIT CODES`` in ``jusnap --help``).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .client import Client, default_socket
from .config import add_flags, settings_from_args
from .errors import InvalidRequest, JusnapError, KernelNotFound
from .ids import check_snapshot_id

EXIT_CODES = """exit codes:
  0   success (also: an automatic snapshot skipped by the cooldown)
  1   unexpected error
  3   no such kernel or snapshot
  4   the kernel is not running
  5   the snapshot failed (the kernel was left running as it was)
  6   the restore failed (see the message: the previous state is normally back)
  7   refused before anything was touched (e.g. snapshot of other kernel ports)
  64  bad command line or request
  69  the daemon is not running or unreachable
  75  the kernel is busy with another snapshot operation: try again
  77  not allowed
  78  bad configuration
"""


# ---- formatting ----------------------------------------------------------------------------


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def relative(ts: float, now: float | None = None) -> str:
    delta = (now or time.time()) - ts
    if delta < 60:
        return f"{int(delta)}s ago"
    if delta < 3600:
        return f"{int(delta // 60)}m ago"
    if delta < 86400:
        return f"{int(delta // 3600)}h ago"
    return f"{int(delta // 86400)}d ago"


def local_time(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    return "\n".join(lines)


def snapshot_rows(snaps: list[dict[str, Any]], owner: bool = False) -> str:
    """A snapshot table; ``owner``: the list of all snapshots, which also says what each
    belongs to (its notebook, or its kernel and whether that still exists)."""
    if not snaps:
        return "no snapshots"
    rows = []
    for s in snaps:
        row = [
            s["id"],
            f"{local_time(s['created_at'])} ({relative(s['created_at'])})",
            s["trigger"],
            str(s["execution_count"]) if s.get("execution_count") is not None else "-",
            human_size(s["size_bytes"]),
            f"{s['frozen_seconds']:.3f}s",
            s.get("label") or "",
        ]
        if owner:
            gone = "" if s.get("kernel_alive") else " (gone)"
            row.append(s.get("notebook_path") or f"kernel {s['kernel_id'][:8]}{gone}")
        rows.append(row)
    header = ["SNAPSHOT", "CREATED", "TRIGGER", "EXEC", "SIZE", "FROZEN", "LABEL"]
    return table(rows, header + (["NOTEBOOK"] if owner else []))


def kernel_rows(kernels: list[dict[str, Any]]) -> str:
    if not kernels:
        return "no kernels"
    rows, notes = [], []
    for k in kernels:
        last = k.get("last_snapshot")
        auto = k.get("auto") or {}
        rows.append(
            [
                k["id"],
                k["status"] + (f" ({k['execution_state']})" if k.get("execution_state") else ""),
                str(k.get("pid") or "-"),
                ("on" if auto.get("enabled") else "off")
                + (" (pending)" if auto.get("pending_at") else "")
                + (" (failed)" if auto.get("last_error") else ""),
                relative(last["created_at"]) if last else "-",
                k.get("notebook_path") or "",
            ]
        )
        # What the user must know about a kernel: the daemon acted on its own, or the last
        # automatic snapshot failed (the newest state is not saved).
        if k.get("notice"):
            notes.append(f"{k['id']}: {k['notice']}")
        if auto.get("last_error"):
            notes.append(f"{k['id']}: automatic snapshot failed: {auto['last_error']}")
    out = table(rows, ["KERNEL", "STATUS", "PID", "AUTO", "LAST SNAPSHOT", "NOTEBOOK"])
    return "\n".join([out, *notes]) if notes else out


class Progress:
    """A progress line on stderr for operations that take more than a second."""

    def __init__(self, what: str, enabled: bool) -> None:
        self.what = what
        self.enabled = enabled
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._shown = False

    def __enter__(self) -> Progress:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self.enabled:
            self._thread.join()

    def _run(self) -> None:
        t0 = time.monotonic()
        if self._done.wait(1.0):
            return
        tty = sys.stderr.isatty()
        if not tty:
            print(f"{self.what}...", file=sys.stderr, flush=True)
            return
        while not self._done.wait(0.1):
            print(
                f"\r{self.what}... {time.monotonic() - t0:.1f}s",
                end="",
                file=sys.stderr,
                flush=True,
            )
            self._shown = True
        if self._shown:
            print("\r\033[K", end="", file=sys.stderr, flush=True)


# ---- commands ------------------------------------------------------------------------------


def resolve_kernel(client: Client, ref: str) -> str:
    """Accept a unique prefix of a kernel id, like git and docker do."""
    if len(ref) == 36:
        return ref
    if not ref or not all(c in "0123456789abcdef-" for c in ref):
        raise InvalidRequest(f"not a kernel id: {ref!r}")
    matches = [k["id"] for k in client.kernels() if k["id"].startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise KernelNotFound(f"no such kernel: {ref}")
    raise InvalidRequest(f"kernel id prefix {ref!r} is ambiguous")


def _out(args: argparse.Namespace, data: Any, text: Callable[[Any], str]) -> None:
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(text(data))


def cmd_kernels(args: argparse.Namespace, c: Client) -> int:
    _out(args, c.kernels(), kernel_rows)
    return 0


def cmd_start(args: argparse.Namespace, c: Client) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    k = c.launch(argv=argv or None, notebook_path=args.notebook, cwd=args.cwd)
    # Like Jupyter: a connection file in the runtime dir, so `jupyter console --existing` works.
    runtime = Path(args.runtime_path).expanduser()
    runtime.mkdir(parents=True, exist_ok=True)
    cfile = runtime / f"kernel-{k['id']}.json"
    fd = os.open(cfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(k["connection"], fh)
    k["connection_file"] = str(cfile)
    _out(args, k, lambda k: f"{k['id']}\nconnection file: {cfile}")
    return 0


def cmd_stop(args: argparse.Namespace, c: Client) -> int:
    kid = resolve_kernel(c, args.kernel)
    c.shutdown(kid)
    _out(args, {"id": kid, "status": "stopped"}, lambda d: f"stopped {d['id']}")
    return 0


def cmd_logs(args: argparse.Namespace, c: Client) -> int:
    data = c.logs(resolve_kernel(c, args.kernel), args.bytes)

    def show(d: dict[str, Any]) -> str:
        head = "(older output not shown)\n" if d["truncated"] else ""
        return head + (d["text"].rstrip("\n") or "(no output)")

    _out(args, data, show)
    return 0


def cmd_restart(args: argparse.Namespace, c: Client) -> int:
    _out(
        args,
        c.restart(resolve_kernel(c, args.kernel)),
        lambda k: f"restarted {k['id']} (pid {k['pid']})",
    )
    return 0


def cmd_interrupt(args: argparse.Namespace, c: Client) -> int:
    kid = resolve_kernel(c, args.kernel)
    c.interrupt(kid)
    _out(args, {"id": kid, "signal": "SIGINT"}, lambda d: f"interrupted {d['id']}")
    return 0


def cmd_signal(args: argparse.Namespace, c: Client) -> int:
    kid = resolve_kernel(c, args.kernel)
    sig = args.signal.upper()
    c.signal(kid, sig if sig.startswith("SIG") else f"SIG{sig}")
    _out(args, {"id": kid, "signal": sig}, lambda d: f"sent {d['signal']} to {d['id']}")
    return 0


def cmd_snapshot(args: argparse.Namespace, c: Client) -> int:
    kid = resolve_kernel(c, args.kernel)
    with Progress(f"snapshotting {kid[:8]}", not args.json):
        r = c.snapshot(kid, label=args.label, trigger="auto" if args.auto else "manual")
    if r["status"] == "skipped":
        _out(
            args,
            r,
            lambda r: (
                f"skipped: {r['reason']}"
                + (f" (retry in {r['retry_in']:.1f}s)" if r.get("retry_in") else "")
            ),
        )
        return 0
    s = r["snapshot"]
    _out(
        args,
        r,
        lambda _: f"{s['id']}  {human_size(s['size_bytes'])}  frozen {s['frozen_seconds']:.3f}s",
    )
    return 0


def cmd_snapshots(args: argparse.Namespace, c: Client) -> int:
    if args.all == bool(args.kernel):
        raise InvalidRequest("give a kernel, or --all for every snapshot you own")
    if args.all:
        _out(args, c.all_snapshots(), lambda snaps: snapshot_rows(snaps, owner=True))
    else:
        _out(args, c.snapshots(resolve_kernel(c, args.kernel)), snapshot_rows)
    return 0


def cmd_show(args: argparse.Namespace, c: Client) -> int:
    s = c.show(check_snapshot_id(args.snapshot))
    _out(args, s, lambda s: "\n".join(f"{k:16} {v}" for k, v in s.items()))
    return 0


def cmd_restore(args: argparse.Namespace, c: Client) -> int:
    check_snapshot_id(args.snapshot)
    into = resolve_kernel(c, args.into) if args.into else None
    with Progress(f"restoring {args.snapshot}", not args.json):
        r = c.restore(args.snapshot, into)
    _out(args, r, lambda r: (
        f"restored {r['snapshot']['id']} into {r['kernel']['id']} in {r['seconds']:.2f}s"
        + (f" (previous state saved as {r['pre_restore']['id']})" if r.get("pre_restore") else "")
    ))  # fmt: skip
    return 0


def cmd_fork(args: argparse.Namespace, c: Client) -> int:
    check_snapshot_id(args.snapshot)
    with Progress(f"forking {args.snapshot}", not args.json):
        r = c.fork(args.snapshot, notebook_path=args.notebook, reseed=not args.no_reseed)
    _out(args, r, fork_line)
    return 0


def fork_line(r: dict[str, Any]) -> str:
    """The new kernel first (scripts take the first word), then where it came from."""
    k = r["kernel"]
    moved = ", ".join(f"{old}->{new}" for old, new in r["ports_moved"].items())
    return (
        f"{k['id']} forked from snapshot {r['parent_snapshot_id']} of kernel"
        f" {r['parent_kernel_id']} in {r['seconds']:.2f}s"
        + (f"; notebook {k['notebook_path']}" if k.get("notebook_path") else "")
        + (f"; ports moved {moved}" if moved else "")
    )


def cmd_rm(args: argparse.Namespace, c: Client) -> int:
    for sid in args.snapshot:
        check_snapshot_id(sid)
    for sid in args.snapshot:
        c.delete(sid)
    _out(
        args, {"deleted": args.snapshot}, lambda d: "\n".join(f"deleted {s}" for s in d["deleted"])
    )
    return 0


def cmd_clear(args: argparse.Namespace, c: Client) -> int:
    kid = resolve_kernel(c, args.kernel)
    if not args.yes and sys.stdin.isatty():
        answer = input(f"delete every snapshot of kernel {kid}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted", file=sys.stderr)
            return 1
    _out(args, c.clear(kid), lambda d: f"deleted {d['deleted']} snapshot(s)")
    return 0


def cmd_label(args: argparse.Namespace, c: Client) -> int:
    _out(
        args,
        c.relabel(args.snapshot, args.label or None),
        lambda s: f"{s['id']}  {s.get('label') or '(no label)'}",
    )
    return 0


def cmd_auto(args: argparse.Namespace, c: Client) -> int:
    kid = resolve_kernel(c, args.kernel)
    body: dict[str, Any] = {}
    if args.state is not None:
        body["enabled"] = args.state == "on"
    if args.cooldown is not None:
        body["cooldown"] = args.cooldown
    _out(
        args,
        c.auto(kid, **body),
        lambda a: f"auto-snapshot {'on' if a['enabled'] else 'off'}, cooldown {a['cooldown']:g}s",
    )
    return 0


def cmd_health(args: argparse.Namespace, c: Client) -> int:
    _out(args, c.health(), lambda h: f"{h['status']} (jusnap {h['version']})")
    return 0


def user_name(uid: int) -> str:
    """`` (alice)`` for a uid with a local account (the administrator's ``du`` lists every
    user's store), else nothing."""
    try:
        return f" ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return ""


def usage_text(data: dict[str, Any]) -> str:
    """``jusnap du``: one block per owner, then its snapshots' unique bytes."""
    r = data["retention"]
    cap = f"{r['max_user_mb']} MB" if r["max_user_mb"] else "none"
    lines = [f"retention: keep {r['keep_auto'] or 'all'} automatic snapshots per notebook,"
             f" cap {cap}, pre-restore copies {r['pre_restore_ttl'] / 3600:g}h"]  # fmt: skip
    if not data["usage"]:
        lines.append("no snapshots stored")
    for u in data["usage"]:
        ratio = lambda v: f"{v:.1f}x" if v else "-"  # noqa: E731
        lines += [
            f"uid {u['owner_uid']}{user_name(u['owner_uid'])}: {u['snapshots']} snapshot(s)",
            f"  images (logical)   {human_size(u['logical_bytes'])}",
            f"  stored             {human_size(u['stored_bytes'])}"
            f"  (dedup + compression {ratio(u['dedup_ratio'])},"
            f" compression {ratio(u['compression_ratio'])})",
            f"  shared pages       {human_size(u['shared_bytes'])}",
            f"  unique pages       {human_size(u['unique_bytes'])}",
            f"  chunk index        {human_size(u['index_bytes'])}  (SQLite, WAL included)",
            f"  on disk            {human_size(u['disk_bytes'])}"
            f"  (garbage {human_size(u['garbage_bytes'])}: jusnap gc)",
        ]
        if r["max_user_mb"]:
            cap = r["max_user_mb"] * 1024 * 1024
            lines.append(
                f"  quota              {human_size(u['stored_bytes'])} of {r['max_user_mb']} MB"
                f" ({100 * u['stored_bytes'] / cap:.0f}%)"
            )
        if u["per_snapshot"]:
            rows = [[s["id"], human_size(s["logical_bytes"]), human_size(s["unique_bytes"])]
                    for s in u["per_snapshot"]]  # fmt: skip
            text = table(rows, ["SNAPSHOT", "IMAGE", "UNIQUE (freed if deleted)"])
            lines += ["  " + ln for ln in text.splitlines()]
    return "\n".join(lines)


def cmd_du(args: argparse.Namespace, c: Client) -> int:
    _out(args, c.store(), usage_text)
    return 0


def gc_text(data: dict[str, Any]) -> str:
    """``jusnap gc``: what was freed per owner, and what was kept on purpose (and why)."""
    lines = []
    for x in data["results"]:
        line = (
            f"uid {x['owner_uid']}: freed {human_size(x['bytes_freed'])}"
            f" ({x['chunks_removed']} chunks, {x['packs_removed']} packs removed,"
            f" {x['packs_compacted']} compacted, index {human_size(x['index_bytes_freed'])})"
            f" in {x['seconds']:.2f}s"
        )
        if x.get("store_removed"):
            line += "; nothing left: store removed"
        if x.get("verify"):
            v = x["verify"]
            line += f"; verified {v['chunks_checked']} chunks, {v['chunks_damaged']} damaged"
        lines.append(line)
        if x.get("garbage_left_bytes"):
            lines.append(f"  left {human_size(x['garbage_left_bytes'])} of garbage in"
                         f" {x['packs_left']} pack(s) still mostly in use")  # fmt: skip
        if x.get("delta_base_bytes"):
            lines.append(f"  kept {human_size(x['delta_base_bytes'])} of deleted snapshots'"
                         " pages: later snapshots are stored as deltas on them")  # fmt: skip
    return "\n".join(lines) or "nothing to collect"


def cmd_gc(args: argparse.Namespace, c: Client) -> int:
    with Progress("collecting garbage", not args.json):
        r = c.gc(verify=args.verify)
    _out(args, r, gc_text)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .daemon import serve

    serve(settings_from_args(args))
    return 0


def cmd_config_reference(args: argparse.Namespace) -> int:
    from .config_reference import reference

    print(reference(), end="")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .criu import Criu
    from .proc import Creds, Reaper

    s = settings_from_args(args)
    creds = Creds.of_user(s.kernel_uid, s.kernel_gid)
    out = Criu(s.jusnap.criu.binary, Reaper(), unprivileged=s.jusnap.criu.unprivileged).check(creds)
    print(out.strip() or "criu check: looks good")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a bad command line; the documented code for one is 64 (EX_USAGE)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(InvalidRequest.exit_code, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="jusnap",
        description="Snapshot and restore whole Jupyter kernels in place.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"jusnap {__version__}")
    p.add_argument("--socket", default=default_socket(),
                   help="the daemon's Unix socket (default: %(default)s)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[..., int], help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(fn=fn)
        return sp

    serve = add("serve", cmd_serve, "run the daemon (as root, under supervisord)")
    add_flags(serve)
    check = add("check", cmd_check, "check that CRIU works for the kernel user")
    add_flags(check)
    add("health", cmd_health, "is the daemon up?")
    add("config-reference", cmd_config_reference, "print every setting as Markdown")
    add("kernels", cmd_kernels, "list kernels")
    sp = add("start", cmd_start, "launch a kernel (default: the configured IPython kernel)")
    sp.add_argument("--notebook", help="notebook path the kernel belongs to")
    sp.add_argument("--cwd", help="working directory")
    sp.add_argument(
        "--runtime-path",
        default=os.environ.get("JUPYTER_RUNTIME_DIR", "~/.local/share/jupyter/runtime/"),
        help="where to write the connection file (default: %(default)s)",
    )
    sp.add_argument("argv", nargs=argparse.REMAINDER, help="-- kernel argv with {connection_file}")
    per_kernel = (
        ("stop", cmd_stop, "shut a kernel down"),
        ("restart", cmd_restart, "restart a kernel"),
        ("interrupt", cmd_interrupt, "interrupt a kernel (SIGINT)"),
    )
    for name, fn, help_ in per_kernel:
        add(name, fn, help_).add_argument("kernel", help="kernel id or unique prefix")
    sp = add("logs", cmd_logs, "show what a kernel wrote to its stdout and stderr (e.g. a crash)")
    sp.add_argument("kernel", help="kernel id or unique prefix")
    sp.add_argument(
        "--bytes", type=int, default=64 * 1024, help="newest bytes to show (default: %(default)s)"
    )
    sp = add(
        "snapshots",
        cmd_snapshots,
        "list a kernel's (and its notebook's) snapshots, or all yours, newest first",
    )
    sp.add_argument("kernel", nargs="?", help="kernel id or unique prefix")
    sp.add_argument("--all", action="store_true",
                    help="every snapshot you own, also of kernels that are gone")  # fmt: skip
    sp = add("signal", cmd_signal, "send a signal to a kernel")
    sp.add_argument("kernel")
    sp.add_argument("signal", help="e.g. SIGTERM or USR1")
    sp = add("snapshot", cmd_snapshot, "snapshot a kernel now")
    sp.add_argument("kernel", help="kernel id or unique prefix")
    sp.add_argument("--label", help="a label to remember it by")
    sp.add_argument(
        "--auto", action="store_true", help="as an automatic snapshot (cooldown applies)"
    )
    sp = add("show", cmd_show, "show one snapshot")
    sp.add_argument("snapshot")
    sp = add(
        "restore", cmd_restore, "restore a snapshot in place (the current state is saved first)"
    )
    sp.add_argument("snapshot")
    sp.add_argument(
        "--into", metavar="KERNEL",
        help="restore into this kernel (its ports and key are given to the restored copy)",
    )  # fmt: skip
    sp = add(
        "fork", cmd_fork,
        "open a snapshot as a new live kernel beside its original (prints the new kernel id)",
    )  # fmt: skip
    sp.add_argument("snapshot")
    sp.add_argument("--notebook", metavar="PATH", help="the notebook file the new kernel is for")
    sp.add_argument("--no-reseed", action="store_true",
                    help="keep the random and numpy.random states as in the snapshot")  # fmt: skip
    sp = add("rm", cmd_rm, "delete snapshots")
    sp.add_argument("snapshot", nargs="+")
    sp = add("clear", cmd_clear, "delete every snapshot of a kernel")
    sp.add_argument("kernel")
    sp.add_argument("-y", "--yes", action="store_true", help="do not ask")
    sp = add("label", cmd_label, "set or clear a snapshot's label")
    sp.add_argument("snapshot")
    sp.add_argument("label", nargs="?", default="")
    add("du", cmd_du, "space the snapshot store uses: shared, unique, compression")
    sp = add("gc", cmd_gc, "remove stored pages no snapshot needs any more")
    sp.add_argument("--verify", action="store_true",
                    help="also read back every stored page; forget damaged ones")  # fmt: skip
    sp = add("auto", cmd_auto, "show or set a kernel's automatic snapshots")
    sp.add_argument("kernel")
    sp.add_argument("state", nargs="?", choices=["on", "off"])
    sp.add_argument("--cooldown", type=float, metavar="SECONDS")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in ("serve", "check", "config-reference"):
            return args.fn(args)
        return args.fn(args, Client(args.socket))
    except JusnapError as exc:
        print(f"jusnap: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("jusnap: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
