"""Issue 11 item 21 (registry part): one action registry (core/actions_registry) keyed by the
lifecycle's actions, read by the Actions menu, the command palette, the `?` screen and the CLI.

And item 16's menu reuse: the Actions menu is composed once and shown again for each mailing,
so a second opening must look exactly as a fresh menu would.
"""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from dataclasses import replace

import pytest
from rich.console import Console
from textual.containers import VerticalScroll
from textual.geometry import Region
from textual.widgets import Label, OptionList, Static

from mailtower.core.actions_registry import (
    ACTIONS,
    MOVES,
    SIMPLE_COMMANDS,
    VIEWS,
    command_entry,
    entry_for,
    label_of,
    offers,
)
from mailtower.core.domain import MailingState, Section
from mailtower.core.lifecycle import TRANSITIONS, Action
from mailtower.tui.actions import ActionsMenu
from mailtower.tui.cli import STORE_COMMANDS, build_parser
from mailtower.tui.footer import SteadyFooter
from mailtower.tui.help import HelpScreen, help_table
from mailtower.tui.palette import commands_of

from .conftest import Fixture, wait_for
from .pilot import dashboard_app, focus_row, running


def plain(renderable: object, width: int = 200) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(renderable)
    return " ".join(console.export_text().split())


def command_help(command: str) -> str:
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    return " ".join(out.getvalue().split())


def menu_labels(menu: ActionsMenu) -> list[str]:
    options = menu.query_one(OptionList)
    return [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]


async def mailings(fx: Fixture) -> dict[str, object]:
    from mailtower.core.store import Store

    store = await Store.open(fx.db)
    try:
        return {key: await store.mailing(mid) for key, mid in fx.ids.items()}
    finally:
        await store.close()


# ---- the registry itself --------------------------------------------------------------------


def test_every_action_has_exactly_one_entry_and_one_key_and_command_each() -> None:
    assert set(ACTIONS) == set(Action) == set(TRANSITIONS)
    assert all(entry.action is action for action, entry in ACTIONS.items())
    keys = [e.key for e in ACTIONS.values() if e.key is not None]
    commands = [e.command for e in ACTIONS.values() if e.command is not None]
    labels = [e.label for e in ACTIONS.values()]
    assert len(keys) == len(set(keys)) and len(commands) == len(set(commands)) and len(labels) == len(set(labels))
    # Keys of the menu (actions, moves, views) never collide.
    every_key = keys + [key for key, _ in MOVES.values()] + list(VIEWS)
    assert len(every_key) == len(set(every_key))
    # The sender's own steps are in the registry too, but no operator offers or commands them.
    for action in (Action.PROMOTE, Action.START, Action.YIELD, Action.COMPLETE):
        assert ACTIONS[action].key is None and ACTIONS[action].command is None
    # What cannot be taken back asks first, and opens on the safe choice.
    for entry in ACTIONS.values():
        if entry.destructive:
            assert entry.confirm is not None and entry.confirm.keep != entry.confirm.confirm
    for action in SIMPLE_COMMANDS:
        assert command_entry(str(ACTIONS[action].command)).action is action


async def test_every_offered_key_is_a_registry_entry_with_the_registry_label(fixed_db: Fixture) -> None:
    seen: set[str] = set()
    for mailing in (await mailings(fixed_db)).values():
        for any_sending in (False, True):
            for offer in offers(mailing, any_sending=any_sending, place=1, queue_length=3):  # type: ignore[arg-type]
                seen.add(offer.key)
                assert entry_for(offer.key) is not None or offer.key in VIEWS
                assert offer.label.startswith(label_of(offer.key))
    operator_keys = {e.key for e in ACTIONS.values() if e.key is not None}
    assert operator_keys <= seen, f"never offered: {operator_keys - seen}"


# ---- the four readers show the same words ----------------------------------------------------


async def test_menu_palette_help_and_cli_use_the_registry_labels(fixed_db: Fixture) -> None:
    found = await mailings(fixed_db)
    help_text = plain(help_table("where"))
    for action, entry in ACTIONS.items():
        if entry.key is None:
            continue
        if entry.command is not None:
            assert f"“{entry.label}”" in command_help(entry.command) or action is Action.MOVE
            assert f"{entry.command} ({entry.label})" in help_text
        assert entry.label in help_text
    for mailing in found.values():
        menu = offers(mailing, any_sending=False)  # type: ignore[arg-type]
        for offer, command in zip(menu, commands_of(mailing, menu)):  # type: ignore[arg-type]
            assert command.title.startswith(label_of(offer.key))
    move_help = command_help("move")
    assert all(label in move_help for _, label in MOVES.values())
    assert set(STORE_COMMANDS) >= {ACTIONS[a].command for a in SIMPLE_COMMANDS}


async def test_a_label_changed_in_the_registry_shows_in_menu_palette_help_and_cli(
    fixed_db: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(ACTIONS, Action.STOP, replace(ACTIONS[Action.STOP], label="Halt delivery"))
    monkeypatch.setitem(ACTIONS, Action.RESTART, replace(ACTIONS[Action.RESTART], label="Resend"))
    found = await mailings(fixed_db)
    spring, stopped = found["spring"], found["stopped"]
    # The command line.
    assert "“Halt delivery”" in command_help("stop") and "“Resend”" in command_help("restart")
    # The palette (built from the menu's offers).
    titles = [c.title for c in commands_of(spring, offers(spring, any_sending=True))]  # type: ignore[arg-type]
    assert any(t.startswith("Halt delivery '") for t in titles) and not any("Cancel sending" in t for t in titles)
    assert any(c.title.startswith("Resend '") for c in commands_of(stopped, offers(stopped, any_sending=True)))  # type: ignore[arg-type]
    # The menu and the `?` screen, on screen.
    app = dashboard_app(fixed_db.db)
    async with running(app, size=(120, 40)) as pilot:
        await focus_row(pilot, Section.CURRENT, fixed_db.ids["spring"])
        await pilot.press("a")
        await wait_for(lambda: isinstance(app.screen, ActionsMenu), what="the menu")
        assert isinstance(app.screen, ActionsMenu)
        assert menu_labels(app.screen)[0] == "Halt delivery"
        await pilot.press("escape")
        await wait_for(lambda: app.screen is app.dashboard, what="back")
        await pilot.press("question_mark")
        await wait_for(lambda: isinstance(app.screen, HelpScreen), what="the keys")
        keys = app.screen.query_one(Static)
        width, height = keys.size
        shown = " ".join(" ".join(s.text for s in keys.render_lines(Region(0, 0, width, height))).split())
        assert "Halt delivery, Move up" in shown and "stop (Halt delivery)" in shown and "Resend, View" in shown


# ---- item 16: one menu, shown again for each mailing --------------------------------------------


async def test_the_menu_opened_again_shows_the_new_mailing_as_a_fresh_menu_would(fixed_db: Fixture) -> None:
    ids = fixed_db.ids
    app = dashboard_app(fixed_db.db)
    async with running(app, size=(120, 40)) as pilot:
        await focus_row(pilot, Section.SCHEDULED, ids["tokyo"])
        await pilot.press("a")
        await wait_for(lambda: isinstance(app.screen, ActionsMenu), what="the menu")
        first = app.screen
        assert isinstance(first, ActionsMenu)
        # The sender is sending: Cancel is withheld, with a line saying why.
        assert "Cancel is not offered now" in str(first.query_one("#why", Static).render())
        await pilot.press("j", "escape")
        await wait_for(lambda: app.screen is app.dashboard, what="back")

        await focus_row(pilot, Section.INACTIVE, ids["draft"])
        await pilot.press("a")
        await wait_for(lambda: isinstance(app.screen, ActionsMenu), what="the menu again")
        menu = app.screen
        assert menu is first  # the same screen, composed once
        assert isinstance(menu, ActionsMenu)
        fresh = ActionsMenu(app.find(ids["draft"]), app.offers_for(app.find(ids["draft"])))  # type: ignore[arg-type]
        assert menu_labels(menu) == [o.label for o in fresh.offers if o.enabled] == ["Set Schedule", "Send now", "Details", "Delete"]
        assert menu.mailing.id == ids["draft"] and menu.mailing.state is MailingState.DRAFT
        assert "Draft: autumn" in str(menu.query_one("#name", Label).render())
        assert f"id {ids['draft']}" in str(menu.query_one("#what", Label).render())
        why = menu.query_one("#why", Static)
        assert why.has_class("-empty")  # nothing withheld for a draft: the old line is gone
        assert menu.query_one(OptionList).highlighted == 0  # on the first entry, not where j left it
        await pilot.press("enter")  # Set Schedule: the menu's choice is acted on for this mailing
        await wait_for(lambda: type(app.screen).__name__ == "ScheduleDialog", what="the schedule dialog")


async def test_tab_between_panels_keeps_the_footer_and_the_keys_screen_is_shown_again_from_the_top(
    fixed_db: Fixture,
) -> None:
    app = dashboard_app(fixed_db.db)
    async with running(app, size=(80, 24)) as pilot:
        footer = app.dashboard.query_one(SteadyFooter)
        await wait_for(lambda: bool(footer.children), what="the footer's keys")
        keys = list(footer.children)
        for _ in range(3):
            await pilot.press("tab")
            await pilot.pause()
        assert list(footer.children) == keys  # the same keys: nothing composed again
        assert "Actions" in " ".join(str(k.render()) for k in footer.children)

        await pilot.press("question_mark")
        await wait_for(lambda: isinstance(app.screen, HelpScreen), what="the keys")
        first = app.screen
        scroll = first.query_one(VerticalScroll)
        await pilot.press("end")
        await wait_for(lambda: scroll.scroll_y > 0, what="scrolled down")  # 80x24: the list is longer than the screen
        await pilot.press("escape")
        await wait_for(lambda: app.screen is app.dashboard, what="back")
        await pilot.press("question_mark")
        await wait_for(lambda: isinstance(app.screen, HelpScreen), what="the keys again")
        assert app.screen is first
        await wait_for(lambda: scroll.scroll_y == 0, what="from the top again")
