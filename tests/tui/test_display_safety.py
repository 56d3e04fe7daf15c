"""Nothing a person or a server wrote reaches the operator's terminal as something it would act on
(issue 10, item 15): names, replies, file names and lease holders in the dashboard, the details
and remaining-recipient screens are shown with control characters and direction overrides escaped,
and never parsed as markup.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import App
from textual.geometry import Region
from textual.widget import Widget

from mailtower.core.domain import Mailing, Section
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.operations import Draft, create_mailing
from mailtower.core.relays import RelayStatus
from mailtower.core.store import Store
from mailtower.tui.app import DashboardApp
from mailtower.tui.header import HeaderInfo, Mode, header_text, notice_text
from mailtower.tui.screens import DetailsScreen, RemainingScreen
from mailtower.tui.screens.remaining import RecipientList
from tests.helpers import until

from .conftest import OPERATOR_TZ, Clock, settings_for, wait_for, write_recipients

TERMINAL_ACTIVE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
HOSTILE = "\x1b]0;pwned\x07Evil\x1b[2J\x9b31m\r\nforged\u202etxt"
SHOWN = "\\x1b]0;pwned\\x07Evil\\x1b[2J\\x9b31m\\r\\nforged\\u202etxt"  # what the operator sees instead
MARKUP = "[bold red]not markup[/bold red]"


def clean(text: str) -> bool:
    """No line holds a terminal-active character (the breaks between rendered lines are ours)."""
    return all(TERMINAL_ACTIVE.search(line) is None for line in text.split("\n"))


async def hostile_mailing(tmp_path: Path, *, stopped: bool = False) -> tuple[Path, int]:
    """A mailing as an older version, another writer or a relay could have left it in the store."""
    db = tmp_path / "db.sqlite"
    store = await Store.open(db)
    try:
        draft = Draft("placeholder", "News", "news@example.com", "Hello {{ name }}", None)
        mailing_id, _ = await create_mailing(store, draft, write_recipients(tmp_path / "r.csv", 3), lambda row: None)
        if stopped:
            lifecycle = Lifecycle(store)
            await lifecycle.send_now(mailing_id)
            await lifecycle.stop(mailing_id)
        async with store.write() as tx:
            await tx.add_event(mailing_id, "imported", f"3 recipients from {HOSTILE} {MARKUP}.csv")
    finally:
        await store.close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE mailings SET name = ?, last_error = ? WHERE id = ?", (HOSTILE + MARKUP, "421 " + HOSTILE, mailing_id))
        conn.execute(
            "UPDATE recipients SET state = 'deferred', attempts = 1, last_code = 451, last_error = ?, "
            "next_attempt_at = 4102444800 WHERE mailing_id = ?",
            ("451 " + HOSTILE, mailing_id),
        )
        conn.execute("UPDATE mailings SET deferred = 3 WHERE id = ?", (mailing_id,))
    return db, mailing_id


def text_of(widget: Widget) -> str:
    width, height = widget.size
    return "\n".join(strip.text for strip in widget.render_lines(Region(0, 0, width, height)))


class Host(App[None]):
    """Opens the store and pushes one screen for a mailing."""

    def __init__(self, db: Path, mailing_id: int, screen: type[Any]) -> None:
        super().__init__()
        self.db, self.mailing_id, self.screen_type = db, mailing_id, screen
        self.store: Store | None = None

    async def on_mount(self) -> None:
        self.store = await Store.open(self.db)
        mailing: Mailing = await self.store.mailing(self.mailing_id)
        if self.screen_type is DetailsScreen:
            self.push_screen(DetailsScreen(self.store, mailing, operator_tz=OPERATOR_TZ))
        else:
            self.push_screen(self.screen_type(self.store, mailing))

    async def on_unmount(self) -> None:
        if self.store is not None:
            await self.store.close()


async def test_dashboard_rows_show_hostile_names_escaped(tmp_path: Path) -> None:
    db, mailing_id = await hostile_mailing(tmp_path)
    app = DashboardApp(settings_for(db), now=Clock(), operator_tz=OPERATOR_TZ, start_sender=False)
    async with app.run_test(size=(120, 30)) as pilot:
        table = app.dashboard.table(Section.INACTIVE)
        await wait_for(lambda: str(mailing_id) in table.keys, what="the mailing in Inactive")
        await pilot.pause()
        cell = table.get_cell(str(mailing_id), "name")
        assert isinstance(cell, Text) and clean(cell.plain)
        assert cell.plain.strip().startswith("\\x1b]0;pwned\\x07Evil")
        assert MARKUP in cell.plain  # shown as typed, never parsed as markup
        assert clean(text_of(table))


def test_header_and_notice_lines_escape_server_and_lease_text() -> None:
    waiting = header_text(HeaderInfo(Mode.WAITING, reason="421 " + HOSTILE), width=300)
    assert clean(waiting.plain) and SHOWN in waiting.plain
    monitoring = header_text(HeaderInfo(Mode.MONITORING, holder=(HOSTILE,), remote_state="sending"), width=300)
    assert clean(monitoring.plain) and SHOWN in monitoring.plain
    relays = (
        RelayStatus(name="mx\x1b[2J", state="resting", reason="454 " + HOSTILE, rate=0.0, connections=1),
        RelayStatus(name="mx-b", state="up", reason="", rate=5.0, connections=1),
    )
    notice = notice_text([f"mail to {HOSTILE} goes unencrypted"], relays)
    assert clean(notice.plain) and SHOWN in notice.plain and "mx\\x1b[2J" in notice.plain


async def test_details_screen_escapes_name_error_and_timeline(tmp_path: Path) -> None:
    db, mailing_id = await hostile_mailing(tmp_path, stopped=True)
    app = Host(db, mailing_id, DetailsScreen)
    async with app.run_test(size=(160, 50)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, DetailsScreen) and app.screen.is_mounted)
        await pilot.pause()
        screen = app.screen
        title = text_of(screen.query_one("#details-title"))
        error = text_of(screen.query_one("#last-error"))
        timeline = text_of(screen.query_one("#timeline"))
        assert clean(title) and "\\x1b]0;pwned" in title
        assert clean(error) and "\\x9b31m" in error
        lines = timeline.split("\n")
        assert all(clean(line) for line in lines)
        assert any("\\x1b]0;pwned" in line and MARKUP in line for line in lines), timeline
        assert not any(line.lstrip().startswith("forged") for line in lines)


async def test_remaining_screen_rows_escape_replies(tmp_path: Path) -> None:
    db, mailing_id = await hostile_mailing(tmp_path, stopped=True)
    app = Host(db, mailing_id, RemainingScreen)
    async with app.run_test(size=(160, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, RemainingScreen) and app.screen.is_mounted)
        listing = app.screen.query_one(RecipientList)
        await until(pilot, lambda: any("user0@example.com" in line for line in listing.visible_lines()))
        rows = [line for line in listing.visible_lines() if "@example.com" in line]
        assert len(rows) == 3 and all(clean(line) and "451 \\x1b]0;pwned" in line for line in rows)
        assert clean(text_of(app.screen.query_one("#remaining-title")))
        assert clean(text_of(app.screen.query_one("#remaining-error")))


async def test_text_pasted_into_a_field_loses_what_a_terminal_acts_on(tmp_path: Path) -> None:
    """The filter, the export path and the schedule's fields drew a pasted ESC or U+202E raw
    (Textual draws an Input's value as it is): they never hold one now."""
    from textual import events
    from textual.widgets import Input

    from mailtower.tui.fields import TextField

    db, mailing_id = await hostile_mailing(tmp_path, stopped=True)
    app = Host(db, mailing_id, RemainingScreen)
    async with app.run_test(size=(160, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, RemainingScreen) and app.screen.is_mounted)
        field = app.screen.query_one("#filter", Input)
        assert isinstance(field, TextField)
        field.focus()
        await pilot.pause()
        field.post_message(events.Paste("a\x1b]0;T\x07b\u202ec\u200bd"))
        await until(pilot, lambda: field.value != "")
        await pilot.press("e", "x")
        assert field.value == "a]0;Tbcdex"
        assert clean(text_of(field))
