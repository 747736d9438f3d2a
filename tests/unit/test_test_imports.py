"""tests/conftest.py is loaded for every test run, tests/gpu's on the GPU machine included,
whose bundle has no requests or websocket-client: the shared fixtures must not need them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_root_conftest_imports_without_the_jupyter_client_libraries() -> None:
    code = (
        "import sys\n"
        "sys.modules['requests'] = None\n"  # None in sys.modules: importing it raises
        "sys.modules['websocket'] = None\n"
        "import tests.conftest\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-3000:]
