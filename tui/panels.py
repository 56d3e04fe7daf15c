"""The three section panels: a DataTable each, updated cell by cell, visible rows only.

The app hands a panel the mailing ids in order and a function that makes the cells of row i.
The panel touches only what changed: rows that come and go are removed and appended in place
(a rebuild only when the order changes), and cells are computed and compared for the rows on
screen; rows scrolled into view are brought up to date as they appear. The cost of a refresh is
therefore proportional to what is visible, not to how many mailings there are. The cursor stays
on the same mailing throughout.

The panels share the screen by what they hold (`PanelStack`, `panel_heights`): each is as tall
as its rows, and only when they do not all fit does the focused one get the larger share. The
filter (`/`) narrows all three at once by name, subject or id (`FilterBar`, `matches_filter`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.geometry import Size
from textual.widgets import DataTable, Input, Label
from textual.widgets.data_table import RowKey

from mailtower.core.domain import Mailing, Section

from .rows import Cells, Layout, label_cell, layout_for, to_text

TITLES = {Section.CURRENT: "Current", Section.SCHEDULED: "Scheduled", Section.INACTIVE: "Inactive"}
EMPTY = {
    Section.CURRENT: "nothing is being sent",
    Section.SCHEDULED: "nothing is scheduled",
    Section.INACTIVE: "no inactive mailings",
}
NO_MATCH = "nothing matches the filter"
CHROME_ROWS = 3  # the border above and below, and the column labels
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
        # Home/End (and g/G) go to the first and last mailing; the columns always fit the width,
        # so DataTable's sideways scrolling on these keys had nothing to show.
        Binding("home,g", "first_row", "First", show=False),
        Binding("end,G", "last_row", "Last", show=False),
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

    def action_first_row(self) -> None:
        self.action_scroll_top()

    def action_last_row(self) -> None:
        self.action_scroll_bottom()

    async def action_select_cursor(self) -> None:
        if not self._keys:
            # Enter on an empty panel says so, as `a` does, instead of doing nothing.
            await self.run_action("app.actions")
            return
        super().action_select_cursor()

    def wanted_height(self) -> int:
        """Lines this panel needs to show every row (an empty one shows its column labels)."""
        return CHROME_ROWS + len(self._keys)

    def show(self, keys: list[str], cells_of: CellsOf, total: int | None = None) -> int:
        """Make the table show rows `keys`, row i's cells being `cells_of(i)`; returns cells written.

        `total` is how many mailings the section has when a filter hides some of them.
        """
        total = len(keys) if total is None else total
        count = f"{len(keys)} of {total}" if total != len(keys) else f"{total}"
        self.border_title = f"{TITLES[self.section]} ({count})"
        self.border_subtitle = "" if keys else (EMPTY[self.section] if not total else NO_MATCH)
        self.set_class(not keys, "-empty")
        self._cells_of = cells_of
        written = 0
        if keys != self._keys:
            resized = len(keys) != len(self._keys)
            written += self._change_rows(keys, cells_of)
            if resized and isinstance(self.parent, PanelStack):
                self.parent.fit()
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


# ---- how the three panels share the screen ----------------------------------------------------


def panel_heights(wanted: list[int], room: int, focused: int | None) -> list[int]:
    """Heights for panels that want `wanted` lines each, in `room` lines.

    When everything fits, each panel is as tall as its rows (what is left stays below them, so
    no panel shows empty lines while another is cut). Otherwise every panel keeps its labels and
    one row, and the rest is shared out one line at a time to whichever panel has least per its
    weight, the focused panel weighing double.
    """
    if sum(wanted) <= room:
        return list(wanted)
    heights = [min(w, CHROME_ROWS + 1) for w in wanted]
    weights = [2 if i == focused else 1 for i in range(len(wanted))]
    for _ in range(max(room - sum(heights), 0)):  # bounded by the room
        hungry = [i for i in range(len(wanted)) if heights[i] < wanted[i]]
        if not hungry:
            break
        pick = min(hungry, key=lambda i: (heights[i] / weights[i], -weights[i], i))
        heights[pick] += 1
    return heights


class PanelStack(Vertical):
    """The three panels, one above the other, sized by `panel_heights` (blank below if they are short)."""

    DEFAULT_CSS = """
    PanelStack { height: 1fr; }
    """

    def tables(self) -> list[MailingTable]:
        return [child for child in self.children if isinstance(child, MailingTable)]

    def fit(self) -> None:
        tables = self.tables()
        room = self.size.height
        if not tables or room <= 0:
            return
        focused = next((i for i, t in enumerate(tables) if t.has_focus), None)
        for table, height in zip(tables, panel_heights([t.wanted_height() for t in tables], room, focused)):
            if table.styles.height is None or table.styles.height.value != height:
                table.styles.height = height

    def on_resize(self, event: events.Resize) -> None:
        self.fit()

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        self.fit()

    def on_descendant_blur(self, event: events.DescendantBlur) -> None:
        self.fit()


# ---- the filter ----------------------------------------------------------------------------------


def matches_filter(mailing: Mailing, query: str) -> bool:
    """A mailing matches when its name or subject contains the words typed (any case), or the
    query is its id ("12", "#12" or "id 12")."""
    words = query.casefold().split()
    if not words:
        return True
    wanted_id = " ".join(words).removeprefix("#").removeprefix("id").strip().removeprefix("#")
    if wanted_id.isdigit() and int(wanted_id) == mailing.id:
        return True
    text = f"{mailing.name}\n{mailing.subject}".casefold()
    return all(word in text for word in words)


class FilterBar(Horizontal):
    """The `/` line: what the panels are filtered by; Enter goes back to them, Escape clears."""

    DEFAULT_CSS = """
    FilterBar { height: 1; display: none; padding: 0 1; }
    FilterBar.-active { display: block; }
    FilterBar > Label { width: auto; color: $accent; text-style: bold; }
    FilterBar > Input { width: 1fr; }
    FilterBar > #filter-hint { width: auto; color: $text-muted; }
    """

    def compose(self) -> ComposeResult:
        yield Label("Filter ")
        yield Input(placeholder="name, subject or id", id="filter", compact=True)
        yield Label(" Enter: back to the panels · Esc: clear", id="filter-hint")

    @property
    def input(self) -> Input:
        return self.query_one("#filter", Input)

    @property
    def query_text(self) -> str:
        return self.input.value if self.has_class("-active") else ""

    def open(self) -> None:
        self.add_class("-active")
        self.input.focus()

    def clear(self) -> None:
        self.input.value = ""
        self.remove_class("-active")
