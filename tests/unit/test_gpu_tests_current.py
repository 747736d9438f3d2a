"""tests/gpu runs only on a lent GPU machine: catch here, without one, what would break it there.

The GPU scripts import Jusnap inside functions and call the hook, driver binding and /proc
probe through local names, so a rename in app/jusnap/hooks/cuda only shows up as an
AttributeError minutes into a scarce device run (``GpuSystem.mig_enabled`` did, once). This
reads the scripts and checks every Jusnap name they import and every method they call on
``system`` / ``driver`` / ``hook`` against the real classes.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
from jusnap.hooks.cuda import CudaDriver, CudaHook, GpuSystem

GPU_DIR = Path(__file__).resolve().parents[1] / "gpu"
SCRIPTS = sorted(GPU_DIR.glob("*.py"))
# What the scripts call these local names; constructing them loads no library and opens nothing.
OBJECTS = {"system": GpuSystem(), "driver": CudaDriver(), "hook": CudaHook()}


def test_there_are_gpu_scripts() -> None:
    assert {p.name for p in SCRIPTS} >= {"device_smoke.py", "test_gpu_kernel.py"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_jusnap_imports_exist(script: Path) -> None:
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jusnap"):
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                assert hasattr(module, alias.name), f"{script.name}: {node.module}.{alias.name}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_called_methods_exist(script: Path) -> None:
    for node in ast.walk(ast.parse(script.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in OBJECTS
        ):
            obj = OBJECTS[node.value.id]
            assert hasattr(obj, node.attr), f"{script.name}: {node.value.id}.{node.attr}"
