"""The breaker and canary on the dashboard (issue 13, items 4 and 5): a tripped mailing's row in
red with what tripped, the canary's progress and when it continues in the Current panel, and the
Restart confirmation that says what tripped and opens on the safe choice.

SVG snapshots at 80x24 on the fixed database (see test_snapshots_app.py); update with
`pytest tests/tui/test_breaker_view.py --snapshot-update` and look at the pictures."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from textual.pilot import Pilot

from mailtower.core.domain import Canary, CanaryPhase, MailingState
from mailtower.core.store import Store, canary_text
from mailtower.tui.app import DashboardApp
from mailtower.tui.rows import View, current_cells, inactive_cells

from ..helpers import until
from .conftest import FIXED_NOW, OPERATOR_TZ, Clock, Fixture, put_sender_meta, settings_for

TRIPPED = ("breaker: 31 of the last 412 outcomes failed permanently (7.5%, more than 5%); "
           "last: 550 5.1.1 user unknown")


async def mark(db: Path, fx: Fixture) -> None:
    """Winter clearance was stopped by the breaker; the newsletter holds after its canary until
    10:12 UTC (12:12 in Berlin); the launch sends its canary, 37 of 50 answered."""
    store = await Store.open(db)
    try:
        async with store.write() as tx:
            await tx.update_mailing(fx.ids["stopped"], tripped=TRIPPED, last_error=TRIPPED)
            holding = Canary(50, False, 1.0, 600.0, CanaryPhase.HOLDING, 50, 50,
                             (FIXED_NOW + timedelta(minutes=12)).timestamp())
            await tx.update_mailing(fx.ids["news"], canary=canary_text(holding))
            sending = Canary(50, False, 1.0, 600.0, CanaryPhase.SENDING, 50, 37, None)
            await tx.update_mailing(fx.ids["launch"], canary=canary_text(sending))
    finally:
        await store.close()


@pytest.fixture
def marked(fixed_db: Fixture, held_lease: object) -> Fixture:
    asyncio.run(put_sender_meta(fixed_db.db, FIXED_NOW))
    asyncio.run(mark(fixed_db.db, fixed_db))
    return fixed_db


def frozen_app(db: Path) -> DashboardApp:
    return DashboardApp(settings_for(db), start_sender=False, now=Clock(), operator_tz=OPERATOR_TZ)


async def settled(pilot: Pilot[int]) -> None:
    app = pilot.app
    assert isinstance(app, DashboardApp)
    await until(pilot, lambda: bool(app.renders and app.dashboard.header.info is not None and app.sections))
    await pilot.pause()


def test_rows_say_what_tripped_and_the_canary(marked: Fixture) -> None:
    async def read() -> tuple:
        store = await Store.open(marked.db)
        try:
            return (await store.mailing(marked.ids["stopped"]), await store.mailing(marked.ids["news"]),
                    await store.mailing(marked.ids["launch"]))
        finally:
            await store.close()

    stopped, news, launch = asyncio.run(read())
    view = View(now=FIXED_NOW, operator_tz=OPERATOR_TZ, compact=True)
    name, outcome, _, _ = inactive_cells(stopped, view)
    assert outcome[1] == ((" tripped", "bold red"),)
    assert name[1][-1] == (" · 7.5% failed", "red")
    cells = current_cells(news, 2, None, 0.0, view, 8)
    assert cells[2][1] == ((" canary 50/50", "cyan"),)
    assert "".join(p for c in cells[7:] for p, _ in c[1]).strip() == "cont. 12:12"  # Berlin time
    wide = current_cells(launch, 3, None, 0.0, replace(view, compact=False), 8)
    # 13 of the sample left at 1/s, then the 10 min hold: about 12:10:13 in Berlin.
    assert "".join(p for c in wide[7:] for p, _ in c[1]).strip() == "continues ~12:10"
    assert wide[2][1] == ((" canary 37/50", "cyan"),)
    plain = current_cells(replace(news, canary=None), 2, None, 0.0, view, 8)
    assert "canary" not in str(plain)


def test_snapshot_current_with_canaries(snap_compare, marked: Fixture) -> None:
    assert snap_compare(frozen_app(marked.db), terminal_size=(80, 24), run_before=settled)


def test_snapshot_inactive_with_a_tripped_row(snap_compare, marked: Fixture) -> None:
    assert snap_compare(frozen_app(marked.db), press=["tab", "tab"], terminal_size=(80, 24), run_before=settled)


def test_snapshot_restart_dialog_says_what_tripped(snap_compare, marked: Fixture) -> None:
    assert snap_compare(frozen_app(marked.db), press=["tab", "tab", "a", "enter"], terminal_size=(80, 24),
                        run_before=settled)


def test_restart_of_a_tripped_mailing_asks_and_opens_on_keep(marked: Fixture) -> None:
    async def main() -> None:
        app = frozen_app(marked.db)
        async with app.run_test(size=(100, 30)) as pilot:
            await settled(pilot)
            await pilot.press("tab", "tab", "a")
            await until(pilot, lambda: type(app.screen).__name__ == "ActionsMenu")
            await pilot.press("enter")  # Restart (the first entry)
            await until(pilot, lambda: type(app.screen).__name__ == "ConfirmDialog")
            dialog = app.screen
            assert dialog.title_text == "Restart after the breaker tripped"  # type: ignore[attr-defined]
            assert TRIPPED in dialog.message  # type: ignore[attr-defined]
            await pilot.press("enter")  # the safe choice has the focus: kept stopped
            await until(pilot, lambda: type(app.screen).__name__ == "Dashboard")
            assert app.store is not None
            assert (await app.store.mailing(marked.ids["stopped"])).state is MailingState.STOPPED
            await pilot.press("a")
            await until(pilot, lambda: type(app.screen).__name__ == "ActionsMenu")
            await pilot.press("enter")
            await until(pilot, lambda: type(app.screen).__name__ == "ConfirmDialog")
            await pilot.press("r")  # its own key restarts
            await until(pilot, lambda: type(app.screen).__name__ == "Dashboard")
            store = app.store

            async def restarted() -> bool:
                m = await store.mailing(marked.ids["stopped"])
                return m.state is MailingState.QUEUED and m.tripped is None

            for _ in range(200):
                if await restarted():
                    break
                await pilot.pause(0.02)
            assert await restarted()

    asyncio.run(main())
