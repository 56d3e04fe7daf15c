"""The PostgreSQL store underneath (issue 15 item 2): the schema matches SQLite's, writes are one
at a time across processes, the dashboard's change probe moves, a dropped connection comes back,
and the test harness fails loudly when the server cannot be had."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from mailtower.core.db_target import parse_pg_url
from mailtower.core.domain import RecipientState
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.operations import Draft, create_mailing
from mailtower.core.pg_schema import PG_SCHEMA_VERSION
from mailtower.core.store import SCHEMA_VERSION, Store, open_store
from mailtower.core.store_pg import PgStore
from tests.core.test_pg_batch import sending_mailing
from tests.helpers import recipients, write_csv
from tests.pg_server import connect, sql_rows

ROOT = Path(__file__).resolve().parents[2]


async def test_both_engines_have_the_same_tables_columns_and_indexes(tmp_path: Path, pg_url: str) -> None:
    sqlite_store = await open_store(tmp_path / "m.db")
    await sqlite_store.close()
    pg = parse_pg_url(pg_url, "test")
    tables = [t for (t,) in sql_rows(tmp_path / "m.db", "SELECT name FROM sqlite_master WHERE type = 'table' "
                                                          "AND name != 'sqlite_sequence'")]
    sqlite_columns = {(t, c) for t in tables for (c,) in sql_rows(tmp_path / "m.db", f"SELECT name FROM pragma_table_info('{t}')")}
    pg_columns = set(sql_rows(pg, "SELECT table_name, column_name FROM information_schema.columns "
                                  "WHERE table_schema = 'public'"))
    assert pg_columns == sqlite_columns
    sqlite_indexes = {n for (n,) in sql_rows(tmp_path / "m.db", "SELECT name FROM sqlite_master WHERE type = 'index' "
                                                                 "AND name NOT LIKE 'sqlite_autoindex%'")}
    pg_indexes = {n for (n,) in sql_rows(pg, "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' "
                                             "AND indexname NOT LIKE '%_pkey'")}
    # The one planned difference: PostgreSQL keeps recipients_remaining, which SQLite's schema 8
    # dropped (PgStore._remaining_rows says why).
    assert pg_indexes == sqlite_indexes | {"recipients_remaining"}
    assert sql_rows(pg, "SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
    assert PG_SCHEMA_VERSION == SCHEMA_VERSION


async def test_a_new_empty_database_gets_the_schema_and_a_newer_one_is_refused(pg_server) -> None:
    url = pg_server.new_database(empty=True)
    try:
        target = parse_pg_url(url, "test")
        store = await open_store(target)
        assert isinstance(store, PgStore) and await store.meta("schema_version") == str(SCHEMA_VERSION)
        await store.close()
        store = await open_store(target)  # opening again changes nothing
        await store.close()
        with connect(target) as conn:
            conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
        with pytest.raises(Exception) as caught:
            await open_store(target)
        assert "schema version 99 is newer" in str(caught.value)
    finally:
        pg_server.drop_database(url)


async def test_a_database_with_tables_of_its_own_is_refused(pg_server) -> None:
    url = pg_server.new_database(empty=True)
    try:
        with connect(parse_pg_url(url, "test")) as conn:
            conn.execute("CREATE TABLE mailings (id int)")
        with pytest.raises(Exception) as caught:
            await open_store(parse_pg_url(url, "test"))
        assert "use an empty database" in str(caught.value) and "mailings" in str(caught.value)
    finally:
        pg_server.drop_database(url)


async def new_mailing(store: Store, tmp_path: Path, n: int = 5) -> int:
    path = write_csv(tmp_path / "r.csv", recipients(n))
    mailing_id, _ = await create_mailing(store, Draft("m", "s", "news@example.org", "Hi", None), path, lambda r: None)
    return mailing_id


async def test_data_version_moves_when_another_connection_commits(pg_url: str, tmp_path: Path) -> None:
    target = parse_pg_url(pg_url, "test")
    watcher, writer = await open_store(target), await open_store(target)
    try:
        before = await watcher.data_version()
        assert await watcher.data_version() == before  # nothing happened: no change
        await new_mailing(writer, tmp_path)
        assert await watcher.data_version() != before
    finally:
        await watcher.close()
        await writer.close()


async def test_writes_of_two_stores_are_one_at_a_time(pg_url: str, tmp_path: Path) -> None:
    """A write transaction holds the database's write lock until it commits: a second store's
    write waits for it, as BEGIN IMMEDIATE does on SQLite."""
    target = parse_pg_url(pg_url, "test")
    first, second = await open_store(target), await open_store(target)
    try:
        mailing_id = await new_mailing(first, tmp_path)
        order: list[str] = []
        holding = asyncio.Event()

        async def slow_writer() -> None:
            async with first.write() as tx:
                holding.set()
                await tx.add_event(mailing_id, "first")
                await asyncio.sleep(0.3)  # holds the lock while the other tries
                order.append("first commits")

        async def other_writer() -> None:
            await holding.wait()
            async with second.write() as tx:
                order.append("second writes")
                await tx.add_event(mailing_id, "second")

        await asyncio.wait_for(asyncio.gather(slow_writer(), other_writer()), timeout=20)
        assert order == ["first commits", "second writes"]
        kinds = [k for _, k, _ in await second.events(mailing_id)]
        assert kinds[-2:] == ["first", "second"]
    finally:
        await first.close()
        await second.close()


async def test_a_connection_the_server_dropped_is_opened_again(pg_url: str, tmp_path: Path) -> None:
    target = parse_pg_url(pg_url, "test")
    store = await open_store(target)
    try:
        mailing_id = await new_mailing(store, tmp_path)
        backend = store.pg.conn.info.backend_pid  # type: ignore[attr-defined]
        with connect(target) as admin:
            admin.execute("SELECT pg_terminate_backend(?)", (backend,))
        # The first statement may find the connection gone (one error, no traceback to the user)...
        try:
            await store.mailing(mailing_id)
        except psycopg.OperationalError:
            pass
        # ...after which the store works again, reads and writes.
        assert (await store.mailing(mailing_id)).total == 5
        await Lifecycle(store).send_now(mailing_id)
        assert (await store.mailing(mailing_id)).state.value == "queued"
        assert store.pg.conn.info.backend_pid != backend  # type: ignore[attr-defined]
    finally:
        await store.close()


async def test_a_command_that_lost_its_connection_keeps_its_short_lock_wait(pg_url: str, tmp_path: Path) -> None:
    """A CLI command waits 20 s for another process's lock, not a sender's two minutes: the
    connection opened again after a loss keeps that wait."""
    from mailtower.core.store_pg import OPERATOR_LOCK_TIMEOUT

    target = parse_pg_url(pg_url, "test")
    store = await open_store(target)
    try:
        await store.operator_lock_wait()  # type: ignore[attr-defined]
        backend = store.pg.conn.info.backend_pid  # type: ignore[attr-defined]
        with connect(target) as admin:
            admin.execute("SELECT pg_terminate_backend(?)", (backend,))
        with contextlib.suppress(psycopg.OperationalError):  # the first statement may find it gone
            await store.mailings()
        await store.mailings()  # ...and the next opens it again
        async with store.pg.conn.cursor() as cur:  # type: ignore[attr-defined]
            await cur.execute("SHOW lock_timeout")
            shown = (await cur.fetchone())[0]  # type: ignore[index]
        assert store.pg.conn.info.backend_pid != backend  # type: ignore[attr-defined]
        assert shown == f"{int(OPERATOR_LOCK_TIMEOUT)}s"
    finally:
        await store.close()


async def test_record_and_claim_hands_out_disjoint_batches_to_two_stores(pg_url: str, tmp_path: Path) -> None:
    """The claim query skips rows another transaction holds (FOR UPDATE SKIP LOCKED); with the
    write lock today the two claims run one after the other, and each sender's own held rows
    are never handed back to it."""
    target = parse_pg_url(pg_url, "test")
    a, b = await open_store(target), await open_store(target)
    try:
        mailing_id = await sending_mailing(a, tmp_path, 10)
        first, _ = await a.record_and_claim(mailing_id, [], 4)
        again, _ = await a.record_and_claim(mailing_id, [], 4, held={c.id for c in first})
        assert len(first) == 4 and len(again) == 4 and not {c.id for c in first} & {c.id for c in again}
        ids = sorted(c.id for c in first + again)
        other, _ = await b.record_and_claim(mailing_id, [], 100, held=ids)
        assert sorted(c.id for c in other) == sorted(set(range(1, 11)) - set(ids))
    finally:
        await a.close()
        await b.close()


async def test_a_sender_batch_after_a_dropped_connection_prepares_again_and_counts_once(pg_url: str, tmp_path: Path) -> None:
    """The batch's statements are prepared per connection: the connection opened after a loss
    gets them again, and a batch that failed with the connection wrote nothing (one message, one
    transaction), so the outcomes written again count once."""
    from mailtower.core.store import Outcome

    target = parse_pg_url(pg_url, "test")
    store = await open_store(target)
    try:
        mailing_id = await sending_mailing(store, tmp_path, 6)
        claimed, _ = await store.record_and_claim(mailing_id, [], 6)
        ids = [c.id for c in claimed]
        _, mailing = await store.record_and_claim(mailing_id, [Outcome(ids[0], RecipientState.SENT, 250)], 0, marks=ids[1:3])
        assert mailing.sent == 1
        backend = store.pg.conn.info.backend_pid  # type: ignore[attr-defined]
        with connect(target) as admin:
            admin.execute("SELECT pg_terminate_backend(?)", (backend,))
        outcomes = [Outcome(ids[1], RecipientState.SENT, 250), Outcome(ids[2], RecipientState.FAILED, 550, "5.1.1 no")]
        try:
            _, mailing = await store.record_and_claim(mailing_id, outcomes, 0, marks=ids[3:4])
        except psycopg.OperationalError:  # the batch found the connection gone: written again
            _, mailing = await store.record_and_claim(mailing_id, outcomes, 0, marks=ids[3:4])
        assert store.pg.conn.info.backend_pid != backend  # type: ignore[attr-defined]
        assert (mailing.sent, mailing.failed) == (2, 1)
        states = dict(sql_rows(target, "SELECT id, state FROM recipients WHERE mailing_id = ?", (mailing_id,)))
        assert [states[i] for i in ids] == ["sent", "sent", "failed", "sending", "pending", "pending"]
    finally:
        await store.close()


async def test_two_senders_batches_add_up_on_the_mailing(pg_url: str, tmp_path: Path) -> None:
    """Each batch adds its own outcomes to the mailing's counters in its last statement; two
    stores writing at once (fleet batches overlap) lose no count."""
    from mailtower.core.store import Outcome

    target = parse_pg_url(pg_url, "test")
    a, b = await open_store(target), await open_store(target)
    try:
        mailing_id = await sending_mailing(a, tmp_path, 40)
        mine, _ = await a.record_and_claim(mailing_id, [], 20)
        theirs, _ = await b.record_and_claim(mailing_id, [], 20, held=[c.id for c in mine])

        async def send(store: Store, rows: list[int]) -> None:
            for i in range(0, len(rows), 2):
                await store.record_and_claim(mailing_id, [Outcome(rows[i], RecipientState.SENT, 250),
                                                          Outcome(rows[i + 1], RecipientState.DEFERRED, 451, "later",
                                                                  next_attempt_at=4e9)], 0)

        await asyncio.wait_for(asyncio.gather(send(a, [c.id for c in mine]), send(b, [c.id for c in theirs])), 30)
        mailing = await a.mailing(mailing_id)
        assert (mailing.sent, mailing.deferred) == (20, 20)
    finally:
        await a.close()
        await b.close()


def _pytest_child(env_extra: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_child.py"
    test.write_text("def test_needs_postgres(pg_url):\n    assert pg_url\n", encoding="utf-8")
    # The child uses this repository's fixtures (tests/conftest.py) through -p.
    env = {**os.environ, **env_extra, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "--rootdir", str(tmp_path), str(test)],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
    )


def test_without_postgres_binaries_the_postgres_half_fails_saying_what_to_install(tmp_path: Path) -> None:
    proc = _pytest_child({"PG_BINDIR": str(tmp_path / "nowhere"), "MAILTOWER_TESTS_NO_POSTGRES": ""}, tmp_path)
    assert proc.returncode == 1, proc.stdout
    assert "PostgreSQL binaries (initdb, pg_ctl) not found" in proc.stdout and "apt-get install postgresql" in proc.stdout
    skipped = _pytest_child({"PG_BINDIR": str(tmp_path / "nowhere"), "MAILTOWER_TESTS_NO_POSTGRES": "1"}, tmp_path)
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout
