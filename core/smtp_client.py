"""One persistent SMTP connection (aiosmtplib) that sends one message per transaction and
reports what happened as a `Verdict`, knowing exactly which stage a failure happened at.

Knowing the stage matters: a connection that breaks before the final dot leaves nobody in
doubt, one that breaks after it leaves that transaction's recipient in doubt.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass

import aiosmtplib
import aiosmtplib.protocol
from aiosmtplib.errors import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPException,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from .config import Settings
from .smtp_replies import Stage, Verdict, classify, classify_failure

# RFC 5321 4.5.2: a line starting with a period gets one more.
_LEADING_DOT = re.compile(rb"(?m)^\.")


class ConnectFailed(Exception):
    """The server could not be reached or refused us before any transaction (nobody touched)."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.text)
        self.verdict = verdict


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
    """Keep the password out of anything shown or stored."""
    if relay.password and relay.password in text:
        text = text.replace(relay.password, "********")
    return " ".join(text.split())[:300]


class SmtpConnection:
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self._smtp: aiosmtplib.SMTP | None = None
        self.sent_on_connection = 0

    @property
    def connected(self) -> bool:
        return self._smtp is not None and self._smtp.is_connected

    async def connect(self) -> None:
        relay = self.relay
        smtp = aiosmtplib.SMTP(
            hostname=relay.host,
            port=relay.port,
            timeout=relay.timeout,
            use_tls=relay.tls == "tls",
            start_tls=relay.tls == "starttls",
            validate_certs=relay.verify,
            cert_bundle=relay.ca_file or None,
            local_hostname=relay.helo_name or None,
        )
        try:
            await smtp.connect()
            if smtp.last_ehlo_response is None:
                await smtp.ehlo()
            if relay.user:
                if relay.tls == "none":
                    raise ConnectFailed(
                        classify_failure("refused", Stage.AUTH, "refusing to log in over an unencrypted connection")
                    )
                await smtp.login(relay.user, relay.password)
        except SMTPAuthenticationError as exc:
            smtp.close()
            raise ConnectFailed(classify(exc.code, _scrub(exc.message, relay), Stage.AUTH)) from None
        except ssl.SSLError as exc:
            smtp.close()
            raise ConnectFailed(
                classify_failure("refused", Stage.CONNECT, _scrub(f"TLS failed with {relay.host}: {exc.reason or exc}", relay))
            ) from None
        except SMTPConnectError as exc:
            smtp.close()
            cause = exc.__cause__
            if isinstance(cause, ssl.SSLError):
                detail = f"TLS failed with {relay.host}:{relay.port}: {cause.reason or cause}"
            else:
                detail = f"cannot connect to {relay.host}:{relay.port}: {exc}"
            raise ConnectFailed(classify_failure("refused", Stage.CONNECT, _scrub(detail, relay))) from None
        except SMTPTimeoutError as exc:
            smtp.close()
            raise ConnectFailed(
                classify_failure("timeout", Stage.CONNECT, _scrub(f"{relay.host}:{relay.port} timed out: {exc}", relay))
            ) from None
        except SMTPServerDisconnected as exc:
            smtp.close()
            raise ConnectFailed(
                classify_failure("disconnect", Stage.CONNECT, _scrub(f"{relay.host}:{relay.port} hung up: {exc}", relay))
            ) from None
        except SMTPResponseException as exc:
            smtp.close()
            raise ConnectFailed(classify(exc.code, _scrub(exc.message, relay), Stage.HELO)) from None
        except (OSError, SMTPException) as exc:
            smtp.close()
            raise ConnectFailed(
                classify_failure("refused", Stage.CONNECT, _scrub(f"cannot connect to {relay.host}:{relay.port}: {exc}", relay))
            ) from None
        self._smtp = smtp
        self.sent_on_connection = 0

    async def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            if smtp.is_connected:
                await smtp.quit(timeout=2)
        except (SMTPException, OSError):
            pass
        finally:
            smtp.close()

    def abort(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    async def send(
        self, from_addr: str, to_addr: str, message: bytes, before_dot: Awaitable[object] | None = None
    ) -> Verdict:
        """One transaction: MAIL, RCPT, DATA, payload. Never raises for SMTP trouble.

        `before_dot` is awaited after the message body is written and before the final dot:
        the sender passes "the previous outcome of this connection is on disk", so a ledger
        write overlaps the next transaction while at most one message per connection is
        ever past its dot without its outcome recorded.
        """
        smtp = self._smtp
        if smtp is None:
            return classify_failure("disconnect", Stage.MAIL, "not connected")
        stage = Stage.MAIL
        try:
            reply = await smtp.execute_command(b"MAIL", b"FROM:<" + from_addr.encode() + b">")
            if reply.code // 100 != 2:
                return await self._refused(reply.code, reply.message, stage)
            stage = Stage.RCPT
            reply = await smtp.execute_command(b"RCPT", b"TO:<" + to_addr.encode() + b">")
            if reply.code // 100 != 2:
                return await self._refused(reply.code, reply.message, stage)
            stage = Stage.DATA
            reply = await smtp.execute_command(b"DATA")
            if reply.code != 354:
                return await self._refused(reply.code, reply.message, stage)
            protocol, body = self._body(smtp, message)
            if before_dot is not None:
                protocol.write(body)
                body = b""
                await before_dot
            stage = Stage.DOT
            reply = await self._write_dot(protocol, body)
            self.sent_on_connection += 1
            if reply.code // 100 != 2:
                return await self._refused(reply.code, reply.message, stage)
            return classify(reply.code, reply.message, stage)
        except SMTPTimeoutError as exc:
            self.abort()
            return classify_failure("timeout", stage, _scrub(str(exc), self.relay))
        except (SMTPServerDisconnected, ConnectionError, OSError) as exc:
            self.abort()
            return classify_failure("disconnect", stage, _scrub(str(exc) or "connection lost", self.relay))
        except SMTPResponseException as exc:
            self.abort()
            return classify(exc.code, _scrub(exc.message, self.relay), stage)
        except BaseException:
            # The ledger write we waited for failed, or we were cancelled: without the dot
            # the server discards the message, so dropping the connection leaves nobody in doubt.
            self.abort()
            raise

    async def _refused(self, code: int, text: str, stage: Stage) -> Verdict:
        verdict = classify(code, _scrub(text, self.relay), stage)
        if verdict.new_connection:
            self.abort()
        elif stage is not Stage.DOT and self._smtp is not None:
            # Reset the half-open transaction so the connection can be reused.
            try:
                await self._smtp.execute_command(b"RSET")
            except (SMTPException, OSError):
                self.abort()
        return verdict

    def _body(self, smtp: aiosmtplib.SMTP, message: bytes) -> tuple["aiosmtplib.protocol.SMTPProtocol", bytes]:
        protocol = smtp.protocol
        if protocol is None:
            raise SMTPServerDisconnected("connection lost")
        if not message.endswith(b"\r\n"):
            message += b"\r\n"
        if message.startswith(b".") or b"\n." in message:
            message = _LEADING_DOT.sub(b"..", message)
        return protocol, message

    async def _write_dot(self, protocol: "aiosmtplib.protocol.SMTPProtocol", body: bytes) -> aiosmtplib.SMTPResponse:
        # aiosmtplib only accepts reply bytes while it expects a reply; this is the flag its own
        # DATA command sets before writing the payload.
        protocol._response_pending = True  # noqa: SLF001
        protocol.write(body + b".\r\n")
        return await protocol.read_response(timeout=self.relay.data_timeout)
