"""The sender's batch on PostgreSQL (issue 15, speed): the whole record-and-claim transaction
costs one round trip to the server, with the fleet's semantics intact (the fence refuses rows
another sender owns, claims of two senders at once are disjoint, suppressed addresses are never
marked, a row written twice in one batch ends as its last outcome).

Round trips are counted by a real TCP relay between the store and the server on 127.0.0.1:
each time the client speaks after the server did is one wait for the server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from mailtower.core.db_target import PgTarget, parse_pg_url
from mailtower.core.domain import RecipientState
from mailtower.core.errors import UserError
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.operations import Draft, create_mailing
from mailtower.core.store import Outcome, Store, open_store
from mailtower.core import store_pg
from mailtower.core.store_pg import array_literal
from tests.helpers import recipients, write_csv
from tests.pg_server import sql_execute, sql_rows


class TurnCounter:
    """A TCP relay to the server that counts the client's turns: data from the client after data
    from the server (or first) is one more wait for the server."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.turns = 0
        self._server_spoke_last = True
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Server | None = None

    async def start(self) -> int:
        self._listener = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self._listener.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(self.host, self.port)
        pumps = [asyncio.create_task(self._pump(client_r, server_w, from_client=True)),
                 asyncio.create_task(self._pump(server_r, client_w, from_client=False))]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            for writer in (client_w, server_w):
                writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, from_client: bool) -> None:
        while data := await reader.read(65536):
            if from_client and self._server_spoke_last:
                self.turns += 1
            self._server_spoke_last = not from_client
            writer.write(data)
            await writer.drain()


@contextlib.asynccontextmanager
async def counted(url: str) -> AsyncIterator[tuple[PgTarget, TurnCounter]]:
    parts = urlsplit(url)
    counter = TurnCounter(parts.hostname or "127.0.0.1", parts.port or 5432)
    port = await counter.start()
    user = f"{parts.username}@" if parts.username else ""
    try:
        yield parse_pg_url(urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}")), "test"), counter
    finally:
        await counter.stop()


async def sending_mailing(store: Store, tmp_path: Path, n: int) -> int:
    people = write_csv(tmp_path / "r.csv", recipients(n))
    mailing_id, _ = await create_mailing(store, Draft("m", "s", "news@example.org", "Hi", None), people, lambda r: None)
    await Lifecycle(store).send_now(mailing_id)
    await Lifecycle(store).start(mailing_id)
    return mailing_id


@contextlib.asynccontextmanager
async def opened(pg_url: str) -> AsyncIterator[tuple[PgTarget, Store]]:
    """The test database and a store open on it (closed after)."""
    target = parse_pg_url(pg_url, "test")
    store = await open_store(target)
    try:
        yield target, store
    finally:
        await store.close()


def states(target: PgTarget) -> dict[int, str]:
    return dict(sql_rows(target, "SELECT id, state || ':' || COALESCE(claimed_by, 0) FROM recipients"))


async def test_a_batch_with_outcomes_marks_and_a_claim_is_one_round_trip(pg_url: str, tmp_path: Path) -> None:
    """Statement by statement this batch waited for the server about a dozen times."""
    direct = parse_pg_url(pg_url, "test")  # the test's own reads block: not through the relay on this loop
    async with counted(pg_url) as (target, counter):
        store = await open_store(target)
        try:
            mailing_id = await sending_mailing(store, tmp_path, 60)
            first, _ = await store.record_and_claim(mailing_id, [], 20)
            held = {c.id for c in first}
            for fleet in (False, True):
                if fleet:
                    store.claim_owner = await store.register_sender("host-a", 101, 8)
                    first, _ = await store.record_and_claim(mailing_id, [], 20, held=held)
                    held |= {c.id for c in first}
                outcomes = [Outcome(c.id, RecipientState.SENT, 250) for c in first[:8]]
                outcomes += [Outcome(first[8].id, RecipientState.DEFERRED, 451, "later", next_attempt_at=1e12)]
                before = counter.turns
                claimed, mailing = await store.record_and_claim(
                    mailing_id, outcomes, 10, rate=12.5, marks=[c.id for c in first[9:12]], held=held, barred=set()
                )
                assert counter.turns - before == 1, f"fleet={fleet}: {counter.turns - before} round trips"
                assert len(claimed) == 10 and not {c.id for c in claimed} & held
                held |= {c.id for c in claimed}
                assert [states(direct)[c.id].split(":")[0] for c in first[:12]] == ["sent"] * 8 + ["deferred"] + ["sending"] * 3
            assert (mailing.sent, mailing.deferred) == (16, 2)
        finally:
            await store.close()


async def test_the_fence_refuses_a_row_another_sender_took_over(pg_url: str, tmp_path: Path) -> None:
    target = parse_pg_url(pg_url, "test")
    a = await open_store(target)
    try:
        mailing_id = await sending_mailing(a, tmp_path, 10)
        a.claim_owner = await a.register_sender("host-a", 101, 4)
        claimed, _ = await a.record_and_claim(mailing_id, [], 6)
        other = await a.register_sender("host-b", 102, 4)
        taken = [claimed[0].id, claimed[1].id]
        sql_execute(target, "UPDATE recipients SET claimed_by = ? WHERE id = ANY(?)", (other, taken))
        barred: set[int] = set()
        _, mailing = await a.record_and_claim(
            mailing_id,
            [Outcome(claimed[0].id, RecipientState.SENT, 250), Outcome(claimed[2].id, RecipientState.SENT, 250)],
            0, marks=[claimed[1].id, claimed[3].id], barred=barred,
        )
        assert barred == {claimed[1].id}  # no final dot for the row another sender owns
        assert mailing.sent == 1  # only this sender's own row counts
        rows = states(target)
        assert rows[claimed[0].id] == f"pending:{other}" and rows[claimed[1].id] == f"pending:{other}"
        assert rows[claimed[2].id] == "sent:0" and rows[claimed[3].id] == f"sending:{a.claim_owner}"
    finally:
        await a.close()


async def test_two_fleet_stores_claiming_at_once_get_disjoint_rows_in_queue_order(pg_url: str, tmp_path: Path) -> None:
    target = parse_pg_url(pg_url, "test")
    stores = [await open_store(target) for _ in range(2)]
    try:
        mailing_id = await sending_mailing(stores[0], tmp_path, 200)
        for i, store in enumerate(stores):
            store.claim_owner = await store.register_sender(f"host-{i}", 100 + i, 4)
        held: list[set[int]] = [set(), set()]
        for _ in range(4):
            results = await asyncio.gather(*(s.record_and_claim(mailing_id, [], 25, held=h) for s, h in zip(stores, held)))
            for h, (claimed, _) in zip(held, results):
                ids = [c.id for c in claimed]
                assert ids == sorted(ids) and len(ids) == 25
                h.update(ids)
        assert not held[0] & held[1] and held[0] | held[1] == set(range(1, 201))
        owners = dict(sql_rows(target, "SELECT id, claimed_by FROM recipients"))
        for store, h in zip(stores, held):
            assert {owners[i] for i in h} == {store.claim_owner}
    finally:
        for store in stores:
            await store.close()


async def test_suppressed_rows_are_skipped_counted_and_the_claim_goes_on_past_them(pg_url: str, tmp_path: Path) -> None:
    async with opened(pg_url) as (target, store):
        mailing_id = await sending_mailing(store, tmp_path, 30)
        ids = sorted(i for (i,) in sql_rows(target, "SELECT id FROM recipients"))
        # The first twelve addresses are suppressed: a claim of ten must go past all of them.
        sql_execute(target, "INSERT INTO suppression (key, email, source, reason, added_at)"
                            " SELECT email_key, email, 'manual', '', 'now' FROM recipients WHERE id = ANY(?)", (ids[:12],))
        claimed, mailing = await store.record_and_claim(mailing_id, [], 10)
        assert [c.id for c in claimed] == ids[12:22]
        assert mailing.suppressed == 12
        # A mark of a row suppressed after its claim: barred, `suppressed`, counted once.
        sql_execute(target, "INSERT INTO suppression (key, email, source, reason, added_at)"
                            " SELECT email_key, email, 'manual', '', 'now' FROM recipients WHERE id = ?", (ids[12],))
        barred: set[int] = set()
        _, mailing = await store.record_and_claim(mailing_id, [], 0, marks=[ids[12], ids[13]], barred=barred)
        assert barred == {ids[12]} and mailing.suppressed == 13
        barred = set()
        _, mailing = await store.record_and_claim(mailing_id, [], 0, marks=[ids[12]], barred=barred)
        assert barred == {ids[12]} and mailing.suppressed == 13  # barred again, not counted again
        rows = states(target)
        assert rows[ids[12]] == "suppressed:0" and rows[ids[13]] == "sending:0"


async def test_a_row_written_twice_in_one_batch_ends_as_its_last_outcome(pg_url: str, tmp_path: Path) -> None:
    async with opened(pg_url) as (target, store):
        mailing_id = await sending_mailing(store, tmp_path, 5)
        claimed, _ = await store.record_and_claim(mailing_id, [], 5)
        row = claimed[0].id
        outcomes = [Outcome(row, RecipientState.PENDING, counted_attempt=False),
                    Outcome(claimed[1].id, RecipientState.SENT, 250),
                    Outcome(row, RecipientState.FAILED, 550, "no such user", suppress=True)]
        _, mailing = await store.record_and_claim(mailing_id, outcomes, 0)
        assert (mailing.sent, mailing.failed) == (1, 1)
        assert sql_rows(target, "SELECT state, attempts, last_code FROM recipients WHERE id = ?", (row,)) == [("failed", 1, 550)]
        assert sql_rows(target, "SELECT reason FROM suppression") == [("no such user",)]


@pytest.mark.parametrize("conforming", ["on", "off"])
async def test_replies_with_the_array_syntax_in_them_are_stored_exactly(pg_url: str, tmp_path: Path, conforming: str) -> None:
    """The batch sends its columns as array literals (store_pg.array_literal) inside SQL string
    literals psycopg quotes: a relay's words holding quotes, apostrophes, backslashes, braces,
    commas, the word NULL, SQL or nothing at all are stored as they came, each in its own row, and
    timestamps keep every digit, whether a backslash escapes inside '...' or not
    (standard_conforming_strings off or on)."""
    replies = ['say "hi"', "C:\\path\\", "{a,b}", "NULL", "", "a,b", "tab\tnew\nline", "\\\"", "ünïcödé ✉", " spaced ",
               "it's", "'); DROP TABLE recipients; --", "\\'", "$$ $q$", "100% %s %%"]
    async with opened(pg_url) as (target, store):
        await store.pg.script(f"SET standard_conforming_strings = {conforming}")  # type: ignore[attr-defined]
        mailing_id = await sending_mailing(store, tmp_path, len(replies))
        claimed, _ = await store.record_and_claim(mailing_id, [], len(replies))
        retry_at = 1_900_000_000.123456
        outcomes = [Outcome(c.id, RecipientState.DEFERRED, 451, text, next_attempt_at=retry_at)
                    for c, text in zip(claimed, replies)]
        await store.record_and_claim(mailing_id, outcomes, 0)
        stored = dict(sql_rows(target, "SELECT id, last_error FROM recipients"))
        assert [stored[c.id] for c in claimed] == replies
        assert {r for (r,) in sql_rows(target, "SELECT next_attempt_at FROM recipients")} == {retry_at}


async def test_a_retry_that_is_due_is_claimed_by_the_next_batch_whoever_deferred_it(pg_url: str, tmp_path: Path) -> None:
    """A batch leaves out the statement that makes retries due while the mailing had no deferred
    rows at its last read: a deferral by this store or by another one is still retried at once."""
    async with opened(pg_url) as (target, store):
        mailing_id = await sending_mailing(store, tmp_path, 4)
        claimed, _ = await store.record_and_claim(mailing_id, [], 2)
        assert claimed and (await store.record_and_claim(mailing_id, [], 0))[1].deferred == 0
        mine = Outcome(claimed[0].id, RecipientState.DEFERRED, 451, "later", next_attempt_at=1.0)
        again, mailing = await store.record_and_claim(mailing_id, [mine], 0)
        assert mailing.deferred == 1
        again, _ = await store.record_and_claim(mailing_id, [], 4, held={claimed[1].id})
        assert claimed[0].id in {c.id for c in again}
        other = await open_store(target)
        try:  # another sender defers a row this store holds no count for
            theirs = Outcome(claimed[1].id, RecipientState.DEFERRED, 451, "later", next_attempt_at=1.0)
            await other.record_and_claim(mailing_id, [theirs], 0)
        finally:
            await other.close()
        found: set[int] = set()
        for _ in range(2):  # the first batch reads the new count, the second makes the row due
            picked, _ = await store.record_and_claim(mailing_id, [], 4)
            found |= {c.id for c in picked}
        assert claimed[1].id in found


def test_an_array_literal_quotes_every_string_and_keeps_null_apart() -> None:
    assert array_literal([1, None, True, False, 2.5, 'a"b', "x\\y", "NULL"]) == '{1,NULL,t,f,2.5,"a\\"b","x\\\\y","NULL"}'
    assert array_literal([]) == "{}"


async def test_a_nul_in_an_outcomes_reply_is_refused_and_nothing_is_written(pg_url: str, tmp_path: Path) -> None:
    async with opened(pg_url) as (target, store):
        mailing_id = await sending_mailing(store, tmp_path, 3)
        claimed, _ = await store.record_and_claim(mailing_id, [], 3)
        with pytest.raises(UserError, match="NUL"):
            await store.record_and_claim(
                mailing_id, [Outcome(claimed[0].id, RecipientState.SENT, 250),
                             Outcome(claimed[1].id, RecipientState.FAILED, 550, "bad\0reply")], 0)
        assert (await store.mailing(mailing_id)).sent == 0
        assert set(states(target).values()) == {"pending:0"}
        _, mailing = await store.record_and_claim(mailing_id, [Outcome(claimed[0].id, RecipientState.SENT, 250)], 0)
        assert mailing.sent == 1  # the store goes on


async def test_a_batch_after_a_rollback_finds_its_statements(pg_url: str, tmp_path: Path) -> None:
    """Once psycopg has prepared statements of its own (a query run five times), it follows a
    ROLLBACK with DEALLOCATE ALL, which dropped the batch's prepared statements too: the next
    batch failed with 'prepared statement "mailtower_batch_..." does not exist'."""
    async with opened(pg_url) as (target, store):
        mailing_id = await sending_mailing(store, tmp_path, 6)
        claimed, _ = await store.record_and_claim(mailing_id, [], 3)
        for _ in range(8):  # past psycopg's prepare threshold (5)
            await store.data_version()
        with pytest.raises(RuntimeError):
            async with store.write():
                raise RuntimeError("an operator's change that fails: rolled back")
        _, mailing = await store.record_and_claim(mailing_id, [Outcome(claimed[0].id, RecipientState.SENT, 250)], 0)
        assert mailing.sent == 1


async def test_a_statement_failing_on_the_server_mid_batch_leaves_nothing_of_the_batch(pg_url: str, tmp_path: Path) -> None:
    """The batch is one transaction although its statements go out before any result is read:
    the claim fails on the server (an id beyond bigint) after the outcomes and marks were sent."""
    async with opened(pg_url) as (target, store):
        mailing_id = await sending_mailing(store, tmp_path, 6)
        claimed, _ = await store.record_and_claim(mailing_id, [], 3)
        with pytest.raises(Exception, match="out of range"):
            await store.record_and_claim(mailing_id, [Outcome(claimed[0].id, RecipientState.SENT, 250)], 3,
                                         marks=[claimed[1].id], held={2**70})
        assert set(states(target).values()) == {"pending:0"}
        assert (await store.mailing(mailing_id)).sent == 0
        _, mailing = await store.record_and_claim(mailing_id, [Outcome(claimed[0].id, RecipientState.SENT, 250)], 0)
        assert mailing.sent == 1  # the connection is usable again


async def test_the_first_batch_of_a_just_imported_mailing_gives_the_planner_its_size(pg_url: str, tmp_path: Path) -> None:
    """Without statistics the planner took the ledger for tiny and each batch's marks scanned
    every pending row of the mailing (25 ms per batch at 5,000 rows, growing with the mailing)."""
    async with opened(pg_url) as (target, store):
        mailing_id = await sending_mailing(store, tmp_path, 2000)
        await store.record_and_claim(mailing_id, [], 10)
        ((estimate,),) = sql_rows(target, "SELECT reltuples FROM pg_class WHERE oid = 'recipients'::regclass")
        assert estimate >= 1000


async def test_a_claim_goes_on_from_its_last_row_yet_finds_every_row_pending_again_below_it(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a claim from the first row, claims look after the last row claimed (the walk from
    the first row through every row sent grew with the mailing: 131 ms at 100,000 of 200,000
    sent). A row given back is claimed by the next batch; a row made pending by someone else is
    found when nothing is left after the floor, or by the periodic full claim; and an empty
    claim always means no pending row at all."""
    async with opened(pg_url) as (target, store):
        mailing_id = await sending_mailing(store, tmp_path, 30)
        first, _ = await store.record_and_claim(mailing_id, [], 10)
        held = {c.id for c in first}
        assert sorted(held) == list(range(1, 11))
        given_back = Outcome(3, RecipientState.PENDING, None, None, counted_attempt=False)
        held.discard(3)
        again, _ = await store.record_and_claim(mailing_id, [given_back], 5, held=held)
        assert [c.id for c in again] == [3, 11, 12, 13, 14]
        held |= {c.id for c in again}
        await store.record_and_claim(mailing_id, [Outcome(7, RecipientState.SENT, 250)], 0)
        held.discard(7)
        sql_execute(target, "UPDATE recipients SET state = 'pending' WHERE id = 7")  # another process's doing
        later, _ = await store.record_and_claim(mailing_id, [], 5, held=held)
        assert [c.id for c in later] == [15, 16, 17, 18, 19]  # row 7 waits for a full claim
        held |= {c.id for c in later}
        monkeypatch.setattr("mailtower.core.store_pg.FULL_CLAIM_EVERY", 0.0)
        await store.record_and_claim(mailing_id, [], 0)
        full, _ = await store.record_and_claim(mailing_id, [], 2, held=held)
        assert [c.id for c in full] == [7, 20]  # the periodic full claim starts at the first row
        held |= {c.id for c in full}
        sql_execute(target, "UPDATE recipients SET state = 'pending', claimed_by = NULL WHERE id = 1")
        held.discard(1)
        monkeypatch.setattr("mailtower.core.store_pg.FULL_CLAIM_EVERY", 3600.0)
        await store.record_and_claim(mailing_id, [], 1, held=held)  # a floor pass again, after 20
        rest, _ = await store.record_and_claim(mailing_id, [], 50, held=held)
        assert 1 in {c.id for c in rest}  # nothing after the floor: claimed on from the first row
        held |= {c.id for c in rest}
        assert sorted(held) == list(range(1, 31))
        assert (await store.record_and_claim(mailing_id, [], 50, held=held))[0] == []


async def test_the_batch_reuses_one_plan_for_its_per_row_statements_and_plans_each_claim_afresh(
    pg_url: str, tmp_path: Path
) -> None:
    """Left to plan_cache_mode `auto`, the server planned the marks, outcomes and counters afresh
    at every EXECUTE (a third of its CPU per message at K=8, perf); the claim keeps a plan made
    for its values, and nothing outside the batch inherits the setting."""
    async with opened(pg_url) as (_, store):
        mailing_id = await sending_mailing(store, tmp_path, 200)
        held: set[int] = set()
        claimed, _ = await store.record_and_claim(mailing_id, [], 60)
        held |= {c.id for c in claimed}
        for i in range(0, 60, 6):
            outcomes = [Outcome(c.id, RecipientState.SENT, 250) for c in claimed[i:i + 3]]
            await store.record_and_claim(mailing_id, outcomes, 0, marks=[c.id for c in claimed[i + 3:i + 6]], held=held)
        more, _ = await store.record_and_claim(mailing_id, [], 10, held=held)
        assert more
        conn = await store.pg.ready()  # type: ignore[attr-defined]
        cur = await conn.execute("SELECT name, generic_plans, custom_plans FROM pg_prepared_statements"
                                 " WHERE name LIKE 'mailtower_batch_%'")
        plans = {name: (generic, custom) for name, generic, custom in await cur.fetchall()}
        marks, outcomes, claim = (plans[store_pg._PREPARED[sql]]  # noqa: SLF001 - no fleet: the open outcomes and claim
                                  for sql in (store_pg._MARKS_SQL, store_pg._OUTCOMES_OPEN, store_pg._CLAIM_OPEN))  # noqa: SLF001
        assert marks[1] == 0 and marks[0] >= 10, plans
        assert outcomes[1] == 0 and outcomes[0] >= 10, plans
        assert claim[0] == 0 and claim[1] >= 2, plans
        cur = await conn.execute("SHOW plan_cache_mode")
        assert (await cur.fetchone()) == ("auto",)


async def test_a_row_given_back_by_a_batch_without_a_claim_is_claimed_by_the_next_claim(pg_url: str, tmp_path: Path) -> None:
    """The claim floor was lowered only by a batch that also claimed: a row given back in a
    batch of outcomes alone waited for the periodic full claim (FULL_CLAIM_EVERY)."""
    async with opened(pg_url) as (_, store):
        mailing_id = await sending_mailing(store, tmp_path, 30)
        first, _ = await store.record_and_claim(mailing_id, [], 10)
        held = {c.id for c in first}
        await store.record_and_claim(mailing_id, [Outcome(4, RecipientState.PENDING, None, None, counted_attempt=False)], 0)
        held.discard(4)
        again, _ = await store.record_and_claim(mailing_id, [], 3, held=held)
        assert [c.id for c in again] == [4, 11, 12]
