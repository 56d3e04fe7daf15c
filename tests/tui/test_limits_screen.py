"""The Sending limits dialog, mounted in a tiny host app over a real store.

Pilot tests drive it from the keyboard (and the mouse) and check what it shows, what it writes
to the settings table and what it dismisses with; SVG snapshots pin its look at 80x24 and 120x40
with an injected clock and change times written straight into the settings table.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from textual.app import App
from textual.pilot import Pilot
from textual.widgets import Button, Input, Static

from mailtower.core.config import Settings, load_settings
from mailtower.core.limits import Limits, read_limits
from mailtower.core.store import Store, iso
from mailtower.tui.screens.limits import SAVED, LimitsScreen, describe_change, format_value, limit_problem
from tests.helpers import until

NOW = datetime(2027, 1, 15, 14, 5, 11, tzinfo=timezone.utc)
SIZES = [(80, 24), (120, 40)]


# --- data and host -------------------------------------------------------------------------


def settings_in(tmp_path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    return load_settings({"db": tmp_path / "db.sqlite"}, environ=dict(environ or {}), config_path=tmp_path / "none.toml")


async def write_limits(db: Path, values: dict[str, tuple[str, datetime]]) -> None:
    """Limits as an operator set them earlier, with known change times."""
    store = await Store.open(db)
    try:
        async with store.write() as tx:
            await tx.db.executemany(
                "INSERT OR REPLACE INTO settings (key, value, changed_at) VALUES (?, ?, ?)",
                [(f"limit.{name}", value, iso(when)) for name, (value, when) in values.items()],
            )
    finally:
        await store.close()


async def stored(db: Path) -> dict[str, tuple[str, datetime]]:
    store = await Store.open(db)
    try:
        return await store.get_settings()
    finally:
        await store.close()


async def read_limits_of(settings: Settings) -> Limits:
    store = await Store.open(settings.db)
    try:
        return await read_limits(store, settings)
    finally:
        await store.close()


class Host(App[None]):
    """Opens the store, pushes the dialog, records what it dismisses with."""

    TITLE = "mailtower limits"

    def __init__(self, settings: Settings, now: Callable[[], datetime] | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.now = now
        self.results: list[bool] = []
        self.store: Store | None = None

    async def on_mount(self) -> None:
        self.store = await Store.open(self.settings.db)
        self.push_screen(LimitsScreen(self.store, self.settings, now=self.now), self.results.append)

    async def on_unmount(self) -> None:
        if self.store is not None:
            await self.store.close()



async def loaded(pilot: Pilot[Any]) -> LimitsScreen:
    """The dialog once it has read the limits and filled its fields."""
    await until(pilot, lambda: isinstance(pilot.app.screen, LimitsScreen) and pilot.app.screen.limits is not None)
    await pilot.pause()
    return pilot.app.screen  # type: ignore[return-value]


def field(screen: LimitsScreen, name: str) -> str:
    return screen.query_one(f"#{name}", Input).value


def shown(screen: LimitsScreen, selector: str) -> str:
    widget = screen.query_one(selector, Static)
    return str(widget.render()) if widget.display else ""


async def retype(pilot: Pilot[Any], name: str, text: str) -> None:
    """Focus a field, clear it and type key by key, as an operator would."""
    widget = pilot.app.screen.query_one(f"#{name}", Input)
    widget.focus()
    widget.value = ""
    await pilot.press(*text)
    await pilot.pause()


def notified(app: App[Any], text: str) -> bool:
    return any(text in str(n.message) for n in app._notifications)


# --- pure helpers --------------------------------------------------------------------------


def test_limit_problem_speaks_for_the_field() -> None:
    assert limit_problem("rate", "2.5") is None
    assert limit_problem("rate", "0") is None
    assert limit_problem("connections", "0") == "'0' must be at least 1"
    assert limit_problem("connections", "1.5") == "'1.5' is not a whole number"
    assert limit_problem("messages_per_connection", " ") == "enter a number"


def test_describe_change_and_format_value() -> None:
    assert describe_change(None, NOW) == "from configuration"
    assert describe_change(NOW - timedelta(minutes=3), NOW) == "changed 14:02:11 UTC, 3 min ago"
    assert describe_change(NOW - timedelta(days=2), NOW) == "changed 2027-01-13 14:05:11 UTC, 2 d 0 h ago"
    assert (format_value(50.0), format_value(2.5), format_value(4)) == ("50", "2.5", "4")


# --- behaviour -----------------------------------------------------------------------------


async def test_prefill_shows_configuration_values(tmp_path: Path) -> None:
    settings = settings_in(tmp_path, {"MAILTOWER_RATE": "12.5", "MAILTOWER_SMTP_CONNECTIONS": "3"})
    app = Host(settings, now=lambda: NOW)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await loaded(pilot)
        assert {name: field(screen, name) for name in ("rate", "rate_per_hour", "connections", "messages_per_connection")} == {
            "rate": "12.5",
            "rate_per_hour": "0",
            "connections": "3",
            "messages_per_connection": str(settings.messages_per_connection),
        }
        assert shown(screen, "#rate-changed") == "from configuration"
        assert shown(screen, "#connections-error") == ""
        assert not screen.query_one("#save", Button).disabled
        assert screen.focused is screen.query_one("#rate", Input)


async def test_prefill_shows_stored_values_with_their_change_time(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    await write_limits(settings.db, {"connections": ("6", NOW - timedelta(minutes=3))})
    app = Host(settings, now=lambda: NOW)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await loaded(pilot)
        assert field(screen, "connections") == "6"
        assert shown(screen, "#connections-changed") == "changed 14:02:11 UTC, 3 min ago"
        assert shown(screen, "#rate-changed") == "from configuration"


@pytest.mark.parametrize("how", ["ctrl+s", "enter-in-field", "tab-to-save"])
async def test_typing_a_rate_and_saving_writes_only_that(tmp_path: Path, how: str) -> None:
    settings = settings_in(tmp_path)
    app = Host(settings)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await loaded(pilot)
        await retype(pilot, "rate", "50")
        if how == "ctrl+s":
            await pilot.press("ctrl+s")
        elif how == "enter-in-field":
            await pilot.press("enter")
        else:
            # Keyboard only: Tab walks the three other fields and Cancel to reach Save.
            await pilot.press(*["tab"] * 5)
            assert screen.focused is screen.query_one("#save", Button)
            await pilot.press("enter")
        await until(pilot, lambda: app.results == [True])
        assert notified(app, SAVED)
    limits = await read_limits_of(settings)
    assert limits.rate == 50
    assert set(limits.changed_at) == {"rate"}
    assert abs((datetime.now(timezone.utc) - limits.changed_at["rate"]).total_seconds()) < 60


async def test_mouse_clicks_a_field_and_save(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    app = Host(settings)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await loaded(pilot)
        assert await pilot.click("#messages_per_connection")
        assert screen.focused is screen.query_one("#messages_per_connection", Input)
        await pilot.press("end", "shift+home", "2", "0", "0")  # select the value, then type over it
        assert field(screen, "messages_per_connection") == "200"
        assert await pilot.click("#save")
        await until(pilot, lambda: app.results == [True])
    assert (await read_limits_of(settings)).messages_per_connection == 200


async def test_invalid_connections_shows_the_error_and_save_does_nothing(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    app = Host(settings)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await loaded(pilot)
        await retype(pilot, "rate", "50")
        await retype(pilot, "connections", "0")
        assert shown(screen, "#connections-error") == "✗ '0' must be at least 1"
        assert screen.query_one("#save", Button).disabled
        await pilot.press("ctrl+s")
        await pilot.press("enter")
        await pilot.click("#save")
        await pilot.pause()
        assert pilot.app.screen is screen and app.results == []
        # Fixing the field clears the error and saves both changes.
        await retype(pilot, "connections", "2")
        assert shown(screen, "#connections-error") == ""
        await pilot.press("ctrl+s")
        await until(pilot, lambda: app.results == [True])
    assert set((await stored(settings.db))) == {"limit.rate", "limit.connections"}


async def test_escape_changes_nothing(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    app = Host(settings)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        await retype(pilot, "rate", "50")
        await pilot.press("escape")
        await until(pilot, lambda: app.results == [False])
    assert await stored(settings.db) == {}


async def test_saving_unchanged_values_writes_nothing(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    app = Host(settings)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        await retype(pilot, "connections", str(settings.connections))
        await pilot.press("ctrl+s")
        await until(pilot, lambda: app.results == [False])
    assert await stored(settings.db) == {}


# --- snapshots -----------------------------------------------------------------------------


def snapshot_settings(tmp_path: Path) -> Settings:
    settings = settings_in(tmp_path, {})  # nothing given: the dialog shows the stored live limits
    asyncio.run(
        write_limits(
            settings.db,
            {
                "rate": ("35.0", NOW - timedelta(minutes=3)),
                "connections": ("8", NOW - timedelta(days=1, hours=2)),
            },
        )
    )
    return settings


def settled(then: Callable[[Pilot[Any]], Awaitable[None]] | None = None) -> Callable[[Pilot[Any]], Awaitable[None]]:
    async def run_before(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        if then is not None:
            await then(pilot)
        await pilot.pause()

    return run_before


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "120x40"])
def test_snapshot_limits(tmp_path: Path, snap_compare: Any, size: tuple[int, int]) -> None:
    app = Host(snapshot_settings(tmp_path), now=lambda: NOW)
    assert snap_compare(app, terminal_size=size, run_before=settled())


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "120x40"])
def test_snapshot_limits_invalid(tmp_path: Path, snap_compare: Any, size: tuple[int, int]) -> None:
    async def type_zero(pilot: Pilot[Any]) -> None:
        await retype(pilot, "connections", "0")

    app = Host(snapshot_settings(tmp_path), now=lambda: NOW)
    assert snap_compare(app, terminal_size=size, run_before=settled(type_zero))


async def test_a_live_limit_raised_in_the_dashboard_survives_the_hand_off(tmp_path: Path) -> None:
    """Started with --rate 2, raised to 50 in the dialog: the dashboard's sender sent at 50, but the
    background sender it hands off to was told --rate 2 was given, found the 50 stored before its
    own start, and went back to 2. A limit stored while the dashboard was open is handed on as
    the operator's latest word; one stored before it opened still meets the flag."""
    from dataclasses import replace

    from mailtower.core.limits import set_limits
    from mailtower.core.store import Store

    from .pilot import dashboard_app, running

    db = tmp_path / "m.db"
    store = await Store.open(db)
    await set_limits(store, {"connections": 9})  # before: --connections 2 still meets it
    await store.close()
    settings = replace(settings_in(tmp_path, {}), db=db, rate=2.0, connections=2,
                       limit_sources=(("rate", "--rate"), ("connections", "--connections")))
    app = dashboard_app(db, settings=settings)
    async with running(app):
        store = await Store.open(db)
        await set_limits(store, {"rate": 50})
        await store.close()
        handed = await app._handoff_settings()
    assert handed.limit_sources == (("connections", "--connections"),)
