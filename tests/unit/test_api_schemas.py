"""Request validation that protects a notebook's identity (issue 15)."""

from __future__ import annotations

import pytest
from jusnap.api.schemas import KernelIn
from marshmallow import ValidationError


@pytest.mark.parametrize("path", ["/home/u/project/", "/home/u/project/.", "..", "nb/.."])
def test_a_directory_is_refused_as_a_notebook_path(path: str) -> None:
    with pytest.raises(ValidationError, match="notebook file"):
        KernelIn().load({"notebook_path": path})


@pytest.mark.parametrize("path", ["/home/u/project/a.ipynb", "a.ipynb", "", None])
def test_files_and_no_notebook_are_accepted(path: str | None) -> None:
    assert KernelIn().load({"notebook_path": path}) == {"notebook_path": path}
