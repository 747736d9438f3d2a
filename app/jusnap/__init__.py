"""Jusnap: snapshot and restore whole Jupyter kernels in place with CRIU."""

__version__ = "0.1.0"
