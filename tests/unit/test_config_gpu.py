"""The ``jusnap.gpu`` section: typed keys, defaults, flags, and one-line errors for bad values."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from jusnap.config import (
    LEAVES,
    GpuSettings,
    add_flags,
    load_settings,
    section_from_mapping,
    settings_from_args,
)
from jusnap.config_reference import reference
from jusnap.errors import ConfigError

GPU_KEYS = {
    "jusnap.gpu.lock_timeout_ms": 10_000,
    "jusnap.gpu.free_torch_cache": False,
    "jusnap.gpu.auto_snapshot": True,
    "jusnap.gpu.auto_cooldown_seconds": 60.0,
}


def test_keys_and_defaults() -> None:
    assert {k for k in LEAVES if k.startswith("jusnap.gpu.")} == set(GPU_KEYS)
    gpu = load_settings().jusnap.gpu
    assert isinstance(gpu, GpuSettings)
    for key, default in GPU_KEYS.items():
        assert getattr(gpu, key.rsplit(".", 1)[1]) == default, key


def test_yaml_section(tmp_path: Path) -> None:
    conf = tmp_path / "conf.yml"
    conf.write_text(
        "jusnap:\n  gpu:\n    lock_timeout_ms: 2500\n    free_torch_cache: true\n"
        "    auto_snapshot: no\n    auto_cooldown_seconds: 2m\n"
    )
    gpu = load_settings(conf).jusnap.gpu
    assert gpu == GpuSettings(2500, True, False, 120.0)


def test_yaml_section_left_empty(tmp_path: Path) -> None:
    """``gpu:`` with every key commented out was accepted as defaults; it still is."""
    conf = tmp_path / "conf.yml"
    conf.write_text("jusnap:\n  gpu:\n  #  lock_timeout_ms: 2500\n  log_level: info\n")
    assert load_settings(conf).jusnap.gpu == GpuSettings()


def test_flags(tmp_path: Path) -> None:
    conf = tmp_path / "conf.yml"
    conf.write_text("jusnap:\n  gpu:\n    lock_timeout_ms: 2500\n    auto_snapshot: false\n")
    parser = argparse.ArgumentParser()
    add_flags(parser)
    args = parser.parse_args(
        [
            "--config",
            str(conf),
            "--jusnap.gpu.lock_timeout_ms",
            "30000",
            "--jusnap.gpu.free_torch_cache",
            "yes",
            "--jusnap.gpu.auto_cooldown_seconds",
            "90",
        ]
    )
    gpu = settings_from_args(args).jusnap.gpu
    assert gpu == GpuSettings(30_000, True, False, 90.0)  # auto_snapshot from the file


def test_every_gpu_key_has_a_flag() -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser)
    flags = {opt for action in parser._actions for opt in action.option_strings}
    for key in GPU_KEYS:
        assert f"--{key}" in flags, key


def test_reference_documents_the_section() -> None:
    text = reference()
    assert "| `jusnap.gpu.lock_timeout_ms` | `10000` |" in text
    assert "| `jusnap.gpu.auto_cooldown_seconds` | `60s` |" in text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"jusnap.gpu.lock_timeout": "5"}, "unknown setting 'jusnap.gpu.lock_timeout' (did you"),
        ({"jusnap.gpu.lock_timeout_ms": "soon"}, "jusnap.gpu.lock_timeout_ms: expected a whole"),
        ({"jusnap.gpu.lock_timeout_ms": True}, "jusnap.gpu.lock_timeout_ms: expected a whole"),
        ({"jusnap.gpu.lock_timeout_ms": "2.5"}, "jusnap.gpu.lock_timeout_ms: expected a whole"),
        ({"jusnap.gpu.lock_timeout_ms": "-1"}, "lock_timeout_ms: must not be negative"),
        ({"jusnap.gpu.lock_timeout_ms": str(2**32)}, "lock_timeout_ms: at most 4294967295"),
        ({"jusnap.gpu.free_torch_cache": "maybe"}, "free_torch_cache: expected true or false"),
        ({"jusnap.gpu.auto_snapshot": "2"}, "jusnap.gpu.auto_snapshot: expected true or false"),
        ({"jusnap.gpu.auto_cooldown_seconds": "-5"}, "auto_cooldown_seconds: expected a dur"),
        ({"jusnap.gpu.auto_cooldown_seconds": -5}, "auto_cooldown_seconds: must not be negative"),
        ({"jusnap.gpu.auto_cooldown_seconds": "soon"}, "auto_cooldown_seconds: expected a dur"),
        ({"jusnap.gpu.auto_cooldown_seconds": False}, "auto_cooldown_seconds: expected a dur"),
    ],
)
def test_bad_values_are_one_clear_line(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, overrides)
    assert message in info.value.message
    assert "\n" not in info.value.message


def test_limits_are_accepted() -> None:
    gpu = load_settings(
        None, {"jusnap.gpu.lock_timeout_ms": "0", "jusnap.gpu.auto_cooldown_seconds": "0"}
    ).jusnap.gpu
    assert (gpu.lock_timeout_ms, gpu.auto_cooldown_seconds) == (0, 0)
    top = load_settings(None, {"jusnap.gpu.lock_timeout_ms": 2**32 - 1}).jusnap.gpu
    assert top.lock_timeout_ms == 2**32 - 1


def test_section_in_file_must_be_a_mapping(tmp_path: Path) -> None:
    conf = tmp_path / "conf.yml"
    conf.write_text("jusnap:\n  gpu: [lock_timeout_ms]\n")
    with pytest.raises(ConfigError, match=r"^jusnap\.gpu: expected a mapping$"):
        load_settings(conf)


def test_from_raw_mapping() -> None:
    """What the CUDA hook accepted before the section was typed, with the same checks."""
    gpu = GpuSettings.from_dict(
        {"lock_timeout_ms": "2500", "free_torch_cache": "yes", "auto_cooldown_seconds": 120}
    )
    assert gpu == GpuSettings(2500, True, True, 120.0)
    assert GpuSettings.from_dict(None) == GpuSettings()
    assert section_from_mapping("jusnap.gpu", {}) == GpuSettings()
    with pytest.raises(ConfigError, match=r"^jusnap\.gpu: expected a mapping$"):
        GpuSettings.from_dict(["lock_timeout_ms"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^jusnap\.gpu: unknown setting"):
        GpuSettings.from_dict({"nope": 1})
    with pytest.raises(ConfigError, match="must not be negative"):
        GpuSettings.from_dict({"lock_timeout_ms": -1})
