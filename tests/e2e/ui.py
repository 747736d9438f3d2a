"""What a person does in Notebook 7 / JupyterLab, as Playwright steps (selectors in one place)."""

from __future__ import annotations

import re

from playwright.sync_api import Locator, Page, expect

AUTO_STATE = re.compile(r"auto: (on|off)")


class NotebookUI:
    def __init__(self, page: Page, app: str) -> None:
        self.page = page
        self.app = app

    # ---- the notebook ---------------------------------------------------------------------
    def open(self, url: str) -> None:
        self.page.goto(url, timeout=90_000)  # a loaded CI machine can be slow to serve the app
        self.wait_loaded()

    def wait_loaded(self) -> None:
        """The notebook shows its cells, and its kernel runs and Jusnap knows it (the toolbar
        item shows the auto-snapshot state)."""
        expect(self.notebook.locator(".jp-Notebook .jp-Cell").first).to_be_visible(timeout=60_000)
        expect(self.toolbar_auto).to_have_text(AUTO_STATE, timeout=90_000)

    @property
    def notebook(self) -> Locator:
        """The notebook shown: JupyterLab keeps its other notebook tabs in the page, hidden."""
        return self.page.locator(".jp-NotebookPanel:visible")

    def cell(self, index: int) -> Locator:
        return self.notebook.locator(".jp-Notebook .jp-Cell").nth(index)

    def start_cell(self, index: int) -> None:
        """Run a cell and return at once (see ``run_cell`` to wait for it)."""
        self.cell(index).locator(".jp-InputPrompt").click()
        self.page.keyboard.press("Escape")  # command mode, this cell selected
        self.page.keyboard.press("Control+Enter")  # run, stay on the cell

    def run_cell(
        self,
        index: int,
        expect_output: str | re.Pattern[str] | None = None,
        timeout: float = 60_000,
    ) -> str:
        self.start_cell(index)
        return self.wait_cell(index, expect_output, timeout)

    def wait_cell(
        self,
        index: int,
        expect_output: str | re.Pattern[str] | None = None,
        timeout: float = 60_000,
    ) -> str:
        cell = self.cell(index)
        prompt = cell.locator(".jp-InputPrompt")
        expect(prompt).to_have_text(re.compile(r"\[\d+\]"), timeout=timeout)
        output = cell.locator(".jp-OutputArea")
        if expect_output is not None:
            expect(output).to_contain_text(expect_output, timeout=timeout)
        return output.inner_text()

    # ---- the main menu --------------------------------------------------------------------
    def open_menu(self) -> Locator:
        self.page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Snapshots$")).click()
        menu = self.page.locator(".lm-Menu").filter(has_text="Create Snapshot").last
        expect(menu).to_be_visible()
        return menu

    def menu(self, label: str) -> None:
        menu = self.open_menu()
        item = menu.locator(".lm-Menu-item", has_text=label).first
        expect(item).not_to_have_class(re.compile(r"lm-mod-disabled"))
        item.click()

    # ---- dialogs --------------------------------------------------------------------------
    @property
    def dialog(self) -> Locator:
        return self.page.locator(".jp-Dialog")

    def dialog_fill(self, text: str) -> None:
        field = self.dialog.locator("input").first
        field.fill(text)

    def dialog_button(self, label: str) -> None:
        self.dialog.locator(".jp-Dialog-button", has_text=label).click()
        expect(self.dialog).to_have_count(0)

    # ---- the sidebar panel ----------------------------------------------------------------
    @property
    def panel(self) -> Locator:
        return self.page.locator("#jusnap-snapshots-panel")

    def open_panel(self) -> Locator:
        if not self.panel.is_visible():
            self.menu("Show Snapshots Panel")
        expect(self.panel).to_be_visible()
        return self.panel

    @property
    def items(self) -> Locator:
        return self.panel.locator(".jp-JusnapPanel-item")

    def item(self, label: str) -> Locator:
        exact = re.compile(f"^{re.escape(label)}$")
        return self.items.filter(has=self.page.locator(".jp-JusnapPanel-label", has_text=exact))

    def item_of(self, trigger: str) -> Locator:
        return self.panel.locator(f".jp-JusnapPanel-item[data-trigger='{trigger}']")

    # ---- the notebook toolbar item --------------------------------------------------------
    @property
    def toolbar_snapshot(self) -> Locator:
        return self.notebook.locator(".jp-NotebookPanel-toolbar .jp-JusnapToolbar-snapshot")

    @property
    def toolbar_auto(self) -> Locator:
        return self.notebook.locator(".jp-NotebookPanel-toolbar .jp-JusnapToolbar-auto")

    # ---- notifications --------------------------------------------------------------------
    def toast(self, text: str | re.Pattern[str], kind: str | None = None) -> Locator:
        toasts = self.page.locator(".Toastify__toast")
        if kind:
            toasts = self.page.locator(f".Toastify__toast--{kind}")
        found = toasts.filter(has_text=text).first
        expect(found).to_be_visible(timeout=60_000)
        expect(found).to_be_in_viewport(ratio=1)  # slid in: ready for a screenshot
        return found
