"""Error codes, HTTP statuses and exit codes come from one table: the classes in errors.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from jusnap.cli import EXIT_CODES
from jusnap.client import ApiError
from jusnap.errors import (
    InternalError,
    JusnapError,
    KernelNotRunning,
    RestoreFailed,
    SnapshotFailed,
    StoreFull,
    by_code,
    code_for_status,
)

README = Path(__file__).resolve().parents[2] / "README.md"


def _classes(cls: type[JusnapError] = JusnapError) -> list[type[JusnapError]]:
    """The error classes of errors.py (not the client's ApiError, which carries any code)."""
    subs = [c for sub in cls.__subclasses__() for c in _classes(sub)]
    return [c for c in [cls, *subs] if c.__module__ == "jusnap.errors"]


@pytest.mark.parametrize(
    ("code", "status", "exit_code"),
    [
        ("snapshot_failed", 500, 5),  # was 6: the exit code used to follow the HTTP status
        ("restore_failed", 500, 6),
        ("store_full", 507, 5),
        ("kernel_not_running", 409, 4),
        ("busy", 409, 75),
        ("refused", 422, 7),
        ("validation_failed", 422, 64),
        ("internal_error", 500, 1),
        ("jupyter_unavailable", 502, 69),
        ("something_newer", 418, 1),
    ],
)
def test_cli_exit_code_follows_the_error_code_not_the_status(
    code: str, status: int, exit_code: int
) -> None:
    assert ApiError(status, {"error": code, "message": "m"}).exit_code == exit_code


def test_every_class_is_found_by_its_code() -> None:
    for cls in _classes():
        assert by_code(cls.code) is cls
    assert by_code("no_such_code") is JusnapError
    assert (by_code("snapshot_failed"), by_code("store_full")) == (SnapshotFailed, StoreFull)
    assert (by_code("restore_failed"), by_code("kernel_not_running")) == (
        RestoreFailed,
        KernelNotRunning,
    )


def test_codes_for_bare_statuses_are_codes_of_classes() -> None:
    assert code_for_status(500) == InternalError.code
    assert code_for_status(409) == "busy"
    assert code_for_status(422) == "validation_failed"
    for status in (400, 401, 403, 404, 405, 413, 415, 422, 500, 502, 503, 507):
        assert by_code(code_for_status(status)).http_status == status


def _documented(text: str) -> set[int]:
    return {int(n) for n in re.findall(r"`(\d+)`", text)}


def test_help_and_readme_list_exactly_the_classes_exit_codes() -> None:
    codes = {cls.exit_code for cls in _classes()} | {0}
    assert {int(n) for n in re.findall(r"^\s+(\d+)\s", EXIT_CODES, re.M)} == codes
    readme = README.read_text()
    start = readme.index("Exit codes (also in `jusnap --help`)")
    assert _documented(readme[start : readme.index("\n\n", start)]) == codes
