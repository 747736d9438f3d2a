"""The web edge of the provisioned appliance (issue 10): what leaves through nginx, Jupyter's
cookies and the logs.

Runs against the host as provisioned (self-signed TLS on https://localhost/; test_3 leaves it
so): the login token is readable by no other local user, nginx logs no query strings, TLS
follows Mozilla's "intermediate" profile, every response carries a Referrer-Policy (and no HSTS
with a self-signed certificate), Jupyter's cookies are Secure, and over-large bodies get 413.
"""

from __future__ import annotations

import http.client
import os
import ssl
import stat
import subprocess
import uuid
from pathlib import Path

import pytest
import requests

from .host import token, wait_for

HTTPS = "https://localhost"
CERT = "/etc/jusnap/tls/selfsigned.crt"
PROVISION_LOGS = Path(os.environ.get("JUSNAP_PROVISION_LOG_DIR", "/var/log/jusnap-provision"))
ACCESS_LOG = Path("/var/log/nginx/access.log")
# Where a token could be left lying around by the appliance (not /tmp: that is the caller's,
# e.g. a CI job's own output file).
SCANNED = ["/var/log", "/etc", "/run", "/home", "/var/lib", "/var/www", "/srv", "/opt/jusnap/src"]


@pytest.fixture(scope="module")
def self_signed(appliance: None) -> str:
    assert Path(CERT).exists(), f"{CERT} missing: the host is not provisioned self-signed"
    return CERT


def _as_nobody(argv: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    """A command as another local user, with no groups of ours."""
    return subprocess.run(
        ["runuser", "-u", "nobody", "--", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _grep_token(argv_prefix: list[str]) -> list[str]:
    """Files under SCANNED that contain the token (passed on stdin, never on a command line)."""
    dirs = [d for d in SCANNED if Path(d).exists()]
    argv = ["grep", "-rlF", "--devices=skip", "--no-messages", "-f", "-", *dirs]
    if argv_prefix:
        r = _as_nobody(argv, stdin=token() + "\n")
    else:
        r = subprocess.run(
            argv, input=token() + "\n", capture_output=True, text=True, timeout=600, check=False
        )
    # 0: found, 1: not found, 2: some files unreadable (expected for another user).
    assert r.returncode in (0, 1, 2), r.stderr
    return r.stdout.split()


def test_provision_logs_are_root_only(appliance: None) -> None:
    """The playbook's log prints the login URL with the token: 0700 directory, 0600 files."""
    st = PROVISION_LOGS.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o700), oct(st.st_mode)
    logs = sorted(PROVISION_LOGS.glob("site-*.log"))
    assert logs, f"no provisioning log in {PROVISION_LOGS}"
    for log in logs:
        st = log.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600), (log, oct(st.st_mode))
    newest = logs[-1]
    assert token() in newest.read_text(), "the log is expected to hold the URL with the token"
    r = _as_nobody(["cat", str(newest)])
    assert r.returncode != 0 and token() not in r.stdout


def test_token_is_readable_by_no_other_user(appliance: None) -> None:
    # The scan itself works: as root it finds the token (token file, provisioning logs).
    assert "/etc/jusnap/jupyter-token" in _grep_token([])
    found = _grep_token(["nobody"])
    assert not found, f"the Jupyter token is readable by another user in: {found}"


def test_nginx_access_log_has_no_query_strings(self_signed: str) -> None:
    probe = f"/jusnap-log-probe-{uuid.uuid4().hex}"
    before = ACCESS_LOG.stat().st_size if ACCESS_LOG.exists() else 0
    t = token()
    referer = {"Referer": f"{HTTPS}/tree?token={t}"}
    requests.get(f"{HTTPS}{probe}?token={t}", headers=referer, verify=self_signed, timeout=30)
    r = requests.get(
        f"{HTTPS}/api/status?token={t}", headers=referer, verify=self_signed, timeout=30
    )
    assert r.status_code == 200, r.text
    requests.get(f"http://localhost{probe}-http?token={t}", allow_redirects=False, timeout=30)

    def logged() -> str:
        with ACCESS_LOG.open("rb") as fh:
            fh.seek(before)
            text = fh.read().decode(errors="replace")
        return text if f"{probe}-http" in text else ""

    new = wait_for("nginx's access log", logged, timeout=30)
    assert probe in new and "/api/status" in new, new
    assert "token=" not in new and t not in new, new


def _handshake(*args: str) -> str:
    """``openssl s_client`` against nginx; returns the negotiated cipher or "" if refused."""
    r = subprocess.run(
        ["openssl", "s_client", "-connect", "127.0.0.1:443", "-servername", "localhost", *args],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    for line in r.stdout.splitlines():
        line = line.strip()
        if line.startswith("Cipher is ") or ", Cipher is " in line:
            cipher = line.rsplit("Cipher is ", 1)[1].strip()
            return "" if cipher == "(NONE)" else cipher
    return ""


@pytest.mark.parametrize(
    "refused",
    [
        # Static-RSA key exchange (no forward secrecy), CBC with SHA-1 or SHA-256.
        ("-tls1_2", "-cipher", "AES128-SHA"),
        ("-tls1_2", "-cipher", "AES256-SHA256"),
        ("-tls1_2", "-cipher", "AES128-GCM-SHA256"),
        # Forward secret but CBC.
        ("-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA"),
        ("-tls1_2", "-cipher", "ECDHE-RSA-AES256-SHA384"),
        # Old protocols (the client is told to allow them: only the server may refuse).
        ("-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"),
        ("-tls1", "-cipher", "DEFAULT@SECLEVEL=0"),
    ],
)
def test_tls_refuses_what_intermediate_excludes(self_signed: str, refused: tuple[str, ...]) -> None:
    assert _handshake(*refused) == "", f"nginx accepted {refused}"


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        (("-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"), "ECDHE-RSA-AES128-GCM-SHA256"),
        (("-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305"), "ECDHE-RSA-CHACHA20-POLY1305"),
        (("-tls1_3",), "TLS_AES_"),
    ],
)
def test_tls_accepts_intermediate(
    self_signed: str, offered: tuple[str, ...], expected: str
) -> None:
    assert _handshake(*offered).startswith(expected)


def test_security_headers(self_signed: str) -> None:
    r = requests.get(
        f"{HTTPS}/api/status",
        headers={"Authorization": f"token {token()}"},
        verify=self_signed,
        timeout=30,
    )
    assert r.status_code == 200
    assert r.headers.get("Referrer-Policy") == "same-origin", dict(r.headers)
    # HSTS only with a certificate browsers trust (test_3 checks it is sent with ACME's).
    assert "Strict-Transport-Security" not in r.headers
    for url in (f"{HTTPS}/login", f"{HTTPS}/jusnap/api/v1/kernels"):
        r = requests.get(url, verify=self_signed, timeout=30, allow_redirects=False)
        assert r.headers.get("Referrer-Policy") == "same-origin", (url, dict(r.headers))
    r = requests.get("http://localhost/tree", allow_redirects=False, timeout=30)
    assert r.status_code == 301 and r.headers.get("Referrer-Policy") == "same-origin"


def test_jupyter_cookies_are_secure(self_signed: str) -> None:
    """Behind TLS, the login and _xsrf cookies must never travel over plain HTTP."""
    s = requests.Session()
    # Per request: REQUESTS_CA_BUNDLE in the environment would override Session.verify.
    tls = {"verify": self_signed, "timeout": 30}
    assert s.get(f"{HTTPS}/login", **tls).status_code == 200
    assert s.get(f"{HTTPS}/tree", params={"token": token()}, **tls).status_code == 200
    s.get(f"{HTTPS}/api/me", **tls)
    names = {c.name: c.secure for c in s.cookies}
    assert "_xsrf" in names and any(n.startswith("username-") for n in names), names
    assert all(names.values()), f"cookies without Secure: {names}"


def test_over_large_bodies_get_413(self_signed: str) -> None:
    # The snapshot API: the daemon's 256 KiB, refused by nginx with the API's JSON error.
    r = requests.post(
        f"{HTTPS}/jusnap/api/v1/kernels/{uuid.uuid4()}/snapshots",
        data=b'{"label": "' + b"x" * 300_000 + b'"}',
        headers={"Authorization": f"token {token()}", "Content-Type": "application/json"},
        verify=self_signed,
        timeout=60,
    )
    assert r.status_code == 413, r.text[:300]
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json()["error"] == "too_large"
    # Anything else: Jupyter's own limit (512 MiB), refused on the announced length alone.
    ctx = ssl.create_default_context(cafile=self_signed)
    conn = http.client.HTTPSConnection("localhost", 443, context=ctx, timeout=30)
    try:
        conn.putrequest("PUT", "/api/contents/too-large.txt")
        conn.putheader("Authorization", f"token {token()}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(600 * 1024 * 1024))
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 413, resp.read()[:300]
    finally:
        conn.close()
    assert not Path("/home/jusnap/notebooks/too-large.txt").exists()
