"""Keys pressed by reflex and dialogs left open: nothing starts, speeds up or undoes a campaign.

The standard: nothing the operator does by reflex (Enter, Enter) can stop, delete or speed up a
campaign; risky actions start on the safe choice and take an explicit key. And a dialog shows
the mailing or the limits as they were when it opened: saving it after someone else changed them
must not undo that change unseen.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from textual import events
from textual.widgets import Input

from mailtower.core.domain import MailingState, Section
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.limits import read_limits, set_limits
from mailtower.tui.app import DashboardApp
from mailtower.tui.screens import confirm as confirm_screen
from mailtower.tui.screens.confirm import ConfirmDialog
from mailtower.tui.screens.limits import LimitsScreen
from mailtower.tui.screens.schedule import ScheduleDialog

from .conftest import build_fixed, settings_for, wait_for
from .pilot import dashboard_app, focus_row, opened, running, state_of
from .test_safe_dashboard import choose, question
from .test_waves_dialog import build as build_waves


def notices(app: object) -> list[str]:
    return [str(n.message) for n in app._notifications]  # type: ignore[attr-defined]


async def test_enter_enter_enter_on_a_draft_schedules_nothing(tmp_path: Path) -> None:
    """Enter on the row opens the menu, whose first entry for a draft is Set Schedule; Enter
    opens the dialog; Enter there once submitted tomorrow 09:00 and the draft went out."""
    fx = await build_fixed(tmp_path / "idle.db", sending=False, small=True)
    app = dashboard_app(fx.db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.INACTIVE, fx.ids["draft"])
        await pilot.press("enter")
        await pilot.pause()
        await pilot.press("enter")
        await wait_for(lambda: isinstance(app.screen, ScheduleDialog) and app.screen.is_mounted, what="the dialog")
        dialog = app.screen
        for _ in range(3):
            await pilot.press("enter")
            await pilot.pause()
        assert app.screen is dialog, "Enter with no date typed closed the dialog"
        assert dialog.query_one("#date", Input).value == ""
        await pilot.press("escape")
        await wait_for(lambda: app.screen is app.dashboard, what="the dashboard")
    assert await state_of(fx.db, fx.ids["draft"]) is MailingState.DRAFT


@pytest.mark.parametrize("key, section", [("draft", Section.INACTIVE), ("stopped", Section.INACTIVE),
                                          ("tokyo", Section.SCHEDULED)])
async def test_send_now_asks_and_enter_keeps_it_as_it_is(tmp_path: Path, key: str, section: Section) -> None:
    """Send now starts a draft, sends a stopped mailing again (as Restart, which asked) or brings
    a schedule forward: it asks, opens on "Keep as it is", and only its key (s) sends."""
    fx = await build_fixed(tmp_path / "idle.db", sending=False, small=True)
    mailing_id = fx.ids[key]
    before = await state_of(fx.db, mailing_id)
    app = dashboard_app(fx.db)
    async with running(app) as pilot:
        await focus_row(pilot, section, mailing_id)
        await choose(pilot, "send-now")
        dialog = await question(pilot)
        assert dialog.key == "s" and dialog.focused is dialog.query_one("#cancel")
        await pilot.press("enter")
        await wait_for(lambda: app.screen is app.dashboard, what="the dashboard")
        assert await state_of(fx.db, mailing_id) is before
        await focus_row(pilot, section, mailing_id)
        await choose(pilot, "send-now")
        await question(pilot)
        await pilot.press("s")
        await wait_for(lambda: app.screen is app.dashboard, what="the dashboard")
    assert await state_of(fx.db, mailing_id) is MailingState.QUEUED


async def test_send_all_waves_now_asks_first(tmp_path: Path) -> None:
    fx = await build_waves(tmp_path / "waves.db")
    app = dashboard_app(fx.db)
    async with running(app, size=(120, 40)) as pilot:
        await focus_row(pilot, Section.SCHEDULED, fx.ids["wave0"])
        await choose(pilot, "send-now")
        dialog = await question(pilot)
        assert "Send all waves now" in str(dialog.title_text)
        await pilot.press("enter")
        await wait_for(lambda: app.screen is app.dashboard, what="the dashboard")
    assert await state_of(fx.db, fx.ids["wave0"]) is MailingState.SCHEDULED


async def test_a_schedule_changed_elsewhere_while_its_dialog_is_open_is_not_undone(tmp_path: Path) -> None:
    fx = await build_fixed(tmp_path / "idle.db", sending=False, small=True)
    berlin = fx.ids["berlin"]  # 2099-06-07 18:00 Europe/Berlin
    app = dashboard_app(fx.db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.SCHEDULED, berlin)
        await choose(pilot, "schedule")
        await wait_for(lambda: isinstance(app.screen, ScheduleDialog) and app.screen.is_mounted, what="the dialog")
        assert app.screen.query_one("#date", Input).value == "2099-06-07"
        async with opened(fx.db) as store:  # another operator postpones it meanwhile
            await Lifecycle(store).schedule(berlin, datetime(2099, 7, 1, 18, 0), "Europe/Berlin")
        await pilot.press("enter")
        await wait_for(lambda: any("changed elsewhere" in n for n in notices(app)), what="the refusal")
    refusal = next(n for n in notices(app) if "changed elsewhere" in n)
    assert "scheduled for 2099-07-01 18:00 Europe/Berlin" in refusal and "\n" not in refusal
    async with opened(fx.db) as store:
        mailing = await store.mailing(berlin)
    assert mailing.schedule is not None and mailing.schedule.local == datetime(2099, 7, 1, 18, 0)


async def test_limits_changed_elsewhere_are_shown_not_overwritten(tmp_path: Path) -> None:
    """The dialog read 60 msg/s; another operator cut it to 5; 100 typed here is 20 times the
    rate in force, not "less than double": nothing is saved, the fields show 5, and the next
    save asks."""
    fx = await build_fixed(tmp_path / "idle.db", sending=False, small=True)
    settings = settings_for(fx.db, rate=60.0)
    app = dashboard_app(fx.db, settings=settings)
    async with running(app) as pilot:
        await pilot.press("l")
        await wait_for(lambda: isinstance(app.screen, LimitsScreen) and app.screen.limits is not None, what="limits")
        await pilot.pause()
        screen = app.screen
        async with opened(fx.db) as store:
            await set_limits(store, {"rate": 5.0})
        await pilot.press(*"100", "enter")
        await wait_for(lambda: any("changed elsewhere" in n for n in notices(app)), what="the refusal")
        assert app.screen is screen and screen.query_one("#rate", Input).value == "5"
        async with opened(fx.db) as store:
            assert (await read_limits(store, settings)).rate == 5.0
        field = screen.query_one("#rate", Input)
        field.focus()
        field.value = "100"
        await pilot.press("enter")
        dialog = await question(pilot)
        assert isinstance(dialog, ConfirmDialog) and "5 msg/s → 100 msg/s" in dialog.message
        await pilot.press("enter")  # Go back
        await wait_for(lambda: app.screen is screen, what="back in the limits")
    async with opened(fx.db) as store:
        assert (await read_limits(store, settings)).rate == 5.0


@pytest.mark.armed
async def test_a_word_typed_ahead_does_not_answer_the_question(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Enter, Enter and then "spring" typed ahead (the operator meant to search): the `s` landed in
    the question that Enter, Enter had opened and stopped the sending. A destructive question's
    key counts only after it has been shown for a moment with no key pressed."""
    # Longer than the real wait, so that a slow machine cannot arm it before the typed-ahead keys land.
    monkeypatch.setattr(confirm_screen, "ARM_SECONDS", 3.0)
    fx = await build_fixed(tmp_path / "f.db")
    spring = fx.ids["spring"]
    app = dashboard_app(fx.db)
    async with running(app) as pilot:
        await pilot.press("enter", "enter", *"spring", "s")
        dialog = await question(pilot)
        assert await state_of(fx.db, spring) is MailingState.SENDING
        assert app.screen is dialog and "came too soon" in str(dialog.query_one("#confirm-box").border_subtitle)
        await wait_for(lambda: dialog.armed, timeout=15, what="the question to take its key")
        await pilot.press("s")
        await wait_for(lambda: app.screen is not dialog, what="the question to close")
    assert await state_of(fx.db, spring) is MailingState.STOPPED


@pytest.mark.parametrize("keys", [("tab", "enter"), ("tab", "tab", "enter"), ("shift+tab", "enter"), ("tab", "space", "escape")])
async def test_tab_then_enter_keeps_a_destructive_question(tmp_path: Path, keys: tuple[str, ...]) -> None:
    """Tab moved the focus to the destructive button and Enter pressed it: a stop by reflex. The
    destructive button never takes the focus (a click or its key still answer)."""
    fx = await build_fixed(tmp_path / "f.db")
    spring = fx.ids["spring"]
    app = dashboard_app(fx.db)
    async with running(app) as pilot:
        await choose(pilot, "stop")
        dialog = await question(pilot)
        await pilot.press(*keys)
        await wait_for(lambda: app.screen is not dialog, what="the question to close")
        assert await state_of(fx.db, spring) is MailingState.SENDING
        await choose(pilot, "stop")
        dialog = await question(pilot)
        await pilot.click("#confirm")
        await wait_for(lambda: app.screen is not dialog, what="the question to close")
    assert await state_of(fx.db, spring) is MailingState.STOPPED


def type_in_one_burst(app: DashboardApp, keys: list[str]) -> None:
    """Queue `keys` the way a terminal delivers a burst over SSH: all at once, before the app has
    handled the first (Pilot's press waits for each key to be handled)."""
    chars = {"slash": "/", "space": " ", "enter": "\r"}
    for key in keys:
        event = events.Key(key, chars.get(key, key if len(key) == 1 else None))
        event.set_sender(app)
        app._driver.send_message(event)  # what the terminal driver does with each key it reads


@pytest.mark.parametrize("burst", [["slash", *"sale jan", "enter"], ["slash", *"launch", "enter"], ["slash", *"a/b"]])
async def test_a_filter_typed_in_one_burst_goes_into_the_filter(tmp_path: Path, burst: list[str]) -> None:
    """`/` then "sale jan" and Enter in one burst: the filter took the focus only after the keys
    already waiting, so `a` opened the Actions menu, `j` went to Move up and Enter moved the
    mailing to the top of the queue. Every key after `/` is the filter's."""
    fx = await build_fixed(tmp_path / "f.db", sending=False, small=True)
    async with opened(fx.db) as store:
        before = {m.id: (m.state, m.position) for m in await store.mailings()}
    app = dashboard_app(fx.db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.CURRENT, fx.ids["news"])
        typed = "".join("/" if key == "slash" else key for key in burst[1:] if key != "enter")
        type_in_one_burst(app, burst)
        await wait_for(lambda: app.filter_text == typed, what=f"the filter to read {typed!r}: {app.filter_text!r}")
        await pilot.pause()
        assert app.screen is app.dashboard
    async with opened(fx.db) as store:
        assert {m.id: (m.state, m.position) for m in await store.mailings()} == before
