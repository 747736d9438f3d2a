"""docs/configuration.md is generated from config.py and must not go stale."""

from __future__ import annotations

from pathlib import Path

from jusnap.config import LEAVES
from jusnap.config_reference import reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_every_setting_is_documented() -> None:
    text = reference()
    for key in LEAVES:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{key}` |"))
        assert not row.endswith("|  |"), f"{key} has no comment in config.py"


def test_doc_is_up_to_date() -> None:
    assert DOC.read_text() == reference(), "run: jusnap config-reference > docs/configuration.md"
