"""Multi-user mode (issue 13): ``site.yml -e jusnap_multiuser=true`` on this host, real hub.

One provisioning run serves the whole module: JupyterHub under supervisord behind the same
nginx + TLS, two local users created by the role (``jupyterhub_users``) who log in with their
Unix password (PAM) through https://localhost/. Each user's server and kernels run as that
user's uid; neither can see, restore or delete the other's snapshots through the API (their own
server), the ``jusnap`` CLI run as their uid, or the filesystem. At the end the playbook runs
again without the flag and the host is the single-user appliance once more.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import secrets
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.jupyter import KernelWebsocket

from .host import JUSNAP_CLI, provision, run, wait_for

HTTPS = "https://localhost/"
CERT = "/etc/jusnap/tls/selfsigned.crt"
USERS = ("jusnaphuba", "jusnaphubb")
HUB_PROGRAM_FILE = Path("/etc/supervisor/conf.d/jupyterhub.conf")
STATE = Path("/var/lib/jusnap")
NOTEBOOK = "work.ipynb"
# Each user's quota while the hub runs (the single-user appliance has none): room for the
# tests' snapshots, not for test_quota's 300 MB of random bytes.
QUOTA_MB = 200


@dataclass
class _Token:
    """What KernelWebsocket needs: the credentials (the port is unused with a base URL)."""

    token: str
    port: int = 0


@dataclass
class HubUser:
    name: str
    password: str
    uid: int = 0
    gid: int = 0
    token: str = ""
    kernels: list[str] = field(default_factory=list)

    @property
    def server(self) -> str:
        return f"{HTTPS}user/{self.name}/"

    def request(self, method: str, url: str, **kw: Any) -> requests.Response:
        # verify per request: REQUESTS_CA_BUNDLE in the environment would override a Session's.
        headers = {"Authorization": f"token {self.token}", **kw.pop("headers", {})}
        return requests.request(method, url, headers=headers, verify=CERT, timeout=300, **kw)

    def api(self, method: str, path: str, body: Any = None, expect: int | None = None) -> Any:
        """The user's own Notebook server (``/user/NAME/``), through nginx and the hub's proxy."""
        r = self.request(method, self.server + path, json=body)
        if expect is not None:
            assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text[:400]}"
        return r.json() if r.content else None

    def jusnap(self, method: str, path: str, body: Any = None, expect: int | None = None) -> Any:
        return self.api(method, f"jusnap/api/v1/{path}", body, expect)

    def websocket(self, kernel_id: str) -> KernelWebsocket:
        base = "wss://localhost/user/" + self.name + "/"
        return KernelWebsocket(_Token(self.token), kernel_id, base, {"ca_certs": CERT})  # type: ignore[arg-type]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``jusnap`` run as this user's uid (the daemon knows it from the socket)."""
        return subprocess.run(
            [JUSNAP_CLI, "--json", *args],
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            env={"PATH": "/usr/bin:/bin", "HOME": f"/home/{self.name}", "LANG": "C.UTF-8"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            stdin=subprocess.DEVNULL,
        )


def login(user: HubUser) -> None:
    """Log in on the hub's form (PAM), then take an API token the way the hub's UI does."""
    s = requests.Session()
    tls = {"verify": CERT, "timeout": 60}
    s.get(HTTPS + "hub/login", **tls).raise_for_status()
    r = s.post(
        HTTPS + "hub/login",
        data={"username": user.name, "password": user.password, "_xsrf": s.cookies["_xsrf"]},
        allow_redirects=False,
        **tls,
    )
    assert r.status_code == 302, f"login of {user.name}: {r.status_code} {r.text[:300]}"
    assert "jupyterhub-hub-login" in s.cookies, "the hub set no login cookie"
    s.get(HTTPS + "hub/home", **tls).raise_for_status()  # a new _xsrf for the new session
    xsrf = [c.value for c in s.cookies if c.name == "_xsrf"][-1]
    r = s.post(
        HTTPS + f"hub/api/users/{user.name}/tokens",
        json={"note": "tests/appliance/test_5_hub.py", "expires_in": 3600},
        headers={"X-XSRFToken": xsrf},
        **tls,
    )
    assert r.status_code == 201, r.text[:300]
    user.token = r.json()["token"]


def start_server(user: HubUser) -> None:
    r = user.request("POST", f"{HTTPS}hub/api/users/{user.name}/server")
    assert r.status_code in (201, 202, 400), r.text[:300]  # 400: already running

    def ready() -> bool:
        info = user.request("GET", f"{HTTPS}hub/api/users/{user.name}").json()
        return bool(info["servers"].get("", {}).get("ready"))

    wait_for(f"{user.name}'s server", ready, timeout=90)


def stop_server(user: HubUser) -> None:
    r = user.request("DELETE", f"{HTTPS}hub/api/users/{user.name}/server")
    assert r.status_code in (202, 204), r.text[:300]

    def stopped() -> bool:
        info = user.request("GET", f"{HTTPS}hub/api/users/{user.name}").json()
        return "" not in info["servers"]

    wait_for(f"{user.name}'s server to stop", stopped, timeout=90)


def open_notebook(user: HubUser, name: str = NOTEBOOK, cells: tuple[str, ...] = ()) -> str:
    """Create the notebook (if missing) and a session for it, as the UI does; the kernel id."""
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": f"c{i}",
                "metadata": {},
                "outputs": [],
                "source": src,
            }
            for i, src in enumerate(cells)
        ],
        "metadata": {
            "kernelspec": {
                "name": "jusnap-python3",
                "display_name": "Python 3 (Jusnap)",
                "language": "python",
            },
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    if user.request("GET", f"{user.server}api/contents/{name}").status_code == 404:
        user.api("PUT", f"api/contents/{name}", {"type": "notebook", "content": nb}, expect=201)
    session = user.api(
        "POST",
        "api/sessions",
        {"path": name, "name": name, "type": "notebook", "kernel": {"name": "jusnap-python3"}},
        expect=201,
    )
    kid = session["kernel"]["id"]
    user.kernels.append(kid)
    return kid


def root_kernels() -> list[dict[str, Any]]:
    r = run(JUSNAP_CLI, "--json", "kernels")
    return json.loads(r.stdout or "[]")


def proc_uids(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"no Uid line for pid {pid}")


def pids_of_uid(uid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            with contextlib.suppress(OSError, AssertionError):
                if proc_uids(int(p.name))[0] == uid:
                    out.append(int(p.name))
    return out


def manual_snapshot(user: HubUser, kid: str) -> str:
    for _ in range(120):
        r = user.request(
            "POST", f"{user.server}jusnap/api/v1/kernels/{kid}/snapshots", json={"label": None}
        )
        if r.status_code != 409:  # busy: the automatic snapshot after the last cell
            break
        time.sleep(0.5)
    assert r.status_code == 201, r.text[:400]
    return r.json()["snapshot"]["id"]


def restore(user: HubUser, sid: str, into: str | None = None) -> None:
    body = {"kernel_id": into} if into else {}
    for _ in range(120):
        r = user.request("POST", f"{user.server}jusnap/api/v1/snapshots/{sid}/restore", json=body)
        if r.status_code != 409:
            break
        time.sleep(0.5)
    assert r.status_code == 200, r.text[:400]


def remove_user(name: str) -> None:
    """Everything of a test user goes: its kernels and snapshots (root CLI), processes, account."""
    with contextlib.suppress(KeyError):
        uid = pwd.getpwnam(name).pw_uid
        for k in root_kernels():
            if k.get("owner_uid") == uid:
                run(JUSNAP_CLI, "stop", k["id"], check=False, timeout=120)
        snaps = json.loads(run(JUSNAP_CLI, "--json", "snapshots", "--all").stdout or "[]")
        mine = [s["id"] for s in snaps if s.get("owner_uid") == uid]
        if mine:
            run(JUSNAP_CLI, "rm", *mine, check=False, timeout=120)
        for pid in pids_of_uid(uid):  # processes this test started as that user
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        run("userdel", "--remove", name, check=False)


@pytest.fixture(scope="module")
def hub(appliance: None) -> Iterator[dict[str, HubUser]]:
    for name in USERS:
        remove_user(name)  # a previous run that died half way
    users = {name: HubUser(name, secrets.token_urlsafe(16)) for name in USERS}
    try:
        result = provision(
            "-e",
            "jusnap_multiuser=true",
            "-e",
            json.dumps({"jupyterhub_users": list(USERS), "jusnap_store_max_user_mb": QUOTA_MB}),
        )
        assert result.rc == 0, f"site.yml (multi-user) failed:\n{result.output[-4000:]}"
        assert "Jusnap is running: https://localhost/hub/login" in result.output
        # The secrets never reach the output.
        for secret_file in (
            "/etc/jupyterhub/proxy-token",
            "/var/lib/jupyterhub/jupyterhub_cookie_secret",
        ):
            assert Path(secret_file).read_text().strip() not in result.output
        # A hub left from an earlier run may remember servers of users since removed: a
        # restarted hub checks every server it knows of.
        run("supervisorctl", "restart", "jupyterhub", timeout=90)
        wait_for(
            "the hub",
            lambda: requests.get(HTTPS + "hub/health", verify=CERT, timeout=5).status_code == 200,
        )
        chpasswd = "".join(f"{u.name}:{u.password}\n" for u in users.values())
        subprocess.run(["chpasswd"], input=chpasswd, text=True, check=True, timeout=30)
        for u in users.values():
            entry = pwd.getpwnam(u.name)
            u.uid, u.gid = entry.pw_uid, entry.pw_gid
            login(u)
            start_server(u)
        yield users
    finally:
        for u in users.values():
            if u.token:
                with contextlib.suppress(Exception):
                    stop_server(u)
            remove_user(u.name)
        back = provision()
        assert back.rc == 0, f"site.yml (single-user again) failed:\n{back.output[-4000:]}"
        assert not HUB_PROGRAM_FILE.exists()
        assert "Jusnap is running: https://localhost/?token=" in back.output


def test_hub_is_behind_nginx_and_its_secrets_are_root_only(hub: dict[str, HubUser]) -> None:
    r = requests.get(HTTPS + "hub/health", verify=CERT, timeout=30)
    assert r.status_code == 200
    listening = run("ss", "-Hltn").stdout
    for port in (8880, 8881, 8882):
        addrs = [
            ln.split()[3] for ln in listening.splitlines() if ln.split()[3].endswith(f":{port}")
        ]
        assert addrs and all(a.startswith(("127.0.0.1:", "[::1]:")) for a in addrs), (port, addrs)
    for path in (
        "/etc/jupyterhub/proxy-token",
        "/etc/jupyterhub/jupyterhub_config.py",
        "/var/lib/jupyterhub/jupyterhub_cookie_secret",
    ):
        st = os.stat(path)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600), path
    # A wrong password is refused (PAM), and nobody outside the group gets in.
    s = requests.Session()
    s.get(HTTPS + "hub/login", verify=CERT, timeout=30)
    r = s.post(
        HTTPS + "hub/login",
        data={"username": USERS[0], "password": "wrong", "_xsrf": s.cookies["_xsrf"]},
        allow_redirects=False,
        verify=CERT,
        timeout=30,
    )
    assert r.status_code == 403 and "jupyterhub-hub-login" not in s.cookies


def test_each_user_snapshots_and_restores_as_their_own_uid(hub: dict[str, HubUser]) -> None:
    for value, user in enumerate(hub.values(), start=41):
        kid = open_notebook(user)
        ws = user.websocket(kid)
        try:
            ws.run(f"x = {value}")
            sid = manual_snapshot(user, kid)
            ws.run("x = 0")
            restore(user, sid)
            ws.close()
            ws = user.websocket(kid)
            assert ws.run("print(x)").strip() == str(value)
            assert ws.run("import os; print(os.getuid())").strip() == str(user.uid)
        finally:
            ws.close()
        k = next(k for k in root_kernels() if k["id"] == kid)
        assert k["owner_uid"] == user.uid
        assert proc_uids(k["pid"]) == [user.uid] * 4, "the kernel runs as its user's uid"
        # The user's Notebook server runs as that uid too.
        servers = [
            pid for pid in pids_of_uid(user.uid)
            if b"jupyterhub-singleuser" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]  # fmt: skip
        assert servers, f"no jupyterhub-singleuser process of uid {user.uid}"


@pytest.fixture(scope="module")
def a_snapshot(hub: dict[str, HubUser]) -> tuple[str, str]:
    """User A's kernel and one of its snapshots (labelled, so retention keeps it)."""
    a = hub[USERS[0]]
    kid = open_notebook(a, "private.ipynb")
    ws = a.websocket(kid)
    try:
        ws.run("secret = 'only-for-a'")
    finally:
        ws.close()
    sid = manual_snapshot(a, kid)
    a.jusnap("PATCH", f"snapshots/{sid}", {"label": "a-private"}, expect=200)
    return kid, sid


def _a_still_has(a: HubUser, kid: str, sid: str) -> None:
    assert a.jusnap("GET", f"snapshots/{sid}", expect=200)["label"] == "a-private"
    assert a.jusnap("GET", f"kernels/{kid}", expect=200)["status"] == "running"


def test_b_cannot_reach_a_through_the_api(
    hub: dict[str, HubUser], a_snapshot: tuple[str, str]
) -> None:
    a, b = hub[USERS[0]], hub[USERS[1]]
    kid, sid = a_snapshot
    # B's own server: A's snapshots and kernels are not there.
    assert sid not in {s["id"] for s in b.jusnap("GET", "snapshots", expect=200)}
    b_kernels = {k["id"] for k in b.jusnap("GET", "kernels", expect=200)}
    assert kid not in b_kernels
    for method, path, body in (
        ("GET", f"snapshots/{sid}", None),
        ("POST", f"snapshots/{sid}/restore", {}),
        ("PATCH", f"snapshots/{sid}", {"label": "b-was-here"}),
        ("DELETE", f"snapshots/{sid}", None),
        ("GET", f"kernels/{kid}", None),
        ("GET", f"kernels/{kid}/snapshots", None),
        ("POST", f"kernels/{kid}/snapshots", {}),
        ("GET", f"kernels/{kid}/connection", None),
        ("DELETE", f"kernels/{kid}", None),
        ("POST", "snapshots/" + sid + "/restore", {"kernel_id": b.kernels[0]}),
        ("POST", f"snapshots/{sid}/fork", {}),
        ("POST", f"snapshots/{sid}/fork", {"kernel_id": kid}),
    ):
        r = b.request(method, f"{b.server}jusnap/api/v1/{path}", json=body)
        assert r.status_code in (403, 404), f"B {method} {path}: {r.status_code} {r.text[:200]}"
        assert "only-for-a" not in r.text
    # No fork of A's snapshot was made for B (a refused fork leaves no kernel).
    assert {k["id"] for k in b.jusnap("GET", "kernels", expect=200)} == b_kernels
    # B's token does not open A's server (the hub's scopes), nor A's files through it.
    for path in (f"api/contents/{NOTEBOOK}", "jusnap/api/v1/snapshots", "api/kernels"):
        r = b.request("GET", f"{a.server}{path}", allow_redirects=False)
        assert r.status_code in (302, 403, 404), f"B GET /user/{a.name}/{path}: {r.status_code}"
    _a_still_has(a, kid, sid)


def test_b_cannot_reach_a_through_the_cli(
    hub: dict[str, HubUser], a_snapshot: tuple[str, str]
) -> None:
    a, b = hub[USERS[0]], hub[USERS[1]]
    kid, sid = a_snapshot
    listed = b.cli("snapshots", "--all")
    assert listed.returncode == 0, listed.stderr
    assert sid not in listed.stdout and kid not in listed.stdout
    assert kid not in b.cli("kernels").stdout
    for args in (
        ("show", sid),
        ("restore", sid),
        ("rm", sid),
        ("label", sid, "b-was-here"),
        ("snapshot", kid),
        ("stop", kid),
        ("signal", kid, "SIGTERM"),
        ("logs", kid),
        ("clear", kid, "--yes"),
        ("fork", sid),
    ):
        r = b.cli(*args)
        assert r.returncode != 0, f"jusnap {' '.join(args)} as {b.name} succeeded: {r.stdout}"
        assert "only-for-a" not in r.stdout + r.stderr
    # A, by the same CLI as its own uid, sees its snapshot.
    assert sid in a.cli("snapshots", "--all").stdout
    _a_still_has(a, kid, sid)


def test_b_cannot_read_a_files(hub: dict[str, HubUser], a_snapshot: tuple[str, str]) -> None:
    """Every file of A's kernel and snapshots, A's chunk store and A's notebooks: B's uid
    (the kernel, not the API, decides here) can neither read nor list them."""
    a, b = hub[USERS[0]], hub[USERS[1]]
    kid, sid = a_snapshot
    targets: list[Path] = [Path(f"/home/{a.name}"), Path(f"/home/{a.name}/{NOTEBOOK}")]
    for root in (STATE, Path(f"/home/{a.name}")):
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                with contextlib.suppress(OSError):
                    owned = p.lstat().st_uid == a.uid
                    if owned or kid in str(p) or sid in str(p) or f"chunks/{a.uid}" in str(p):
                        targets.append(p)
    assert any(kid in str(p) for p in targets), "A's kernel directory was not found"
    assert any(f"chunks/{a.uid}" in str(p) for p in targets), "A's chunk store was not found"
    assert any(p.name == "connection.json" for p in targets), "A's connection file not found"
    probe = (
        "import os, sys\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        os.listdir(p) if os.path.isdir(p) else open(p, 'rb').read(1)\n"
        "        print(p)\n"
        "    except OSError:\n"
        "        pass\n"
    )
    r = subprocess.run(
        ["/usr/bin/python3", "-c", probe, *map(str, targets)],
        user=b.uid,
        group=b.gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "", f"{b.name} can read these files of {a.name}:\n{r.stdout}"
    # and the same probe as A reads its own notebook (the probe can succeed)
    r = subprocess.run(
        ["/usr/bin/python3", "-c", probe, f"/home/{a.name}/{NOTEBOOK}"],
        user=a.uid, group=a.gid, extra_groups=[], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert r.stdout.strip() == f"/home/{a.name}/{NOTEBOOK}"


def _browser_login(browser: Any, user: HubUser) -> Any:
    """A person at the hub's login form in Chromium, through nginx."""
    from playwright.sync_api import expect

    # The TLS tests check the certificate; here the self-signed one is simply accepted.
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(HTTPS + "hub/login", timeout=60_000)
    page.fill("#username_input", user.name)
    page.fill("#password_input", user.password)
    page.click("#login_submit")
    expect(page).to_have_url(re.compile(f"/user/{user.name}/"), timeout=90_000)
    return page


def test_b_cannot_see_a_snapshots_in_the_browser(
    hub: dict[str, HubUser], a_snapshot: tuple[str, str]
) -> None:
    """The real UI: A's panel lists A's labelled snapshot; B's panel (B's own notebook open)
    does not, and B's browser cannot open A's server."""
    playwright = pytest.importorskip("playwright.sync_api")
    from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS
    from tests.e2e.ui import NotebookUI

    a, b = hub[USERS[0]], hub[USERS[1]]
    manual_snapshot(b, open_notebook(b))  # B has a notebook, with a snapshot of its own
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            ui_a = NotebookUI(_browser_login(browser, a), "notebook")
            ui_a.open(f"{a.server}notebooks/private.ipynb")
            ui_a.open_panel()
            playwright.expect(ui_a.item("a-private")).to_have_count(1, timeout=30_000)

            page_b = _browser_login(browser, b)
            ui_b = NotebookUI(page_b, "notebook")
            ui_b.open(f"{b.server}notebooks/{NOTEBOOK}")
            ui_b.open_panel()
            playwright.expect(ui_b.items.first).to_be_visible(timeout=30_000)  # B's own
            playwright.expect(ui_b.item("a-private")).to_have_count(0)
            assert "a-private" not in ui_b.panel.inner_text()
            r = page_b.goto(f"{a.server}notebooks/private.ipynb", timeout=60_000)
            assert r is not None and r.status in (403, 404), r and r.status
            assert "only-for-a" not in page_b.content()
        finally:
            browser.close()


def test_the_notebook_shows_a_full_quota(hub: dict[str, HubUser]) -> None:
    """store.max_user_mb per user: the snapshot that does not fit is not kept, the notebook
    says why (panel alert for the automatic one, notification for the button), the kernel
    keeps running, and the administrator's `jusnap du` shows who uses what."""
    playwright = pytest.importorskip("playwright.sync_api")
    from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS
    from tests.e2e.ui import NotebookUI

    a = hub[USERS[0]]
    big = "blob = __import__('os').urandom(300 * 2**20); print('allocated')"
    kid = open_notebook(
        a, "quota.ipynb", (big, "print(len(blob) // 2**20)", "del blob; print('freed')")
    )

    def auto_error() -> str:
        return a.jusnap("GET", f"kernels/{kid}", expect=200)["auto"]["last_error"] or ""

    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            ui = NotebookUI(_browser_login(browser, a), "notebook")
            ui.open(f"{a.server}notebooks/quota.ipynb")
            playwright.expect(ui.toolbar_auto).to_have_text("auto: on")
            ui.run_cell(0, "allocated")
            # The cell's automatic snapshot is refused; the kernel's view says why.
            wait_for("the refused automatic snapshot", lambda: "quota" in auto_error(), 60)
            assert f"over your quota of {QUOTA_MB} MB" in auto_error()
            # The toolbar's button: the notification says why.
            ui.toolbar_snapshot.click()
            ui.toast(re.compile(f"over your quota of {QUOTA_MB} MB"), "error")
            ui.run_cell(1, "300")  # the kernel is untouched
            ui.run_cell(2, "freed")  # room again: the next automatic snapshot is kept
            wait_for("a kept automatic snapshot", lambda: not auto_error(), 60)
        finally:
            browser.close()
    du = run(JUSNAP_CLI, "du").stdout
    assert f"uid {a.uid} ({a.name}):" in du and f"of {QUOTA_MB} MB" in du, du
    mine = [s for s in a.jusnap("GET", "snapshots", expect=200) if s["notebook_path"]]
    assert not any(s["notebook_path"].endswith("quota.ipynb") and s["size_bytes"] > 2**28
                   for s in mine), "a snapshot over the quota was kept"  # fmt: skip


def test_a_stopped_server_resumes_from_its_final_snapshot(hub: dict[str, HubUser]) -> None:
    """Culling's path (the hub stops the server): the kernel is snapshotted on the way down,
    and the notebook's next kernel, after the user comes back, lists and restores that state."""
    b = hub[USERS[1]]
    kid = open_notebook(b, "resume.ipynb", ("print(resume_me, x)",))
    # A long cooldown: the second cell's automatic snapshot is skipped, so only the snapshot
    # taken while the server stops can hold `resume_me`.
    b.jusnap("PATCH", f"kernels/{kid}/auto", {"enabled": True, "cooldown": 3600}, expect=200)
    ws = b.websocket(kid)
    try:
        ws.run("x = 1")
        wait_for("the first cell's snapshot", lambda: b.jusnap("GET", f"kernels/{kid}/snapshots"))
        ws.run("resume_me = 'left-off-here'")
    finally:
        ws.close()
    before = {s["id"] for s in b.jusnap("GET", f"kernels/{kid}/snapshots", expect=200)}
    stop_server(b)
    assert kid not in {k["id"] for k in root_kernels()}, "the stopped server's kernel is gone"
    start_server(b)
    new = open_notebook(b, "resume.ipynb")
    assert new != kid
    offered = b.jusnap("GET", f"kernels/{new}/snapshots", expect=200)
    final = [s for s in offered if s["kernel_id"] == kid and s["id"] not in before]
    assert len(final) == 1, f"no snapshot taken while the server stopped: {offered}"
    assert final[0]["trigger"] == "auto" and final[0]["restorable"], final[0]

    # The user comes back in the browser: the panel offers that state; one click restores it.
    playwright = pytest.importorskip("playwright.sync_api")
    from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS
    from tests.e2e.ui import NotebookUI

    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            ui = NotebookUI(_browser_login(browser, b), "notebook")
            ui.open(f"{b.server}notebooks/resume.ipynb")
            ui.open_panel()
            item = ui.panel.locator(f"[data-snapshot-id='{final[0]['id']}']")
            playwright.expect(item).to_have_count(1, timeout=30_000)
            playwright.expect(ui.items.first).to_have_attribute(
                "data-snapshot-id", final[0]["id"]
            )  # the newest of the notebook's snapshots
            item.locator(".jp-JusnapPanel-restore").click()
            ui.dialog_button("Restore")
            ui.toast(re.compile(r"Kernel restored"), "success")
            ui.run_cell(0, "left-off-here 1")
        finally:
            browser.close()
