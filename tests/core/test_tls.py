"""TLS and credentials: verification on by default, no password in clear, secrets kept secret."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sqlite3
import ssl
import threading
from pathlib import Path

import pytest
import trustme

from mailtower.core.config import load_settings
from mailtower.core.errors import UserError
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.operations import Draft, create_mailing
from mailtower.core.sender import Sender
from mailtower.core.sink import Sink, free_port
from mailtower.core.store import Store
from tests.helpers import Cli, recipients, wait_for, write_csv

USER, PASSWORD = "mailer", "s3cret-Pa55word"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


class Tap:
    """A TCP relay on 127.0.0.1 that keeps every byte the client sends to the server."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.client_bytes = bytearray()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, keep: bool) -> None:
            try:
                while data := await src.read(65536):
                    if keep:
                        self.client_bytes.extend(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

    def __enter__(self) -> "Tap":
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


async def prepared_db(tmp_path: Path, n: int = 5) -> Path:
    db = tmp_path / "tls.db"
    store = await Store.open(db)
    people = write_csv(tmp_path / "p.csv", recipients(n))
    mailing_id, _ = await create_mailing(store, Draft("tls", "Hi", "news@example.org", "Body", None), people, lambda r: None)
    await Lifecycle(store).send_now(mailing_id)
    await store.close()
    return db


def settings(db: Path, port: int, **flags: object):
    base = {"db": db, "smtp_host": "127.0.0.1", "smtp_port": port, "smtp_tls": "starttls", "smtp_user": USER,
            "smtp_password": PASSWORD, "connections": 1, "connect_backoff_max": 0.3}
    return load_settings({**base, **flags}, environ={}, config_path=db.parent / "none.toml")


def last_error(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT last_error FROM mailings").fetchone()[0] or ""


def ledger(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT state, COUNT(*) FROM recipients GROUP BY state").fetchall())


async def run_until(sender: Sender, condition, timeout: float = 20.0) -> None:
    task = asyncio.create_task(sender.run())
    try:
        await wait_for(condition, timeout=timeout)
    finally:
        sender.request_stop()
        await asyncio.wait_for(task, 30)


async def test_self_signed_certificate_fails_verification_by_default(tmp_path: Path, server_context: ssl.SSLContext) -> None:
    db = await prepared_db(tmp_path)
    with Sink(tls_context=server_context, credentials=(USER, PASSWORD)) as sink, Tap(sink.port) as tap:
        sender = Sender(settings(db, tap.port))

        async def waiting() -> bool:
            return "certificate" in last_error(db).lower() or "tls" in last_error(db).lower()

        await run_until(sender, waiting)
        assert sink.deliveries == []
    assert ledger(db) == {"pending": 5}
    assert "Traceback" not in last_error(db)
    sent = bytes(tap.client_bytes)
    assert PASSWORD.encode() not in sent
    assert base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()) not in sent
    assert b"AUTH" not in sent


async def test_trusted_ca_sends_and_password_never_crosses_in_clear(
    tmp_path: Path, server_context: ssl.SSLContext, ca_file: Path
) -> None:
    db = await prepared_db(tmp_path)
    with Sink(tls_context=server_context, credentials=(USER, PASSWORD)) as sink, Tap(sink.port) as tap:
        sender = Sender(settings(db, tap.port, smtp_ca_file=str(ca_file)))
        await asyncio.wait_for(sender.run(until_idle=True), 30)
        assert len(sink.received()) == 5
    sent = bytes(tap.client_bytes)
    assert b"STARTTLS" in sent
    assert PASSWORD.encode() not in sent
    assert base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()) not in sent
    assert b"MAIL FROM" not in sent  # everything after STARTTLS is encrypted
    assert ledger(db) == {"sent": 5}


async def test_implicit_tls(tmp_path: Path, server_context: ssl.SSLContext, ca_file: Path) -> None:
    db = await prepared_db(tmp_path)
    with Sink(tls_context=server_context, implicit_tls=True) as sink:
        flags = {"smtp_tls": "tls", "smtp_user": "", "smtp_password": "", "smtp_ca_file": str(ca_file)}
        await asyncio.wait_for(Sender(settings(db, sink.port, **flags)).run(until_idle=True), 30)
        assert len(sink.received()) == 5


def _loop_runners() -> list:
    runners = [pytest.param(asyncio.run, id="asyncio")]
    try:
        import uvloop
    except ImportError:  # an optional extra: tested where it is installed
        return runners
    return [*runners, pytest.param(uvloop.run, id="uvloop")]


@pytest.mark.parametrize("run", _loop_runners())
@pytest.mark.parametrize("mode", ["starttls", "tls"])
def test_pipelined_transactions_over_tls(run, mode: str, server_context: ssl.SSLContext, ca_file: Path) -> None:
    """The reply reader takes over the TLS transport after the handshake on either event loop."""
    from mailtower.core.smtp_client import Relay, SmtpConnection
    from mailtower.core.smtp_replies import Outcome

    implicit = mode == "tls"
    # aiosmtpd offers AUTH only after STARTTLS, so the implicit-TLS sink takes no login.
    credentials = None if implicit else (USER, PASSWORD)

    async def send_twenty(port: int) -> list[Outcome]:
        conn = SmtpConnection(Relay("127.0.0.1", port, mode, user=USER if credentials else "", password=PASSWORD,
                                    ca_file=str(ca_file), timeout=10, data_timeout=10))
        await asyncio.wait_for(conn.connect(), 10)
        assert conn.pipelining
        try:
            return [(await asyncio.wait_for(conn.send("news@example.org", f"p{i}@example.com", b"Subject: x\r\n\r\nhi\r\n"), 10)).outcome
                    for i in range(20)]
        finally:
            await conn.close()

    with Sink(tls_context=server_context, implicit_tls=implicit, credentials=credentials) as sink:
        outcomes = run(send_twenty(sink.port))
        assert set(outcomes) == {Outcome.SENT}
        assert sorted(sink.received()) == sorted(f"p{i}@example.com" for i in range(20))


async def test_refused_login_pauses_and_fails_nobody(tmp_path: Path, server_context: ssl.SSLContext, ca_file: Path) -> None:
    db = await prepared_db(tmp_path)
    with Sink(tls_context=server_context, credentials=(USER, "another password")) as sink:
        sender = Sender(settings(db, sink.port, smtp_ca_file=str(ca_file)))

        async def refused() -> bool:
            return "535" in last_error(db) or "authentication" in last_error(db).lower()

        await run_until(sender, refused)
        assert sink.deliveries == []
    assert ledger(db) == {"pending": 5}
    assert PASSWORD not in last_error(db)
    assert PASSWORD not in sender.snapshot.reason


def test_password_never_sent_over_plain_connection(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unencrypted"):
        from mailtower.core.config import check_smtp_security

        check_smtp_security(settings(tmp_path / "x.db", 25, smtp_tls="none"))


def test_plain_to_a_remote_host_needs_explicit_consent(tmp_path: Path) -> None:
    from mailtower.core.config import check_smtp_security, security_warnings

    remote = settings(tmp_path / "x.db", 25, smtp_tls="none", smtp_user="", smtp_password="", smtp_host="192.0.2.10")
    with pytest.raises(UserError, match="not a loopback address"):
        check_smtp_security(remote)
    forced = settings(tmp_path / "x.db", 25, smtp_tls="none", smtp_user="", smtp_password="", smtp_host="192.0.2.10",
                      smtp_allow_plain=True)
    check_smtp_security(forced)
    assert any("unencrypted" in w for w in security_warnings(forced))
    unverified = settings(tmp_path / "x.db", 25, smtp_verify=False)
    assert any("not verified" in w for w in security_warnings(unverified))


def test_password_file_must_be_private(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    os.chmod(secret, 0o644)
    env = {"MAILTOWER_SMTP_PASSWORD_FILE": str(secret), "MAILTOWER_SMTP_TLS": "starttls"}
    with pytest.raises(UserError, match="readable by group or others") as info:
        load_settings(environ=env, config_path=tmp_path / "none.toml")
    assert PASSWORD not in str(info.value)
    os.chmod(secret, 0o600)
    assert load_settings(environ=env, config_path=tmp_path / "none.toml").smtp_password == PASSWORD
    assert PASSWORD not in repr(load_settings(environ=env, config_path=tmp_path / "none.toml"))


def test_password_absent_from_status_json_and_database_is_private(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    cli = Cli(db, 2525, MAILTOWER_SMTP_PASSWORD=PASSWORD, MAILTOWER_SMTP_USER=USER, MAILTOWER_SMTP_TLS="starttls")
    body = tmp_path / "b.txt"
    body.write_text("x")
    cli.ok("new", "--name", "n", "--subject", "s", "--from", "a@example.org", "--text", str(body),
           "--recipients", str(write_csv(tmp_path / "r.csv", recipients(2))), "--now")
    out = cli.ok("status", "--json")
    assert PASSWORD not in out
    json.loads(out)
    assert PASSWORD.encode() not in db.read_bytes()
    assert (db.stat().st_mode & 0o777) == 0o600
