"""A relay's quota and rate limits in its own words, replies that contradict themselves, and a
pause that always says why: nobody failed for the relay's limits, nobody sent twice unflagged."""

from __future__ import annotations

import asyncio

import pytest

from mailtower.core.sender import Sender
from mailtower.core.sink import Sink
from mailtower.core.smtp_replies import Outcome, Stage, classify
from tests.helpers import recipients, wait_for

from .test_edge_smtp import events, holds_for, ledger, prepared_db, settings, started, stopped, until

QUOTA = [
    ("Amazon SES", 554, "Throttling failure: Daily message quota exceeded.", Stage.DOT),
    ("Gmail", 550, "5.4.5 Daily user sending quota exceeded. Learn more at https://support.google.com/", Stage.RCPT),
    ("Microsoft", 554, "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message",
     Stage.DOT),
    ("generic", 550, "5.7.1 Hourly sending limit reached for this account", Stage.MAIL),
]
RATE = [
    ("Amazon SES", 554, "Throttling failure: Maximum sending rate exceeded.", Stage.DOT),
    ("generic", 550, "5.7.1 Rate limit exceeded, try again later", Stage.RCPT),
    ("generic", 554, "Too many messages, slow down", Stage.DOT),
]


@pytest.mark.parametrize("who, code, text, stage", QUOTA, ids=[q[0] for q in QUOTA])
def test_a_sending_quota_used_up_pauses_and_fails_nobody(who: str, code: int, text: str, stage: Stage) -> None:
    verdict = classify(code, text, stage)
    assert verdict.outcome is Outcome.PAUSE and verdict.throttle, (who, verdict)


@pytest.mark.parametrize("who, code, text, stage", RATE, ids=[r[0] for r in RATE])
def test_a_5xx_rate_limit_defers_and_slows_down(who: str, code: int, text: str, stage: Stage) -> None:
    verdict = classify(code, text, stage)
    assert verdict.outcome is Outcome.DEFER and verdict.throttle, (who, verdict)


@pytest.mark.parametrize("code, text, stage, outcome", [
    (552, "5.2.2 Mailbox over quota", Stage.DOT, Outcome.DEFER),  # the recipient's mailbox: as before
    (550, "User over quota", Stage.RCPT, Outcome.FAIL),  # not a sending quota
    (550, "5.1.1 <x@example.com>: Recipient address rejected: User unknown", Stage.RCPT, Outcome.FAIL),
    (554, "5.7.1 Message rejected as spam", Stage.DOT, Outcome.FAIL),
])
def test_other_permanent_refusals_are_unchanged(code: int, text: str, stage: Stage, outcome: Outcome) -> None:
    assert classify(code, text, stage).outcome is outcome


async def test_a_5xx_rate_limit_after_the_dot_fails_nobody(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Amazon SES answers the final dot "554 Throttling failure: Maximum sending rate exceeded."
    for a while: those recipients were failed for good; now they wait and go later."""
    db = await prepared_db(tmp_path, recipients(20))
    throttled = {"user3@example.com", "user11@example.com"}

    def fault(stage: str, address: str, attempt: int) -> str | None:
        if stage == "data" and attempt == 1 and address in throttled:
            return "554 Throttling failure: Maximum sending rate exceeded."
        return None

    with Sink(fault=fault) as sink:
        sender = Sender(settings(db, sink.port))
        await asyncio.wait_for(sender.run(until_idle=True), 60)
    assert ledger(db) == {"sent": 20}
    assert set(sink.received().values()) == {1}  # each accepted once
    assert sender.relays[0].limiter.factor < 1.0  # and it slowed down


@pytest.mark.parametrize("at, reply", [("rcpt", "550 5.4.5 Daily user sending quota exceeded."),
                                       ("mail", "554 5.7.1 client host blocked")], ids=["quota", "blocked"])
async def test_a_pause_keeps_its_reason_and_fails_nobody(tmp_path, at: str, reply: str) -> None:  # type: ignore[no-untyped-def]
    """Every connection is refused: the relay pauses once, with the relay's words, however many
    connections were still opening (their sessions once cleared the reason, and the status
    said "paused: " with nothing after it), and nobody is failed."""
    db = await prepared_db(tmp_path, recipients(20))
    words = reply[4:]

    def fault(stage: str, address: str, attempt: int) -> str | None:
        return reply if stage == at else None

    with Sink(fault=fault, latency=0.05) as sink:
        sender = Sender(settings(db, sink.port, connections=4))
        task = await started(sender)
        try:
            relay = sender.relays[0]
            await wait_for(until(lambda: relay.paused), 20)
            # The other connections finish opening meanwhile (50 ms a reply): the reason stays.
            assert await holds_for(lambda: relay.status().state == "paused" and words in relay.status().reason, 1.5), \
                relay.status()
        finally:
            await stopped(sender, task)
    assert "failed" not in ledger(db)
    paused = [d for k, d in events(db) if k == "auto-paused"]
    assert paused and all(words in d for d in paused), paused


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
async def test_a_reply_to_the_dot_whose_lines_disagree_leaves_the_recipient_in_doubt(
    tmp_path, pipelining: bool  # type: ignore[no-untyped-def]
) -> None:
    """"250-2.0.0 Ok: queued" then "451 4.3.0 temporary" in one reply (RFC 5321 4.2.1 wants one
    code): the last line's 451 deferred it, it was sent again, and the resend was not flagged."""
    db = await prepared_db(tmp_path, recipients(6))

    def fault(stage: str, address: str, attempt: int) -> str | None:
        if stage == "data" and attempt == 1 and address.startswith("user3@"):
            return "250-2.0.0 Ok: queued as 4F2A1\r\n451 4.3.0 temporary"
        return None

    with Sink(fault=fault, pipelining=pipelining) as sink:
        sender = Sender(settings(db, sink.port, connections=2))
        await asyncio.wait_for(sender.run(until_idle=True), 60)
    import sqlite3

    with sqlite3.connect(db) as conn:
        state, in_doubt = conn.execute(
            "SELECT state, in_doubt FROM recipients WHERE email = 'user3@example.com'").fetchone()
    assert state == "sent" and in_doubt == 1  # sent again, and marked as a possible duplicate
    assert ledger(db) == {"sent": 6}


async def test_a_stop_while_the_relay_holds_its_greeting_leaves_nobody_in_doubt(
    tmp_path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    """The relay accepts the connection and says nothing. The row the connection was given was
    marked `sending` when its job started, so the stop cut off "1 message in flight" and left it
    in doubt, though the server never had it: a row is marked only once its envelope is taken."""
    import sqlite3

    monkeypatch.setattr("mailtower.core.sender.STOP_GRACE", 0.5)
    db = await prepared_db(tmp_path, recipients(3))
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # held open, never greeted

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sender = Sender(settings(db, port, connections=1, smtp_timeout=60))
        task = await started(sender)
        await wait_for(until(lambda: bool(accepted)), 20)
        # Long enough for the feeder's next write (FLUSH_INTERVAL), which wrote the early mark.
        assert await holds_for(lambda: not task.done(), 0.6)
        await stopped(sender, task)
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
    with sqlite3.connect(db) as conn:
        states = dict(conn.execute("SELECT state, COUNT(*) FROM recipients GROUP BY state").fetchall())
        (mailing_doubt,) = conn.execute("SELECT in_doubt FROM mailings").fetchone()
        flagged = conn.execute("SELECT COUNT(*) FROM recipients WHERE in_doubt <> 0").fetchone()[0]
    assert states == {"pending": 3} and mailing_doubt == 0 and flagged == 0


@pytest.mark.parametrize("replies, words", [
    ([b"421 4.3.2 Service busy, try again later\r\n"], "the server turned us away for now: 421"),
    ([b"220 relay ready\r\n", b"454 4.7.0 TLS not available\r\n"], "the server turned us away for now: 454"),
    # a line longer than any reply: aiosmtplib's code -1 is no reply of the server's
    ([b"220 relay ready\r\n", b"250-" + b"x" * 70_000 + b"\r\n"], "the server broke off the session: "),
    (None, "cannot reach the server: "),  # nobody listening
    # accepted, then closed before any greeting (a connection limit, a blocklist): it was reached
    ([], "the server broke off the session: connection lost while connecting: "),
    ([b"220 relay ready\r\n"], "the server broke off the session: connection lost at EHLO: "),  # closed at EHLO
    # not SMTP at all (another service on the port): it was said to be lost at EHLO, never sent
    ([b"SSH-2.0-OpenSSH_9.2\r\n"], "the server broke off the session: connection lost while connecting: "),
], ids=["busy greeting", "EHLO refused", "overlong reply", "closed port", "hung up before greeting",
        "hung up after greeting", "greeting not SMTP"])
async def test_a_relay_that_answers_no_is_not_said_to_be_unreachable(
    tmp_path, replies: list[bytes] | None, words: str  # type: ignore[no-untyped-def]
) -> None:
    """A relay's busy greeting (421) was worded "cannot reach the server", which sends an operator
    to the network and the firewall; the server was reached and said no for now. A reply too long
    to read showed aiosmtplib's own code: "-1 Response too long"."""
    from mailtower.core.sink import free_port

    db = await prepared_db(tmp_path, recipients(3))

    async def scripted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert replies is not None
        for number, reply in enumerate(replies):
            if number:
                await reader.readline()  # the client's command
            writer.write(reply)
            await writer.drain()
        if replies:
            await reader.readline()
        writer.close()

    server = await asyncio.start_server(scripted, "127.0.0.1", 0) if replies is not None else None
    port = server.sockets[0].getsockname()[1] if server is not None else free_port()
    try:
        sender = Sender(settings(db, port, connections=1))
        task = await started(sender)
        await wait_for(until(lambda: bool(sender.relays[0].reason)), 20)
        reason = sender.relays[0].reason
        await stopped(sender, task)
    finally:
        if server is not None:
            server.close()
            await server.wait_closed()
    assert reason.startswith(words) and "-1" not in reason, reason
    if replies == []:
        assert "took the connection and hung up before its greeting" in reason, reason
    elif replies == [b"220 relay ready\r\n"]:
        assert "hung up after its greeting" in reason, reason
    elif replies == [b"SSH-2.0-OpenSSH_9.2\r\n"]:
        assert "took the connection and sent a greeting that is not an SMTP reply: " in reason, reason
    assert ledger(db) == {"pending": 3}


@pytest.mark.parametrize("case", ["no greeting", "no answer to EHLO", "hung up during implicit TLS", "closed port, TLS"])
async def test_a_relay_that_took_the_connection_is_not_said_to_be_unreachable(tmp_path, case: str) -> None:  # type: ignore[no-untyped-def]
    """A relay that takes the connection and then says nothing (postscreen's greeting delay, an
    overloaded server), or hangs up during implicit TLS (port 465), was worded "cannot reach the
    server", like a closed port."""
    from mailtower.core.sink import free_port

    db = await prepared_db(tmp_path, recipients(2))
    held: list[asyncio.StreamWriter] = []

    async def scripted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if case == "no answer to EHLO":
            writer.write(b"220 relay ready\r\n")
            await writer.drain()
        if case == "hung up during implicit TLS":
            writer.close()  # the client's TLS hello gets no answer but the end of the connection
            return
        held.append(writer)  # kept open, silent

    server = await asyncio.start_server(scripted, "127.0.0.1", 0) if case != "closed port, TLS" else None
    port = server.sockets[0].getsockname()[1] if server is not None else free_port()
    tls = {"smtp_tls": "tls", "smtp_allow_plain": False} if "TLS" in case else {}
    try:
        sender = Sender(settings(db, port, connections=1, smtp_timeout=1, **tls))
        task = await started(sender)
        await wait_for(until(lambda: bool(sender.relays[0].reason)), 20)
        reason = sender.relays[0].reason
        await stopped(sender, task)
    finally:
        for writer in held:
            writer.close()
        if server is not None:
            server.close()
            await server.wait_closed()
    expected = {
        "no greeting": ("the server took the connection but did not answer in time: ", "sent no greeting within 1 s"),
        "no answer to EHLO": ("the server took the connection but did not answer in time: ", "timed out after its greeting"),
        "hung up during implicit TLS": ("the server broke off the session: ", "took the connection and hung up during TLS"),
        "closed port, TLS": ("cannot reach the server: ", ""),
    }[case]
    assert reason.startswith(expected[0]) and expected[1] in reason, reason
    assert ledger(db) == {"pending": 2}


@pytest.mark.parametrize("case", ["STARTTLS, untrusted certificate", "implicit TLS, untrusted certificate",
                                  "implicit TLS to a plain port", "STARTTLS not offered"])
async def test_a_failed_tls_handshake_is_said_to_be_tls_not_the_network(tmp_path, case: str) -> None:  # type: ignore[no-untyped-def]
    """A certificate the sender does not trust, or TLS spoken to a plain SMTP port, was worded
    "cannot reach the server", which sends an operator to the network; the header names TLS."""
    import ssl

    import trustme

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)  # a CA nobody was told to trust
    db = await prepared_db(tmp_path, recipients(2))
    plain = "plain port" in case or "not offered" in case
    sink_options = {} if plain else {"tls_context": context, "implicit_tls": case.startswith("implicit")}
    tls = {"smtp_tls": "tls" if case.startswith("implicit") else "starttls", "smtp_allow_plain": False}
    with Sink(**sink_options) as sink:  # type: ignore[arg-type]
        sender = Sender(settings(db, sink.port, connections=1, smtp_timeout=5, **tls))
        task = await started(sender)
        await wait_for(until(lambda: bool(sender.relays[0].reason)), 20)
        reason = sender.relays[0].reason
        await stopped(sender, task)
        assert sink.deliveries == []
    # OpenSSL before 3.2 says WRONG_VERSION_NUMBER to TLS spoken to a plain port, later ones
    # RECORD_LAYER_FAILURE: either is the handshake's own word.
    expected = {"STARTTLS not offered": ("the server does not offer STARTTLS",),
                "implicit TLS to a plain port": ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE")}.get(
        case, ("CERTIFICATE_VERIFY_FAILED",))
    assert reason.startswith("TLS with the server failed: ") and f"TLS failed with 127.0.0.1" in reason, reason
    assert any(word in reason for word in expected), reason
    assert ledger(db) == {"pending": 2}


async def test_a_relay_that_hangs_up_after_every_final_dot_is_not_hammered(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A relay that takes each message and drops the session before its reply: each recipient
    may have it already. Sent again at once, every dot was a new connection and a possible
    duplicate, hundreds a second for as long as the run lasted. Now the recipient waits for a
    retry (in doubt) and the relay rests, both with a growing backoff."""
    import sqlite3
    import time

    db = await prepared_db(tmp_path, recipients(2))
    connections: list[float] = []
    dots: list[float] = []

    server = await asyncio.start_server(
        timed_relay(pipelining=False, hang_up_after_dot=True, connections=connections, dots=dots), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sender = Sender(settings(db, port, connections=2, retry_base=0.5, retry_max=4, connect_backoff_max=4))
        task = await started(sender)
        start = time.monotonic()
        await wait_for(until(lambda: len(dots) >= 2), 20)
        await holds_for(lambda: True, 3.0)  # watch what follows for 3 s
        seen_dots, seen_connections = len(dots), len(connections)
        # The reason is cleared while a new connection opens, until its dot is dropped again.
        broke_off = "the server broke off the session: connection lost after the final dot"
        await wait_for(until(lambda: sender.relays[0].reason.startswith(broke_off)), 20)
        await stopped(sender, task)
    finally:
        server.close()
        await server.wait_closed()
    # Each recipient once, then again after 0.5 s, 1 s, 2 s (and the relay's rest) at most.
    assert seen_dots <= 8 and seen_connections <= 10, (seen_dots, seen_connections, time.monotonic() - start)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT state, in_doubt, attempts >= 1 FROM recipients").fetchall()
        (flagged,) = conn.execute("SELECT in_doubt FROM mailings").fetchone()
    assert all(r[1:] == (1, 1) for r in rows), rows
    assert flagged == 2


def pipelining_relay(rcpt_reply: bytes, mail_reply: bytes = b"250 2.1.0 ok\r\n", *, close: bool = True):  # type: ignore[no-untyped-def]
    """A relay offering PIPELINING that answers MAIL and RCPT as given and, after a refusal,
    hangs up at once (close=True), as Gmail, Yahoo and Postfix do after a 421 or 554."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 relay ready\r\n")
        try:
            while line := await reader.readline():
                command = line[:4].upper()
                reply = {b"EHLO": b"250-relay\r\n250 PIPELINING\r\n", b"MAIL": mail_reply, b"RCPT": rcpt_reply,
                         b"DATA": b"554 5.5.1 no valid recipients\r\n", b"RSET": b"250 ok\r\n"}.get(command, b"250 ok\r\n")
                writer.write(reply)
                await writer.drain()
                if close and command in (b"MAIL", b"RCPT") and not reply.startswith(b"2"):
                    break
        finally:
            writer.close()

    return serve


@pytest.mark.parametrize(("mail", "rcpt", "expected"), [
    (b"250 ok\r\n", b"421 4.7.0 relay.test Service not available, closing transmission channel\r\n", "throttled"),
    (b"250 ok\r\n", b"421-4.7.28 Our system has detected an unusual rate of\r\n421 4.7.28 mail. Try later.\r\n", "throttled"),
    (b"554 5.7.1 Service unavailable; client host blocked using zen.spamhaus.org\r\n", b"250 ok\r\n", "paused"),
    (b"250 ok\r\n", b"550 5.1.1 <user0@example.com>: Recipient address rejected: User unknown\r\n", "failed"),
], ids=["421 at RCPT", "Gmail 421-4.7.28", "554 blocklist at MAIL", "550 5.1.1 at RCPT"])
async def test_a_pipelined_refusal_before_the_server_hangs_up_is_heard(tmp_path, mail: bytes, rcpt: bytes,  # type: ignore[no-untyped-def]
                                                                       expected: str) -> None:
    """With PIPELINING, a refusal followed at once by the end of the connection was lost: the
    sender saw "connection lost at MAIL FROM" (even when MAIL was accepted), never throttled or
    paused, hammered the relay with new connections, and never failed an unknown mailbox."""
    import sqlite3

    db = await prepared_db(tmp_path, recipients(1))
    server = await asyncio.start_server(pipelining_relay(rcpt, mail), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sender = Sender(settings(db, port, connections=1))
        task = await started(sender)
        relay = sender.relays[0]
        if expected == "failed":
            await wait_for(until(lambda: ledger(db) == {"failed": 1}), 20)
        else:
            await wait_for(until(lambda: bool(relay.throttle_reason if expected == "throttled" else relay.pause_reason)), 20)
        reason = relay.throttle_reason or relay.pause_reason or relay.reason
        await stopped(sender, task)
    finally:
        server.close()
        await server.wait_closed()
    said = (rcpt if b"250" in mail else mail).split(b"\r\n")[0][4:].decode()
    if expected == "failed":
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT COUNT(*) FROM suppression").fetchone() == (1,)
            assert "User unknown" in conn.execute("SELECT last_error FROM recipients").fetchone()[0]
    else:
        assert "connection lost" not in reason and said.split()[0] in reason, reason
        assert ledger(db) in ({"pending": 1}, {"deferred": 1})


async def test_each_pipelined_reply_has_its_own_timeout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """RFC 5321 4.5.3.2 times each command: a relay that takes 1 s over each of MAIL, RCPT and
    DATA (a recipient callout, a tarpit) never got mail with a 2 s timeout, which was spent on
    all three replies together; and the wait was blamed on MAIL FROM, which had been answered."""
    db = await prepared_db(tmp_path, recipients(2))

    server = await asyncio.start_server(timed_relay(command_delay=1.0), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sender = Sender(settings(db, port, connections=1, smtp_timeout=2))
        await asyncio.wait_for(sender.run(until_idle=True), 60)
    finally:
        server.close()
        await server.wait_closed()
    assert ledger(db) == {"sent": 2}


async def test_a_relay_slow_to_answer_the_dot_keeps_its_connection(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A relay that scans content answers each final dot after a second or more. The job sent
    ahead with the dot was given to another connection after 1 s, and this one dropped (the
    server saw each session end in the middle of DATA): a new connection, and a login, per
    message. Now a job waits as long as this relay usually takes."""
    db = await prepared_db(tmp_path, recipients(5))
    connections: list[float] = []

    server = await asyncio.start_server(timed_relay(dot_delay=1.3, connections=connections), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sender = Sender(settings(db, port, connections=1))
        await asyncio.wait_for(sender.run(until_idle=True), 60)
    finally:
        server.close()
        await server.wait_closed()
    assert ledger(db) == {"sent": 5}
    assert len(connections) <= 2, len(connections)  # the first dot's wait is not known yet


def timed_relay(*, pipelining: bool = True, command_delay: float = 0.0, dot_delay: float = 0.0,
                hang_up_after_dot: bool = False, connections: list[float] | None = None,
                dots: list[float] | None = None):  # type: ignore[no-untyped-def]
    """A relay that accepts everything, `command_delay` s late for each of MAIL, RCPT and DATA
    and `dot_delay` s late for each final dot, or hanging up after each dot instead of replying;
    it notes the time of each connection and each final dot."""
    import time

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if connections is not None:
            connections.append(time.monotonic())
        writer.write(b"220 relay ready\r\n")
        try:
            while line := await reader.readline():
                command = line[:4].upper()
                if command in (b"MAIL", b"RCPT", b"DATA"):
                    await asyncio.sleep(command_delay)
                if command == b"EHLO":
                    writer.write(b"250-relay\r\n250 PIPELINING\r\n" if pipelining else b"250-relay\r\n250 8BITMIME\r\n")
                elif command == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    while await reader.readline() not in (b".\r\n", b""):
                        pass
                    if dots is not None:
                        dots.append(time.monotonic())
                    if hang_up_after_dot:
                        break  # the message is in; the session ends before the reply
                    await asyncio.sleep(dot_delay)  # a content scan
                    writer.write(b"250 2.0.0 queued\r\n")
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        finally:
            writer.close()

    return serve


async def test_recipients_in_doubt_do_not_trip_the_breaker(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A recipient in doubt a second time waits for a retry (deferred, still in doubt); the
    breaker counted that as its domain deferring and stopped the mailing, blaming example.com
    for a relay that drops the session after each dot (and a restart's window did not)."""
    import sqlite3

    db = await prepared_db(tmp_path, recipients(8))
    dots: list[float] = []
    server = await asyncio.start_server(timed_relay(pipelining=False, hang_up_after_dot=True, dots=dots), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sender = Sender(settings(db, port, connections=4, breaker_min=3, breaker_soft=50, retry_base=0.5, retry_max=4,
                                 connect_backoff_max=1))
        task = await started(sender)

        def twice_in_doubt() -> bool:
            with sqlite3.connect(db) as conn:
                return conn.execute("SELECT COUNT(*) FROM recipients WHERE state = 'deferred' AND in_doubt = 1").fetchone()[0] >= 4

        await wait_for(until(twice_in_doubt), 30)
        await stopped(sender, task)
    finally:
        server.close()
        await server.wait_closed()
    with sqlite3.connect(db) as conn:
        state, = conn.execute("SELECT state FROM mailings").fetchone()
        stops = conn.execute("SELECT COUNT(*) FROM events WHERE kind = 'stopped'").fetchone()[0]
    assert state in ("sending", "queued") and stops == 0, (state, stops)


async def test_a_recipient_given_up_while_in_doubt_is_no_answer_of_its_domain(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A recipient still in doubt when its retries run out is failed, and it may have been
    delivered. That failure was fed to the breaker as its domain's (example.com, for a relay that
    drops every session after the dot) and taken as the server answering, which ended the wait
    and wrote a "resumed" with no reply heard."""
    import sqlite3

    db = await prepared_db(tmp_path, recipients(4))
    server = await asyncio.start_server(timed_relay(pipelining=False, hang_up_after_dot=True), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sender = Sender(settings(db, port, connections=2, breaker_min=2, breaker_hard=10, retry_base=0.3, retry_max=0.6,
                                 connect_backoff_max=0.5, retry_max_age=2))
        task = await started(sender)
        await wait_for(until(lambda: ledger(db) == {"failed": 4} or "stopped" in dict(events(db))), 30)
        await stopped(sender, task)
    finally:
        server.close()
        await server.wait_closed()
    kinds = [kind for kind, _ in events(db)]
    assert "stopped" not in kinds and kinds[-1] == "completed", kinds
    # A turn taken again after a pause for retries is "resumed"; a wait that ended is not: nothing was answered.
    assert all(kinds[i - 1] == "paused" for i, kind in enumerate(kinds) if kind == "resumed"), kinds
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT in_doubt, last_error FROM recipients").fetchall()
        open_doubts, = conn.execute("SELECT in_doubt FROM mailings").fetchone()
    assert all(flag == 1 and error.endswith("(it may have been delivered)") for flag, error in rows), rows
    assert open_doubts == 0  # resolved (failed) though still flagged
