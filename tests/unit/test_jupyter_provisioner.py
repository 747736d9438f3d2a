"""The provisioner's pure parts: the command and environment handed to the daemon."""

from __future__ import annotations

import asyncio
import sys

from jupyter_client.kernelspec import KernelSpec
from jusnap_jupyter.provisioner import JusnapProvisioner


def _provisioner(**spec: object) -> JusnapProvisioner:
    ks = KernelSpec(
        argv=["python", "-m", "ipykernel_launcher", "-f", "{connection_file}", "--ext=x"],
        display_name="Python 3 (Jusnap)",
        language="python",
        **spec,
    )
    ks.resource_dir = "/res"
    return JusnapProvisioner(kernel_id="k", kernel_spec=ks, parent=None)


def test_command_keeps_the_connection_file_placeholder_for_the_daemon() -> None:
    p = _provisioner()
    kw = asyncio.run(p.pre_launch(env={"PATH": "/x"}, extra_arguments=["--foo"]))
    assert kw["cmd"] == [
        sys.executable,
        "-m",
        "ipykernel_launcher",
        "-f",
        "{connection_file}",
        "--ext=x",
        "--foo",
    ]


def test_only_the_kernelspec_env_and_the_session_name_reach_the_daemon() -> None:
    p = _provisioner(env={"MY_VAR": "1"})
    server_env = {
        "PATH": "/srv/bin",
        "JUPYTER_TOKEN": "secret",
        "JPY_PARENT_PID": "1",
        "JPY_SESSION_NAME": "/nb/a.ipynb",
        "LANG": "C.UTF-8",
    }
    kw = asyncio.run(p.pre_launch(env=server_env))
    assert kw["env"] == {"MY_VAR": "1", "JPY_SESSION_NAME": "/nb/a.ipynb", "LANG": "C.UTF-8"}


def test_not_launched_means_no_process() -> None:
    p = _provisioner()
    assert not p.has_process
    assert asyncio.run(p.poll()) is None
