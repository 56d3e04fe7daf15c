"""The operator's dashboard, safe by default (issue 11).

Destructive questions open on the safe choice and take their own key; the limits dialog replaces
what is typed over and asks before more than doubling a pace; the Actions menu follows the
present while open; the demo says why `q` ends it at once; `/` filters the three panels and
Home/End/g/G jump in them; the queue offers only moves that move; ids read as ids; panels are as
tall as their rows. Everything runs on real SQLite files through Textual's Pilot; the snapshots
use a frozen clock and a sender "in another process" (a held lease with fixed words).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from textual.geometry import Region
from textual.pilot import Pilot
from textual.widget import Widget
from textual.widgets import Button, Input, OptionList, Static

from mailtower.core.domain import MailingState, Section
from mailtower.core.limits import read_limits
from mailtower.core.lifecycle import Direction, Lifecycle
from mailtower.core.operations import Draft, create_mailing
from mailtower.tui.actions import ActionsMenu
from mailtower.tui.app import DashboardApp
from mailtower.tui.help import HelpScreen
from mailtower.tui.panels import MailingTable
from mailtower.tui.screens.confirm import ConfirmDialog
from mailtower.tui.screens.limits import LimitsScreen
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
    write_recipients,
)
from .pilot import dashboard_app as dashboard, focus_row, opened, running, state_of, table

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]


# ---- helpers ---------------------------------------------------------------------------------




def menu_keys(menu: ActionsMenu) -> list[str | None]:
    options = menu.query_one(OptionList)
    return [options.get_option_at_index(i).id for i in range(options.option_count)]


async def open_menu(pilot: Pilot[int], opener: str = "a") -> ActionsMenu:
    app = pilot.app
    await pilot.press(opener)
    await wait_for(lambda: isinstance(app.screen, ActionsMenu) and app.screen.is_mounted, what="the Actions menu")
    return app.screen  # type: ignore[return-value]


async def choose(pilot: Pilot[int], key: str) -> None:
    """Open the Actions menu and pick the entry `key` with the arrow keys and Enter."""
    menu = await open_menu(pilot)
    options = menu.query_one(OptionList)
    for _ in range(options.option_count + 1):
        if options.highlighted_option is not None and options.highlighted_option.id == key:
            break
        await pilot.press("down")
    assert options.highlighted_option is not None and options.highlighted_option.id == key, menu_keys(menu)
    await pilot.press("enter")


async def question(pilot: Pilot[int]) -> ConfirmDialog:
    await wait_for(lambda: isinstance(pilot.app.screen, ConfirmDialog) and pilot.app.screen.is_mounted, what="the question")
    await pilot.pause()
    return pilot.app.screen  # type: ignore[return-value]


def why_text(menu: ActionsMenu) -> str:
    why = menu.query_one("#why", Static)
    return str(why.render()) if why.display and not why.has_class("-empty") else ""


def text_of(widget: Widget) -> str:
    """What a widget draws, its border included."""
    width, height = widget.outer_size
    return "\n".join(strip.text.rstrip() for strip in widget.render_lines(Region(0, 0, width, height)))


def notified(app: DashboardApp, text: str) -> bool:
    return any(text in str(n.message) for n in app._notifications)


# ---- 1. destructive questions open on the safe choice ------------------------------------------


async def test_enter_many_times_on_the_sending_mailing_keeps_it_sending(fixed_db: Fixture) -> None:
    spring = fixed_db.ids["spring"]
    app = dashboard(fixed_db.db)
    async with running(app) as pilot:
        assert table(app, Section.CURRENT).highlighted_key() == str(spring)
        questions: list[ConfirmDialog] = []
        # Enter opens the menu (on "Cancel sending"), chooses it, and answers the question.
        for _ in range(12):
            await pilot.press("enter")
            await pilot.pause()
            if isinstance(app.screen, ConfirmDialog):
                questions.append(app.screen)
        assert questions, "Enter never reached the question"
        await wait_for(lambda: app.screen is app.dashboard or isinstance(app.screen, ActionsMenu))
        assert await state_of(fixed_db.db, spring) is MailingState.SENDING
        if isinstance(app.screen, ActionsMenu):
            await pilot.press("escape")
        # The key on the button does it.
        await choose(pilot, "stop")
        dialog = await question(pilot)
        buttons = {str(b.label) for b in dialog.query(Button)}
        assert buttons == {"Keep sending", "Stop sending (s)"}
        assert dialog.focused is dialog.query_one("#cancel", Button)
        await pilot.press("s")
        await wait_for(lambda: app.screen is app.dashboard, what="the question to close")
    assert await state_of(fixed_db.db, spring) is MailingState.STOPPED


@pytest.mark.parametrize(
    ("section", "key", "action", "keep", "button", "after"),
    [
        (Section.INACTIVE, "done", "delete", "Keep", "d", None),
        (Section.INACTIVE, "stopped", "restart", "Keep stopped", "r", MailingState.QUEUED),
        (Section.SCHEDULED, "berlin", "unschedule", "Keep schedule", "c", MailingState.DRAFT),
    ],
)
async def test_each_destructive_question_ignores_enter_and_takes_its_key(
    tmp_path: Path, section: Section, key: str, action: str, keep: str, button: str, after: MailingState | None
) -> None:
    fx = await build_fixed(tmp_path / "idle.db", sending=False, small=True)  # so Cancel is offered
    mailing_id = fx.ids[key]
    before = await state_of(fx.db, mailing_id)
    app = dashboard(fx.db)
    async with running(app) as pilot:
        await focus_row(pilot, section, mailing_id)
        await choose(pilot, action)
        dialog = await question(pilot)
        assert dialog.focused is dialog.query_one("#cancel", Button)
        assert str(dialog.query_one("#cancel", Button).label) == keep
        assert "Cancel" != str(dialog.query_one("#cancel", Button).label)
        assert str(dialog.query_one("#confirm", Button).label).endswith(f"({button})")
        await pilot.press("enter")
        await wait_for(lambda: app.screen is app.dashboard, what="Enter to keep it")
        assert await state_of(fx.db, mailing_id) is before
        await choose(pilot, action)
        await question(pilot)
        await pilot.press(button)
        await wait_for(lambda: app.screen is app.dashboard)
    await wait_for(lambda: _is_state(fx.db, mailing_id, after), timeout=5, what=f"{action} done")


async def _is_state(db: Path, mailing_id: int, state: MailingState | None) -> bool:
    return await state_of(db, mailing_id) is state


async def test_a_harmless_question_still_confirms_with_enter(tmp_path: Path) -> None:
    """Quitting with work left hands it off: not destructive, so Enter answers it."""
    fx = await build_fixed(tmp_path / "q.db", sending=False, small=True)
    launched: list[object] = []
    app = dashboard(fx.db, handoff=launched.append)
    async with running(app) as pilot:
        await pilot.press("q")
        dialog = await question(pilot)
        assert dialog.key is None and dialog.focused is dialog.query_one("#confirm", Button)
        await pilot.press("enter")
        await wait_for(lambda: app._exit, timeout=10)
    assert len(launched) == 1


# ---- 2. the limits dialog ------------------------------------------------------------------------


async def limits_loaded(pilot: Pilot[int]) -> LimitsScreen:
    app = pilot.app
    await until(pilot, lambda: isinstance(app.screen, LimitsScreen) and app.screen.limits is not None)
    await pilot.pause()
    return app.screen  # type: ignore[return-value]


async def stored_rate(db: Path, settings: Any) -> float:
    async with opened(db) as store:
        return (await read_limits(store, settings)).rate


async def test_typing_in_the_limits_dialog_replaces_the_value(fixed_db: Fixture) -> None:
    settings = settings_for(fixed_db.db, rate=60.0)
    app = dashboard(fixed_db.db, settings=settings)
    async with running(app) as pilot:
        await pilot.press("l")
        await limits_loaded(pilot)
        await pilot.press("1", "0", "enter")
        await wait_for(lambda: not isinstance(app.screen, LimitsScreen), what="the dialog to close")
    assert await stored_rate(fixed_db.db, settings) == 10.0  # not 6010


async def test_more_than_doubling_a_rate_shows_old_and_new_and_asks(fixed_db: Fixture) -> None:
    settings = settings_for(fixed_db.db, rate=60.0)
    app = dashboard(fixed_db.db, settings=settings)
    async with running(app) as pilot:
        await pilot.press("l")
        limits = await limits_loaded(pilot)
        await pilot.press(*"6010", "enter")
        dialog = await question(pilot)
        assert "Rate per second: 60 msg/s → 6010 msg/s" in dialog.message
        assert dialog.focused is dialog.query_one("#cancel", Button)
        await pilot.press("enter")  # Go back: still in the limits dialog, nothing saved
        await wait_for(lambda: app.screen is limits, what="back in the limits dialog")
        assert await stored_rate(fixed_db.db, settings) == 60.0
        assert limits.query_one("#rate", Input).value == "6010"
        await pilot.press("ctrl+s")
        await question(pilot)
        await pilot.press("r")  # Raise limits (r)
        await wait_for(lambda: app.screen is app.dashboard, what="saved")
    assert await stored_rate(fixed_db.db, settings) == 6010.0


async def test_removing_a_rate_limit_asks_and_setting_one_does_not(fixed_db: Fixture) -> None:
    settings = settings_for(fixed_db.db, rate=0.0)  # unlimited
    app = dashboard(fixed_db.db, settings=settings)
    async with running(app) as pilot:
        await pilot.press("l")
        await limits_loaded(pilot)
        await pilot.press("5", "0", "enter")  # unlimited -> 50: a decrease, no question
        await wait_for(lambda: app.screen is app.dashboard, what="saved without a question")
        assert await stored_rate(fixed_db.db, settings) == 50.0
        await pilot.press("l")
        await limits_loaded(pilot)
        await pilot.press("0", "enter")  # 50 -> unlimited: the largest increase there is
        dialog = await question(pilot)
        assert "50 msg/s → unlimited" in dialog.message
        await pilot.press("escape")
    assert await stored_rate(fixed_db.db, settings) == 50.0


async def test_a_limit_typed_with_a_key_a_number_has_no_place_for_is_shown_wrong_not_saved(fixed_db: Fixture) -> None:
    """Textual's number fields dropped the keys they do not take without a word: "0x10" typed as
    the rate was saved as 10 msg/s, "1e3" connections as 13. Every key stays; the value is refused."""
    settings = settings_for(fixed_db.db, rate=60.0)
    app = dashboard(fixed_db.db, settings=settings)
    async with running(app) as pilot:
        await pilot.press("l")
        limits = await limits_loaded(pilot)
        await pilot.press(*"0x10")
        field = limits.query_one("#rate", Input)
        assert field.value == "0x10"
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is limits and not field.is_valid and limits.query_one("#save", Button).disabled
        assert "0x10" in str(limits.query_one("#rate-error").render())
        await pilot.press("escape")
    assert await stored_rate(fixed_db.db, settings) == 60.0


def test_more_than_doubles() -> None:
    from mailtower.tui.screens.limits import more_than_doubles

    assert more_than_doubles("rate", 10, 21) and not more_than_doubles("rate", 10, 20)
    assert not more_than_doubles("rate", 0, 100)  # unlimited -> a limit: slower
    assert more_than_doubles("rate", 100, 0) and more_than_doubles("rate_per_hour", 3600, 0)
    assert more_than_doubles("connections", 4, 9) and not more_than_doubles("connections", 4, 8)
    assert not more_than_doubles("connections", 8, 1)
    assert not more_than_doubles("messages_per_connection", 1, 1000)  # not a pace


async def test_limits_refuse_what_the_command_refuses(fixed_db: Fixture) -> None:
    from tests.helpers import Cli

    cli = Cli(fixed_db.db)
    app = dashboard(fixed_db.db)
    async with running(app) as pilot:
        await pilot.press("l")
        limits = await limits_loaded(pilot)
        for name, bad in (("rate", "nan"), ("rate", "-1"), ("connections", "0"), ("rate_per_hour", "inf")):
            # The command runs its own event loop: in a thread beside this one.
            code, _, err = await asyncio.to_thread(cli, "limits", f"--{name.replace('_', '-')}", bad)
            field = limits.query_one(f"#{name}", Input)
            field.value = bad
            await pilot.pause()
            assert code == 2 and err.strip()
            assert not field.is_valid and limits.query_one("#save", Button).disabled, (name, bad)
            field.value = "1"
            await pilot.pause()


# ---- 3. the Actions menu follows the present ------------------------------------------------------


async def test_menu_withdraws_cancel_when_a_send_starts_elsewhere(tmp_path: Path) -> None:
    fx = await build_fixed(tmp_path / "idle.db", sending=False, small=True)
    app = dashboard(fx.db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.SCHEDULED, fx.ids["tokyo"])
        menu = await open_menu(pilot)
        assert "unschedule" in menu_keys(menu)
        async with opened(fx.db) as store:
            await Lifecycle(store).start(fx.ids["spring"])  # another process starts sending
        await wait_for(lambda: "unschedule" not in menu_keys(menu), timeout=3, what="Cancel to go")
        assert app.screen is menu
        assert "Cancel is not offered now" in why_text(menu) and "being sent" in why_text(menu)


async def test_menu_says_when_the_mailing_moved_or_went(fixed_db: Fixture) -> None:
    ids = fixed_db.ids
    app = dashboard(fixed_db.db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.CURRENT, ids["news"])
        menu = await open_menu(pilot)
        assert {"move-up", "move-top", "move-down", "move-bottom"} <= set(menu_keys(menu))
        async with opened(fixed_db.db) as store:
            await Lifecycle(store).move(ids["news"], Direction.TOP)
        await wait_for(lambda: "move-up" not in menu_keys(menu), timeout=3, what="Move up to go")
        assert "Move up is no longer offered: it is first in the queue now" in why_text(menu)
        await pilot.press("escape")
        await focus_row(pilot, Section.INACTIVE, ids["draft"])
        menu = await open_menu(pilot)
        async with opened(fixed_db.db) as store:
            await Lifecycle(store).delete(ids["draft"])
        await wait_for(lambda: menu_keys(menu) == [], timeout=3, what="the menu to empty")
        assert "deleted meanwhile" in why_text(menu)


# ---- 9. the demo's quit -------------------------------------------------------------------------------


async def test_demo_help_says_why_q_ends_it_at_once(fixed_db: Fixture) -> None:
    launched: list[object] = []
    app = dashboard(fixed_db.db, demo=True, hand_off_on_quit=False, handoff=launched.append)
    async with running(app) as pilot:
        await pilot.press("question_mark")
        await wait_for(lambda: isinstance(app.screen, HelpScreen) and app.screen.is_mounted)
        shown = " ".join(text_of(app.screen.query_one(Static)).split())
        assert "quit the demo at once" in shown and "throw-away" in shown
        assert "asks first" not in shown  # the normal quit line would promise a question
        await pilot.press("escape")
        quit_help = next(c.help for c in app.palette_commands() if c.title == "Quit")
        assert "throw-away" in quit_help
        await pilot.press("q")
        await wait_for(lambda: app._exit, timeout=10, what="the demo to end")
        assert not isinstance(app.screen, ConfirmDialog)
    assert launched == []


# ---- 10. the filter, Home/End and g/G ---------------------------------------------------------------


async def test_slash_filters_all_three_panels_and_escape_clears(fixed_db: Fixture) -> None:
    ids = fixed_db.ids
    async with opened(fixed_db.db) as store:
        draft = Draft("Board report", "Quarterly numbers", "news@example.com", "Hello", None)
        q3, _ = await create_mailing(store, draft, write_recipients(fixed_db.db.parent / "q3.csv", 2), lambda row: None)
    app = dashboard(fixed_db.db)
    async with running(app) as pilot:
        current, scheduled, inactive = (table(app, s) for s in Section)
        await pilot.press("slash", *"tokyo")
        await wait_for(lambda: scheduled.keys == [str(ids["tokyo"])], what=f"by name: {scheduled.keys}")
        assert current.keys == [] and inactive.keys == []
        assert scheduled.border_title == "Scheduled (1 of 4)" and current.border_subtitle == "nothing matches the filter"
        await pilot.press("escape")
        await wait_for(lambda: len(scheduled.keys) == 4 and len(current.keys) == 3, what="cleared")
        assert not app.dashboard.filter_bar.display
        await pilot.press("slash", *"quarterly")  # by subject
        await wait_for(lambda: inactive.keys == [str(q3)] and scheduled.keys == [] and current.keys == [], what="by subject")
        await pilot.press(*["backspace"] * len("quarterly"), *str(ids["launch"]), "enter")  # by id; Enter: back
        await wait_for(lambda: current.keys == [str(ids["launch"])] and inactive.keys == [], what=f"by id {current.keys} {inactive.keys}")
        assert isinstance(app.dashboard.focused, MailingTable)
        # The position in the queue stays the real one while others are hidden.
        assert current.get_row(str(ids["launch"]))[0].plain.strip() == "3"
        await pilot.press("escape")
        await wait_for(lambda: len(current.keys) == 3 and len(inactive.keys) == 4)


async def test_a_on_a_filtered_out_panel_says_so(fixed_db: Fixture) -> None:
    app = dashboard(fixed_db.db)
    async with running(app) as pilot:
        await pilot.press("slash", *"zzz-nothing", "enter")
        await wait_for(lambda: table(app, Section.CURRENT).keys == [])
        await pilot.press("a")
        await wait_for(lambda: notified(app, "nothing in this panel matches the filter"))
        assert app.screen is app.dashboard


def test_matches_filter() -> None:
    from dataclasses import replace

    from mailtower.core.domain import Mailing
    from mailtower.tui.panels import matches_filter

    base = Mailing(
        id=12, name="Spring Sale", subject="Hello world", from_addr="a@example.org", text_body="x", html_body=None,
        state=MailingState.DRAFT, position=None, schedule=None, missed=False, total=1, sent=0, failed=0, deferred=0,
        in_doubt=0, created_at=FIXED_NOW, started_at=None, finished_at=None, last_error=None,
    )
    assert matches_filter(base, "") and matches_filter(base, "spring") and matches_filter(base, "SALE spr")
    assert matches_filter(base, "world") and matches_filter(base, "12") and matches_filter(base, "#12")
    assert matches_filter(base, "id 12") and not matches_filter(base, "13") and not matches_filter(base, "autumn")
    assert not matches_filter(replace(base, id=120), "12")  # an id matches whole, not in part


@pytest.mark.parametrize(("key", "row"), [("end", 3), ("home", 0), ("G", 3), ("g", 0)])
async def test_home_end_g_G_jump_to_the_first_and_last_mailing(fixed_db: Fixture, key: str, row: int) -> None:
    async with opened(fixed_db.db) as store:
        await new_mailing(store, fixed_db.db.parent, "Another draft", 2)
    app = dashboard(fixed_db.db)
    async with running(app) as pilot:
        inactive = table(app, Section.INACTIVE)
        await pilot.press("tab", "tab")
        assert app.dashboard.focused is inactive and len(inactive.keys) == 4
        await pilot.press("j")  # from the second row
        await pilot.press(key)
        assert inactive.cursor_row == row
        assert inactive.scroll_x == 0


# ---- 12. the queue offers only moves that move ----------------------------------------------------


def test_queue_offers() -> None:
    from mailtower.core.lifecycle import Offer
    from mailtower.core.lifecycle import queue_offers

    base = [Offer("stop", "Cancel sending"), Offer("move-up", "Move up"), Offer("move-down", "Move down"), Offer("details", "Details")]
    keys = lambda index, count: [o.key for o in queue_offers(base, index, count)]  # noqa: E731
    assert keys(0, 3) == ["stop", "move-down", "move-bottom", "details"]
    assert keys(2, 3) == ["stop", "move-up", "move-top", "details"]
    assert keys(1, 3) == ["stop", "move-up", "move-top", "move-down", "move-bottom", "details"]
    assert keys(0, 1) == ["stop", "details"]


async def test_first_and_last_rows_offer_no_empty_moves_and_move_to_top_works(fixed_db: Fixture) -> None:
    ids = fixed_db.ids
    app = dashboard(fixed_db.db)
    async with running(app) as pilot:
        menu = await open_menu(pilot)  # the first row: spring
        assert not {"move-up", "move-top"} & set(menu_keys(menu)) and "move-bottom" in menu_keys(menu)
        await pilot.press("escape")
        await focus_row(pilot, Section.CURRENT, ids["launch"])
        menu = await open_menu(pilot)
        assert not {"move-down", "move-bottom"} & set(menu_keys(menu))
        await pilot.press("escape")
        await choose(pilot, "move-top")
        await pilot.press((await question(pilot)).key or "")  # a new head of the queue: it asks first
        current = table(app, Section.CURRENT)
        await wait_for(lambda: current.keys == [str(ids[k]) for k in ("launch", "spring", "news")])
        assert current.highlighted_key() == str(ids["launch"])
        await choose(pilot, "move-bottom")
        await pilot.press((await question(pilot)).key or "")
        await wait_for(lambda: current.keys == [str(ids[k]) for k in ("spring", "news", "launch")])


# ---- 13. the id is called the id ---------------------------------------------------------------------


async def test_menus_and_details_show_the_id_as_the_id(fixed_db: Fixture) -> None:
    from mailtower.tui.screens.details import DetailsScreen

    news = fixed_db.ids["news"]
    app = dashboard(fixed_db.db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.CURRENT, news)
        menu = await open_menu(pilot)
        what = str(menu.query_one("#what").render())
        assert f"id {news}" in what and "#" not in what
        await pilot.press("escape")
        await choose(pilot, "details")
        await wait_for(lambda: isinstance(app.screen, DetailsScreen) and app.screen.is_mounted)
        await until(pilot, lambda: f"(id {news}," in str(app.screen.query_one("#details-title").render()))


# ---- 14. panel heights, columns, empty panels, plurals -------------------------------------------


def test_panel_heights() -> None:
    from mailtower.tui.panels import panel_heights

    assert panel_heights([6, 10, 6], 22, 0) == [6, 10, 6]
    assert panel_heights([6, 6, 6], 22, 0) == [6, 6, 6]  # what is left stays below: no empty rows
    assert panel_heights([3, 3, 3], 22, 1) == [3, 3, 3]
    assert panel_heights([], 22, None) == []
    # Too many rows: nobody is padded, the focused panel gets the larger share.
    heights = panel_heights([6, 400, 400], 22, 1)
    assert sum(heights) == 22 and heights[0] == 6 and heights[1] > heights[2]
    assert panel_heights([403, 403, 403], 22, 0)[0] > panel_heights([403, 403, 403], 22, 1)[0]


async def seven_scheduled(fx: Fixture) -> Fixture:
    """The demo's shape: three current, seven scheduled (one of them years ahead), three inactive."""
    async with opened(fx.db) as store:
        lifecycle = Lifecycle(store)
        for name, local, tz in (
            ("Lisbon at ten", datetime(2099, 6, 2, 10, 0), "Europe/Lisbon"),
            ("Chicago at ten", datetime(2099, 6, 2, 10, 0), "America/Chicago"),
            ("Far ahead", datetime(2103, 7, 11, 0, 0), "UTC"),
        ):
            mailing_id = await new_mailing(store, fx.db.parent, name, 3)
            await lifecycle.schedule(mailing_id, local, tz)
            fx.ids[name] = mailing_id
    return fx


async def test_panels_are_as_tall_as_their_rows_at_80x24(tmp_path: Path) -> None:
    fx = await seven_scheduled(await build_fixed(tmp_path / "seven.db", small=True))
    app = dashboard(fx.db)
    async with running(app, size=(80, 24)) as pilot:
        scheduled = table(app, Section.SCHEDULED)
        await wait_for(lambda: len(scheduled.keys) == 7)
        await pilot.pause()
        # Borders and labels (3 lines) and every row; at 80x24 that is all of them.
        assert [table(app, s).outer_size.height for s in Section] == [3 + 3, 3 + 7, 3 + 3]
        lines = text_of(scheduled)
        assert all(name in lines for name in ("Lisbon at ten", "Chicago at ten", "Far ahead", "Berlin meetup"))
        # At 80 columns "Your time" and "Starts" keep a space between them.
        far = next(line for line in lines.splitlines() if "Far ahead" in line)
        assert re.search(r"\d\d-\d\d \d\d:\d\d +in \d+d\d\dh │$", far.rstrip()), far


async def test_enter_on_an_empty_panel_says_there_is_nothing_to_act_on(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    async with opened(db) as store:
        await new_mailing(store, tmp_path, "Only a draft", 1)
    app = dashboard(db)
    async with running(app) as pilot:
        assert table(app, Section.CURRENT).keys == []
        await pilot.press("enter")
        await wait_for(lambda: notified(app, "Nothing to act on: this panel is empty"))
        await pilot.press("a")
        assert app.screen is app.dashboard


async def test_one_recipient_is_singular(tmp_path: Path) -> None:
    db = tmp_path / "one.db"
    async with opened(db) as store:
        mailing_id = await new_mailing(store, tmp_path, "Just one", 1)
        await Lifecycle(store).send_now(mailing_id)
    app = dashboard(db)
    async with running(app) as pilot:
        await choose(pilot, "stop")
        dialog = await question(pilot)
        assert "1 recipient has not received it yet" in dialog.message
        await pilot.press("s")
        await wait_for(lambda: notified(app, "1 remaining, 0 failed"))
        await focus_row(pilot, Section.INACTIVE, mailing_id)
        await choose(pilot, "delete")
        dialog = await question(pilot)
        assert "(1 recipient)" in dialog.message


# ---- snapshots ---------------------------------------------------------------------------------------


def frozen(db: Path, **kwargs: Any) -> DashboardApp:
    return DashboardApp(settings_for(db, **kwargs.pop("settings", {})), start_sender=False, now=Clock(),
                        operator_tz=OPERATOR_TZ, **kwargs)


async def settled(pilot: Pilot[int]) -> None:
    app = pilot.app
    assert isinstance(app, DashboardApp)
    await until(pilot, lambda: bool(app.renders and app.dashboard.header.info is not None and app.sections))
    await pilot.pause()


@pytest.fixture
def monitored(fixed_db: Fixture) -> Iterator[Fixture]:
    asyncio.run(put_sender_meta(fixed_db.db, FIXED_NOW))
    lease = HeldLease(fixed_db.db)
    yield fixed_db
    lease.release()


@pytest.fixture
def monitored_seven(tmp_path: Path) -> Iterator[Fixture]:
    fx = asyncio.run(build_fixed(tmp_path / "seven.db", small=True))
    fx = asyncio.run(seven_scheduled(fx))
    asyncio.run(put_sender_meta(fx.db, FIXED_NOW))
    lease = HeldLease(fx.db)
    yield fx
    lease.release()


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_stop_question_opens_on_keep_sending(snap_compare: Any, monitored: Fixture, size: tuple[int, int]) -> None:
    async def ask(pilot: Pilot[int]) -> None:
        await settled(pilot)
        await pilot.press("a", "enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmDialog))
        await pilot.pause()

    assert snap_compare(frozen(monitored.db), terminal_size=size, run_before=ask)


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_limits_ask_before_raising(snap_compare: Any, monitored: Fixture, size: tuple[int, int]) -> None:
    async def raise_rate(pilot: Pilot[int]) -> None:
        await settled(pilot)
        await pilot.press("l")
        await limits_loaded(pilot)
        await pilot.press(*"6010", "enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmDialog))
        await pilot.pause()

    app = frozen(monitored.db, settings={"rate": 60.0})
    assert snap_compare(app, terminal_size=size, run_before=raise_rate)


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_filter(snap_compare: Any, monitored: Fixture, size: tuple[int, int]) -> None:
    async def filtered(pilot: Pilot[int]) -> None:
        await settled(pilot)
        await pilot.press("slash", *"sale")
        app = pilot.app
        assert isinstance(app, DashboardApp)
        await until(pilot, lambda: len(app.dashboard.table(Section.SCHEDULED).keys) == 1)
        await pilot.pause()

    assert snap_compare(frozen(monitored.db), terminal_size=size, run_before=filtered)


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_demo_help(snap_compare: Any, monitored: Fixture, size: tuple[int, int]) -> None:
    app = frozen(monitored.db, demo=True, hand_off_on_quit=False)
    assert snap_compare(app, press=["question_mark"], terminal_size=size, run_before=settled)


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_seven_scheduled(snap_compare: Any, monitored_seven: Fixture, size: tuple[int, int]) -> None:
    async def scheduled(pilot: Pilot[int]) -> None:
        await settled(pilot)
        app = pilot.app
        assert isinstance(app, DashboardApp)
        await until(pilot, lambda: len(app.dashboard.table(Section.SCHEDULED).keys) == 7)
        await pilot.pause()

    assert snap_compare(frozen(monitored_seven.db), terminal_size=size, run_before=scheduled)


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_menu_after_a_send_started_elsewhere(snap_compare: Any, tmp_path: Path, size: tuple[int, int]) -> None:
    fx = asyncio.run(build_fixed(tmp_path / "idle.db", sending=False, small=True))
    asyncio.run(put_sender_meta(fx.db, FIXED_NOW, state="idle", rate=0.0, accepted_ago=125))
    lease = HeldLease(fx.db)

    async def started(pilot: Pilot[int]) -> None:
        await settled(pilot)
        await pilot.press("tab", "j", "a")  # Tokyo: Cancel is offered
        await until(pilot, lambda: isinstance(pilot.app.screen, ActionsMenu))
        menu = pilot.app.screen
        assert isinstance(menu, ActionsMenu) and "unschedule" in menu_keys(menu)
        async with opened(fx.db) as store:
            await Lifecycle(store).start(fx.ids["spring"])
        await until(pilot, lambda: "unschedule" not in menu_keys(menu))
        await pilot.pause()

    try:
        assert snap_compare(frozen(fx.db), terminal_size=size, run_before=started)
    finally:
        lease.release()
