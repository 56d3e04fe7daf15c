"""Driving the dashboard through Textual's Pilot on a real database, as a person would.

Shared by the dashboard test modules: start the app with a frozen clock and no sender of its own,
wait for its first render, open the store beside it, and walk to a mailing's row with Tab and j/k.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from textual.pilot import Pilot

from mailtower.core.domain import MailingState, Section
from mailtower.core.store import Store
from mailtower.tui.app import DashboardApp
from mailtower.tui.panels import MailingTable

from .conftest import OPERATOR_TZ, Clock, settings_for, wait_for


def dashboard_app(db: Path, clock: Clock | None = None, **kwargs: Any) -> DashboardApp:
    """The dashboard on `db` with a frozen clock; no sender of its own unless asked."""
    kwargs.setdefault("start_sender", False)
    settings = kwargs.pop("settings", None) or settings_for(db)
    return DashboardApp(settings, now=clock or Clock(), operator_tz=OPERATOR_TZ, **kwargs)


@asynccontextmanager
async def running(app: DashboardApp, size: tuple[int, int] = (80, 24)) -> AsyncIterator[Pilot[int]]:
    async with app.run_test(size=size) as pilot:
        await wait_for(lambda: bool(app.renders and app.store is not None and app.sections), what="first render")
        yield pilot


@asynccontextmanager
async def opened(db: Path) -> AsyncIterator[Store]:
    store = await Store.open(db)
    try:
        yield store
    finally:
        await store.close()


async def state_of(db: Path, mailing_id: int) -> MailingState | None:
    """The mailing's state as the database has it now; None once it is deleted."""
    async with opened(db) as store:
        for mailing in await store.mailings():
            if mailing.id == mailing_id:
                return mailing.state
    return None


def table(app: DashboardApp, section: Section) -> MailingTable:
    return app.dashboard.table(section)


async def focus_row(pilot: Pilot[int], section: Section, mailing_id: int) -> None:
    """Tab to the section's panel and walk to the mailing's row with j/k, like a person would."""
    app = pilot.app
    assert isinstance(app, DashboardApp)
    for _ in range(4):
        if app.dashboard.focused is table(app, section):
            break
        await pilot.press("tab")
    target = table(app, section)
    assert app.dashboard.focused is target
    await wait_for(lambda: str(mailing_id) in target.keys, what=f"mailing {mailing_id} in {section.value}")
    index = target.keys.index(str(mailing_id))
    for _ in range(len(target.keys) + 1):
        if target.cursor_row == index:
            break
        await pilot.press("j" if target.cursor_row < index else "k")
    assert target.highlighted_key() == str(mailing_id)
