"""Several senders on one database, the review's gaps (issue 15; core/fleet.py, core/store_pg.py).

- The heartbeat does not wait for the write lock: a write held longer than the heartbeat timeout
  delays sending, never the heartbeats, and nobody alive is declared dead (both engines).
- Creating a mailing with its recipients takes the PostgreSQL write lock only to commit.
- The hourly budget holds for the fleet, counted in the shared ledger; a relay pool's per-relay
  connections and rates are shared by the live senders.
- Each sender writes its own status; `status --json` and the dashboard read the fleet's.
- A `connect_timeout` in the URL is honoured (bounded); a CLI command waiting for another
  process's lock gives its one line well before two minutes.

Real parts: the throw-away PostgreSQL server of tests/pg_server.py, SQLite files, aiosmtpd sinks,
real `mailtower` processes. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mailtower.core.config import RelaySpec, Settings
from mailtower.core.db_target import PgTarget, parse_pg_url
from mailtower.core.fleet import FleetMember
from mailtower.core.operations import Draft, create_mailing
from mailtower.core.progress import SenderState
from mailtower.core.relays import relays_from_settings
from mailtower.core.sender_status import SenderStatus, fleet_status, read_status, write_status
from mailtower.core.sink import Sink
from mailtower.core.store import open_store
from mailtower.core.errors import UserError
from tests.core import test_fleet
from tests.helpers import Cli, recipients, wait_until, write_csv
from tests.pg_server import connect as pg_connect
from tests.pg_server import sql_execute, sql_rows

TIMEOUT = 2.0  # seconds: sender_heartbeat_timeout in these tests
FAST = {"MAILTOWER_SENDER_HEARTBEAT_TIMEOUT": f"{TIMEOUT:g}", "MAILTOWER_SMTP_CONNECTIONS": "2",
        "MAILTOWER_RETRY_BASE": "0.2", "MAILTOWER_RETRY_MAX": "0.5"}
WRITE_LOCK = 0x6D61696C746F7772  # core/store_pg.WRITE_LOCK
# test_fleet's fixtures (the test database as a PgTarget; no MAILTOWER_DB inherited) and helper.
target, _no_inherited_db, kill_left = test_fleet.target, test_fleet._no_inherited_db, test_fleet.kill_left


def new_mailing(cli: Cli, tmp_path: Path, n: int, *, name: str = "m") -> int:
    body = tmp_path / "body.txt"
    body.write_text("Hello {{ name }}\n", encoding="utf-8")
    csv_path = write_csv(tmp_path / f"{name}.csv", recipients(n, start=0 if name == "m" else 10_000))
    return int(cli.ok("new", "--name", name, "--subject", "s", "--from", "news@example.org", "--text", str(body),
                      "--recipients", str(csv_path), "--now").strip())


def sent_count(db: Any, mailing_id: int) -> int:
    return int(sql_rows(db, "SELECT sent FROM mailings WHERE id = ?", (mailing_id,))[0][0])


class HeldLock:
    """Another process's write held for a while: the PostgreSQL advisory write lock in a session
    of its own, or SQLite's write lock (BEGIN IMMEDIATE) on a second connection."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.conn: Any = None

    def __enter__(self) -> "HeldLock":
        if isinstance(self.db, PgTarget):
            self.conn = pg_connect(self.db).__enter__()
            self.conn.execute("BEGIN")
            self.conn.execute(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})")
        else:
            self.conn = sqlite3.connect(self.db, isolation_level=None, timeout=30)
            self.conn.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, *exc: object) -> None:
        if isinstance(self.db, PgTarget):
            self.conn.execute("ROLLBACK")
            self.conn.__exit__(None, None, None)
        else:
            self.conn.execute("ROLLBACK")
            self.conn.close()


def heartbeat_ages(db: Any) -> dict[int, float]:
    """Running senders' heartbeat ages in the database's clock."""
    now = ("EXTRACT(EPOCH FROM clock_timestamp())" if isinstance(db, PgTarget)
           else "((julianday('now') - 2440587.5) * 86400.0)")
    return {int(i): float(age) for i, age in sql_rows(db, f"SELECT pid, {now} - heartbeat_at FROM senders WHERE state = 'running'")}


# ---- 1. the heartbeat does not wait for the write lock -----------------------------------------------


async def test_heartbeat_and_expiry_check_do_not_wait_for_another_process_write(target: PgTarget) -> None:
    store = await open_store(target)
    try:
        me = await store.register_sender("host-a", 101, 4)
        with HeldLock(target):
            # Before: both went through write() and waited for the lock (up to lock_timeout).
            assert await asyncio.wait_for(store.sender_heartbeat(me, 1.0, 4, TIMEOUT), 5) == 1
            assert await asyncio.wait_for(store.expire_senders(TIMEOUT, me=me), 5) == 0  # nobody stale: no lock asked for
            assert await asyncio.wait_for(store.live_senders(TIMEOUT), 5) == 1
    finally:
        await store.close()


async def test_a_sender_beating_while_another_declares_it_dead_is_either_alive_or_told(target: PgTarget) -> None:
    """The death and the beat race without the write lock: whichever commits first wins and the
    other sees it (the beat returns None), never a sender `dead` on disk that beat after it."""
    a, b = await open_store(target), await open_store(target)
    try:
        a_id = await a.register_sender("host-a", 101, 4)
        b_id = await b.register_sender("host-b", 102, 4)
        for _ in range(20):
            sql_execute(target, "UPDATE senders SET heartbeat_at = heartbeat_at - 100, state = 'running' WHERE id = ?", (a_id,))
            beat, _ = await asyncio.gather(a.sender_heartbeat(a_id, 0.0, 4, TIMEOUT), b.expire_senders(TIMEOUT, me=b_id))
            (state,) = sql_rows(target, "SELECT state FROM senders WHERE id = ?", (a_id,))[0]
            assert (beat is None) == (state == "dead"), (beat, state)
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_a_write_held_longer_than_the_heartbeat_timeout_does_not_declare_a_live_sender_dead(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db: Any = tmp_path / "m.db" if engine == "sqlite" else request.getfixturevalue("target")
    n, hold = 300, 3 * TIMEOUT
    with Sink(latency=0.01) as sink_a, Sink(latency=0.01) as sink_b:
        a = Cli(db, sink_a.port, **FAST, MAILTOWER_RATE="40")
        b = Cli(db, sink_b.port, **FAST, MAILTOWER_RATE="40")
        mailing_id = new_mailing(a, tmp_path, n)
        pa = a.popen("run", "--until-idle", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        pb = None if engine == "sqlite" else b.popen("run", "--until-idle", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs = [p for p in (pa, pb) if p is not None]
        try:
            wait_until(lambda: len(heartbeat_ages(db)) == len(procs) and sent_count(db, mailing_id) > 0, timeout=30,
                       what="the senders sending")
            before = sent_count(db, mailing_id)
            oldest = 0.0
            with HeldLock(db):
                deadline = time.monotonic() + hold
                while time.monotonic() < deadline:  # bounded: the length of the hold
                    ages = heartbeat_ages(db)
                    assert len(ages) == len(procs), "a sender stopped or was declared dead during the write"
                    oldest = max(oldest, *ages.values())
                    time.sleep(0.1)
            if engine == "postgres":  # (SQLite has one writer: its heartbeat waits, and the lease keeps it the only sender)
                # The heartbeats went on during the write (each beats every TIMEOUT/4 s).
                assert oldest < TIMEOUT, f"a heartbeat {oldest:.1f} s old during a {hold:g} s write"
            for proc in procs:
                assert proc.wait(timeout=90) == 0, proc.stderr.read().decode()  # type: ignore[union-attr]
        finally:
            kill_left(*procs)
        got: Counter[str] = Counter()
        for sink in (sink_a, sink_b):
            got.update(sink.received())
    assert len(got) == n and set(got.values()) == {1}
    assert sent_count(db, mailing_id) == n > before
    states = [s for (s,) in sql_rows(db, "SELECT state FROM senders ORDER BY id")]
    assert states == ["stopped"] * len(procs)  # nobody declared dead


# ---- 1b. creating a mailing takes the write lock only to commit ---------------------------------------


async def test_creating_a_big_mailing_does_not_hold_the_write_lock_until_its_commit(target: PgTarget, tmp_path: Path) -> None:
    store = await open_store(target)
    people = write_csv(tmp_path / "r.csv", recipients(2500))
    seen: list[tuple[int, int, float]] = []

    def midway(progress: object) -> None:
        # Inside the import's transaction (progress is said every 1,000 rows): another process
        # writes now, and the mailing being created is not visible yet.
        if seen:
            return
        started = time.monotonic()
        proc = Cli(target).popen("limits", "--rate", "7", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            code = proc.wait(timeout=15)  # before: it waited for the import's lock (two minutes)
        finally:
            kill_left(proc)
        visible = int(sql_rows(target, "SELECT COUNT(*) FROM mailings")[0][0])
        seen.append((code, visible, time.monotonic() - started))

    try:
        mailing_id, summary = await create_mailing(
            store, Draft("big", "s", "news@example.org", "Hi", None), people, lambda r: None, progress=midway  # type: ignore[arg-type]
        )
    finally:
        await store.close()
    assert seen and seen[0][0] == 0 and seen[0][1] == 0, seen  # the other write went through; nothing half-made showed
    assert summary.imported == 2500
    assert sql_rows(target, "SELECT total, state FROM mailings WHERE id = ?", (mailing_id,)) == [(2500, "draft")]
    assert sql_rows(target, "SELECT COUNT(*) FROM settings WHERE key = 'limit.rate'") == [(1,)]


async def test_a_failed_mailing_creation_leaves_nothing(target: PgTarget, tmp_path: Path) -> None:
    store = await open_store(target)
    people = write_csv(tmp_path / "r.csv", recipients(1500))

    def fail(progress: object) -> None:
        raise RuntimeError("the import broke part-way")

    try:
        with pytest.raises(RuntimeError):
            await create_mailing(store, Draft("m", "s", "news@example.org", "Hi", None), people, lambda r: None,
                                 progress=fail)  # type: ignore[arg-type]
        await store.put_meta({"still": "usable"})  # the store's connection is out of the transaction
    finally:
        await store.close()
    assert sql_rows(target, "SELECT COUNT(*) FROM mailings") == [(0,)]
    assert sql_rows(target, "SELECT COUNT(*) FROM recipients") == [(0,)]


# ---- 2. limits for the whole fleet -------------------------------------------------------------------


def test_the_hourly_budget_counts_what_every_sender_sent_in_the_shared_ledger(target: PgTarget, tmp_path: Path) -> None:
    budget, earlier, IN_FLIGHT = 100, 60, 2  # noqa: N806 - a bound, named as one
    with Sink() as sink_a, Sink() as sink_b:
        a = Cli(target, sink_a.port, **FAST, MAILTOWER_RATE="20")
        b = Cli(target, sink_b.port, **FAST, MAILTOWER_RATE="20")
        # Sent within the hour by a sender that has since ended: the budget has 40 left.
        old = new_mailing(a, tmp_path, earlier, name="earlier")
        sql_execute(target, "UPDATE recipients SET state = 'sent', updated_at = EXTRACT(EPOCH FROM now()) WHERE mailing_id = ?", (old,))
        sql_execute(target, "UPDATE mailings SET state = 'completed', sent = total WHERE id = ?", (old,))
        a.ok("limits", "--rate-per-hour", str(budget))
        mailing_id = new_mailing(a, tmp_path, 300)
        pa = a.popen("run", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        pb = None
        try:
            wait_until(lambda: sent_count(target, mailing_id) >= 5, timeout=30, what="the first sender sending")
            pb = b.popen("run", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            wait_until(lambda: len(heartbeat_ages(target)) == 2, timeout=30, what="the second sender running")
            wait_until(lambda: sent_count(target, mailing_id) >= budget - earlier - 2, timeout=60, what="the budget used")
            # Watch for a while (several counts of the budget, BUDGET_INTERVAL apart): nothing more
            # than the documented bound, the messages in flight when a count was read (README:
            # one per connection; the 2 connections are shared, one each).
            deadline = time.monotonic() + 4.0
            while time.monotonic() < deadline:
                assert sent_count(target, mailing_id) + earlier <= budget + IN_FLIGHT, "the fleet went over its hourly budget"
                time.sleep(0.1)
            delivered = len(sink_a.deliveries) + len(sink_b.deliveries)
        finally:
            for proc in (pa, pb):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
            kill_left(pa, pb)
    # Before: each sender kept to 1/2 of the budget in its own window, blind to the ledger: 100 sent.
    assert budget - earlier - 2 <= delivered <= budget - earlier + IN_FLIGHT


def test_a_relay_pools_connections_and_rates_are_shared_by_the_live_senders(tmp_path: Path) -> None:
    pool = (RelaySpec("127.0.0.1", 2525, tls="none", connections=6, rate=30.0, name="a"),
            RelaySpec("127.0.0.1", 2526, tls="none", connections=1, rate=0.0, name="b"))
    settings = Settings(db=tmp_path / "m.db", relays=pool)
    relays = relays_from_settings(settings)
    member = FleetMember(settings, lambda exc: None, lambda: (0.0, 0))
    member.live = 2
    assert member.share_pool(relays)
    assert [(r.connections, r.limiter.configured) for r in relays] == [(3, 15.0), (1, 0.0)]
    assert not member.share_pool(relays)  # nothing changed
    member.live = 3
    assert member.share_pool(relays)
    assert [(r.connections, r.limiter.configured) for r in relays] == [(2, 10.0), (1, 0.0)]
    member.live = 1  # the others left: back to the configuration
    assert member.share_pool(relays)
    assert [(r.connections, r.limiter.configured) for r in relays] == [(6, 30.0), (1, 0.0)]


# ---- 3. each sender its own status -------------------------------------------------------------------


async def test_each_sender_writes_its_own_status_and_readers_see_the_fleets(target: PgTarget) -> None:
    store = await open_store(target)
    try:
        a_id = await store.register_sender("host-a", 101, 4)
        b_id = await store.register_sender("host-b", 102, 4)
        now = time.time()
        await write_status(store, SenderStatus(SenderState.SENDING, now, rate=30.0, last_accept_at=now - 1,
                                               waiting={"all_unavailable": False, "relays": []},
                                               domains={"mailing": 1, "groups": [{"group": "gmail", "sent": 5, "rate": 2.0, "state": "ok"}]}),
                           a_id)
        await write_status(store, SenderStatus(SenderState.IDLE, now - 0.5, rate=0.0, last_accept_at=now - 3,
                                               waiting={"all_unavailable": True, "relays": [{"relay": "x", "state": "resting"}]},
                                               domains={"mailing": 1, "groups": [{"group": "gmail", "sent": 7, "rate": 1.5,
                                                                                  "state": "throttled", "reason": "421"}]}),
                           b_id)
        status = await read_status(store)
        assert status is not None
        # Before: the second write overwrote the first (idle, 0/s: the fleet looked stalled).
        assert status.state is SenderState.SENDING and status.rate == 30.0 and status.last_accept_at == pytest.approx(now - 1)
        assert status.waiting["all_unavailable"] is False and len(status.waiting["relays"]) == 1  # type: ignore[arg-type]
        (gmail,) = status.domains["groups"]  # type: ignore[misc]
        assert (gmail["sent"], gmail["rate"], gmail["state"], gmail["reason"]) == (12, 3.5, "throttled", "421")
        keys = sql_rows(target, "SELECT key FROM meta WHERE key LIKE 'sender%' ORDER BY key")
        assert keys == [(f"sender_status.{a_id}",), (f"sender_status.{b_id}",)]
    finally:
        await store.close()


def test_fleet_status_merges_only_live_senders_and_else_says_the_latest() -> None:
    now = 1000.0
    live = SenderStatus(SenderState.SENDING, now, rate=10.0)
    stale = SenderStatus(SenderState.SENDING, now - 60, rate=99.0)
    stopped = SenderStatus(SenderState.STOPPED, now - 1, reason="asked to stop")
    assert fleet_status([live, stale, stopped], now) == live
    assert fleet_status([stale, stopped], now) == stopped
    assert fleet_status([], now) is None


def test_status_json_shows_both_senders_rates_summed(target: PgTarget, tmp_path: Path) -> None:
    with Sink(latency=0.01) as sink_a, Sink(latency=0.01) as sink_b:
        a = Cli(target, sink_a.port, **FAST, MAILTOWER_RATE="60")
        b = Cli(target, sink_b.port, **FAST, MAILTOWER_RATE="60")
        mailing_id = new_mailing(a, tmp_path, 3000)
        pa = a.popen("run", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        pb = b.popen("run", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            def doc() -> dict[str, Any]:
                return json.loads(a.ok("status", "--json"))

            def fleet_rate() -> float:
                current = [m for m in doc()["current"] if m["id"] == mailing_id]
                return float(current[0]["rate"]) if current else 0.0

            wait_until(lambda: len([s for s in doc().get("senders", []) if s["alive"]]) == 2, timeout=30, what="two senders")
            # Each sends 30/s (1/2 of 60): the fleet's rate is their sum, not whichever wrote last.
            wait_until(lambda: fleet_rate() > 40, timeout=30, what="the fleet's rate in status --json")
            senders = doc()["senders"]
            assert {s["pid"] for s in senders} == {pa.pid, pb.pid} and all(s["sender"] for s in senders)
        finally:
            for proc in (pa, pb):
                if proc.poll() is None:
                    proc.terminate()
            kill_left(pa, pb)


# ---- 4. connect_timeout and lock waits -------------------------------------------------------------


def test_connect_timeout_in_the_url_is_honoured_within_bounds(pg_url: str) -> None:
    from mailtower.core.store_pg import MAX_CONNECT_TIMEOUT, connect_timeout

    def timeout_of(query: str) -> int:
        return connect_timeout(parse_pg_url(pg_url.split("?")[0] + query, "test database"))

    assert timeout_of("") == 10
    assert timeout_of("?connect_timeout=3") == 3
    assert timeout_of("?connect_timeout=1") == 2  # libpq's own minimum
    assert timeout_of("?connect_timeout=0") == MAX_CONNECT_TIMEOUT  # libpq's "for ever", bounded
    assert timeout_of("?connect_timeout=99999999") == MAX_CONNECT_TIMEOUT
    with pytest.raises(UserError, match="connect_timeout='soon' in the URL is not a whole number"):
        timeout_of("?connect_timeout=soon")


def test_a_server_that_does_not_answer_is_reported_after_the_urls_connect_timeout(tmp_path: Path) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (the kernel does) and never says a word
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def take() -> None:
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    try:
        url = f"postgresql://u:secret@127.0.0.1:{silent.getsockname()[1]}/db?connect_timeout=2&sslmode=disable"
        started = time.monotonic()
        proc = Cli(tmp_path / "unused.db", MAILTOWER_DB=url).popen("status", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _, err = proc.communicate(timeout=60)
        finally:
            kill_left(proc)
        took = time.monotonic() - started
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        silent.close()
    lines = err.decode().strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and "secret" not in lines[0], lines
    assert took < 8, f"{took:.1f} s: the URL's connect_timeout=2 was not honoured (before: a fixed 10 s)"


def test_a_cli_write_waiting_for_another_process_lock_says_so_well_before_two_minutes(target: PgTarget) -> None:
    with HeldLock(target):
        started = time.monotonic()
        proc = Cli(target).popen("limits", "--rate", "5", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _, err = proc.communicate(timeout=60)  # before: lock_timeout 120 s
        finally:
            kill_left(proc)
        took = time.monotonic() - started
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "busy" in lines[0], lines
    assert took < 45
    assert sql_rows(target, "SELECT COUNT(*) FROM settings WHERE key = 'limit.rate'") == [(0,)]  # nothing changed
