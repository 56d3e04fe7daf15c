"""The dashboard driven through the keyboard (and a mouse), checked against the store."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from textual.command import CommandList, CommandPalette
from textual.pilot import Pilot
from textual.widgets import OptionList

from mailtower.core.domain import MailingState, RecipientState, Section
from mailtower.core.lease import SenderLease
from mailtower.core.lifecycle import Direction, Lifecycle
from mailtower.core.operations import Draft, create_mailing
from mailtower.core.sink import Sink, free_port
from mailtower.tui.actions import ActionsMenu
from mailtower.tui.app import DashboardApp, handoff_command, launch_background_sender, settings_environment
from mailtower.tui.header import HeaderLine
from mailtower.tui.help import HelpScreen
from mailtower.tui.rows import count, duration, progress_bar, to_text
from tests.helpers import until

from .conftest import (
    FIXED_NOW,
    OPERATOR_TZ,
    Clock,
    Fixture,
    HeldLease,
    build_fixed,
    new_mailing,
    put_sender_meta,
    settings_for,
    wait_for,
)
from .pilot import dashboard_app, focus_row, opened, running, state_of, table


# ---- helpers ---------------------------------------------------------------------------------


async def choose(pilot: Pilot[int], key: str, *, opener: str = "a") -> ActionsMenu:
    """Open the Actions menu and pick the entry `key` with the arrow keys and Enter."""
    app = pilot.app
    await pilot.press(opener)
    await wait_for(lambda: isinstance(app.screen, ActionsMenu), what="the Actions menu")
    return await pick(pilot, key)


async def pick(pilot: Pilot[int], key: str) -> ActionsMenu:
    menu = pilot.app.screen
    assert isinstance(menu, ActionsMenu)
    options = menu.query_one(OptionList)
    for _ in range(len(menu.offers) + 1):
        if options.highlighted_option is not None and options.highlighted_option.id == key:
            break
        await pilot.press("down")
    assert options.highlighted_option is not None and options.highlighted_option.id == key, [o.key for o in menu.offers]
    await pilot.press("enter")
    return menu


async def confirm(pilot: Pilot[int]) -> None:
    """Say yes: Enter to a harmless question, the key its button shows to a destructive one."""
    from mailtower.tui.screens.confirm import ConfirmDialog

    await wait_for(lambda: isinstance(pilot.app.screen, ConfirmDialog), what="the confirmation")
    dialog = pilot.app.screen
    assert isinstance(dialog, ConfirmDialog)
    await pilot.press(dialog.key or "enter")


async def until_state(db: Path, mailing_id: int, state: MailingState | None, timeout: float = 5.0) -> None:
    async def reached() -> bool:
        return await state_of(db, mailing_id) is state

    await wait_for(reached, timeout, what=f"mailing {mailing_id} to be {state}")


# ---- rows and formats --------------------------------------------------------------------------


def test_formats() -> None:
    assert to_text(progress_bar(52, 100, 10)).plain == " █████▏░░░░  52%"
    assert to_text(progress_bar(0, 0, 4)).plain == " ████ 100%"
    assert to_text(progress_bar(99_999, 100_000, 4)).plain.endswith(" 99%")  # never 100% before the end
    assert count(12_345, True) == "12.3k" and count(12_345, False) == "12,345" and count(2_500_000, True) == "2.5M"
    assert duration(7500, False) == "2 h 05 min" and duration(7500, True) == "2h05m" and duration(42, True) == "42s"


async def test_three_panels_show_the_store(fixed_db: Fixture) -> None:
    app = dashboard_app(fixed_db.db)
    async with running(app, size=(120, 40)):
        current, scheduled, inactive = (table(app, s) for s in Section)
        ids = fixed_db.ids
        assert current.keys == [str(ids[k]) for k in ("spring", "news", "launch")]
        assert scheduled.keys == [str(ids[k]) for k in ("missed", "tokyo", "ny", "berlin")]
        assert inactive.keys == [str(ids[k]) for k in ("stopped", "done", "draft")]
        assert current.border_title == "Current (3)"
        assert scheduled.border_title == "Scheduled (4)"
        assert inactive.border_title == "Inactive (3)"
        spring = [c.plain for c in current.get_row(str(ids["spring"]))]
        assert spring[1].strip() == "Spring sale — Europe" and "52%" in spring[2] and spring[3] == "624/1,200"
        tokyo = [c.plain for c in scheduled.get_row(str(ids["tokyo"]))]
        assert tokyo[1].strip() == "2099-05-31 21:30 Asia/Tokyo"
        assert tokyo[2].strip() == "2099-05-31 14:30 CEST"  # the operator is in Europe/Berlin
        assert tokyo[3] == "in 2 h 30 min"
        assert [c.plain for c in scheduled.get_row(str(ids["missed"]))][3] == "MISSED"
        outcomes = [inactive.get_row(str(ids[k]))[1].plain.strip() for k in ("stopped", "done", "draft")]
        assert outcomes == ["stopped", "completed", "draft"]
        assert "Europe/Berlin" in app.dashboard.query_one(HeaderLine).plain
        assert "tzdata" in app.dashboard.query_one(HeaderLine).plain


async def test_markup_in_names_is_shown_as_text(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    async with opened(db) as store:
        mid = await new_mailing(store, tmp_path, "[bold]Sale[/bold] [link=x]", 3)
    app = dashboard_app(db)
    async with running(app, size=(120, 30)):
        name = table(app, Section.INACTIVE).get_row(str(mid))[0].plain
        assert name.strip() == "[bold]Sale[/bold] [link=x]"


# ---- keys ----------------------------------------------------------------------------------------


async def test_columns_follow_the_terminal_width(fixed_db: Fixture) -> None:
    app = dashboard_app(fixed_db.db)
    async with running(app, size=(80, 24)) as pilot:
        current = table(app, Section.CURRENT)
        await focus_row(pilot, Section.CURRENT, fixed_db.ids["launch"])
        assert current.layout_spec is not None and current.layout_spec.compact
        await pilot.resize_terminal(130, 40)
        await wait_for(lambda: current.layout_spec is not None and not current.layout_spec.compact)
        await wait_for(lambda: len(current.keys) == 3)
        assert current.highlighted_key() == str(fixed_db.ids["launch"])
        assert sum(c.width for c in current.layout_spec.columns) == 130 - 3


async def test_tab_and_jk_move_between_and_within_panels(fixed_db: Fixture) -> None:
    app = dashboard_app(fixed_db.db)
    async with running(app) as pilot:
        assert app.dashboard.focused is table(app, Section.CURRENT)
        await pilot.press("j", "j")
        assert table(app, Section.CURRENT).cursor_row == 2
        await pilot.press("k")
        assert table(app, Section.CURRENT).cursor_row == 1
        await pilot.press("down")
        assert table(app, Section.CURRENT).cursor_row == 2
        await pilot.press("tab")
        assert app.dashboard.focused is table(app, Section.SCHEDULED)
        await pilot.press("tab")
        assert app.dashboard.focused is table(app, Section.INACTIVE)
        await pilot.press("shift+tab", "shift+tab")
        assert app.dashboard.focused is table(app, Section.CURRENT)
        assert table(app, Section.CURRENT).cursor_row == 2  # each panel keeps its own place


async def test_help_lists_keys_and_escape_closes(fixed_db: Fixture) -> None:
    app = dashboard_app(fixed_db.db)
    async with running(app) as pilot:
        await pilot.press("question_mark")
        await wait_for(lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("escape")
        await wait_for(lambda: app.screen is app.dashboard)
        await pilot.press("a")
        await wait_for(lambda: isinstance(app.screen, ActionsMenu))
        await pilot.press("escape")
        await wait_for(lambda: app.screen is app.dashboard)


async def test_mouse_focuses_a_panel_and_opens_actions(fixed_db: Fixture) -> None:
    app = dashboard_app(fixed_db.db)
    async with running(app, size=(120, 40)) as pilot:
        inactive = table(app, Section.INACTIVE)
        await pilot.click(inactive, offset=(5, 2))  # first data row
        assert app.dashboard.focused is inactive
        assert inactive.highlighted_key() == str(fixed_db.ids["stopped"])
        await pilot.click(inactive, offset=(5, 2))  # clicking the highlighted row opens its actions
        await wait_for(lambda: isinstance(app.screen, ActionsMenu))
        assert app.screen.mailing.id == fixed_db.ids["stopped"]  # type: ignore[attr-defined]


# ---- actions, section by section ---------------------------------------------------------------


async def test_current_move_down_up_and_cursor_follows(fixed_db: Fixture) -> None:
    ids = fixed_db.ids
    app = dashboard_app(fixed_db.db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.CURRENT, ids["news"])
        await choose(pilot, "move-down")
        current = table(app, Section.CURRENT)
        await wait_for(lambda: current.keys == [str(ids[k]) for k in ("spring", "launch", "news")])
        assert current.highlighted_key() == str(ids["news"])
        await choose(pilot, "move-up")
        await choose(pilot, "move-up")
        await confirm(pilot)  # to the head of the queue: it asks first (its key, m)
        await wait_for(lambda: current.keys == [str(ids[k]) for k in ("news", "spring", "launch")])
        assert current.highlighted_key() == str(ids["news"])
    async with opened(fixed_db.db) as store:
        assert [m.id for m in await store.mailings(Section.CURRENT)] == [ids["news"], ids["spring"], ids["launch"]]


async def test_current_cancel_sending_asks_then_stops(fixed_db: Fixture) -> None:
    from mailtower.tui.screens.confirm import ConfirmDialog

    ids = fixed_db.ids
    app = dashboard_app(fixed_db.db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.CURRENT, ids["spring"])
        await choose(pilot, "stop")
        await wait_for(lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("escape")  # changed their mind: nothing happens
        await wait_for(lambda: app.screen is app.dashboard)
        assert await state_of(fixed_db.db, ids["spring"]) is MailingState.SENDING
        await choose(pilot, "stop")
        await confirm(pilot)
        await until_state(fixed_db.db, ids["spring"], MailingState.STOPPED)
        await wait_for(lambda: str(ids["spring"]) in table(app, Section.INACTIVE).keys)
        assert str(ids["spring"]) not in table(app, Section.CURRENT).keys


async def test_details_opens_for_every_section(fixed_db: Fixture) -> None:
    from mailtower.tui.screens.details import DetailsScreen

    ids = fixed_db.ids
    app = dashboard_app(fixed_db.db)
    async with running(app) as pilot:
        for section, key in ((Section.CURRENT, "spring"), (Section.SCHEDULED, "tokyo"), (Section.INACTIVE, "done")):
            await focus_row(pilot, section, ids[key])
            await choose(pilot, "details")
            await wait_for(lambda: isinstance(app.screen, DetailsScreen), what="details")
            assert app.screen.mailing.id == ids[key]  # type: ignore[attr-defined]
            await pilot.press("escape")
            await wait_for(lambda: app.screen is app.dashboard)


async def test_scheduled_send_now_and_set_schedule(fixed_db: Fixture) -> None:
    from mailtower.tui.screens.schedule import ScheduleDialog

    ids = fixed_db.ids
    app = dashboard_app(fixed_db.db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.SCHEDULED, ids["tokyo"])
        await choose(pilot, "send-now")
        await confirm(pilot)  # it brings the schedule forward: it asks first
        await until_state(fixed_db.db, ids["tokyo"], MailingState.QUEUED)
        await wait_for(lambda: table(app, Section.CURRENT).keys[-1] == str(ids["tokyo"]))
        # Set Schedule on another: type a new date in the dialog and press Enter.
        await focus_row(pilot, Section.SCHEDULED, ids["ny"])
        await choose(pilot, "schedule")
        await wait_for(lambda: isinstance(app.screen, ScheduleDialog))
        await pilot.press("home", "ctrl+k", *"2099-07-04", "enter")
        await wait_for(lambda: app.screen is app.dashboard, what="the dialog to close")
    async with opened(fixed_db.db) as store:
        ny = await store.mailing(ids["ny"])
    assert ny.state is MailingState.SCHEDULED and ny.schedule is not None
    assert ny.schedule.local.date().isoformat() == "2099-07-04" and ny.schedule.tz == "America/New_York"


async def test_scheduled_cancel_is_withheld_while_sending(fixed_db: Fixture) -> None:
    ids = fixed_db.ids
    app = dashboard_app(fixed_db.db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.SCHEDULED, ids["berlin"])
        await pilot.press("a")
        await wait_for(lambda: isinstance(app.screen, ActionsMenu))
        menu = app.screen
        assert isinstance(menu, ActionsMenu)
        options = menu.query_one(OptionList)
        # The seed: while a mailing is being sent, Cancel is not offered at all; the menu says why.
        ids_shown = [options.get_option_at_index(i).id for i in range(options.option_count)]
        assert "unschedule" not in ids_shown and "schedule" in ids_shown
        why = str(menu.query_one("#why").render())
        assert "Cancel is not offered now" in why and "stop the current mailing first" in why
        await pilot.press("escape")
    assert await state_of(fixed_db.db, ids["berlin"]) is MailingState.SCHEDULED


async def test_scheduled_cancel_when_nothing_sends(tmp_path: Path) -> None:
    fx = await build_fixed(tmp_path / "idle.db", sending=False, small=True)
    app = dashboard_app(fx.db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.SCHEDULED, fx.ids["berlin"])
        await choose(pilot, "unschedule")
        await confirm(pilot)
        await until_state(fx.db, fx.ids["berlin"], MailingState.DRAFT)
        await wait_for(lambda: str(fx.ids["berlin"]) in table(app, Section.INACTIVE).keys)


async def test_inactive_restart_send_now_delete(fixed_db: Fixture) -> None:
    ids = fixed_db.ids
    app = dashboard_app(fixed_db.db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.INACTIVE, ids["stopped"])
        await choose(pilot, "restart")
        await confirm(pilot)  # restart sends again: it asks first
        await until_state(fixed_db.db, ids["stopped"], MailingState.QUEUED)
        await focus_row(pilot, Section.INACTIVE, ids["draft"])
        await choose(pilot, "send-now", opener="enter")
        await confirm(pilot)
        await until_state(fixed_db.db, ids["draft"], MailingState.QUEUED)
        await focus_row(pilot, Section.INACTIVE, ids["done"])
        await choose(pilot, "delete")
        await confirm(pilot)
        await until_state(fixed_db.db, ids["done"], None)
        await wait_for(lambda: table(app, Section.INACTIVE).keys == [])
        assert table(app, Section.CURRENT).keys[-2:] == [str(ids["stopped"]), str(ids["draft"])]
    async with opened(fixed_db.db) as store:
        restarted = await store.mailing(ids["stopped"])
    assert restarted.position is not None and restarted.remaining == 200 - 50 - 2


async def test_inactive_set_schedule_default_and_in_each_recipients_zone(tmp_path: Path) -> None:
    from mailtower.tui.screens.schedule import ScheduleDialog

    db = tmp_path / "zones.db"
    rows = "email,name,tz\n" + "".join(
        f"p{i}@example.com,P {i},{zone}\n" for i, zone in enumerate(["Asia/Tokyo", "Europe/Paris"] * 3)
    )
    (tmp_path / "zones.csv").write_text(rows, encoding="utf-8")
    async with opened(db) as store:
        draft = Draft("World tour", "Hi", "news@example.com", "Hello", None)
        world, _ = await create_mailing(store, draft, tmp_path / "zones.csv", lambda row: None)
        plain = await new_mailing(store, tmp_path, "Plain draft", 5)
    app = dashboard_app(db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.INACTIVE, plain)
        await choose(pilot, "schedule")
        await wait_for(lambda: isinstance(app.screen, ScheduleDialog))
        # No date until one is typed (Enter alone schedules nothing: tests/tui/test_reflex_keys.py);
        # the hour (09:00) and the zone (the operator's) are filled in.
        await pilot.press(*"2099-06-01", "enter")
        await until_state(db, plain, MailingState.SCHEDULED)
        await focus_row(pilot, Section.INACTIVE, world)
        await choose(pilot, "schedule")
        await wait_for(lambda: isinstance(app.screen, ScheduleDialog))
        await pilot.press("home", "ctrl+k", *"2099-06-01", "tab", "tab", "tab")
        assert app.screen.focused is app.screen.query_one("#local-time")
        await pilot.press("space", "ctrl+s")  # tick "each recipient's zone", submit
        # One wave per instant, and the waves of one schedule share one row (issue 14).
        await wait_for(lambda: len(table(app, Section.SCHEDULED).keys) == 2, what="one row for the waves")
    async with opened(db) as store:
        scheduled = await store.mailings(Section.SCHEDULED)
    zones = sorted(m.schedule.tz for m in scheduled if m.id != plain)  # type: ignore[union-attr]
    assert zones == ["Asia/Tokyo", "Europe/Paris"]
    assert all(m.schedule.local == datetime(2099, 6, 1, 9, 0) for m in scheduled if m.id != plain)  # type: ignore[union-attr]


async def test_inactive_view_remaining_recipients(fixed_db: Fixture) -> None:
    from mailtower.tui.screens.remaining import RemainingScreen

    app = dashboard_app(fixed_db.db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.INACTIVE, fixed_db.ids["stopped"])
        await choose(pilot, "remaining")
        await wait_for(lambda: isinstance(app.screen, RemainingScreen))
        await pilot.press("escape")
        await wait_for(lambda: app.screen is app.dashboard)


async def test_refused_action_is_one_error_notice(fixed_db: Fixture) -> None:
    """Cancel was chosen (nothing was sending), but by the time it is confirmed something is."""
    from mailtower.tui.screens.confirm import ConfirmDialog

    ids = fixed_db.ids
    async with opened(fixed_db.db) as store:
        await Lifecycle(store).stop(ids["spring"])
    app = dashboard_app(fixed_db.db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.SCHEDULED, ids["tokyo"])
        await pilot.press("a")
        await wait_for(lambda: isinstance(app.screen, ActionsMenu))
        await pick(pilot, "unschedule")
        await wait_for(lambda: isinstance(app.screen, ConfirmDialog), what="the confirmation")
        async with opened(fixed_db.db) as store:
            await Lifecycle(store).start(ids["news"])  # another process starts sending
        await confirm(pilot)
        await wait_for(lambda: any("cannot be cancelled" in n.message for n in app._notifications))
    assert await state_of(fixed_db.db, ids["tokyo"]) is MailingState.SCHEDULED


async def test_command_palette_runs_an_action_on_the_highlighted_mailing(fixed_db: Fixture) -> None:
    ids = fixed_db.ids
    app = dashboard_app(fixed_db.db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.INACTIVE, ids["stopped"])
        await pilot.press("ctrl+p")
        await pilot.press(*"restart")
        # The palette searches in the background: wait until the restart command is highlighted.
        def restart_highlighted() -> bool:
            if not isinstance(app.screen, CommandPalette):
                return False
            option = app.screen.query_one(CommandList).highlighted_option
            return option is not None and "Restart" in str(option.prompt)

        await until(pilot, restart_highlighted)
        await pilot.press("enter")
        await confirm(pilot)
        await until_state(fixed_db.db, ids["stopped"], MailingState.QUEUED)
        commands = [c.title for c in app.palette_commands()]
        assert "Go to Scheduled" in commands and "Quit" in commands


# ---- refresh, monitor mode, take-over -------------------------------------------------------------


async def test_changes_by_another_process_show_within_a_second_and_cursor_stays(fixed_db: Fixture) -> None:
    ids = fixed_db.ids
    app = dashboard_app(fixed_db.db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.CURRENT, ids["launch"])
        async with opened(fixed_db.db) as store:
            await Lifecycle(store).move(ids["launch"], Direction.TOP)
        current = table(app, Section.CURRENT)
        await wait_for(lambda: current.keys[0] == str(ids["launch"]), timeout=2.0)
        assert current.highlighted_key() == str(ids["launch"])
        written = app.cells_written
        await pilot.pause(1.2)
        assert app.cells_written == written  # nothing changed: nothing rewritten


async def test_monitor_mode_shows_who_sends_and_actions_still_work(fixed_db: Fixture, held_lease: HeldLease) -> None:
    clock = Clock()
    await put_sender_meta(fixed_db.db, clock())
    app = dashboard_app(fixed_db.db, clock, start_sender=True)
    async with running(app, size=(120, 30)) as pilot:
        header = app.dashboard.query_one(HeaderLine)
        await wait_for(lambda: "monitoring mailtower run (pid 4242 on ops-1)" in header.plain)
        assert "sending 42.5 msg/s" in header.plain and "last accepted 3 s ago" in header.plain
        assert app.sender is None
        await focus_row(pilot, Section.INACTIVE, fixed_db.ids["draft"])
        await choose(pilot, "send-now")
        await confirm(pilot)
        await until_state(fixed_db.db, fixed_db.ids["draft"], MailingState.QUEUED)


async def test_header_turns_stalled_when_nothing_is_accepted(fixed_db: Fixture, held_lease: HeldLease) -> None:
    clock = Clock()
    await put_sender_meta(fixed_db.db, clock())
    app = dashboard_app(fixed_db.db, clock, stall_after=30.0)
    async with running(app, size=(120, 30)):
        header = app.dashboard.query_one(HeaderLine)
        await wait_for(lambda: "sending" in header.plain)
        assert "STALLED" not in header.plain
        # The sender stays alive (its heartbeat keeps coming) but the server accepts nothing.
        later = FIXED_NOW + timedelta(seconds=40)
        await put_sender_meta(fixed_db.db, later, accepted_ago=43)
        await wait_for(lambda: app._remote is not None and app._remote.heartbeat == round(later.timestamp(), 3), timeout=3.0)
        clock.advance(40)
        await wait_for(lambda: "STALLED" in header.plain, timeout=3.0)
        assert "last accepted 43 s ago" in header.plain


async def test_waiting_for_a_dead_server_is_shown_and_stalls(tmp_path: Path) -> None:
    db = tmp_path / "down.db"
    async with opened(db) as store:
        mid = await new_mailing(store, tmp_path, "Nobody listens", 20)
        await Lifecycle(store).send_now(mid)
    settings = settings_for(db, free_port(), connect_backoff_max=0.5)
    app = DashboardApp(settings, operator_tz=OPERATOR_TZ, stall_after=1.0)
    async with running(app, size=(120, 30)):
        header = app.dashboard.query_one(HeaderLine)
        await wait_for(lambda: "waiting: cannot reach the server" in header.plain, timeout=10)
        await wait_for(lambda: "STALLED" in header.plain, timeout=10)
        await app.leave(ask=False, hand_off=False).wait()
    assert not SenderLease(db).holder()


async def test_sending_in_process_moves_the_progress(tmp_path: Path, sink: Sink) -> None:
    db = tmp_path / "live.db"
    async with opened(db) as store:
        mid = await new_mailing(store, tmp_path, "Live one", 400)
        await Lifecycle(store).send_now(mid)
    # 4 s of sending: the Current row is looked at many times before it completes, on any host.
    app = DashboardApp(settings_for(db, sink.port, rate=100.0), operator_tz=OPERATOR_TZ, hand_off_on_quit=False)
    async with running(app, size=(120, 30)) as pilot:
        current = table(app, Section.CURRENT)
        header = app.dashboard.query_one(HeaderLine)
        await wait_for(lambda: "sending" in header.plain and "msg/s" in header.plain, timeout=10)

        def sent_shown() -> int:
            if str(mid) not in current.keys:
                return -1
            return int(current.get_row(str(mid))[3].plain.split("/")[0].replace(",", ""))

        shown: set[int] = set()  # every count the Current row showed, however late the first look

        def moved_or_done() -> bool:
            if sent_shown() > 0:
                shown.add(sent_shown())
            return len(shown) >= 2 or str(mid) in table(app, Section.INACTIVE).keys

        await wait_for(moved_or_done, timeout=20)
        assert app.sender is not None
        await wait_for(lambda: str(mid) in table(app, Section.INACTIVE).keys, timeout=20)
        assert len(shown) >= 2, shown  # the progress moved while it was Current
        await pilot.press("q")  # nothing left: quits without asking
        await wait_for(lambda: app._exit, timeout=10)
    assert sorted(sink.received().values()) == [1] * 400


async def test_takes_the_lease_over_when_the_other_sender_goes(fixed_db: Fixture, sink: Sink) -> None:
    lease = HeldLease(fixed_db.db)
    app = DashboardApp(settings_for(fixed_db.db, sink.port), now=Clock(), operator_tz=OPERATOR_TZ)
    try:
        async with running(app, size=(120, 30)):
            await wait_for(lambda: "monitoring" in app.dashboard.query_one(HeaderLine).plain)
            lease.release()
            await wait_for(lambda: app.sender is not None, timeout=5, what="the take-over")

            def ours() -> bool:
                holder = SenderLease(fixed_db.db).holder()
                return holder is not None and holder.what == "dashboard" and holder.pid == os.getpid()

            await wait_for(ours, timeout=5, what="the lease to be ours")
            await app.leave(ask=False, hand_off=False).wait()
    finally:
        lease.release()
    assert SenderLease(fixed_db.db).holder() is None


# ---- leaving -----------------------------------------------------------------------------------


class Launcher:
    """Stands in for the detached `mailtower run`: records the call and whether the lease was free."""

    def __init__(self) -> None:
        self.calls: list[object] = []
        self.lease_free_at_launch: bool | None = None

    def __call__(self, settings: object) -> None:
        self.calls.append(settings)
        self.lease_free_at_launch = SenderLease(settings.db).holder() is None  # type: ignore[attr-defined]


async def test_quit_with_work_asks_stops_the_sender_and_hands_off(tmp_path: Path, sink: Sink) -> None:
    from mailtower.tui.screens.confirm import ConfirmDialog

    db = tmp_path / "quit.db"
    async with opened(db) as store:
        mid = await new_mailing(store, tmp_path, "Long one", 2000)
        await Lifecycle(store).send_now(mid)
    launcher = Launcher()
    settings = settings_for(db, sink.port, rate=100.0)
    app = DashboardApp(settings, operator_tz=OPERATOR_TZ, handoff=launcher)
    async with running(app) as pilot:
        await wait_for(lambda: app.sender is not None and app.sender.snapshot.rate > 0, timeout=10)
        await pilot.press("q")
        await wait_for(lambda: isinstance(app.screen, ConfirmDialog))
        assert "continues in the background" in str(app.screen.query_one("#confirm-message").render())
        await pilot.press("escape")  # no: keep watching
        await wait_for(lambda: app.screen is app.dashboard)
        assert app.sender is not None and not launcher.calls
        await pilot.press("q")
        await confirm(pilot)
        await wait_for(lambda: app._exit, timeout=20, what="exit")
    assert launcher.calls == [settings] and launcher.lease_free_at_launch
    async with opened(db) as store:
        counts = await store.state_counts(mid)
        mailing = await store.mailing(mid)
    assert RecipientState.SENDING.value not in counts  # stopped gracefully: nothing left in flight
    assert counts.get("sent", 0) == mailing.sent == len(sink.received()) > 0


async def test_quit_without_work_does_not_ask_or_hand_off(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    launcher = Launcher()
    app = dashboard_app(db, handoff=launcher)
    async with running(app) as pilot:
        await pilot.press("q")
        await wait_for(lambda: app._exit, timeout=5)
    assert launcher.calls == []


async def test_quit_while_another_process_sends_does_not_hand_off(fixed_db: Fixture, held_lease: HeldLease) -> None:
    launcher = Launcher()
    app = dashboard_app(fixed_db.db, handoff=launcher)
    async with running(app) as pilot:
        await pilot.press("q")
        await wait_for(lambda: app._exit, timeout=5)
    assert launcher.calls == []


async def test_sighup_hands_off_without_asking(fixed_db: Fixture) -> None:
    launcher = Launcher()
    app = dashboard_app(fixed_db.db, handoff=launcher)
    async with running(app):
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(lambda: app._exit, timeout=5)
    assert len(launcher.calls) == 1


def test_handoff_command_carries_the_settings(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "x.db", 2626, rate=12.5, smtp_verify=False)
    command = handoff_command(settings)
    assert command[:3] == [sys.executable, "-m", "mailtower.tui.cli"]
    assert command[3:] == ["--db", str(tmp_path / "x.db"), "run", "--until-idle", "--log", str(tmp_path / "x.db.run.log")]
    env = settings_environment(settings)
    assert env["MAILTOWER_SMTP_PORT"] == "2626" and env["MAILTOWER_RATE"] == "12.5"
    assert env["MAILTOWER_SMTP_VERIFY"] == "false" and env["MAILTOWER_DB"] == str(tmp_path / "x.db")
    # A relay pool lives in the TOML file: the background sender reads the same file.
    pooled = settings_for(tmp_path / "x.db", config_path=tmp_path / "pool.toml")
    assert handoff_command(pooled)[3:] == ["--db", str(tmp_path / "x.db"), "--config", str(tmp_path / "pool.toml"),
                                           "run", "--until-idle", "--log", str(tmp_path / "x.db.run.log")]


@pytest.mark.timeout(120)
async def test_real_hand_off_finishes_the_mailing_exactly_once(
    tmp_path: Path, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILTOWER_CONFIG", os.devnull)
    db = tmp_path / "handoff.db"
    n = 2000
    async with opened(db) as store:
        mid = await new_mailing(store, tmp_path, "Hand me off", n)
        await Lifecycle(store).send_now(mid)
    launched: list[subprocess.Popen[bytes]] = []

    def launch(settings: object) -> subprocess.Popen[bytes]:
        proc = launch_background_sender(settings)  # type: ignore[arg-type]
        launched.append(proc)
        return proc

    app = DashboardApp(settings_for(db, sink.port, rate=200.0), operator_tz=OPERATOR_TZ, handoff=launch)
    async with running(app) as pilot:
        await wait_for(lambda: len(sink.received()) >= 50, timeout=20, what="some mail going out")
        await pilot.press("q")
        await confirm(pilot)
        await wait_for(lambda: app._exit, timeout=20)
    assert len(launched) == 1
    handed_at = len(sink.received())
    assert handed_at < n, "the mailing finished before the hand-off; make it bigger"
    deadline = time.monotonic() + 90
    while launched[0].poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert launched[0].returncode == 0, (tmp_path / "handoff.db.run.log").read_text()
    received = sink.received()
    assert len(received) == n and set(received.values()) == {1}
    async with opened(db) as store:
        assert (await store.mailing(mid)).state is MailingState.COMPLETED
        assert await store.state_counts(mid) == {"sent": n}
    assert oct((tmp_path / "handoff.db.run.log").stat().st_mode & 0o777) == "0o600"


async def test_security_warning_line_and_limits_key(fixed_db: Fixture) -> None:
    from mailtower.tui.header import NoticeLine
    from mailtower.tui.screens.limits import LimitsScreen

    settings = settings_for(fixed_db.db, smtp_tls="starttls", smtp_verify=False)
    app = dashboard_app(fixed_db.db, settings=settings)
    async with running(app) as pilot:
        notice = app.screen.query_one(NoticeLine)
        await wait_for(lambda: "not verified" in notice.text.plain, what="the warning line")
        assert notice.display
        await pilot.press("l")
        await wait_for(lambda: isinstance(app.screen, LimitsScreen), what="the limits screen")
        await pilot.press("escape")
        await wait_for(lambda: not isinstance(app.screen, LimitsScreen), what="back")


def test_relay_pool_line_names_each_relay() -> None:
    from mailtower.core.relays import RelayStatus
    from mailtower.tui.header import notice_text

    assert notice_text([], (RelayStatus("127.0.0.1:25", "up", "", 50.0, 4),)).plain == ""
    line = notice_text([], (RelayStatus("mx-a", "up", "", 512.0, 8), RelayStatus("mx-b", "resting", "cannot reach the server", 0.0, 4))).plain
    assert "mx-a up 512/s" in line and "mx-b resting (cannot reach the server)" in line


async def test_a_long_panel_draws_rows_as_they_come_into_view(tmp_path: Path) -> None:
    db = tmp_path / "long.db"
    async with opened(db) as store:
        async with store.write() as tx:
            for i in range(400):
                await tx.insert_mailing(name=f"Draft number {i:03d}", subject="s", from_addr="a@example.org",
                                        text_body="x", html_body=None, fields=())
    app = dashboard_app(db)
    async with running(app) as pilot:
        inactive = table(app, Section.INACTIVE)
        inactive.focus()
        assert len(inactive.keys) == 400
        far = inactive.keys[-1]
        assert str(inactive.get_row(far)[0]) == ""  # not drawn while far out of view
        await pilot.press("ctrl+end")
        await wait_for(lambda: "Draft number" in str(inactive.get_row(far)[0]), what="the last row drawn")
        on_screen = inactive.scrollable_content_region.height - 1  # below the column labels
        assert on_screen >= 3
        for key in inactive.keys[-on_screen:]:
            assert "Draft number" in str(inactive.get_row(key)[0])
