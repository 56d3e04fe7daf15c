"""One persistent SMTP connection (aiosmtplib) that sends one message per transaction and
reports what happened as a `Verdict`, knowing exactly which stage a failure happened at.

Knowing the stage matters: a connection that breaks before the final dot leaves nobody in
doubt, one that breaks after it leaves that transaction's recipient in doubt.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import os
import re
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import aiosmtplib
from aiosmtplib.errors import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPConnectResponseError,
    SMTPException,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from .compose import ascii_domain
from .config import Settings
from .smtp_replies import REACHED, TLS_FAILED, Outcome, Stage, Verdict, classify, classify_auth, classify_failure

# A body larger than this is written before the wait for the ledger (see send): sending it
# overlaps the commit; a small one goes in the same write as its final dot.
_EARLY_BODY = 32768

# RFC 5321 4.5.2: a line starting with a period gets one more.
_LEADING_DOT = re.compile(rb"(?m)^\.")


class ConnectFailed(Exception):
    """The server could not be reached or refused us before any transaction (nobody touched).

    `at_login` is true when the failure was the reply to (or the end of the connection during)
    our one AUTH attempt: the sender then knows a login was tried and refused."""

    def __init__(self, verdict: Verdict, at_login: bool = False) -> None:
        super().__init__(verdict.text)
        self.verdict = verdict
        self.at_login = at_login


# The one mechanism tried per connection, in order of preference among those the server offers.
# aiosmtplib's login() tries every mechanism in turn, so one refused password became two or three
# failed logins per connection; real relays (Postfix + anvil, fail2ban) lock accounts for that.
# PLAIN first: it is one round trip and we only ever log in over TLS.
LOGIN_MECHANISMS = ("plain", "login", "cram-md5")


@dataclass(frozen=True, slots=True)
class Relay:
    """Where and how to connect. Credentials never appear in repr or errors."""

    host: str
    port: int
    tls: str  # none | starttls | tls
    user: str = ""
    password: str = ""
    verify: bool = True
    ca_file: str = ""
    timeout: float = 60.0
    data_timeout: float = 300.0
    helo_name: str = ""

    def __repr__(self) -> str:
        return f"Relay({self.host}:{self.port}, tls={self.tls})"

    @classmethod
    def from_settings(cls, s: Settings) -> "Relay":
        return cls(
            host=s.smtp_host,
            port=s.smtp_port,
            tls=s.smtp_tls,
            user=s.smtp_user,
            password=s.smtp_password,
            verify=s.smtp_verify,
            ca_file=s.smtp_ca_file,
            timeout=s.smtp_timeout,
            data_timeout=s.smtp_data_timeout,
            helo_name=s.helo_name,
        )


def _scrub(text: str, relay: Relay) -> str:
    """Keep the password out of anything shown or stored: in clear and in every base64 form
    SASL sends it (the PLAIN blob, LOGIN's encoded user name and password). Line breaks are
    kept, each line's spaces made one: smtp_replies.one_line drops the enhanced code each line of
    a multi-line reply repeats, and makes it one line."""
    lines = "\n".join(" ".join(line.split()) for line in text.splitlines())
    return scrub_secrets(lines, relay.user, relay.password)[:_SCRUBBED_MAX]


# More than one_line keeps (smtp_replies.MAX_TEXT): room for the codes it removes.
_SCRUBBED_MAX = 2000


def scrub_secrets(text: str, user: str, password: str) -> str:
    """`text` with the password and the base64 forms of the credentials replaced by ********."""
    for secret in _secret_forms(user, password):
        if secret in text:
            text = text.replace(secret, "********")
    return text


@functools.lru_cache(maxsize=16)
def _secret_forms(user: str, password: str) -> tuple[str, ...]:
    """The password and what SASL makes of it, longest first (a blob contains shorter forms).

    Base64 of the password on its own is written at each of the three alignments it can take
    inside a longer blob, without the characters that depend on its neighbours."""
    if not password:
        return ()
    raw_user, raw_password = user.encode(), password.encode()
    forms = {password}
    for blob in (b"\0" + raw_user + b"\0" + raw_password, raw_user + b"\0" + raw_user + b"\0" + raw_password):
        forms.add(base64.b64encode(blob).decode().rstrip("="))
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + raw_password).decode().rstrip("=")
        # Drop the characters mixed with the padding bytes and the (unknown) byte after.
        inner = encoded[(pad * 4 + 2) // 3 :][:-1] if len(encoded) > 4 else ""
        if len(inner) >= 8:
            forms.add(inner)
    forms.add(base64.b64encode(raw_password).decode().rstrip("="))
    if raw_user:
        forms.add(base64.b64encode(raw_user).decode().rstrip("="))
    # A short base64 form (of a short user name, say) would blank unrelated text: the literal
    # password is always scrubbed, encoded forms only from 8 characters on.
    return tuple(sorted((f for f in forms if f == password or len(f) >= 8), key=len, reverse=True))


# A reply line longer than this (RFC 5321 4.5.3.1.5 allows 512 octets) means the peer is not
# speaking SMTP; stop buffering rather than grow without bound.
_MAX_REPLY_LINE = 65536
# More lines in one reply than any server's EHLO has, or more replies waiting unread than a
# pipelined group can have (the dot's reply and the next MAIL, RCPT, DATA): the peer is not
# answering us, it is talking; stop buffering (memory) and drop the connection (nobody is
# delivered to by a connection we stop talking on before a dot).
_MAX_REPLY_LINES = 1000
_MAX_UNREAD_REPLIES = 64


class _ReplyReader(asyncio.Protocol):
    """Owns the reading side of a connection once the handshake is done: it parses every reply
    the server sends, in order, and hands them out as they are asked for.

    aiosmtplib keeps reply bytes only while it waits for exactly one reply, so replies to
    pipelined commands (RFC 2920) would be lost with it; this reader keeps them all.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._lines: list[tuple[bytes, str]] = []  # continuation lines (code, text) of the reply being read
        self._ready: deque[tuple[int, str]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._wanted = 0
        self._error: SMTPException | None = None
        self._paused = False
        self._drained: asyncio.Future[None] | None = None

    @property
    def usable(self) -> bool:
        return self.usable_owing(0)

    def usable_owing(self, owed: int) -> bool:
        """Up, and holding no more replies than the `owed` ones to commands already written.

        A reply nobody asked for (a 421 before an idle disconnect, say) would be paired with
        the next command, so a connection holding one is not used again."""
        return self.open and len(self._ready) <= owed

    @property
    def open(self) -> bool:
        """The session is up (replies to a transaction in flight may be waiting to be read)."""
        return self._error is None and not self.transport.is_closing()

    # ---- asyncio.Protocol ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if not self._buffer and self._error is None and data.endswith(b"\r\n") and data.count(b"\n") == 1:
            # The common case (issue 12): one whole single-line reply, "250 2.0.0 Ok: queued".
            code = data[:3]
            if data[3:4] == b" " and code.isdigit() and not self._lines:
                self._ready.append((int(code), data[4:-2].decode("utf-8", "replace")))
                self._check_unread()
                self._wake()
                return
        buffer = self._buffer
        buffer += data
        start = 0
        while self._error is None and (end := buffer.find(b"\n", start)) >= 0:
            self._line(bytes(buffer[start:end]).rstrip(b"\r"))
            start = end + 1
        del buffer[:start]
        if self._error is None and len(buffer) > _MAX_REPLY_LINE:
            self._fail(SMTPServerDisconnected("the server sent a reply line too long to be SMTP"))
            self.transport.abort()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        error = SMTPServerDisconnected("connection lost")
        error.__cause__ = exc
        self._fail(error)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # ---- used by SmtpConnection ------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark."""
        while self._paused and self._error is None:
            self._drained = self._loop.create_future()
            await self._drained
        if self._error is not None:
            raise self._error

    async def replies(self, count: int, timeout: float) -> list[tuple[int, str]]:
        """The next `count` replies, in order; raises if the connection fails or goes quiet."""
        if len(self._ready) < count:
            if self._error is not None:
                raise self._error
            self._wanted = count
            self._waiter = waiter = self._loop.create_future()
            timer = self._loop.call_later(timeout, self._time_out, waiter, timeout)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        ready = self._ready
        return [ready.popleft() for _ in range(count)]

    # ---- internals -------------------------------------------------------------------------

    def _line(self, line: bytes) -> None:
        code = line[:3]
        # RFC 5321 4.2: three digits, then a space, a hyphen or the end of the line ("2500 Ok"
        # is not 250).
        if len(code) != 3 or not code.isdigit() or line[3:4] not in (b" ", b"-", b""):
            self._fail(SMTPServerDisconnected(f"the server sent a line that is not an SMTP reply: {line[:80]!r}"))
            self.transport.abort()
            return
        text = line[4:].decode("utf-8", "replace")
        if line[3:4] == b"-":
            self._lines.append((code, text))
            if len(self._lines) > _MAX_REPLY_LINES:
                self._give_up(f"the server sent a reply of more than {_MAX_REPLY_LINES} lines")
            return
        value = int(code)
        if self._lines:
            lines, self._lines = [*self._lines, (code, text)], []
            text = "\n".join(t for _, t in lines)
            first = lines[0][0]
            if any(c != first for c, _ in lines):
                # RFC 5321 4.2.1: every line of a reply has the same code. One that says 250 and
                # then 451 does not say what happened; code 0 is judged as nonsense (after the
                # final dot: in doubt, so a resend is flagged, never a silent duplicate).
                text = f"a reply whose lines disagree ({first.decode()} then {code.decode()}): {text}"
                value = 0
        self._ready.append((value, text))
        self._check_unread()

    def _check_unread(self) -> None:
        if len(self._ready) > _MAX_UNREAD_REPLIES:
            self._give_up(f"the server sent more than {_MAX_UNREAD_REPLIES} replies nobody asked for")

    def _give_up(self, why: str) -> None:
        """The peer is not answering our commands: no more buffering, the connection goes."""
        self._lines = []
        self._wake()  # a reply asked for that came before the flood is still the answer
        self._fail(SMTPServerDisconnected(why))
        self.transport.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and len(self._ready) >= self._wanted and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: SMTPException) -> None:
        if self._error is None:
            self._error = error
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(self._error)

    def _time_out(self, waiter: asyncio.Future[None], timeout: float) -> None:
        if not waiter.done():
            waiter.set_exception(SMTPTimeoutError(f"no reply from the server within {timeout:g} s"))


class SmtpConnection:
    """aiosmtplib connects, says EHLO, starts TLS and logs in; then a `_ReplyReader` takes over
    the transport and transactions are written by hand: MAIL, RCPT and DATA in one write when
    the server offers PIPELINING (RFC 2920), one at a time when it does not."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self._reader: _ReplyReader | None = None
        self.pipelining = False
        self.smtputf8 = False  # the server offers SMTPUTF8 (RFC 6531)
        self.sent_on_connection = 0
        self.dot_wait = 0.0  # seconds the last final dot waited for its reply
        self.extra_backoff = 0.0  # growing wait after "too many connections" while others work
        self.held_until = 0.0  # monotonic: this connection does not try to connect before then
        # MAIL+RCPT+DATA written with the previous final dot whose three replies are still to
        # be read: the next send() must be for exactly this envelope (see send's `then`).
        self._presented: tuple[bytes, bytes] | None = None

    def held_off(self, limit: float) -> float:
        """This connection was refused as one too many: it waits before trying again (1 s
        doubling up to `limit`; reset by a successful connect). Returns the wait."""
        self.extra_backoff = min(max(self.extra_backoff * 2, 1.0), limit)
        self.held_until = time.monotonic() + self.extra_backoff
        return self.extra_backoff

    @property
    def connected(self) -> bool:
        return self._reader is not None and self._reader.usable_owing(3 if self._presented else 0)

    @property
    def presented(self) -> bool:
        """The next message's envelope went out with the last final dot (its replies unread)."""
        return self._presented is not None and self.session_open

    def withdraw(self) -> None:
        """The envelope sent ahead will not be followed by its message: the server is in (or
        about to enter) its data phase, which only a dot ends, and a dot would deliver an empty
        message. Dropping the connection ends it with nothing delivered."""
        if self._presented is not None:
            self.abort()

    @property
    def session_open(self) -> bool:
        """Up, even in the middle of a transaction (`connected` is False while its replies wait)."""
        return self._reader is not None and self._reader.open

    async def connect(self) -> None:
        self.abort()  # a previous connection that is no longer usable
        smtp = await self._handshake()
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check here.
        transport = cast(asyncio.Transport, smtp.transport)
        protocol = smtp.protocol
        if transport is None or protocol is None or protocol._buffer:  # noqa: SLF001
            # Nothing may be left unread from the handshake; if it is, the server is not
            # following the protocol and the connection cannot be trusted to pair replies.
            smtp.close()
            raise ConnectFailed(classify_failure("refused", Stage.HELO, "the server sent data nobody asked for"))
        reader = _ReplyReader(transport)
        transport.set_protocol(reader)
        self._presented = None
        self.pipelining = smtp.supports_extension("pipelining")
        self.smtputf8 = smtp.supports_extension("smtputf8")
        self.extra_backoff = 0.0
        self._reader = reader
        self.sent_on_connection = 0

    async def _handshake(self) -> aiosmtplib.SMTP:
        relay = self.relay
        if relay.user and relay.tls == "none":
            raise ConnectFailed(
                classify_failure("refused", Stage.AUTH, "refusing to log in over an unencrypted connection")
            )
        try:
            context = await client_tls_context(relay) if relay.tls != "none" else None
        except OSError as exc:  # ssl.SSLError is an OSError: an unreadable or broken CA file
            raise ConnectFailed(_handshake_verdict(exc, relay)) from None
        smtp = aiosmtplib.SMTP(
            hostname=relay.host,
            port=relay.port,
            timeout=relay.timeout,
            use_tls=relay.tls == "tls",
            start_tls=False,  # STARTTLS below, so that a failure says whether the greeting came
            validate_certs=relay.verify,
            tls_context=context,
            local_hostname=relay.helo_name or None,
        )
        greeted = False
        try:
            await smtp.connect()
            greeted = True
            if relay.tls == "starttls":
                await smtp.starttls()
            if smtp.last_ehlo_response is None:
                await smtp.ehlo()
        except (OSError, SMTPException) as exc:  # ssl.SSLError is an OSError
            smtp.close()
            raise ConnectFailed(_handshake_verdict(exc, relay, greeted)) from None
        except BaseException:
            smtp.close()
            raise
        if relay.user:
            await _login_once(smtp, relay)
        return smtp

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is None:
            return
        presented, self._presented = self._presented, None
        try:
            # With an envelope sent ahead the server may be reading message data: QUIT would be
            # data, so the connection is just closed (the server discards the transaction).
            if reader.usable and presented is None:
                reader.write(b"QUIT\r\n")
                await reader.replies(1, timeout=2)
        except (SMTPException, OSError):
            pass
        finally:
            reader.transport.close()

    def abort(self) -> None:
        self._presented = None
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.transport.abort()

    def envelope(self, from_addr: str, to_addr: str) -> tuple[bytes, bytes] | Verdict:
        """MAIL FROM and RCPT TO as written for this server, or why they cannot be.

        Domains go as A-labels (IDNA), which every server takes; a non-ASCII local part needs
        SMTPUTF8 (RFC 6531): with it, the MAIL command carries the SMTPUTF8 parameter; without it
        the address cannot be sent (the sender's: pause; a recipient's: that recipient fails)."""
        sender = envelope_address(from_addr, self.smtputf8)
        if isinstance(sender, str):
            return classify_failure("unsendable", Stage.MAIL, f"sender address {from_addr}: {sender}")
        recipient = envelope_address(to_addr, self.smtputf8)
        if isinstance(recipient, str):
            return classify_failure("unsendable", Stage.RCPT, recipient)
        mail = b"MAIL FROM:<" + sender + b">"
        if not (sender.isascii() and recipient.isascii()):
            mail += b" SMTPUTF8"
        return mail + b"\r\n", b"RCPT TO:<" + recipient + b">\r\n"

    async def send(
        self,
        from_addr: str,
        to_addr: str,
        message: bytes,
        before_dot: Awaitable[object] | None = None,
        then: Callable[[], str | None] | None = None,
    ) -> Verdict:
        """One transaction: MAIL, RCPT, DATA, payload. Never raises for SMTP trouble.

        `before_dot` is awaited before the message body and final dot are written: the sender
        passes "this row's `sending` mark and the previous outcome of this connection are on
        disk", so at most one message per connection is ever past its dot without its outcome
        recorded. (A body larger than _EARLY_BODY goes out before the wait, to overlap.)

        `then`, with PIPELINING, is asked at the final dot for the next recipient to send on
        this connection (same sender address); its MAIL, RCPT and DATA are written with the dot,
        and the next send() must be for that recipient (else `withdraw()` first). Nobody is in
        doubt because of it: without its own final dot the next message is not delivered.
        """
        reader = self._reader
        if reader is None or not self.connected:
            return classify_failure("disconnect", Stage.MAIL, "not connected")
        stage = Stage.MAIL
        envelope = self.envelope(from_addr, to_addr)
        presented, self._presented = self._presented, None
        if presented is not None and presented != envelope:
            # Not the message announced with the last dot: that transaction cannot be ended
            # without delivering something, so the connection goes (nothing was dotted).
            self.abort()
            return classify_failure("disconnect", Stage.MAIL, "the connection was dropped to change the message")
        if isinstance(envelope, Verdict):
            return envelope
        try:
            if self.pipelining:
                if presented is None:
                    reader.write(envelope[0] + envelope[1] + b"DATA\r\n")
                replies: list[tuple[int, str]] = []
                try:
                    while len(replies) < 3:  # each reply its own timeout (RFC 5321 4.5.3.2)
                        replies += await reader.replies(1, self.relay.timeout)
                except (SMTPTimeoutError, SMTPServerDisconnected):
                    # A refusal that came before the server hung up (421, or 554 and a close, as
                    # Gmail, Yahoo and Postfix do) is the server's answer, not the hang-up.
                    refusal = _first_refusal(replies)
                    if refusal is None:
                        stage = _ENVELOPE_STAGES[len(replies)]  # the command that went unanswered
                        raise
                    self.abort()
                    return await self._refused(*refusal)
                if replies[0][0] != 250 or replies[1][0] // 100 != 2 or replies[2][0] != 354:
                    refusal = _first_refusal(replies)
                    if refusal is not None:
                        if replies[2][0] == 354:
                            # The server took DATA although it refused the envelope: an empty
                            # message ends that data phase and goes nowhere without recipients.
                            try:
                                reader.write(b".\r\n")
                                await reader.replies(1, self.relay.timeout)
                            except (SMTPTimeoutError, SMTPServerDisconnected, OSError):
                                self.abort()  # the refusal is the answer, whatever became of the session
                        return await self._refused(*refusal)
            else:
                for stage, command in zip(_ENVELOPE_STAGES, (*envelope, b"DATA\r\n")):
                    reader.write(command)
                    ((code, text),) = await reader.replies(1, self.relay.timeout)
                    if not _accepted(stage, code):
                        return await self._refused(code, text, stage)
            stage = Stage.DATA
            body = _dot_stuffed(message)
            if before_dot is not None:
                if len(body) > _EARLY_BODY and not _is_done(before_dot):
                    reader.write(body)
                    body = b""
                await before_dot
            stage = Stage.DOT
            ahead = self._envelope_ahead(from_addr, then) if then is not None and self.pipelining else None
            if ahead is None:
                reader.write(body + b".\r\n")
            else:
                # One write (one TLS record, one send(2)) for this message's end and the next
                # one's envelope: writes, not bytes, were the largest cost per message.
                reader.write(b"".join((body, b".\r\n", ahead[0], ahead[1], b"DATA\r\n")))
                self._presented = ahead
            await reader.drain()
            dotted = time.monotonic()
            ((code, text),) = await reader.replies(1, self.relay.data_timeout)
            self.dot_wait = time.monotonic() - dotted
            self.sent_on_connection += 1
            if code // 100 != 2:
                return await self._refused(code, text, stage)
            return classify(code, text, stage)
        except SMTPTimeoutError as exc:
            self.abort()
            return classify_failure("timeout", stage, _scrub(str(exc), self.relay))
        except (SMTPServerDisconnected, ConnectionError, OSError) as exc:
            self.abort()
            return classify_failure("disconnect", stage, _scrub(str(exc) or "connection lost", self.relay))
        except BaseException:
            # The ledger write we waited for failed, or we were cancelled: without the dot
            # the server discards the message, so dropping the connection leaves nobody in doubt.
            self.abort()
            raise

    def _envelope_ahead(self, from_addr: str, then: Callable[[], str | None]) -> tuple[bytes, bytes] | None:
        """The next message's MAIL and RCPT to write with this dot, if the caller has one."""
        to_addr = then()
        if to_addr is None:
            return None
        envelope = self.envelope(from_addr, to_addr)
        # An address this server cannot take is refused by the next send() itself, unwritten.
        return None if isinstance(envelope, Verdict) else envelope

    async def _refused(self, code: int, text: str, stage: Stage) -> Verdict:
        verdict = classify(code, _scrub(text, self.relay), stage)
        if verdict.outcome is Outcome.SENT and stage is not Stage.DOT:
            # A positive reply where another was due (250 to DATA instead of 354): it is not a
            # delivery (no message went), and a server answering out of protocol cannot be
            # trusted to pair replies: the connection goes, nobody in doubt, the row is retried.
            self.abort()
            return classify_failure(
                "disconnect", stage, _scrub(f"the server answered {stage.name} with {code} {text}, out of protocol", self.relay)
            )
        if verdict.new_connection:
            self.abort()
        elif stage is not Stage.DOT and self._reader is not None:
            # Reset the half-open transaction so the connection can be reused.
            try:
                self._reader.write(b"RSET\r\n")
                await self._reader.replies(1, self.relay.timeout)
            except (SMTPException, OSError):
                self.abort()
        return verdict


async def client_tls_context(relay: Relay) -> ssl.SSLContext:
    """The TLS context for connections to `relay`, built once and shared by its connections.

    aiosmtplib builds one per connection (on a worker thread): loading the system's CA store
    costs about 37 ms of CPU, at each of K connections and at every reconnect, on cores the
    relay needs too (issue 12). The same settings as aiosmtplib's own; keyed on the CA file's
    identity and modification time too, so a replaced CA file is read again at the next connect."""
    return await asyncio.to_thread(_tls_context, relay.verify, relay.ca_file, _file_stamp(relay.ca_file))


def _file_stamp(path: str) -> tuple[int, int, int, int] | None:
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None  # loading it then says what is wrong, as before
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=8)
def _tls_context(verify: bool, ca_file: str, stamp: tuple[int, int, int, int] | None) -> ssl.SSLContext:
    """What aiosmtplib's SMTP._build_tls_context makes of validate_certs and cert_bundle.
    `stamp` only keys the cache. A failure (no such file, not a CA file) raises and is not kept."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = verify
    context.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


async def _login_once(smtp: aiosmtplib.SMTP, relay: Relay) -> None:
    """Log in with ONE mechanism, the preferred one among those the server offers.

    No reply to AUTH is kept verbatim (servers echo the SASL exchange): a refusal is judged by its
    code and enhanced code only (`classify_auth`)."""
    offered = [m.lower() for m in smtp.server_auth_methods]
    mechanism = next((m for m in LOGIN_MECHANISMS if m in offered), None)
    if mechanism is None:
        smtp.close()
        if not smtp.supports_extension("auth"):
            detail = "the server does not offer AUTH (login) on this connection"
        else:
            detail = "the server offers no login mechanism we support: " + (" ".join(offered)[:80] or "none")
        raise ConnectFailed(classify_failure("refused", Stage.AUTH, detail), at_login=True)
    login = {"plain": smtp.auth_plain, "login": smtp.auth_login, "cram-md5": smtp.auth_crammd5}[mechanism]
    try:
        await login(relay.user, relay.password)
    except SMTPResponseException as exc:  # SMTPAuthenticationError and any other reply to AUTH
        smtp.close()
        raise ConnectFailed(classify_auth(exc.code, exc.message), at_login=True) from None
    except (OSError, SMTPException) as exc:
        smtp.close()
        kind = "timeout" if isinstance(exc, SMTPTimeoutError) else "disconnect"
        what = "timed out" if kind == "timeout" else "hung up"
        detail = f"{relay.host}:{relay.port} {what} during login ({mechanism.upper()})"
        raise ConnectFailed(classify_failure(kind, Stage.AUTH, detail), at_login=True) from None
    except BaseException:
        smtp.close()
        raise


def envelope_address(address: str, smtputf8: bool) -> bytes | str:
    """The address as written in MAIL FROM / RCPT TO, or why it cannot be sent to this server."""
    if address.isascii():
        return address.encode("ascii")
    local, at, domain = address.rpartition("@")
    if not at:
        return f"{address!r} is not an email address"
    if not domain.isascii():
        converted = ascii_domain(domain)
        if converted is None:
            return f"the domain of {address} is not a valid internationalised domain name"
        domain = converted
    if not local.isascii() and not smtputf8:
        return "the address needs SMTPUTF8, which the server does not offer"
    return f"{local}@{domain}".encode("utf-8")


def _handshake_verdict(exc: OSError | SMTPException, relay: Relay, greeted: bool = True) -> Verdict:
    """What a failure while connecting, greeting, starting TLS or logging in means (`greeted`:
    the server's greeting had been read when it came).

    The order matters: aiosmtplib's errors subclass one another."""
    where = f"{relay.host}:{relay.port}"
    if not greeted and isinstance(exc, SMTPResponseException) and exc.code < 0:
        # aiosmtplib raises what it could not read of the greeting unwrapped (not as a connect
        # error): the server answered the connection with something that is not SMTP.
        detail = f"{where} {REACHED} and sent a greeting that is not an SMTP reply: {exc.message}"
        return classify_failure("disconnect", Stage.CONNECT, _scrub(detail, relay))
    if isinstance(exc, SMTPAuthenticationError):
        return classify_auth(exc.code, exc.message)
    if isinstance(exc, SMTPConnectResponseError):
        # The server answered the connection with a reply other than 220 (421 too many
        # connections, 554 no service for you): judged by the table like any reply.
        return classify(exc.code, _scrub(exc.message, relay), Stage.CONNECT)
    if isinstance(exc, ssl.SSLError):
        return classify_failure("refused", Stage.CONNECT, _scrub(f"{TLS_FAILED} {relay.host}: {exc.reason or exc}", relay))
    if isinstance(exc, SMTPConnectError):
        cause = exc.__cause__
        # aiosmtplib's connect covers the TCP connection, implicit TLS and the greeting; the cause
        # says which failed. After the TCP connection the server was reached (REACHED): a
        # connection limit, a blocklist, postscreen's greeting delay, TLS on a plain port.
        if relay.tls == "tls" and isinstance(cause, (ConnectionResetError, ssl.SSLEOFError)):
            detail = f"{where} {REACHED} and hung up during TLS"
            return classify_failure("disconnect", Stage.CONNECT, _scrub(detail, relay))
        if isinstance(cause, ssl.SSLError):
            detail = f"{TLS_FAILED} {where}: {cause.reason or cause}"
        elif isinstance(cause, SMTPServerDisconnected):
            detail = f"{where} {REACHED} and hung up before its greeting"
            return classify_failure("disconnect", Stage.CONNECT, _scrub(detail, relay))
        elif isinstance(cause, SMTPTimeoutError):  # not asyncio's: the wait for the greeting
            detail = f"{where} {REACHED} and sent no greeting within {relay.timeout:g} s"
            return classify_failure("timeout", Stage.CONNECT, _scrub(detail, relay))
        else:
            detail = f"cannot connect to {where}: {exc}"
        return classify_failure("refused", Stage.CONNECT, _scrub(detail, relay))
    if isinstance(exc, SMTPTimeoutError):
        # After the greeting (connect errors are the branch above): EHLO or STARTTLS went unanswered.
        return classify_failure("timeout", Stage.HELO, _scrub(f"{where} timed out after its greeting: {exc}", relay))
    if isinstance(exc, SMTPServerDisconnected):
        # After the greeting (connect errors are the branch above): EHLO or STARTTLS was cut off.
        return classify_failure("disconnect", Stage.HELO, _scrub(f"{where} hung up after its greeting: {exc}", relay))
    if isinstance(exc, SMTPResponseException) and exc.code < 0:
        # aiosmtplib's own code for what it could not read (-1 "Response too long"): no reply.
        return classify_failure("disconnect", Stage.HELO, _scrub(f"{where} sent no SMTP reply: {exc.message}", relay))
    if isinstance(exc, SMTPResponseException):
        return classify(exc.code, _scrub(exc.message, relay), Stage.HELO)
    if relay.tls == "starttls" and "STARTTLS extension not supported" in str(exc):
        # Reached, and it does not offer STARTTLS (or something between strips it): nothing
        # goes out in clear, and the network is not what to look at.
        return classify_failure("refused", Stage.CONNECT, f"{TLS_FAILED} {where}: the server does not offer STARTTLS")
    return classify_failure("refused", Stage.CONNECT, _scrub(f"cannot connect to {where}: {exc}", relay))


_ENVELOPE_STAGES = (Stage.MAIL, Stage.RCPT, Stage.DATA)


def _accepted(stage: Stage, code: int) -> bool:
    return code == 354 if stage is Stage.DATA else code // 100 == 2


def _first_refusal(replies: list[tuple[int, str]]) -> tuple[int, str, Stage] | None:
    """The first refusal among the pipelined MAIL, RCPT and DATA replies, if any.

    RFC 2920 pairs replies with commands in order; the first refusal is the one that counts,
    later ones only follow from it (a 554 to DATA after RCPT was refused, say)."""
    for stage, (code, text) in zip(_ENVELOPE_STAGES, replies):
        if not _accepted(stage, code):
            return code, text, stage
    return None


def _is_done(awaitable: Awaitable[object]) -> bool:
    return isinstance(awaitable, asyncio.Future) and awaitable.done()


def _dot_stuffed(message: bytes) -> bytes:
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    if message.startswith(b".") or b"\n." in message:
        message = _LEADING_DOT.sub(b"..", message)
    return message
