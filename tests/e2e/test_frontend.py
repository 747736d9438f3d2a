"""Every snapshot action from the Notebook 7 and JupyterLab UIs, against the real stack."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("playwright.sync_api")

from playwright.sync_api import Page, expect

from tests.e2e.conftest import Stack
from tests.e2e.ui import NotebookUI
from tests.helpers import wait_until

CELLS = [
    "x = 41\ny = 'before'\nprint('set', x, y)",
    "x = 0\ny = 'after'\nprint('changed', x, y)",
    "print(f'x={x} y={y}')",
]


def kernel_of(stack: Stack, notebook: str) -> str:
    for s in stack.jupyter.api("GET", "api/sessions", expect=200):
        if s["path"] == notebook:
            return str(s["kernel"]["id"])
    raise AssertionError(f"no session for {notebook}")


def test_snapshot_restore_delete_clear(
    app: str, stack: Stack, page: Page, shot: Callable[[Any, str], Path]
) -> None:
    nb = stack.jupyter.write_notebook("flow.ipynb", CELLS)
    ui = NotebookUI(page, app)
    ui.open(stack.jupyter.page_url(nb))
    expect(ui.toolbar_auto).to_have_text("auto: off")

    ui.run_cell(0, "set 41 before")

    # Create a labelled snapshot from the main menu.
    ui.open_menu()
    shot(page, f"{app}-menu")
    page.keyboard.press("Escape")
    ui.menu("Create Snapshot with Label")
    ui.dialog_fill("e2e-before")
    ui.dialog_button("Snapshot")
    ui.toast(re.compile(r"Snapshot created “e2e-before”"), "success")

    # The panel lists it, with its facts.
    ui.open_panel()
    item = ui.item("e2e-before")
    expect(item).to_have_count(1)
    expect(item.locator(".jp-JusnapPanel-badge")).to_have_text("manual")
    expect(item.locator(".jp-JusnapPanel-relative")).to_have_text(re.compile(r"just now|\d+ s ago"))
    size = re.compile(r"\d+(\.\d+)? (KiB|MiB|GiB)")
    expect(item.locator(".jp-JusnapPanel-size")).to_have_text(size)
    expect(item.locator(".jp-JusnapPanel-frozen")).to_have_text(re.compile(r"frozen \d+"))
    expect(item.locator(".jp-JusnapPanel-exec")).to_have_text("[1]")

    # Change the variables, then restore from the panel.
    ui.run_cell(1, "changed 0 after")
    item.locator(".jp-JusnapPanel-restore").click()
    expect(ui.dialog).to_contain_text("e2e-before")
    ui.dialog_button("Restore")
    # While it runs (a second or more: the daemon waits for Jupyter to reconnect): a busy
    # indicator in the panel. (The pending notification turns into the outcome in place.)
    expect(ui.panel.locator(".jp-JusnapPanel-busy")).to_contain_text("Restoring")
    shot(ui.panel, f"{app}-panel-restoring")
    ui.toast(re.compile(r"Kernel restored to “e2e-before” \[1\] in \d"), "success")
    expect(ui.panel.locator(".jp-JusnapPanel-busy")).to_have_count(0)
    indicator = page.locator(".jp-NotebookPanel-toolbar .jp-Notebook-ExecutionIndicator")
    expect(indicator).to_have_attribute("data-status", "idle")
    shot(ui.panel, f"{app}-panel")
    shot(page, f"{app}-restored")

    # The kernel is back: the old values, no page reload, kernel idle again.
    ui.run_cell(2, "x=41 y=before")
    shot(page, f"{app}-after-restore")
    expect(ui.item_of("pre-restore")).to_have_count(1)
    expect(ui.items.first).to_have_attribute("data-trigger", "pre-restore")  # newest first

    # Relabel from the list.
    item.locator(".jp-JusnapPanel-relabel").click()
    ui.dialog_fill("e2e-renamed")
    ui.dialog_button("Save")
    expect(ui.item("e2e-renamed")).to_have_count(1)

    # Delete one, then clear all (both confirmed).
    ui.item_of("pre-restore").locator(".jp-JusnapPanel-delete").click()
    ui.dialog_button("Delete")
    expect(ui.item_of("pre-restore")).to_have_count(0)
    expect(ui.items).to_have_count(1)
    kid = kernel_of(stack, nb)
    assert len(stack.jupyter.jusnap("GET", f"kernels/{kid}/snapshots", expect=200)) == 1

    ui.menu("Clear All Snapshots")
    expect(ui.dialog).to_contain_text("Delete all 1 snapshots")
    ui.dialog_button("Delete all")
    ui.toast("Deleted 1 snapshot", "success")
    expect(ui.items).to_have_count(0)
    expect(ui.panel.locator(".jp-JusnapPanel-empty")).to_have_text("No snapshots yet.")
    assert stack.jupyter.jusnap("GET", f"kernels/{kid}/snapshots", expect=200) == []


Shot = Callable[[Any, str], Path]


def test_auto_snapshot_toggle(app: str, stack: Stack, page: Page, shot: Shot) -> None:
    nb = stack.jupyter.write_notebook("auto.ipynb", ["a = 1", "b = 2", "c = 3", "d = 4"])
    ui = NotebookUI(page, app)
    ui.open(stack.jupyter.page_url(nb))
    ui.open_panel()

    # Off: running cells adds nothing.
    expect(ui.toolbar_auto).to_have_text("auto: off")
    ui.run_cell(0)
    time.sleep(4)
    ui.menu("Refresh Snapshot List")
    expect(ui.items).to_have_count(0)

    # On (toolbar toggle): each executed cell brings an auto snapshot into the panel by itself.
    ui.toolbar_auto.click()
    expect(ui.toolbar_auto).to_have_text("auto: on")
    expect(ui.panel.locator(".jp-JusnapPanel-autoToggle")).to_be_checked()
    ui.run_cell(1)
    expect(ui.item_of("auto").first.locator(".jp-JusnapPanel-exec")).to_have_text(
        "[2]", timeout=30_000
    )
    # A dump that saw the frontend talk to the kernel is kept unnumbered, and a trailing
    # snapshot (the "[2]" one) follows it: count them once nothing is pending any more.
    kid = kernel_of(stack, nb)
    wait_until(
        lambda: (
            stack.jupyter.jusnap("GET", f"kernels/{kid}/auto", expect=200)["pending_at"] is None
        ),
        30,
        0.2,
        "no pending automatic snapshot",
    )
    ui.menu("Refresh Snapshot List")
    autos = stack.jupyter.jusnap("GET", f"kernels/{kid}/snapshots", expect=200)
    assert autos and autos[0]["execution_count"] == 2, autos
    assert {s["execution_count"] for s in autos} <= {2, None}, autos
    expect(ui.item_of("auto")).to_have_count(len(autos))
    shot(ui.panel, f"{app}-panel-auto")

    # Off again (from the panel's checkbox): no more.
    ui.panel.locator(".jp-JusnapPanel-autoToggle").click()
    expect(ui.toolbar_auto).to_have_text("auto: off")
    ui.run_cell(2)
    time.sleep(5)
    ui.menu("Refresh Snapshot List")
    expect(ui.item_of("auto")).to_have_count(len(autos))
    assert len(stack.jupyter.jusnap("GET", f"kernels/{kid}/snapshots", expect=200)) == len(autos)


def test_api_error_shows_notification(
    app: str, make_stack: Callable[..., Stack], page: Page, shot: Shot
) -> None:
    # No background refresh: the list must stay stale for the "deleted behind its back" step.
    stack = make_stack(app, refresh_interval=0)
    nb = stack.jupyter.write_notebook("errors.ipynb", ["z = 1"])
    ui = NotebookUI(page, app)
    ui.open(stack.jupyter.page_url(nb))
    ui.run_cell(0)
    ui.toolbar_snapshot.click()
    ui.toast("Snapshot created", "success")
    ui.open_panel()
    expect(ui.items).to_have_count(1)

    # The API refuses a label over 200 characters: its message reaches the user.
    ui.items.first.locator(".jp-JusnapPanel-relabel").click()
    ui.dialog_fill("L" * 250)
    ui.dialog_button("Save")
    ui.toast(re.compile(r"Relabel failed: .*label"), "error")
    shot(page, f"{app}-error")

    # A snapshot deleted behind the UI's back: restoring it is a clean 404, not a broken page.
    # (First let the refreshes that follow a cell's end, at +0.8 s and +3 s, pass.)
    time.sleep(3.5)
    kid = kernel_of(stack, nb)
    sid = stack.jupyter.jusnap("GET", f"kernels/{kid}/snapshots", expect=200)[0]["id"]
    stack.jupyter.jusnap("DELETE", f"snapshots/{sid}", expect=204)
    ui.items.first.locator(".jp-JusnapPanel-restore").click()
    ui.dialog_button("Restore")
    ui.toast(re.compile(r"Restore failed: .*"), "error")
    expect(ui.items).to_have_count(0)  # the list refreshed itself

    # The daemon goes away: actions fail with a notification, the panel says so...
    stack.daemon.stop()
    ui.toolbar_snapshot.click()
    ui.toast(re.compile(r"Snapshot failed: .+"), "error")
    expect(ui.panel.locator(".jp-JusnapPanel-error")).to_be_visible()
    shot(ui.panel, f"{app}-panel-daemon-down")
    # ...and everything works again once it is back (it re-adopts the kernel), without a reload.
    stack.daemon.start()
    ui.panel.locator(".jp-JusnapPanel-refresh").click()
    expect(ui.panel.locator(".jp-JusnapPanel-error")).to_have_count(0)
    ui.toolbar_snapshot.click()
    expect(ui.items).to_have_count(1)


def test_failed_automatic_snapshot_is_shown(app: str, stack: Stack, page: Page, shot: Shot) -> None:
    """An automatic snapshot runs after the cell's request was answered; when it fails the
    panel says so (the newest state is not saved), and once one works the alert goes."""
    big_unlinked_file = (
        "import os, tempfile\n"
        "f = tempfile.TemporaryFile()\n"
        "f.write(os.urandom(80 * 1024 * 1024)); f.flush()\n"
        "print('held')"
    )
    nb = stack.jupyter.write_notebook(
        "failing.ipynb", [big_unlinked_file, "print('next')", "f.close(); print('closed')"]
    )
    ui = NotebookUI(page, app)
    ui.open(stack.jupyter.page_url(nb))
    ui.open_panel()
    ui.toolbar_auto.click()
    expect(ui.toolbar_auto).to_have_text("auto: on")
    ui.run_cell(0, "held")  # over the ghost limit: CRIU refuses this kernel's dump
    alert = ui.panel.locator(".jp-JusnapPanel-autoError")
    expect(alert).to_contain_text("Automatic snapshot failed", timeout=30_000)
    expect(alert).to_contain_text("not saved")
    shot(ui.panel, f"{app}-panel-auto-failed")
    ui.run_cell(1, "next")
    ui.run_cell(2, "closed")
    expect(alert).to_have_count(0, timeout=30_000)


def test_run_all_ends_with_its_last_cell_saved(
    app: str, stack: Stack, page: Page, shot: Shot
) -> None:
    """Run All with automatic snapshots on: cells end faster than snapshots are taken; the
    newest automatic snapshot still holds the last cell, and the panel lists it as such."""
    n = 15
    nb = stack.jupyter.write_notebook(
        "run-all.ipynb", [f"v = {i}\nprint('cell', v)" for i in range(1, n + 1)]
    )
    ui = NotebookUI(page, app)
    ui.open(stack.jupyter.page_url(nb))
    ui.open_panel()
    ui.toolbar_auto.click()
    expect(ui.toolbar_auto).to_have_text("auto: on")
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-item", has_text=re.compile(r"^Run All Cells")).first.click()
    expect(ui.cell(n - 1).locator(".jp-OutputArea")).to_contain_text(f"cell {n}", timeout=60_000)
    expect(ui.cell(n - 1).locator(".jp-InputPrompt")).to_have_text(f"[{n}]:")
    newest = ui.item_of("auto").first
    expect(newest.locator(".jp-JusnapPanel-exec")).to_have_text(f"[{n}]", timeout=30_000)
    shot(ui.panel, f"{app}-panel-run-all")
    kid = kernel_of(stack, nb)
    autos = [
        s
        for s in stack.jupyter.jusnap("GET", f"kernels/{kid}/snapshots", expect=200)
        if s["trigger"] == "auto"
    ]
    assert autos[0]["execution_count"] == n
