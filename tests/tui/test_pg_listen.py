"""The dashboard on PostgreSQL listens instead of polling (issue 15 item 5, core/pg_listen.py and
tui/refresh.ChangeWatch): an idle dashboard does not ask the server every tick, a burst of
sender commits becomes a few reads, a change made by another process (a CLI command) arrives
promptly, and a listening connection the server drops is opened again."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mailtower.core.config import Settings
from mailtower.core.db_target import parse_pg_url
from mailtower.core.domain import Section
from mailtower.core.operations import Draft, create_mailing
from mailtower.core.pg_listen import NOTIFY_TABLES
from mailtower.core.store import open_store
from mailtower.tui.app import DashboardApp
from tests.helpers import recipients, wait_for, write_csv
from tests.pg_server import sql_execute, sql_rows

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _no_inherited_db(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILTOWER_DB", raising=False)


async def draft(target: object, tmp_path: Path, name: str = "m") -> int:
    store = await open_store(target)
    try:
        people = write_csv(tmp_path / f"{name}.csv", recipients(3))
        mailing_id, _ = await create_mailing(store, Draft(name, "s", "news@example.org", "Hi", None), people, lambda r: None)
    finally:
        await store.close()
    return mailing_id


def counted(obj: Any, name: str) -> list[float]:
    """Record when `obj.name` is called (it still runs): how often the dashboard reads."""
    calls: list[float] = []
    real = getattr(obj, name)

    async def wrapper(*args: Any, **kw: Any) -> Any:
        calls.append(time.monotonic())
        return await real(*args, **kw)

    setattr(obj, name, wrapper)
    return calls


def inactive(app: DashboardApp, mailing_id: int) -> Any:
    return next((m for m in app.sections.get(Section.INACTIVE, []) if m.id == mailing_id), None)


def check(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return predicate()
    return probe


def test_the_schema_has_statement_level_notify_triggers(pg_url: str) -> None:
    target = parse_pg_url(pg_url, "test")
    rows = sql_rows(target, "SELECT c.relname, t.tgtype & 1 FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                            "WHERE t.tgname LIKE 'mailtower_notify_%' ORDER BY 1")
    assert rows == [(table, 0) for table in sorted(NOTIFY_TABLES)]  # bit 0 clear: FOR EACH STATEMENT
    assert not sql_rows(target, "SELECT 1 FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                                "WHERE c.relname = 'recipients' AND t.tgname LIKE 'mailtower_notify_%'")


async def test_sender_commits_cause_few_reads_and_an_idle_dashboard_asks_nothing(pg_url: str, tmp_path: Path) -> None:
    target = parse_pg_url(pg_url, "test")
    mailing_id = await draft(target, tmp_path)
    app = DashboardApp(Settings(db=target), start_sender=False, operator_tz="UTC")  # type: ignore[arg-type]
    async with app.run_test(size=(120, 30)):
        await wait_for(check(lambda: app.change_watch.listener is not None and app.change_watch.listener.connected),
                       timeout=20)
        assert app.store is not None
        # The connection itself counts as a change (what happened before was not heard): read once.
        await wait_for(check(lambda: app._data_version == app.change_watch.heard), timeout=10)
        probes = counted(app.store, "data_version")
        reads = counted(app.store, "section_signatures")
        # Idle: two seconds (four ticks of the old poll) without a single question to the server.
        idle_from = time.monotonic()
        await wait_for(check(lambda: time.monotonic() - idle_from >= 2.0), timeout=5)
        assert [t for t in probes if t >= idle_from] == [] and reads == []

        commits = 200  # as a sender's batches: each commit moves the mailing's counters

        def sender_commits() -> None:
            import psycopg

            with psycopg.connect(target.url, autocommit=True) as conn:
                for _ in range(commits):
                    with conn.transaction():
                        conn.execute("UPDATE mailings SET sent = sent + 1 WHERE id = %s", (mailing_id,))

        started = time.monotonic()
        await asyncio.to_thread(sender_commits)
        await wait_for(check(lambda: getattr(inactive(app, mailing_id), "sent", 0) == commits), timeout=10)
        took = time.monotonic() - started
        # Coalesced: at most a few reads a second, whatever the number of commits.
        assert 1 <= len(reads) <= 3 * took + 3 < commits / 10, (len(reads), took)


async def test_a_cli_change_reaches_the_dashboard_promptly(pg_url: str, tmp_path: Path) -> None:
    target = parse_pg_url(pg_url, "test")
    mailing_id = await draft(target, tmp_path)
    app = DashboardApp(Settings(db=target), start_sender=False, operator_tz="UTC")  # type: ignore[arg-type]
    async with app.run_test(size=(120, 30)):
        app.change_watch.safety_poll = 3600.0  # only the notification can bring it
        await wait_for(check(lambda: app.change_watch.listener is not None and app.change_watch.listener.connected),
                       timeout=20)
        await wait_for(check(lambda: inactive(app, mailing_id) is not None), timeout=10)
        env = {**os.environ, "MAILTOWER_CONFIG": os.devnull, "MAILTOWER_DB": target.url}
        started = time.monotonic()
        renamed = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "mailtower.tui.cli", "schedule", str(mailing_id), "--at",
                             "2099-01-01 09:00", "--tz", "UTC"],
            capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)
        assert renamed.returncode == 0, renamed.stderr
        done = time.monotonic()
        await wait_for(check(lambda: any(m.id == mailing_id for m in app.sections.get(Section.SCHEDULED, []))),
                       timeout=10)
        assert time.monotonic() - done < 2.0, "the dashboard saw another process's change late"
        assert done - started < 60


async def test_the_listener_reconnects_when_the_server_drops_it(pg_url: str, tmp_path: Path) -> None:
    target = parse_pg_url(pg_url, "test")
    mailing_id = await draft(target, tmp_path)
    app = DashboardApp(Settings(db=target), start_sender=False, operator_tz="UTC")  # type: ignore[arg-type]
    async with app.run_test(size=(120, 30)):
        app.change_watch.safety_poll = 3600.0
        await wait_for(check(lambda: app.change_watch.listener is not None and app.change_watch.listener.connected),
                       timeout=20)
        listener = app.change_watch.listener
        ended = sql_rows(target, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE application_name = 'mailtower-listen' AND datname = current_database()")
        assert ended == [(True,)]
        await wait_for(check(lambda: listener.connects >= 2 and listener.connected), timeout=20)
        sql_execute(target, "UPDATE mailings SET name = 'renamed elsewhere' WHERE id = ?", (mailing_id,))
        await wait_for(check(lambda: getattr(inactive(app, mailing_id), "name", "") == "renamed elsewhere"), timeout=5)
    assert app.change_watch.listener is None  # closed with the dashboard
    assert sql_rows(target, "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = 'mailtower-listen' "
                            "AND datname = current_database()") == [(0,)]


async def test_a_login_that_may_not_add_the_triggers_polls_instead(pg_url: str, tmp_path: Path) -> None:
    target = parse_pg_url(pg_url, "test")
    mailing_id = await draft(target, tmp_path)
    database = pg_url.rsplit("/", 1)[1]
    role = f"ro_{database}"
    for table in NOTIFY_TABLES:  # a database from before the triggers
        sql_execute(target, f"DROP TRIGGER mailtower_notify_{table} ON {table}")
    sql_execute(target, f"CREATE ROLE {role} LOGIN")
    sql_execute(target, f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
    sql_execute(target, f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}")
    limited = parse_pg_url(pg_url.replace("postgresql://mailtower@", f"postgresql://{role}@"), "test")
    try:
        app = DashboardApp(Settings(db=limited), start_sender=False, operator_tz="UTC")  # type: ignore[arg-type]
        async with app.run_test(size=(120, 30)):
            await wait_for(check(lambda: app.change_watch.listener is not None
                                 and "permission" in app.change_watch.listener.unavailable), timeout=20)
            await wait_for(check(lambda: inactive(app, mailing_id) is not None), timeout=10)
            sql_execute(target, "UPDATE mailings SET name = 'renamed elsewhere' WHERE id = ?", (mailing_id,))
            # Not listening: polled as on SQLite, so it arrives within a couple of ticks, not 5 s.
            await wait_for(check(lambda: getattr(inactive(app, mailing_id), "name", "") == "renamed elsewhere"),
                           timeout=3)
    finally:
        sql_execute(target, f"REASSIGN OWNED BY {role} TO mailtower")
        sql_execute(target, f"DROP OWNED BY {role}")
        sql_execute(target, f"DROP ROLE {role}")


async def test_a_database_from_before_the_triggers_gets_them_from_its_first_dashboard(pg_url: str, tmp_path: Path) -> None:
    target = parse_pg_url(pg_url, "test")
    mailing_id = await draft(target, tmp_path)
    for table in NOTIFY_TABLES:
        sql_execute(target, f"DROP TRIGGER mailtower_notify_{table} ON {table}")
    app = DashboardApp(Settings(db=target), start_sender=False, operator_tz="UTC")  # type: ignore[arg-type]
    async with app.run_test(size=(120, 30)):
        app.change_watch.safety_poll = 3600.0
        await wait_for(check(lambda: app.change_watch.listener is not None and app.change_watch.listener.connected),
                       timeout=20)
        await wait_for(check(lambda: inactive(app, mailing_id) is not None), timeout=10)
        sql_execute(target, "UPDATE mailings SET name = 'renamed elsewhere' WHERE id = ?", (mailing_id,))
        await wait_for(check(lambda: getattr(inactive(app, mailing_id), "name", "") == "renamed elsewhere"), timeout=5)
    assert len(sql_rows(target, "SELECT 1 FROM pg_trigger WHERE tgname LIKE 'mailtower_notify_%'")) == len(NOTIFY_TABLES)
