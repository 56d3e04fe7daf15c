"""Per domain group figures in the dashboard (issue 13, item 3): the Details screen's Domains
table, the header's "2 domains throttled", and the limits dialog's group Select."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from textual.app import App
from textual.widgets import Input, Select

from mailtower.core.config import DomainGroupSpec, Settings
from mailtower.core.limits import read_limits
from mailtower.core.store import Store
from mailtower.tui.app import DashboardApp
from mailtower.tui.header import HeaderInfo, Mode, header_text
from mailtower.tui.screens import DetailsScreen
from mailtower.tui.screens.limits import LimitsScreen
from tests.helpers import until

from .conftest import FIXED_NOW, OPERATOR_TZ, Clock, Fixture, HeldLease, put_sender_meta, settings_for
from .test_screens import Host, opened, settled, stopped_mailing, text_of

GROUPS = (
    DomainGroupSpec("bigmail", ("example.org",), connections=4, rate=20, per_hour=5000),
    DomainGroupSpec("netmail", ("example.net",), rate=5),
)


def live_doc(mailing_id: int) -> dict[str, object]:
    """What a sender publishes while it sends `mailing_id` (fixed, for the pictures)."""
    return {
        "mailing": mailing_id,
        "groups": [
            {"group": "bigmail", "in_flight": 3, "waiting": 12, "rate": 9.5, "limit_rate": 10.0, "state": "throttled",
             "reason": "421 4.7.0 Try again later", "last_reply": "421 4.7.0 Try again later"},
            {"group": "netmail", "in_flight": 1, "waiting": 0, "rate": 4.9, "limit_rate": 5.0, "state": "ok",
             "reason": "", "last_reply": "450 4.2.1 mailbox busy"},
            {"group": "default", "in_flight": 2, "waiting": 0, "rate": 31.0, "limit_rate": 0.0, "state": "ok",
             "reason": "", "last_reply": ""},
        ],
    }


def details_with_domains(settings: Settings, live: dict[str, object]):  # type: ignore[no-untyped-def]
    def make(store: Store, mailing: Any) -> DetailsScreen:
        return DetailsScreen(store, mailing, operator_tz="Europe/Berlin", domains=(settings, lambda: live))

    return make


async def test_details_show_each_domain_group_live(tmp_path: Path) -> None:
    db, mailing_id = await stopped_mailing(tmp_path)
    settings = replace(settings_for(db), domains=GROUPS)
    app = Host(db, mailing_id, details_with_domains(settings, live_doc(mailing_id)))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await opened(pilot, DetailsScreen)
        await until(pilot, lambda: "bigmail" in text_of(screen.query_one("#domains")))
        lines = {line.split()[0]: line for line in text_of(screen.query_one("#domains")).splitlines()[2:] if line.strip()}
        # Counts from the ledger (stopped_mailing: 20 sent, 8 failed, 6 deferred over three domains).
        assert set(lines) == {"bigmail", "netmail", "default"}
        assert "throttled  421 4.7.0 Try again later" in lines["bigmail"] and "9.5/s" in lines["bigmail"]
        assert "ok" in lines["netmail"] and "450 4.2.1 mailbox busy" in lines["netmail"]
        counted = [line.split()[1:4] for line in lines.values()]
        assert sum(int(c[0]) for c in counted) == 20 and sum(int(c[2]) for c in counted) == 8
        assert sum(int(c[1]) for c in counted) == 6


async def test_details_without_groups_show_no_domains_table(tmp_path: Path) -> None:
    db, mailing_id = await stopped_mailing(tmp_path)
    app = Host(db, mailing_id, details_with_domains(settings_for(db), live_doc(mailing_id)))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await opened(pilot, DetailsScreen)
        await pilot.pause()
        assert not screen.query_one("#domains").display


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_snapshot_details_with_domains(tmp_path: Path, snap_compare: Any, size: tuple[int, int]) -> None:
    db, mailing_id = asyncio.run(stopped_mailing(tmp_path))
    settings = replace(settings_for(db), domains=GROUPS)
    app = Host(db, mailing_id, details_with_domains(settings, live_doc(mailing_id)))
    assert snap_compare(app, terminal_size=size, run_before=settled(DetailsScreen))


def test_header_counts_throttled_domains() -> None:
    base = HeaderInfo(Mode.SENDING, rate=12.0, last_accept_age=1.0)
    assert "throttled" not in header_text(base).plain
    assert "· 2 domains throttled" in header_text(replace(base, domains_throttled=2)).plain
    assert "· 1 domain throttled" in header_text(replace(base, domains_throttled=1)).plain


async def test_header_of_a_monitoring_dashboard_says_how_many_domains_are_throttled(
    fixed_db: Fixture, held_lease: HeldLease
) -> None:
    await put_sender_meta(fixed_db.db, FIXED_NOW)
    doc = live_doc(1)
    doc["groups"][1]["state"] = "throttled"  # type: ignore[index]
    store = await Store.open(fixed_db.db)
    try:
        await store.put_meta({"sender_domains": json.dumps(doc)})
    finally:
        await store.close()
    app = DashboardApp(settings_for(fixed_db.db), start_sender=False, now=Clock(), operator_tz=OPERATOR_TZ)
    async with app.run_test(size=(160, 30)) as pilot:
        await until(pilot, lambda: app.dashboard.header.info is not None and "throttled" in app.dashboard.header.plain)
        assert "2 domains throttled" in app.dashboard.header.plain


class LimitsHost(App[None]):
    """Opens the store and the limits dialog; records what it dismisses with."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.results: list[Any] = []
        self.store: Store | None = None

    async def on_mount(self) -> None:
        self.store = await Store.open(self.settings.db)
        self.push_screen(LimitsScreen(self.store, self.settings), self.results.append)

    async def on_unmount(self) -> None:
        if self.store is not None:
            await self.store.close()


async def show_group(pilot: Any, app: LimitsHost, group: str, rate: str) -> LimitsScreen:
    """The dialog once it shows `group`'s limits (its rate field reads `rate`)."""
    await until(pilot, lambda: isinstance(app.screen, LimitsScreen) and app.screen.limits is not None)
    screen = app.screen
    assert isinstance(screen, LimitsScreen)
    screen.query_one("#scope", Select).value = group
    await until(pilot, lambda: screen.query_one("#rate", Input).value == rate)
    return screen


async def test_limits_dialog_changes_one_domain_group(tmp_path: Path) -> None:
    settings = replace(settings_for(tmp_path / "l.db"), domains=GROUPS)
    app = LimitsHost(settings)
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await show_group(pilot, app, "netmail", "5")
        assert not screen.query_one("#messages_per_connection-box").display
        assert screen.query_one("#connections", Input).value == "0"  # no cap of its own: allowed here
        rate = screen.query_one("#rate", Input)
        rate.focus()
        rate.value = ""
        await pilot.press("8", "enter")
        await until(pilot, lambda: app.results == [True])
    store = await Store.open(tmp_path / "l.db")
    try:
        limits = await read_limits(store, settings)
    finally:
        await store.close()
    assert limits.domains == {"netmail": {"rate": 8.0}}
    assert limits.rate == settings.rate  # the whole sender's limits are untouched


async def test_limits_dialog_refuses_a_bad_group_value(tmp_path: Path) -> None:
    settings = replace(settings_for(tmp_path / "l.db"), domains=GROUPS)
    app = LimitsHost(settings)
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await show_group(pilot, app, "bigmail", "20")
        screen.query_one("#connections", Input).value = "501"
        await pilot.pause()
        assert "must be at most 500" in text_of(screen.query_one("#connections-error"))
        assert screen.query_one("#save").disabled





async def test_a_groups_connections_set_to_no_cap_asks_first(tmp_path: Path) -> None:
    """0 connections is "no cap of its own" for a domain group: bigmail may then use every one of
    the sender's connections, five times its cap of 4. It was taken for a decrease and saved
    without the question that 9 (more than double) gets."""
    from mailtower.tui.screens.confirm import ConfirmDialog

    settings = replace(settings_for(tmp_path / "l.db"), domains=GROUPS, connections=20)
    app = LimitsHost(settings)
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await show_group(pilot, app, "bigmail", "20")
        connections = screen.query_one("#connections", Input)
        connections.focus()
        connections.value = ""
        await pilot.press("0", "enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        question = app.screen
        assert isinstance(question, ConfirmDialog)
        assert "Connections: 4 → no cap of its own" in question.message
        await pilot.press("enter")  # the question opens on Go back
        await until(pilot, lambda: app.screen is screen)
    store = await Store.open(tmp_path / "l.db")
    try:
        limits = await read_limits(store, settings)
    finally:
        await store.close()
    assert limits.domains == {}  # nothing saved
