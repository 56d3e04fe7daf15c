"""Hostile edges of local-time waves in the dashboard (issue 14, review): a schedule's name made of
markup and terminal escapes in the grouped row, the dialog and the questions; a group of hundreds
of waves in the Scheduled panel at 80x24; the passed-zones question when every zone has passed.

Real databases, the whole dashboard through Pilot, the frozen clock of tests/tui/conftest.py."""

from __future__ import annotations

import html
import re
import sqlite3
import time
from datetime import datetime, timedelta
from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import Button, Checkbox, Input

from mailtower.core.domain import Section
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.scheduling import schedule_mailing
from mailtower.core.store import Store, iso
from mailtower.core.waves import Passed
from mailtower.tui.screens.confirm import ConfirmDialog
from mailtower.tui.screens.schedule import PassedChoice, ScheduleDialog

from .conftest import FIXED_NOW, wait_for
from .pilot import dashboard_app, focus_row, running, table
from .test_app import choose
from .test_waves_dialog import add_mailing, opened

HOSTILE = "[bold]Sale[/] [link=http://x]\x1b]0;owned\x07\x1b[2J\u202e[/]"
AUTUMN = {"Europe/Berlin": 2, "Asia/Tokyo": 2, "America/Chicago": 1}


async def build(db: Path, name: str, waves: int = 0) -> list[int]:
    """A local-time schedule of `name` (three waves), then `waves` more waves of it by hand."""
    store = await Store.open(db)
    try:
        mailing_id = await add_mailing(store, db.parent, "Autumn", AUTUMN)
        result = await schedule_mailing(store, Lifecycle(store), mailing_id, datetime(2099, 6, 1, 9, 0), "UTC", True, now=FIXED_NOW)
        ids = list(result.mailing_ids)
        # A name from an older version or a hand-edited database: the dashboard must show it as text.
        await store.db.execute("UPDATE mailings SET wave_parent = ?, name = ? || ' [wave]'", (name, name))
        first = ids[0]
        for i in range(waves):
            at = FIXED_NOW + timedelta(days=2, minutes=15 * i)
            cur = await store.db.execute(
                "INSERT INTO mailings (name, subject, from_addr, text_body, fields, state, send_at_local, tz, "
                "send_at_utc, tzdata_version, total, created_at, updated_at, wave_group, wave_parent, wave_zones) "
                "SELECT name, subject, from_addr, text_body, fields, state, ?, 'UTC', ?, tzdata_version, 0, "
                "created_at, updated_at, wave_group, wave_parent, '[]' FROM mailings WHERE id = ?",
                (at.strftime("%Y-%m-%dT%H:%M"), iso(at), first),
            )
            ids.append(int(cur.lastrowid or 0))
        await store.db.commit()
        return ids
    finally:
        await store.close()


def screen_text(app) -> str:
    """What the screen shows, as text: the SVG screenshot without its markup."""
    svg = app.export_screenshot()
    body = svg[svg.index("<g class=\"terminal"):] if "<g class=\"terminal" in svg else svg
    return html.unescape(re.sub(r"<[^>]*>", "", body)).replace("\xa0", " ")


async def test_a_hostile_schedule_name_is_shown_as_text_in_the_row_the_dialog_and_the_question(tmp_path: Path) -> None:
    db = tmp_path / "hostile.db"
    ids = await build(db, HOSTILE)
    app = dashboard_app(db)
    async with running(app, size=(120, 40)) as pilot:
        scheduled = table(app, Section.SCHEDULED)
        await wait_for(lambda: scheduled.keys == [str(ids[0])], what="one row for the group")
        await wait_for(lambda: "[bold]Sale[/]" in screen_text(app), what="the row drawn")
        shot = screen_text(app)
        assert "[bold]Sale[/] [link=http://x]\\x1b]0;o" in shot and "\x1b]0" not in shot
        await focus_row(pilot, Section.SCHEDULED, ids[0])
        await choose(pilot, "schedule")
        await opened(pilot, ScheduleDialog)
        shown = screen_text(app)
        assert "Set schedule: [bold]Sale[/] [link=http://x]\\x1b]0;o" in shown
        assert "\x1b" not in shown and "\u202e" not in shown
        await pilot.press("escape")
        await wait_for(lambda: app.screen is app.dashboard, what="the dialog to close")
        await choose(pilot, "unschedule")
        question = await opened(pilot, ConfirmDialog)
        message = str(question.query_one("#confirm-message").render())
        assert "[bold]Sale[/]" in message and "\x1b" not in message and "\u202e" not in message
        assert "\x1b]0" not in screen_text(app)
        await pilot.press("escape")


async def test_a_group_of_hundreds_of_waves_is_one_row_at_80x24_drawn_quickly(tmp_path: Path) -> None:
    db = tmp_path / "many.db"
    ids = await build(db, "Planet", waves=320)
    app = dashboard_app(db)
    started = time.perf_counter()
    async with running(app, size=(80, 24)) as pilot:
        scheduled = table(app, Section.SCHEDULED)
        await wait_for(lambda: scheduled.keys == [str(ids[0])], what="one row for 323 waves")
        await wait_for(lambda: "323 waves" in screen_text(app), what="the row drawn")
        drawn = time.perf_counter() - started
        shot = screen_text(app)
        assert "323 waves" in shot
        assert drawn < 5.0, f"first render took {drawn:.1f} s"
        await pilot.press("tab")
        assert "Scheduled (1)" in str(scheduled.border_title)
    print(f"323 waves: first render {drawn:.2f} s")


async def spring_in(db: Path, zones: dict[str, int]) -> int:
    store = await Store.open(db)
    try:
        return await add_mailing(store, db.parent, "Spring", zones)
    finally:
        await store.close()


async def local_time_dialog(pilot: Pilot[int], mailing_id: int, date: str, hour: str = "09:00") -> ScheduleDialog:
    """Set Schedule on the draft, "each recipient's time zone" ticked, at `date` `hour`, Asia/Tokyo."""
    await focus_row(pilot, Section.INACTIVE, mailing_id)
    await choose(pilot, "schedule")
    dialog = await opened(pilot, ScheduleDialog)
    dialog.query_one("#local-time", Checkbox).value = True
    dialog.query_one("#date", Input).value = date
    dialog.query_one("#hour", Input).value = hour
    dialog.query_one("#zone", Input).value = "Asia/Tokyo"
    await pilot.pause()
    return dialog


async def test_every_zone_passed_offers_no_skip_in_the_question(tmp_path: Path) -> None:
    db = tmp_path / "passed.db"
    spring = await spring_in(db, {"Asia/Tokyo": 2, "Europe/Berlin": 1})
    app = dashboard_app(db)
    async with running(app, size=(120, 40)) as pilot:
        # 09:00 on 2099-05-31 was 08:00 UTC in Berlin, two hours ago; in Tokyo too.
        await local_time_dialog(pilot, spring, "2099-05-31")
        await pilot.press("ctrl+s")
        question = await opened(pilot, PassedChoice)
        ids = [button.id for button in question.query(Button)]
        assert ids == ["back", "passed-now", "passed-next-day"]
        await pilot.press("s")  # skip's key does nothing here
        await pilot.pause()
        assert app.screen is question
        await pilot.press("d")
        await wait_for(lambda: app.screen is app.dashboard, what="the dialog to close")
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT state, total FROM mailings WHERE wave_parent = 'Spring'").fetchall()
    assert sorted(rows) == [("scheduled", 1), ("scheduled", 2)]


async def skipped_draft(db: Path) -> int:
    """Spring scheduled at 09:00 on 2099-05-31 in each zone, passed zones kept in a draft: its id."""
    spring = await spring_in(db, {"Asia/Tokyo": 2, "America/Chicago": 1})
    store = await Store.open(db)
    try:  # 09:00 on 2099-05-31 has passed in Tokyo, not yet in Chicago
        done = await schedule_mailing(
            store, Lifecycle(store), spring, datetime(2099, 5, 31, 9, 0), "UTC", True, Passed.SKIP, now=FIXED_NOW
        )
    finally:
        await store.close()
    assert done.skipped_id is not None
    return done.skipped_id


async def test_the_draft_of_skipped_zones_opens_set_schedule_as_one_mailing_without_a_date(tmp_path: Path) -> None:
    """The draft a local-time schedule kept back has no schedule of its own: Set Schedule filled
    in its group's date, so Enter on the row, Enter on Set Schedule, Enter submitted it (and, with
    Tab, Enter on the question, sent it at once). It shows the group's hour and zone, no date,
    and is titled as one mailing."""
    db = tmp_path / "skipped.db"
    skipped = await skipped_draft(db)
    app = dashboard_app(db)
    async with running(app, size=(120, 40)) as pilot:
        await focus_row(pilot, Section.INACTIVE, skipped)
        await choose(pilot, "schedule")
        dialog = await opened(pilot, ScheduleDialog)
        title = str(dialog.query_one("#schedule-box").border_title)
        assert title == f"Set schedule: Spring \\[skipped, time passed: 1 zone] (id {skipped})"  # was "(all 1 waves)"
        assert dialog.query_one("#date", Input).value == ""
        assert dialog.query_one("#hour", Input).value == "09:00"
        assert dialog.query_one("#submit", Button).disabled
        await pilot.press("enter", "enter")
        await pilot.pause()
    with sqlite3.connect(db) as conn:
        (state,) = conn.execute("SELECT state FROM mailings WHERE id = ?", (skipped,)).fetchone()
    assert state == "draft"


async def test_past_everywhere_is_said_in_the_dialog_and_schedule_is_withheld(tmp_path: Path) -> None:
    db = tmp_path / "past.db"
    spring = await spring_in(db, {"Asia/Tokyo": 2})
    app = dashboard_app(db)
    async with running(app, size=(120, 40)) as pilot:
        dialog = await local_time_dialog(pilot, spring, "2099-05-29")
        assert "in the past in every time zone" in str(dialog.query_one("#problem").render())
        assert dialog.query_one("#submit", Button).disabled


