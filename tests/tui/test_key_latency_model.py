"""Keys first (issue 11 item 16): what the dashboard does so that no key waits behind other work.

Speed itself is measured by tests/bench/bench_dashboard.py, never here: these tests check the
behaviour that makes it fast, and that the figures stay right with it.
- the refresh waits for a key's frame and runs right after it; never later than `late`;
- the Keys screen and the Actions menu are composed before their first key;
- a focus change repaints the panels it concerns, from lines already drawn in that look, and
  the panels' heights follow the focus once, after the key's frame.
"""

from __future__ import annotations

import gc
import time
import weakref
from datetime import datetime, timezone
from pathlib import Path

from mailtower.core.domain import Mailing, MailingState, Section
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.progress import hold_of
from mailtower.tui.actions import ActionsMenu
from mailtower.tui.help import HelpScreen
from mailtower.tui.refresh import KeysFirst, holds_for

from .conftest import build_fixed, new_mailing, wait_for
from .pilot import dashboard_app, opened, running, table


# ---- the model, without Textual ----------------------------------------------------------------


def test_a_tick_just_after_a_key_is_owed_not_run() -> None:
    keys = KeysFirst(quiet=0.3, late=1.0)
    keys.refreshed(10.0)
    keys.key(10.2)
    assert not keys.may_refresh(10.3)  # 0.1 s after the key: owed
    assert keys.take_owed()  # the key's frame is drawn: run it now
    assert not keys.take_owed()  # once


def test_a_tick_runs_when_the_keys_are_quiet() -> None:
    keys = KeysFirst(quiet=0.3, late=1.0)
    keys.refreshed(10.0)
    keys.key(10.2)
    assert keys.may_refresh(10.5)  # 0.3 s after the key
    assert not keys.take_owed()  # nothing was put off


def test_keys_never_hold_the_figures_back_longer_than_late() -> None:
    keys = KeysFirst(quiet=0.3, late=1.0)
    keys.refreshed(10.0)
    for step in range(1, 10):  # a held-down key: one every 0.1 s
        keys.key(10.0 + step * 0.1)
        assert not keys.may_refresh(10.0 + step * 0.1 + 0.01)
    keys.key(11.0)
    assert keys.may_refresh(11.01)  # a second since the last refresh: it runs whatever the keys do
    keys.refreshed(11.01)
    assert not keys.owed


# ---- the app ---------------------------------------------------------------------------------------


async def test_a_refresh_tick_during_a_key_waits_for_its_frame_then_shows_the_change(tmp_path: Path) -> None:
    fx = await build_fixed(tmp_path / "m.db", small=True)
    app = dashboard_app(fx.db, refresh_interval=60.0)  # the periodic tick comes when the test calls it
    async with running(app, size=(120, 40)) as pilot:
        app.keys_first.late = 60.0  # only the keys decide here
        async with opened(fx.db) as store:
            new_id = await new_mailing(store, tmp_path, "Late joiner", 3)
            await Lifecycle(store).send_now(new_id)
        current = table(app, Section.CURRENT)
        await wait_for(lambda: time.monotonic() - app._last_read >= 0.6, what="a read is due")
        renders = app.renders
        app.keys_first.key(time.monotonic())  # a key is being answered ...
        await app._tick()  # ... when the periodic tick comes: owed, not run
        assert app.renders == renders
        assert str(new_id) not in current.keys
        assert app.keys_first.owed
        # Right after the next key's frame the owed refresh runs, and the new mailing shows.
        await pilot.press("k")
        await wait_for(lambda: str(new_id) in current.keys, what="the owed refresh after the key's frame")
        assert not app.keys_first.owed


async def test_keys_pressed_without_pause_still_see_the_figures_refresh(tmp_path: Path) -> None:
    fx = await build_fixed(tmp_path / "m.db", small=True)
    app = dashboard_app(fx.db, refresh_interval=0.1)
    async with running(app, size=(120, 40)) as pilot:
        async with opened(fx.db) as store:
            new_id = await new_mailing(store, tmp_path, "Late joiner", 3)
            await Lifecycle(store).send_now(new_id)
        current = table(app, Section.CURRENT)
        for i in range(200):  # bounded: keys every ~0.05 s for at most ~10 s
            if str(new_id) in current.keys:
                break
            await pilot.press("j" if i % 2 else "k")
        assert str(new_id) in current.keys


async def test_the_keys_screen_and_the_actions_menu_are_composed_before_their_first_key(tmp_path: Path) -> None:
    fx = await build_fixed(tmp_path / "m.db", small=True)
    app = dashboard_app(fx.db)
    async with running(app, size=(120, 40)) as pilot:
        await wait_for(
            lambda: app._help_screen is not None and app._help_screen.is_running
            and app._actions_menu is not None and app._actions_menu.is_running,
            what="the Keys screen and the Actions menu composed",
        )
        menu = app._actions_menu
        assert menu is not None and menu.query_one("#offers") is not None
        assert app.screen is app.dashboard  # composed, not shown
        # The first `a` shows that menu, for the highlighted mailing.
        await pilot.press("a")
        await wait_for(lambda: isinstance(app.screen, ActionsMenu), what="the menu")
        assert app.screen is menu
        assert menu.mailing.id == fx.ids["spring"]
        await pilot.press("escape")
        await pilot.press("question_mark")
        await wait_for(lambda: isinstance(app.screen, HelpScreen), what="the Keys screen")
        assert app.screen is app._help_screen


async def test_the_menu_is_composed_once_the_first_mailing_appears(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    async with opened(db):
        pass
    app = dashboard_app(db, refresh_interval=0.1)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(lambda: bool(app.renders) and app._help_screen is not None, what="first render")
        assert app._actions_menu is None  # nothing to act on: no menu yet
        async with opened(db) as store:
            new_id = await new_mailing(store, tmp_path, "First one", 2)
        await wait_for(lambda: app._actions_menu is not None and app._actions_menu.is_running, what="menu composed")
        await pilot.press("tab", "tab")  # Inactive, where the draft is
        await pilot.press("a")
        await wait_for(lambda: isinstance(app.screen, ActionsMenu), what="the menu")
        assert app.screen.mailing.id == new_id


async def test_a_panel_returning_to_a_look_reuses_the_lines_it_drew_in_it(tmp_path: Path) -> None:
    fx = await build_fixed(tmp_path / "m.db", small=True)
    app = dashboard_app(fx.db)
    async with running(app, size=(120, 40)) as pilot:
        scheduled = table(app, Section.SCHEDULED)
        await wait_for(lambda: scheduled.row_count > 0, what="scheduled rows")
        unfocused = scheduled.render_line(2)  # a row that is not under the cursor
        await pilot.press("tab")
        await wait_for(lambda: app.dashboard.focused is scheduled, what="focus on Scheduled")
        focused = scheduled.render_line(2)
        assert focused is not unfocused  # another look (the focused panel's tint)
        await pilot.press("tab")
        await wait_for(lambda: app.dashboard.focused is table(app, Section.INACTIVE), what="focus on Inactive")
        assert scheduled.render_line(2) is unfocused  # drawn before in this look: not drawn again


async def test_tab_gives_the_focused_panel_the_larger_share_after_its_frame(tmp_path: Path) -> None:
    fx = await build_fixed(tmp_path / "m.db")
    app = dashboard_app(fx.db)
    async with running(app, size=(80, 16)) as pilot:
        current, scheduled = table(app, Section.CURRENT), table(app, Section.SCHEDULED)
        await wait_for(lambda: current.size.height > scheduled.size.height, what="Current focused and taller")
        before = scheduled.size.height
        await pilot.press("tab")
        await wait_for(lambda: scheduled.size.height > before, what="Scheduled taller once focused")
        assert app.dashboard.focused is scheduled
        assert scheduled.size.height >= current.size.height


async def test_moving_the_focus_does_not_repaint_the_whole_screen(tmp_path: Path) -> None:
    fx = await build_fixed(tmp_path / "m.db", small=True)
    app = dashboard_app(fx.db)
    async with running(app, size=(120, 40)) as pilot:
        dashboard = app.dashboard
        await pilot.pause()
        await wait_for(lambda: not dashboard._repaint_required, what="a settled screen")
        dashboard.set_focus(table(app, Section.SCHEDULED))
        assert not dashboard._repaint_required  # only the two panels repaint (their :focus styles)


async def test_a_menu_shown_again_after_a_new_theme_takes_the_theme(tmp_path: Path) -> None:
    fx = await build_fixed(tmp_path / "m.db", small=True)
    app = dashboard_app(fx.db)
    async with running(app, size=(120, 40)) as pilot:
        await pilot.press("a")
        await wait_for(lambda: isinstance(app.screen, ActionsMenu), what="the menu")
        menu = app.screen
        dark = menu.styles.background
        await pilot.press("escape")
        await wait_for(lambda: app.screen is app.dashboard, what="the dashboard")
        app.theme = "textual-light"
        await pilot.pause()
        await pilot.press("a")
        await wait_for(lambda: app.screen is menu, what="the menu again")
        await pilot.pause()
        assert menu.styles.background != dark  # its styles were refreshed for the new theme
        await pilot.press("escape")
        await pilot.press("a")  # and shown again in the same theme: the same styles
        await wait_for(lambda: app.screen is menu, what="the menu once more")
        assert menu.styles.background != dark


# ---- holds: only the mailings something can hold are asked -----------------------------------------


def _mailing(mailing_id: int, state: MailingState, *, remaining: int = 10, deferred: int = 0) -> Mailing:
    return Mailing(
        id=mailing_id, name=f"m{mailing_id}", subject="s", from_addr="a@example.com", text_body="x", html_body=None,
        state=state, position=mailing_id, schedule=None, missed=False, total=remaining, sent=0, failed=0,
        deferred=deferred, in_doubt=0, created_at=datetime(2099, 1, 1, tzinfo=timezone.utc), started_at=None,
        finished_at=None, last_error=None,
    )


def test_holds_for_asks_only_who_can_be_held_and_agrees_with_the_rule_for_everyone() -> None:
    current = [
        _mailing(1, MailingState.SENDING),
        _mailing(2, MailingState.QUEUED),
        _mailing(3, MailingState.QUEUED, remaining=4, deferred=4),  # retries only
        *(_mailing(i, MailingState.QUEUED) for i in range(4, 400)),
    ]
    when = "2099-01-01T10:00:00Z"
    documents: list[dict[str, object]] = [
        {},
        {"relays": []},
        {"relays": [{"relay": "r1", "state": "ok", "mailing": 1}]},
        {"relays": [{"relay": "r1", "state": "throttled", "mailing": 2, "reason": "slow down", "since": when}]},
        {"relays": [{"relay": "r1", "state": "resting", "mailing": 1, "reason": "refused", "since": when,
                     "next_try": when}], "all_unavailable": True},
        {"relays": [{"relay": "r1", "state": "paused", "mailing": 7, "reason": "auth", "since": when},
                    {"relay": "r2", "state": "throttled", "mailing": 1}, "not a dict"], "all_unavailable": True},
        {"relays": "garbage"},
    ]
    for retries in ({}, {3: 4_000_000_000.0}):
        for doc in documents:
            everyone = {m.id: h for m in current if (h := hold_of(doc, m, retries.get(m.id))) is not None}
            assert holds_for(current, doc, retries) == everyone, doc


# ---- the garbage collector runs at the refresh, not in the middle of keys ---------------------------


class _Cycle:
    def __init__(self) -> None:
        self.me = self


async def test_the_dashboard_collects_garbage_itself_and_gives_the_collector_back(tmp_path: Path) -> None:
    from mailtower.tui.collector import NEVER

    fx = await build_fixed(tmp_path / "m.db", small=True)
    assert gc.isenabled()
    thresholds = gc.get_threshold()
    app = dashboard_app(fx.db, refresh_interval=0.05)
    async with running(app, size=(120, 40)):
        await wait_for(lambda: app.collector.active, what="the collector taken over")
        # What exists once the kept screens are composed is frozen with the app (gc.freeze):
        # the garbage below is made after that.
        await wait_for(lambda: app._actions_menu is not None and app._actions_menu.is_running and not app._preparing,
                       what="the kept screens composed")
        # Only the youngest generation's short passes are automatic: no long pass can land in
        # the middle of a key.
        assert gc.isenabled() and gc.get_threshold()[1:] == (NEVER, NEVER)
        cycle = _Cycle()
        gone = weakref.ref(cycle)
        # Into the middle generation while still alive (no await in between: nothing else runs),
        # then garbage only a pass of that generation can free: the dashboard's, at a refresh.
        gc.collect(0)
        del cycle
        before = app.collector.collections
        await wait_for(lambda: gone() is None, what="the cycle collected at a refresh")
        assert app.collector.collections > before
    assert gc.isenabled() and gc.get_threshold() == thresholds  # given back when the dashboard ends


def test_a_due_full_collection_waits_for_a_pause_in_the_keys_but_not_for_ever() -> None:
    from mailtower.tui.collector import Collector

    collector = Collector(full_every=30.0, key_pause=2.0, max_delay=300.0)
    collector.take_over(0.0)
    try:
        assert not collector.full_pass_due(29.0)  # not due yet
        assert collector.full_pass_due(30.0)  # due, and no key ever came
        collector.key(29.5)
        assert not collector.full_pass_due(30.0)  # a key half a second ago: the typing goes on
        assert not collector.full_pass_due(31.4)
        assert collector.full_pass_due(31.5)  # two seconds without a key
        # Keys held down for five minutes, one every second: put off until 30 s + max_delay.
        due_at = []
        for second in range(30, 400):
            collector.key(float(second))
            if collector.full_pass_due(second + 0.5):
                due_at.append(second + 0.5)
        assert due_at[0] == 330.5  # then it runs whatever the keys do
    finally:
        collector.give_back()


async def test_no_full_collection_lands_inside_a_burst_of_keys(tmp_path: Path) -> None:
    """The full pass is the longest pause the dashboard makes (45 ms at full sending speed, more
    than a key may take): while keys keep coming it waits, and it runs once they pause."""
    fx = await build_fixed(tmp_path / "m.db", small=True)
    app = dashboard_app(fx.db, refresh_interval=0.05)
    async with running(app, size=(120, 40)) as pilot:
        await wait_for(lambda: app.collector.active, what="the collector taken over")
        # A pause long enough that no gap between two keys reaches it, on however loaded a
        # machine (CI once took over 0.6 s between two presses 0.1 s apart).
        app.collector.full_every, app.collector.key_pause = 0.1, 30.0
        await pilot.press("j")  # a key first: a refresh between the next line and the first key would find no key yet
        app.collector._full_at = time.monotonic()  # due now
        refreshes = app.collector.collections
        full = app.collector.full_collections
        for _ in range(200):  # bounded: keys 0.1 s apart until the refresh has run many times
            await pilot.press("j")
            await pilot.pause(0.1)
            if app.collector.collections >= refreshes + 10:
                break
        assert app.collector.collections >= refreshes + 10  # the refresh did collect meanwhile...
        assert app.collector.full_collections == full  # ...young generations only
        app.collector.key_pause = 0.6  # the keys have stopped: this pause passes soon
        await wait_for(lambda: app.collector.full_collections > full, what="the full pass after the keys paused")


def test_the_dashboards_own_sender_writes_the_ledger_off_the_keys_loop(tmp_path: Path) -> None:
    """`mailtower run` writes the ledger before each dot on its event loop's thread (fastest);
    the dashboard's in-process sender shares that loop with the keys, so its writes go to the
    database's thread (measured: j/k median 10.9 -> 5.8 ms, `a` max 56 -> 37 ms while sending)."""
    from mailtower.core.config import Settings
    from mailtower.core.sender import Sender
    from mailtower.tui.sender_host import SenderHost

    settings = Settings(db=tmp_path / "m.db")
    assert Sender(settings).inline_writes
    assert not SenderHost(settings).create().inline_writes
