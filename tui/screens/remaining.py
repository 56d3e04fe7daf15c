"""Remaining recipients of a mailing: a list that can hold a million rows, filterable and exportable.

Nothing here holds the whole list. `RecipientList` is a Line API widget: it draws only the
visible lines, from pages of rows fetched by keyset (`store.remaining(after_id=...)`) and kept
in a small LRU cache. A jump far away (End on a million rows) finds its page's starting id with
`store.remaining_ids_at`; walking on from a page uses the page's last id, which is cheap.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.screen import ModalScreen, Screen
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Button, Checkbox, Footer, Input, Label, Static

from mailtower.tui.fields import TextField
from mailtower.core.display import safe
from mailtower.core.domain import Mailing, Recipient
from mailtower.core.errors import UserError
from mailtower.core.exports import export_remaining_csv, state_label
from mailtower.core.files import check_output_path, database_companions
from mailtower.core.store import Store

PAGE_SIZE = 200
CACHED_PAGES = 24  # ~5,000 rows: a few screens either way of the cursor
FILTER_DELAY = 0.25  # seconds of quiet typing before the filter queries the database


# --- paging --------------------------------------------------------------------------------


class RemainingPages:
    """Rows of one (mailing, filter) by position, fetched a page at a time.

    Without a filter the row count is the mailing's counter and any page can be reached
    directly. With one, the count is known once the last page has been read or the list has
    been counted (End does that): until then `complete` is False, `count` is what has been seen
    so far, and a page is reached by reading the pages before it.
    """

    def __init__(self, store: Store, mailing_id: int, search: str, count: int | None) -> None:
        self.store = store
        self.mailing_id = mailing_id
        self.search = search
        self.count = count if count is not None else 0
        self.complete = count is not None
        self._pages: OrderedDict[int, list[Recipient]] = OrderedDict()
        # after_id that starts each page, once known: a few ints per 200 rows, never evicted.
        self._starts: dict[int, int] = {0: 0}
        self._loading: dict[int, asyncio.Future[bool]] = {}

    def row(self, index: int) -> Recipient | None:
        page = self._pages.get(index // PAGE_SIZE)
        if page is None:
            return None
        offset = index % PAGE_SIZE
        return page[offset] if offset < len(page) else None

    def has_page(self, page: int) -> bool:
        return page in self._pages

    async def load(self, page: int) -> bool:
        """Fetch one page into the cache; False if it lies past the end.

        Asking for a page already on its way waits for that read instead of starting another.
        """
        if page in self._pages:
            self._pages.move_to_end(page)
            return True
        reading = self._loading.get(page)
        if reading is None:
            reading = asyncio.ensure_future(self._read(page))
            self._loading[page] = reading
            reading.add_done_callback(lambda _: self._loading.pop(page, None))
        # Shielded: a cancelled caller must not cancel a read that others may be waiting for.
        return await asyncio.shield(reading)

    async def _read(self, page: int) -> bool:
        after_id = await self._start_of(page)
        if after_id is None:
            return False
        rows = await self.store.remaining(self.mailing_id, after_id=after_id, limit=PAGE_SIZE, search=self.search)
        self._remember(page, rows)
        return bool(rows)

    async def count_to_end(self) -> None:
        """Count a filtered list with one query, so its last page can be reached directly."""
        if not self.complete:
            self.count = await self.store.remaining_count(self.mailing_id, self.search)
            self.complete = True

    async def _start_of(self, page: int) -> int | None:
        if page in self._starts:
            return self._starts[page]
        previous = self._loading.get(page - 1)
        if previous is not None:
            # Scrolling down asks for consecutive pages: the one before ends where this one starts.
            await asyncio.shield(previous)
            if page in self._starts:
                return self._starts[page]
        if self.complete:
            if page * PAGE_SIZE >= self.count:
                return None
            # Counted from the start of the ledger: costs one index walk, only for far jumps.
            start = await self.store.remaining_ids_at(self.mailing_id, page * PAGE_SIZE, self.search)
            self._starts[page] = start
            return start
        # Until a filtered list is counted, its pages are reached by reading the ones before.
        known = max(p for p in self._starts if p < page)
        for earlier in range(known, page):
            if not await self.load(earlier):
                return None
        return self._starts.get(page)

    def _remember(self, page: int, rows: list[Recipient]) -> None:
        self._pages[page] = rows
        self._pages.move_to_end(page)
        while len(self._pages) > CACHED_PAGES:
            self._pages.popitem(last=False)
        end = page * PAGE_SIZE + len(rows)
        if rows:
            self._starts[page + 1] = rows[-1].id
        if len(rows) < PAGE_SIZE:
            # The true end: trust the ledger over a counter that may lag behind it.
            self.count = end
            self.complete = True
        elif end > self.count:
            self.count = end


# --- the list widget -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Columns:
    """Cell widths of the list's columns for one screen width."""

    email: int
    name: int
    state: int
    attempts: int
    code: int
    error: int

    @classmethod
    def for_width(cls, width: int) -> "Columns":
        state, attempts, code = 8, 3, 4
        fixed = state + attempts + code + 5  # five one-cell gaps
        email = max(12, min(40, width * 35 // 100))
        name = max(6, min(24, width * 16 // 100))
        error = max(0, width - fixed - email - name)
        return cls(email, name, state, attempts, code, error)

    def cells(self, email: str, name: str, state: str, attempts: str, code: str, error: str) -> list[str]:
        return [
            _fit(email, self.email),
            _fit(name, self.name),
            _fit(state, self.state),
            _fit(attempts, self.attempts, right=True),
            _fit(code, self.code, right=True),
            _fit(error, self.error),
        ]


def _fit(text: str, width: int, right: bool = False) -> str:
    """Pad or cut to exactly `width` cells, marking a cut with an ellipsis."""
    if width <= 0:
        return ""
    text = safe(" ".join(text.split()))  # server replies can carry newlines, tabs and escapes
    if cell_len(text) > width:
        return set_cell_size(text, width - 1) + "…"
    if right:
        return " " * (width - cell_len(text)) + text
    return set_cell_size(text, width)


HEADINGS = ("Email", "Name", "State", "Try", "Code", "Last error")


class ColumnHeader(Widget):
    """The headings above the list, laid out with the list's own column widths."""

    DEFAULT_CSS = """
    ColumnHeader {
        height: 1;
        text-style: bold;
        background: $panel;
    }
    """

    def render_line(self, y: int) -> Strip:
        # The list keeps one cell for its scrollbar gutter; the header leaves the same.
        columns = Columns.for_width(self.size.width - 1)
        text = " ".join(columns.cells(*HEADINGS))
        return Strip([Segment(set_cell_size(text, self.size.width), self.rich_style)])


class RecipientList(ScrollView, can_focus=True):
    """One line per remaining recipient, drawn on demand from `RemainingPages`."""

    COMPONENT_CLASSES = {
        "recipient-list--cursor",
        "recipient-list--loading",
        "recipient-list--deferred",
        "recipient-list--doubt",
        "recipient-list--sending",
    }

    DEFAULT_CSS = """
    RecipientList {
        scrollbar-gutter: stable;
        scrollbar-size-vertical: 1;
        overflow-x: hidden;
        height: 1fr;
    }
    RecipientList > .recipient-list--cursor {
        background: $block-cursor-blurred-background;
    }
    RecipientList:focus > .recipient-list--cursor {
        background: $block-cursor-background;
        color: $block-cursor-foreground;
        text-style: bold;
    }
    RecipientList > .recipient-list--loading {
        color: $text-muted;
    }
    RecipientList > .recipient-list--deferred {
        color: $text-warning;
    }
    RecipientList > .recipient-list--doubt {
        color: $text-accent;
    }
    RecipientList > .recipient-list--sending {
        color: $text-success;
    }
    """

    BINDINGS = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home,g", "first", "First", show=False),
        Binding("end,G", "last", "Last", show=False),
    ]

    cursor: reactive[int] = reactive(0, always_update=True, init=False)

    class CursorMoved(Message):
        def __init__(self, index: int, recipient: Recipient | None) -> None:
            super().__init__()
            self.index = index
            self.recipient = recipient

    def __init__(self, pages: RemainingPages, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.pages = pages
        self._requested: set[int] = set()

    # --- data ----------------------------------------------------------------------------

    def show(self, pages: RemainingPages, cursor: int = 0) -> None:
        """Switch to another row source (a new filter, or the same one re-read)."""
        self.pages = pages
        self._requested.clear()
        self._sync_size()
        if cursor == 0:
            self.scroll_to(0, 0, animate=False)
        self.cursor = cursor

    @property
    def row_count(self) -> int:
        # An unfinished filtered list shows one "loading" line past what it has seen.
        return self.pages.count + (0 if self.pages.complete else 1)

    def _sync_size(self) -> None:
        self.virtual_size = Size(max(self.scrollable_content_region.width, 1), self.row_count)
        self.refresh()

    def _want(self, page: int) -> None:
        if page < 0 or self.pages.has_page(page) or page in self._requested:
            return
        if self.pages.complete and page * PAGE_SIZE >= self.pages.count:
            return
        self._requested.add(page)
        self._fetch(self.pages, page)

    @work(group="pages")
    async def _fetch(self, pages: RemainingPages, page: int) -> None:
        try:
            await pages.load(page)
        finally:
            if pages is self.pages:
                self._requested.discard(page)
        if pages is not self.pages:
            return  # the filter changed while this page was on its way
        self._sync_size()
        if self.cursor >= self.row_count:
            self.cursor = max(self.row_count - 1, 0)
        elif self.cursor // PAGE_SIZE == page:
            # The row under the cursor has arrived: let the screen show its details.
            self.post_message(self.CursorMoved(self.cursor, self.pages.row(self.cursor)))

    @work(group="pages", exclusive=True)
    async def _jump_to_end(self, pages: RemainingPages) -> None:
        await pages.count_to_end()
        if pages is self.pages:
            self._sync_size()
            self.cursor = max(self.pages.count - 1, 0)

    def prefetch(self) -> None:
        """Ask for the pages of the visible window and of the cursor's surroundings.

        The two are asked for separately: after a jump the window may still be far from the
        cursor, and everything between them is not wanted.
        """
        height = max(self.scrollable_content_region.height, 1)
        top = int(self.scroll_y)
        for first, last in ((top - height, top + 2 * height), (self.cursor - height, self.cursor + height)):
            for page in range(max(first, 0) // PAGE_SIZE, max(last, 0) // PAGE_SIZE + 1):
                self._want(page)

    # --- cursor --------------------------------------------------------------------------

    def validate_cursor(self, value: int) -> int:
        return max(0, min(value, self.row_count - 1)) if self.row_count else 0

    def watch_cursor(self, value: int) -> None:
        self.scroll_to_region(Region(0, value, 1, 1), animate=False, immediate=True, force=True)
        self.prefetch()
        self.refresh()
        self.post_message(self.CursorMoved(value, self.pages.row(value)))

    def action_cursor(self, step: int) -> None:
        self.cursor += step

    def action_page(self, direction: int) -> None:
        self.cursor += direction * max(self.scrollable_content_region.height - 1, 1)

    def action_first(self) -> None:
        self.cursor = 0

    def action_last(self) -> None:
        if not self.pages.complete:
            self._jump_to_end(self.pages)
        self.cursor = self.row_count - 1

    def on_click(self, event: events.Click) -> None:
        self.focus()
        self.cursor = int(self.scroll_y) + event.y

    def on_resize(self) -> None:
        self._sync_size()
        self.prefetch()

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        self.prefetch()

    # --- drawing -------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        index = int(self.scroll_y) + y
        width = self.scrollable_content_region.width
        if index >= self.row_count:
            return Strip.blank(width, self.rich_style)
        on_cursor = index == self.cursor
        base = self.rich_style
        if on_cursor:
            base += self.get_component_rich_style("recipient-list--cursor")
        recipient = self.pages.row(index)
        if recipient is None:
            self._want(index // PAGE_SIZE)
            loading = base if on_cursor else base + self.get_component_rich_style("recipient-list--loading")
            return Strip([Segment(set_cell_size("  …", width), loading)])
        label = state_label(recipient)
        cells = Columns.for_width(width).cells(
            recipient.email,
            recipient.name,
            label,
            str(recipient.attempts),
            "" if recipient.last_code is None else str(recipient.last_code),
            recipient.last_error or "",
        )
        state_style = None if on_cursor else self._state_style(label)
        segments = []
        for number, cell in enumerate(cells):
            segments.append(Segment(cell, base + state_style if number == 2 and state_style else base))
            segments.append(Segment(" ", base))
        return Strip(segments).adjust_cell_length(width, base)

    def _state_style(self, label: str) -> Style | None:
        component = {"deferred": "deferred", "in doubt": "doubt", "sending": "sending"}.get(label)
        return self.get_component_rich_style(f"recipient-list--{component}") if component else None

    def visible_lines(self) -> list[str]:
        """The text on screen, line by line (for tests and the benchmark)."""
        return [self.render_line(y).text for y in range(self.scrollable_content_region.height)]


# --- export dialog -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExportChoice:
    path: Path
    overwrite: bool


class ExportDialog(ModalScreen[ExportChoice | None]):
    """Asks where to write the CSV file."""

    DEFAULT_CSS = """
    ExportDialog {
        align: center middle;
    }
    ExportDialog > #export-box {
        width: 70;
        max-width: 100%;
        height: auto;
        border: round $primary;
        background: $surface;
        padding: 0 1;
    }
    ExportDialog #export-what {
        margin-bottom: 1;
    }
    ExportDialog #export-path {
        margin-bottom: 1;
    }
    ExportDialog #export-note {
        color: $text-warning;
        height: auto;
    }
    ExportDialog #export-buttons {
        height: 1;
        margin-top: 1;
        align-horizontal: right;
    }
    ExportDialog #export-buttons Button {
        margin-left: 2;
    }
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, default: Path, what: str, protected: Sequence[Path] = ()) -> None:
        super().__init__()
        self.default = default
        self.what = what
        # Files the export must never replace (the database and its companions).
        self.protected = list(protected)

    def compose(self) -> ComposeResult:
        box = Vertical(id="export-box")
        box.border_title = "Export to CSV"
        with box:
            yield Label(self.what, id="export-what")
            yield TextField(str(self.default), id="export-path", compact=True)
            yield Checkbox("Replace the file if it exists", id="export-overwrite", compact=True)
            yield Static(id="export-note", markup=False)
            with Horizontal(id="export-buttons"):
                yield Button("Cancel", id="export-cancel", compact=True)
                yield Button("Export", id="export-ok", variant="primary", compact=True)

    def on_mount(self) -> None:
        self._check()
        self.query_one("#export-path", Input).focus()

    def _choice(self) -> ExportChoice:
        return ExportChoice(
            Path(self.query_one("#export-path", Input).value.strip()).expanduser(),
            self.query_one("#export-overwrite", Checkbox).value,
        )

    def _problem(self, choice: ExportChoice) -> str:
        """What is wrong with the choice, by the same rules the export itself applies (core/files)."""
        if not str(choice.path) or str(choice.path) == ".":
            return "give a file name"
        try:
            check_output_path(
                choice.path, what="export", force=choice.overwrite, protected=self.protected,
                replace_hint="tick Replace or choose another name",
            )
        except UserError as exc:
            return exc.message.removeprefix("export: ")
        return ""

    @on(Input.Changed)
    @on(Checkbox.Changed)
    def _check(self) -> None:
        problem = self._problem(self._choice())
        self.query_one("#export-note", Static).update(safe(problem))
        self.query_one("#export-ok", Button).disabled = bool(problem)

    @on(Input.Submitted)
    @on(Button.Pressed, "#export-ok")
    def action_export(self) -> None:
        choice = self._choice()
        if not self._problem(choice):
            self.dismiss(choice)

    @on(Button.Pressed, "#export-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


# --- the screen ----------------------------------------------------------------------------


class RemainingScreen(Screen[None]):
    """The recipients who have not received `mailing`, with their state and last error."""

    DEFAULT_CSS = """
    RemainingScreen #remaining-title {
        height: 1;
        background: $primary;
        color: $text;
        text-style: bold;
        padding: 0 1;
    }
    RemainingScreen #filter-row {
        height: 1;
    }
    RemainingScreen #filter-label {
        width: 9;
        padding-left: 1;
    }
    RemainingScreen #filter {
        width: 1fr;
    }
    RemainingScreen #remaining-status {
        height: 1;
        background: $panel;
        padding: 0 1;
    }
    RemainingScreen #remaining-error {
        height: 1;
        padding: 0 1;
        color: $text-muted;
    }
    """

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("slash", "focus_filter", "Filter", key_display="/"),
        Binding("e", "export", "Export CSV"),
        Binding("r", "reload", "Reload"),
    ]

    def __init__(self, store: Store, mailing: Mailing, settings_files: Sequence[Path] = ()) -> None:
        super().__init__()
        self.store = store
        self.mailing = mailing
        self.settings_files = tuple(settings_files)  # never exported over (core/config.files_read)
        self.search = ""
        self._pages = RemainingPages(store, mailing.id, "", mailing.remaining)
        self._filter_timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="remaining-title", markup=False)
        with Horizontal(id="filter-row"):
            yield Label("Filter", id="filter-label")
            yield TextField(placeholder="part of an address, name or error  (/)", id="filter", compact=True)
        yield ColumnHeader()
        yield RecipientList(self._pages, id="recipients")
        yield Static(id="remaining-error", markup=False)
        yield Static(id="remaining-status", markup=False)
        yield Footer()

    async def on_mount(self) -> None:
        # The first page is read before the first frame so the screen never opens empty.
        await self._pages.load(0)
        self._title()
        listing = self.query_one(RecipientList)
        listing.focus()
        listing.show(self._pages)

    def _title(self) -> None:
        self.query_one("#remaining-title", Static).update(
            Text(
                f"Remaining recipients: {safe(self.mailing.name)} (id {self.mailing.id}, {self.mailing.state.value}) "
                f"· {self.mailing.remaining:,} of {self.mailing.total:,} not received"
                # Skipped as suppressed (issue 13): not sent, and not waiting either.
                + (f" · {self.mailing.suppressed:,} suppressed, not sent" if self.mailing.suppressed else "")
            )
        )

    @on(RecipientList.CursorMoved)
    def _cursor_moved(self, event: RecipientList.CursorMoved) -> None:
        pages = self._pages
        if pages.count == 0:
            done = "sent, failed or suppressed" if self.mailing.suppressed else "sent or failed"
            position = "no matching recipients" if self.search else f"nobody left: every recipient was {done}"
        else:
            total = f"{pages.count:,}" if pages.complete else f"{pages.count:,}+"
            position = f"Row {event.index + 1:,} of {total}"
            if self.search:
                position += f" matching '{self.search}'"
        self.query_one("#remaining-status", Static).update(position)
        detail = ""
        if event.recipient is not None:
            detail = safe(event.recipient.last_error or "no error recorded")
            if event.recipient.next_attempt_at is not None:
                detail += f" · next try {event.recipient.next_attempt_at:%Y-%m-%d %H:%M} UTC"
        self.query_one("#remaining-error", Static).update(detail)

    async def action_reload(self) -> None:
        """Read the mailing and the list again (a sender may have moved on since it opened)."""
        self.mailing = await self.store.mailing(self.mailing.id)
        self._title()
        listing = self.query_one(RecipientList)
        self._pages = RemainingPages(
            self.store, self.mailing.id, self.search, None if self.search else self.mailing.remaining
        )
        await self._pages.load(listing.cursor // PAGE_SIZE)
        listing.show(self._pages, cursor=listing.cursor)

    # --- filter --------------------------------------------------------------------------

    def action_focus_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    @on(Input.Changed, "#filter")
    def _filter_typed(self, event: Input.Changed) -> None:
        if self._filter_timer is not None:
            self._filter_timer.stop()
        self._filter_timer = self.set_timer(FILTER_DELAY, self._apply_filter)

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self) -> None:
        self._apply_filter()
        self.query_one(RecipientList).focus()

    def _apply_filter(self) -> None:
        search = self.query_one("#filter", Input).value.strip()
        if search == self.search:
            return
        self.search = search
        self._pages = RemainingPages(self.store, self.mailing.id, search, None if search else self.mailing.remaining)
        self.query_one(RecipientList).show(self._pages)

    # --- export --------------------------------------------------------------------------

    def action_export(self) -> None:
        what = f"{self._pages.count:,} remaining recipients" if self._pages.complete else "the remaining recipients"
        if self.search:
            what += f" matching '{self.search}'"
        default = Path(f"./remaining-{self.mailing.id}.csv")
        protected = [*database_companions(self.store.path), *self.settings_files]
        self.app.push_screen(ExportDialog(default, f"Write {what} to:", protected), self._export_chosen)

    def _export_chosen(self, choice: ExportChoice | None) -> None:
        if choice is not None:
            self._export(choice, self.search)

    @work(group="export")
    async def _export(self, choice: ExportChoice, search: str) -> None:
        try:
            written = await export_remaining_csv(
                self.store, self.mailing.id, choice.path, search, overwrite=choice.overwrite, protected=self.settings_files
            )
        except UserError as exc:
            self.notify(str(exc), title="Export failed", severity="error")
            return
        except OSError as exc:
            self.notify(f"{choice.path}: {exc.strerror}", title="Export failed", severity="error")
            return
        self.notify(f"{written:,} recipients written to {choice.path.resolve()}", title="Exported")

    # --- leaving -------------------------------------------------------------------------

    def action_back(self) -> None:
        focused = self.focused
        if isinstance(focused, Input):
            # First Escape leaves the filter box (the filter stays applied); the next one goes back.
            self.query_one(RecipientList).focus()
            return
        self.dismiss()
