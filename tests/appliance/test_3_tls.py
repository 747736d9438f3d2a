"""TLS through the roles: a certificate from a local ACME server (Debian's pebble) via certbot's
HTTP-01 webroot through nginx, then the whole UI flow in Chromium over HTTPS.

The module starts pebble with a CA of its own, maps a test host name to 127.0.0.1 in
/etc/hosts, applies site.yml with ``jusnap_hostname`` set (and checks the second run changes
nothing), and at the end removes the certificate, the host name and pebble and applies site.yml
as .ci/provision.sh did, so the host is left as provisioned.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from .host import REPO, cleanup_kernel, jupyter_api, provision, run, token, wait_for, write_notebook

HOST = os.environ.get("JUSNAP_TEST_HOSTNAME", "jusnap-appliance.test")
HOSTS_FILE = Path("/etc/hosts")
HOSTS_MARK = "# jusnap appliance test"
ACME_DIR = "https://localhost:14000/dir"
# No validation delays, and none of the nonces pebble rejects at random by default (5%): certbot
# retries a bad nonce only once, which made issuance fail now and then.
PEBBLE_ENV = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
CHROMIUM = os.environ.get("JUSNAP_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("JUSNAP_TEST_ARTIFACTS", REPO / ".artifacts" / "appliance"))


@dataclass
class Acme:
    work: Path
    ca: Path  # the CA of pebble's own HTTPS endpoints
    root: Path  # pebble's issuing root: what browsers must trust
    first_run: Any
    second_run: Any


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(work: Path) -> Path:
    """A CA and a localhost certificate for pebble's ACME and management endpoints."""
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=jusnap test pebble CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=work,
    )
    (work / "ext.cnf").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "key.pem",
        "-out",
        "csr.pem",
        cwd=work,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "csr.pem",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
        cwd=work,
    )
    return work / "ca.pem"


def _hosts_add() -> None:
    _hosts_remove()
    with HOSTS_FILE.open("a") as fh:
        fh.write(f"127.0.0.1 {HOST} {HOSTS_MARK}\n")


def _hosts_remove() -> None:
    lines = HOSTS_FILE.read_text().splitlines(keepends=True)
    kept = [line for line in lines if HOSTS_MARK not in line]
    if kept != lines:
        # In place: /etc/hosts may be a bind mount that cannot be replaced.
        with HOSTS_FILE.open("w") as fh:
            fh.writelines(kept)


def _delete_certificate() -> None:
    """Forget the test certificate and certbot's account at pebble (each pebble starts empty)."""
    if (
        Path(f"/etc/letsencrypt/renewal/{HOST}.conf").exists()
        or Path(f"/etc/letsencrypt/live/{HOST}").exists()
    ):
        run("certbot", "delete", "--non-interactive", "--cert-name", HOST, check=False, timeout=120)
    for server in Path("/etc/letsencrypt/accounts").glob("localhost:14000*"):
        shutil.rmtree(server, ignore_errors=True)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def acme(appliance: None) -> Iterator[Acme]:
    pebble = shutil.which("pebble")
    if pebble is None:
        pytest.fail("pebble missing: JUSNAP_PROVISION_TEST_DEPS=1 .ci/provision.sh installs it")
    assert _port_free(14000) and _port_free(15000), "something already listens on pebble's ports"
    work = Path(tempfile.mkdtemp(prefix="jusnap-pebble-", dir="/var/tmp"))
    ca = _make_ca(work)
    config = {
        "pebble": {
            "listenAddress": "127.0.0.1:14000",
            "managementListenAddress": "127.0.0.1:15000",
            "certificate": str(work / "cert.pem"),
            "privateKey": str(work / "key.pem"),
            "httpPort": 80,
            "tlsPort": 5001,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    (work / "pebble.json").write_text(json.dumps(config))
    log = (work / "pebble.log").open("wb")
    proc = subprocess.Popen(
        [pebble, "-config", str(work / "pebble.json")],
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **PEBBLE_ENV},
        start_new_session=True,
    )
    try:
        wait_for("pebble", lambda: requests.get(ACME_DIR, verify=str(ca), timeout=5).ok, timeout=30)
        _hosts_add()
        # A certificate from an earlier pebble would not chain to this one's root.
        _delete_certificate()
        extra = json.dumps(
            {
                "jusnap_hostname": HOST,
                "jusnap_acme_server": ACME_DIR,
                "certbot_environment": {"REQUESTS_CA_BUNDLE": str(ca)},
            }
        )
        first = provision("-e", extra)
        assert first.rc == 0, (
            f"site.yml with jusnap_hostname failed (log {first.log}):\n{first.output[-5000:]}"
        )
        second = provision("-e", extra)
        root = work / "pebble-root.pem"
        root.write_text(
            requests.get("https://localhost:15000/roots/0", verify=str(ca), timeout=10).text
        )
        yield Acme(work, ca, root, first, second)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        _delete_certificate()
        _hosts_remove()
        restored = provision()
        shutil.rmtree(work, ignore_errors=True)
        assert restored.rc == 0, f"restoring the provisioned state failed (log {restored.log})"


def test_certificate_issued_through_nginx(acme: Acme) -> None:
    assert "Request the certificate" in acme.first_run.output
    assert any("Request the certificate" in t for t in acme.first_run.changed_tasks())
    live = Path(f"/etc/letsencrypt/live/{HOST}/fullchain.pem")
    assert live.exists()
    # nginx serves the new certificate, and it chains to pebble's root.
    ctx = ssl.create_default_context(cafile=str(acme.root))
    with (
        socket.create_connection(("127.0.0.1", 443), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=HOST) as s,
    ):
        cert = s.getpeercert()
    assert ("DNS", HOST) in cert["subjectAltName"]
    issuer = dict(x[0] for x in cert["issuer"])
    assert "Pebble" in issuer.get("commonName", ""), issuer
    # Renewal is wired: certbot's renewal config and the nginx reload hook.
    assert Path(f"/etc/letsencrypt/renewal/{HOST}.conf").exists()
    assert os.access("/etc/letsencrypt/renewal-hooks/deploy/jusnap-reload-nginx.sh", os.X_OK)


def test_second_run_with_hostname_changes_nothing(acme: Acme) -> None:
    run2 = acme.second_run
    assert run2.rc == 0, run2.output[-4000:]
    assert run2.recap["changed"] == 0, "second run changed:\n" + "\n".join(run2.changed_tasks())
    assert f"Jusnap is running: https://{HOST}/?token=" in run2.output


def test_http_redirects_to_https_with_hsts(acme: Acme) -> None:
    r = requests.get(f"http://{HOST}/tree?x=1", allow_redirects=False, timeout=10)
    assert r.status_code == 301
    assert r.headers["Location"] == f"https://{HOST}/tree?x=1"
    r = requests.get(
        f"https://{HOST}/api/status",
        headers={"Authorization": f"token {token()}"},
        verify=str(acme.root),
        timeout=10,
    )
    assert r.status_code == 200
    assert r.headers["Strict-Transport-Security"].startswith("max-age=")
    assert r.headers["Referrer-Policy"] == "same-origin"
    # Without the token: no access, to Jupyter or to the snapshot API.
    assert (
        requests.get(f"https://{HOST}/api/status", verify=str(acme.root), timeout=10).status_code
        == 403
    )
    r = requests.get(f"https://{HOST}/jusnap/api/v1/kernels", verify=str(acme.root), timeout=10)
    assert r.status_code in (401, 403), r.status_code
    # ACME challenges stay on plain HTTP.
    r = requests.get(
        f"http://{HOST}/.well-known/acme-challenge/none", allow_redirects=False, timeout=10
    )
    assert r.status_code == 404


# ---- the browser ------------------------------------------------------------------------------

CELLS = [
    "x = 41\ny = 'before'\nprint('set', x, y)",
    "x = 0\ny = 'after'\nprint('changed', x, y)",
    "print(f'x={x} y={y}')",
]


def _nss_db(home: Path, root: Path) -> None:
    """Chromium on Linux trusts the CAs in ~/.pki/nssdb: add pebble's root there."""
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True)
    run("certutil", "-d", f"sql:{db}", "-N", "--empty-password")
    run("certutil", "-d", f"sql:{db}", "-A", "-n", "pebble-root", "-t", "C,,", "-i", str(root))


def test_browser_login_snapshot_restore_over_tls(acme: Acme) -> None:
    pytest.importorskip("playwright")
    from playwright.sync_api import expect, sync_playwright

    try:
        from tests.e2e.ui import NotebookUI
    except ImportError as exc:  # pragma: no cover - the frontend tests' page model
        pytest.fail(f"tests.e2e.ui is missing: {exc}")

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing (apt-get install chromium)"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    nb = write_notebook(f"appliance-ui-{uuid.uuid4().hex[:8]}.ipynb", CELLS)
    home = Path(tempfile.mkdtemp(prefix="jusnap-chromium-", dir="/var/tmp"))
    kid = None
    try:
        _nss_db(home, acme.root)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM,
                env={**os.environ, "HOME": str(home)},
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    "--disable-dev-shm-usage",
                    f"--host-resolver-rules=MAP {HOST} 127.0.0.1",
                ],
            )
            try:
                # Certificate errors are NOT ignored: pages load only if pebble's chain verifies.
                context = browser.new_context(
                    ignore_https_errors=False,
                    viewport={"width": 1440, "height": 900},
                    locale="en-GB",
                    timezone_id="UTC",
                )
                page = context.new_page()
                page.set_default_timeout(60_000)
                # Log in as a person does: the login page and the token the playbook printed.
                page.goto(f"https://{HOST}/")
                expect(page).to_have_url(re.compile(rf"^https://{re.escape(HOST)}/login"))
                page.locator("input#password_input, input[name=password]").first.fill(token())
                page.locator("#login_submit, button[type=submit]").first.click()
                expect(page).to_have_url(re.compile(rf"^https://{re.escape(HOST)}/tree"))
                page.screenshot(path=str(ARTIFACTS / "tree.png"))

                ui = NotebookUI(page, "notebook")
                ui.open(f"https://{HOST}/notebooks/{nb}")
                # Automatic snapshots (on by default) would race the manual one for the kernel
                # ("busy with another snapshot operation"): switch them off from the toolbar.
                if ui.toolbar_auto.inner_text().strip() == "auto: on":
                    ui.toolbar_auto.click()
                expect(ui.toolbar_auto).to_have_text("auto: off")
                ui.run_cell(0, "set 41 before")
                ui.menu("Create Snapshot with Label")
                ui.dialog_fill("appliance-before")
                ui.dialog_button("Snapshot")
                ui.toast(re.compile(r"Snapshot created “appliance-before”"), "success")

                ui.run_cell(1, "changed 0 after")
                ui.open_panel()
                item = ui.item("appliance-before")
                expect(item).to_have_count(1)
                item.locator(".jp-JusnapPanel-restore").click()
                ui.dialog_button("Restore")
                ui.toast(re.compile(r"Kernel restored to “appliance-before”"), "success")
                ui.run_cell(2, "x=41 y=before")
                page.screenshot(path=str(ARTIFACTS / "restored.png"))
                sessions = jupyter_api("GET", "api/sessions", expect=200)
                kid = next(s["kernel"]["id"] for s in sessions if s["path"] == nb)
            finally:
                browser.close()
    finally:
        if kid:
            cleanup_kernel(kid)
        with contextlib.suppress(Exception):
            for s in jupyter_api("GET", "api/sessions", expect=200):
                if s["path"] == nb:
                    cleanup_kernel(s["kernel"]["id"])
                    jupyter_api("DELETE", f"api/sessions/{s['id']}")
        (Path("/home/jusnap/notebooks") / nb).unlink(missing_ok=True)
        shutil.rmtree(home, ignore_errors=True)
