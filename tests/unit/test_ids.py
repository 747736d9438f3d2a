from __future__ import annotations

import pytest
from jusnap.errors import InvalidRequest
from jusnap.ids import check_kernel_id, check_snapshot_id, new_kernel_id, new_snapshot_id


def test_snapshot_ids_sort_by_creation_even_within_a_millisecond() -> None:
    ids = [new_snapshot_id(now=1_700_000_000.0) for _ in range(200)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 200
    later = new_snapshot_id(now=1_700_000_001.0)
    assert later > ids[-1]


def test_ids_validate() -> None:
    assert check_snapshot_id(new_snapshot_id())
    assert check_kernel_id(new_kernel_id())
    for bad in ["", "../x", "01M8AQ", "01M8AQK346R8G3BAJ6V1TDW3VR/..", 12, None, "i" * 26]:
        with pytest.raises(InvalidRequest):
            check_snapshot_id(bad)
    for bad in ["", "not-a-uuid", "00000000-0000-4000-8000-00000000000G", "../../etc"]:
        with pytest.raises(InvalidRequest):
            check_kernel_id(bad)


def test_ids_with_a_trailing_newline_are_refused() -> None:
    """Python's ``$`` matches before a final newline: ``"<id>\\n"`` once passed as an id that
    looks like another kernel's (a second kernel with the same visible id was created)."""
    kid, sid = new_kernel_id(), new_snapshot_id()
    for bad in (f"{kid}\n", f"{kid}\r\n", f"\n{kid}"):
        with pytest.raises(InvalidRequest):
            check_kernel_id(bad)
    for bad in (f"{sid}\n", f"{sid}\n\n"):
        with pytest.raises(InvalidRequest):
            check_snapshot_id(bad)
