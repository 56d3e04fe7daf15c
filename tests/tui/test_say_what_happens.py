"""The dashboard says what happens (issues 10 and 11): a paused or throttled relay, a server that
is down, a schedule at a time that does not exist, a mailing waiting only for retries, counts
that agree, and the first estimates of a run.

Everything runs on real SQLite files through Textual's Pilot; a sender "in another process" is a
held lease plus the meta rows such a sender writes (the same rows `mailtower status --json`
reads), a sender in this process is the real one, against a real SMTP server on 127.0.0.1 (or a
port where nothing listens).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme
from textual.pilot import Pilot
from textual.widgets import OptionList, Static

from mailtower.core.config import load_settings
from mailtower.core.domain import MailingState, Section
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.operations import RESUME_REQUEST_KEY, parse_resume_request
from mailtower.core.sink import Sink, free_port
from mailtower.core.store import Store
from mailtower.core.timezones import Shift, resolve
from mailtower.tui.actions import ActionsMenu
from mailtower.tui.palette import PaletteIndex
from mailtower.tui.screens.confirm import ConfirmDialog
from mailtower.tui.app import DashboardApp
from mailtower.tui.screens.details import DetailsScreen
from tests.helpers import until

from .conftest import (
    FIXED_NOW,
    OPERATOR_TZ,
    Clock,
    Fixture,
    HeldLease,
    build_fixed,
    fake_progress,
    iso,
    new_mailing,
    put_sender_meta,
    settings_for,
    wait_for,
)

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]
USER, PASSWORD, WRONG = "mailer", "s3cret-Pa55word", "another password"
NOW = FIXED_NOW.timestamp()


# ---- helpers ---------------------------------------------------------------------------------


def frozen(db: Path, **kwargs: Any) -> DashboardApp:
    return DashboardApp(settings_for(db, **kwargs.pop("settings", {})), start_sender=False, now=Clock(),
                        operator_tz=OPERATOR_TZ, **kwargs)


@asynccontextmanager
async def running(app: DashboardApp, size: tuple[int, int] = (120, 40)) -> AsyncIterator[Pilot[int]]:
    async with app.run_test(size=size) as pilot:
        await wait_for(lambda: app.renders > 0 and app.store is not None, what="first render")
        yield pilot


async def settled(pilot: Pilot[int]) -> None:
    app = pilot.app
    assert isinstance(app, DashboardApp)
    await until(pilot, lambda: bool(app.renders and app.dashboard.header.info is not None and app.sections))
    await pilot.pause()


def row_text(app: DashboardApp, section: Section, mailing_id: int) -> str:
    table = app.dashboard.table(section)
    return "".join(cell.plain for cell in table.get_row(str(mailing_id)))


def toasts(app: DashboardApp) -> list[str]:
    return [n.message for n in app._notifications]  # noqa: SLF001 - what the operator saw


def waiting_doc(mailing_id: int, state: str, reason: str, *, since: float, next_try: float,
                all_unavailable: bool = True, relay: str = "127.0.0.1:2526") -> str:
    """The meta `sender_waiting` a sender in another process writes (Sender.waiting_document)."""
    return json.dumps({
        "all_unavailable": all_unavailable,
        "relays": [{"relay": relay, "state": state, "reason": reason, "since": since, "next_try": next_try,
                    "mailing": mailing_id}],
    })


async def put_meta(db: Path, values: dict[str, str]) -> None:
    store = await Store.open(db)
    try:
        await store.put_meta(values)
    finally:
        await store.close()


def monitored_with(fx: Fixture, state: str, doc: str) -> None:
    asyncio.run(put_sender_meta(fx.db, FIXED_NOW, state=state, rate=0.0 if state == "waiting" else 42.5))
    asyncio.run(put_meta(fx.db, {"sender_waiting": doc}))


LOGIN_REFUSED = "login refused: 535 5.7.8 (server text withheld)"
DOWN = ("cannot reach the server: refused while connecting: cannot connect to 127.0.0.1:2526: "
        "[Errno 111] Connect call failed ('127.0.0.1', 2526)")


@pytest.fixture
def paused_elsewhere(fixed_db: Fixture) -> Iterator[Fixture]:
    monitored_with(fixed_db, "waiting", waiting_doc(fixed_db.ids["spring"], "paused", LOGIN_REFUSED,
                                                    since=NOW - 120, next_try=NOW + 780))
    lease = HeldLease(fixed_db.db)
    yield fixed_db
    lease.release()


@pytest.fixture
def throttled_elsewhere(fixed_db: Fixture) -> Iterator[Fixture]:
    reason = "421 4.7.0 too many messages, slow down"
    monitored_with(fixed_db, "sending", waiting_doc(fixed_db.ids["spring"], "throttled", reason,
                                                    since=NOW - 30, next_try=NOW + 60, all_unavailable=False))
    lease = HeldLease(fixed_db.db)
    yield fixed_db
    lease.release()


@pytest.fixture
def down_elsewhere(fixed_db: Fixture) -> Iterator[Fixture]:
    monitored_with(fixed_db, "waiting", waiting_doc(fixed_db.ids["spring"], "resting", DOWN,
                                                    since=NOW - 45, next_try=NOW + 8))
    asyncio.run(put_meta(fixed_db.db, {"sender_reason": DOWN, "sender_last_accept": f"{NOW - 45:.3f}"}))
    conn = sqlite3.connect(fixed_db.db)
    try:
        with conn:
            conn.execute("UPDATE mailings SET in_doubt = 2 WHERE id = ?", (fixed_db.ids["spring"],))
    finally:
        conn.close()
    lease = HeldLease(fixed_db.db)
    yield fixed_db
    lease.release()


# ---- A: paused / throttled, in another process -------------------------------------------------


async def test_paused_relay_elsewhere_is_said_in_header_and_row(paused_elsewhere: Fixture) -> None:
    """Old code: the header said "waiting for the SMTP server (login refused: 535 ...)" with no
    next try, and the row showed an ETA as if sending went on."""
    fx = paused_elsewhere
    app = frozen(fx.db)
    async with running(app) as pilot:
        await settled(pilot)
        header = app.dashboard.header.plain
        assert "paused: login refused · since 11:58 · next try in 13 min" in header, header
        row = row_text(app, Section.CURRENT, fx.ids["spring"])
        assert "‖1" in row and "paused: login refused" in row, row
        # Only the held mailing's row says it; the next in the queue waits as usual.
        assert "paused" not in row_text(app, Section.CURRENT, fx.ids["news"])


async def resume_from_menu(pilot: Pilot[Any], mailing_id: int) -> None:
    """Resume sending from the mailing's Actions menu (its first entry while paused), confirmed
    with the question's own key."""
    app = pilot.app
    assert isinstance(app, DashboardApp)
    app.dashboard.table(Section.CURRENT).select_key(str(mailing_id))
    await pilot.press("a")
    await until(pilot, lambda: isinstance(app.screen, ActionsMenu) and app.screen.is_mounted)
    await pilot.pause()
    await pilot.press("enter")
    await until(pilot, lambda: isinstance(app.screen, ConfirmDialog) and app.screen.is_mounted)
    dialog = app.screen
    assert isinstance(dialog, ConfirmDialog) and dialog.key == "r"
    await pilot.press("r")


async def test_resume_is_offered_while_paused_and_asks_the_sender(paused_elsewhere: Fixture) -> None:
    fx = paused_elsewhere
    app = frozen(fx.db)
    async with running(app) as pilot:
        await settled(pilot)
        news = app.find(fx.ids["news"])
        assert news is not None and "resume" not in [o.key for o in app.offers_for(news)]  # not the affected one
        app.dashboard.table(Section.CURRENT).select_key(str(fx.ids["spring"]))
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, ActionsMenu) and app.screen.is_mounted)
        await pilot.pause()
        options = app.screen.query_one(OptionList)
        labels = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
        assert labels[0] == "Resume sending", labels
        # The palette shows the same offers.
        index = [entry async for entry in PaletteIndex().scan(app.sections, app.situational_offers)]
        assert f"Resume sending 'Spring sale — Europe' (id {fx.ids['spring']})" in [e.title for e in index]
        # Each try logs in again: it asks first, and Enter keeps it paused (issue 11 item 1).
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog) and app.screen.is_mounted)
        await pilot.press("enter")
        await until(pilot, lambda: app.screen is app.dashboard)
        assert not any("again now" in t for t in toasts(app))
        conn = sqlite3.connect(fx.db)
        try:
            assert conn.execute("SELECT 1 FROM meta WHERE key = ?", (RESUME_REQUEST_KEY,)).fetchone() is None
        finally:
            conn.close()
        before = time.time()
        await resume_from_menu(pilot, fx.ids["spring"])
        await until(pilot, lambda: any("try 127.0.0.1:2526 again" in t for t in toasts(app)))
    conn = sqlite3.connect(fx.db)
    try:
        (raw,) = conn.execute("SELECT value FROM meta WHERE key = ?", (RESUME_REQUEST_KEY,)).fetchone()
    finally:
        conn.close()
    request = parse_resume_request(raw)
    assert request is not None and request[0] is None and request[1] >= before - 1


async def test_resume_is_not_offered_without_a_paused_relay(throttled_elsewhere: Fixture) -> None:
    fx = throttled_elsewhere
    app = frozen(fx.db)
    async with running(app) as pilot:
        await settled(pilot)
        spring = app.find(fx.ids["spring"])
        assert spring is not None
        assert "resume" not in [o.key for o in app.offers_for(spring)]
        assert not any(c.title.startswith("Resume sending") for c in app.palette_commands())
        header = app.dashboard.header.plain
        assert "sending 42.5 msg/s · throttled (421 4.7.0) · next try in 1 min" in header, header
        row = row_text(app, Section.CURRENT, fx.ids["spring"])
        assert "throttled, try 12:01" in row, row


def test_resume_is_offered_for_the_sending_mailing_when_one_relay_of_a_pool_is_paused(fixed_db: Fixture) -> None:
    """A pool carries on without its paused relay: nothing holds the mailing back, but the paused
    relay still waits for an operator."""
    doc = json.dumps({"all_unavailable": False, "relays": [
        {"relay": "mx-b", "state": "paused", "reason": LOGIN_REFUSED, "since": NOW - 60, "next_try": NOW + 840,
         "mailing": fixed_db.ids["spring"]}]})
    monitored_with(fixed_db, "sending", doc)
    lease = HeldLease(fixed_db.db)

    async def check() -> None:
        app = frozen(fixed_db.db)
        async with running(app) as pilot:
            await settled(pilot)
            spring, news = app.find(fixed_db.ids["spring"]), app.find(fixed_db.ids["news"])
            assert spring is not None and news is not None
            assert app.offers_for(spring)[0].key == "resume"
            assert "resume" not in [o.key for o in app.offers_for(news)]
            assert "paused" not in row_text(app, Section.CURRENT, fixed_db.ids["spring"])  # it still sends
            await resume_from_menu(pilot, fixed_db.ids["spring"])
            await until(pilot, lambda: any("try mx-b again now" in t for t in toasts(app)))

    try:
        asyncio.run(check())
    finally:
        lease.release()


# ---- B: the SMTP server is down --------------------------------------------------------------


async def test_server_down_elsewhere_is_one_plain_line(down_elsewhere: Fixture) -> None:
    """Old code: "waiting for the SMTP server (cannot reach the server: refused while connecting:
    cannot connect to ..." cut at the screen's edge, no since, no next try."""
    fx = down_elsewhere
    app = frozen(fx.db, stall_after=30.0)
    async with running(app, size=(120, 40)) as pilot:
        await settled(pilot)
        header = app.dashboard.header.plain
        assert "waiting: cannot reach the server · since 11:59 · next try in 8 s · 2 in doubt" in header, header
        assert "Errno" not in header and "…" not in header
        row = row_text(app, Section.CURRENT, fx.ids["spring"])
        assert "…1" in row and "waiting: cannot reach" in row, row
        # The full text is in Details.
        spring = app.find(fx.ids["spring"])
        assert spring is not None
        keys = [o.key for o in app.offers_for(spring)]
        assert "resume" not in keys and "details" in keys  # nothing is paused: it tries again by itself
        await app.perform("details", spring)
        await until(pilot, lambda: isinstance(app.screen, DetailsScreen))
        await until(pilot, lambda: "Errno 111" in str(app.screen.query_one("#now", Static).render()))
        now_line = str(app.screen.query_one("#now", Static).render())
        assert "waiting: " + DOWN in now_line and "next try 2099-05-31 12:00:08 CEST" in now_line, now_line


async def test_server_down_in_this_process_says_waiting_with_next_try(tmp_path: Path) -> None:
    """The real sender against a port where nothing listens: one plain line, then STALLED."""
    fx = await build_fixed(tmp_path / "down.db", small=True)
    port = free_port()
    settings = load_settings({"db": fx.db, "smtp_host": "127.0.0.1", "smtp_port": port, "connections": 2,
                              "connect_backoff_max": 30.0}, environ={}, config_path=tmp_path / "none.toml")
    app = DashboardApp(settings, operator_tz=OPERATOR_TZ, stall_after=1.0, hand_off_on_quit=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: "STALLED" in app.dashboard.header.plain
                    and "next try in" in app.dashboard.header.plain, timeout=20)
        header = app.dashboard.header.plain
        assert "waiting: cannot reach the server · since " in header, header
        assert "Errno" not in header and "refused while connecting" not in header
        assert app.dashboard.notice.text.plain == ""  # one relay: the header says it, once
        row = row_text(app, Section.CURRENT, fx.ids["spring"])
        assert "waiting: cannot reach" in row, row


# ---- A in this process: a refused login, then Resume -------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def test_refused_login_in_this_process_then_resume_sends(tmp_path: Path, ca: trustme.CA) -> None:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    db = tmp_path / "auth.db"
    store = await Store.open(db)
    mailing_id = await new_mailing(store, tmp_path, "Auth test", 5)
    await Lifecycle(store).send_now(mailing_id)
    await store.close()
    with Sink(tls_context=server, credentials=(USER, WRONG)) as sink:
        settings = load_settings(
            {"db": db, "smtp_host": "127.0.0.1", "smtp_port": sink.port, "connections": 2, "smtp_tls": "starttls",
             "smtp_user": USER, "smtp_password": PASSWORD, "smtp_ca_file": str(ca_file)},
            environ={}, config_path=tmp_path / "none.toml")
        app = DashboardApp(settings, operator_tz=OPERATOR_TZ, hand_off_on_quit=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: "paused: login refused" in app.dashboard.header.plain, timeout=20)
            assert "next try in 1" in app.dashboard.header.plain  # ~15 min: "in 14 min"/"in 15 min"
            assert "paused: login refused" in row_text(app, Section.CURRENT, mailing_id)
            mailing = app.find(mailing_id)
            assert mailing is not None and app.offers_for(mailing)[0].key == "resume"
            sink.login.password = PASSWORD.encode()  # the operator fixed the account
            await resume_from_menu(pilot, mailing_id)
            await until(pilot, lambda: any("again now" in t for t in toasts(app)))
            await until(pilot, lambda: len(sink.deliveries) == 5, timeout=20)
            await until(pilot, lambda: app.find(mailing_id) is None
                        or app.find(mailing_id).state is MailingState.COMPLETED, timeout=20)  # type: ignore[union-attr]
            mailing = app.find(mailing_id)
            assert mailing is not None and "resume" not in [o.key for o in app.offers_for(mailing)]


# ---- C: a schedule at a time that does not exist, or happens twice -----------------------------

GAP = datetime(2100, 3, 28, 2, 30)  # Europe/Berlin springs forward at 02:00
FOLD = datetime(2099, 10, 25, 2, 30)  # and falls back at 03:00


@pytest.fixture
def dst_schedules(fixed_db: Fixture) -> Iterator[Fixture]:
    async def schedule() -> None:
        store = await Store.open(fixed_db.db)
        try:
            lc = Lifecycle(store)
            for key, when in (("gap", GAP), ("fold", FOLD)):
                mid = await new_mailing(store, fixed_db.db.parent, f"DST {key}", 5)
                await lc.schedule(mid, when, "Europe/Berlin")
                fixed_db.ids[key] = mid
            await store.db.execute("UPDATE mailings SET created_at = ?, updated_at = ?", (iso(FIXED_NOW), iso(FIXED_NOW)))
        finally:
            await store.close()

    assert resolve(GAP, "Europe/Berlin").shift is Shift.GAP and resolve(FOLD, "Europe/Berlin").shift is Shift.FOLD
    asyncio.run(schedule())
    asyncio.run(put_sender_meta(fixed_db.db, FIXED_NOW))
    lease = HeldLease(fixed_db.db)
    yield fixed_db
    lease.release()


async def test_a_time_that_does_not_exist_is_shown_as_it_will_be_sent(dst_schedules: Fixture) -> None:
    """Old code: "2100-03-28 02:30 Europe/Berlin" as typed; a fold did not say which offset."""
    fx = dst_schedules
    app = frozen(fx.db)
    async with running(app) as pilot:
        await settled(pilot)
        gap = row_text(app, Section.SCHEDULED, fx.ids["gap"])
        assert "2100-03-28 03:30 CEST Europe/Berlin" in gap and "02:30" not in gap, gap
        fold = row_text(app, Section.SCHEDULED, fx.ids["fold"])
        assert "2099-10-25 02:30 CEST (first) Europe/Berlin" in fold, fold
        gap_mailing = app.find(fx.ids["gap"])
        assert gap_mailing is not None
        await app.perform("details", gap_mailing)
        await until(pilot, lambda: isinstance(app.screen, DetailsScreen))
        await until(pilot, lambda: "Send time" in str(app.screen.query_one("#now", Static).render()))
        line = str(app.screen.query_one("#now", Static).render())
        assert "Send time: 2100-03-28 03:30 CEST Europe/Berlin (asked for 2100-03-28 02:30" in line, line


# ---- D: a mailing waiting only for retries ----------------------------------------------------


@pytest.fixture
def retrying(fixed_db: Fixture) -> Iterator[Fixture]:
    async def only_retries() -> None:
        store = await Store.open(fixed_db.db)
        try:
            news = fixed_db.ids["news"]
            await fake_progress(store, news, 476, deferred=24)
            # The earliest retry at 10:41 UTC = 12:41 in Berlin; the others later.
            await store.db.execute(
                "UPDATE recipients SET next_attempt_at = ? + 60 * (id % 7) WHERE mailing_id = ? AND state = 'deferred'",
                (NOW + 41 * 60, news),
            )
            # Exactly one at 10:41 UTC, so the earliest is not a coincidence of the modulo.
            await store.db.execute(
                "UPDATE recipients SET next_attempt_at = ? WHERE id = (SELECT MAX(id) FROM recipients "
                "WHERE mailing_id = ? AND state = 'deferred')", (NOW + 41 * 60 + 0.5, news),
            )
            await store.db.execute("UPDATE mailings SET updated_at = ?", (iso(FIXED_NOW),))
        finally:
            await store.close()

    asyncio.run(only_retries())
    asyncio.run(put_sender_meta(fixed_db.db, FIXED_NOW))
    lease = HeldLease(fixed_db.db)
    yield fixed_db
    lease.release()


async def test_a_mailing_waiting_for_retries_says_so(retrying: Fixture) -> None:
    """Old code: "95% 476/500 ... — 0 s"-like, as if it were about to finish."""
    fx = retrying
    app = frozen(fx.db)
    async with running(app) as pilot:
        await settled(pilot)
        row = row_text(app, Section.CURRENT, fx.ids["news"])
        assert "↻2" in row and "retrying 24 at 12:41" in row, row


async def test_turn_events_are_recorded_once_per_change(tmp_path: Path) -> None:
    """Old code: every turn wrote "paused ..." and "resumed" again, every few seconds."""
    store = await Store.open(tmp_path / "turns.db")
    try:
        lc = Lifecycle(store)
        mid = await new_mailing(store, tmp_path, "Turns", 3)
        await lc.send_now(mid)
        assert await lc.start(mid)
        for _ in range(5):
            await lc.yield_turn(mid, "only recipients waiting for a retry are left")
            assert await lc.start(mid)
        await lc.yield_turn(mid, "mailing 3 is ahead in the queue")
        assert await lc.start(mid)
        kinds = [(k, d) for _, k, d in await store.events(mid) if k != "created"]
    finally:
        await store.close()
    assert kinds == [
        ("queued", "send now"),
        ("started", ""),
        ("paused", "only recipients waiting for a retry are left"),
        ("resumed", ""),
        ("paused", "mailing 3 is ahead in the queue"),
        ("resumed", ""),
    ], kinds


# ---- E: counts that agree ---------------------------------------------------------------------


async def test_stopping_says_one_toast_with_remaining_and_failed(fixed_db: Fixture) -> None:
    """Old code: two toasts with different counts (the move notice after the action's own), and
    "N remaining" left out the failed."""
    fx = fixed_db
    await put_sender_meta(fx.db, FIXED_NOW)
    lease = HeldLease(fx.db)
    try:
        app = frozen(fx.db)
        async with running(app) as pilot:
            await settled(pilot)
            app.dashboard.table(Section.CURRENT).select_key(str(fx.ids["spring"]))
            await pilot.press("a")
            await until(pilot, lambda: isinstance(app.screen, ActionsMenu))
            await pilot.press("enter")  # Cancel sending
            await until(pilot, lambda: type(app.screen).__name__ == "ConfirmDialog")
            # The other process records results meanwhile: the dashboard reads the database again.
            store = await Store.open(fx.db)
            try:
                await fake_progress(store, fx.ids["launch"], 1)
            finally:
                await store.close()
            version = app._data_version  # noqa: SLF001
            await until(pilot, lambda: app._data_version != version)  # noqa: SLF001
            await pilot.press("s")  # the question's own key confirms
            await until(pilot, lambda: app.find(fx.ids["spring"]) is not None
                        and app.find(fx.ids["spring"]).state is MailingState.STOPPED)  # type: ignore[union-attr]
            await app.refresh_now()
            await pilot.pause()
            spring = app.find(fx.ids["spring"])
            assert spring is not None
            said = [t for t in toasts(app) if "stopped" in t.lower()]
            assert len(said) == 1, said
            assert f"{spring.remaining:,} remaining, {spring.failed:,} failed" in said[0], said
    finally:
        lease.release()


# ---- F: last accepted, and the first estimate ---------------------------------------------------


async def test_last_accepted_comes_from_the_ledger_when_nothing_was_accepted_here(tmp_path: Path) -> None:
    """Old code: "last accepted never" on a database that has sent plenty, before this run accepts."""
    db = tmp_path / "history.db"
    store = await Store.open(db)
    try:
        lc = Lifecycle(store)
        mid = await new_mailing(store, tmp_path, "Old news", 20)
        await lc.send_now(mid)
        await fake_progress(store, mid, 20)
        assert await lc.complete_if_done(mid)
        await store.db.execute("UPDATE mailings SET updated_at = ?", (iso(FIXED_NOW - timedelta(hours=2)),))
    finally:
        await store.close()
    with Sink() as sink:
        app = DashboardApp(settings_for(db, port=sink.port), now=Clock(), operator_tz=OPERATOR_TZ,
                           hand_off_on_quit=False)
        async with running(app) as pilot:
            await until(pilot, lambda: app.sending_here and "idle" in app.dashboard.header.plain)
            assert "last accepted 2 h 00 min ago" in app.dashboard.header.plain, app.dashboard.header.plain


async def test_first_eta_starts_from_the_stored_rate(fixed_db: Fixture) -> None:
    """A sender elsewhere just started on the head: nothing measured yet (rate 0). Old code: no
    ETA at all (or, a few seconds in, an hour for a minute's work); now the mailing's rate from
    its last run gives the first one: 6,000 remaining... at 20/s is about 5 min."""
    fx = fixed_db
    await put_sender_meta(fx.db, FIXED_NOW, rate=0.0)
    store = await Store.open(fx.db)
    try:
        await store.db.execute("UPDATE mailings SET rate = 20 WHERE id = ?", (fx.ids["spring"],))
        remaining = (await store.mailing(fx.ids["spring"])).remaining
    finally:
        await store.close()
    lease = HeldLease(fx.db)
    try:
        app = frozen(fx.db)
        async with running(app) as pilot:
            await settled(pilot)
            cells = [c.plain.strip() for c in app.dashboard.table(Section.CURRENT).get_row(str(fx.ids["spring"]))]
            left = cells[-1]
            assert left.endswith(" s") and remaining // 20 <= int(left[:-2]) <= remaining / 20 + 5, (cells, remaining)
    finally:
        lease.release()


def test_expected_rate_and_blend() -> None:
    from mailtower.core.progress import blended_rate, expected_rate

    assert expected_rate(20.0, 0.0) == 20.0
    assert expected_rate(20.0, 5.0) == 5.0  # the limit caps it
    assert expected_rate(0.0, 0.0, 3600.0) == 1.0  # an hourly limit alone
    assert expected_rate(float("nan"), 0.0) == 0.0
    assert blended_rate(2.0, 20.0, 0.0) == 20.0
    assert blended_rate(2.0, 20.0, 5.0) == pytest.approx(11.0)
    assert blended_rate(2.0, 20.0, 10.0) == 2.0
    assert blended_rate(2.0, 0.0, 0.0) == 2.0


# ---- snapshots --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_paused_elsewhere(snap_compare: Any, paused_elsewhere: Fixture, size: tuple[int, int]) -> None:
    assert snap_compare(frozen(paused_elsewhere.db), terminal_size=size, run_before=settled)


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_throttled_elsewhere(snap_compare: Any, throttled_elsewhere: Fixture, size: tuple[int, int]) -> None:
    assert snap_compare(frozen(throttled_elsewhere.db), terminal_size=size, run_before=settled)


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_server_down_elsewhere(snap_compare: Any, down_elsewhere: Fixture, size: tuple[int, int]) -> None:
    assert snap_compare(frozen(down_elsewhere.db), terminal_size=size, run_before=settled)


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_dst_schedules(snap_compare: Any, dst_schedules: Fixture, size: tuple[int, int]) -> None:
    async def scheduled(pilot: Pilot[int]) -> None:
        await settled(pilot)
        app = pilot.app
        assert isinstance(app, DashboardApp)
        app.dashboard.table(Section.SCHEDULED).focus()
        await pilot.pause()

    assert snap_compare(frozen(dst_schedules.db), terminal_size=size, run_before=scheduled)


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_retrying(snap_compare: Any, retrying: Fixture, size: tuple[int, int]) -> None:
    assert snap_compare(frozen(retrying.db), terminal_size=size, run_before=settled)
