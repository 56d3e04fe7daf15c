"""SVG snapshots of the dashboard: the three panels and the Actions menu of each section.

Deterministic: a fixed database, a frozen clock, the operator in Europe/Berlin, and a sender
"in another process" (a held lease with fixed words, fixed progress meta), so nothing moves.
Update with `pytest tests/tui/test_snapshots_app.py --snapshot-update` and look at the pictures.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from textual.pilot import Pilot

from mailtower.tui.app import DashboardApp

from .conftest import FIXED_NOW, OPERATOR_TZ, Clock, Fixture, HeldLease, build_fixed, put_sender_meta, settings_for

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]


def frozen_app(db: Path) -> DashboardApp:
    return DashboardApp(settings_for(db), start_sender=False, now=Clock(), operator_tz=OPERATOR_TZ)


async def settled(pilot: Pilot[int]) -> None:
    app = pilot.app
    assert isinstance(app, DashboardApp)
    for _ in range(200):
        if app.renders and app.dashboard.header.info is not None and app.sections:
            break
        await pilot.pause(0.02)
    await pilot.pause()


@pytest.fixture
def monitored(fixed_db: Fixture, held_lease: HeldLease) -> Fixture:
    asyncio.run(put_sender_meta(fixed_db.db, FIXED_NOW))
    return fixed_db


@pytest.fixture
def monitored_idle(tmp_path: Path) -> Fixture:
    fx = asyncio.run(build_fixed(tmp_path / "idle.db", sending=False, small=True))
    asyncio.run(put_sender_meta(fx.db, FIXED_NOW, state="idle", rate=0.0, accepted_ago=125))
    lease = HeldLease(fx.db)
    yield fx  # type: ignore[misc]
    lease.release()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("panel,presses", [("current", []), ("scheduled", ["tab"]), ("inactive", ["tab", "tab"])])
def test_panels(snap_compare, monitored: Fixture, size: tuple[int, int], panel: str, presses: list[str]) -> None:
    assert snap_compare(frozen_app(monitored.db), press=presses, terminal_size=size, run_before=settled)


@pytest.mark.parametrize("size", SIZES)
def test_actions_current(snap_compare, monitored: Fixture, size: tuple[int, int]) -> None:
    assert snap_compare(frozen_app(monitored.db), press=["a"], terminal_size=size, run_before=settled)


@pytest.mark.parametrize("size", SIZES)
def test_actions_scheduled_cancel_withheld_while_sending(snap_compare, monitored: Fixture, size: tuple[int, int]) -> None:
    # Second row of Scheduled (Tokyo); the first is the missed one.
    assert snap_compare(frozen_app(monitored.db), press=["tab", "j", "a"], terminal_size=size, run_before=settled)


@pytest.mark.parametrize("size", SIZES)
def test_actions_scheduled_cancel_offered_when_idle(snap_compare, monitored_idle: Fixture, size: tuple[int, int]) -> None:
    assert snap_compare(frozen_app(monitored_idle.db), press=["tab", "j", "a"], terminal_size=size, run_before=settled)


@pytest.mark.parametrize("size", SIZES)
def test_actions_inactive_stopped(snap_compare, monitored: Fixture, size: tuple[int, int]) -> None:
    assert snap_compare(frozen_app(monitored.db), press=["tab", "tab", "a"], terminal_size=size, run_before=settled)


@pytest.mark.parametrize("size", SIZES)
def test_actions_inactive_draft(snap_compare, monitored: Fixture, size: tuple[int, int]) -> None:
    assert snap_compare(frozen_app(monitored.db), press=["tab", "tab", "j", "j", "a"], terminal_size=size, run_before=settled)


@pytest.mark.parametrize("size", SIZES)
def test_stalled_header(snap_compare, monitored: Fixture, size: tuple[int, int]) -> None:
    async def stall(pilot: Pilot[int]) -> None:
        await settled(pilot)
        app = pilot.app
        assert isinstance(app, DashboardApp)
        later = FIXED_NOW.timestamp() + 45
        await put_sender_meta(monitored.db, FIXED_NOW.replace(second=45), accepted_ago=48)
        for _ in range(200):
            if app._remote is not None and app._remote.heartbeat == round(later, 3):
                break
            await pilot.pause(0.02)
        app.now.advance(45)  # type: ignore[attr-defined]
        for _ in range(200):
            if "STALLED" in app.dashboard.header.plain:
                break
            await pilot.pause(0.02)

    assert snap_compare(frozen_app(monitored.db), terminal_size=size, run_before=stall)


@pytest.mark.parametrize("size", SIZES)
def test_help(snap_compare, monitored: Fixture, size: tuple[int, int]) -> None:
    assert snap_compare(frozen_app(monitored.db), press=["question_mark"], terminal_size=size, run_before=settled)
