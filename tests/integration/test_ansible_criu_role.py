"""The Ansible criu role: idempotent, leaves a criu without file capabilities, lint-clean.

Runs as root after `.ci/install-criu.sh`, which creates the Ansible virtualenv
($JUSNAP_ANSIBLE_VENV, default /opt/jusnap-ansible), fetches the CRIU source and
applies ansible/criu.yml once. Here the playbook is applied again with the same
variables and must change nothing.
"""

from __future__ import annotations

import grp
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("JUSNAP_ANSIBLE_VENV", "/opt/jusnap-ansible"))

# Must match .ci/install-criu.sh.
CRIU_TARBALL = "/var/cache/jusnap/criu_4.2.1.orig.tar.xz"
CRIU_TARBALL_SHA256 = "29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9"

# Role defaults.
CRIU_VERSION = "4.2.1"
CRIU_BINARY = Path("/usr/local/sbin/criu")
RETIRED_COPY = Path("/usr/local/lib/jusnap/criu")
RETIRED_GROUP = "jusnap-kernels"

RECAP_RE = re.compile(
    r"^localhost\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["ANSIBLE_NOCOLOR"] = "1"
    env["NO_COLOR"] = "1"
    return subprocess.run(
        args,
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def venv_bin() -> Path:
    assert os.geteuid() == 0, "the criu role test runs as root"
    bin_dir = VENV / "bin"
    for tool in ("ansible-playbook", "ansible-lint"):
        assert (bin_dir / tool).is_file(), f"{bin_dir / tool} missing: run .ci/install-criu.sh"
    return bin_dir


def test_second_playbook_run_changes_nothing(venv_bin: Path) -> None:
    result = _run(
        [
            str(venv_bin / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            "ansible_python_interpreter=/usr/bin/python3",
            "-e",
            f"criu_source_tarball={CRIU_TARBALL}",
            "-e",
            "criu_source_tarball_remote_src=true",
            "-e",
            f"criu_source_tarball_checksum=sha256:{CRIU_TARBALL_SHA256}",
            "ansible/criu.yml",
        ],
        timeout=900,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    recap = RECAP_RE.search(result.stdout)
    assert recap, f"no PLAY RECAP line for localhost:\n{output[-4000:]}"
    assert int(recap["failed"]) == 0, output[-4000:]
    assert int(recap["unreachable"]) == 0, output[-4000:]
    assert int(recap["changed"]) == 0, f"second run was not idempotent:\n{output[-4000:]}"


def test_no_criu_carries_file_capabilities(venv_bin: Path) -> None:
    """The 2026-11 exploit: a capability-bearing criu the kernel user could run was root."""
    assert not RETIRED_COPY.exists(), "the capability-bearing copy is still installed"
    with pytest.raises(KeyError):
        grp.getgrnam(RETIRED_GROUP)
    getcap = subprocess.run(
        ["getcap", "-r", "/usr/local", "/opt"], capture_output=True, text=True, check=False
    )
    assert getcap.stdout.strip() == "", f"files with capabilities:\n{getcap.stdout}"
    st = CRIU_BINARY.stat()
    assert st.st_uid == 0 and not st.st_mode & (stat.S_ISUID | stat.S_ISGID)
    version = subprocess.run(
        [str(CRIU_BINARY), "--version"], capture_output=True, text=True, check=True
    )
    assert f"Version: {CRIU_VERSION}" in version.stdout


def test_ansible_lint_passes(venv_bin: Path) -> None:
    result = _run(
        [
            str(venv_bin / "ansible-lint"),
            "--offline",
            "--profile",
            "production",
            "ansible/roles/criu",
            "ansible/criu.yml",
        ],
        timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
