"""The request schemas reject what the engine would refuse, and the OpenAPI document says so."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from jusnap.api import create_app
from jusnap.api.schemas import AutoIn, ConnectionIn, KernelIn, RestoreIn, SnapshotIn
from jusnap.ids import new_kernel_id
from marshmallow import ValidationError

PORTS = {"shell_port": 5001, "iopub_port": 5002, "stdin_port": 5003, "control_port": 5004,
         "hb_port": 5005}  # fmt: skip
CONNECTION = {**PORTS, "key": "k" * 32}


@pytest.mark.parametrize("value", [0, 1, "true", "yes", None, 1.0])
def test_booleans_are_json_booleans_only(value: Any) -> None:
    with pytest.raises(ValidationError):
        AutoIn().load({"enabled": value})
    with pytest.raises(ValidationError):
        SnapshotIn().load({"wait": value})
    assert AutoIn().load({"enabled": False}) == {"enabled": False}


def test_connection_ports_must_differ() -> None:
    assert ConnectionIn().load(CONNECTION)["hb_port"] == 5005
    with pytest.raises(ValidationError) as exc:
        ConnectionIn().load({**CONNECTION, "hb_port": 5001})
    assert "differ" in json.dumps(exc.value.messages)


@pytest.mark.parametrize("name", ["", "A=B", "NUL\x00", "\ud800"])
def test_env_names_follow_the_rules(name: str) -> None:
    with pytest.raises(ValidationError):
        KernelIn().load({"env": {name: "x"}})
    assert KernelIn().load({"env": {"LANG": "C.UTF-8"}})["env"] == {"LANG": "C.UTF-8"}


def test_ids_and_labels_with_a_trailing_newline_are_refused() -> None:
    kid = new_kernel_id()
    assert KernelIn().load({"kernel_id": kid})["kernel_id"] == kid
    for schema, body in [
        (KernelIn(), {"kernel_id": kid + "\n"}),
        (RestoreIn(), {"kernel_id": kid + "\n"}),
        (SnapshotIn(), {"label": "before\n"}),
    ]:
        with pytest.raises(ValidationError):
            schema.load(body)


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    # Building the document needs no engine beyond its settings (pure schema logic).
    settings = SimpleNamespace(jusnap=SimpleNamespace(jupyter=SimpleNamespace(browser_auth=False)))
    app = create_app(SimpleNamespace(settings=settings))  # type: ignore[arg-type]
    return app.test_client().get("/jusnap/api/v1/openapi.json").get_json()


def test_document_states_the_rules(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    env = schemas["KernelIn"]["properties"]["env"]
    assert env["propertyNames"] == {
        "type": "string", "minLength": 1, "maxLength": 256, "pattern": "^[^\\x00=]+$"
    }  # fmt: skip
    assert "differ" in schemas["KernelIn"]["properties"]["connection"]["description"]
    assert schemas["AutoIn"]["properties"]["enabled"] == {"type": "boolean"}
    # JSON Schema's "$" is the end of the text; Python's "\Z" is not valid there
    assert "\\Z" not in json.dumps(spec)
    kernel_id = schemas["KernelIn"]["properties"]["kernel_id"]["pattern"]
    assert kernel_id.endswith("$")


def test_launch_documents_its_404(spec: dict[str, Any]) -> None:
    """POST /kernels with the id of someone else's kernel answers 404, like any other lookup."""
    assert "404" in spec["paths"]["/jusnap/api/v1/kernels"]["post"]["responses"]


@pytest.mark.parametrize("path", ["/home/u/project/", "/home/u/project/.", "..", "nb/.."])
def test_a_directory_is_refused_as_a_notebook_path(path: str) -> None:
    with pytest.raises(ValidationError, match="notebook file"):
        KernelIn().load({"notebook_path": path})


@pytest.mark.parametrize("path", ["/home/u/project/a.ipynb", "a.ipynb", "", None])
def test_files_and_no_notebook_are_accepted(path: str | None) -> None:
    assert KernelIn().load({"notebook_path": path}) == {"notebook_path": path}
