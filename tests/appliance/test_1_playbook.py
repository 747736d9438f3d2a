"""site.yml: idempotent on this host, lint-clean, and the Vagrantfile is valid."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import yaml

from .host import ANSIBLE_VENV, REPO, TOKEN_FILE, provision, run


def test_second_run_changes_nothing(appliance: None) -> None:
    """.ci/provision.sh already applied site.yml once; applying it again changes nothing."""
    result = provision()
    assert result.rc == 0, f"site.yml failed (log {result.log}):\n{result.output[-4000:]}"
    recap = result.recap
    assert recap["failed"] == 0 and recap["unreachable"] == 0
    assert recap["changed"] == 0, "second run changed:\n" + "\n".join(result.changed_tasks())
    # The run ends with the notebook URL and the token (README command (1)).
    assert "Jusnap is running: https://" in result.output
    assert f"?token={TOKEN_FILE.read_text().strip()}" in result.output


def test_users_files_and_modes(appliance: None) -> None:
    user = pwd.getpwnam("jusnap")
    assert user.pw_uid < 1000, "jusnap is a system user"
    # In no group of its own beyond its private one: nothing lends it CRIU's capabilities.
    assert os.getgrouplist("jusnap", user.pw_gid) == [user.pw_gid]
    assert all("jusnap" not in g.gr_mem for g in grp.getgrall())
    state = os.stat("/var/lib/jusnap")
    assert (state.st_uid, stat.S_IMODE(state.st_mode)) == (0, 0o711)
    for path in (
        "/etc/jusnap/conf.yml",
        "/etc/jusnap/jupyter-token",
        "/etc/jusnap/jupyter_server_config.py",
    ):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, user.pw_gid, 0o640), path
    conf = yaml.safe_load(Path("/etc/jusnap/conf.yml").read_text())
    assert conf["jusnap"]["os"]["uid"] == "jusnap"
    assert conf["jusnap"]["http"]["host"] == "127.0.0.1"
    assert conf["jusnap"]["criu"]["binary"] == "/usr/local/sbin/criu"
    # The daemon accepts the rendered file (same check the role runs).
    r = run(
        "/opt/jusnap/venv/bin/python",
        "-c",
        "import sys; from jusnap.config import load_settings; load_settings(sys.argv[1])",
        "/etc/jusnap/conf.yml",
    )
    assert r.returncode == 0
    assert len(TOKEN_FILE.read_text().strip()) >= 32


def test_programs_never_signal_the_process_group() -> None:
    """Kernels must survive daemon restarts: supervisord must not kill the program's group."""
    text = Path("/etc/supervisor/conf.d/jusnap.conf").read_text()
    for section in ("[program:jusnap]", "[program:jupyter]"):
        assert section in text
    assert text.count("stopasgroup=false") == 2 and text.count("killasgroup=false") == 2
    assert "stdout_logfile_maxbytes=" in text and "stdout_logfile_backups=" in text


def test_ansible_lint_production_profile() -> None:
    lint = ANSIBLE_VENV / "bin" / "ansible-lint"
    assert lint.exists(), f"{lint} missing: run .ci/provision.sh"
    env = {
        **os.environ,
        "PATH": f"{ANSIBLE_VENV / 'bin'}:{os.environ['PATH']}",
        "NO_COLOR": "1",
        "ANSIBLE_NOCOLOR": "1",
    }
    r = subprocess.run(
        [str(lint), "--profile", "production", "--offline", "site.yml", "roles/"],
        cwd=REPO / "ansible",
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]


def test_vagrantfile_validates() -> None:
    vagrant = shutil.which("vagrant")
    assert vagrant is not None, (
        "vagrant missing (JUSNAP_PROVISION_TEST_DEPS=1 .ci/provision.sh installs it)"
    )
    with tempfile.TemporaryDirectory(prefix="jusnap-vagrant-") as home:
        env = {
            **os.environ,
            "VAGRANT_HOME": home,
            "VAGRANT_DOTFILE_PATH": f"{home}/dot",
            "VAGRANT_CHECKPOINT_DISABLE": "1",
            "VAGRANT_NO_COLOR": "1",
        }
        r = subprocess.run(
            # --ignore-provider: validate the Vagrantfile itself; no VirtualBox/libvirt here.
            [vagrant, "validate", "--ignore-provider"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validated successfully" in r.stdout
