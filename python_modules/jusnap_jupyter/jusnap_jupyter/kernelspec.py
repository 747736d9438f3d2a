"""The "Python 3 (Jusnap)" kernelspec: ipykernel, launched by the daemon, auto-snapshots loaded.

The kernel.json shipped in this package is the one source: the wheel installs it as shared data
(so ``pip install`` alone makes it available), and ``install()`` puts it into any other Jupyter
data directory. ``"python"`` in its argv becomes the Jupyter server's interpreter at launch, as
jupyter_client does for ipykernel's own spec.
"""

from __future__ import annotations

from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager

NAME = "jusnap-python3"
SPEC_DIR = Path(__file__).resolve().parent / "kernelspec"


def install(user: bool = False, prefix: str | None = None) -> str:
    """Install the kernelspec; returns the directory it went to."""
    return KernelSpecManager().install_kernel_spec(
        str(SPEC_DIR), kernel_name=NAME, user=user, prefix=prefix, replace=True
    )
