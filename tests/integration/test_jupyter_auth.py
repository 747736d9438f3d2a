"""Who may do what: through Jupyter's proxy and straight at the daemon's loopback port.

Every refusal is checked for its status, its JSON error code, and that nothing changed.
"""

from __future__ import annotations

import json
import os

import pytest
import requests

from tests.integration.conftest import JusnapStack
from tests.jupyter import KernelWebsocket


@pytest.fixture
def world(stack: JusnapStack, second_user) -> dict:
    """Two owners: the Jupyter user's notebook kernel, and another local user's kernel started
    with the CLI (it runs as that user's uid: ownership is the uid a kernel runs as)."""
    j = stack.jupyter
    session = j.new_session("mine.ipynb")
    mine = session["kernel"]["id"]
    ws = KernelWebsocket(j, mine)
    ws.run("mine = 1")
    my_snap = j.jusnap("POST", f"kernels/{mine}/snapshots", {"label": "mine"}, expect=201)[
        "snapshot"
    ]["id"]
    r = stack.daemon.cli("--json", "start", user=second_user)
    assert r.returncode == 0, r.stderr
    theirs = json.loads(r.stdout)["id"]
    r = stack.daemon.cli("--json", "snapshot", theirs, "--label", "theirs", user=second_user)
    assert r.returncode == 0, r.stderr
    their_snap = json.loads(r.stdout)["snapshot"]["id"]
    yield {"mine": mine, "my_snap": my_snap, "theirs": theirs, "their_snap": their_snap, "ws": ws}
    ws.close()


def _state(stack: JusnapStack, w: dict) -> object:
    """Everything a refused request must not change (seen by root, who sees all)."""
    out = []
    for kid in (w["mine"], w["theirs"]):
        k = json.loads(stack.daemon.cli("--json", "kernels").stdout)
        out.append(sorted((x["id"], x["pid"], x["status"], x["auto"]["enabled"]) for x in k))
        snaps = json.loads(stack.daemon.cli("--json", "snapshots", kid).stdout)
        out.append([(s["id"], s["label"]) for s in snaps])
    return out


def _check(r: requests.Response, status: int, code: str | None = None) -> None:
    assert r.status_code == status, f"{r.request.method} {r.url}: {r.status_code} {r.text}"
    if code is not None:
        assert r.headers["Content-Type"].startswith("application/json")
        assert r.json()["error"] == code, r.text


def _writes(w: dict) -> list[tuple[str, str, dict | None]]:
    return [
        ("POST", f"kernels/{w['mine']}/snapshots", {"label": "x"}),
        ("POST", f"snapshots/{w['my_snap']}/restore", {"kernel_id": w["mine"]}),
        ("PATCH", f"kernels/{w['mine']}/auto", {"enabled": True}),
        ("PATCH", f"snapshots/{w['my_snap']}", {"label": "renamed"}),
        ("DELETE", f"snapshots/{w['my_snap']}", None),
        ("DELETE", f"kernels/{w['mine']}/snapshots", None),
        ("DELETE", f"kernels/{w['mine']}", None),
    ]


def _others(w: dict) -> list[tuple[str, str, dict | None]]:
    t, ts = w["theirs"], w["their_snap"]
    return [
        ("GET", f"kernels/{t}", None),
        ("GET", f"kernels/{t}/snapshots", None),
        ("POST", f"kernels/{t}/snapshots", {}),
        ("PATCH", f"kernels/{t}/auto", {"enabled": True}),
        ("POST", f"kernels/{t}/interrupt", None),
        ("POST", f"kernels/{t}/restart", None),
        ("DELETE", f"kernels/{t}/snapshots", None),
        ("DELETE", f"kernels/{t}", None),
        ("GET", f"snapshots/{ts}", None),
        ("PATCH", f"snapshots/{ts}", {"label": "mine now"}),
        ("POST", f"snapshots/{ts}/restore", {"kernel_id": w["mine"]}),
        ("POST", f"snapshots/{ts}/restore", {}),
        ("DELETE", f"snapshots/{ts}", None),
    ]


def test_through_jupyter(stack: JusnapStack, world: dict) -> None:
    j, w = stack.jupyter, world
    base = j.url + "jusnap/api/v1/"
    before = _state(stack, w)

    # No credentials, a wrong token: Jupyter itself refuses, in the API's error shape.
    for method, path, body in [("GET", "kernels", None), *_writes(w)]:
        _check(requests.request(method, base + path, json=body, timeout=30), 403, "forbidden")
        bad = {"Authorization": "token not-the-token"}
        _check(
            requests.request(method, base + path, json=body, headers=bad, timeout=30),
            403,
            "forbidden",
        )

    # A logged-in browser (cookie) without the XSRF header: every write refused.
    browser = j.browser()
    _check(browser.get(base + "kernels", timeout=30), 200)
    for method, path, body in _writes(w):
        _check(browser.request(method, base + path, json=body, timeout=30), 403, "forbidden")
        wrong = {"X-XSRFToken": "2|00000000|11111111|1"}
        _check(
            browser.request(method, base + path, json=body, headers=wrong, timeout=30),
            403,
            "forbidden",
        )

    # Another user's kernel and snapshot: as if they did not exist.
    for method, path, body in _others(w):
        code = "snapshot_not_found" if path.startswith("snapshots/") else "kernel_not_found"
        _check(
            requests.request(method, base + path, json=body, headers=j.auth, timeout=30), 404, code
        )
    listed = requests.get(base + "kernels", headers=j.auth, timeout=30).json()
    assert [k["id"] for k in listed] == [w["mine"]]

    assert _state(stack, w) == before, "a refused request changed something"

    # The same browser with its XSRF token may write.
    xsrf = browser.cookies["_xsrf"]
    r = browser.post(
        base + f"kernels/{w['mine']}/snapshots",
        json={"label": "ok"},
        headers={"X-XSRFToken": xsrf},
        timeout=120,
    )
    _check(r, 201)


def _cookie_header(browser: requests.Session) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in browser.cookies)


def _remask(xsrf: str) -> str:
    """The same token as tornado would render it in another page (another random mask)."""
    from jusnap.api.browser import decode_xsrf

    token = decode_xsrf(xsrf)
    assert token
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(token))
    return f"2|{mask.hex()}|{masked.hex()}|{xsrf.rsplit('|', 1)[-1]}"


def test_straight_to_the_daemon(stack: JusnapStack, world: dict) -> None:
    j, w = stack.jupyter, world
    base = stack.daemon_url
    before = _state(stack, w)

    # Nothing at all: 401. A token Jupyter does not know: 403.
    for method, path, body in [("GET", "kernels", None), *_writes(w)]:
        _check(requests.request(method, base + path, json=body, timeout=30), 401, "unauthorized")
        for header in ("token wrong", "Bearer wrong", "token "):
            r = requests.request(
                method, base + path, json=body, headers={"Authorization": header}, timeout=30
            )
            assert r.status_code in (401, 403), r.text
    # A cookie Jupyter does not know: 403.
    fake = {"Cookie": "username-127-0-0-1-8888=forged; _xsrf=abc", "X-XSRFToken": "abc"}
    _check(requests.get(base + "kernels", headers=fake, timeout=30), 403, "forbidden")
    _check(
        requests.post(base + f"kernels/{w['mine']}/snapshots", json={}, headers=fake, timeout=30),
        403,
    )

    # A logged-in browser's cookie, sent where nginx routes /jusnap/ straight to the daemon.
    browser = j.browser()
    cookie = _cookie_header(browser)
    r = requests.get(base + "kernels", headers={"Cookie": cookie}, timeout=30)
    _check(r, 200)
    assert [k["id"] for k in r.json()] == [w["mine"]], "only the Jupyter user's kernels"
    for method, path, body in _writes(w):
        _check(
            requests.request(
                method, base + path, json=body, headers={"Cookie": cookie}, timeout=30
            ),
            403,
            "forbidden",
        )
        bad = {"Cookie": cookie, "X-XSRFToken": _remask("2|deadbeef|00112233|1")}
        _check(
            requests.request(method, base + path, json=body, headers=bad, timeout=30),
            403,
            "forbidden",
        )
    for method, path, body in _others(w):
        xsrf = browser.cookies["_xsrf"]
        r = requests.request(
            method,
            base + path,
            json=body,
            headers={"Cookie": cookie, "X-XSRFToken": xsrf},
            timeout=30,
        )
        _check(r, 404)
    assert _state(stack, w) == before, "a refused request changed something"

    # With the XSRF token (masked differently, as another page of Jupyter would render it): ok.
    xsrf = _remask(browser.cookies["_xsrf"])
    r = requests.post(
        base + f"kernels/{w['mine']}/snapshots",
        json={"label": "cookie"},
        headers={"Cookie": cookie, "X-XSRFToken": xsrf},
        timeout=120,
    )
    _check(r, 201)
    # Jupyter's token in the Authorization header (no XSRF needed, as in Jupyter).
    r = requests.post(
        base + f"kernels/{w['mine']}/snapshots",
        json={"label": "token"},
        headers={"Authorization": f"token {j.token}"},
        timeout=120,
    )
    _check(r, 201)
    # The administrator's token file: root sees every kernel.
    r = requests.get(
        base + "kernels", headers={"Authorization": f"Bearer {stack.admin_token}"}, timeout=30
    )
    assert sorted(k["id"] for k in r.json()) == sorted([w["mine"], w["theirs"]])


def test_no_cors(stack: JusnapStack) -> None:
    origin = {"Origin": "https://evil.example"}
    for url in (stack.daemon_url + "health", stack.daemon_url + "kernels"):
        for method in ("GET", "OPTIONS"):
            r = requests.request(
                method, url, headers={**origin, "Access-Control-Request-Method": "POST"}, timeout=30
            )
            assert not [h for h in r.headers if h.lower().startswith("access-control-")], dict(
                r.headers
            )
