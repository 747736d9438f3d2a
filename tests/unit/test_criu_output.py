"""Turning CRIU's logs and stats images into one readable line and a number."""

from __future__ import annotations

import struct

from jusnap.criu import explain, frozen_seconds

from tests.criu_craft import varint as _varint


def _log(tmp_path, text: str):
    p = tmp_path / "restore.log"
    p.write_text(text)
    return p


def test_known_failures_get_plain_words(tmp_path) -> None:
    cases = {
        "Error (criu/files-reg.c:2156): File home/u/.ipython/history.sqlite has bad size 20480 (expect 16384)": "file home/u/.ipython/history.sqlite changed size since the snapshot",
        "Error (criu/cr-restore.c:1480): Can't fork for 4242: File exists": "PID 4242 is in use by another process",
        "Error (criu/image.c:1): write failed: No space left on device": "no space left on the snapshot store",
    }
    for line, expected in cases.items():
        assert explain(_log(tmp_path, f"(00.01) Warn x\n{line}\n"), "fallback") == expected


def test_first_error_line_otherwise(tmp_path) -> None:
    text = "(00.0) Warn (criu/kerndat.c:1): $XDG_RUNTIME_DIR not set\nError (criu/x.c:12): something odd happened\nError (criu/y.c:1): later\n"
    assert explain(_log(tmp_path, text), "fallback") == "something odd happened"


def test_missing_log_falls_back(tmp_path) -> None:
    assert explain(tmp_path / "nope.log", "criu exited 1") == "criu exited 1"


def test_frozen_time_from_stats_image(tmp_path) -> None:
    dump = b"\x08" + _varint(1500) + b"\x10" + _varint(23_456) + b"\x18" + _varint(7)
    entry = b"\x0a" + _varint(len(dump)) + dump
    data = struct.pack("<III", 0x55105940, 0x57093306, len(entry)) + entry
    (tmp_path / "stats-dump").write_bytes(data)
    assert frozen_seconds(tmp_path) == 0.023456


def test_frozen_time_absent_or_garbage(tmp_path) -> None:
    assert frozen_seconds(tmp_path) is None
    (tmp_path / "stats-dump").write_bytes(b"\x00\x01")
    assert frozen_seconds(tmp_path) is None
