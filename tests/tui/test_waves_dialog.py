"""Local-time waves in the dashboard (issue 14): the Set Schedule dialog previews the waves and
asks what happens where the time has passed; the Scheduled panel shows the waves of one schedule
as one row whose Actions act on all of them.

Real databases, the whole dashboard driven through Pilot, a frozen clock (FIXED_NOW, 2099) and the
operator in Europe/Berlin; SVG snapshots at 80x24 and 120x40."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, Checkbox, Input, OptionList
from textual.widgets.input import Selection

from mailtower.core.domain import MailingState, Section
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.operations import Draft, create_mailing
from mailtower.core.scheduling import schedule_mailing
from mailtower.core.store import Store
from mailtower.tui.actions import ActionsMenu
from mailtower.tui.app import DashboardApp
from mailtower.tui.screens import confirm as confirm_screen
from mailtower.tui.screens.schedule import PassedChoice, ScheduleDialog
from tests.helpers import write_csv

from .conftest import FIXED_NOW, OPERATOR_TZ, Clock, Fixture, settings_for, wait_for
from .pilot import dashboard_app, focus_row, running, table
from .test_app import choose, confirm

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]
# 12 recipients: at 09:00 on 2099-06-01, four instants (Berlin, Paris, Rome and the zone-less
# ones, who take the dialog's Europe/Berlin, share one).
SPRING = {"Europe/Berlin": 3, "Europe/Paris": 2, "Europe/Rome": 1, "America/New_York": 2,
          "Asia/Kolkata": 1, "Pacific/Kiritimati": 1, "": 2}
AUTUMN = {"Europe/Berlin": 2, "Europe/Madrid": 1, "Asia/Tokyo": 2, "America/Chicago": 1}


async def add_mailing(store: Store, folder: Path, name: str, zones: dict[str, int]) -> int:
    rows, i = [], 0
    for zone, n in zones.items():
        for _ in range(n):
            rows.append({"email": f"{name.split()[0].lower()}{i}@example.com", "name": f"Reader {i}", "tz": zone})
            i += 1
    path = write_csv(folder / f"{name.split()[0].lower()}.csv", rows)
    draft = Draft(name, f"{name} subject", "news@example.com", "Hello {{ name }}", None)
    mailing_id, _ = await create_mailing(store, draft, path, lambda row: None)
    return mailing_id


async def build(db: Path, *, sending: bool = False) -> Fixture:
    store = await Store.open(db)
    lifecycle = Lifecycle(store)
    fx = Fixture(db)
    try:
        fx.ids["spring"] = await add_mailing(store, db.parent, "Spring sale", SPRING)
        autumn = await add_mailing(store, db.parent, "Autumn waves", AUTUMN)
        result = await schedule_mailing(store, lifecycle, autumn, datetime(2099, 6, 1, 9, 0), "UTC", True, now=FIXED_NOW)
        fx.ids.update({f"wave{i}": m for i, m in enumerate(result.mailing_ids)})
        meetup = await add_mailing(store, db.parent, "Berlin meetup", {"Europe/Berlin": 4})
        await lifecycle.schedule(meetup, datetime(2099, 6, 7, 18, 0), "Europe/Berlin")
        fx.ids["meetup"] = meetup
        if sending:
            busy = await add_mailing(store, db.parent, "Newsletter now", {"UTC": 3})
            await lifecycle.send_now(busy)
            await lifecycle.start(busy)
        # Fixed times for the pictures.
        await store.db.execute("UPDATE mailings SET created_at = '2099-05-30T08:00:00Z', updated_at = '2099-05-30T08:00:00Z'")
    finally:
        await store.close()
    return fx


@pytest.fixture
def waves_db(tmp_path: Path) -> Fixture:
    return asyncio.run(build(tmp_path / "waves.db"))


async def opened(pilot: Pilot[int], kind: type) -> Any:
    """The screen on top once it is a mounted `kind`."""
    await wait_for(lambda: isinstance(pilot.app.screen, kind) and pilot.app.screen.is_mounted, what=kind.__name__)
    await pilot.pause()
    return pilot.app.screen


async def open_dialog_on_spring(pilot: Pilot[int], fx: Fixture) -> ScheduleDialog:
    app = pilot.app
    await focus_row(pilot, Section.INACTIVE, fx.ids["spring"])
    await choose(pilot, "schedule")
    await wait_for(lambda: isinstance(app.screen, ScheduleDialog) and app.screen.is_mounted, what="the dialog")
    dialog = app.screen
    assert isinstance(dialog, ScheduleDialog)
    for field in dialog.query(Input):
        field.cursor_blink = False  # a blinking cursor makes the snapshots depend on timing
    # A draft's dialog has no date until one is typed: the frozen clock's tomorrow.
    date = dialog.query_one("#date", Input)
    date.value = "2099-06-01"
    date.selection = Selection(0, len(date.value))  # as a filled-in field opens: selected
    dialog.query_one("#local-time", Checkbox).value = True
    await pilot.pause()
    return dialog


def preview_text(dialog: ScheduleDialog) -> str:
    return str(dialog.query_one("#preview").render())


async def scheduled_of(db: Path) -> list:
    store = await Store.open(db)
    try:
        return await store.mailings(Section.SCHEDULED)
    finally:
        await store.close()


# --- the dialog ------------------------------------------------------------------------------


async def test_dialog_previews_the_waves_in_the_operators_zone_and_schedules_them(waves_db: Fixture) -> None:
    app = dashboard_app(waves_db.db)
    async with running(app, size=(120, 40)) as pilot:
        dialog = await open_dialog_on_spring(pilot, waves_db)
        text = preview_text(dialog)
        assert "Waves       4 · 12 recipients in 6 zones" in text
        lines = text.splitlines()
        # Each wave: when it goes out in the operator's zone, its zones, its recipients.
        assert any(line.split() == ["2099-05-31", "21:00", "CEST", "Pacific/Kiritimati", "1"] for line in lines)
        assert any(line.split() == ["2099-06-01", "05:30", "CEST", "Asia/Kolkata", "1"] for line in lines)
        assert any(line.split() == ["2099-06-01", "09:00", "CEST", "Europe/Berlin", "and", "2", "more", "8"] for line in lines)
        assert "recipients without one use Europe/Berlin" in text
        await pilot.press("ctrl+s")
        await wait_for(lambda: app.screen is app.dashboard, what="the dialog to close")
    waves = [m for m in await scheduled_of(waves_db.db) if m.wave_parent == "Spring sale"]
    assert sorted(m.name for m in waves) == [
        "Spring sale [UTC+02:00, 3 zones]", "Spring sale [UTC+05:30, 1 zone]",
        "Spring sale [UTC+14:00, 1 zone]", "Spring sale [UTC-04:00, 1 zone]",
    ]
    assert sum(m.total for m in waves) == 12 and len({m.wave_group for m in waves}) == 1


async def test_passed_zones_are_asked_about_with_go_back_focused(waves_db: Fixture) -> None:
    app = dashboard_app(waves_db.db)
    async with running(app, size=(120, 40)) as pilot:
        dialog = await open_dialog_on_spring(pilot, waves_db)
        dialog.query_one("#date", Input).value = "2099-05-31"
        dialog.query_one("#hour", Input).value = "21:00"  # 07:00 UTC in Kiritimati: three hours ago
        await pilot.pause()
        assert "Passed      Pacific/Kiritimati (1 recipient): asked on Schedule" in preview_text(dialog)
        assert not dialog.query_one("#submit", Button).disabled
        await pilot.press("ctrl+s")
        question = await opened(pilot, PassedChoice)
        assert "has already passed in 1 zone (Pacific/Kiritimati) for 1 recipient" in str(
            question.query_one("#passed-question").render()
        )
        # Enter on the first focus goes back: nothing is decided for the operator.
        assert question.focused is question.query_one("#back", Button)
        await pilot.press("enter")
        await wait_for(lambda: app.screen is dialog, what="back in the dialog")
        assert [m.wave_parent for m in await scheduled_of(waves_db.db)].count("Spring sale") == 0
        # Tab then Enter goes back too: the choices never take the focus ("now" may be next).
        await pilot.press("ctrl+s")
        question = await opened(pilot, PassedChoice)
        await pilot.press("tab", "tab", "enter")
        await wait_for(lambda: app.screen is dialog, what="back in the dialog after Tab, Enter")
        assert [m.wave_parent for m in await scheduled_of(waves_db.db)].count("Spring sale") == 0
        # Its own key decides: next day.
        await pilot.press("ctrl+s")
        await opened(pilot, PassedChoice)
        await pilot.press("d")
        await wait_for(lambda: app.screen is app.dashboard, what="the dialog to close")
    waves = {m.name: m for m in await scheduled_of(waves_db.db) if m.wave_parent == "Spring sale"}
    kiritimati = waves["Spring sale [UTC+14:00, 1 zone, next day]"]  # 21:00 the next day there
    assert kiritimati.schedule is not None
    assert (kiritimati.schedule.local, kiritimati.schedule.tz) == (datetime(2099, 6, 1, 21, 0), "Pacific/Kiritimati")
    assert sum(m.total for m in waves.values()) == 12


@pytest.mark.armed
async def test_a_choice_typed_ahead_into_the_passed_zones_question_decides_nothing(
    waves_db: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`n` sends where the hour has passed at once: pressed with Ctrl+S in one burst (typed ahead
    of the question), it decided before the question was read. Only once the question has been
    shown a moment with no key pressed does it count."""
    # Longer than the real wait, so that a slow machine cannot arm it before the typed-ahead keys land.
    monkeypatch.setattr(confirm_screen, "ARM_SECONDS", 3.0)
    app = dashboard_app(waves_db.db)
    async with running(app, size=(120, 40)) as pilot:
        dialog = await open_dialog_on_spring(pilot, waves_db)
        dialog.query_one("#date", Input).value = "2099-05-31"
        dialog.query_one("#hour", Input).value = "21:00"
        await pilot.pause()
        await pilot.press("ctrl+s", "n")
        question = await opened(pilot, PassedChoice)
        await pilot.pause()
        assert app.screen is question
        assert [m.wave_parent for m in await scheduled_of(waves_db.db)].count("Spring sale") == 0
        await wait_for(lambda: question.armed, timeout=15, what="the question to take its keys")
        await pilot.press("d")
        await wait_for(lambda: app.screen is app.dashboard, what="the dialog to close")
    assert any(m.wave_parent == "Spring sale" for m in await scheduled_of(waves_db.db))


# --- the grouped Scheduled rows -----------------------------------------------------------------


async def test_the_waves_of_one_schedule_are_one_row(waves_db: Fixture) -> None:
    app = dashboard_app(waves_db.db)
    async with running(app, size=(120, 40)) as pilot:
        scheduled = table(app, Section.SCHEDULED)
        await wait_for(lambda: len(scheduled.keys) == 2, what="two rows")
        first = waves_db.ids["wave0"]  # Tokyo's, the next to go
        assert scheduled.keys == [str(first), str(waves_db.ids["meetup"])]
        cells = "".join(part for _, segments in app._rows(scheduled, app_view(app))[1](0) for part, _ in segments)
        assert "Autumn waves (3 waves left)" in cells and "2099-06-01 09:00 local, next UTC+09:00" in cells
        assert "2099-06-01 02:00 CEST" in cells  # the next wave in the operator's zone
        await pilot.press("tab")  # the Scheduled panel's title counts rows
        assert "Scheduled (2)" in str(scheduled.border_title)


def app_view(app: DashboardApp):  # the row text as the panel draws it
    from mailtower.tui.rows import View

    return View(now=app.now(), operator_tz=app.operator_tz, compact=False)


async def test_cancel_on_the_group_row_makes_one_draft_again(waves_db: Fixture) -> None:
    app = dashboard_app(waves_db.db)
    async with running(app, size=(120, 40)) as pilot:
        await focus_row(pilot, Section.SCHEDULED, waves_db.ids["wave0"])
        await choose(pilot, "unschedule")
        await confirm(pilot)
        await wait_for(lambda: len(table(app, Section.SCHEDULED).keys) == 1, what="the group to leave Scheduled")
    store = await Store.open(waves_db.db)
    try:
        drafts = [m for m in await store.mailings(Section.INACTIVE) if m.name == "Autumn waves"]
        assert [(m.state, m.total, m.wave_group) for m in drafts] == [(MailingState.DRAFT, 6, None)]
    finally:
        await store.close()


async def test_cancel_on_the_group_row_is_withheld_while_sending(tmp_path: Path) -> None:
    fx = await build(tmp_path / "busy.db", sending=True)
    app = dashboard_app(fx.db)
    async with running(app, size=(120, 40)) as pilot:
        await focus_row(pilot, Section.SCHEDULED, fx.ids["wave0"])
        await pilot.press("a")
        await wait_for(lambda: isinstance(app.screen, ActionsMenu), what="the menu")
        menu = app.screen
        options = menu.query_one(OptionList)
        shown = [options.get_option_at_index(i).id for i in range(options.option_count)]
        assert "unschedule" not in shown and "schedule" in shown
        assert "stop the current mailing first" in str(menu.query_one("#why").render())
        await pilot.press("escape")
    assert len([m for m in await scheduled_of(fx.db) if m.wave_parent == "Autumn waves"]) == 3


async def test_set_schedule_on_the_group_row_replans_every_wave(waves_db: Fixture) -> None:
    app = dashboard_app(waves_db.db)
    async with running(app, size=(120, 40)) as pilot:
        await focus_row(pilot, Section.SCHEDULED, waves_db.ids["wave0"])
        await choose(pilot, "schedule")
        dialog = await opened(pilot, ScheduleDialog)
        assert "Autumn waves (all 3 waves)" in str(dialog.query_one("#schedule-box").border_title)
        assert dialog.query_one("#local-time", Checkbox).value  # a local-time schedule stays one
        # It starts from what the schedule asked for, not from one wave's zone: the zone-less keep UTC.
        fields = [dialog.query_one(f"#{name}", Input).value for name in ("date", "hour", "zone")]
        assert fields == ["2099-06-01", "09:00", "UTC"]
        assert "Waves       3 · 6 recipients in 4 zones" in preview_text(dialog)
        dialog.query_one("#hour", Input).value = "10:30"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await wait_for(lambda: app.screen is app.dashboard, what="the dialog to close")
    waves = [m for m in await scheduled_of(waves_db.db) if m.wave_parent == "Autumn waves"]
    assert len(waves) == 3 and sum(m.total for m in waves) == 6
    assert {m.schedule.local for m in waves if m.schedule} == {datetime(2099, 6, 1, 10, 30)}
    assert len({m.wave_group for m in waves}) == 1


async def test_set_schedule_saved_unchanged_on_the_group_row_changes_nothing(waves_db: Fixture) -> None:
    """Enter on the row, Enter on Set Schedule, Enter in the dialog (filled in as the schedule
    asked) planned the waves again: the same send times, but new mailings in place of the old
    (other ids) and new events, for nothing the operator asked. Unchanged, nothing is saved."""
    before = sorted((m.id, m.wave_group, m.total) for m in await scheduled_of(waves_db.db) if m.wave_parent == "Autumn waves")
    app = dashboard_app(waves_db.db)
    async with running(app, size=(120, 40)) as pilot:
        await focus_row(pilot, Section.SCHEDULED, waves_db.ids["wave0"])
        await choose(pilot, "schedule")
        await opened(pilot, ScheduleDialog)
        await pilot.press("ctrl+s")
        await wait_for(lambda: app.screen is app.dashboard, what="the dialog to close")
    after = sorted((m.id, m.wave_group, m.total) for m in await scheduled_of(waves_db.db) if m.wave_parent == "Autumn waves")
    assert after == before and len(after) == 3


# --- pictures --------------------------------------------------------------------------------


def frozen_app(db: Path) -> DashboardApp:
    return DashboardApp(settings_for(db), start_sender=False, now=Clock(), operator_tz=OPERATOR_TZ)


async def settled(pilot: Pilot[int]) -> None:
    app = pilot.app
    assert isinstance(app, DashboardApp)
    await wait_for(lambda: bool(app.renders and app.sections), what="first render")
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_dialog_wave_preview(snap_compare, waves_db: Fixture, size: tuple[int, int]) -> None:
    async def run_before(pilot: Pilot[int]) -> None:
        await settled(pilot)
        await open_dialog_on_spring(pilot, waves_db)
        await pilot.pause()

    assert snap_compare(frozen_app(waves_db.db), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_passed_choice(snap_compare, waves_db: Fixture, size: tuple[int, int]) -> None:
    async def run_before(pilot: Pilot[int]) -> None:
        await settled(pilot)
        dialog = await open_dialog_on_spring(pilot, waves_db)
        dialog.query_one("#date", Input).value = "2099-05-31"
        dialog.query_one("#hour", Input).value = "21:00"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await opened(pilot, PassedChoice)
        await pilot.pause()

    assert snap_compare(frozen_app(waves_db.db), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_grouped_scheduled_rows(snap_compare, waves_db: Fixture, size: tuple[int, int]) -> None:
    async def run_before(pilot: Pilot[int]) -> None:
        await settled(pilot)
        await pilot.press("tab")
        await pilot.pause()

    assert snap_compare(frozen_app(waves_db.db), terminal_size=size, run_before=run_before)


async def test_details_of_the_group_row_lists_the_next_waves_zones(waves_db: Fixture) -> None:
    from mailtower.tui.screens.details import DetailsScreen

    app = dashboard_app(waves_db.db)
    async with running(app, size=(120, 40)) as pilot:
        await focus_row(pilot, Section.SCHEDULED, waves_db.ids["wave0"])
        await choose(pilot, "details")
        screen = await opened(pilot, DetailsScreen)
        await wait_for(lambda: "Zones" in str(screen.query_one("#now").render()), what="the zones line")
        assert "Zones (1): Asia/Tokyo 2" in str(screen.query_one("#now").render())
