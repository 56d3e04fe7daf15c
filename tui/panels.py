"""The three section panels: a DataTable each, updated cell by cell.

A panel is given the full list of rows every time the dashboard refreshes, but it only touches
what changed: cells are compared with what is on screen and updated in place; the table is
rebuilt only when rows come, go or change order. The cursor stays on the same mailing.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable

from mailtower.core.domain import Section

from .rows import Cells, Layout, label_cell, layout_for

TITLES = {Section.CURRENT: "Current", Section.SCHEDULED: "Scheduled", Section.INACTIVE: "Inactive"}
EMPTY = {
    Section.CURRENT: "nothing is being sent",
    Section.SCHEDULED: "nothing is scheduled",
    Section.INACTIVE: "no inactive mailings",
}


@dataclass(frozen=True, slots=True)
class Row:
    key: str  # the mailing id, so updates find their row whatever its position
    cells: Cells


class MailingTable(DataTable[Text]):
    """One section. Its rows are keyed by mailing id."""

    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("enter", "select_cursor", "Actions", show=False),
    ]

    def __init__(self, section: Section, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", cell_padding=0, zebra_stripes=False)
        self.section = section
        self.layout_spec: Layout | None = None
        self._keys: list[str] = []
        self._shown: dict[str, Cells] = {}
        self._restore: str | None = None  # the highlighted mailing across a change of columns
        self.border_title = TITLES[section]
        self.border_subtitle = ""

    # ---- what the app calls ----------------------------------------------------------------

    @property
    def keys(self) -> list[str]:
        return list(self._keys)

    def highlighted_key(self) -> str | None:
        if not self._keys:
            return None
        row = min(max(self.cursor_row, 0), len(self._keys) - 1)
        return self._keys[row]

    def select_key(self, key: str) -> bool:
        """Put the cursor on a mailing's row; False if it is not in this panel."""
        try:
            index = self._keys.index(key)
        except ValueError:
            return False
        self.move_cursor(row=index)
        return True

    def set_layout(self, layout: Layout) -> bool:
        """Use new columns (the terminal was resized); True if they changed."""
        if layout == self.layout_spec:
            return False
        highlighted = self.highlighted_key()
        self.layout_spec = layout
        self.clear(columns=True)
        for column in layout.columns:
            self.add_column(label_cell(column), width=column.width, key=column.key)
        self._keys = []
        self._shown = {}
        if highlighted is not None:
            self._restore = highlighted
        return True

    def layout_for_width(self, width: int) -> Layout:
        return layout_for(self.section, width)

    def show(self, rows: list[Row]) -> int:
        """Make the table show exactly `rows`; returns how many cells were written."""
        self.border_title = f"{TITLES[self.section]} ({len(rows)})"
        self.border_subtitle = "" if rows else EMPTY[self.section]
        self.set_class(not rows, "-empty")
        keys = [row.key for row in rows]
        if keys != self._keys:
            return self._rebuild(rows)
        written = 0
        for row in rows:
            shown = self._shown[row.key]
            if shown == row.cells:
                continue
            for column, old, new in zip(self.ordered_columns, shown, row.cells):
                if old != new:
                    self.update_cell(row.key, column.key, new)
                    written += 1
            self._shown[row.key] = row.cells
        return written

    # ---- internals -------------------------------------------------------------------------

    def _rebuild(self, rows: list[Row]) -> int:
        highlighted = self._restore or self.highlighted_key()
        self._restore = None
        old_index = self.cursor_row
        scroll_y = self.scroll_y
        self.clear()
        for row in rows:
            self.add_row(*row.cells, key=row.key)
        self._keys = [row.key for row in rows]
        self._shown = {row.key: row.cells for row in rows}
        if not rows:
            return 0
        if highlighted in self._shown:
            index = self._keys.index(highlighted)
        else:
            # The highlighted mailing left this panel: stay at the same place in the list.
            index = min(max(old_index, 0), len(rows) - 1)
        # clear() scrolled to the top; go back to where the operator was looking, then make
        # sure the cursor is visible.
        self.call_after_refresh(self._settle, scroll_y, index)
        self.move_cursor(row=index, scroll=False)
        return sum(len(row.cells) for row in rows)

    def _settle(self, scroll_y: float, index: int) -> None:
        self.scroll_to(y=scroll_y, animate=False, immediate=True)
        if index < len(self._keys):
            self.move_cursor(row=index, scroll=True)
