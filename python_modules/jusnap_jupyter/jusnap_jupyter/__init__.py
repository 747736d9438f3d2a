"""Jusnap in Jupyter: kernels whose whole state can be snapshotted and restored in place.

* ``provisioner``  -- jupyter_client kernel provisioner: the Jusnap daemon launches the kernels
* ``kernelspec``   -- the "Python 3 (Jusnap)" kernelspec
                      (``python -m jusnap_jupyter install-kernelspec``)
* ``autosnap``     -- IPython extension: an automatic snapshot after every executed cell
* ``handlers``     -- Jupyter server extension: the Jusnap API under Jupyter's base URL
* ``fork``         -- Jupyter server extension: "Open as new notebook" (copy + fork + session)
* ``resume``       -- Jupyter server extension: a stopping server snapshots its kernels first
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "jusnap_jupyter"}]


_KERNEL_MANAGER_CLASSES = (
    "MultiKernelManager",
    "MappingKernelManager",
    "AsyncMappingKernelManager",
)


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from .handlers import handlers
    from .kernelspec import NAME
    from .resume import snapshot_before_stopping

    web_app = serverapp.web_app
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"]))
    serverapp.log.info("jusnap: API proxied at %sjusnap/api/v1/", web_app.settings["base_url"])
    _make_default_kernel(serverapp, NAME)
    _name_notebook_files(serverapp)
    snapshot_before_stopping(serverapp)


def _name_notebook_files(serverapp: Any) -> None:
    """Tell the provisioner which file a session's kernel belongs to.

    Jupyter gives the kernel only ``JPY_SESSION_NAME`` = ``join(cwd, name)``; with the
    ``"name": ""`` some clients send, that is the directory, and every notebook in it would
    share one snapshot list (issue 15). The session's ``path`` still names the file here, so
    the environment gets ``JUSNAP_NOTEBOOK_PATH`` whenever that path is an existing file.
    """
    from .fork import notebook_file
    from .provisioner import NOTEBOOK_ENV

    sm = serverapp.session_manager
    original = sm.get_kernel_env

    def get_kernel_env(path: str | None, name: str | None = None) -> dict[str, str]:
        env = original(path, name)
        env.pop(NOTEBOOK_ENV, None)  # never the server's own, if it has one
        if path:
            candidate = notebook_file(sm.kernel_manager, path)
            if candidate.is_file():
                env[NOTEBOOK_ENV] = str(candidate)
        return env

    sm.get_kernel_env = get_kernel_env


def _make_default_kernel(serverapp: Any, name: str) -> None:
    """Jusnap kernels by default, unless the admin chose a default kernel explicitly.

    (jupyter_server reads only ``jpserver_extensions`` from ``jupyter_server_config.d``
    snippets, so the installed snippet enables this extension and the extension sets this.)
    """
    cfg = serverapp.config
    if any("default_kernel_name" in cfg.get(c, {}) for c in _KERNEL_MANAGER_CLASSES):
        return
    if name not in serverapp.kernel_spec_manager.find_kernel_specs():
        serverapp.log.warning(
            "jusnap: kernelspec %s is not installed; default kernel unchanged", name
        )
        return
    serverapp.kernel_manager.default_kernel_name = name
