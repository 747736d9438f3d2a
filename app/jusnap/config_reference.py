"""The configuration reference, generated from ``config.py`` itself.

The comment above each setting in the dataclasses is its documentation; this module turns them
into docs/configuration.md (``jusnap config-reference``), and a unit test fails when the file
is stale, so the reference cannot drift from the code.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from typing import Any

from . import config
from .config import LEAVES, Settings, load_settings, value_at

HEADER = """# Configuration

Jusnap reads `/etc/jusnap/conf.yml` (or `--config FILE`), then command-line flags named after
the keys (`jusnap serve --jusnap.ipython.cooldown 10s`). The keys of the original jusnap keep
their meaning. Durations are numbers of seconds or strings like `500ms`, `5s`, `2m`, `1h`.
Unknown keys and bad values stop the daemon with one line naming the key.

Generated from `app/jusnap/config.py` by `jusnap config-reference`; do not edit by hand.

| key | default | meaning |
|---|---|---|
"""

EXAMPLE = """
## Example

```yaml
graceful:
  shutdown_timeout: 10s
jusnap:
  state_dir: /var/lib/jusnap
  log_level: info
  criu:
    ghost_limit: 64        # MB
  ipython:
    cooldown: 5s
    history_enabled: true
    auto_snapshot: true
  os:
    uid: jusnap
  store:
    keep_auto: 50
  gpu:
    free_torch_cache: true
    auto_cooldown_seconds: 120
```

The `gpu` keys are read by the CUDA hook around each snapshot of a GPU kernel; see
[gpu.md](gpu.md).
"""


def _comments() -> dict[tuple[str, str], str]:
    """(class name, field name) -> the comment lines just above the field."""
    source = inspect.getsource(config)
    lines = source.splitlines()
    out: dict[tuple[str, str], str] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                text = []
                i = stmt.lineno - 2
                while i >= 0 and lines[i].strip().startswith("#"):
                    text.insert(0, lines[i].strip().lstrip("#").strip())
                    i -= 1
                out[(node.name, stmt.target.id)] = " ".join(text)
    return out


def _owner_classes() -> dict[str, str]:
    """Dotted key -> the dataclass that declares its leaf."""
    owners: dict[str, str] = {}

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            typ = cls.__annotations__.get(f.name)
            default = getattr(cls(), f.name) if f.default is dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                walk(type(default), f"{prefix}{f.name}.")
            else:
                owners[f"{prefix}{f.name}"] = cls.__name__
            del typ

    walk(Settings, "")
    return owners


def _fmt(value: Any) -> str:
    if isinstance(value, config.Duration):
        return f"`{value:g}s`"
    if value == "":
        return "(empty)"
    return f"`{value}`"


def reference() -> str:
    comments = _comments()
    owners = _owner_classes()
    defaults = load_settings()
    rows = []
    for key in LEAVES:
        text = comments.get((owners[key], key.rsplit(".", 1)[-1]), "")
        rows.append(f"| `{key}` | {_fmt(value_at(defaults, key))} | {text.replace('|', '/')} |")
    return HEADER + "\n".join(rows) + "\n" + EXAMPLE
