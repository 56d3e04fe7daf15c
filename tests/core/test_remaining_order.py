"""The remaining recipients without an index of their own on SQLite (schema 8, issue 12).

A `sending` mark and an outcome change a row's `state`; every index that names `state` (in its
columns or its WHERE) is updated by both. Only recipients_work does now; the remaining recipients
are read by merging one ordered range of it per remaining state (store._remaining_arms;
PostgreSQL keeps its partial index). These tests check that both engines give the remaining rows
in ledger order, a page and an offset at a time, with and without a search, and that no other
SQLite index names `state`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from mailtower.core.domain import RecipientState
from mailtower.core.store import REMAINING_STATES, Outcome, open_store
from tests.helpers import sending_mailing


async def test_remaining_pages_merge_every_remaining_state_in_ledger_order(tmp_path: Path, db_target: Path) -> None:
    store = await open_store(db_target)  # both engines (issue 15)
    try:
        mailing_id, claimed, known = await sending_mailing(store, tmp_path / "p.csv", 40, 40)
        ids = sorted(c.id for c in claimed)
        # Interleaved: every state at every distance from the others, so a page boundary falls
        # inside runs of each remaining state and between them.
        plan = ["sent", "pending", "deferred", "sending", "failed", "pending", "sending", "deferred"] * 5
        outcomes = {
            "sent": lambda i: Outcome(i, RecipientState.SENT, 250),
            "failed": lambda i: Outcome(i, RecipientState.FAILED, 550, "no such user"),
            "deferred": lambda i: Outcome(i, RecipientState.DEFERRED, 451, "later", next_attempt_at=9e9),
        }
        marks = [i for i, state in zip(ids, plan) if state in ("sending", "sent", "failed", "deferred")]
        _, known = await store.record_and_claim(mailing_id, [], 0, marks=marks, known=known)
        settled = [outcomes[state](i) for i, state in zip(ids, plan) if state in outcomes]
        await store.record_and_claim(mailing_id, settled, 0, known=known)

        expected = [i for i, state in zip(ids, plan) if state in REMAINING_STATES]
        assert len(expected) == 30 and {s for s in plan if s in REMAINING_STATES} == set(REMAINING_STATES)
        for limit in (1, 3, 7, 100):
            seen: list[int] = []
            after = 0
            for _ in range(len(expected) + 2):  # bounded: one page per row at most, then the empty one
                page = await store.remaining(mailing_id, after_id=after, limit=limit)
                if not page:
                    break
                assert len(page) <= limit
                seen += [r.id for r in page]
                after = page[-1].id
            assert seen == expected, limit
        states = {r.id: r.state.value for r in await store.remaining(mailing_id, limit=100)}
        assert states == {i: state for i, state in zip(ids, plan) if state in REMAINING_STATES}
        assert await store.remaining_count(mailing_id) == len(expected)
        for offset in (0, 1, 12, len(expected) - 1):
            assert await store.remaining_ids_at(mailing_id, offset) == expected[offset] - 1
        assert await store.remaining_ids_at(mailing_id, len(expected)) == 0  # past the end

        # A search is applied in every state's range: user1x addresses among the remaining ones.
        emails = {r.id: r.email for r in await store.recipients(mailing_id)}
        found = [i for i in expected if "user1" in emails[i]]
        assert found and [r.id for r in await store.remaining(mailing_id, limit=100, search="USER1")] == found
        assert await store.remaining_count(mailing_id, search="user1") == len(found)
        assert await store.remaining_ids_at(mailing_id, len(found) - 1, search="user1") == found[-1] - 1
    finally:
        await store.close()


def test_no_index_but_recipients_work_names_a_recipients_state(tmp_path: Path) -> None:
    """Each index that names `state` is updated twice a message by the sender's write before a
    final dot (SQLite updates an index when a column it names, WHERE included, is SET): a new
    one must be worth that cost. recipients_remaining, dropped by migration 8 (on SQLite), was
    a third of that write."""
    import asyncio

    async def create() -> None:
        await (await open_store(tmp_path / "m.db")).close()

    asyncio.run(create())
    with sqlite3.connect(tmp_path / "m.db") as conn:
        indexes = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'recipients'"
                               " AND sql IS NOT NULL").fetchall()
    naming_state = sorted(name for name, sql in indexes if "state" in sql)
    assert naming_state == ["recipients_work"], naming_state


async def test_a_database_of_schema_7_loses_the_remaining_index_and_keeps_its_rows(tmp_path: Path) -> None:
    from mailtower.core.store import MIGRATIONS, SCHEMA_VERSION, Store, _statements

    path = tmp_path / "v7.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for version in range(1, 8):
            for statement in _statements(MIGRATIONS[version]):
                conn.execute(statement)
        conn.execute("INSERT INTO meta VALUES ('schema_version', '7')")
        conn.execute("INSERT INTO mailings (id, name, subject, from_addr, state, created_at, updated_at, total) "
                     "VALUES (1, 'm', 'Hi', 'a@example.org', 'stopped', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', 5)")
        for i, state in enumerate(["sent", "deferred", "pending", "sending", "failed"], start=1):
            conn.execute("INSERT INTO recipients (id, mailing_id, email, email_key, name, state) VALUES (?, 1, ?, ?, '', ?)",
                         (i, f"r{i}@example.org", f"r{i}@example.org", state))
        assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'recipients_remaining'").fetchone()
    store = await Store.open(path)
    try:
        assert await store.meta("schema_version") == str(SCHEMA_VERSION) == "9"
        assert [(r.id, r.state.value) for r in await store.remaining(1)] == [(2, "deferred"), (3, "pending"), (4, "sending")]
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'recipients_remaining'").fetchone() is None
