"""The store as the engine uses it: retention after snapshots, gc, usage, migration, lazy.

Kept apart from the engine so that ``snapshots.py`` only calls in at a few points: after a
snapshot is recorded (``after_snapshot``), at start-up (``start``), for a restore's lazy-pages
decision (``lazy_for``), and from the API (``usage``, ``gc``, ``settings``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..config import StoreSettings
from ..errors import QuotaExceeded
from ..registry import Registry, Snapshot
from . import gc as gc_mod
from . import retention
from .hot import HotTier
from .local import LocalStore
from .migrate import migrate
from .usage import references, usage

log = logging.getLogger(__name__)


def quota_message(total: int, cap: int) -> str:
    """What the notebook shows when a snapshot does not fit the user's quota."""
    mb = 1024 * 1024
    return (
        f"snapshot not kept: your snapshots would take {total / mb:.0f} MB, over your quota of"
        f" {cap / mb:.0f} MB (store.max_user_mb). Delete snapshots you no longer need, or remove"
        " their labels so that older automatic ones can go."
    )


class StoreService:
    def __init__(self, store: LocalStore, settings: StoreSettings) -> None:
        self.store = store
        self.settings = settings
        self._retention_lock = threading.Lock()

    @property
    def policy(self) -> retention.Policy:
        st = self.settings
        return retention.Policy(st.keep_auto, st.max_user_mb * 1024 * 1024, st.pre_restore_ttl)

    def start(self, registry: Registry) -> int:
        """Migrate snapshots of the previous layout (or refuse a newer one: ConfigError)."""
        owners = {}
        for sid in registry.all_snapshot_ids():
            s = registry.get_snapshot(sid)
            if s is not None:
                owners[sid] = s.owner_uid
        return migrate(self.store, owners)

    # ---- retention -----------------------------------------------------------------------
    def after_snapshot(
        self,
        registry: Registry,
        snap: Snapshot,
        busy: Callable[[str], bool],
        now: float | None = None,
    ) -> list[str]:
        """Apply retention to the snapshot owner's snapshots; return the ids removed.

        Raises QuotaExceeded, having removed ``snap``, when the owner's snapshots would not fit
        ``max_user_mb`` even after retention (manual and labelled ones are never removed).

        ``busy(kernel_id)``: that kernel has an operation running (e.g. a restore that might be
        reading one of its snapshots); its snapshots are left for the next pass.
        """
        return self._pass(registry, snap.owner_uid, busy, now, snap)

    def retain(self, registry: Registry, owner: int, busy: Callable[[str], bool]) -> list[str]:
        """A pass with no new snapshot, once an operation that had a kernel's snapshots spared
        (a restore, a fork) ended: what it spared goes now, not at the owner's next snapshot,
        which may be a long time coming (an idle notebook kept keep_auto + 2)."""
        return self._pass(registry, owner, busy, None, None)

    def _pass(
        self,
        registry: Registry,
        owner: int,
        busy: Callable[[str], bool],
        now: float | None,
        new: Snapshot | None,
    ) -> list[str]:
        with self._retention_lock:
            snaps = [
                s
                for s in (registry.get_snapshot(i) for i in registry.all_snapshot_ids())
                if s is not None and s.owner_uid == owner
            ]
            protect = {s.id for s in snaps if busy(s.kernel_id)}
            if new is not None:
                protect.add(new.id)
            now = time.time() if now is None else now
            doomed = retention.by_count_and_age(snaps, self.policy, now, protect)
            self._remove(registry, doomed)
            if self.policy.max_user_bytes > 0:
                left = [s for s in snaps if s.id not in set(doomed)]
                cs = self.store.chunks(owner)
                with cs.lock():
                    refs = references(self.store, cs, owner)
                    sizes = {h: clen for h, _p, clen, _u in cs.all_rows()}
                more, total = retention.plan_size(left, refs, sizes, self.policy, protect)
                if new is not None and total > self.policy.max_user_bytes:
                    # Even without every automatic snapshot retention may remove, the owner's
                    # snapshots would not fit: the new one is not kept, and no older one goes.
                    self._remove(registry, [new.id])
                    gc_mod.collect(self.store, owner)
                    raise QuotaExceeded(quota_message(total, self.policy.max_user_bytes))
                self._remove(registry, more)
                doomed += more
            if doomed and self.settings.gc_after_retention:
                gc_mod.collect(self.store, owner)
        if doomed:
            log.info("retention removed %d snapshot(s) of uid %d", len(doomed), owner)
        return doomed

    def _remove(self, registry: Registry, ids: list[str]) -> None:
        for sid in ids:
            registry.delete_snapshot(sid)
            self.store.delete(sid)

    # ---- reports and maintenance ---------------------------------------------------------
    def owners(self, owner: int | None) -> list[int]:
        """Owners that have a chunk store (all of them for ``None``).

        Only existing stores: asking about a user with none must not create one (gc removes
        the store of an owner with nothing left, and ``jusnap du`` would bring it back).
        """
        return [o for o in self.store.owners() if owner is None or o == owner]

    def usage(self, owner: int | None, hot: HotTier | None = None) -> list[dict[str, Any]]:
        """``jusnap du`` per owner; ``hot``: with the plain images the hot tier keeps."""
        out = [usage(self.store, o) for o in self.owners(owner)]
        kept = hot.usage() if hot is not None else {}
        for u in out:
            u["hot_snapshots"], u["hot_bytes"] = kept.get(u["owner_uid"], (0, 0))
        return out

    def gc(self, owner: int | None, verify: bool = False) -> list[dict[str, Any]]:
        """Collect now, everything unreferenced (``gc_mod.FULL``); verify first if asked, so
        that damaged chunks forgotten by the scrub are swept in the same run."""
        out = []
        for o in self.owners(owner):
            checked = gc_mod.scrub(self.store, o) if verify else None
            res = gc_mod.collect(self.store, o, gc_mod.FULL).public()
            if checked is not None:
                res["verify"] = checked
            out.append(res)
        return out

    def public_settings(self) -> dict[str, Any]:
        st = self.settings
        return {
            "keep_auto": st.keep_auto,
            "max_user_mb": st.max_user_mb,
            "pre_restore_ttl": float(st.pre_restore_ttl),
            "gc_after_retention": st.gc_after_retention,
            "compression_level": st.compression_level,
            "lazy_pages": st.lazy_pages,
            "lazy_threshold_mb": st.lazy_threshold_mb,
            "chunk_bytes": 4096,
        }

    # ---- restore ------------------------------------------------------------------------
    def lazy_for(self, snap: Snapshot, capable: bool) -> bool:
        """Whether to restore ``snap`` with lazy pages (``capable``: CRIU can, for this uid)."""
        mode = self.settings.lazy_pages
        if mode == "false" or not capable:
            if mode == "true" and not capable:
                log.warning(
                    "lazy pages requested but CRIU cannot serve them for this kernel"
                    " (--unprivileged: needs jusnap.store.lazy_unprivileged and the criu"
                    " role's patch); restoring eagerly"
                )
            return False
        return mode == "true" or snap.size_bytes >= self.settings.lazy_threshold_mb * 1024 * 1024
