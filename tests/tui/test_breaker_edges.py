"""Hostile edges of the breaker's dashboard side (issue 13 item 4, reviewed): Enter pressed once
too often never restarts a tripped mailing, and a trip that happens while the Restart dialog is
open (it asked about a mailing an operator had stopped) is not overridden by that dialog."""

from __future__ import annotations

import asyncio

from mailtower.core.domain import MailingState
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.store import Store

from ..helpers import until
from .conftest import Fixture
from . import test_breaker_view as view
from .test_breaker_view import TRIPPED, frozen_app, settled

marked = view.marked  # the fixture: a tripped mailing, canaries (test_breaker_view.mark)


async def trip_elsewhere(db: object, mailing_id: int, *, restart_first: bool = False) -> None:
    """Another process (a terminal, the sender) restarts the mailing and/or the breaker stops it."""
    other = await Store.open(db)  # type: ignore[arg-type]
    try:
        if restart_first:
            await Lifecycle(other).restart(mailing_id)
        assert await Lifecycle(other).trip(mailing_id, TRIPPED)
    finally:
        await other.close()


async def still_tripped(pilot: object, app: object, mailing_id: int) -> None:
    """After every key was handled (bounded): the mailing is stopped, tripped."""
    for _ in range(20):
        await pilot.pause(0.02)  # type: ignore[attr-defined]
    store = app.store  # type: ignore[attr-defined]
    assert store is not None
    mailing = await store.mailing(mailing_id)
    assert mailing.state is MailingState.STOPPED and mailing.tripped == TRIPPED


def test_enter_pressed_again_and_again_never_restarts_a_tripped_mailing(marked: Fixture) -> None:
    async def main() -> None:
        app = frozen_app(marked.db)
        async with app.run_test(size=(100, 30)) as pilot:
            await settled(pilot)
            await pilot.press("tab", "tab")
            # Actions, Restart, then Enter-Enter-Enter as fast as keys come: typed ahead of the dialog.
            await pilot.press("a", "enter", "enter", "enter", "enter")
            await until(pilot, lambda: type(app.screen).__name__ in ("Dashboard", "ConfirmDialog", "ActionsMenu"))
            await still_tripped(pilot, app, marked.ids["stopped"])

    asyncio.run(main())


def test_a_trip_while_the_restart_dialog_is_open_is_not_overridden(fixed_db: Fixture, held_lease: object) -> None:
    async def main() -> None:
        app = frozen_app(fixed_db.db)
        target = fixed_db.ids["stopped"]
        async with app.run_test(size=(100, 30)) as pilot:
            await settled(pilot)
            await pilot.press("tab", "tab", "a")
            await until(pilot, lambda: type(app.screen).__name__ == "ActionsMenu")
            await pilot.press("enter")  # Restart: the plain question, nothing had tripped
            await until(pilot, lambda: type(app.screen).__name__ == "ConfirmDialog")
            assert app.screen.title_text == "Restart sending"  # type: ignore[attr-defined]
            # Meanwhile another terminal restarts it and the breaker stops it again.
            await trip_elsewhere(fixed_db.db, target, restart_first=True)
            await pilot.press("r")  # the operator confirms the question the dialog asked
            await until(pilot, lambda: type(app.screen).__name__ == "Dashboard")
            # Not restarted: the operator was never told what tripped (Restart asks again, saying it).
            await still_tripped(pilot, app, target)

    asyncio.run(main())


def test_a_trip_while_the_actions_menu_is_open_changes_what_it_offers(fixed_db: Fixture, held_lease: object) -> None:
    """The menu follows the present: the breaker stops the head while its menu is open; the menu
    then offers Restart (which asks, saying what tripped), not Stop, and Enter does not restart it."""
    async def main() -> None:
        app = frozen_app(fixed_db.db)
        target = fixed_db.ids["spring"]  # the head of the queue, in the Current panel
        async with app.run_test(size=(100, 30)) as pilot:
            await settled(pilot)
            await pilot.press("a")
            await until(pilot, lambda: type(app.screen).__name__ == "ActionsMenu")
            menu = app.screen
            assert menu.mailing.id == target and "stop" in menu.opened_with  # type: ignore[attr-defined]
            await trip_elsewhere(fixed_db.db, target)
            await until(pilot, lambda: menu.mailing.state is MailingState.STOPPED, timeout=10)  # type: ignore[attr-defined]
            offered = {o.key for o in menu.offers if o.enabled}  # type: ignore[attr-defined]
            assert "restart" in offered and "stop" not in offered
            await pilot.press("enter", "enter")
            await still_tripped(pilot, app, target)

    asyncio.run(main())
