"""The provisioned appliance: ansible/site.yml applied to this host by ``.ci/provision.sh``.

These tests run as root against the real services the playbook installed (supervisord, the
daemon, Notebook 7, nginx, certbot) and change this host the way the playbook does (they re-run
it, kill services, add a test host name to /etc/hosts and leave everything as provisioned).

They run when the host is provisioned (``/etc/supervisor/conf.d/jusnap.conf`` exists) and are
skipped otherwise; ``JUSNAP_APPLIANCE_TESTS=1`` (CI) turns that skip into a failure.
"""

from __future__ import annotations

import os

import pytest
import requests

from .host import (
    ANSIBLE_VENV,
    DAEMON_PROGRAM,
    JUPYTER,
    JUSNAP_CLI,
    PROGRAMS_FILE,
    program_pid,
    run,
    token,
    wait_for,
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    required = os.environ.get("JUSNAP_APPLIANCE_TESTS") == "1"
    if required or PROGRAMS_FILE.exists():
        return
    skip = pytest.mark.skip(
        reason="host not provisioned: run .ci/provision.sh (JUSNAP_APPLIANCE_TESTS=1 requires it)"
    )
    for item in items:
        if "/appliance/" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def appliance() -> None:
    assert os.geteuid() == 0, "the appliance tests run as root (CI does)"
    assert PROGRAMS_FILE.exists(), f"{PROGRAMS_FILE} missing: run .ci/provision.sh first"
    assert (ANSIBLE_VENV / "bin" / "ansible-playbook").exists(), (
        "the Ansible venv is missing: run .ci/provision.sh"
    )
    # Both programs up before anything else (a previous test may have restarted them).
    wait_for(
        "the daemon",
        lambda: (
            program_pid(DAEMON_PROGRAM) and run(JUSNAP_CLI, "health", check=False).returncode == 0
        ),
    )
    wait_for(
        "Jupyter",
        lambda: (
            requests.get(
                JUPYTER + "api/status", headers={"Authorization": f"token {token()}"}, timeout=5
            ).status_code
            == 200
        ),
    )
