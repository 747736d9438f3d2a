"""Which snapshots retention removes: a pure decision, applied by the engine.

The promises, in order:

* manual and labelled snapshots are never removed by retention (only by the user);
* per notebook (a kernel without a notebook counts as its own notebook) the newest
  ``keep_auto`` automatic snapshots stay;
* pre-restore safety copies go once older than ``pre_restore_ttl``;
* if a user's snapshots take more than ``max_user_bytes``, that user's oldest automatic
  snapshots go first until they fit (or only protected ones are left); a new snapshot that
  cannot fit even then is not kept (the user's quota, ``plan_size``);
* ``protect`` (e.g. the snapshot just taken, or one a restore is using) always stays.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from ..registry import Snapshot
from .usage import Refs


@dataclass(frozen=True)
class Policy:
    keep_auto: int = 50
    max_user_bytes: int = 0
    pre_restore_ttl: float = 24 * 3600.0


def _group(s: Snapshot) -> tuple[int, str]:
    return (s.owner_uid, s.notebook_path or f"kernel:{s.kernel_id}")


def removable(s: Snapshot) -> bool:
    return s.trigger == "auto" and not s.label


def by_count_and_age(
    snaps: Iterable[Snapshot], policy: Policy, now: float, protect: set[str]
) -> list[str]:
    """Ids over the per-notebook count and expired pre-restore copies, oldest first."""
    doomed: list[Snapshot] = []
    groups: dict[tuple[int, str], list[Snapshot]] = defaultdict(list)
    for s in snaps:
        expired = now - s.created_at > policy.pre_restore_ttl
        if s.trigger == "pre-restore" and not s.label and expired and s.id not in protect:
            doomed.append(s)
        elif removable(s):
            groups[_group(s)].append(s)  # protected ones count towards keep_auto too
    if policy.keep_auto > 0:
        for members in groups.values():
            members.sort(key=lambda s: (s.created_at, s.id), reverse=True)
            doomed += [s for s in members[policy.keep_auto :] if s.id not in protect]
    doomed.sort(key=lambda s: (s.created_at, s.id))
    return [s.id for s in doomed]


def by_size(
    snaps: Iterable[Snapshot],
    refs: Refs,
    chunk_bytes: dict[bytes, int],
    policy: Policy,
    protect: set[str],
) -> list[str]:
    """Oldest automatic snapshots to remove until the owner's stored bytes fit the cap."""
    return plan_size(snaps, refs, chunk_bytes, policy, protect)[0]


def plan_size(
    snaps: Iterable[Snapshot],
    refs: Refs,
    chunk_bytes: dict[bytes, int],
    policy: Policy,
    protect: set[str],
) -> tuple[list[str], int]:
    """``by_size``'s ids, and the owner's stored bytes once they are gone.

    Exact, not estimated: a page shared by two snapshots is freed only when both are gone,
    which the reference counts below follow as snapshots are taken off. Bytes still over the
    cap afterwards belong to snapshots retention must keep (manual, labelled, protected): the
    caller decides what that means for the snapshot just taken (``StoreService``: a quota).
    """
    count: Counter[bytes] = Counter()
    per_pages = {sid: refs.pages(sid) for sid in refs.leaves}
    for pages in per_pages.values():
        count.update(pages)
    total = sum(chunk_bytes.get(h, 0) for h in count) + sum(refs.whole.values())
    total += sum(chunk_bytes.get(h, 0) for h in refs.lists)
    if policy.max_user_bytes <= 0:
        return [], total
    candidates = sorted(
        (s for s in snaps if removable(s) and s.id not in protect and s.id in per_pages),
        key=lambda s: (s.created_at, s.id),
    )
    out: list[str] = []
    for s in candidates:
        if total <= policy.max_user_bytes:
            break
        for h in per_pages[s.id]:
            count[h] -= 1
            if count[h] == 0:
                total -= chunk_bytes.get(h, 0)
        total -= refs.whole.get(s.id, 0)
        out.append(s.id)
    return out, total
