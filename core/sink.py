"""A local SMTP sink on 127.0.0.1 (aiosmtpd) for the demo and the tests.

It records every accepted recipient and can inject faults: a reply chosen per recipient at
RCPT or after DATA, latency, or a dropped connection. It runs in its own thread with its own
event loop, so a busy client loop never slows the server down.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP as SMTPServer, AuthResult, Envelope, LoginPassword, Session

# A fault rule gets (stage, recipient address, attempt number for that address) and returns an
# SMTP reply line such as "450 4.2.0 try later", or None to accept. Stage is "mail" (the address
# is the sender's, the attempt the number of MAIL commands so far), "rcpt" or "data".
# Besides reply lines it understands three actions:
#   "DROP"      (data) store the message, then cut the connection without replying;
#   "SLEEP s"   (data) store the message, wait s seconds, then reply 250;
#   "HANGUP"    (rcpt or data) cut the connection without storing anything.
FaultRule = Callable[[str, str, int], str | None]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Delivery:
    recipient: str
    message_id: str
    size: int
    mail_from: str = ""
    mail_options: tuple[str, ...] = ()  # MAIL FROM parameters, e.g. ("SMTPUTF8",)
    data: bytes = b""  # the message, only with Sink(keep_messages=True)
    connection: int = 0  # which connection brought it, numbered as they said EHLO


@dataclass
class SinkHandler:
    fault: FaultRule | None = None
    latency: float = 0.0
    pipelining: bool = True
    keep_messages: bool = False
    deliveries: list[Delivery] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Every AUTH command: (connection number, mechanism); connections are numbered as they EHLO.
    logins: list[tuple[int, str]] = field(default_factory=list)
    mail_commands: int = 0
    replies: Counter[str] = field(default_factory=Counter)  # fault replies given, by reply line
    _sessions: dict[int, int] = field(default_factory=dict)

    def _connection(self, session: Session) -> int:
        with self.lock:
            return self._sessions.setdefault(id(session), len(self._sessions) + 1)

    def _count(self, reply: str | None) -> str | None:
        if reply and reply[:1].isdigit():
            with self.lock:
                self.replies[reply] += 1
        return reply

    async def handle_AUTH(self, server: SMTPServer, session: Session, envelope: Envelope, args: list[str]) -> object:
        with self.lock:
            self.logins.append((self._sessions.setdefault(id(session), len(self._sessions) + 1), args[0].upper()))
        return MISSING  # aiosmtpd's own PLAIN / LOGIN handling goes on

    async def handle_MAIL(
        self, server: SMTPServer, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        with self.lock:
            self.mail_commands += 1
            attempt = self.mail_commands
        reply = self._count(self.fault("mail", address, attempt) if self.fault else None)
        if reply == "HANGUP":
            _cut(server)
            return "421 4.4.2 closing"
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_EHLO(
        self, server: SMTPServer, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        # aiosmtpd reads commands one line at a time from a stream, so it handles pipelined
        # commands correctly; it just does not say so.
        session.host_name = hostname
        self._connection(session)
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(
        self, server: SMTPServer, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        with self.lock:
            self.attempts[address.lower()] += 1
            attempt = self.attempts[address.lower()]
        reply = self._count(self.fault("rcpt", address, attempt) if self.fault else None)
        if reply == "HANGUP":
            _cut(server)
            return "421 4.4.2 closing"
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        if self.latency:
            await asyncio.sleep(self.latency)
        data = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        accepted = []
        action = None
        for rcpt in envelope.rcpt_tos:
            reply = self._count(self.fault("data", rcpt, self.attempts[rcpt.lower()]) if self.fault else None)
            if reply == "HANGUP":
                _cut(server)
                return "421 4.4.2 closing"
            if reply and (reply == "DROP" or reply.startswith("SLEEP")):
                action = reply
            elif reply:
                return reply
            accepted.append(rcpt)
        headers = BytesHeaderParser().parsebytes(data)
        message_id = str(headers.get("Message-ID", ""))
        with self.lock:
            self.deliveries.extend(
                Delivery(r, message_id, len(data), envelope.mail_from or "", tuple(envelope.mail_options),
                         data if self.keep_messages else b"", self._sessions.get(id(session), 0))
                for r in accepted
            )
        if action == "DROP":
            _cut(server)
        elif action:
            await asyncio.sleep(float(action.split()[1]))
        return "250 2.0.0 OK queued"


def _cut(server: SMTPServer) -> None:
    transport = server.transport
    if transport is not None:
        transport.abort()


class _Login:
    """aiosmtpd authenticator accepting one user name and password.

    `refusal` is the reply to a refused login; "{blob}" in it becomes the base64 the client sent
    (the PLAIN blob, or LOGIN's password), as servers that echo the SASL exchange do."""

    def __init__(self, user: str, password: str, refusal: str | None = None) -> None:
        self.user, self.password = user.encode(), password.encode()
        self.refusal = refusal

    def __call__(self, server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, auth_data: object) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (self.user, self.password)
        if ok or self.refusal is None:
            return AuthResult(success=ok, handled=False)
        blob = b""
        if isinstance(auth_data, LoginPassword):
            raw = b"\0" + auth_data.login + b"\0" + auth_data.password if mechanism == "PLAIN" else auth_data.password
            blob = base64.b64encode(raw)
        return AuthResult(success=False, handled=False, message=self.refusal.replace("{blob}", blob.decode()))


class Sink:
    """Start with `start()`, stop with `stop()`; `port` is where it listens.

    `tls_context` offers STARTTLS (required when `credentials` are set); `implicit_tls` wraps
    the whole connection instead. `pipelining=False` stops advertising PIPELINING.
    `auth_refusal` replaces the reply to a refused login (see `_Login`); `smtputf8` offers
    SMTPUTF8 (RFC 6531): without it, like aiosmtpd, the sink refuses non-ASCII commands (500).
    `handler.logins` lists every AUTH command, `handler.replies` counts the fault replies given.
    """

    def __init__(
        self,
        *,
        fault: FaultRule | None = None,
        latency: float = 0.0,
        port: int | None = None,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        credentials: tuple[str, str] | None = None,
        pipelining: bool = True,
        auth_refusal: str | None = None,
        smtputf8: bool = False,
        auth_exclude: tuple[str, ...] = (),
        keep_messages: bool = False,
    ) -> None:
        self.handler = SinkHandler(fault=fault, latency=latency, pipelining=pipelining, keep_messages=keep_messages)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls
        self.credentials = credentials
        self.auth_exclude = auth_exclude  # mechanisms not offered, e.g. ("PLAIN",)
        self.smtputf8 = smtputf8
        # The authenticator; a test may change `login.password` to make the server accept us.
        self.login = _Login(*credentials, refusal=auth_refusal) if credentials else None
        self._controller: Controller | None = None

    def start(self) -> "Sink":
        kwargs: dict[str, object] = {"data_size_limit": 0, "enable_SMTPUTF8": self.smtputf8}
        if self.tls_context is not None and not self.implicit_tls:
            kwargs["tls_context"] = self.tls_context
        if self.credentials is not None:
            kwargs.update(authenticator=self.login, auth_required=True, auth_require_tls=True,
                          auth_exclude_mechanism=list(self.auth_exclude))
        self._controller = Controller(
            self.handler,
            hostname=self.host,
            port=self.port,
            ready_timeout=10,
            ssl_context=self.tls_context if self.implicit_tls else None,
            **kwargs,  # type: ignore[arg-type]
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> "Sink":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def deliveries(self) -> list[Delivery]:
        with self.handler.lock:
            return list(self.handler.deliveries)

    def received(self) -> Counter[str]:
        """How many times each recipient address was accepted."""
        return Counter(d.recipient.lower() for d in self.deliveries)


def demo_fault(stage: str, address: str, attempt: int) -> str | None:
    """The demo's occasional trouble: a few temporary refusals (sent on retry) and rare bounces."""
    bucket = sum(address.encode()) % 97
    if stage == "rcpt" and bucket == 13:
        return "550 5.1.1 mailbox unavailable"
    if stage == "rcpt" and bucket in (7, 42) and attempt == 1:
        return "450 4.2.1 mailbox busy, try again later"
    return None


def per_domain(rules: dict[str, FaultRule], other: FaultRule | None = None) -> FaultRule:
    """A fault rule that asks `rules[domain]` about recipients of that domain (and `other`, if
    given, about the rest and about MAIL FROM): one destination pushes back, the others not."""

    def rule(stage: str, address: str, attempt: int) -> str | None:
        if stage != "mail":
            chosen = rules.get(address.rpartition("@")[2].lower())
            if chosen is not None:
                return chosen(stage, address, attempt)
        return other(stage, address, attempt) if other is not None else None

    return rule
