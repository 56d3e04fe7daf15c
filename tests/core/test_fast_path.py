"""The per-message fast path (issue 12): with PIPELINING one write per message (the body, the
final dot and the next message's MAIL, RCPT and DATA together), ledger writes done on the event
loop's thread when the store is free, and the awaitable path when it is not.

Scripted servers on 127.0.0.1 decide exactly when they answer, so "the next envelope came with
the dot" is checked by a server that does not answer the dot until it has it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from pathlib import Path

from mailtower.core.domain import RecipientState
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.sink import Sink
from mailtower.core.smtp_replies import Outcome
from mailtower.core import store as store_module
from mailtower.core.store import Outcome as LedgerOutcome, Store
from tests.core.test_edge_sender import ledger, mailing_row, new_mailing
from tests.core.test_smtp_client import TIMEOUT, greet, read_body, read_lines, scripted
from tests.helpers import Cli, recipients, wait_until, write_csv


async def one_message_then_an_envelope(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Serve one message whose dot came with the next envelope; leave that one at its 354."""
    await greet(reader, writer)
    await read_lines(reader, 3)
    writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
    await writer.drain()
    await read_body(reader)
    await read_lines(reader, 3)
    writer.write(b"250 queued 1\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    await writer.drain()


async def test_the_next_envelope_goes_out_with_the_final_dot() -> None:
    """The server answers nothing of message 1's dot until message 2's MAIL, RCPT and DATA have
    arrived: a client that waits for the dot's reply before writing them (three writes per
    message) times out here."""
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        seen.extend(await read_lines(reader, 3))
        writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
        await writer.drain()
        seen.append(await read_body(reader))
        seen.extend(await read_lines(reader, 3))  # before any reply to the dot
        writer.write(b"250 queued 1\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        await writer.drain()
        seen.append(await read_body(reader))
        writer.write(b"250 queued 2\r\n")
        await writer.drain()

    async with scripted(script) as (conn, errors):
        first = await asyncio.wait_for(
            conn.send("a@example.org", "one@example.org", b"Subject: 1\r\n\r\nfirst\r\n", then=lambda: "two@example.org"),
            TIMEOUT,
        )
        assert conn.presented and conn.connected
        second = await asyncio.wait_for(conn.send("a@example.org", "two@example.org", b"Subject: 2\r\n\r\nsecond\r\n"), TIMEOUT)
        assert not conn.presented
    assert not errors, errors
    assert first.outcome is Outcome.SENT and second.outcome is Outcome.SENT
    assert seen[4:7] == [b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<two@example.org>\r\n", b"DATA\r\n"]
    assert seen[7].endswith(b"second\r\n")


async def test_an_envelope_sent_ahead_and_not_used_ends_with_the_connection_and_no_dot() -> None:
    """`withdraw()` after an envelope went out with the dot: the server never gets a dot for it
    (which would deliver an empty message); the connection is dropped instead."""
    after_354: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await one_message_then_an_envelope(reader, writer)
        after_354.append(await asyncio.wait_for(reader.read(), TIMEOUT))  # everything until EOF

    async with scripted(script) as (conn, errors):
        verdict = await asyncio.wait_for(
            conn.send("a@example.org", "one@example.org", b"x\r\n", then=lambda: "two@example.org"), TIMEOUT
        )
        assert verdict.outcome is Outcome.SENT and conn.presented
        conn.withdraw()
        assert not conn.connected and not conn.presented
        await asyncio.wait_for(_until(lambda: bool(after_354)), TIMEOUT)
    assert not errors, errors
    assert b"." not in after_354[0] and b"QUIT" not in after_354[0]


async def _until(condition) -> None:  # type: ignore[no-untyped-def]
    for _ in range(1000):  # bounded: TIMEOUT around it
        if condition():
            return
        await asyncio.sleep(0.01)


async def test_an_envelope_sent_ahead_is_not_used_for_another_recipient() -> None:
    """A send() for someone other than the recipient announced with the last dot drops the
    connection (not in doubt, nothing dotted) instead of sending that message to the wrong one."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await one_message_then_an_envelope(reader, writer)
        await asyncio.wait_for(reader.read(), TIMEOUT)

    async with scripted(script) as (conn, errors):
        await asyncio.wait_for(conn.send("a@example.org", "one@example.org", b"x\r\n", then=lambda: "two@example.org"), TIMEOUT)
        other = await asyncio.wait_for(conn.send("a@example.org", "three@example.org", b"x\r\n"), TIMEOUT)
        assert not conn.connected
    assert not errors, errors
    assert other.outcome is Outcome.RECONNECT and not other.in_doubt


def test_a_ledger_write_gives_way_while_another_connection_writes(tmp_path: Path) -> None:
    """record_now never waits on the event loop's thread: while another connection holds the
    write lock it returns None, and record_and_claim then waits (on the database thread) and
    writes once the lock is free."""
    db = tmp_path / "busy.db"
    mailing_id = new_mailing(Cli(db, 2525), tmp_path, 5)

    async def check() -> None:
        store = await Store.open(db)
        try:
            await Lifecycle(store).start(mailing_id)
            claimed, _ = await store.record_and_claim(mailing_id, [], 5)
            first, second = claimed[0].id, claimed[1].id
            other = sqlite3.connect(db, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            try:
                assert store.record_now(mailing_id, [], 0, marks=[first]) is None
                write = asyncio.ensure_future(store.record_and_claim(mailing_id, [], 0, marks=[first]))
                await asyncio.sleep(0.3)
                assert not write.done()  # waiting for the lock, not failed and not skipped
            finally:
                other.execute("ROLLBACK")
                other.close()
            await asyncio.wait_for(write, TIMEOUT)
            done = store.record_now(mailing_id, [LedgerOutcome(first, RecipientState.SENT, 250)], 0, marks=[second])
            assert done is not None
            assert done[1].sent == 1 and done[1].state.value == "sending"
        finally:
            await store.close()

    asyncio.run(check())
    states = {email: state for state, emails in ledger(db).items() for email in emails}
    assert sorted(states.values()) == ["pending", "pending", "pending", "sending", "sent"]


def test_inline_writes_leave_the_wal_checkpoint_to_a_worker_thread(tmp_path: Path, monkeypatch) -> None:
    """SQLite checkpoints the WAL inside the commit that crosses 1,000 pages, with two fsyncs: on
    the event loop's thread that stalled every connection. The inline connection never does it;
    the store checkpoints on a connection of its own in a worker thread, so the WAL still stays
    small (1,500 writes append ~35 MB to a WAL nobody checkpoints)."""
    monkeypatch.setattr(store_module, "CHECKPOINT_INTERVAL", 0.0)  # whenever none is under way
    db = tmp_path / "wal.db"
    wal = Path(f"{db}-wal")
    mailing_id = new_mailing(Cli(db, 2525), tmp_path, 1500)

    async def check() -> None:
        store = await Store.open(db)
        try:
            await Lifecycle(store).start(mailing_id)
            claimed, _ = await store.record_and_claim(mailing_id, [], 1500)
            assert len(claimed) == 1500
            previous: list[LedgerOutcome] = []
            for row in claimed:
                for _ in range(5000):  # it gives way while a RESTART checkpoint holds writes back
                    done = store.record_now(mailing_id, previous, 0, marks=[row.id])
                    if done is not None:
                        break
                    await asyncio.sleep(0.001)
                else:
                    raise AssertionError("the inline write kept giving way")
                await asyncio.sleep(0.001)  # a sender's writes come between replies
                previous = [LedgerOutcome(row.id, RecipientState.SENT, 250)]
            assert store.record_now(mailing_id, previous, 0) is not None
            inline = store._inline  # noqa: SLF001 - the connection under test
            assert inline is not None
            assert inline.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
            assert wal.stat().st_size < 8 * 1024 * 1024, wal.stat().st_size
        finally:
            await store.close()

    asyncio.run(check())
    states = ledger(db)
    assert set(states) == {"sent"} and len(states["sent"]) == 1500


def test_reconnecting_every_few_messages_sends_everyone_once(tmp_path: Path) -> None:
    """The look-ahead never announces a message on a connection about to be closed: with a
    reconnect every 3 messages over 2 connections everybody gets exactly one copy, nobody in doubt."""
    db = tmp_path / "mpc.db"
    with Sink() as sink:
        cli = Cli(db, sink.port, MAILTOWER_SMTP_CONNECTIONS="2", MAILTOWER_MESSAGES_PER_CONNECTION="3")
        mailing_id = new_mailing(cli, tmp_path, 40)
        cli.ok("run", "--until-idle")
        received = sink.received()
    assert len(received) == 40 and set(received.values()) == {1}
    state, sent, failed, in_doubt, _ = mailing_row(db, mailing_id)
    assert (state, sent, failed, in_doubt) == ("completed", 40, 0, 0)


# ---- the guarantees kept with the look-ahead and the inline write ------------------------------


def test_an_address_suppressed_while_its_envelope_went_ahead_gets_no_dot(tmp_path: Path) -> None:
    """user5's MAIL and RCPT go out with user4's final dot (the look-ahead); user5 is suppressed
    while the server holds its reply to that dot. The inline write that marks user5 `sending`
    finds it suppressed: the connection is dropped before user5's dot, nothing is delivered to
    it, and everyone else is sent once."""
    import threading

    held, release = threading.Event(), threading.Event()
    rcpts: list[str] = []

    def fault(stage: str, address: str, attempt: int) -> str | None:
        if stage == "rcpt":
            rcpts.append(address)
        if stage == "data" and address == "user4@example.com":
            held.set()
            release.wait(20)  # bounded: answered once the test has suppressed user5
        return None

    db = tmp_path / "sup.db"
    with Sink(fault=fault) as sink:
        cli = Cli(db, sink.port, MAILTOWER_SMTP_CONNECTIONS="1")
        mailing_id = new_mailing(cli, tmp_path, 10)
        runner = cli.popen("run", "--until-idle", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_until(held.is_set, what="user4's message to reach the server")
            cli.ok("suppress", "add", "user5@example.com")
            release.set()
            _, err = runner.communicate(timeout=60)
            assert runner.returncode == 0, err.decode()
        finally:
            release.set()
            if runner.poll() is None:
                runner.kill()
                runner.wait()
        received = sink.received()
    assert "user5@example.com" in rcpts  # its envelope did go ahead with user4's dot
    assert "user5@example.com" not in received
    assert len(received) == 9 and set(received.values()) == {1}
    states = {email: state for state, emails in ledger(db).items() for email in emails}
    assert states["user5@example.com"] == "suppressed"
    state, sent, failed, in_doubt, _ = mailing_row(db, mailing_id)
    assert (state, sent, failed, in_doubt) == ("completed", 9, 0, 0)


def test_a_canary_is_paced_without_envelopes_sent_ahead(tmp_path: Path) -> None:
    """While a canary paces its sample (here 10/s), no envelope goes out ahead with a final dot:
    each canary recipient's RCPT reaches the server when its own message is due, not a pacing
    interval early, so the canary's rate holds at the server for every command."""
    import threading
    import time

    lock = threading.Lock()
    at: dict[tuple[str, str], float] = {}

    def fault(stage: str, address: str, attempt: int) -> str | None:
        if stage in ("rcpt", "data"):
            with lock:
                at.setdefault((stage, address), time.monotonic())
        return None

    db = tmp_path / "canary.db"
    body = tmp_path / "body.txt"
    body.write_text("Hello {{ name }}\n", encoding="utf-8")
    people = write_csv(tmp_path / "c.csv", recipients(30))
    with Sink(fault=fault) as sink:
        cli = Cli(db, sink.port, MAILTOWER_SMTP_CONNECTIONS="1")
        cli.ok("new", "--name", "c", "--subject", "Hi", "--from", "news@example.org", "--text", str(body),
               "--recipients", str(people), "--now", "--canary", "6", "--canary-rate", "10", "--canary-wait", "0.01")
        cli.ok("run", "--until-idle")
        first = [d.recipient for d in sink.deliveries[:6]]
        assert len(sink.received()) == 30
    gaps = [at[("data", email)] - at[("rcpt", email)] for email in first]
    # Its RCPT came with its own message (milliseconds), not with the previous dot 0.1 s before.
    assert max(gaps) < 0.06, gaps


async def test_a_domain_groups_connection_cap_holds_with_envelopes_sent_ahead(tmp_path: Path) -> None:
    """connections = 1 for a group, four connections, PIPELINING offered (so envelopes go ahead
    with final dots): never two of the group's recipients at the server at once."""
    import threading

    from mailtower.core.sender import Sender
    from tests.core.test_domain_pacing import config, queued_mailing, settings_for

    db = tmp_path / "c.db"
    await queued_mailing(db, tmp_path, [f"s{i}@slow.example.org" for i in range(12)] + [f"f{i}@fast.example.com" for i in range(60)])
    lock, active, most = threading.Lock(), {"slow": 0}, {"slow": 0}

    def fault(stage: str, address: str, attempt: int) -> str | None:
        if stage == "rcpt" and address.endswith("@slow.example.org"):
            with lock:
                active["slow"] += 1
                most["slow"] = max(most["slow"], active["slow"])
        if stage == "data" and address.endswith("@slow.example.org"):
            with lock:
                active["slow"] -= 1
            return "SLEEP 0.05"
        return None

    with Sink(fault=fault) as sink:
        sender = Sender(settings_for(db, sink, config(tmp_path, rate=0, connections=1)))
        await asyncio.wait_for(sender.run(until_idle=True), 60)
        received = sink.received()
    assert len(received) == 72 and set(received.values()) == {1}
    assert most["slow"] == 1


def test_the_breaker_hears_every_outcome_with_envelopes_sent_ahead(tmp_path: Path) -> None:
    """Every recipient refused with 550: the breaker trips on its minimum like without the
    look-ahead, and what the ledger says was failed is what the server refused (a job taken
    ahead is judged like any other, or given back unsent and unjudged)."""
    db = tmp_path / "b.db"
    with Sink(fault=lambda stage, address, attempt: "550 5.1.1 no such user" if stage == "rcpt" else None) as sink:
        cli = Cli(db, sink.port, MAILTOWER_SMTP_CONNECTIONS="2", MAILTOWER_BREAKER_MIN="20")
        mailing_id = new_mailing(cli, tmp_path, 300)
        cli("run", "--until-idle")
        refused = sum(n for reply, n in sink.handler.replies.items() if reply.startswith("550"))
    with sqlite3.connect(db) as conn:
        state, failed, tripped = conn.execute(
            "SELECT state, failed, tripped FROM mailings WHERE id = ?", (mailing_id,)).fetchone()
        sending = conn.execute("SELECT COUNT(*) FROM recipients WHERE state = 'sending'").fetchone()[0]
    assert state == "stopped" and tripped
    # A refusal of an envelope sent ahead whose job was then given back (the run had halted)
    # is no outcome: that row stays pending, at most one per connection.
    assert failed <= refused <= failed + 2 and 20 <= failed < 300 and sending == 0


# ---- rendering: the quoted-printable shortcut and the message rendered ahead --------------------

from hypothesis import given, settings, strategies as st  # noqa: E402


def _lines() -> st.SearchStrategy[str]:
    line = st.text(alphabet=st.sampled_from(list(" \t.=!-/:;<>?@AZaz~_\u00e9\x7f\x01")), max_size=90)
    return st.lists(line, min_size=1, max_size=4).map(lambda lines: "".join(x + "\n" for x in lines))


@settings(max_examples=3000, deadline=None)
@given(_lines())
def test_quoted_printable_shortcut_is_exactly_what_binascii_writes(text: str) -> None:
    """Lines taken as they are (_QP_PLAIN) come out byte for byte as b2a_qp would write them:
    dots, "=", trailing blanks, tabs, long lines and non-ASCII all still go through b2a_qp."""
    import binascii

    from mailtower.core.compose import _quoted_printable

    expected = binascii.b2a_qp(text.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")
    assert _quoted_printable(text) == expected


def test_quoted_printable_shortcut_edges() -> None:
    import binascii

    from mailtower.core.compose import _QP_PLAIN, _quoted_printable

    for text in [".\n", ".x\n", "a \n", "a\t\n", "=\n", "x" * 72 + "\n", "x" * 73 + "\n", "x" * 76 + "\n",
                 "x" * 77 + "\n", "\n", "a\n\nb\n", "Hello Person 1,\n"]:
        expected = binascii.b2a_qp(text.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")
        assert _quoted_printable(text) == expected, text
    assert _QP_PLAIN.fullmatch("Hello Person 1, your code is SPRING000001.\n")
    assert not _QP_PLAIN.fullmatch("x" * 73 + "\n") and not _QP_PLAIN.fullmatch(".\n")


def test_lines_with_fields_close_together_are_encoded_as_one_run() -> None:
    """A body with a field in every paragraph is encoded in one call per recipient, not one per
    line; fixed text longer than _JOIN_GAP between two field lines still splits the run (it is
    encoded once, when the template is built). The message is the same either way."""
    import binascii

    from mailtower.core.compose import _JOIN_GAP, MessageTemplate, _Slots

    para = "Our collection is here, {{ name }}. Use code {{ code }} at checkout. "
    near = "Hello {{ name }},\n\n" + (para + "\n\n") * 7
    far = near + "x" * (_JOIN_GAP + 1) + "\nBye {{ name }}\n"
    for text, runs in ((near, 1), (far, 2)):
        template = MessageTemplate.build(mailing_id=1, subject="s", from_addr="news@example.org", text=text,
                                         html=None, available_fields={"code"})
        (body,) = template._bodies  # noqa: SLF001
        assert sum(isinstance(segment, _Slots) for segment in body._segments) == runs  # noqa: SLF001
        raw = template.render(recipient_id=7, email="a@example.com", name="Ann  Lee ", fields={"code": "C=1 "}, now=0)
        intended = text.replace("{{ name }}", "Ann  Lee ").replace("{{ code }}", "C=1 ")
        encoded = binascii.b2a_qp(intended.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")
        assert raw.split(b"\r\n\r\n", 1)[1] == encoded


def test_every_message_rendered_ahead_is_the_recipients_own(tmp_path: Path) -> None:
    """Messages are rendered while the connection waits for the previous dot's reply: each
    recipient still gets exactly one message, addressed and personalised for them, with the
    Message-ID of their own row."""
    import email

    db = tmp_path / "ahead.db"
    with Sink(keep_messages=True) as sink:
        cli = Cli(db, sink.port, MAILTOWER_SMTP_CONNECTIONS="3")
        new_mailing(cli, tmp_path, 60)
        cli.ok("run", "--until-idle")
        deliveries = list(sink.deliveries)
    assert len(deliveries) == 60 and len({d.recipient for d in deliveries}) == 60
    with sqlite3.connect(db) as conn:
        ids = dict(conn.execute("SELECT email, id FROM recipients").fetchall())
    for d in deliveries:
        message = email.message_from_bytes(d.data)
        assert message["To"].endswith(f"<{d.recipient}>") or message["To"] == d.recipient, (message["To"], d.recipient)
        assert f".r{ids[d.recipient]}@" in message["Message-ID"]
        number = d.recipient.split("@")[0].removeprefix("user")
        assert message.get_payload(decode=True).decode() == f"Hello User {number}\r\n"


# ---- the ledger write's cost does not grow with the mailing --------------------------------------


def _write_steps(db: Path, mailing_id: int, marks: list[int]) -> int:
    """SQLite virtual-machine steps (counted in units of 100) of one sender write marking `marks`."""
    from mailtower.core.store import _record_and_claim

    conn = sqlite3.connect(db, isolation_level=None)
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    try:
        conn.set_progress_handler(count, 100)
        _record_and_claim(conn, mailing_id, [], 0, None, marks, (), set())
    finally:
        conn.close()
    return steps[0]


def test_marking_rows_costs_the_same_in_a_small_and_a_large_mailing(tmp_path: Path) -> None:
    """A write that marks 16 rows (16 connections) looks them up by id: on main SQLite scanned
    the whole mailing for the suppression re-check from about four marks on (3.5 ms a write at
    20,000 recipients, growing with the mailing), so every write of a large mailing got slower."""
    from mailtower.core.operations import Draft, create_mailing

    async def mailing(db: Path, n: int) -> tuple[int, list[int]]:
        people = write_csv(tmp_path / f"{n}.csv", recipients(n))
        store = await Store.open(db)
        try:
            mailing_id, _ = await create_mailing(store, Draft("m", "s", "news@example.org", "hi", None), people, lambda *a: None)
            lifecycle = Lifecycle(store)
            await lifecycle.send_now(mailing_id)
            await lifecycle.start(mailing_id)
            claimed, _ = await store.record_and_claim(mailing_id, [], 16)
            return mailing_id, [c.id for c in claimed]
        finally:
            await store.close()

    small, large = tmp_path / "small.db", tmp_path / "large.db"
    small_id, small_marks = asyncio.run(mailing(small, 200))
    large_id, large_marks = asyncio.run(mailing(large, 20_000))
    small_steps, large_steps = _write_steps(small, small_id, small_marks), _write_steps(large, large_id, large_marks)
    assert large_steps <= 2 * small_steps + 20, (small_steps, large_steps)


# ---- kill -9 with envelopes sent ahead ----------------------------------------------------------

import pytest  # noqa: E402


@pytest.mark.parametrize("seed", [4, 5])
def test_sigkill_with_envelopes_sent_ahead_loses_nothing(tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/core/test_crash.py's harness (kill -9 at random moments, again and again) without its
    rate limit, which turns the look-ahead off: with envelopes going out with final dots and the
    ledger written inline, still nobody is lost, at most one row per connection is in doubt after
    each kill, and the extra copies stay within connections x kills."""
    from tests.core import test_crash

    class Unpaced(Cli):
        def __init__(self, db: Path, smtp_port: int | None = None, **env: str) -> None:
            env.pop("MAILTOWER_RATE", None)
            super().__init__(db, smtp_port, **env)

    monkeypatch.setattr(test_crash, "Cli", Unpaced)
    monkeypatch.setattr(test_crash, "N", 3000)  # unpaced, enough left for the kills
    test_crash.test_sigkill_many_times_loses_nothing(tmp_path, seed)


async def test_a_sender_with_inline_writes_off_claims_on_the_database_thread(tmp_path: Path) -> None:
    """The dashboard's sender (inline_writes off) leaves the event loop to its keys: its batches
    and claims run on the database thread (a claim of 200 rows held the loop 12-21 ms), while
    `mailtower run` writes on the loop when the store is free."""
    import threading

    from mailtower.core.operations import Draft, create_mailing

    store = await Store.open(tmp_path / "m.db")
    try:
        people = write_csv(tmp_path / "r.csv", recipients(30))
        mailing_id, _ = await create_mailing(store, Draft("m", "s", "news@example.org", "Hi", None), people, lambda r: None)
        await Lifecycle(store).send_now(mailing_id)
        await Lifecycle(store).start(mailing_id)
        threads: list[int] = []
        # set on the database thread (sqlite3 connections refuse other threads)
        await store.db._execute(store.db._conn.set_trace_callback, lambda sql: threads.append(threading.get_ident()))  # noqa: SLF001
        loop_thread = threading.get_ident()
        first, _ = await store.record_and_claim(mailing_id, [], 10, inline=False)
        assert len(first) == 10 and threads and loop_thread not in threads
        threads.clear()
        second, _ = await store.record_and_claim(mailing_id, [], 10, held={c.id for c in first})
        assert len(second) == 10 and threads == []  # written on the loop's own connection instead
    finally:
        await store.close()
