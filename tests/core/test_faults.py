"""The sender against an SMTP server that injects each fault, checked in the ledger."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from mailtower.core.config import Settings, load_settings, NO_CONFIG
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.operations import Draft, create_mailing
from mailtower.core.sender import Sender
from mailtower.core.sink import FaultRule, Sink
from mailtower.core.store import open_store
from tests.helpers import recipients, write_csv
from tests.pg_server import connect

@pytest.fixture
def db(db_target):
    """Every fault on SQLite and on PostgreSQL (issue 15)."""
    return db_target


N = 20


def settings_for(db: Path, sink: Sink, **extra: object) -> Settings:
    flags = {"db": db, "smtp_host": "127.0.0.1", "smtp_port": sink.port, "connections": 2,
             "retry_base": 0.05, "retry_max": 0.2, "connect_backoff_max": 0.5, **extra}
    return load_settings(flags, environ={}, config_path=NO_CONFIG)


@pytest.fixture(params=[True, False], ids=["pipelined", "one-by-one"])
def pipelining(request: pytest.FixtureRequest) -> bool:
    """Every fault once with the server offering PIPELINING (RFC 2920) and once without."""
    return bool(request.param)


async def send_all(
    tmp_path: Path, db: Path, pipelining: bool, fault: FaultRule | None, **extra: object
) -> tuple[Sink, Path, Sender]:
    store = await open_store(db)
    people = write_csv(tmp_path / "p.csv", recipients(N))
    mailing_id, _ = await create_mailing(
        store, Draft("faults", "Hi {{ name }}", "news@example.org", "Body for {{ name }}", None), people, lambda r: None
    )
    await Lifecycle(store).send_now(mailing_id)
    await store.close()
    sink = Sink(fault=fault, pipelining=pipelining).start()
    try:
        sender = Sender(settings_for(db, sink, **extra))
        await sender.run(until_idle=True)
    finally:
        sink.stop()
    return sink, db, sender


def rows(db: Path) -> dict[str, tuple]:
    with connect(db) as conn:
        return {r[0]: r[1:] for r in conn.execute(
            "SELECT email, state, last_code, last_error, attempts, in_doubt FROM recipients")}


def mailing(db: Path) -> tuple:
    with connect(db) as conn:
        return conn.execute("SELECT state, sent, failed, deferred, in_doubt, total FROM mailings").fetchone()


def only(address: str, stage: str, reply: str, attempts: int = 1) -> FaultRule:
    """Reply `reply` to `address` at `stage` on its first `attempts` attempts."""
    def rule(s: str, a: str, attempt: int) -> str | None:
        return reply if s == stage and a == address and attempt <= attempts else None
    return rule


def everyone_settled(db: Path) -> None:
    for email, (state, code, error, *_rest) in rows(db).items():
        assert state in ("sent", "failed"), (email, state)
        if state == "failed":
            assert code and error, email


U3 = "user3@example.com"


async def test_450_on_rcpt_is_deferred_then_sent(tmp_path: Path, db: Path, pipelining: bool) -> None:
    sink, db, _ = await send_all(tmp_path, db, pipelining, only(U3, "rcpt", "450 4.2.1 mailbox busy"))
    state, code, error, attempts, _ = rows(db)[U3]
    assert (state, attempts) == ("sent", 2)
    assert sink.received()[U3] == 1
    assert mailing(db) == ("completed", N, 0, 0, 0, N)


async def test_550_on_rcpt_fails_with_reply_kept(tmp_path: Path, db: Path, pipelining: bool) -> None:
    sink, db, _ = await send_all(tmp_path, db, pipelining, only(U3, "rcpt", "550 5.1.1 no such user", attempts=99))
    state, code, error, attempts, _ = rows(db)[U3]
    assert (state, code) == ("failed", 550) and "no such user" in error
    assert U3 not in sink.received()
    assert mailing(db) == ("completed", N - 1, 1, 0, 0, N)
    everyone_settled(db)


async def test_451_after_data_is_deferred_then_sent(tmp_path: Path, db: Path, pipelining: bool) -> None:
    sink, db, _ = await send_all(tmp_path, db, pipelining, only(U3, "data", "451 4.3.0 local problem"))
    assert rows(db)[U3][0] == "sent" and rows(db)[U3][3] == 2
    assert sink.received()[U3] == 1
    everyone_settled(db)


async def test_554_after_data_fails_the_message(tmp_path: Path, db: Path, pipelining: bool) -> None:
    sink, db, _ = await send_all(tmp_path, db, pipelining, only(U3, "data", "554 5.7.1 message refused as spam", attempts=99))
    state, code, error, *_ = rows(db)[U3]
    assert (state, code) == ("failed", 554) and "spam" in error
    assert mailing(db)[:3] == ("completed", N - 1, 1)
    everyone_settled(db)


async def test_421_mid_session_reconnects_and_retries(tmp_path: Path, db: Path, pipelining: bool) -> None:
    sink, db, _ = await send_all(tmp_path, db, pipelining, only(U3, "rcpt", "421 4.3.2 shutting down"))
    state, code, error, attempts, in_doubt = rows(db)[U3]
    assert state == "sent" and in_doubt == 0
    assert sink.received()[U3] == 1
    assert mailing(db) == ("completed", N, 0, 0, 0, N)


async def test_hangup_before_the_dot_puts_nobody_in_doubt(tmp_path: Path, db: Path, pipelining: bool) -> None:
    sink, db, _ = await send_all(tmp_path, db, pipelining, only(U3, "rcpt", "HANGUP"))
    assert rows(db)[U3][0] == "sent" and rows(db)[U3][4] == 0
    assert sink.received()[U3] == 1


async def test_drop_after_the_server_stored_the_message_is_in_doubt(tmp_path: Path, db: Path, pipelining: bool) -> None:
    sink, db, _ = await send_all(tmp_path, db, pipelining, only(U3, "data", "DROP"))
    state, code, error, attempts, in_doubt = rows(db)[U3]
    assert state == "sent" and in_doubt == 1  # sent again: a recognisable possible duplicate
    assert sink.received()[U3] == 2
    ids = {d.message_id for d in sink.deliveries if d.recipient == U3}
    assert len(ids) == 1  # same Message-ID both times
    assert mailing(db) == ("completed", N, 0, 0, 0, N)
    assert sum(1 for r in rows(db).values() if r[4]) == 1


async def test_reply_slower_than_the_timeout_is_in_doubt(tmp_path: Path, db: Path, pipelining: bool) -> None:
    sink, db, _ = await send_all(tmp_path, db, pipelining, only(U3, "data", "SLEEP 1.5"), smtp_data_timeout=0.3)
    state, *_rest, in_doubt = rows(db)[U3]
    assert state == "sent" and in_doubt == 1
    assert sink.received()[U3] == 2
    everyone_settled(db)


async def test_throttling_454_defers_and_slows_down(tmp_path: Path, pipelining: bool) -> None:
    # About pacing, not storage, and 16 s of waiting: run on SQLite only (the suite's time).
    db = tmp_path / "f.db"
    throttled = {f"user{i}@example.com" for i in range(0, N, 4)}

    def rule(stage: str, address: str, attempt: int) -> str | None:
        if stage == "rcpt" and address in throttled and attempt == 1:
            return "454 4.7.0 too many messages, slow down"
        return None

    sink, db, sender = await send_all(tmp_path, db, pipelining, rule)
    assert sender.relays[0].limiter.factor < 1.0  # the relay that pushed back slows down (issue 10)
    assert all(rows(db)[a][0] == "sent" and rows(db)[a][3] == 2 for a in throttled)
    assert set(sink.received().values()) == {1}
    everyone_settled(db)


async def test_retries_give_up_after_the_maximum_age(tmp_path: Path, db: Path, pipelining: bool) -> None:
    sink, db, _ = await send_all(tmp_path, db, pipelining, only(U3, "rcpt", "450 4.2.1 busy", attempts=10**6), retry_max_age=0.3)
    state, code, error, *_ = rows(db)[U3]
    assert (state, code) == ("failed", 450) and "gave up" in error
    everyone_settled(db)


async def test_too_many_recipients_is_not_a_failure(tmp_path: Path, db: Path, pipelining: bool) -> None:
    sink, db, _ = await send_all(tmp_path, db, pipelining, only(U3, "rcpt", "452 4.5.3 too many recipients"))
    assert rows(db)[U3][0] == "sent"
    everyone_settled(db)


async def test_mailbox_full_under_5xx_is_a_deferral(tmp_path: Path, db: Path, pipelining: bool) -> None:
    sink, db, _ = await send_all(tmp_path, db, pipelining, only(U3, "rcpt", "552 5.2.2 mailbox full"))
    assert rows(db)[U3][0] == "sent" and rows(db)[U3][3] == 2


async def test_limits_change_live_and_hold_across_restarts(tmp_path: Path, db: Path) -> None:
    """Rate and connections changed by another process while sending take effect within a second."""
    import asyncio
    import time

    from mailtower.core.limits import read_limits, set_limits

    store = await open_store(db)
    people = write_csv(tmp_path / "p.csv", recipients(400))
    mailing_id, _ = await create_mailing(store, Draft("l", "Hi", "news@example.org", "Body", None), people, lambda r: None)
    await Lifecycle(store).send_now(mailing_id)
    await set_limits(store, {"rate": 20, "connections": 1})
    with Sink() as sink:
        sender = Sender(settings_for(db, sink))
        task = asyncio.create_task(sender.run(until_idle=True))
        try:
            await wait_for_count(sink, 10)
            assert sender.limits is not None and sender.limits.rate == 20 and sender.limits.connections == 1
            assert sum(1 for t in sender._workers if not t.done()) == 1
            changed = time.monotonic()
            other = await open_store(db)  # as another process would
            await set_limits(other, {"rate": 400, "connections": 3})
            await other.close()
            await wait_until_true(lambda: sender.limiter.configured == 400, 2.0)
            assert time.monotonic() - changed < 1.5
            await wait_until_true(lambda: sum(1 for t in sender._workers if not t.done()) == 3, 2.0)
        finally:
            await asyncio.wait_for(task, 30)
        assert len(sink.received()) == 400
    # After a restart the stored values hold, where no flag says otherwise (settings_for gives
    # connections=2: a sender started with it would take the fewer; see test_settings_probe).
    limits = await read_limits(store, dataclasses.replace(settings_for(db, sink), limit_sources=()))
    assert (limits.rate, limits.connections) == (400, 3)
    assert set(limits.changed_at) == {"rate", "connections"}
    await store.close()


async def wait_for_count(sink: Sink, n: int, timeout: float = 20.0) -> None:
    await wait_until_true(lambda: len(sink.deliveries) >= n, timeout)


async def wait_until_true(predicate: Callable[[], bool], timeout: float) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
