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
