"""End to end on PostgreSQL (issue 15): `mailtower --db postgresql://... run` sends a mailing
through a real SMTP server (aiosmtpd) and each recipient gets it once; the password in the URL
appears nowhere; the dashboard sends on PostgreSQL itself, and monitors another process's sender
(the PostgreSQL sender lease) until the mailing completes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from mailtower.core.config import Settings
from mailtower.core.db_target import parse_pg_url
from mailtower.core.domain import MailingState, Section
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.operations import Draft, create_mailing
from mailtower.core.sink import Sink
from mailtower.core.store import open_store
from mailtower.tui.app import DashboardApp
from mailtower.tui.header import HeaderLine
from tests.helpers import Cli, recipients, wait_for, wait_until, write_csv
from tests.pg_server import sql_rows

SECRET = "not-a-real-password-42"  # trust authentication ignores it; it must still never be shown


def with_password(url: str) -> str:
    return url.replace("postgresql://mailtower@", f"postgresql://mailtower:{SECRET}@")


def run_cli(url: str, port: int, *args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "MAILTOWER_CONFIG": os.devnull, "MAILTOWER_SMTP_HOST": "127.0.0.1",
               "MAILTOWER_SMTP_PORT": str(port), **env}
    environ.pop("MAILTOWER_DB", None)
    return subprocess.run([sys.executable, "-m", "mailtower.tui.cli", "--db", url, *args], capture_output=True,
                          text=True, env=environ, timeout=120, cwd=tmp_path, stdin=subprocess.DEVNULL)


def test_run_with_a_postgres_url_sends_each_recipient_once(pg_url: str, tmp_path: Path) -> None:
    url = with_password(pg_url)
    body = tmp_path / "body.txt"
    body.write_text("Hello {{ name }}\n", encoding="utf-8")
    people = write_csv(tmp_path / "r.csv", recipients(60))
    log = tmp_path / "run.log"
    with Sink() as sink:
        made = run_cli(url, sink.port, "new", "--name", "pg news", "--subject", "Hi", "--from", "news@example.org",
                       "--text", str(body), "--recipients", str(people), "--now", tmp_path=tmp_path)
        assert made.returncode == 0, made.stderr
        mailing_id = int(made.stdout.strip())
        ran = run_cli(url, sink.port, "run", "--until-idle", "--log", str(log), tmp_path=tmp_path,
                      MAILTOWER_SMTP_CONNECTIONS="4")
        assert ran.returncode == 0, ran.stderr
        received = sink.received()
    assert received == Counter({f"user{i}@example.com": 1 for i in range(60)})
    status = run_cli(url, 1, "status", "--json", tmp_path=tmp_path)
    (item,) = json.loads(status.stdout)["inactive"]
    assert (item["id"], item["state"], item["sent"], item["total"]) == (mailing_id, "completed", 60, 60)
    ledger = dict(sql_rows(parse_pg_url(pg_url, "test"), "SELECT state, COUNT(*) FROM recipients GROUP BY state"))
    assert ledger == {"sent": 60}
    logged = log.read_text(encoding="utf-8")
    assert "sender started on postgresql://mailtower@127.0.0.1:" in logged
    for text in (made.stdout, made.stderr, ran.stdout, ran.stderr, status.stdout, status.stderr, logged):
        assert SECRET not in text
    assert list(tmp_path.glob("*.lease")) == [] and list(tmp_path.glob("*-wal")) == []  # nothing file-like made


def test_a_second_sender_on_the_same_database_joins_the_first(pg_url: str, tmp_path: Path) -> None:
    """Several senders share a PostgreSQL database (issue 15 item 3, core/fleet.py; more in
    tests/core/test_fleet.py): a second `run` is not refused, it works on the same mailing."""
    target = parse_pg_url(pg_url, "test")
    with Sink() as sink:
        cli = Cli(target, sink.port, MAILTOWER_RATE="20")
        new_queued(cli, tmp_path, 100)
        first = cli.popen("run", "--until-idle", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: len(sink.deliveries) > 0, timeout=30, what="first sender sending")
            code, _, err = cli("run", "--until-idle")
            assert code == 0, err
        finally:
            first.wait(timeout=60)
        assert first.returncode == 0
        assert sink.received() == Counter({f"user{i}@example.com": 1 for i in range(100)})


def new_queued(cli: Cli, tmp_path: Path, n: int) -> int:
    """A mailing to `n` recipients, queued through the CLI."""
    body = tmp_path / "b.txt"
    body.write_text("x\n", encoding="utf-8")
    return int(cli.ok("new", "--name", "m", "--subject", "s", "--from", "news@example.org", "--text", str(body),
                      "--recipients", str(write_csv(tmp_path / "r.csv", recipients(n))), "--now"))


def pg_settings(url: str, port: int, **overrides: object) -> Settings:
    return Settings(db=parse_pg_url(url, "test"), smtp_host="127.0.0.1", smtp_port=port, **overrides)  # type: ignore[arg-type]


async def test_the_dashboard_sends_on_postgres(pg_url: str, tmp_path: Path) -> None:
    target = parse_pg_url(pg_url, "test")
    with Sink() as sink:
        mailing_id = await queued_mailing(target, tmp_path, 30)
        app = DashboardApp(pg_settings(pg_url, sink.port), start_sender=True, operator_tz="UTC")
        async with app.run_test(size=(120, 30)):
            await wait_for(lambda: _async(app.sender is not None or _done(app, mailing_id)), timeout=20)
            await wait_for(lambda: _async(_done(app, mailing_id)), timeout=30)
        assert sink.received() == Counter({f"user{i}@example.com": 1 for i in range(30)})


async def test_the_dashboard_monitors_a_sender_in_another_process(pg_url: str, tmp_path: Path) -> None:
    target = parse_pg_url(pg_url, "test")
    with Sink() as sink:
        cli = Cli(target, sink.port, MAILTOWER_RATE="100")
        mailing_id = await queued_mailing(target, tmp_path, 600)  # 6 s of sending: the dashboard starts well inside
        runner = cli.popen("run", "--until-idle", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: len(sink.deliveries) > 0, timeout=30, what="the other process sending")
            app = DashboardApp(pg_settings(pg_url, sink.port), start_sender=False, operator_tz="UTC")
            async with app.run_test(size=(120, 30)):
                header = app.dashboard.query_one(HeaderLine)
                await wait_for(lambda: _async(f"monitoring mailtower run (pid {runner.pid}" in header.plain), timeout=20)
                assert app.sender is None
                seen: set[int] = set()

                async def progress() -> bool:
                    for m in app.sections.get(Section.CURRENT, []) + app.sections.get(Section.INACTIVE, []):
                        if m.id == mailing_id:
                            seen.add(m.sent)
                    return _done(app, mailing_id)

                await wait_for(progress, timeout=60)
                assert len(seen) >= 2  # the count moved on screen while the other process sent
        finally:
            runner.wait(timeout=60)
        assert runner.returncode == 0, runner.stderr.read().decode() if runner.stderr else ""
        assert sink.received() == Counter({f"user{i}@example.com": 1 for i in range(600)})


async def queued_mailing(target: object, tmp_path: Path, n: int) -> int:
    store = await open_store(target)
    try:
        people = write_csv(tmp_path / "r.csv", recipients(n))
        mailing_id, _ = await create_mailing(store, Draft("m", "s", "news@example.org", "Hi", None), people, lambda r: None)
        await Lifecycle(store).send_now(mailing_id)
        return mailing_id
    finally:
        await store.close()


def _done(app: DashboardApp, mailing_id: int) -> bool:
    return any(m.id == mailing_id and m.state is MailingState.COMPLETED for m in app.sections.get(Section.INACTIVE, []))


async def _async(value: bool) -> bool:
    return value


@pytest.fixture(autouse=True)
def _no_inherited_db(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILTOWER_DB", raising=False)


def test_a_sender_killed_mid_send_frees_the_lease_and_the_next_one_finishes(pg_url: str, tmp_path: Path) -> None:
    """kill -9: the server ends the dead sender's session, which drops its advisory lock; the next
    sender takes over at once, sends the in-doubt rows again, and nobody is lost (duplicates at
    most one per connection)."""
    import signal

    target = parse_pg_url(pg_url, "test")
    with Sink() as sink:
        cli = Cli(target, sink.port, MAILTOWER_SMTP_CONNECTIONS="3", MAILTOWER_RATE="200")
        new_queued(cli, tmp_path, 300)
        victim = cli.popen("run", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: len(sink.deliveries) >= 50, timeout=30, what="the victim sending")
        finally:
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=30)
        code, _, err = cli("run", "--until-idle")
        assert code == 0, err
        received = sink.received()
    assert set(received) == {f"user{i}@example.com" for i in range(300)}
    assert sum(received.values()) - 300 <= 3  # at most the killed sender's connections
    doc = json.loads(cli.ok("status", "--json"))
    (item,) = doc["inactive"]
    assert (item["state"], item["sent"]) == ("completed", 300)
