"""Set Schedule never brings a send time forward by reflex: a save that would send to anyone
sooner than the mailing is scheduled now asks first, on Go back, and only its key (s) saves.

The fault: on a mailing scheduled for 18:00 Europe/Berlin (16:00 UTC), Enter, Enter, Tab x3,
Space, Tab x2, Enter ticked "Deliver in each recipient's time zone" and saved, and the
Pacific/Kiritimati wave went at 04:00 UTC, 12 hours sooner, without a question. Later or
unchanged times still save without one.

Real databases, the whole dashboard driven through Pilot, a frozen clock (FIXED_NOW, 2099-05-31)
and the operator in Europe/Berlin.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from pathlib import Path

import pytest
from textual import events
from textual.pilot import Pilot
from textual.widgets import Checkbox, Input

from mailtower.core.domain import Mailing, MailingState, Section
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.scheduling import schedule_mailing
from mailtower.tui.app import DashboardApp
from mailtower.tui.screens import confirm as confirm_screen
from mailtower.tui.screens.confirm import ConfirmDialog
from mailtower.tui.screens.schedule import ScheduleDialog

from .conftest import FIXED_NOW, wait_for
from .pilot import dashboard_app, focus_row, opened, running
from .test_app import choose
from .test_waves_dialog import add_mailing

pytestmark = pytest.mark.asyncio

GALA = datetime(2099, 6, 7, 18, 0)  # Europe/Berlin: 16:00 UTC
UTC = timezone.utc
PROBE_KEYS = ["tab", "tab", "tab", "space", "tab", "tab", "enter"]  # to the checkbox, tick it, to Schedule, Enter


async def gala(tmp_path: Path, zones: dict[str, int] | None = None) -> tuple[Path, int]:
    """"Berlin gala" scheduled for 2099-06-07 18:00 Europe/Berlin (16:00 UTC)."""
    db = tmp_path / "gala.db"
    async with opened(db) as store:
        mid = await add_mailing(store, tmp_path, "Berlin gala", zones or {"Europe/Berlin": 4, "Pacific/Kiritimati": 4})
        await Lifecycle(store).schedule(mid, GALA, "Europe/Berlin")
    return db, mid


async def scheduled(db: Path) -> list[Mailing]:
    async with opened(db) as store:
        return [m for m in await store.mailings() if m.state is MailingState.SCHEDULED]


async def send_times(db: Path) -> list[datetime]:
    """Every scheduled send time, earliest first (UTC)."""
    return sorted(m.schedule.utc for m in await scheduled(db) if m.schedule is not None)


async def open_set_schedule(pilot: Pilot[int], mailing_id: int) -> ScheduleDialog:
    app = pilot.app
    await focus_row(pilot, Section.SCHEDULED, mailing_id)
    await choose(pilot, "schedule")
    await wait_for(lambda: isinstance(app.screen, ScheduleDialog) and app.screen.is_mounted, what="the dialog")
    await pilot.pause()
    return app.screen  # type: ignore[return-value]


async def question(pilot: Pilot[int]) -> ConfirmDialog:
    await wait_for(lambda: isinstance(pilot.app.screen, ConfirmDialog) and pilot.app.screen.is_mounted, what="the question")
    await pilot.pause()
    return pilot.app.screen  # type: ignore[return-value]


async def set_fields(pilot: Pilot[int], dialog: ScheduleDialog, date: str, hour: str) -> None:
    dialog.query_one("#date", Input).value = date
    dialog.query_one("#hour", Input).value = hour
    dialog.query_one("#date", Input).focus()
    await pilot.pause()


def burst(app: DashboardApp, keys: list[str]) -> None:
    """Queue `keys` the way a terminal delivers a burst: all at once, no wait between them."""
    chars = {"space": " ", "enter": "\r"}
    for key in keys:
        event = events.Key(key, chars.get(key, key if len(key) == 1 else None))
        event.set_sender(app)
        app._driver.send_message(event)  # type: ignore[union-attr]


# --- the fault, key for key --------------------------------------------------------------------


@pytest.mark.armed
async def test_enter_enter_tab_space_tab_enter_asks_and_saves_only_with_its_key(tmp_path: Path) -> None:
    """The reported keys tick local time and press Schedule: that brings Pacific/Kiritimati 12 hours
    forward, so it asks, on Go back; Enter (and Tab, Enter) keep the schedule; only `s` saves."""
    assert confirm_screen.ARM_SECONDS == 0.5  # the real wait before the key counts
    db, mid = await gala(tmp_path)
    before = await send_times(db)
    assert before == [datetime(2099, 6, 7, 16, 0, tzinfo=UTC)]
    app = dashboard_app(db)
    async with running(app, size=(120, 40)) as pilot:
        await focus_row(pilot, Section.SCHEDULED, mid)
        await pilot.press("enter")  # the Actions menu, on Set Schedule
        await pilot.press("enter")  # Set Schedule
        await wait_for(lambda: isinstance(app.screen, ScheduleDialog) and app.screen.is_mounted, what="the dialog")
        dialog = app.screen
        await pilot.pause()
        await pilot.press(*PROBE_KEYS)
        ask = await question(pilot)
        assert dialog.query_one("#local-time", Checkbox).value is True
        assert ask.key == "s" and ask.focused is ask.query_one("#cancel")
        assert "12 h 00 min sooner" in ask.message and "Pacific/Kiritimati" in ask.message
        assert "4 recipients" in ask.message
        assert "2099-06-07 04:00 UTC" in ask.message and "until now 2099-06-07 16:00 UTC" in ask.message
        assert await send_times(db) == before
        # Enter keeps it as it is: back in the dialog, its fields as they were.
        await pilot.press("enter")
        await wait_for(lambda: app.screen is dialog, what="back in the dialog")
        assert await send_times(db) == before
        # Tab, Enter cannot reach the save either (the save button never takes the focus).
        await pilot.press("ctrl+s")
        ask = await question(pilot)
        await pilot.press("tab", "enter")
        await wait_for(lambda: app.screen is dialog, what="back in the dialog")
        assert await send_times(db) == before
        # Its own key, once the question has been read, saves.
        await pilot.press("ctrl+s")
        ask = await question(pilot)
        await wait_for(lambda: ask.armed, timeout=15, what="the question to take its key")
        await pilot.press("s")
        await wait_for(lambda: app.screen is app.dashboard, what="the dashboard")
    await asyncio.sleep(0)
    assert await send_times(db) == [datetime(2099, 6, 7, 4, 0, tzinfo=UTC), datetime(2099, 6, 7, 16, 0, tzinfo=UTC)]


@pytest.mark.armed
async def test_an_s_typed_ahead_of_the_question_saves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same keys, the last Enter and an `s` in one burst: the `s` comes before the question has
    been shown for a moment, so it is no answer to it; nothing is saved."""
    # Longer than the real wait, so that a slow machine cannot arm it before the keys land.
    monkeypatch.setattr(confirm_screen, "ARM_SECONDS", 3.0)
    db, mid = await gala(tmp_path)
    before = await send_times(db)
    app = dashboard_app(db)
    async with running(app, size=(120, 40)) as pilot:
        await focus_row(pilot, Section.SCHEDULED, mid)
        await pilot.press("enter", "enter")
        await wait_for(lambda: isinstance(app.screen, ScheduleDialog) and app.screen.is_mounted, what="the dialog")
        await pilot.pause()
        await pilot.press(*PROBE_KEYS[:-1])
        burst(app, ["enter", "s"])  # the Enter that saves and an `s` right behind it
        ask = await question(pilot)
        await asyncio.sleep(0.2)
        assert app.screen is ask and await send_times(db) == before
        await pilot.press("s")  # the question has only just been shown: no answer yet
        assert "came too soon" in str(ask.query_one("#confirm-box").border_subtitle)
        await asyncio.sleep(0.2)
        assert app.screen is ask and await send_times(db) == before
        await pilot.press("escape")
        await wait_for(lambda: isinstance(app.screen, ScheduleDialog), what="back in the dialog")
    assert await send_times(db) == before


# --- one zone -----------------------------------------------------------------------------------


async def test_a_sooner_time_in_one_zone_asks_and_s_saves_it(tmp_path: Path) -> None:
    db, mid = await gala(tmp_path, {"Europe/Berlin": 3})
    app = dashboard_app(db)
    async with running(app, size=(120, 40)) as pilot:
        dialog = await open_set_schedule(pilot, mid)
        await set_fields(pilot, dialog, "2099-06-07", "17:00")
        await pilot.press("enter")
        ask = await question(pilot)
        assert "up to 1 h 00 min sooner" in ask.message and "3 recipients in Europe/Berlin" in ask.message
        assert "Earliest send: 2099-06-07 15:00 UTC = 2099-06-07 17:00 CEST (+02:00) Europe/Berlin" in ask.message
        assert await send_times(db) == [datetime(2099, 6, 7, 16, 0, tzinfo=UTC)]
        await pilot.press("s")
        await wait_for(lambda: app.screen is app.dashboard, what="the dashboard")
    assert await send_times(db) == [datetime(2099, 6, 7, 15, 0, tzinfo=UTC)]


async def test_go_back_then_a_later_time_saves_without_a_question(tmp_path: Path) -> None:
    """Go back leaves the dialog open to fix the time; a later one then saves at once."""
    db, mid = await gala(tmp_path, {"Europe/Berlin": 3})
    app = dashboard_app(db)
    async with running(app, size=(120, 40)) as pilot:
        dialog = await open_set_schedule(pilot, mid)
        await set_fields(pilot, dialog, "2099-06-01", "18:00")  # six days sooner
        await pilot.press("enter")
        ask = await question(pilot)
        assert "up to 6 d 0 h sooner" in ask.message
        await pilot.press("enter")  # Go back
        await wait_for(lambda: app.screen is dialog, what="back in the dialog")
        assert await send_times(db) == [datetime(2099, 6, 7, 16, 0, tzinfo=UTC)]
        await set_fields(pilot, dialog, "2099-06-08", "18:00")  # a day later
        await pilot.press("enter")
        await wait_for(lambda: app.screen is app.dashboard, what="saved without a question")
    assert await send_times(db) == [datetime(2099, 6, 8, 16, 0, tzinfo=UTC)]


# --- local time and wave groups -----------------------------------------------------------------


async def test_a_wave_group_is_asked_before_any_of_its_waves_comes_sooner(tmp_path: Path) -> None:
    """Berlin and New York readers at 18:00 Berlin; in each one's zone New York only gets it later,
    so that saves without a question. Back to one zone (Berlin, 18:00) the New York wave would
    come 6 hours sooner, though the earliest wave does not move: it asks."""
    db, mid = await gala(tmp_path, {"Europe/Berlin": 2, "America/New_York": 3})
    app = dashboard_app(db)
    async with running(app, size=(120, 40)) as pilot:
        dialog = await open_set_schedule(pilot, mid)
        dialog.query_one("#local-time", Checkbox).value = True
        await pilot.pause()
        await pilot.press("ctrl+s")
        await wait_for(lambda: app.screen is app.dashboard, what="saved without a question")
        waves = await scheduled(db)
        assert sorted(m.schedule.utc for m in waves) == [  # type: ignore[union-attr]
            datetime(2099, 6, 7, 16, 0, tzinfo=UTC), datetime(2099, 6, 7, 22, 0, tzinfo=UTC)]
        first = min(waves, key=lambda m: m.schedule.utc)  # type: ignore[union-attr]
        dialog = await open_set_schedule(pilot, first.id)
        dialog.query_one("#local-time", Checkbox).value = False
        await pilot.pause()
        await pilot.press("ctrl+s")
        ask = await question(pilot)
        assert "up to 6 h 00 min sooner" in ask.message and "3 recipients in America/New_York" in ask.message
        await pilot.press("enter")
        await wait_for(lambda: app.screen is dialog, what="back in the dialog")
        assert len(await scheduled(db)) == 2
        # The whole group an hour earlier in each zone: asked too.
        dialog.query_one("#local-time", Checkbox).value = True
        await set_fields(pilot, dialog, "2099-06-07", "17:00")
        await pilot.press("ctrl+s")
        ask = await question(pilot)
        assert "up to 1 h 00 min sooner" in ask.message and "5 recipients in America/New_York and Europe/Berlin" in ask.message
        assert "Earliest send: 2099-06-07 15:00 UTC" in ask.message
        await pilot.press("s")
        await wait_for(lambda: app.screen is app.dashboard, what="the dashboard")
    assert await send_times(db) == [datetime(2099, 6, 7, 15, 0, tzinfo=UTC), datetime(2099, 6, 7, 21, 0, tzinfo=UTC)]


async def test_an_unchanged_wave_group_saves_nothing_and_asks_nothing(tmp_path: Path) -> None:
    """Enter on a group's own schedule: nothing moves, so no question (and app.py saves nothing)."""
    db = tmp_path / "waves.db"
    async with opened(db) as store:
        mid = await add_mailing(store, tmp_path, "World tour", {"Asia/Tokyo": 2, "Europe/Paris": 2, "Pacific/Kiritimati": 1})
        result = await schedule_mailing(store, Lifecycle(store), mid, datetime(2099, 6, 1, 9, 0), "UTC", True, now=FIXED_NOW)
    before = await send_times(db)
    app = dashboard_app(db)
    async with running(app, size=(120, 40)) as pilot:
        dialog = await open_set_schedule(pilot, result.mailing_ids[0])
        await pilot.press("enter")
        await wait_for(lambda: app.screen is app.dashboard, what="closed without a question")
        # An hour earlier in each zone asks.
        dialog = await open_set_schedule(pilot, result.mailing_ids[0])
        dialog.query_one("#hour", Input).value = "08:00"
        await pilot.pause()
        await pilot.press("ctrl+s")
        ask = await question(pilot)
        assert "up to 1 h 00 min sooner" in ask.message and "5 recipients" in ask.message
        assert "2099-05-31 18:00 UTC = 2099-06-01 08:00 (+14:00) Pacific/Kiritimati" in ask.message
        await pilot.press("escape")
        await wait_for(lambda: app.screen is dialog, what="back in the dialog")
    assert await send_times(db) == before


async def test_after_what_happens_where_it_has_passed_a_sooner_save_still_asks(tmp_path: Path) -> None:
    """Local time at 20:00 today: it has passed in Pacific/Kiritimati, whose readers move to the
    next day (`d`), still six days sooner than the gala's 18:00 on 2099-06-07: asked too."""
    from mailtower.tui.screens.schedule import PassedChoice

    db, mid = await gala(tmp_path)
    app = dashboard_app(db)
    async with running(app, size=(120, 40)) as pilot:
        dialog = await open_set_schedule(pilot, mid)
        dialog.query_one("#local-time", Checkbox).value = True
        await set_fields(pilot, dialog, "2099-05-31", "20:00")
        await pilot.press("enter")
        await wait_for(lambda: isinstance(app.screen, PassedChoice) and app.screen.is_mounted, what="the passed question")
        await pilot.pause()
        await pilot.press("d")
        ask = await question(pilot)
        assert "8 recipients in Europe/Berlin and Pacific/Kiritimati" in ask.message
        assert "Earliest send: 2099-05-31 18:00 UTC = 2099-05-31 20:00 CEST (+02:00) Europe/Berlin" in ask.message
        await pilot.press("enter")
        await wait_for(lambda: app.screen is dialog, what="back in the dialog")
        assert await send_times(db) == [datetime(2099, 6, 7, 16, 0, tzinfo=UTC)]
        await pilot.press("enter")
        await wait_for(lambda: isinstance(app.screen, PassedChoice) and app.screen.is_mounted, what="the passed question")
        await pilot.pause()
        await pilot.press("d")
        await question(pilot)
        await pilot.press("s")
        await wait_for(lambda: app.screen is app.dashboard, what="the dashboard")
    assert await send_times(db) == [datetime(2099, 5, 31, 18, 0, tzinfo=UTC), datetime(2099, 6, 1, 6, 0, tzinfo=UTC)]


async def test_waves_whose_wall_time_passed_everywhere_are_judged_by_their_own_times(tmp_path: Path) -> None:
    """The dialog planned the group's waves again from its wall time to know when each zone is
    sent to now; once that time had passed in every zone the plan failed and every zone counted
    as the earliest wave, so moving Berlin's 07:00 UTC wave to 03:00 UTC asked nothing. It judges
    by the scheduled waves' own instants (waves.current_send_times, as the app gives them)."""
    from mailtower.core.waves import Passed, current_send_times, grouped_with, preview_for
    from mailtower.tui.screens.schedule import ScheduleRequest

    utc = timezone.utc
    async with opened(tmp_path / "w.db") as store:
        lifecycle = Lifecycle(store)
        mailing_id = await add_mailing(store, tmp_path, "Waves", {"Asia/Tokyo": 2, "Europe/Berlin": 3, "America/New_York": 4})
        result = await schedule_mailing(store, lifecycle, mailing_id, datetime(2099, 6, 1, 9, 0), "UTC", True,
                                        Passed.NEXT_DAY, now=datetime(2099, 6, 1, 8, 0, tzinfo=utc))
        waves = sorted([await store.mailing(i) for i in result.mailing_ids], key=lambda m: m.schedule.utc)  # type: ignore[union-attr]
        await lifecycle.send_now(waves[0].id)  # New York's wave has gone
        tokyo = await store.mailing(waves[1].id)
        members = await grouped_with(store, tokyo)
        asked = await store.wave_request(tokyo.wave_group)  # type: ignore[arg-type]
        assert asked is not None
        now = datetime(2099, 6, 1, 22, 0, tzinfo=utc)  # 09:00 has passed in every zone
        dialog = ScheduleDialog(tokyo, "Europe/Berlin", now=lambda: now, zones=await preview_for(store, tokyo),
                                waves=len(members), wall=(asked[0], asked[1] or "UTC"),
                                current=await current_send_times(store, members))
        sooner = dialog._sooner(ScheduleRequest(datetime(2099, 6, 2, 3, 0), "UTC", False))
        assert sooner is not None and sooner.zones == ("Europe/Berlin",) and sooner.recipients == 3
        assert dialog._sooner(ScheduleRequest(datetime(2099, 6, 2, 8, 0), "UTC", False)) is None  # later for all
