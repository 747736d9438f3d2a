""" "Open as new notebook": a snapshot becomes a second live kernel with a copy of its notebook.

``POST {base_url}jusnap/fork`` ``{"snapshot_id", "path", "utc_offset_minutes"?}`` does what only
the Jupyter server can do around the daemon's ``POST /snapshots/{id}/fork``:

1. check the snapshot is one of this notebook's (the daemon, asked as this server's uid, answers
   404 for anyone else's snapshot: the ownership check is the daemon's, as for every call);
2. copy the notebook through the contents manager, beside it, as
   ``<stem> (fork of <label or short id> HH-MM).ipynb`` (numbered when taken);
3. choose the new kernel's id and ask the daemon to fork the snapshot into it, tied to the copy;
4. start a Jupyter session for the copy on that kernel id: the provisioner *adopts* the kernel
   the daemon already runs (provisioner.py), so the frontend opening the copy finds its
   session and connects to the fork.

Any failure after the copy was made removes the copy and the fork's kernel (no litter) and
answers the API's JSON error shape, which the frontend shows as it is.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.utils import ensure_async
from jusnap.client import ApiError
from jusnap.errors import JusnapError
from jusnap.ids import SNAPSHOT_ID_RE
from tornado import web

from .handlers import JusnapAPIHandler, Refused
from .kernelspec import NAME as JUSNAP_KERNEL
from .provisioner import _call

FORK_ROUTE = "jusnap/fork"
PROVISIONER = "jusnap-provisioner"
SHORT_ID = 6  # the random tail of a ULID: its head is the time, alike for close snapshots
LABEL_CHARS = 40  # of a label in a file name
FORK_TIMEOUT = 600.0  # a large kernel restores in seconds; the daemon bounds CRIU itself
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]+")
_FIELDS = {"snapshot_id", "path", "utc_offset_minutes"}


# ---- pure parts --------------------------------------------------------------------------------
def short_id(snapshot_id: str) -> str:
    return snapshot_id[-SHORT_ID:]


def snapshot_words(snapshot: dict[str, Any]) -> str:
    """What names the snapshot in a file name: its label (made safe for any file system,
    shortened) or its short id."""
    label = _UNSAFE.sub(" ", str(snapshot.get("label") or "")).strip(" .")
    label = " ".join(label.split())
    if len(label) > LABEL_CHARS:
        label = label[: LABEL_CHARS - 1].rstrip() + "…"
    return label or short_id(str(snapshot["id"]))


def fork_name(notebook: str, snapshot: dict[str, Any], utc_offset_minutes: int | None) -> str:
    """``analysis (fork of before training 14-03).ipynb`` for ``analysis.ipynb``.

    HH-MM is when the snapshot was taken, in the browser's time zone when it said which
    (``utc_offset_minutes``, east of UTC), else the server's. No colon: not every file system
    takes one.
    """
    stem = notebook[: -len(".ipynb")] if notebook.endswith(".ipynb") else notebook
    taken = float(snapshot["created_at"])
    if utc_offset_minutes is None:
        when = datetime.fromtimestamp(taken).astimezone()
    else:
        zone = timezone(timedelta(minutes=utc_offset_minutes))
        when = datetime.fromtimestamp(taken, zone)
    return f"{stem} (fork of {snapshot_words(snapshot)} {when:%H-%M}).ipynb"


def api_path(raw: object) -> str:
    """A notebook's API path (relative to Jupyter's root, ``/``-separated), checked lexically:
    nothing that could leave the root or name something other than one notebook file."""
    if not isinstance(raw, str) or not raw.strip("/"):
        raise Refused(400, "invalid_request", "path: the notebook's path is required")
    if "\\" in raw or "\x00" in raw:
        raise Refused(400, "invalid_request", "path: not a notebook path")
    parts = raw.strip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise Refused(400, "invalid_request", "path: not a notebook path inside Jupyter's root")
    if not parts[-1].endswith(".ipynb"):
        raise Refused(400, "invalid_request", "path: only notebooks (.ipynb) can be forked")
    return "/".join(parts)


def parse_body(raw: bytes) -> tuple[str, str, int | None]:
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise Refused(400, "invalid_request", "the body must be JSON") from None
    if not isinstance(body, dict):
        raise Refused(400, "invalid_request", "the body must be a JSON object")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise Refused(400, "invalid_request", f"unknown field: {unknown[0][:40]}")
    sid = body.get("snapshot_id")
    if not isinstance(sid, str) or not SNAPSHOT_ID_RE.match(sid):
        raise Refused(400, "invalid_request", "snapshot_id: not a snapshot id")
    offset = body.get("utc_offset_minutes")
    if offset is not None and (
        isinstance(offset, bool) or not isinstance(offset, int) or abs(offset) > 18 * 60
    ):
        raise Refused(400, "invalid_request", "utc_offset_minutes: minutes east of UTC")
    return sid, api_path(body.get("path")), offset


def notebook_file(kernel_manager: Any, path: str) -> Path:
    """The file system path of the notebook at API path ``path``, as the kernel's notebook
    identity is written (``JUSNAP_NOTEBOOK_PATH``, see ``_name_notebook_files``)."""
    return Path(kernel_manager.cwd_for_path(path)) / PurePosixPath(path).name


# ---- the handler -------------------------------------------------------------------------------
class ForkHandler(JusnapAPIHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        try:
            await self._check_rights()
            sid, path, offset = parse_body(self.request.body)
            answer = await self._fork(sid, path, offset)
        except Refused as refused:
            self._send_json(refused.status, refused.code, refused.message)
            return
        except JusnapError as exc:
            self._send_json(exc.http_status, exc.code, exc.message)
            return
        self.set_status(201)
        self.set_header("Content-Type", "application/json")
        await self.finish(json.dumps(answer, default=str))

    async def _check_rights(self) -> None:
        """The fork writes a file and starts a kernel and a session: the user must be allowed
        all three here, not only the Jusnap API."""
        for resource in ("contents", "kernels", "sessions"):
            allowed = await ensure_async(
                self.authorizer.is_authorized(self, self.current_user, "write", resource)
            )
            if not allowed:
                raise Refused(403, "forbidden", f"not allowed to write {resource}")

    async def _fork(self, sid: str, path: str, offset: int | None) -> dict[str, Any]:
        cm = self.contents_manager
        km = self.kernel_manager
        sm = self.session_manager
        source = await self._notebook_model(path)
        snapshot = await _call("GET", f"/snapshots/{sid}", timeout=30)
        self._check_same_notebook(snapshot, path, await self._session_kernels(path))

        directory = path.rpartition("/")[0]
        name = await ensure_async(
            cm.increment_filename(fork_name(source["name"], snapshot, offset), directory, " ")
        )
        copy = f"{directory}/{name}" if directory else name
        await ensure_async(cm.copy(path, copy))
        kernel_id = str(uuid.uuid4())
        asked = forked = False
        try:
            asked = True
            answer = await _call(
                "POST",
                f"/snapshots/{sid}/fork",
                {"kernel_id": kernel_id, "notebook_path": str(notebook_file(km, copy))},
                timeout=FORK_TIMEOUT,
            )
            forked = True
            session = await sm.create_session(
                path=copy,
                name=name,
                type="notebook",
                kernel_name=self._kernel_name(snapshot, source),
                kernel_id=kernel_id,
            )
        except BaseException as exc:
            # The daemon's own refusal made nothing; a lost answer may have made the kernel.
            made = forked or (asked and not isinstance(exc, ApiError))
            await self._undo(copy, kernel_id, made)
            if isinstance(exc, JusnapError | Refused | asyncio.CancelledError):
                raise
            self.log.exception("jusnap: fork of snapshot %s into %s failed", sid, copy)
            raise Refused(
                500, "fork_failed", f"the fork's Jupyter session could not start: {exc}"
            ) from exc
        return {
            "path": copy,
            "kernel_id": kernel_id,
            "session": session,
            "parent_snapshot_id": answer.get("parent_snapshot_id", sid),
            "parent_kernel_id": answer.get("parent_kernel_id", snapshot.get("kernel_id")),
            "ports_moved": answer.get("ports_moved", {}),
        }

    async def _notebook_model(self, path: str) -> dict[str, Any]:
        cm = self.contents_manager
        try:
            model = await ensure_async(cm.get(path, content=False))
        except web.HTTPError as exc:
            status = exc.status_code if exc.status_code in (403, 404) else 400
            raise Refused(
                status,
                "not_found" if status == 404 else "invalid_request",
                f"no notebook at {path}",
            ) from None
        if model.get("type") != "notebook":
            raise Refused(400, "invalid_request", f"{path} is not a notebook")
        root = getattr(cm, "root_dir", None)
        if root:  # a link inside the root to elsewhere is not followed by a fork
            top = Path(root).resolve()
            if not Path(top, *path.split("/")).resolve().is_relative_to(top):
                raise Refused(400, "invalid_request", f"{path} is outside Jupyter's root")
        return dict(model)

    async def _session_kernels(self, path: str) -> set[str]:
        sessions = await ensure_async(self.session_manager.list_sessions())
        return {s["kernel"]["id"] for s in sessions if s.get("path") == path and s.get("kernel")}

    def _check_same_notebook(self, snapshot: dict[str, Any], path: str, kernels: set[str]) -> None:
        """The copy must be of the notebook the snapshot was taken of: the file the daemon ties
        the snapshot to, or the notebook whose running kernel it is."""
        own = os.path.normpath(notebook_file(self.kernel_manager, path))
        if snapshot.get("notebook_path") == own or snapshot.get("kernel_id") in kernels:
            return
        raise Refused(
            409,
            "not_this_notebook",
            f"snapshot {snapshot['id']} was not taken of {path}: open its own notebook to fork it",
        )

    def _kernel_name(self, snapshot: dict[str, Any], source: dict[str, Any]) -> str:
        """The kernelspec of the original notebook's kernel if it is a Jusnap one (only the
        Jusnap provisioner adopts the fork), else the Jusnap default."""
        km = self.kernel_manager
        candidates = []
        kid = snapshot.get("kernel_id")
        if kid and kid in km:
            candidates.append(km.get_kernel(kid).kernel_name)
        candidates.append(JUSNAP_KERNEL)
        ksm = km.kernel_spec_manager
        for name in candidates:
            if name not in ksm.find_kernel_specs():
                continue
            spec = ksm.get_kernel_spec(name)
            if spec.metadata.get("kernel_provisioner", {}).get("provisioner_name") == PROVISIONER:
                return str(name)
        raise Refused(500, "no_kernelspec", f"the {JUSNAP_KERNEL} kernelspec is not installed")

    async def _undo(self, copy: str, kernel_id: str, made: bool) -> None:
        """Remove what a failed fork made: its kernel (Jupyter's, or the daemon's alone: the id
        is this fork's own, so one the daemon never made is a plain 404), its copy of the
        notebook. Each step on its own: one failing does not keep the others."""
        if made:
            try:
                if kernel_id in self.kernel_manager:
                    await ensure_async(self.kernel_manager.shutdown_kernel(kernel_id, now=True))
                else:
                    await _call("DELETE", f"/kernels/{kernel_id}", timeout=60)
            except ApiError as exc:
                if exc.http_status != 404:
                    self.log.warning(
                        "jusnap: the failed fork's kernel %s stays: %s", kernel_id, exc
                    )
            except Exception as exc:
                self.log.warning("jusnap: the failed fork's kernel %s stays: %s", kernel_id, exc)
        try:
            await self._remove(copy)
        except Exception as exc:
            self.log.warning("jusnap: cannot remove the failed fork's copy %s: %s", copy, exc)

    async def _remove(self, path: str) -> None:
        """Delete a file this handler just made. On disk for Jupyter's file managers: their
        ``delete`` may move it to the user's trash, which would be litter of its own."""
        cm = self.contents_manager
        os_path = getattr(cm, "_get_os_path", None)
        if os_path is None:
            await ensure_async(cm.delete(path))
            return
        await asyncio.to_thread(os.unlink, os_path(path))
