"""Review of the per-message fast path (issue 12): faults its first tests did not try.

Real SQLite files, real SMTP servers on 127.0.0.1 (the fault-injecting sink or a scripted one).
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.core.test_edge_sender import new_mailing
from tests.core.test_smtp_client import TIMEOUT
from tests.helpers import Cli, wait_until


# ---- odd replies to the envelope sent ahead: the same end as without the look-ahead ------------

def _odd_replies(stage: str, address: str, attempt: int) -> str | None:
    """One fault per recipient, on its first attempt only (so every retry can succeed)."""
    if attempt != 1 or stage == "mail":
        return None
    faults = {
        ("rcpt", "user1@example.com"): "550 5.1.1 no such user",
        ("rcpt", "user2@example.com"): "450 4.2.1 mailbox busy",
        ("rcpt", "user3@example.com"): "HANGUP",
        ("rcpt", "user4@example.com"): "421 4.3.0 closing soon",
        ("data", "user5@example.com"): "554 5.7.1 rejected content",
        ("data", "user6@example.com"): "451 4.3.0 try again",
        ("data", "user7@example.com"): "DROP",
        ("data", "user8@example.com"): "HANGUP",
        ("rcpt", "user9@example.com"): "452 4.5.3 too many recipients",
        ("data", "user10@example.com"): "SLEEP 1.5",
    }
    return faults.get((stage, address.lower()))


def _run_with_faults(tmp_path: Path, name: str, **env: str) -> tuple[dict[str, str], dict[str, int], tuple]:
    from mailtower.core.sink import Sink
    from tests.core.test_edge_sender import mailing_row

    db = tmp_path / f"{name}.db"
    with Sink(fault=_odd_replies) as sink:
        cli = Cli(db, sink.port, MAILTOWER_SMTP_CONNECTIONS="2", MAILTOWER_RETRY_BASE="1", MAILTOWER_RETRY_MAX="1",
                  MAILTOWER_BREAKER_HARD="0", MAILTOWER_BREAKER_SOFT="0", **env)
        mailing_id = new_mailing(cli, tmp_path, 30, name=name)
        cli.ok("run", "--until-idle")
        received = dict(sink.received())
    with sqlite3.connect(db) as conn:
        states = dict(conn.execute("SELECT email, state FROM recipients").fetchall())
    return states, received, mailing_row(db, mailing_id)


def test_odd_replies_to_envelopes_sent_ahead_end_as_without_the_look_ahead(tmp_path: Path) -> None:
    """Refusals at RCPT and DATA, a 421 with and without a hang-up, a dropped connection after a
    stored message, a slow dot reply (the job taken ahead goes elsewhere): every recipient ends in
    the state it ends in without the look-ahead (a rate limit turns it off), the sink got the
    same messages, and the counters agree with the ledger."""
    fast = _run_with_faults(tmp_path, "fast")
    slow = _run_with_faults(tmp_path, "slow", MAILTOWER_RATE="5000")
    assert fast[0] == slow[0]
    assert fast[1] == slow[1]
    for states, received, (_, sent, failed, in_doubt, _) in (fast, slow):
        assert sent == sum(1 for s in states.values() if s == "sent")
        assert failed == sum(1 for s in states.values() if s == "failed")
        assert {e for e, s in states.items() if s == "sent"} <= set(received)
        assert in_doubt == 0 or in_doubt == sum(1 for s in states.values() if s == "sending")


# ---- a stop while the next envelope is announced ----------------------------------------------

@pytest.mark.parametrize("how", ["stop-mailing", "sigterm"])
def test_a_stop_while_an_envelope_is_announced_leaves_its_row_pending(tmp_path: Path, reap: list, how: str) -> None:
    """user5's dot goes out with user6's MAIL, RCPT and DATA; the server stores user5 and holds
    its reply 3 s. A stop then (the mailing stopped from the CLI, or the sender told to end):
    user6 gets no dot and stays plainly pending (not in doubt, not attempted), user5 is sent,
    the sender ends in bounded time, and the ledger counts what the server received."""
    from mailtower.core.sink import Sink
    from tests.core.test_edge_sender import mailing_row

    def slow_dot(stage: str, address: str, attempt: int) -> str | None:
        return "SLEEP 3" if stage == "data" and address.lower() == "user5@example.com" else None

    db = tmp_path / "stop.db"
    with Sink(fault=slow_dot) as sink:
        cli = Cli(db, sink.port, MAILTOWER_SMTP_CONNECTIONS="1")
        mailing_id = new_mailing(cli, tmp_path, 12)
        runner = cli.popen("run", "--until-idle", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        reap.append(runner)
        wait_until(lambda: "user5@example.com" in sink.received(), timeout=20, what="user5 stored")
        if how == "sigterm":
            runner.send_signal(signal.SIGTERM)
        else:
            cli.ok("stop", str(mailing_id))
        runner.wait(timeout=20)
        received = sink.received()
    with sqlite3.connect(db) as conn:
        states = dict(conn.execute("SELECT email, state FROM recipients").fetchall())
        doubt = dict(conn.execute("SELECT email, in_doubt FROM recipients").fetchall())
    assert "user6@example.com" not in received
    assert states["user6@example.com"] == "pending" and not doubt["user6@example.com"]
    assert states["user5@example.com"] == "sent"
    assert set(received) == {e for e, s in states.items() if s == "sent"}
    assert mailing_row(db, mailing_id)[3] == 0  # nobody in doubt


# ---- kill -9 with the look-ahead meeting retries, refusals and slow dot replies ----------------

def _rough_relay(stage: str, address: str, attempt: int) -> str | None:
    """First attempts only: some deferred at RCPT or at the dot (retried within a second), some
    dot replies slow enough that the job taken ahead goes to another connection."""
    if attempt != 1 or stage == "mail":
        return None
    number = int(address.split("@")[0].removeprefix("user"))
    if stage == "rcpt" and number % 17 == 5:
        return "450 4.2.1 mailbox busy"
    if stage == "data" and number % 13 == 3:
        return "451 4.3.0 try again"
    if stage == "data" and number % 60 == 7:
        return "SLEEP 1.3"
    return None


@pytest.mark.parametrize("seed", [11, 12])
def test_sigkill_with_retries_and_slow_dots_ahead_loses_nothing(tmp_path: Path, reap: list, seed: int) -> None:
    """kill -9 at random moments while envelopes go ahead, deferred rows come due again and are
    taken ahead, and slow dot replies send jobs taken ahead to other connections: after each kill
    at most one row per connection is in doubt; at the end nobody is lost, the ledger says exactly
    who the server holds, and the extra copies are within connections x kills."""
    import random

    from mailtower.core.sink import Sink
    from tests.core.test_crash import in_flight_on_disk, sent_in_ledger
    from tests.helpers import recipients

    rng = random.Random(seed)
    n, connections = 500, 3
    db = tmp_path / "kill.db"
    env = dict(MAILTOWER_SMTP_CONNECTIONS=str(connections), MAILTOWER_RETRY_BASE="1", MAILTOWER_RETRY_MAX="1",
               MAILTOWER_BREAKER_HARD="0", MAILTOWER_BREAKER_SOFT="0")
    with Sink(fault=_rough_relay, latency=0.002) as sink:
        cli = Cli(db, sink.port, **env)
        mailing_id = new_mailing(cli, tmp_path, n, name="kill")

        def completed() -> bool:  # a very fast host: nothing left for the next runner to deliver
            with sqlite3.connect(db) as conn:
                return conn.execute("SELECT state FROM mailings WHERE id = ?", (mailing_id,)).fetchone()[0] == "completed"

        kills = 0
        for _ in range(8):
            before = len(sink.deliveries)
            runner = cli.popen("run", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            reap.append(runner)
            # The kill's random moment, counted in deliveries (8 x 40 of the 500 at most, and what
            # goes out between a look and the kill): counted in time, a fast host completed the
            # mailing early, and the next runner, with nothing to deliver, idled until the wait
            # timed out. Should it complete all the same, the wait ends there.
            target = before + rng.randint(1, 40)
            wait_until(lambda: len(sink.deliveries) >= target or runner.poll() is not None or completed(),
                       timeout=30, what=f"{target - before} deliveries")
            if runner.poll() is None:
                runner.send_signal(signal.SIGKILL)
                kills += 1
            runner.wait(timeout=10)
            assert in_flight_on_disk(db) <= connections
        for _ in range(5):  # deferred rows may still wait for their retry time: bounded
            cli.ok("run", "--until-idle")
            if completed():
                break
        received = sink.received()
    everyone = {r["email"] for r in recipients(n)}
    assert kills >= 4
    assert set(received) == everyone == sent_in_ledger(db)
    assert sum(count - 1 for count in received.values()) <= connections * kills
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT state, sent, total, in_doubt FROM mailings WHERE id = ?", (mailing_id,)).fetchone()
    assert row == ("completed", n, n, 0)


# ---- a relay that talks without end: the reply reader is bounded --------------------------------

async def test_a_reply_that_never_ends_is_refused_at_once_not_buffered_until_the_timeout() -> None:
    """The server answers MAIL with continuation lines ("250-...") that never end. The reader
    kept them all (memory without bound) until the reply timeout; a reply of more lines than any
    SMTP reply has is not SMTP: the connection is dropped at once, nobody in doubt."""
    from tests.core.test_smtp_client import greet, read_lines, scripted

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        await read_lines(reader, 3)
        for _ in range(400):  # 400 x 100 lines, never the last one (bounded for the test)
            writer.write(b"250-" + b"x" * 60 + b"\r\n" * 1 + (b"250-" + b"y" * 60 + b"\r\n") * 99)
            await writer.drain()
        await asyncio.sleep(TIMEOUT)

    async with scripted(script) as (conn, _errors):
        started = time.monotonic()
        verdict = await asyncio.wait_for(conn.send("a@example.org", "one@example.org", b"Subject: 1\r\n\r\nx\r\n"), TIMEOUT * 2)
        elapsed = time.monotonic() - started
        assert elapsed < TIMEOUT / 2, f"waited {elapsed:.1f} s for a reply that never ends"
        assert not verdict.in_doubt and not conn.session_open
        assert "reply" in verdict.text


async def test_replies_nobody_asked_for_end_the_connection_instead_of_piling_up() -> None:
    """An idle connection (between messages, or holding an envelope sent ahead) whose server
    sends reply after reply nobody asked for: they piled up without bound until the connection was
    next used. More unread replies than a pipelined group can have: the connection is dropped."""
    from tests.core.test_smtp_client import greet, read_body, read_lines, scripted
    from tests.helpers import wait_for

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        await read_lines(reader, 3)
        writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
        await read_body(reader)
        writer.write(b"250 queued\r\n")
        for _ in range(200):
            writer.write(b"250 2.0.0 ok\r\n" * 100)
            await writer.drain()
        await asyncio.sleep(TIMEOUT)

    async with scripted(script) as (conn, _errors):
        verdict = await asyncio.wait_for(conn.send("a@example.org", "one@example.org", b"Subject: 1\r\n\r\nx\r\n"), TIMEOUT)
        assert verdict.outcome.value == "sent"

        async def closed() -> bool:
            return not conn.session_open

        await wait_for(closed, timeout=TIMEOUT / 2)
        assert not conn.connected


# ---- another process holds the database's write lock ------------------------------------------

def test_no_final_dot_while_another_process_holds_the_write_lock(tmp_path: Path, reap: list) -> None:
    """Another process (an import, a person's sqlite3) holds the write lock for 2 s while the
    sender runs with envelopes going ahead: the inline write gives way, and since no `sending`
    mark can reach the disk, no connection sends a final dot beyond the one it had already sent
    (at most one message per connection is delivered meanwhile). Then everything goes on:
    everyone once, nobody in doubt, the sender never failed."""
    from mailtower.core.sink import Sink
    from tests.core.test_edge_sender import mailing_row

    n, connections = 400, 3
    db = tmp_path / "locked.db"
    with Sink(latency=0.003) as sink:
        cli = Cli(db, sink.port, MAILTOWER_SMTP_CONNECTIONS=str(connections))
        mailing_id = new_mailing(cli, tmp_path, n)
        runner = cli.popen("run", "--until-idle", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        reap.append(runner)
        wait_until(lambda: len(sink.deliveries) >= 20, timeout=30, what="sending under way")
        other = sqlite3.connect(db, isolation_level=None, timeout=10)
        try:
            other.execute("BEGIN IMMEDIATE")
            at_lock = len(sink.deliveries)
            time.sleep(2.0)  # how long the other process holds the lock (the scenario, not a wait)
            during = len(sink.deliveries) - at_lock
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert runner.wait(timeout=60) == 0, runner.stderr.read().decode() if runner.stderr else ""
        received = sink.received()
    assert during <= connections, f"{during} messages delivered while no mark could be written"
    assert len(received) == n and set(received.values()) == {1}
    state, sent, failed, in_doubt, _ = mailing_row(db, mailing_id)
    assert (state, sent, failed, in_doubt) == ("completed", n, 0, 0)


# ---- a positive reply where another was due is not a delivery -----------------------------------

@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("data_reply", [b"250 2.0.0 ok", b"220 fine", b"300 go on"])
async def test_a_positive_reply_to_data_instead_of_354_is_not_taken_for_a_delivery(pipelining: bool, data_reply: bytes) -> None:
    """The server answers DATA with 250 (or another 2xx/3xx) instead of 354: no message was
    sent, yet the reply went to the refusal path, whose verdict for a 2xx is SENT: the recipient
    was recorded `sent` and never received anything (lost). The server is not following the
    protocol: the connection goes, nobody is in doubt, and the recipient is sent again."""
    from mailtower.core.smtp_replies import Outcome as ReplyOutcome
    from tests.core.test_smtp_client import greet, read_lines, scripted

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, pipelining=pipelining)
        if pipelining:
            await read_lines(reader, 3)
            writer.write(b"250 ok\r\n250 ok\r\n" + data_reply + b"\r\n")
        else:
            for reply in (b"250 ok", b"250 ok", data_reply):
                await read_lines(reader, 1)
                writer.write(reply + b"\r\n")
        await writer.drain()
        while await asyncio.wait_for(reader.readline(), TIMEOUT):  # RSET, QUIT: answered, until closed
            writer.write(b"250 ok\r\n")
            await writer.drain()

    async with scripted(script) as (conn, _errors):
        verdict = await asyncio.wait_for(conn.send("a@example.org", "one@example.org", b"Subject: 1\r\n\r\nx\r\n"), TIMEOUT)
        assert verdict.outcome is not ReplyOutcome.SENT, verdict
        assert verdict.outcome is ReplyOutcome.RECONNECT and not verdict.in_doubt
        assert not conn.connected
