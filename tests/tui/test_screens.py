"""The dashboard's screens and dialogs, each mounted in a tiny host app over a real store.

Pilot tests drive them from the keyboard and check what they show and return; SVG snapshots
pin their look at 80x24 and 120x40. Everything shown is fixed: an injected clock for the
schedule dialog, a fixed operator zone, and event times written through the store.
"""

from __future__ import annotations

import asyncio
import csv
import stat
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from textual.app import App
from textual.geometry import Region
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Button, Checkbox, Input

from mailtower.core.domain import Mailing, RecipientState
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.operations import Draft, create_mailing
from mailtower.core.store import Outcome, Store, iso
from mailtower.tui.screens import ConfirmDialog, DetailsScreen, RemainingScreen, ScheduleDialog, ScheduleRequest
from mailtower.tui.screens.remaining import ExportDialog, RecipientList
from mailtower.tui.screens.schedule import ZoneList
from tests.helpers import until

NOW = datetime(2027, 1, 15, 12, 0, tzinfo=timezone.utc)
OPERATOR_TZ = "America/New_York"
FAR_FUTURE = 4102444800.0  # 2100-01-01: deferrals that never come due during a test
DOMAINS = ("example.com", "example.org", "mail.example.net")
SIZES = [(80, 24), (120, 40)]

ScreenFactory = Callable[[Store, Mailing], Screen[Any]]


# --- data ----------------------------------------------------------------------------------


def address(i: int) -> str:
    return f"user{i:05d}@{DOMAINS[i % 3]}"


def write_list(path: Path, count: int) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "name"])
        for i in range(count):
            writer.writerow([address(i), f"Reader {i}"])
    return path


async def new_mailing(tmp_path: Path, count: int, name: str = "Spring sale") -> tuple[Path, int]:
    db = tmp_path / "db.sqlite"
    store = await Store.open(db)
    try:
        draft = Draft(name, "News", "news@example.com", "Hello {{name}}", None)
        mailing_id, summary = await create_mailing(
            store, draft, write_list(tmp_path / f"{name}.csv", count), on_reject=lambda row: None
        )
        assert summary.imported == count
    finally:
        await store.close()
    return db, mailing_id


async def stopped_mailing(tmp_path: Path) -> tuple[Path, int]:
    """60 recipients: 20 sent, 8 failed, 6 deferred, 3 in doubt, the rest pending; stopped by the operator."""
    db, mailing_id = await new_mailing(tmp_path, 60)
    store = await Store.open(db)
    try:
        lifecycle = Lifecycle(store)
        await lifecycle.send_now(mailing_id)
        assert await lifecycle.start(mailing_id)
        claimed, _ = await store.record_and_claim(mailing_id, [], 37)
        replies = (
            [(RecipientState.SENT, 250, "2.0.0 ok")] * 20
            + [(RecipientState.FAILED, 550, "5.1.1 <user> no such mailbox")] * 5
            + [(RecipientState.FAILED, 553, "5.1.3 mailbox name not allowed")] * 3
            + [(RecipientState.DEFERRED, 451, "4.3.0 temporary failure, try again later")] * 4
            + [(RecipientState.DEFERRED, 421, "4.7.0 too many connections")] * 2
        )
        outcomes = [
            Outcome(c.id, state, code, text, next_attempt_at=FAR_FUTURE if state is RecipientState.DEFERRED else None)
            for c, (state, code, text) in zip(claimed, replies)
        ]
        await store.record_and_claim(mailing_id, outcomes, 0, marks=[c.id for c in claimed[len(outcomes):]])
        await store.recover_in_doubt()  # the 3 rows being sent (marked) without an outcome
        await lifecycle.stop(mailing_id)
        await fix_event_times(store, mailing_id)
    finally:
        await store.close()
    return db, mailing_id


async def fix_event_times(store: Store, mailing_id: int) -> None:
    """Events are stamped with the wall clock; snapshots need them fixed."""
    async with store.write() as tx:
        async with tx.db.execute("SELECT id FROM events WHERE mailing_id = ? ORDER BY id", (mailing_id,)) as cur:
            ids = [row[0] for row in await cur.fetchall()]
        start = datetime(2027, 1, 15, 8, 0, tzinfo=timezone.utc)
        await tx.db.executemany(
            "UPDATE events SET at = ? WHERE id = ?",
            [(iso(start + timedelta(minutes=7 * n)), event_id) for n, event_id in enumerate(ids)],
        )


# --- host app and helpers ------------------------------------------------------------------


class Host(App[None]):
    """Opens the store, pushes one screen, records what it dismisses with."""

    TITLE = "mailtower screens"

    def __init__(self, db: Path, mailing_id: int, make: ScreenFactory) -> None:
        super().__init__()
        self.db = db
        self.mailing_id = mailing_id
        self.make = make
        self.results: list[Any] = []
        self.store: Store | None = None

    async def on_mount(self) -> None:
        self.store = await Store.open(self.db)
        mailing = await self.store.mailing(self.mailing_id)
        self.push_screen(self.make(self.store, mailing), self.results.append)

    async def on_unmount(self) -> None:
        if self.store is not None:
            await self.store.close()



def text_of(widget: Widget) -> str:
    width, height = widget.size
    return "\n".join(strip.text.rstrip() for strip in widget.render_lines(Region(0, 0, width, height)))


def schedule_dialog(store: Store, mailing: Mailing) -> ScheduleDialog:
    return ScheduleDialog(mailing, OPERATOR_TZ, now=lambda: NOW)


def details_screen(store: Store, mailing: Mailing) -> DetailsScreen:
    return DetailsScreen(store, mailing, operator_tz="Europe/Berlin")


async def opened(pilot: Pilot[Any], kind: type[Screen[Any]]) -> Any:
    await until(pilot, lambda: isinstance(pilot.app.screen, kind) and pilot.app.screen.is_mounted)
    await pilot.pause()
    return pilot.app.screen


async def fill(pilot: Pilot[Any], selector: str, text: str) -> None:
    """Clear a field and type into it key by key, as an operator would."""
    field = pilot.app.screen.query_one(selector, Input)
    field.focus()
    field.value = ""
    await pilot.press(*text)


async def enter_schedule(pilot: Pilot[Any], date: str, hour: str, zone: str) -> ScheduleDialog:
    """Set date and hour (as a paste would: each assignment is one Changed event) and type the zone."""
    dialog = await opened(pilot, ScheduleDialog)
    dialog.query_one("#date", Input).value = date
    dialog.query_one("#hour", Input).value = hour
    await fill(pilot, "#zone", zone)
    await pilot.pause()
    return dialog


# --- confirm -------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "expected"), [("d", True), ("enter", False), ("escape", False)])
async def test_confirm_dialog_its_key_confirms_enter_and_escape_keep(tmp_path: Path, key: str, expected: bool) -> None:
    db, mailing_id = await new_mailing(tmp_path, 3)
    app = Host(db, mailing_id, lambda store, m: ConfirmDialog("Delete?", f"Delete {m.name}?", "Delete", destructive=True))
    async with app.run_test(size=(80, 24)) as pilot:
        dialog = await opened(pilot, ConfirmDialog)
        assert dialog.query_one("#confirm", Button).variant == "error"
        await pilot.press(key)
        await until(pilot, lambda: app.results == [expected])


# --- schedule dialog -----------------------------------------------------------------------


async def test_schedule_of_a_draft_prefills_nine_in_operator_zone_but_no_date(tmp_path: Path) -> None:
    """A draft's dialog names tomorrow but does not fill it in: Enter, Enter, Enter from the
    dashboard must not schedule a draft to go out (the standard: no reflex key starts a campaign)."""
    db, mailing_id = await new_mailing(tmp_path, 3)
    async with Host(db, mailing_id, schedule_dialog).run_test(size=(80, 24)) as pilot:
        dialog = await opened(pilot, ScheduleDialog)
        values = [dialog.query_one(f"#{name}", Input).value for name in ("date", "hour", "zone")]
        assert values == ["", "09:00", OPERATOR_TZ]
        assert "Daylight savings automatically applied" in text_of(dialog.query_one("#dst"))
        assert dialog.query_one("#submit", Button).disabled is True
        assert "tomorrow is 2027-01-16" in text_of(dialog.query_one("#problem"))
        await pilot.press("enter")
        await pilot.pause()
        assert pilot.app.screen is dialog  # nothing to submit: the dialog stays
        await pilot.press(*"2027-01-16", "enter")
        await pilot.pause()
        assert pilot.app.screen is not dialog


async def test_schedule_prefills_from_existing_schedule(tmp_path: Path) -> None:
    db, mailing_id = await new_mailing(tmp_path, 3)
    # Lifecycle checks the schedule against the real clock, so the date is relative to it.
    when = (datetime.now() + timedelta(days=400)).replace(hour=10, minute=15, second=0, microsecond=0)
    store = await Store.open(db)
    try:
        await Lifecycle(store).schedule(mailing_id, when, "Europe/Paris")
    finally:
        await store.close()
    async with Host(db, mailing_id, schedule_dialog).run_test(size=(80, 24)) as pilot:
        dialog = await opened(pilot, ScheduleDialog)
        values = [dialog.query_one(f"#{name}", Input).value for name in ("date", "hour", "zone")]
        assert values == [when.strftime("%Y-%m-%d"), "10:15", "Europe/Paris"]


async def test_typing_berlin_finds_europe_berlin_and_enter_picks_it(tmp_path: Path) -> None:
    db, mailing_id = await new_mailing(tmp_path, 3)
    async with Host(db, mailing_id, schedule_dialog).run_test(size=(80, 24)) as pilot:
        dialog = await enter_schedule(pilot, "2027-02-01", "10:00", "berlin")
        zones = dialog.query_one(ZoneList)
        assert zones.highlighted_option is not None and zones.highlighted_option.id == "Europe/Berlin"
        assert "did you mean Europe/Berlin" in text_of(dialog.query_one("#problem"))
        assert dialog.query_one("#submit", Button).disabled
        await pilot.press("enter")  # completes the name; does not submit
        assert dialog.query_one("#zone", Input).value == "Europe/Berlin"
        assert app_results(pilot) == []
        assert "2027-02-01 10:00 CET (+01:00) Europe/Berlin" in text_of(dialog.query_one("#preview"))
        assert not dialog.query_one("#submit", Button).disabled


async def test_arrow_keys_walk_the_zone_matches(tmp_path: Path) -> None:
    db, mailing_id = await new_mailing(tmp_path, 3)
    async with Host(db, mailing_id, schedule_dialog).run_test(size=(80, 24)) as pilot:
        dialog = await enter_schedule(pilot, "2027-02-01", "10:00", "america/n")
        zones = dialog.query_one(ZoneList)
        first = zones.highlighted_option.id  # type: ignore[union-attr]
        await pilot.press("down")
        second = zones.highlighted_option.id  # type: ignore[union-attr]
        assert first != second and second is not None and "America/N" in second
        await pilot.press("enter")
        assert dialog.query_one("#zone", Input).value == second


async def test_clicking_a_match_picks_it(tmp_path: Path) -> None:
    db, mailing_id = await new_mailing(tmp_path, 3)
    async with Host(db, mailing_id, schedule_dialog).run_test(size=(80, 24)) as pilot:
        dialog = await enter_schedule(pilot, "2027-02-01", "10:00", "kathm")
        await pilot.click(ZoneList, offset=(2, 0))
        await until(pilot, lambda: dialog.query_one("#zone", Input).value == "Asia/Kathmandu")
        assert not dialog.query_one("#submit", Button).disabled


async def test_preview_updates_on_every_keystroke(tmp_path: Path) -> None:
    db, mailing_id = await new_mailing(tmp_path, 3)
    async with Host(db, mailing_id, schedule_dialog).run_test(size=(80, 24)) as pilot:
        dialog = await enter_schedule(pilot, "2027-01-20", "", "Asia/Kathmandu")
        preview = dialog.query_one("#preview")
        await fill(pilot, "#hour", "0")
        assert "2027-01-20 00:00 (+05:45) Asia/Kathmandu" in text_of(preview)
        await pilot.press("9")
        assert "2027-01-20 09:00 (+05:45) Asia/Kathmandu" in text_of(preview)
        await pilot.press(":", "0", "0")
        shown = text_of(preview)
        assert "Chosen zone 2027-01-20 09:00 (+05:45) Asia/Kathmandu" in shown
        assert "UTC         2027-01-20 03:15 UTC (+00:00)" in shown
        assert "Your zone   2027-01-19 22:15 EST (-05:00) America/New_York" in shown
        assert "Starts      in 4 d 15 h" in shown


async def test_gap_time_is_warned_before_submitting_and_can_be_submitted(tmp_path: Path) -> None:
    db, mailing_id = await new_mailing(tmp_path, 3)
    app = Host(db, mailing_id, schedule_dialog)
    async with app.run_test(size=(80, 24)) as pilot:
        dialog = await enter_schedule(pilot, "2027-03-28", "02:30", "Europe/Berlin")
        problem = text_of(dialog.query_one("#problem"))
        assert "2027-03-28 02:30 does not exist in Europe/Berlin" in problem
        assert "03:30 CEST (+02:00)" in problem
        assert "2027-03-28 01:30 UTC" in text_of(dialog.query_one("#preview"))
        assert not dialog.query_one("#submit", Button).disabled
        await pilot.press("enter")
        await until(pilot, lambda: len(app.results) == 1)
    assert app.results == [ScheduleRequest(datetime(2027, 3, 28, 2, 30), "Europe/Berlin", False)]


async def test_past_time_is_refused(tmp_path: Path) -> None:
    db, mailing_id = await new_mailing(tmp_path, 3)
    app = Host(db, mailing_id, schedule_dialog)
    async with app.run_test(size=(80, 24)) as pilot:
        # 06:00 in Berlin is 05:00 UTC, seven hours before the injected clock.
        dialog = await enter_schedule(pilot, "2027-01-15", "06:00", "Europe/Berlin")
        assert "is in the past (7 h 00 min ago)" in text_of(dialog.query_one("#problem"))
        assert dialog.query_one("#submit", Button).disabled
        await pilot.press("enter")
        await pilot.click("#submit")
        await pilot.pause()
        assert app.screen is dialog and app.results == []


@pytest.mark.parametrize(
    ("date", "hour", "zone", "message"),
    [
        ("2027-02-30", "09:00", "Europe/Berlin", "no such date '2027-02-30'"),
        ("2027-02-01", "24:00", "Europe/Berlin", "no such time '24:00'"),
        ("01/02/2027", "09:00", "Europe/Berlin", "expected a date as YYYY-MM-DD"),
        ("2027-02-01", "09:00", "Europe/Berln", "did you mean Europe/Berlin"),
        ("2027-02-01", "09:00", "", "no time zone given"),
    ],
)
async def test_invalid_input_is_explained_and_cannot_be_submitted(
    tmp_path: Path, date: str, hour: str, zone: str, message: str
) -> None:
    db, mailing_id = await new_mailing(tmp_path, 3)
    app = Host(db, mailing_id, schedule_dialog)
    async with app.run_test(size=(80, 24)) as pilot:
        dialog = await enter_schedule(pilot, date, hour, zone)
        assert message in text_of(dialog.query_one("#problem"))
        assert dialog.query_one("#submit", Button).disabled
        dialog.query_one("#hour", Input).focus()
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is dialog and app.results == []


async def test_escape_cancels_with_none(tmp_path: Path) -> None:
    db, mailing_id = await new_mailing(tmp_path, 3)
    app = Host(db, mailing_id, schedule_dialog)
    async with app.run_test(size=(80, 24)) as pilot:
        await enter_schedule(pilot, "2027-02-01", "10:00", "berl")  # Escape works from inside a field
        await pilot.press("escape")
        await until(pilot, lambda: app.results == [None])


async def test_valid_submit_with_local_time_delivery(tmp_path: Path) -> None:
    db, mailing_id = await new_mailing(tmp_path, 3)
    app = Host(db, mailing_id, schedule_dialog)
    async with app.run_test(size=(80, 24)) as pilot:
        dialog = await enter_schedule(pilot, "2027-02-01", "10:00", "Europe/Lisbon")
        dialog.query_one("#local-time", Checkbox).focus()
        await pilot.press("space")
        assert "each at 10:00 in their own zone" in text_of(dialog.query_one("#preview"))
        await pilot.click("#submit")
        await until(pilot, lambda: len(app.results) == 1)
    assert app.results == [ScheduleRequest(datetime(2027, 2, 1, 10, 0), "Europe/Lisbon", True)]


# --- remaining recipients ------------------------------------------------------------------


def app_results(pilot: Pilot[Any]) -> list[Any]:
    return pilot.app.results  # type: ignore[attr-defined,no-any-return]


def shows(listing: RecipientList, text: str) -> bool:
    return any(text in line for line in listing.visible_lines())


async def test_remaining_pages_to_the_end_of_a_long_list(tmp_path: Path) -> None:
    db, mailing_id = await new_mailing(tmp_path, 5000)
    async with Host(db, mailing_id, RemainingScreen).run_test(size=(80, 24)) as pilot:
        screen = await opened(pilot, RemainingScreen)
        listing = screen.query_one(RecipientList)
        assert listing.row_count == 5000
        assert shows(listing, address(0))
        await pilot.press("end")
        await until(pilot, lambda: shows(listing, address(4999)))
        assert listing.cursor == 4999
        assert "Row 5,000 of 5,000" in text_of(screen.query_one("#remaining-status"))
        await pilot.press("pageup", "up")
        await until(pilot, lambda: shows(listing, address(listing.cursor)))
        assert listing.cursor < 4999 - 10
        await pilot.press("home")
        await until(pilot, lambda: shows(listing, address(0)))
        await pilot.press("pagedown", "down", "down")
        page = listing.scrollable_content_region.height - 1
        await until(pilot, lambda: shows(listing, address(page + 2)))
        assert listing.cursor == page + 2
        # Never more than the small page cache in memory.
        assert len(listing.pages._pages) <= 24


async def test_remaining_shows_state_and_last_error_and_goes_back(tmp_path: Path) -> None:
    db, mailing_id = await stopped_mailing(tmp_path)
    app = Host(db, mailing_id, RemainingScreen)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await opened(pilot, RemainingScreen)
        listing = screen.query_one(RecipientList)
        lines = listing.visible_lines()
        assert len([line for line in lines if line.strip()]) == 32
        assert any(address(28) in line and "deferred" in line and "451" in line for line in lines)
        assert any(address(34) in line and "in doubt" in line for line in lines)
        assert not any(address(0) in line for line in lines)  # sent
        assert not any(address(20) in line for line in lines)  # failed
        assert "4.3.0 temporary failure, try again later" in text_of(screen.query_one("#remaining-error"))
        await pilot.press("escape")
        await until(pilot, lambda: app.results == [None])


async def test_remaining_reload_follows_the_ledger(tmp_path: Path) -> None:
    db, mailing_id = await new_mailing(tmp_path, 10)
    async with Host(db, mailing_id, RemainingScreen).run_test(size=(80, 24)) as pilot:
        screen = await opened(pilot, RemainingScreen)
        listing = screen.query_one(RecipientList)
        assert listing.row_count == 10
        other = await Store.open(db)  # another process's sender, as far as the screen can tell
        try:
            lifecycle = Lifecycle(other)
            await lifecycle.send_now(mailing_id)
            assert await lifecycle.start(mailing_id)
            claimed, _ = await other.record_and_claim(mailing_id, [], 3)
            await other.record_and_claim(mailing_id, [Outcome(c.id, RecipientState.SENT, 250, "ok") for c in claimed], 0)
        finally:
            await other.close()
        await pilot.press("r")
        await until(pilot, lambda: listing.row_count == 7 and shows(listing, address(3)) and not shows(listing, address(0)))
        assert "7 of 10 not received" in text_of(screen.query_one("#remaining-title"))


async def test_remaining_filter(tmp_path: Path) -> None:
    db, mailing_id = await new_mailing(tmp_path, 5000)
    async with Host(db, mailing_id, RemainingScreen).run_test(size=(80, 24)) as pilot:
        screen = await opened(pilot, RemainingScreen)
        listing = screen.query_one(RecipientList)
        await pilot.press("slash")
        assert screen.focused is screen.query_one("#filter", Input)
        await pilot.press(*"example.org", "enter")
        await until(pilot, lambda: shows(listing, address(1)) and not shows(listing, address(0)))
        assert all("example.org" in line for line in listing.visible_lines() if line.strip())
        assert screen.focused is listing
        await pilot.press("end")  # the matches are counted with one query
        await until(pilot, lambda: shows(listing, address(4999)))
        assert listing.pages.complete and listing.pages.count == 1667
        assert 4 not in listing.pages._starts  # the pages in between were never read
        assert "Row 1,667 of 1,667 matching 'example.org'" in text_of(screen.query_one("#remaining-status"))
        await pilot.press("slash", "ctrl+u", *"zzz", "enter")
        await until(pilot, lambda: listing.pages.complete and listing.pages.count == 0)
        assert "no matching recipients" in text_of(screen.query_one("#remaining-status"))


async def test_remaining_export_writes_csv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, mailing_id = await stopped_mailing(tmp_path)
    monkeypatch.chdir(tmp_path)
    app = Host(db, mailing_id, RemainingScreen)
    async with app.run_test(size=(80, 24)) as pilot:
        await opened(pilot, RemainingScreen)
        await pilot.press("e")
        dialog = await opened(pilot, ExportDialog)
        assert dialog.query_one("#export-path", Input).value == f"remaining-{mailing_id}.csv"
        await pilot.press("enter")
        target = tmp_path / f"remaining-{mailing_id}.csv"
        await until(pilot, lambda: any("32 recipients written" in str(n.message) for n in app._notifications))
        assert isinstance(app.screen, RemainingScreen)
        # A second export to the same name is refused in the dialog until Replace is ticked.
        await pilot.press("e")
        dialog = await opened(pilot, ExportDialog)
        assert "exists" in text_of(dialog.query_one("#export-note"))
        assert dialog.query_one("#export-ok", Button).disabled
        await pilot.press("escape")
    with target.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["email", "name", "state", "attempts", "last_code", "last_error"]
    assert len(rows) == 33 and rows[1][0] == address(28)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


# --- details -------------------------------------------------------------------------------


async def test_details_shows_counts_grouped_codes_domains_and_timeline(tmp_path: Path) -> None:
    db, mailing_id = await stopped_mailing(tmp_path)
    app = Host(db, mailing_id, details_screen)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await opened(pilot, DetailsScreen)
        outcomes = text_of(screen.query_one("#outcomes"))
        assert "Sent  Failed  Deferred  In doubt  Pending  Sending  Total" in outcomes
        assert "20       8         6         3       26        0     60" in outcomes
        failed = text_of(screen.query_one("#failed-codes"))
        assert "550  5  mailbox unavailable" in failed and "553  3  mailbox name not allowed" in failed
        deferred = text_of(screen.query_one("#deferred-codes"))
        assert "451  4" in deferred and "421  2" in deferred
        assert "example.org" in text_of(screen.query_one("#failed-domains"))
        timeline = text_of(screen.query_one("#timeline"))
        for kind in ("created", "queued", "started", "in doubt", "stopped"):
            assert kind in timeline
        assert "2027-01-15 09:00 CET created  60 recipients" in timeline
        assert "by the operator" in timeline
        await pilot.press("escape")
        await until(pilot, lambda: app.results == [None])


# --- snapshots -----------------------------------------------------------------------------


def build(coroutine: Awaitable[tuple[Path, int]]) -> tuple[Path, int]:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def settled(kind: type[Screen[Any]], then: Callable[[Pilot[Any]], Awaitable[None]] | None = None) -> Callable[[Pilot[Any]], Awaitable[None]]:
    async def run_before(pilot: Pilot[Any]) -> None:
        await opened(pilot, kind)
        if then is not None:
            await then(pilot)
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()

    return run_before


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "120x40"])
def test_snapshot_schedule_valid(tmp_path: Path, snap_compare: Any, size: tuple[int, int]) -> None:
    db, mailing_id = build(new_mailing(tmp_path, 3))

    async def type_valid(pilot: Pilot[Any]) -> None:
        await enter_schedule(pilot, "2027-03-28", "02:30", "berlin")
        await pilot.press("enter")

    app = Host(db, mailing_id, schedule_dialog)
    assert snap_compare(app, terminal_size=size, run_before=settled(ScheduleDialog, type_valid))


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "120x40"])
def test_snapshot_schedule_invalid(tmp_path: Path, snap_compare: Any, size: tuple[int, int]) -> None:
    db, mailing_id = build(new_mailing(tmp_path, 3))

    async def type_past(pilot: Pilot[Any]) -> None:
        await enter_schedule(pilot, "2027-01-15", "06:00", "Europe/Berlin")

    app = Host(db, mailing_id, schedule_dialog)
    assert snap_compare(app, terminal_size=size, run_before=settled(ScheduleDialog, type_past))


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "120x40"])
def test_snapshot_remaining(tmp_path: Path, snap_compare: Any, size: tuple[int, int]) -> None:
    db, mailing_id = build(stopped_mailing(tmp_path))
    app = Host(db, mailing_id, RemainingScreen)
    assert snap_compare(app, terminal_size=size, run_before=settled(RemainingScreen))


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "120x40"])
def test_snapshot_details(tmp_path: Path, snap_compare: Any, size: tuple[int, int]) -> None:
    db, mailing_id = build(stopped_mailing(tmp_path))
    app = Host(db, mailing_id, details_screen)
    assert snap_compare(app, terminal_size=size, run_before=settled(DetailsScreen))
