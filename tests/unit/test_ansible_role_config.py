"""The jusnap Ansible role writes every setting of config.py into /etc/jusnap/conf.yml.

A setting added to ``config.py`` but not to the role's defaults and template would silently
stay at its built-in default on every appliance, with no variable to change it. The template
is rendered here with plain Jinja2; the few Ansible filters it uses are stood in for by
minimal equivalents (Ansible is not installed in the test virtualenv).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import yaml
from jusnap.config import LEAVES, load_settings

ROLE = Path(__file__).resolve().parents[2] / "ansible" / "roles" / "jusnap"
TEMPLATE = ROLE / "templates" / "conf.yml.j2"


def _combine(base: dict[str, Any], extra: dict[str, Any], recursive: bool = False) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if recursive and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _combine(out[key], value, True)
        else:
            out[key] = value
    return out


def _env() -> jinja2.Environment:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters.update(
        comment=lambda text: f"# {text}",
        combine=_combine,
        to_nice_yaml=lambda data, indent=2, sort_keys=True: yaml.safe_dump(
            data, indent=indent, sort_keys=sort_keys, default_flow_style=False
        ),
        bool=lambda v: v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes", "on"),
    )
    return env


def _defaults(env: jinja2.Environment) -> dict[str, Any]:
    """The role's defaults with their own ``{{ ... }}`` references resolved."""
    raw = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    context: dict[str, Any] = {**raw, "role_path": str(ROLE)}
    for _ in range(5):
        context = {
            k: env.from_string(v).render(context) if isinstance(v, str) and "{{" in v else v
            for k, v in context.items()
        }
    return context


def _keys(data: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in LEAVES:
            out |= _keys(value, dotted + ".")
        else:
            out.add(dotted)
    return out


def test_template_uses_only_variables_the_defaults_define() -> None:
    env = _env()
    used = jinja2.meta.find_undeclared_variables(env.parse(TEMPLATE.read_text()))
    missing = used - set(_defaults(env)) - {"ansible_managed"}
    assert not missing, f"template variables without a default: {sorted(missing)}"


def test_rendered_conf_sets_every_config_key_and_loads(tmp_path: Path) -> None:
    env = _env()
    context = {**_defaults(env), "ansible_managed": "Ansible managed"}
    rendered = env.from_string(TEMPLATE.read_text()).render(context)
    keys = _keys(yaml.safe_load(rendered))
    assert keys == set(LEAVES), (
        f"config keys the role does not set: {sorted(set(LEAVES) - keys)}; "
        f"keys config.py does not know: {sorted(keys - set(LEAVES))}"
    )
    conf = tmp_path / "conf.yml"
    conf.write_text(rendered)
    s = load_settings(conf)  # the daemon accepts the file: no unknown key, no bad value
    assert s.jusnap.criu.ghost_limit == int(context["jusnap_criu_ghost_limit"])
    assert s.jusnap.http.port == str(context["jusnap_http_port"])
