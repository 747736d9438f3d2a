"""Settings: the original tool's keys keep their meaning; bad input stops start-up with one line."""

from __future__ import annotations

import argparse

import pytest
from jusnap.config import LEAVES, add_flags, load_settings, settings_from_args
from jusnap.errors import ConfigError

ORIGINAL_KEYS = [
    "graceful.shutdown_timeout",
    "jusnap.criu.ghost_limit",
    "jusnap.http.port",
    "jusnap.http.read_timeout",
    "jusnap.http.write_timeout",
    "jusnap.ipython.args",
    "jusnap.ipython.cooldown",
    "jusnap.ipython.history_enabled",
    "jusnap.ipython.history_file",
    "jusnap.ipython.python_interpreter",
    "jusnap.ipython.runtime_path",
    "jusnap.jupyter.args",
    "jusnap.jupyter.port",
    "jusnap.log_level",
    "jusnap.os.uid",
    "jusnap.os.gid",
]


def test_every_original_option_exists() -> None:
    for key in ORIGINAL_KEYS:
        assert key in LEAVES, key


def test_defaults_match_the_original() -> None:
    s = load_settings()
    assert s.graceful.shutdown_timeout == 10
    assert s.jusnap.http.port == "8000"
    assert s.jusnap.http.read_timeout == 5 and s.jusnap.http.write_timeout == 5
    assert s.jusnap.ipython.cooldown == 5
    assert s.jusnap.ipython.history_enabled is False
    assert s.jusnap.ipython.python_interpreter == "python3"
    assert s.jusnap.jupyter.port == 8888
    assert s.jusnap.log_level == "info"


def test_ghost_limit_really_is_megabytes() -> None:
    s = load_settings(None, {"jusnap.criu.ghost_limit": "16"})
    assert s.ghost_limit_bytes == 16 * 1024 * 1024


def test_yaml_file_and_durations(tmp_path) -> None:
    conf = tmp_path / "conf.yml"
    conf.write_text(
        "graceful:\n  shutdown_timeout: 1m\n"
        "jusnap:\n  ipython:\n    cooldown: 500ms\n    history_enabled: true\n"
        "  criu:\n    ghost_limit: 32\n"
    )
    s = load_settings(conf)
    assert s.graceful.shutdown_timeout == 60
    assert s.jusnap.ipython.cooldown == 0.5
    assert s.jusnap.ipython.history_enabled is True
    assert s.jusnap.criu.ghost_limit == 32


def test_flags_override_the_file(tmp_path) -> None:
    conf = tmp_path / "conf.yml"
    conf.write_text("jusnap:\n  ipython:\n    cooldown: 5s\n")
    parser = argparse.ArgumentParser()
    add_flags(parser)
    args = parser.parse_args(
        ["--config", str(conf), "--jusnap.ipython.cooldown", "7s", "--jusnap.log_level", "debug"]
    )
    s = settings_from_args(args)
    assert s.jusnap.ipython.cooldown == 7
    assert s.jusnap.log_level == "debug"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"jusnap.nope": "1"}, "unknown setting 'jusnap.nope'"),
        ({"jusnap.ipython.cooldown": "soon"}, "expected a duration"),
        ({"jusnap.ipython.cooldown": "-1"}, "expected a duration"),
        ({"jusnap.ipython.history_enabled": "maybe"}, "expected true or false"),
        ({"jusnap.criu.ghost_limit": "2MB"}, "expected a whole number"),
        ({"jusnap.http.port": "80000"}, "not a port number"),
        ({"jusnap.http.host": "0.0.0.0"}, "loopback only"),
        ({"jusnap.log_level": "loud"}, "unknown level"),
        ({"jusnap.state_dir": "relative/dir"}, "absolute path"),
        ({"jusnap.state_dir": "/var/lib/jus nap"}, "absolute path"),
        ({"jusnap.criu.unprivileged": "sometimes"}, "auto, true or false"),
        ({"jusnap.ipython.args": "--unclosed 'quote"}, "jusnap.ipython.args"),
    ],
)
def test_bad_values_are_one_clear_line(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, overrides)
    assert message in info.value.message
    assert "\n" not in info.value.message


def test_unknown_key_in_file(tmp_path) -> None:
    conf = tmp_path / "conf.yml"
    conf.write_text("jusnap:\n  criu:\n    ghostlimit: 2\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'jusnap\.criu\.ghostlimit'"):
        load_settings(conf)


def test_broken_yaml_and_missing_file(tmp_path) -> None:
    conf = tmp_path / "conf.yml"
    conf.write_text("jusnap: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(conf)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_settings(tmp_path / "missing.yml")


def test_kernel_argv_from_interpreter_and_args() -> None:
    s = load_settings(
        None,
        {
            "jusnap.ipython.python_interpreter": "/opt/py/bin/python",
            "jusnap.ipython.args": "--matplotlib=inline --colors='NoColor'",
        },
    )
    assert s.kernel_argv() == [
        "/opt/py/bin/python",
        "-m",
        "ipykernel_launcher",
        "-f",
        "{connection_file}",
        "--matplotlib=inline",
        "--colors=NoColor",
    ]


def test_unknown_kernel_user() -> None:
    s = load_settings(None, {"jusnap.os.uid": "no-such-user-here"})
    with pytest.raises(ConfigError, match="no such user"):
        _ = s.kernel_uid
