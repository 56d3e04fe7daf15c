"""The SMTP client against a scripted server on 127.0.0.1 that controls exactly which bytes
arrive when: pipelined replies in one packet or split mid-line, multi-line replies, a server
that takes DATA after refusing the recipient, and a server that stops speaking SMTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from mailtower.core.smtp_client import Relay, SmtpConnection
from mailtower.core.smtp_replies import Outcome
from tests.helpers import wait_for

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
TIMEOUT = 10.0


async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, pipelining: bool = True) -> None:
    writer.write(b"220 scripted ESMTP\r\n")
    line = await reader.readline()
    assert line.upper().startswith(b"EHLO"), line
    extensions = b"250-PIPELINING\r\n" if pipelining else b""
    writer.write(b"250-scripted\r\n" + extensions + b"250 8BITMIME\r\n")
    await writer.drain()


async def read_lines(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    return [await asyncio.wait_for(reader.readline(), TIMEOUT) for _ in range(count)]


async def read_body(reader: asyncio.StreamReader) -> bytes:
    body = await asyncio.wait_for(reader.readuntil(b"\r\n.\r\n"), TIMEOUT)
    return body[: -len(b".\r\n")]


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[tuple[SmtpConnection, list[BaseException]]]:
    errors: list[BaseException] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            errors.append(exc)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    conn = SmtpConnection(Relay("127.0.0.1", port, "none", timeout=TIMEOUT, data_timeout=TIMEOUT))
    try:
        await asyncio.wait_for(conn.connect(), TIMEOUT)
        yield conn, errors
    finally:
        conn.abort()
        server.close()
        await server.wait_closed()


async def test_pipelined_replies_in_one_packet_split_mid_line() -> None:
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        # All three commands arrive before any reply is sent: a client that waited for the
        # MAIL reply before writing RCPT would stall here and the read would time out.
        seen.extend(await read_lines(reader, 3))
        replies = b"250-sender\r\n250 ok\r\n250 2.1.5 recipient ok\r\n354 go ahead\r\n"
        writer.write(replies[:27])  # ends in the middle of the RCPT reply
        await writer.drain()
        writer.write(replies[27:])
        seen.append(await read_body(reader))
        writer.write(b"250 2.0.0 queued as 1\r\n")
        await writer.drain()

    async with scripted(script) as (conn, errors):
        assert conn.pipelining
        verdict = await asyncio.wait_for(conn.send("a@example.org", "b@example.org", b"Subject: x\r\n\r\n.dot\r\n"), TIMEOUT)
    assert not errors, errors
    assert verdict.outcome is Outcome.SENT and verdict.code == 250
    assert seen[:3] == [b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<b@example.org>\r\n", b"DATA\r\n"]
    assert seen[3] == b"Subject: x\r\n\r\n..dot\r\n"  # dot-stuffed (RFC 5321 4.5.2)


async def test_data_taken_after_a_refused_recipient_is_ended_and_reset() -> None:
    """RFC 2920 lets a server answer 354 to DATA even though it refused every recipient: the
    client ends that empty data phase and resets, and the connection goes on being usable."""
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        seen.extend(await read_lines(reader, 3))
        writer.write(b"250 ok\r\n550 5.1.1 no such user\r\n354 go ahead\r\n")
        seen.extend(await read_lines(reader, 1))
        writer.write(b"554 5.5.1 no valid recipients\r\n")
        seen.extend(await read_lines(reader, 1))
        writer.write(b"250 2.0.0 reset\r\n")
        seen.extend(await read_lines(reader, 3))
        writer.write(b"250 ok\r\n250 ok\r\n354 go ahead\r\n")
        await read_body(reader)
        writer.write(b"250 2.0.0 queued\r\n")
        await writer.drain()

    async with scripted(script) as (conn, errors):
        refused = await asyncio.wait_for(conn.send("a@example.org", "nobody@example.org", b"x\r\n"), TIMEOUT)
        assert conn.connected
        sent = await asyncio.wait_for(conn.send("a@example.org", "b@example.org", b"x\r\n"), TIMEOUT)
    assert not errors, errors
    assert refused.outcome is Outcome.FAIL and refused.code == 550 and "no such user" in refused.text
    assert seen[3:5] == [b".\r\n", b"RSET\r\n"]
    assert sent.outcome is Outcome.SENT


async def test_one_command_at_a_time_without_pipelining() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, pipelining=False)
        for expected, reply in ((b"MAIL", b"250 ok\r\n"), (b"RCPT", b"250 ok\r\n"), (b"DATA", b"354 go\r\n")):
            (line,) = await read_lines(reader, 1)
            assert line.startswith(expected), line
            # Nothing more may arrive before this command is answered.
            assert not reader._buffer, bytes(reader._buffer)  # noqa: SLF001
            writer.write(reply)
            await writer.drain()
        await read_body(reader)
        writer.write(b"250 queued\r\n")
        await writer.drain()

    async with scripted(script) as (conn, errors):
        assert not conn.pipelining
        verdict = await asyncio.wait_for(conn.send("a@example.org", "b@example.org", b"x\r\n"), TIMEOUT)
    assert not errors, errors
    assert verdict.outcome is Outcome.SENT


async def test_a_line_that_is_not_smtp_drops_the_connection_before_the_dot() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        await read_lines(reader, 3)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n")
        await writer.drain()
        await asyncio.wait_for(reader.read(), TIMEOUT)  # until the client hangs up

    async with scripted(script) as (conn, errors):
        verdict = await asyncio.wait_for(conn.send("a@example.org", "b@example.org", b"x\r\n"), TIMEOUT)
        assert not conn.connected
    assert not errors, errors
    assert verdict.outcome is Outcome.RECONNECT and not verdict.in_doubt
    assert "not an SMTP reply" in verdict.text


async def test_a_dot_reply_whose_code_runs_on_is_not_an_acceptance() -> None:
    """`2500 Ok queued` was read as 250 and the recipient marked sent: three digits must be
    followed by a space, a hyphen or the end of the line (RFC 5321 4.2). After the dot it
    says nothing certain: in doubt."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        await read_lines(reader, 3)
        writer.write(b"250 ok\r\n250 ok\r\n354 go ahead\r\n")
        await writer.drain()
        await read_body(reader)
        writer.write(b"2500 Ok queued\r\n")
        await writer.drain()
        await asyncio.wait_for(reader.read(), TIMEOUT)  # until the client hangs up

    async with scripted(script) as (conn, errors):
        verdict = await asyncio.wait_for(conn.send("a@example.org", "b@example.org", b"x\r\n"), TIMEOUT)
    assert not errors, errors
    assert verdict.outcome is not Outcome.SENT and verdict.in_doubt, verdict
    assert "not an SMTP reply" in verdict.text


async def test_a_refusal_is_kept_when_the_server_hangs_up_in_the_empty_data_phase() -> None:
    """A relay that refuses the recipient, takes DATA all the same (354) and hangs up after the
    empty message that ends it: the refusal was lost ("connection lost at MAIL FROM")."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        await read_lines(reader, 3)
        writer.write(b"250 ok\r\n550 5.1.1 <b@example.org>: User unknown\r\n354 go ahead\r\n")
        await writer.drain()
        await reader.readline()  # the lone dot
        writer.close()

    async with scripted(script) as (conn, errors):
        verdict = await asyncio.wait_for(conn.send("a@example.org", "b@example.org", b"x\r\n"), TIMEOUT)
    assert not errors, errors
    assert verdict.outcome is Outcome.FAIL and verdict.code == 550 and "User unknown" in verdict.text, verdict


async def test_hang_up_after_the_dot_leaves_the_message_in_doubt() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        await read_lines(reader, 3)
        writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
        await read_body(reader)
        writer.transport.abort()

    async with scripted(script) as (conn, errors):
        verdict = await asyncio.wait_for(conn.send("a@example.org", "b@example.org", b"x\r\n"), TIMEOUT)
    assert not errors, errors
    assert verdict.outcome is Outcome.RECONNECT and verdict.in_doubt


async def test_quit_is_answered_and_the_connection_closed() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        (line,) = await read_lines(reader, 1)
        assert line == b"QUIT\r\n"
        writer.write(b"221 bye\r\n")
        await writer.drain()

    async with scripted(script) as (conn, errors):
        await asyncio.wait_for(conn.close(), TIMEOUT)
        assert not conn.connected
    assert not errors, errors


async def test_a_reply_nobody_asked_for_retires_the_connection() -> None:
    """An unsolicited reply would be paired with the next command; the connection is dropped
    instead, before anything of the next transaction is written."""
    after_first: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        await read_lines(reader, 3)
        writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
        await read_body(reader)
        writer.write(b"250 queued\r\n421 4.4.2 idle too long\r\n")
        await writer.drain()
        after_first.append(await asyncio.wait_for(reader.read(), TIMEOUT))  # until the client hangs up

    async with scripted(script) as (conn, errors):
        first = await asyncio.wait_for(conn.send("a@example.org", "b@example.org", b"x\r\n"), TIMEOUT)
        async def retired() -> bool:
            return not conn.connected

        async def server_saw_the_hang_up() -> bool:
            return bool(after_first or errors)

        await wait_for(retired, timeout=TIMEOUT)
        second = await asyncio.wait_for(conn.send("a@example.org", "c@example.org", b"x\r\n"), TIMEOUT)
        conn.abort()
        await wait_for(server_saw_the_hang_up, timeout=TIMEOUT)
    assert first.outcome is Outcome.SENT
    assert second.outcome is Outcome.RECONNECT and not second.in_doubt
    assert not errors, errors
    assert after_first == [b""]  # nothing of the second transaction reached the server
