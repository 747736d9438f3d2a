"""Jusnap's JupyterLab 4 / Notebook 7 frontend: the prebuilt extension ships inside this package."""

try:
    from ._version import __version__
except ImportError:  # a source checkout that was never built
    __version__ = "dev"


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "jusnap-labextension"}]
