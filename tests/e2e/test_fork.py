""" "Open as new notebook" in a real browser (issue 14): a snapshot becomes a second notebook in
a new tab whose kernel is the snapshot, live, while the original notebook's kernel keeps running.

Notebook 7 is the full story (a new browser tab, both kernels at once, diverging states, a
generator going on in the fork); JupyterLab the menu path, the copy opening as a Lab tab.
"""

from __future__ import annotations

import re
import urllib.parse
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
    # 0: state to branch from: a number and a generator part-way through
    "x = 41\n"
    "def counter():\n"
    "    i = 0\n"
    "    while True:\n"
    "        i += 1\n"
    "        yield i\n"
    "g = counter()\n"
    "print('first', next(g))",
    # 1: each run moves both on
    "x = x + 1\nprint('x', x, 'next', next(g))",
    # 2: a slow cell, to run in both notebooks at the same time
    "import time\nt0 = time.time()\ntime.sleep(4)\nprint('slept', t0, time.time())",
]
FORK_FILE = re.compile(r"^branch \(fork of branch-point \d\d-\d\d\)( \d+)?\.ipynb$")
Shot = Callable[[Any, str], Path]


@pytest.fixture(scope="module")
def app() -> str:
    """This module's tests each say which application they drive."""
    return "notebook"


def sessions(stack: Stack) -> dict[str, str]:
    return {s["path"]: s["kernel"]["id"] for s in stack.jupyter.api("GET", "api/sessions")}


def snapshot_point(ui: NotebookUI, label: str) -> None:
    ui.menu("Create Snapshot with Label")
    ui.dialog_fill(label)
    ui.dialog_button("Snapshot")
    ui.toast(re.compile(f"Snapshot created “{label}”"), "success")


def slept(output: str) -> tuple[float, float]:
    m = re.search(r"slept ([\d.]+) ([\d.]+)", output)
    assert m, output
    return float(m.group(1)), float(m.group(2))


def test_notebook7_open_as_new_notebook(stack: Stack, page: Page, shot: Shot) -> None:
    nb = stack.jupyter.write_notebook("branch.ipynb", CELLS)
    ui = NotebookUI(page, "notebook")
    ui.open(stack.jupyter.page_url(nb))
    ui.run_cell(0, "first 1")
    snapshot_point(ui, "branch-point")
    # The original moves on past the snapshot. (Every output a cell is waited for differs from
    # the one it showed: the copy starts with the original's outputs, saved before the fork.)
    ui.run_cell(1, "x 42 next 2")
    ui.run_cell(1, "x 43 next 3")

    ui.open_panel()
    row = ui.item("branch-point")
    expect(row.locator(".jp-JusnapPanel-fork")).to_have_text("Open as new notebook")
    shot(ui.panel, "notebook-panel-fork-button")
    with page.context.expect_page(timeout=30_000) as opened:
        row.locator(".jp-JusnapPanel-fork").click()
    fork_page = opened.value
    ui.toast(re.compile(r"Opened branch \(fork of branch-point \d\d-\d\d\)\.ipynb"), "success")

    # A second browser tab with the copy, beside the original, on a kernel of its own.
    fork_page.wait_for_url(re.compile(r"/notebooks/branch%20\(fork%20of%20"), timeout=60_000)
    copy = urllib.parse.unquote(fork_page.url.split("/notebooks/", 1)[1].split("?")[0])
    assert FORK_FILE.match(copy), copy
    assert (stack.jupyter.root / copy).is_file()
    fork = NotebookUI(fork_page, "notebook")
    fork.wait_loaded()
    kernels = sessions(stack)
    original_kid, fork_kid = kernels[nb], kernels[copy]
    assert original_kid != fork_kid
    parent = stack.jupyter.jusnap("GET", f"kernels/{fork_kid}", expect=200)
    assert parent["parent_kernel_id"] == original_kid

    # The fork is the snapshot, live: x and the generator go on from there...
    fork.run_cell(1, "x 42 next 2")
    shot(fork_page, "notebook-fork-tab")
    # ...while the original kept its own state, untouched by the fork.
    ui.run_cell(1, "x 44 next 4")

    # Both run a cell at the same time.
    ui.start_cell(2)
    fork.start_cell(2)
    a = slept(ui.wait_cell(2, "slept", timeout=60_000))
    b = slept(fork.wait_cell(2, "slept", timeout=60_000))
    assert max(a[0], b[0]) < min(a[1], b[1]), f"the cells did not overlap: {a} {b}"

    # And they go on diverging, each on its own.
    fork.run_cell(1, "x 43 next 3")
    ui.run_cell(1, "x 45 next 5")

    # The fork's panel says where it came from; its snapshot list is its own (empty).
    fork.open_panel()
    lineage = fork.panel.locator(".jp-JusnapPanel-lineage")
    expect(lineage).to_have_text("Forked from “branch-point” [1]")
    expect(fork.items).to_have_count(0)
    shot(fork.panel, "notebook-panel-forked-from")
    expect(ui.items).to_have_count(1)
    expect(ui.panel.locator(".jp-JusnapPanel-lineage")).to_have_count(0)

    # A fork of the fork: a third tab, from the fork's own snapshot.
    snapshot_point(fork, "fork-point")
    with fork_page.context.expect_page(timeout=30_000) as opened_again:
        fork.item("fork-point").locator(".jp-JusnapPanel-fork").click()
    third_page = opened_again.value
    third_page.wait_for_url(re.compile(r"fork%20of%20fork-point"), timeout=60_000)
    third = NotebookUI(third_page, "notebook")
    third.wait_loaded()
    third.run_cell(1, "x 44 next 4")  # from the fork's state (x 43, next 3)

    # The original's kernel goes away: the forks keep working.
    original_session = next(s for s in stack.jupyter.api("GET", "api/sessions") if s["path"] == nb)
    stack.jupyter.api("DELETE", f"api/sessions/{original_session['id']}", expect=204)
    fork.run_cell(1, "x 44 next 4")
    third.run_cell(1, "x 45 next 5")


def test_lab_open_as_new_notebook_from_the_menu(
    make_stack: Callable[..., Stack], page: Page, shot: Shot
) -> None:
    stack = make_stack("lab")
    nb = stack.jupyter.write_notebook("branch.ipynb", CELLS[:2])
    ui = NotebookUI(page, "lab")
    ui.open(stack.jupyter.page_url(nb))
    ui.run_cell(0, "first 1")
    snapshot_point(ui, "branch-point")
    ui.run_cell(1, "x 42 next 2")
    ui.run_cell(1, "x 43 next 3")  # (the copy shows this output until the fork runs the cell)

    # The menu acts on a snapshot picked from the list (the newest first).
    ui.menu("Open Snapshot as New Notebook")
    expect(ui.dialog).to_contain_text("branch-point")
    ui.dialog_button("Open")
    ui.toast(re.compile(r"Opened branch \(fork of branch-point"), "success")

    # JupyterLab opens the copy as a tab of its own, shown now; the original's tab stays.
    tab = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab", has_text="(fork of branch-point")
    expect(tab).to_have_class(re.compile(r"lm-mod-current"), timeout=60_000)
    ui.wait_loaded()
    wait_until(lambda: len(sessions(stack)) == 2, timeout=30)
    ui.run_cell(1, "x 42 next 2")  # the fork: from the snapshot
    shot(page, "lab-fork-tab")
    page.locator(
        ".lm-DockPanel-tabBar .lm-TabBar-tab", has_text=re.compile(r"^branch\.ipynb")
    ).click()
    ui.run_cell(1, "x 44 next 4")  # the original: its own state


def test_a_failed_fork_says_why_and_leaves_nothing(
    make_stack: Callable[..., Stack], page: Page, shot: Shot
) -> None:
    """A snapshot deleted behind the UI's back: the error is shown, the tab opened for the copy
    closes again, and there is no copy and no second kernel."""
    stack = make_stack("notebook", refresh_interval=0)  # the list stays stale
    nb = stack.jupyter.write_notebook("gone.ipynb", CELLS[:1])
    ui = NotebookUI(page, "notebook")
    ui.open(stack.jupyter.page_url(nb))
    ui.run_cell(0, "first 1")
    snapshot_point(ui, "doomed")
    ui.open_panel()
    expect(ui.item("doomed")).to_have_count(1)
    files = sorted(p.name for p in stack.jupyter.root.iterdir())
    kid = sessions(stack)[nb]
    sid = stack.jupyter.jusnap("GET", f"kernels/{kid}/snapshots", expect=200)[0]["id"]
    stack.jupyter.jusnap("DELETE", f"snapshots/{sid}", expect=204)

    with page.context.expect_page(timeout=30_000) as opened:
        ui.item("doomed").locator(".jp-JusnapPanel-fork").click()
    ui.toast(re.compile(r"Open as new notebook failed: .+"), "error")
    shot(page, "notebook-fork-failed")
    for _ in range(100):  # (waiting in Playwright: its events are handled meanwhile)
        if opened.value.is_closed():
            break
        page.wait_for_timeout(100)
    assert opened.value.is_closed(), "the tab opened for the copy is closed again"
    assert sorted(p.name for p in stack.jupyter.root.iterdir()) == files
    assert list(sessions(stack)) == [nb]
    assert [k["id"] for k in stack.jupyter.jusnap("GET", "kernels", expect=200)] == [kid]
