"""Moving recipients between mailings in one statement: a wave schedule splits a mailing into all
its waves at once (Tx.move_waiting_by_zone) and a wave group becomes one mailing again the same
way (Tx.gather_waiting). Only recipients not yet sent to move, with the counters that describe
them. On SQLite a move that is a large share of the table sets the indexes naming `mailing_id`
aside and builds them again (a million-recipient wave schedule held the write lock ~50 s); the
indexes come back exactly as they were, and a failure rolls the drop back with everything else.

Real databases: SQLite files, and a throw-away PostgreSQL for the tests on both engines."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mailtower.core import store as store_module
from mailtower.core.domain import Mailing
from mailtower.core.store import Store, open_store
from tests.core.test_waves import new_mailing as mailing_in_zones
from tests.pg_server import connect

ZONES = {"Europe/Berlin": 4, "Asia/Tokyo": 3, "America/Chicago": 3}


@pytest.fixture
async def store(db_target):
    opened = await open_store(db_target)
    yield opened
    await opened.close()


def set_states(db: object, mailing_id: int) -> None:
    """Some history in each zone: sent and failed rows (which stay), a deferred one in doubt and a
    `sending` one (which move), with the mailing's counters saying so."""
    with connect(db) as conn:
        ids = {zone: [r[0] for r in conn.execute(
            "SELECT id FROM recipients WHERE mailing_id = ? AND tz = ? ORDER BY id", (mailing_id, zone))]
            for zone in ZONES}
        berlin, tokyo, chicago = ids["Europe/Berlin"], ids["Asia/Tokyo"], ids["America/Chicago"]
        conn.execute("UPDATE recipients SET state = 'sent' WHERE id = ?", (berlin[0],))
        conn.execute("UPDATE recipients SET state = 'deferred', in_doubt = 1 WHERE id = ?", (tokyo[0],))
        conn.execute("UPDATE recipients SET state = 'failed' WHERE id = ?", (tokyo[1],))
        conn.execute("UPDATE recipients SET state = 'sending' WHERE id = ?", (chicago[0],))
        conn.execute("UPDATE mailings SET sent = 1, failed = 1, deferred = 1, in_doubt = 1 WHERE id = ?", (mailing_id,))


async def empty_part(store: Store, source: int) -> int:
    async with store.write() as tx:
        return await tx.insert_mailing(
            name="part", subject="Hi", from_addr="news@example.org", text_body="Hello", html_body=None, fields=(),
            parent_id=source,
        )


def counters(m: Mailing) -> tuple[int, int, int, int, int]:
    return m.total, m.sent, m.failed, m.deferred, m.in_doubt


async def test_a_split_moves_only_waiting_rows_with_their_counters_and_a_gather_brings_them_back(
    store: Store, db_target: object, tmp_path: Path
) -> None:
    source = await mailing_in_zones(store, tmp_path, ZONES)
    set_states(db_target, source)
    tokyo, chicago = await empty_part(store, source), await empty_part(store, source)
    async with store.write() as tx:
        moved = await tx.move_waiting_by_zone(source, {"Asia/Tokyo": tokyo, "America/Chicago": chicago})
    # Tokyo: 3 rows, one failed stays; Chicago: all 3 (one of them `sending`).
    assert moved == {tokyo: 2, chicago: 3}
    assert counters(await store.mailing(source)) == (5, 1, 1, 0, 0)
    assert counters(await store.mailing(tokyo)) == (2, 0, 0, 1, 1)
    assert counters(await store.mailing(chicago)) == (3, 0, 0, 0, 0)
    with connect(db_target) as conn:
        stayed = conn.execute("SELECT tz, state FROM recipients WHERE mailing_id = ? ORDER BY id", (source,)).fetchall()
    assert sorted(map(tuple, stayed)) == sorted(
        [("Europe/Berlin", "sent"), *[("Europe/Berlin", "pending")] * 3, ("Asia/Tokyo", "failed")]
    )

    async with store.write() as tx:
        came = await tx.gather_waiting([tokyo, chicago], source)
    assert came == {tokyo: 2, chicago: 3}
    assert counters(await store.mailing(source)) == (10, 1, 1, 1, 1)
    assert counters(await store.mailing(tokyo)) == counters(await store.mailing(chicago)) == (0, 0, 0, 0, 0)


async def test_nothing_to_move_changes_nothing(store: Store, db_target: object, tmp_path: Path) -> None:
    source = await mailing_in_zones(store, tmp_path, ZONES)
    part = await empty_part(store, source)
    async with store.write() as tx:
        assert await tx.move_waiting_by_zone(source, {}) == {}
        assert await tx.move_waiting_by_zone(source, {"Australia/Perth": part}) == {}
        assert await tx.gather_waiting([], source) == {}
        assert await tx.gather_waiting([part], source) == {}
    assert (await store.mailing(source)).total == 10 and (await store.mailing(part)).total == 0


# --- SQLite: the indexes set aside and built again ----------------------------------------------


def schema(path: Path) -> tuple[int, set[tuple[str, str]], str]:
    """(schema_version, the recipients indexes as (name, sql), integrity_check)."""
    with sqlite3.connect(path) as conn:
        version = conn.execute("PRAGMA schema_version").fetchone()[0]
        indexes = set(conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'recipients' AND sql IS NOT NULL"))
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
    return version, indexes, check


def placement(path: Path) -> list[tuple[int, int]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT id, mailing_id FROM recipients ORDER BY id").fetchall()


@pytest.fixture
async def on_sqlite(tmp_path: Path):
    """A SQLite store, a mailing of ten recipients and an empty part of it: (store, source, part)."""
    store = await open_store(tmp_path / "m.db")
    try:
        source = await mailing_in_zones(store, tmp_path, ZONES)
        yield store, source, await empty_part(store, source)
    finally:
        await store.close()


async def test_a_move_of_a_large_share_builds_the_indexes_again_exactly_as_they_were(
    on_sqlite: tuple[Store, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, source, part = on_sqlite
    version, indexes, _ = schema(store.path)
    assert {name for name, _ in indexes} >= {"recipients_key", "recipients_work"}

    # 3 rows of 10: kept up to date row by row with the shipped thresholds.
    async with store.write() as tx:
        assert await tx.move_waiting_by_zone(source, {"Asia/Tokyo": part}) == {part: 3}
    assert schema(store.path) == (version, indexes, "ok")

    monkeypatch.setattr(store_module, "REBUILD_MIN_ROWS", 1)  # a table of 10 rows stands for a million
    async with store.write() as tx:
        assert await tx.move_waiting_by_zone(source, {"America/Chicago": part}) == {part: 3}
    after, rebuilt, check = schema(store.path)
    assert after > version, "the indexes were not built again"
    assert (rebuilt, check) == (indexes, "ok")
    # The rebuilt indexes answer: a duplicate address is still refused, lookups use them.
    with sqlite3.connect(store.path) as conn:
        email_key = conn.execute("SELECT email_key FROM recipients WHERE mailing_id = ? LIMIT 1", (part,)).fetchone()[0]
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO recipients (mailing_id, email, email_key) VALUES (?, 'x', ?)", (part, email_key))
        plan = " ".join(str(r) for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM recipients WHERE mailing_id = ? AND state = 'pending'", (part,)))
    assert "recipients_work" in plan
    assert [m for _, m in placement(store.path)].count(part) == 6


async def test_a_failure_after_the_indexes_were_set_aside_leaves_them_and_the_rows_as_they_were(
    on_sqlite: tuple[Store, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, source, part = on_sqlite
    before, rows = schema(store.path), placement(store.path)
    monkeypatch.setattr(store_module, "REBUILD_MIN_ROWS", 1)
    with pytest.raises(RuntimeError, match="power cut"):
        async with store.write() as tx:
            await tx.move_waiting_by_zone(source, {"Asia/Tokyo": part, "America/Chicago": part})
            raise RuntimeError("power cut")
    assert schema(store.path) == before
    assert placement(store.path) == rows
    assert (await store.mailing(part)).total == 0 and (await store.mailing(source)).total == 10
