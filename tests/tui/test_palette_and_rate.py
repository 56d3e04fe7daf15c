"""Issue 11: the command palette reaches every action on every mailing, "Keys" is listed once, and
the header shows the rate of the last minutes as a sparkline.

Everything runs on real SQLite files through Textual's Pilot; the rate comes from the meta a
sending process writes (a held lease stands for that process).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from collections.abc import AsyncIterator
from typing import Any

import pytest
from textual.command import CommandInput, CommandList, CommandPalette
from textual.pilot import Pilot
from textual.widgets import Sparkline

from mailtower.core.domain import Mailing, MailingState, Section
from mailtower.core.config import RelaySpec
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.sink import Sink
from mailtower.tui.app import DashboardApp
from mailtower.tui.help import HelpScreen
from mailtower.tui.palette import MAX_HITS, YIELD_EVERY, MailingCommand, PaletteIndex, commands_of, mailing_offers
from mailtower.tui.screens.confirm import ConfirmDialog
from mailtower.tui.sparkline import SAMPLES, RateHistory, RateSparklines
from tests.helpers import until

from .conftest import FIXED_NOW, OPERATOR_TZ, Clock, Fixture, HeldLease, new_mailing, put_sender_meta, settings_for
from .pilot import dashboard_app as dashboard, opened, running, state_of

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]


# ---- helpers ---------------------------------------------------------------------------------


async def add_stopped(db: Path, name: str, n: int = 30) -> int:
    async with opened(db) as store:
        mailing_id = await new_mailing(store, db.parent, name, n)
        lifecycle = Lifecycle(store)
        await lifecycle.send_now(mailing_id)
        await lifecycle.stop(mailing_id)
    return mailing_id


def palette_lines(app: DashboardApp) -> list[str]:
    """The first line (the command, without its help line) of every entry the palette shows."""
    palette = app.screen
    assert isinstance(palette, CommandPalette)
    options = palette.query_one(CommandList)
    return [str(options.get_option_at_index(i).prompt).split("\n")[0] for i in range(options.option_count)]


def searching(app: DashboardApp) -> bool:
    return any(w.node is app.screen and w.group == CommandPalette._GATHER_COMMANDS_GROUP and not w.is_finished
               for w in app.workers)


async def search(pilot: Pilot[int], query: str, shows: str, timeout: float = 10.0, first: bool = False) -> list[str]:
    """Open the palette (if needed), type `query`, and wait until its search has finished and the
    entry `shows` is the first of its kind (the list of an earlier, shorter query can still be
    on screen for a moment after the last key, so the input's value alone proves nothing)."""
    app = pilot.app
    assert isinstance(app, DashboardApp)
    if not isinstance(app.screen, CommandPalette):
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette))
    await pilot.press(*query)
    palette = app.screen
    assert isinstance(palette, CommandPalette)

    def done() -> bool:
        if palette.query_one(CommandInput).value != query or searching(app):
            return False
        lines = palette_lines(app)
        if first:
            return lines[:1] == [shows]
        return shows in lines and all(query.casefold().split()[0] in line.casefold() for line in lines[:1])

    await until(pilot, done, timeout=timeout)
    return palette_lines(app)


async def choose_line(pilot: Pilot[int], line: str) -> None:
    """Move the palette's cursor to the entry `line` and press Enter."""
    app = pilot.app
    palette = app.screen
    assert isinstance(palette, CommandPalette)
    options = palette.query_one(CommandList)
    index = palette_lines(app).index(line)  # type: ignore[arg-type]
    for _ in range(options.option_count + 1):
        if options.highlighted == index:
            break
        await pilot.press("down")
    assert options.highlighted == index
    await pilot.press("enter")


# ---- the palette: every action on every mailing -------------------------------------------------


async def test_restart_spring_acts_on_that_mailing_whatever_is_highlighted(fixed_db: Fixture) -> None:
    db, ids = fixed_db.db, fixed_db.ids
    spring = await add_stopped(db, "Spring sale", 30)
    app = dashboard(db)
    async with running(app) as pilot:
        # The cursor is on another mailing ("Spring sale — Europe", Current, sending).
        assert app.highlighted() is not None and app.highlighted().id == ids["spring"]  # type: ignore[union-attr]
        lines = await search(pilot, "restart Spring", f"Restart 'Spring sale' (id {spring})")
        wanted = f"Restart 'Spring sale' (id {spring})"
        assert lines == [wanted]  # the sending "Spring sale — Europe" cannot be restarted
        await choose_line(pilot, wanted)
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        dialog = app.screen
        assert isinstance(dialog, ConfirmDialog)
        assert dialog.title_text == "Restart sending" and "“Spring sale”" in dialog.message
        await pilot.press("enter")  # the dialog opens on its safe choice: nothing happens
        await until(pilot, lambda: not isinstance(app.screen, ConfirmDialog))
        assert await state_of(db, spring) is MailingState.STOPPED

        await search(pilot, "restart Spring", wanted)
        await choose_line(pilot, wanted)
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        dialog = app.screen
        assert isinstance(dialog, ConfirmDialog) and dialog.key is not None
        await pilot.press(dialog.key)
        for _ in range(200):
            if await state_of(db, spring) is MailingState.QUEUED:
                break
            await pilot.pause(0.02)
        assert await state_of(db, spring) is MailingState.QUEUED
    assert await state_of(db, ids["spring"]) is MailingState.SENDING  # the highlighted one is untouched


async def test_every_section_every_action_and_names_are_plain_text(fixed_db: Fixture) -> None:
    ids = fixed_db.ids
    app = dashboard(fixed_db.db)
    async with running(app) as pilot:
        # Brackets in a name are the name, not markup; the mailing is not the highlighted one.
        lines = await search(pilot, "weekly", f"Details 'Newsletter #42 [weekly]' (id {ids['news']})")
        assert f"Details 'Newsletter #42 [weekly]' (id {ids['news']})" in lines
        assert f"Cancel sending 'Newsletter #42 [weekly]' (id {ids['news']})" in lines
        await pilot.press("escape")
        # Scheduled: the seed's rule shows here too (Cancel withheld while a mailing is sent).
        lines = await search(pilot, "berlin", f"Send now 'Berlin meetup' (id {ids['berlin']})")
        assert f"Cancel 'Berlin meetup' (id {ids['berlin']}) (not available)" in lines
        assert f"Send now 'Berlin meetup' (id {ids['berlin']})" in lines
        # The palette's entries are the Actions menu's, for every mailing.
        for mailing in (m for ms in app.sections.values() for m in ms):
            menu = [o for o in app.offers_for(mailing)]
            entries = commands_of(mailing, menu)
            assert [e.key for e in entries] == [o.key for o in menu]


def test_names_are_made_safe_and_offers_are_the_menus() -> None:
    mailing = Mailing(
        id=7, name="Promo \x1b[2J[b]bold[/b]\u202e", subject="s", from_addr="a@example.com", text_body="x",
        html_body=None, state=MailingState.STOPPED, position=None, schedule=None, missed=False, total=10,
        sent=4, failed=0, deferred=0, in_doubt=0, created_at=FIXED_NOW, started_at=None, finished_at=None,
        last_error=None,
    )
    entries = commands_of(mailing, mailing_offers(mailing, None, 0, any_sending=False))
    titles = [e.title for e in entries]
    assert titles[0].startswith("Restart 'Promo ") and titles[0].endswith("' (id 7)")
    assert all("\x1b" not in t and "\u202e" not in t and "[b]bold[/b]" in t for t in titles)
    assert entries[0].help.startswith("Restart (6 remaining)")


async def test_keys_is_listed_once_and_opens_the_dashboards_keys(fixed_db: Fixture) -> None:
    app = dashboard(fixed_db.db)
    async with running(app) as pilot:
        lines = await search(pilot, "keys", "Keys")
        assert lines.count("Keys") == 1
        await choose_line(pilot, "Keys")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, HelpScreen))
        # Before anything is typed, too.
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette) and not searching(app)
                    and app.screen.query_one(CommandList).option_count > 0)
        assert palette_lines(app).count("Keys") == 1


async def test_ten_thousand_mailings_keep_typing_fast_and_hits_capped(fixed_db: Fixture) -> None:
    app = dashboard(fixed_db.db)
    async with running(app, size=(120, 40)) as pilot:
        stopped = app.sections[Section.INACTIVE][0]
        assert stopped.state is MailingState.STOPPED
        many = [replace(stopped, id=100_000 + i, name=f"Bulk mailing {i}") for i in range(10_000)]
        # As if the store had read 10,000 inactive mailings (the panels draw only what is visible).
        app.sections = {**app.sections, Section.INACTIVE: many}
        renders = app.renders
        app.mark_dirty()
        await until(pilot, lambda: app.renders > renders and app.dashboard.table(Section.INACTIVE).keys[-1] == "109999")

        lines = await search(pilot, "restart bulk 9876", "Restart 'Bulk mailing 9876' (id 109876)",
                             timeout=60, first=True)
        assert lines[0] == "Restart 'Bulk mailing 9876' (id 109876)"
        await pilot.press(*["backspace"] * len(" bulk 9876"))  # back to "restart": 10,000 match
        palette = app.screen
        assert isinstance(palette, CommandPalette)
        await until(pilot, lambda: palette.query_one(CommandInput).value == "restart" and not searching(app)
                    and len(palette_lines(app)) > 1, timeout=60)
        lines = palette_lines(app)
        assert sum(1 for line in lines if line.startswith("Restart '")) == MAX_HITS

        # The search never goes over more than YIELD_EVERY mailings' entries without giving the
        # event loop a turn (keys and redraws go on meanwhile). Counted, not timed: how long a
        # turn waits is tests/bench/bench_palette.py's figure.
        stretches = entries_between_turns(PaletteIndex().scan(app.sections, app.situational_offers))
        per_mailing = max(len(app.offers_for(m)) for ms in app.sections.values() for m in ms)
        assert sum(stretches) >= 3 * len(many)  # every mailing's entries were looked at
        assert len(stretches) > len(many) // YIELD_EVERY
        assert max(stretches) <= YIELD_EVERY * per_mailing, f"{max(stretches)} entries without a turn"


def entries_between_turns(scan: AsyncIterator[MailingCommand]) -> list[int]:
    """Run `scan` by hand, as the event loop would: how many entries it gave between two of its
    turns given back to the loop (an `await asyncio.sleep(0)` inside it yields to the driver)."""
    stretches, entries = [], 0
    while True:
        step: Any = scan.__anext__()  # an awaitable driven like a coroutine
        try:
            while True:
                step.send(None)  # it gave the loop a turn
                stretches.append(entries)
                entries = 0
        except StopIteration:
            entries += 1  # an entry
        except StopAsyncIteration:
            break
    stretches.append(entries)
    return stretches


# ---- the rate sparkline -------------------------------------------------------------------------


async def put_meta(db: Path, **values: str) -> None:
    async with opened(db) as store:
        await store.put_meta(values)


async def test_sparkline_follows_the_monitored_rate_once_a_second(fixed_db: Fixture, held_lease: HeldLease) -> None:
    clock = Clock()
    db = fixed_db.db
    await put_sender_meta(db, clock(), rate=42.5)
    app = dashboard(db, clock)
    async with running(app) as pilot:
        strip = app.dashboard.query_one(RateSparklines)
        await until(pilot, lambda: strip.data.get("total", [0.0])[-1] == 42.5)
        spark = strip.query_one(Sparkline)
        assert list(spark.data or []) == strip.data["total"]
        assert len(strip.data["total"]) == SAMPLES + 1  # a fixed 5-minute axis (and the zero it starts from)
        samples = len(app.rate_history.total)
        await pilot.pause(1.2)  # the dashboard's clock stands still: no new sample however often it refreshes
        assert len(app.rate_history.total) == samples

        for rate, expected in [(7.0, 7.0), (float("nan"), 0.0), (float("inf"), 0.0), (-3.0, 0.0), (12.25, 12.25)]:
            # The other process writes its rate for the next second; then that second comes.
            later = clock() + timedelta(seconds=1)
            await put_sender_meta(db, later, rate=rate)
            await until(pilot, lambda: app._remote is not None and app._remote.heartbeat == round(later.timestamp(), 3))
            assert len(app.rate_history.total) == samples
            clock.advance(1)
            await until(pilot, lambda: len(app.rate_history.total) == samples + 1)
            samples += 1
            assert app.rate_history.total[-1] == expected
            await until(pilot, lambda: strip.data["total"][-1] == expected)
        assert list(app.rate_history.total)[-6:] == [42.5, 7.0, 0.0, 0.0, 0.0, 12.25]
        assert list(spark.data or [])[-6:] == [42.5, 7.0, 0.0, 0.0, 0.0, 12.25]
        # Once the other process stops writing, it is silent: the rate drawn is 0.
        clock.advance(30)
        await until(pilot, lambda: strip.data["total"][-1] == 0.0 and len(app.rate_history.total) == samples + 1)


def test_rate_history_is_bounded_and_follows_the_pool() -> None:
    history = RateHistory(size=5)
    for i in range(12):
        history.sample(float(i), [("a", 1.0), ("b", 2.0)] if i < 10 else [("a", 1.0)])
    assert list(history.total) == [7.0, 8.0, 9.0, 10.0, 11.0]
    assert list(history.relays) == ["a"]  # b left the pool
    history.sample(3.0, [("a", 1.0), ("c", 4.0)])
    assert list(history.relays["c"]) == [0.0, 0.0, 0.0, 0.0, 4.0]  # one time axis for all
    assert history.padded(history.relays["c"]) == [0.0, 0.0, 0.0, 0.0, 0.0, 4.0]


@pytest.mark.parametrize("width,expected", [(80, ("total",)), (120, ("total",)), (200, ("relay-one", "relay-two"))])
async def test_one_sparkline_per_relay_only_on_wide_terminals(fixed_db: Fixture, width: int, expected: tuple[str, ...]) -> None:
    app = dashboard(fixed_db.db)
    async with running(app, size=(width, 30)) as pilot:
        app.rate_history.sample(10.0, [("relay-one", 4.0), ("relay-two", 6.0)])
        app.mark_dirty()
        strip = app.dashboard.query_one(RateSparklines)
        await until(pilot, lambda: strip.shown == expected and all(strip.data.get(n) for n in expected))
        await pilot.pause()
        assert len(strip.query(Sparkline)) == len(expected)
        # One line, at the right of the header: no panel row is given up for it.
        assert strip.region.y == 0 and strip.region.height == 1 and strip.region.right == width
        header = app.dashboard.header
        assert header.region.y == 0 and header.region.right == strip.region.x


async def test_own_sender_pool_feeds_one_sparkline_per_relay(tmp_path: Path) -> None:
    db = tmp_path / "pool.db"
    async with opened(db) as store:
        mailing_id = await new_mailing(store, tmp_path, "Pool run", 600)
        await Lifecycle(store).send_now(mailing_id)
    with Sink() as one, Sink() as two:
        relays = tuple(RelaySpec("127.0.0.1", sink.port, tls="none", connections=2, rate=60.0, name=name)
                       for sink, name in ((one, "relay-one"), (two, "relay-two")))
        settings = replace(settings_for(db, one.port), relays=relays)
        app = DashboardApp(settings, operator_tz=OPERATOR_TZ, hand_off_on_quit=False)
        started = time.monotonic()
        async with running(app, size=(200, 30)) as pilot:
            strip = app.dashboard.query_one(RateSparklines)
            history = app.rate_history

            def both_drawn() -> bool:
                return strip.shown == ("relay-one", "relay-two") and all(
                    max(strip.data.get(name, [0.0])) > 0 for name in strip.shown)

            await until(pilot, both_drawn, timeout=30)
            assert max(history.total) > 0 and len(strip.query(Sparkline)) == 2
            # One sample a second of the real clock, however often the panels were refreshed.
            assert len(history.total) <= time.monotonic() - started + 2
            await app.leave(ask=False, hand_off=False).wait()


@pytest.mark.parametrize("width", [80, 120])
async def test_sparkline_never_costs_the_header_a_word(fixed_db: Fixture, held_lease: HeldLease, width: int) -> None:
    clock = Clock()
    await put_sender_meta(fixed_db.db, clock(), accepted_ago=48)
    app = dashboard(fixed_db.db, clock, stall_after=30.0)
    async with running(app, size=(width, 24)) as pilot:
        header = app.dashboard.header
        strip = app.dashboard.query_one(RateSparklines)
        await until(pilot, lambda: "sending 42.5 msg/s" in header.plain and strip.display)
        assert strip.region.width == 12 and "accepted 48 s ago" in header.plain
        # STALLED takes the room: at 80 columns the sparkline steps aside rather than cut the age.
        await put_sender_meta(fixed_db.db, clock() + timedelta(seconds=40), accepted_ago=58)
        clock.advance(40)
        await until(pilot, lambda: "STALLED" in header.plain)
        await pilot.pause()
        assert "accepted 58 s ago" in header.plain and "…" not in header.plain
        assert strip.display is (width > 80)


# ---- pictures -------------------------------------------------------------------------------------


@pytest.fixture
def monitored(fixed_db: Fixture, held_lease: HeldLease) -> Fixture:
    asyncio.run(put_sender_meta(fixed_db.db, FIXED_NOW))
    return fixed_db


async def settled(pilot: Pilot[int]) -> None:
    app = pilot.app
    assert isinstance(app, DashboardApp)
    await until(pilot, lambda: bool(app.renders and app.dashboard.header.info is not None and app.sections))
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_palette_every_mailing(snap_compare: Any, monitored: Fixture, size: tuple[int, int]) -> None:
    async def typed(pilot: Pilot[int]) -> None:
        await settled(pilot)
        await search(pilot, "sale", "Details 'Spring sale — Europe' (id 1)")
        await pilot.pause()

    assert snap_compare(dashboard(monitored.db), terminal_size=size, run_before=typed)


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_rate_sparkline(snap_compare: Any, monitored: Fixture, size: tuple[int, int]) -> None:
    async def history(pilot: Pilot[int]) -> None:
        await settled(pilot)
        app = pilot.app
        assert isinstance(app, DashboardApp)
        # Five minutes of a sender warming up, throttled for a while, then back at full speed
        # (the frozen clock takes no further sample, so the picture is the same every time).
        for second in range(SAMPLES):
            rate = min(second, 60) * 0.7 if second < 150 else (8.0 if second < 210 else 42.5)
            app.rate_history.sample(rate)
        app.mark_dirty()
        strip = app.dashboard.query_one(RateSparklines)
        await until(pilot, lambda: strip.data.get("total", [])[-1:] == [42.5] and strip.data["total"][-100] == 8.0)
        await pilot.pause()

    assert snap_compare(dashboard(monitored.db), terminal_size=size, run_before=history)
