"""The three section panels: a DataTable each, updated cell by cell, visible rows only.

The app hands a panel the mailing ids in order and a function that makes the cells of row i.
The panel touches only what changed: rows that come and go are removed and appended in place
(a rebuild only when the order changes), and cells are computed and compared for the rows on
screen; rows scrolled into view are brought up to date as they appear. The cost of a refresh is
therefore proportional to what is visible, not to how many mailings there are. The cursor stays
on the same mailing throughout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from rich.text import Text
from textual.binding import Binding
from textual.geometry import Size
from textual.widgets import DataTable
from textual.widgets.data_table import RowKey

from mailtower.core.domain import Section

from .rows import Cells, Layout, label_cell, layout_for, to_text

TITLES = {Section.CURRENT: "Current", Section.SCHEDULED: "Scheduled", Section.INACTIVE: "Inactive"}
EMPTY = {
    Section.CURRENT: "nothing is being sent",
    Section.SCHEDULED: "nothing is scheduled",
    Section.INACTIVE: "no inactive mailings",
}
MARGIN = 2  # rows just outside the view kept fresh too, so a small scroll never shows stale text
EAGER_ROWS = 50  # rows either side of the view drawn at once when rows are added
NOT_DRAWN: Cells = ()  # a row added blank; its cells are drawn when it comes into view

CellsOf = Callable[[int], Cells]


class MailingTable(DataTable):  # type: ignore[type-arg]
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
        self._cells_of: CellsOf | None = None
        self._column_keys: list[str] = []
        self._restore: str | None = None  # the highlighted mailing across a change of columns
        self.cells_written = 0
        self.border_title = TITLES[section]

    # ---- what the app calls ----------------------------------------------------------------

    @property
    def keys(self) -> list[str]:
        return list(self._keys)

    def highlighted_key(self) -> str | None:
        if not self._keys:
            return None
        return self._keys[min(max(self.cursor_row, 0), len(self._keys) - 1)]

    def select_key(self, key: str) -> bool:
        """Put the cursor on a mailing's row; False if it is not in this panel."""
        try:
            index = self._keys.index(key)
        except ValueError:
            return False
        self.move_cursor(row=index)
        return True

    def layout_for_width(self, width: int) -> Layout:
        return layout_for(self.section, width)

    def set_layout(self, layout: Layout) -> bool:
        """Use new columns (the terminal was resized); True if they changed."""
        if layout == self.layout_spec:
            return False
        self._restore = self.highlighted_key()
        self.layout_spec = layout
        self.clear(columns=True)
        for column in layout.columns:
            self.add_column(label_cell(column), width=column.width, key=column.key)
        self._column_keys = [column.key for column in layout.columns]
        self._keys, self._shown = [], {}
        return True

    def show(self, keys: list[str], cells_of: CellsOf) -> int:
        """Make the table show rows `keys`, row i's cells being `cells_of(i)`; returns cells written."""
        self.border_title = f"{TITLES[self.section]} ({len(keys)})"
        self.border_subtitle = "" if keys else EMPTY[self.section]
        self.set_class(not keys, "-empty")
        self._cells_of = cells_of
        written = 0
        if keys != self._keys:
            written += self._change_rows(keys, cells_of)
        written += self._refresh_rows(self.visible_rows())
        self.cells_written += written
        return written

    def visible_rows(self) -> range:
        top = int(self.scroll_y)
        return range(max(top - MARGIN, 0), min(top + self.size.height + MARGIN, len(self._keys)))

    # ---- internals -------------------------------------------------------------------------

    def _refresh_rows(self, rows: range) -> int:
        cells_of = self._cells_of
        if cells_of is None:
            return 0
        written = 0
        for index in rows:
            key = self._keys[index]
            cells = cells_of(index)
            shown = self._shown[key]
            if cells == shown:
                continue
            if shown is NOT_DRAWN:
                shown = (None,) * len(cells)
            for column, old, new in zip(self._column_keys, shown, cells):
                if old != new:
                    self.update_cell(key, column, to_text(new))
                    written += 1
            self._shown[key] = cells
        return written

    def _change_rows(self, keys: list[str], cells_of: CellsOf) -> int:
        highlighted = self._restore or self.highlighted_key()
        self._restore = None
        old_index = self.cursor_row
        wanted = set(keys)
        kept = [key for key in self._keys if key in wanted]
        if keys[: len(kept)] == kept and kept:
            # Rows left (a mailing completed, was stopped...) and others joined at the end: edit in place.
            for key in self._keys:
                if key not in wanted:
                    self.remove_row(key)
                    del self._shown[key]
            start = len(kept)
        else:
            # The order changed: build the table again.
            scroll_y = self.scroll_y
            self.clear()
            self._shown = {}
            start = 0
            self.call_after_refresh(self.scroll_to, y=scroll_y, animate=False, immediate=True)
        written = 0
        # Rows far from the view get blank cells now and their text when they scroll into view
        # (watch_scroll_y): a panel of 10,000 mailings costs what its visible rows cost.
        top = int(self.scroll_y)
        eager = range(max(top - EAGER_ROWS, 0), top + max(self.size.height, 24) + EAGER_ROWS)
        blank = tuple(Text() for _ in self._column_keys)
        for index in range(start, len(keys)):
            if index in eager:
                cells = cells_of(index)
                self.add_row(*map(to_text, cells), key=keys[index])
                self._shown[keys[index]] = cells
                written += len(cells)
            else:
                self.add_row(*blank, key=keys[index])
                self._shown[keys[index]] = NOT_DRAWN
        self._keys = list(keys)
        if keys:
            if highlighted in self._shown:
                row = keys.index(highlighted)
            else:
                # The highlighted mailing left this panel: stay at the same place in the list.
                row = min(max(old_index, 0), len(keys) - 1)
            if row != self.cursor_row:
                self.move_cursor(row=row)
        return written

    def _update_dimensions(self, new_rows: Iterable[RowKey]) -> None:
        # Every column here has a fixed width and every row is one line, so DataTable's measuring
        # of each new cell (for auto-width columns) is wasted on thousands of rows.
        if any(column.auto_width for column in self.columns.values()):
            super()._update_dimensions(new_rows)
            return
        width = sum(column.get_render_width(self) for column in self.columns.values())
        header = self.header_height if self.show_header else 0
        self.virtual_size = Size(width + self._row_label_column_width, self._total_row_height + header)

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if int(old_value) != int(new_value) and self._keys:
            # Rows coming into view may have been skipped by refreshes while they were hidden.
            self.cells_written += self._refresh_rows(self.visible_rows())
