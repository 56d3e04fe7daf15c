"""The three section panels: one line-drawn list each, updated row by row, visible rows only.

The app hands a panel the mailing ids in order and a function that makes the cells of row i.
A panel draws itself line by line (Textual's line API, as the remaining-recipients list does):
the column labels on the first line, then one line per visible mailing, each line built straight
from the row's cells (plain data, see tui/rows.py) and kept until those cells change. A refresh
computes the cells of the rows on screen only, compares them with what is shown, and repaints
just the lines that differ; rows scrolled into view are computed as they are drawn. The cost of
a refresh is therefore proportional to what is visible and what changed, never to how many
mailings there are or how fast they are sent. The cursor stays on the same mailing throughout.

(The panels were DataTables: every changed cell invalidated the whole table's render cache, so
each tick re-rendered every visible cell through Rich; see issue 11 item 16.)

The panels share the screen by what they hold (`PanelStack`, `panel_heights`): each is as tall
as its rows, and only when they do not all fit does the focused one get the larger share. The
filter (`/`) narrows all three at once by name, subject or id (`FilterBar`, `matches_filter`).
"""

from __future__ import annotations

from collections.abc import Callable

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Input, Label

from mailtower.tui.fields import TextField
from mailtower.core.display import safe
from mailtower.core.domain import Mailing, Section

from .rows import Cell, Cells, Layout, label_cell, layout_for, to_text

TITLES = {Section.CURRENT: "Current", Section.SCHEDULED: "Scheduled", Section.INACTIVE: "Inactive"}
EMPTY = {
    Section.CURRENT: "nothing is being sent",
    Section.SCHEDULED: "nothing is scheduled",
    Section.INACTIVE: "no inactive mailings",
}
NO_MATCH = "nothing matches the filter"
CHROME_ROWS = 3  # the border above and below, and the column labels
HEADER_LINES = 1  # the column labels, above the rows, never scrolled away
MARGIN = 2  # rows just outside the view kept fresh too, so a small scroll never shows stale text
NOT_DRAWN: Cells = ()  # a row never on screen yet: its cells are computed when it is drawn
ELLIPSIS = "…"

CellsOf = Callable[[int], Cells]
Look = tuple[Style, Style]  # a panel's base style and its cursor's, as focus has them now


class MailingTable(ScrollView, can_focus=True):
    """One section: a line-drawn list whose rows are keyed by mailing id."""

    COMPONENT_CLASSES = {"mailing-table--header", "mailing-table--cursor"}

    # The look of Textual's DataTable, which these panels were: the same colours and cursor.
    DEFAULT_CSS = """
    MailingTable {
        background: $surface;
        color: $foreground;
        overflow-x: hidden;
        &:focus {
            background-tint: $foreground 5%;
            & > .mailing-table--cursor {
                background: $block-cursor-background;
                color: $block-cursor-foreground;
                text-style: $block-cursor-text-style;
            }
            & > .mailing-table--header {
                background-tint: $foreground 5%;
            }
        }
        & > .mailing-table--header {
            text-style: bold;
            background: $panel;
            color: $foreground;
        }
        &:ansi > .mailing-table--header {
            background: ansi_bright_blue;
            color: ansi_default;
        }
        & > .mailing-table--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
    }
    """

    BINDINGS = [
        Binding("up,k", "cursor_up", "Up", show=False),
        Binding("down,j", "cursor_down", "Down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("enter", "select_cursor", "Actions", show=False),
        Binding("home,g,ctrl+home", "first_row", "First", show=False),
        Binding("end,G,ctrl+end", "last_row", "Last", show=False),
    ]

    class RowSelected(Message):
        """Enter (or a click on the highlighted row) on a mailing: open its Actions."""

        def __init__(self, table: "MailingTable", key: str) -> None:
            super().__init__()
            self.table = table
            self.key = key

    def __init__(self, section: Section, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.section = section
        self.layout_spec: Layout | None = None
        self.cursor_row = 0
        self._keys: list[str] = []
        self._index: dict[str, int] = {}
        self._shown: dict[str, Cells] = {}  # the cells each row was last drawn (or refreshed) with
        self._cells_of: CellsOf | None = None
        self._restore: str | None = None  # the highlighted mailing across a change of columns
        # Drawn lines by (look, cells, on the cursor, width). The look (the panel's colours, which
        # focus changes) is part of the key, so Tab or a dialog closing redraws from lines already
        # drawn in that look instead of drawing every visible row again (issue 11 item 16).
        self._strips: dict[tuple[Look, Cells, bool, int], Strip] = {}
        self._look: Look | None = None  # the present look; found again when the styles change
        self._header: Strip | None = None
        self.cells_written = 0
        self.border_title = TITLES[section]

    # ---- what the app calls ----------------------------------------------------------------

    @property
    def keys(self) -> list[str]:
        return list(self._keys)

    @property
    def row_count(self) -> int:
        return len(self._keys)

    def highlighted_key(self) -> str | None:
        if not self._keys:
            return None
        return self._keys[min(max(self.cursor_row, 0), len(self._keys) - 1)]

    def select_key(self, key: str) -> bool:
        """Put the cursor on a mailing's row; False if it is not in this panel."""
        index = self._index.get(key)
        if index is None:
            return False
        self.move_cursor(row=index)
        return True

    def move_cursor(self, *, row: int, scroll: bool = True) -> None:
        row = max(0, min(row, len(self._keys) - 1)) if self._keys else 0
        old, self.cursor_row = self.cursor_row, row
        if old != row:
            self._refresh_row(old)
            self._refresh_row(row)
        if scroll:
            self._scroll_to_row(row)

    def get_row(self, key: str) -> list[Text]:
        """The cells of a mailing's row as last drawn (blank if it never came into view)."""
        cells = self._shown[key]
        if cells is NOT_DRAWN:
            return [Text() for _ in self._columns()]
        return [to_text(cell) for cell in cells]

    def get_cell(self, key: str, column: str) -> Text:
        return self.get_row(key)[[c.key for c in self._columns()].index(column)]

    def layout_for_width(self, width: int) -> Layout:
        return layout_for(self.section, width)

    def set_layout(self, layout: Layout) -> bool:
        """Use new columns (the terminal was resized); True if they changed."""
        if layout == self.layout_spec:
            return False
        self._restore = self.highlighted_key()
        self.layout_spec = layout
        self._keys, self._index, self._shown = [], {}, {}
        self._forget_drawn()
        self._sync_size()
        return True

    def action_first_row(self) -> None:
        self.move_cursor(row=0)

    def action_last_row(self) -> None:
        self.move_cursor(row=len(self._keys) - 1)

    def action_cursor_up(self) -> None:
        self.move_cursor(row=self.cursor_row - 1)

    def action_cursor_down(self) -> None:
        self.move_cursor(row=self.cursor_row + 1)

    def action_page_up(self) -> None:
        self.move_cursor(row=self.cursor_row - self._page())

    def action_page_down(self) -> None:
        self.move_cursor(row=self.cursor_row + self._page())

    async def action_select_cursor(self) -> None:
        key = self.highlighted_key()
        if key is None:
            # Enter on an empty panel says so, as `a` does, instead of doing nothing.
            await self.run_action("app.actions")
            return
        self.post_message(self.RowSelected(self, key))

    def wanted_height(self) -> int:
        """Lines this panel needs to show every row (an empty one shows its column labels)."""
        return CHROME_ROWS + len(self._keys)

    def show(self, keys: list[str], cells_of: CellsOf, total: int | None = None) -> int:
        """Make the panel show rows `keys`, row i's cells being `cells_of(i)`; returns cells written.

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
            written += self._change_rows(keys)
            if resized and isinstance(self.parent, PanelStack):
                self.parent.fit()
        written += self._refresh_rows(self.visible_rows())
        self.cells_written += written
        return written

    def visible_rows(self) -> range:
        top = int(self.scroll_y)
        return range(max(top - MARGIN, 0), min(top + self.size.height + MARGIN, len(self._keys)))

    # ---- rows --------------------------------------------------------------------------------

    def _refresh_rows(self, rows: range) -> int:
        """Compute the cells of `rows`, and repaint the lines whose cells changed."""
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
            written += len(cells) if shown is NOT_DRAWN else sum(old != new for old, new in zip(shown, cells))
            self._shown[key] = cells
            self._refresh_row(index)
        return written

    def _change_rows(self, keys: list[str]) -> int:
        """Rows came, went or changed order: keep the cursor on its mailing (or its place)."""
        highlighted = self._restore or self.highlighted_key()
        self._restore = None
        old_index = self.cursor_row
        shown = self._shown
        # Rows that stay keep what they were drawn with; new rows are computed when drawn.
        self._shown = {key: shown.get(key, NOT_DRAWN) for key in keys}
        self._keys = list(keys)
        self._index = {key: i for i, key in enumerate(keys)}
        self._sync_size()
        self.refresh()
        if keys:
            row = self._index.get(highlighted, -1) if highlighted is not None else -1
            if row < 0:
                # The highlighted mailing left this panel: stay at the same place in the list.
                row = min(max(old_index, 0), len(keys) - 1)
            self.move_cursor(row=row, scroll=row != old_index)
        else:
            self.cursor_row = 0
        return 0

    def _sync_size(self) -> None:
        width = max(self.scrollable_content_region.width, 1)
        self.virtual_size = Size(width, HEADER_LINES + len(self._keys))

    def _page(self) -> int:
        return max(self.scrollable_content_region.height - HEADER_LINES - 1, 1)

    def _scroll_to_row(self, row: int) -> None:
        # Row i is virtual line i + 1; asking for lines i..i+1 keeps it below the fixed labels.
        self.scroll_to_region(Region(0, row, 1, 2), animate=False, immediate=True, force=True)

    def _refresh_row(self, index: int) -> None:
        y = HEADER_LINES + index - int(self.scroll_y)
        if HEADER_LINES <= y < self.size.height:
            self.refresh(Region(0, y, self.size.width, 1))

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if int(old_value) != int(new_value) and self._keys:
            # Rows coming into view may have changed while refreshes skipped them (off screen).
            self.cells_written += self._refresh_rows(self.visible_rows())
        # The labels stay on the first line; every other line shows another row now.
        self.refresh()

    # ---- drawing -------------------------------------------------------------------------------

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._restyle()

    def on_focus(self) -> None:
        self._restyle()
        self.refresh()

    def on_blur(self) -> None:
        self._restyle()
        self.refresh()

    def on_resize(self) -> None:
        self._restyle()
        self._sync_size()

    def _restyle(self) -> None:
        """The styles may have changed: the look is found again at the next line drawn (lines
        drawn in an earlier look stay cached under it; a focus change often comes back)."""
        self._look = None
        self._header = None

    def _forget_drawn(self) -> None:
        self._strips.clear()
        self._restyle()

    def current_look(self) -> Look:
        look = self._look
        if look is None:
            look = self._look = (self.rich_style, self.get_component_rich_style("mailing-table--cursor"))
        return look

    def _columns(self) -> tuple:  # type: ignore[type-arg]
        return self.layout_spec.columns if self.layout_spec is not None else ()

    def render_line(self, y: int) -> Strip:
        # The whole width, the scrollbar's gutter too (the DataTable's rows reached the border).
        width = self.size.width
        if y < HEADER_LINES:
            if self._header is None or self._header.cell_length != width:
                self._header = self._header_strip(width)
            return self._header
        index = int(self.scroll_y) + y - HEADER_LINES
        if index >= len(self._keys) or self.layout_spec is None:
            return Strip.blank(width, self.rich_style)
        key = self._keys[index]
        cells = self._shown.get(key, NOT_DRAWN)
        if cells is NOT_DRAWN and self._cells_of is not None:
            cells = self._shown[key] = self._cells_of(index)
        on_cursor = index == self.cursor_row
        look = self.current_look()
        strip = self._strips.get((look, cells, on_cursor, width))
        if strip is None:
            if len(self._strips) > 8 * max(self.size.height, 10):  # bounded: a few screenfuls of rows
                self._strips.clear()
            strip = self._strips[(look, cells, on_cursor, width)] = self._row_strip(cells, on_cursor, width, look)
        return strip

    def _header_strip(self, width: int) -> Strip:
        style = self.rich_style + self.get_component_rich_style("mailing-table--header")
        labels = tuple(label_cell(c) for c in self._columns())
        return self._line(labels, style, style, None, width)

    def _row_strip(self, cells: Cells, on_cursor: bool, width: int, look: Look) -> Strip:
        base, cursor = look
        if not on_cursor:
            return self._line(cells, base, base, None, width)
        # As the DataTable drew it: the cursor's colour wins over a cell's own (red, green...).
        return self._line(cells, base + cursor, base + cursor, Style(color=cursor.color), width)

    def _line(self, cells: Cells, base: Style, fill: Style, over: Style | None, width: int) -> Strip:
        segments: list[Segment] = []
        for column, cell in zip(self._columns(), cells):
            segments += _cell_segments(cell, column.width, base, over)
        used = sum(c.width for c in self._columns())
        if used < width:
            segments.append(Segment(" " * (width - used), fill))
        return Strip(segments).crop(0, width)

    # ---- mouse --------------------------------------------------------------------------------

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)  # inside the border
        if offset is None:
            return
        index = int(self.scroll_y) + offset.y - HEADER_LINES
        if offset.y < HEADER_LINES or not 0 <= index < len(self._keys):
            self.focus()
            return
        if index == self.cursor_row and self.has_focus:
            # A click on the highlighted row opens its Actions, as Enter does.
            self.post_message(self.RowSelected(self, self._keys[index]))
        self.focus()
        self.move_cursor(row=index, scroll=False)


_STYLES: dict[str, Style] = {}


def _style(name: str) -> Style | None:
    if not name:
        return None
    style = _STYLES.get(name)
    if style is None:
        style = _STYLES[name] = Style.parse(name)
    return style


def _cell_segments(cell: Cell, width: int, base: Style, over: Style | None) -> list[Segment]:
    """One cell as segments exactly `width` cells wide: right- or left-aligned, cut with an
    ellipsis when too long (what the DataTable's no-wrap, ellipsis cells did)."""
    right, parts = cell
    # Names come from people: nothing the terminal would act on (escapes, direction overrides).
    pieces = [(safe(text), _style(style)) for text, style in parts if text]
    length = sum(cell_len(text) for text, _ in pieces)
    if length > width:
        pieces, length = _cut(pieces, width), width
    segments = [Segment(text, _compose(base, style, over)) for text, style in pieces]
    pad = Segment(" " * (width - length), base) if length < width else None
    if pad is not None:
        segments = [pad, *segments] if right else [*segments, pad]
    return segments


def _cut(pieces: list[tuple[str, Style | None]], width: int) -> list[tuple[str, Style | None]]:
    """The first width-1 cells and an ellipsis in the style of the text it replaces."""
    kept: list[tuple[str, Style | None]] = []
    room = width - 1
    for text, style in pieces:
        size = cell_len(text)
        if size >= room:
            # A wide character that does not fit whole leaves a space (rich's own rule).
            kept.append((set_cell_size(text, room) + ELLIPSIS, style))
            return kept
        kept.append((text, style))
        room -= size
    return kept


def _compose(base: Style, style: Style | None, over: Style | None) -> Style:
    result = base if style is None else base + style
    return result if over is None else result + over


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

    _fit_asked = False

    def on_resize(self, event: events.Resize) -> None:
        self.fit()

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        self._fit_after_frame()

    def on_descendant_blur(self, event: events.DescendantBlur) -> None:
        self._fit_after_frame()

    def _fit_after_frame(self) -> None:
        """A move of the focus (a blur, then a focus) resizes the panels once, after the frame
        that shows the focus moved: that frame is the key's answer, the new heights follow it
        (one layout instead of two inside the key, issue 11 item 16)."""
        if not self._fit_asked:
            self._fit_asked = True
            self.call_after_refresh(self._fit_now)

    def _fit_now(self) -> None:
        self._fit_asked = False
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
        yield TextField(placeholder="name, subject or id", id="filter", compact=True)
        yield Label(" Enter: back to the panels · Esc: clear", id="filter-hint")

    @property
    def input(self) -> Input:
        return self.query_one("#filter", Input)

    @property
    def query_text(self) -> str:
        return self.input.value if self.has_class("-active") else ""

    def open(self) -> None:
        self.add_class("-active")
        # Now, not after the messages already waiting (what `focus()` does): the keys typed after
        # "/" in the same burst are handed to whatever has the focus when each is read.
        self.screen.set_focus(self.input)

    def clear(self) -> None:
        self.input.value = ""
        self.remove_class("-active")
