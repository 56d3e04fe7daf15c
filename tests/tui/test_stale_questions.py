"""Questions answered after the mailing changed, moves that change what is sent first, and the
notice of a schedule sent now elsewhere.

A question shows the mailing as it was when it opened: if another operator changed what it
stated (the schedule, the state, the recipients, the remaining count) the confirmed action is
refused in one line and nothing changes, checked in the action's own transaction. A move that
puts another mailing at the head of the queue asks first, on the safe choice; a move behind the
head is done at once. A schedule sent now elsewhere before its time did not "come due".
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import OptionList

from mailtower.core.domain import Mailing, MailingState, Section
from mailtower.core.errors import UserError
from mailtower.core.lifecycle import Direction, Lifecycle
from mailtower.core.operations import import_recipients
from mailtower.tui.actions import ActionsMenu
from mailtower.tui.app import DashboardApp
from mailtower.tui.screens.confirm import ConfirmDialog

from .conftest import FIXED_NOW, Clock, build_fixed, fake_progress, new_mailing, wait_for, write_recipients
from .pilot import dashboard_app as dashboard, focus_row, opened, running, state_of
from .test_safe_dashboard import choose, question
from .test_waves_dialog import build as build_waves


def notices(app: DashboardApp) -> list[str]:
    return [str(n.message) for n in app._notifications]


async def notice(app: DashboardApp, words: str = "changed elsewhere") -> str:
    """The one-line notice with `words` in it, once it is shown."""
    await wait_for(lambda: any(words in n for n in notices(app)), what=f"a notice with {words!r}: {notices(app)}")
    said = next(n for n in notices(app) if words in n)
    assert "\n" not in said
    return said


async def mailing_in(db: Path, mailing_id: int) -> Mailing:
    async with opened(db) as store:
        return await store.mailing(mailing_id)


async def queue_of(db: Path) -> list[int]:
    async with opened(db) as store:
        return [m.id for m in await store.mailings(Section.CURRENT)]


# ---- A. a question answered after the mailing changed elsewhere -------------------------------


async def test_cancel_schedule_is_refused_when_the_schedule_was_moved_meanwhile(tmp_path: Path) -> None:
    fx = await build_fixed(tmp_path / "d.db", sending=False, small=True)
    berlin = fx.ids["berlin"]  # 2099-06-07 18:00 Europe/Berlin
    app = dashboard(fx.db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.SCHEDULED, berlin)
        await choose(pilot, "unschedule")
        await question(pilot)
        async with opened(fx.db) as store:  # another operator moves it to August
            await Lifecycle(store).schedule(berlin, datetime(2099, 8, 1, 9, 0), "Europe/Berlin")
        await pilot.press("c")
        said = await notice(app)
    assert said == ("“Berlin meetup” was changed elsewhere while the question was open "
                    "(now scheduled for 2099-08-01 09:00 Europe/Berlin); nothing was done: open the menu again")
    mailing = await mailing_in(fx.db, berlin)
    assert mailing.state is MailingState.SCHEDULED
    assert mailing.schedule is not None and mailing.schedule.local == datetime(2099, 8, 1, 9, 0)


async def test_send_now_on_a_draft_is_refused_when_it_was_scheduled_meanwhile(tmp_path: Path) -> None:
    fx = await build_fixed(tmp_path / "d.db", sending=False, small=True)
    draft = fx.ids["draft"]
    app = dashboard(fx.db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.INACTIVE, draft)
        await choose(pilot, "send-now")
        dialog = await question(pilot)
        assert "25 recipients" in dialog.message
        async with opened(fx.db) as store:
            await Lifecycle(store).schedule(draft, datetime(2099, 12, 24, 9, 0), "Europe/Berlin")
        await pilot.press("s")
        said = await notice(app)
    assert "(now scheduled for 2099-12-24 09:00 Europe/Berlin)" in said and "nothing was done" in said
    assert await state_of(fx.db, draft) is MailingState.SCHEDULED


async def test_send_now_on_a_scheduled_mailing_is_refused_when_it_was_rescheduled_meanwhile(tmp_path: Path) -> None:
    fx = await build_fixed(tmp_path / "d.db", sending=False, small=True)
    tokyo = fx.ids["tokyo"]
    app = dashboard(fx.db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.SCHEDULED, tokyo)
        await choose(pilot, "send-now")
        await question(pilot)
        async with opened(fx.db) as store:  # the same wall time, another zone
            await Lifecycle(store).schedule(tokyo, datetime(2099, 5, 31, 21, 30), "Asia/Seoul")
        await pilot.press("s")
        said = await notice(app)
    assert "(now scheduled for 2099-05-31 21:30 Asia/Seoul)" in said
    assert await state_of(fx.db, tokyo) is MailingState.SCHEDULED


async def test_delete_is_refused_when_recipients_were_imported_meanwhile(tmp_path: Path) -> None:
    fx = await build_fixed(tmp_path / "d.db", sending=False, small=True)
    draft = fx.ids["draft"]
    app = dashboard(fx.db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.INACTIVE, draft)
        await choose(pilot, "delete")
        dialog = await question(pilot)
        assert "(25 recipients)" in dialog.message
        async with opened(fx.db) as store:
            await import_recipients(store, draft, write_recipients(tmp_path / "more.csv", 500, prefix="extra"),
                                    lambda row: None)
        await pilot.press("d")
        said = await notice(app)
    assert "(now 525 recipients)" in said
    mailing = await mailing_in(fx.db, draft)
    assert mailing.state is MailingState.DRAFT and mailing.total == 525


async def test_restart_is_refused_when_recipients_were_added_meanwhile(tmp_path: Path) -> None:
    fx = await build_fixed(tmp_path / "d.db", sending=False, small=True)
    stopped = fx.ids["stopped"]
    app = dashboard(fx.db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.INACTIVE, stopped)
        await choose(pilot, "restart")
        dialog = await question(pilot)
        assert "148 remaining recipients" in dialog.message
        async with opened(fx.db) as store:
            await import_recipients(store, stopped, write_recipients(tmp_path / "late.csv", 5000, prefix="late"),
                                    lambda row: None)
        await pilot.press("r")
        said = await notice(app)
        assert not any("restarted" in n for n in notices(app)), notices(app)  # no "148 remaining" notice either
    assert "5,148 remaining" in said
    assert await state_of(fx.db, stopped) is MailingState.STOPPED


async def test_an_answer_to_a_mailing_deleted_meanwhile_says_so(tmp_path: Path) -> None:
    fx = await build_fixed(tmp_path / "d.db", sending=False, small=True)
    stopped = fx.ids["stopped"]
    app = dashboard(fx.db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.INACTIVE, stopped)
        await choose(pilot, "restart")
        await question(pilot)
        async with opened(fx.db) as store:
            await Lifecycle(store).delete(stopped)
        await pilot.press("r")
        said = await notice(app, "deleted while the question was open")
    assert said == "“Winter clearance” was deleted while the question was open; nothing was done"


async def test_cancel_all_waves_is_refused_when_a_wave_was_sent_meanwhile(tmp_path: Path) -> None:
    fx = await build_waves(tmp_path / "waves.db")
    wave0, wave1 = fx.ids["wave0"], fx.ids["wave1"]
    app = dashboard(fx.db)
    async with running(app, size=(120, 40)) as pilot:
        await focus_row(pilot, Section.SCHEDULED, wave0)
        await choose(pilot, "unschedule")
        await question(pilot)
        async with opened(fx.db) as store:  # another operator sends one wave now
            await Lifecycle(store).send_now(wave1)
        await pilot.press("c")
        said = await notice(app)
    assert "“Autumn waves” was changed elsewhere" in said and "wave" in said
    assert await state_of(fx.db, wave0) is MailingState.SCHEDULED


async def test_stop_still_stops_while_the_counts_move_behind_its_question(tmp_path: Path) -> None:
    """A guard (it passes on the old code too): the sending's counters are not what the Stop
    question states, so their moving never refuses it."""
    db = tmp_path / "stop.db"
    async with opened(db) as store:
        mailing_id = await new_mailing(store, tmp_path, "Going out", 20)
        await Lifecycle(store).send_now(mailing_id)
        await Lifecycle(store).start(mailing_id)
    app = dashboard(db)
    async with running(app) as pilot:
        await choose(pilot, "stop")
        dialog = await question(pilot)
        async with opened(db) as store:
            await fake_progress(store, mailing_id, 7, failed=1)
        await wait_for(lambda: "12 recipients have not received it yet" in dialog.message, what=dialog.message)
        await pilot.press("s")
        await wait_for(lambda: any(n.startswith("Stopped") for n in notices(app)), what=str(notices(app)))
    assert await state_of(db, mailing_id) is MailingState.STOPPED


async def test_the_lifecycle_checks_what_was_asked_in_its_own_transaction(tmp_path: Path) -> None:
    db = tmp_path / "cas.db"
    async with opened(db) as store:
        mailing_id = await new_mailing(store, tmp_path, "Plain", 3)
        lifecycle = Lifecycle(store)

        def changed(mailing: Mailing) -> None:
            raise UserError(f"changed: {mailing.total}")

        for act in (lifecycle.delete, lifecycle.send_now):
            with pytest.raises(UserError, match="changed: 3"):
                await act(mailing_id, expect=changed)
        assert (await store.mailing(mailing_id)).state is MailingState.DRAFT
        await lifecycle.send_now(mailing_id, expect=lambda mailing: None)
        assert (await store.mailing(mailing_id)).state is MailingState.QUEUED


# ---- B. moves that change what is sent first ask -----------------------------------------------


async def menu_pick(pilot: Pilot[int], key: str) -> None:
    """Enter on the row, Down until `key`, Enter: what a hand does by reflex."""
    app = pilot.app
    await pilot.press("enter")
    await wait_for(lambda: isinstance(app.screen, ActionsMenu) and app.screen.is_mounted, what="the menu")
    options = app.screen.query_one(OptionList)
    while options.highlighted_option is None or options.highlighted_option.id != key:
        await pilot.press("down")
    await pilot.press("enter")


@pytest.mark.armed
async def test_enter_down_enter_on_the_second_mailing_asks_before_it_goes_first(tmp_path: Path) -> None:
    fx = await build_fixed(tmp_path / "d.db", sending=True, small=True)
    spring, news, launch = fx.ids["spring"], fx.ids["news"], fx.ids["launch"]
    app = dashboard(fx.db)
    async with running(app, size=(120, 30)) as pilot:
        # A move behind the head is done at once, as before.
        await focus_row(pilot, Section.CURRENT, news)
        await menu_pick(pilot, "move-down")
        await wait_for(lambda: any("is now number 3" in n for n in notices(app)), what=str(notices(app)))
        assert await queue_of(fx.db) == [spring, launch, news]
        # Enter, Down, Enter on the second mailing: Move up would put it at the head.
        await focus_row(pilot, Section.CURRENT, launch)
        await menu_pick(pilot, "move-up")
        dialog = await question(pilot)
        assert dialog.title_text == "Change what is sent first"
        assert dialog.message == (
            "Move “Product launch: Tower 2” up (to number 1 of 3)? “Product launch: Tower 2” starts sending now, "
            "and “Spring sale — Europe”, which is being sent, pauses and waits at number 2 (it goes on where it "
            "was when its turn comes again)."
        )
        assert dialog.focused is not None and dialog.focused.id == "cancel"
        await pilot.press("m")  # typed on the heels of Enter: too soon, it does not count
        await pilot.pause()
        assert app.screen is dialog and "came too soon" in str(dialog.query_one("#confirm-box").border_subtitle)
        await pilot.press("enter")  # Enter keeps the order
        await wait_for(lambda: app.screen is app.dashboard, what="the dashboard")
        assert await queue_of(fx.db) == [spring, launch, news]
        # Asked again and answered with its key once the question has been read: it moves.
        await menu_pick(pilot, "move-up")
        dialog = await question(pilot)
        await wait_for(lambda: dialog.armed, what="the question to take its key")
        await pilot.press("m")
        await wait_for(lambda: any("is now number 1" in n for n in notices(app)), what=str(notices(app)))
    assert await queue_of(fx.db) == [launch, spring, news]


async def test_moving_the_head_down_asks_too(tmp_path: Path) -> None:
    fx = await build_fixed(tmp_path / "d.db", sending=False, small=True)
    spring, news, launch = fx.ids["spring"], fx.ids["news"], fx.ids["launch"]
    app = dashboard(fx.db)
    async with running(app, size=(120, 30)) as pilot:
        await focus_row(pilot, Section.CURRENT, spring)
        await menu_pick(pilot, "move-bottom")
        dialog = await question(pilot)
        assert dialog.message.endswith(
            "“Newsletter #42 [weekly]” is then sent first, before “Spring sale — Europe” (now at number 3)."
        )
        await pilot.press("escape")
        await wait_for(lambda: app.screen is app.dashboard, what="the dashboard")
    assert await queue_of(fx.db) == [spring, news, launch]


async def test_a_move_from_the_palette_that_changes_the_head_asks(tmp_path: Path) -> None:
    fx = await build_fixed(tmp_path / "d.db", sending=True, small=True)
    spring, news, launch = fx.ids["spring"], fx.ids["news"], fx.ids["launch"]
    app = dashboard(fx.db)
    async with running(app, size=(120, 30)) as pilot:
        await pilot.press("ctrl+p")
        await asyncio.sleep(0.3)
        await pilot.press(*"move to top newsletter")
        await asyncio.sleep(0.5)
        await pilot.press("enter")
        dialog = await question(pilot)
        assert dialog.title_text == "Change what is sent first"
        await pilot.press("enter")
        await wait_for(lambda: app.screen is app.dashboard, what="the dashboard")
    assert await queue_of(fx.db) == [spring, news, launch]


async def test_an_asked_move_whose_head_changed_meanwhile_is_refused(tmp_path: Path) -> None:
    fx = await build_fixed(tmp_path / "d.db", sending=False, small=True)
    spring, news, launch = fx.ids["spring"], fx.ids["news"], fx.ids["launch"]
    app = dashboard(fx.db)
    async with running(app, size=(120, 30)) as pilot:
        await focus_row(pilot, Section.CURRENT, launch)
        await menu_pick(pilot, "move-top")
        await question(pilot)
        async with opened(fx.db) as store:  # another operator puts Newsletter first meanwhile
            await Lifecycle(store).move(news, Direction.TOP)
        await pilot.press("m")
        said = await notice(app, "queue changed")
    assert "“Product launch: Tower 2” was not moved" in said
    assert await queue_of(fx.db) == [news, spring, launch]


# ---- C. a schedule sent now elsewhere did not come due -------------------------------------------


async def test_a_schedule_sent_now_elsewhere_is_not_said_to_have_come_due(tmp_path: Path) -> None:
    fx = await build_fixed(tmp_path / "d.db", sending=False, small=True)
    berlin, tokyo = fx.ids["berlin"], fx.ids["tokyo"]  # 2099-06-07 16:00 UTC; 2099-05-31 12:30 UTC
    clock = Clock()
    app = dashboard(fx.db, clock)
    async with running(app, size=(120, 30)) as pilot:
        async with opened(fx.db) as store:  # another operator: Send now, a week early
            await Lifecycle(store).send_now(berlin)
        said = await notice(app, "Berlin meetup")
        assert said == "Berlin meetup was queued (sent now, before its send time)"
        clock.advance(3 * 3600)  # 13:00 UTC: Tokyo's time has come, and the sender promotes it
        assert clock() > FIXED_NOW + timedelta(hours=2, minutes=30)
        async with opened(fx.db) as store:
            assert await Lifecycle(store).promote(tokyo, 1800)
        assert await notice(app, "Tokyo") == "Tokyo morning brief came due and joined the queue"
        await pilot.pause()
    assert [n for n in notices(app) if "came due" in n] == ["Tokyo morning brief came due and joined the queue"]


@pytest.mark.parametrize("action, key", [("restart", "r"), ("send-now", "s")])
async def test_results_landing_after_stop_do_not_refuse_restart(tmp_path: Path, action: str, key: str) -> None:
    """Messages in flight at Stop are counted as they land: the remaining count falls while the
    Restart (or Send now) question is open. Fewer to send is within what was asked; refusing it
    sent the operator back to the menu again and again while results kept coming."""
    fx = await build_fixed(tmp_path / "d.db", sending=False, small=True)
    stopped = fx.ids["stopped"]
    app = dashboard(fx.db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.INACTIVE, stopped)
        await choose(pilot, action)
        await question(pilot)
        async with opened(fx.db) as store:
            await fake_progress(store, stopped, 1)  # one in flight at the stop is delivered now
        await pilot.press(key)
        await wait_for(lambda: any("joined the queue" in n or "restarted" in n for n in notices(app)), what=str(notices(app)))
    assert await state_of(fx.db, stopped) is MailingState.QUEUED


async def test_a_move_ahead_of_the_mailing_being_sent_behind_a_waiting_head_asks(tmp_path: Path) -> None:
    """The head waits only for its retries (queued, first) while the second is sent: Move up on
    the third put it ahead of the one being sent, and the sender switched to it, with no question
    (only a new first mailing counted as a new head)."""
    db = tmp_path / "q.db"
    async with opened(db) as store:
        lifecycle = Lifecycle(store)
        alpha = await new_mailing(store, tmp_path, "Alpha retries", 5)
        beta = await new_mailing(store, tmp_path, "Beta going", 20)
        gamma = await new_mailing(store, tmp_path, "Gamma next", 20)
        for mailing_id in (alpha, beta, gamma):
            await lifecycle.send_now(mailing_id)
        await fake_progress(store, alpha, 3, deferred=2)  # only retries left, not due yet
        await lifecycle.start(beta)  # the sender passes over Alpha (nothing due) to Beta
    app = dashboard(db)
    async with running(app, size=(120, 30)) as pilot:
        await focus_row(pilot, Section.CURRENT, gamma)
        await menu_pick(pilot, "move-up")
        dialog = await question(pilot)
        assert "goes ahead of “Beta going”, which is being sent" in dialog.message
        await pilot.press("enter")  # the safe choice
        await wait_for(lambda: app.screen is app.dashboard, what="the question to close")
        await focus_row(pilot, Section.CURRENT, alpha)
        await menu_pick(pilot, "move-down")  # Alpha behind Beta: the head changes, asked too
        await question(pilot)
        await pilot.press("enter")
    assert await queue_of(db) == [alpha, beta, gamma]
