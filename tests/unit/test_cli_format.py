from __future__ import annotations

import pytest
from jusnap.cli import build_parser, human_size, main, relative, snapshot_rows, table


def test_sizes_and_times() -> None:
    assert human_size(512) == "512 B"
    assert human_size(36_332_263) == "34.6 MiB"
    assert human_size(None) == "-"
    assert relative(100.0, now=130.0) == "30s ago"
    assert relative(0.0, now=7200.0) == "2h ago"
    assert relative(0.0, now=3 * 86400.0) == "3d ago"


def test_table_aligns() -> None:
    out = table([["a", "bbb"], ["cccc", "d"]], ["X", "Y"]).splitlines()
    assert out == ["X     Y", "a     bbb", "cccc  d"]


def test_snapshot_rows() -> None:
    rows = snapshot_rows(
        [
            {
                "id": "01M8AQK346R8G3BAJ6V1TDW3VR",
                "created_at": 0,
                "trigger": "auto",
                "execution_count": 3,
                "size_bytes": 2048,
                "frozen_seconds": 0.0123,
                "label": None,
            }
        ]
    )
    assert (
        "01M8AQK346R8G3BAJ6V1TDW3VR" in rows
        and "auto" in rows
        and "2.0 KiB" in rows
        and "0.012s" in rows
    )
    assert snapshot_rows([]) == "no snapshots"


def test_every_issue_command_exists() -> None:
    parser = build_parser()
    for argv in (
        ["kernels"],
        ["snapshot", "k", "--label", "x"],
        ["snapshots", "k"],
        ["restore", "s"],
        ["rm", "s"],
        ["clear", "k"],
        ["serve"],
        ["start"],
    ):
        parser.parse_args(argv)


def test_daemon_not_running_is_one_line_and_exit_69(tmp_path, capsys) -> None:
    code = main(["--socket", str(tmp_path / "nope.sock"), "kernels"])
    err = capsys.readouterr().err
    assert code == 69
    assert err.count("\n") == 1 and "daemon is not running" in err


def test_bad_kernel_ref_is_a_usage_error(tmp_path, capsys) -> None:
    assert main(["--socket", str(tmp_path / "nope.sock"), "snapshot", "Robert'); DROP TABLE"]) == 64
    assert "not a kernel id" in capsys.readouterr().err


def test_help_lists_exit_codes(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "exit codes" in capsys.readouterr().out


def test_du_names_users_and_shows_their_quota() -> None:
    from jusnap.cli import usage_text

    usage = {"owner_uid": 0, "snapshots": 1, "logical_bytes": 4 << 20,
             "stored_bytes": 25 << 20, "dedup_ratio": 1.0, "compression_ratio": 1.0,
             "shared_bytes": 0, "unique_bytes": 1 << 20, "index_bytes": 1 << 10,
             "disk_bytes": 2 << 20, "garbage_bytes": 0, "per_snapshot": []}  # fmt: skip
    data = {
        "retention": {"keep_auto": 50, "max_user_mb": 100, "pre_restore_ttl": 86400.0},
        "usage": [usage, {**usage, "owner_uid": 2**31 - 2}],
    }
    text = usage_text(data)
    assert "uid 0 (root): 1 snapshot(s)" in text
    assert f"uid {2**31 - 2}: 1 snapshot(s)" in text  # no such account: no name
    assert "quota              25.0 MiB of 100 MB (25%)" in text, text
