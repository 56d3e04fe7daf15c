"""The PostgreSQL store: `PgStore(Store)` runs the same queries as the SQLite store.

What differs from core/store.py, and only that, lives here:

- `PgConnection`, a thin adapter that offers what Store uses of aiosqlite (`execute` as an
  awaitable and an async context manager whose cursor has fetchone/fetchall/rowcount,
  `executemany`, `in_transaction`) over one psycopg AsyncConnection in autocommit mode, turning
  `?` placeholders into `%s` and Python bools into the 0/1 integers the schema keeps.
- Writes are serialised as SQLite's BEGIN IMMEDIATE does: `write()` opens a transaction and
  takes `pg_advisory_xact_lock(WRITE_LOCK)` first, so one writer at a time across every
  process, released by COMMIT/ROLLBACK (or the server, when a process dies).
- The schema (core/pg_schema.py) with `meta.schema_version`, created under the same lock.
- `data_version()`: the server's current snapshot, which changes whenever any transaction that
  wrote commits or starts (the dashboard's cheap "did anything change?" probe).
- The sender's batch transaction `record_and_claim` (SQLite runs it as one call on its thread):
  the same steps, each one statement that takes its decisions on the server (fence, suppression,
  the mailing's state), prepared once per connection and sent together as one message, which
  the server runs as one transaction: one round trip per batch.
  Its claim takes rows `FOR UPDATE SKIP LOCKED`, so several senders claim disjoint batches.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import re
import time
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from .db_target import PgTarget
from .domain import ImportedRow, RecipientState
from .errors import NotFound, UserError
from .pg_schema import PG_BASE, PG_BASE_VERSION, PG_MIGRATIONS, PG_SCHEMA_VERSION
from .store import (
    MAILING_LIST_COLUMNS,
    _MAILING_COUNTERS,
    Claimed,
    Mailing,
    Outcome,
    StagedRows,
    Store,
    Tx,
    _claimed,
    _iso_second,
    _outcome_rows,
    iso,
    mailing_as_written,
    mailing_columns,
    storage_error,
)

log = logging.getLogger(__name__)
# psycopg logs the errors it ignores while closing (a pipeline, a cursor) when the server goes away;
# with no handler configured (the CLI) logging's last resort would print it to stderr as a second
# line next to our one-line error. A NullHandler keeps it off the terminal; a log file set up on
# the root logger (the background sender's) still receives it.
logging.getLogger("psycopg").addHandler(logging.NullHandler())

# Advisory lock keys (64-bit, one namespace per database): "mailtowr" and "mailtows" in ASCII.
WRITE_LOCK = 0x6D61696C746F7772
FULL_CLAIM_EVERY = 30.0  # seconds: a claim from the mailing's first row at least this often (_claim_floor)
ANALYZE_EVERY = 5.0  # seconds between checks of the ledger's statistics while a mailing is claimed (_analyze_if_stale)
CONNECT_TIMEOUT = 10  # seconds: a server that does not answer is reported, not waited for
# A `connect_timeout` given in the URL is honoured within these bounds (libpq's own minimum is 2 s;
# "0", libpq's "for ever", and anything longer become MAX: nothing a person types hangs a process).
MIN_CONNECT_TIMEOUT, MAX_CONNECT_TIMEOUT = 2, 300
# Seconds any statement waits for a lock another session holds (the write lock, `LOCK TABLE` in a
# psql session...), then one line "the database stayed busy", never a hang. Longer than SQLite's
# 30 s busy_timeout: a legitimate writer holds the write lock longer here (a million-row import
# takes ~40 s on PostgreSQL), and a running sender must wait it out rather than stop.
LOCK_TIMEOUT = 120.0
# A person waiting for a CLI command hears after this long that another process holds the lock
# (PgStore.operator_lock_wait): well before two minutes; a million-row `new` no longer holds it.
OPERATOR_LOCK_TIMEOUT = 20.0
BEAT_LOCK_TIMEOUT = 3.0  # seconds a heartbeat waits for its `senders` row (tried again at the next beat)
CLOSE_TIMEOUT = 10.0
DUE_CHECK_EVERY = 5.0  # seconds: a batch looks for due retries at least this often (PgStore._retries_possible)
_CLAIM_PASSES = 100  # as core/store.py: bound on claim passes that found only suppressed rows


@lru_cache(maxsize=512)
def pg_sql(sql: str) -> str:
    """SQLite's `?` placeholders as psycopg's `%s` (a literal % doubled first). No query of the
    store has a `?` or `%` inside a string literal."""
    return sql.replace("%", "%%").replace("?", "%s")


def _params(params: Sequence[Any] | None) -> list[Any]:
    # The schema keeps flags as 0/1 integers (as SQLite does); psycopg would send a bool.
    values = [int(p) if isinstance(p, bool) else p for p in params or ()]
    for value in values:
        # An array (the sender's batch) is checked element by element.
        for text in value if isinstance(value, list) else (value,):
            if isinstance(text, str) and "\0" in text:
                # Checked before the statement goes out, so the transaction rolls back whole; the
                # inputs a person gives refuse NUL themselves, naming the field: this is the backstop.
                raise UserError(f"a text value contains a NUL character, which PostgreSQL cannot store: {_shown(text)}")
    return values


def _shown(value: str) -> str:
    return repr(value[:60] + ("..." if len(value) > 60 else ""))


class PgCursor:
    """What Store reads from a cursor: the rows (fetched with the statement) and rowcount."""

    __slots__ = ("_cur",)

    def __init__(self, cur: psycopg.AsyncCursor[Any]) -> None:
        self._cur = cur

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    async def fetchone(self) -> tuple[Any, ...] | None:
        return await self._cur.fetchone() if self._cur.description is not None else None

    async def fetchall(self) -> list[tuple[Any, ...]]:
        return await self._cur.fetchall() if self._cur.description is not None else []

    async def close(self) -> None:
        await self._cur.close()


class _Execution:
    """`await conn.execute(...)` gives a cursor; `async with conn.execute(...) as cur` closes it."""

    __slots__ = ("_owner", "_sql", "_params", "_cursor")

    def __init__(self, owner: "PgConnection", sql: str, params: Sequence[Any] | None) -> None:
        self._owner, self._sql, self._params = owner, sql, params
        self._cursor: PgCursor | None = None

    async def _run(self) -> PgCursor:
        cur = (await self._owner.ready()).cursor()
        await cur.execute(pg_sql(self._sql), _params(self._params))
        return PgCursor(cur)

    def __await__(self):  # noqa: ANN204 - a generator
        return self._run().__await__()

    async def __aenter__(self) -> PgCursor:
        self._cursor = await self._run()
        return self._cursor

    async def __aexit__(self, *exc: object) -> None:
        if self._cursor is not None:
            await self._cursor.close()


class PgConnection:
    """The part of aiosqlite's Connection that Store uses, over one psycopg AsyncConnection.

    A connection the server dropped (restart, network) is opened again at the next statement
    outside a write transaction; inside one the statement fails, so no transaction ever goes on
    half on one connection and half on another."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], target: PgTarget, lock_timeout: float | None = None) -> None:
        self.conn = conn
        self.target = target
        self.in_write = False  # set by PgStore.write() for the length of a transaction
        self.prepared_on: psycopg.AsyncConnection[Any] | None = None  # the connection the batch's statements are prepared on
        # Seconds a statement waits for a lock; a connection opened again keeps it (a CLI command
        # that lost its connection still gives up after OPERATOR_LOCK_TIMEOUT, not two minutes).
        self.lock_timeout = LOCK_TIMEOUT if lock_timeout is None else lock_timeout

    @classmethod
    async def open(cls, target: PgTarget, lock_timeout: float | None = None) -> "PgConnection":
        """A connection whose statements wait at most `lock_timeout` seconds (LOCK_TIMEOUT unless told) for a lock."""
        conn = await connect(target, lock_timeout=lock_timeout)
        return cls(conn, target, lock_timeout=lock_timeout)

    async def set_lock_timeout(self, seconds: float) -> None:
        """This connection's lock wait from now on, kept by the connection opened after a loss."""
        self.lock_timeout = seconds
        await self.script(f"SET lock_timeout = {int(seconds * 1000)}")

    async def ready(self) -> psycopg.AsyncConnection[Any]:
        if not (self.conn.closed or self.conn.broken):
            return self.conn
        if self.in_write:
            raise psycopg.OperationalError("the connection to the server was lost during a transaction")
        log.info("database %s: connection lost; connecting again", self.target)
        self.conn = await connect(self.target, lock_timeout=self.lock_timeout)
        return self.conn

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> _Execution:
        return _Execution(self, sql, params)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> PgCursor:
        cur = (await self.ready()).cursor()
        await cur.executemany(pg_sql(sql), [_params(row) for row in rows])
        return PgCursor(cur)

    async def script(self, sql: str) -> None:
        """Several statements without parameters (the schema)."""
        await (await self.ready()).execute(sql.encode())

    async def commit(self) -> None:
        """As aiosqlite's: outside `write()` statements are committed already (autocommit)."""
        if self.in_transaction and not self.in_write:
            await self.conn.execute("COMMIT")

    @property
    def in_transaction(self) -> bool:
        return self.conn.info.transaction_status != pq.TransactionStatus.IDLE

    async def close(self) -> None:
        await self.conn.close()


def connect_timeout(target: PgTarget) -> int:
    """Seconds to wait for the server: the URL's `connect_timeout` if it has one, kept within
    MIN/MAX_CONNECT_TIMEOUT (libpq reads 0 as "wait for ever": here it is the longest bound),
    else CONNECT_TIMEOUT. A value that is not a whole number is one line naming it."""
    try:
        given = conninfo_to_dict(target.url).get("connect_timeout")
    except psycopg.ProgrammingError:
        return CONNECT_TIMEOUT  # the URL itself is refused by connect(), with libpq's words
    if given is None or str(given).strip() == "":
        return CONNECT_TIMEOUT
    try:
        seconds = int(str(given).strip())
    except ValueError:
        raise UserError(f"database {target}: connect_timeout={target.scrub(str(given))!r} in the URL "
                        "is not a whole number of seconds") from None
    if seconds <= 0:
        return MAX_CONNECT_TIMEOUT
    return max(MIN_CONNECT_TIMEOUT, min(seconds, MAX_CONNECT_TIMEOUT))


async def connect(target: PgTarget, lock_timeout: float | None = None) -> psycopg.AsyncConnection[Any]:
    """One autocommit connection (transactions are explicit BEGIN/COMMIT, as on SQLite) whose
    statements wait at most `lock_timeout` seconds (LOCK_TIMEOUT unless told) for a lock."""
    if lock_timeout is None:
        lock_timeout = LOCK_TIMEOUT
    seconds = connect_timeout(target)
    try:
        conn = await psycopg.AsyncConnection.connect(
            target.url, autocommit=True, connect_timeout=seconds, application_name="mailtower"
        )
    except psycopg.ProgrammingError as exc:  # libpq refused the URL itself; its text may quote the password
        reason = target.scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        raise UserError(f"database {target}: {reason}") from None
    try:
        await conn.execute(f"SET lock_timeout = {int(lock_timeout * 1000)}")
    except BaseException:
        await conn.close()
        raise
    return conn


class PgStore(Store):
    """An open PostgreSQL database; see the module's docstring for what differs from Store."""

    NOT_HELD = "r.id <> ALL(?::bigint[])"
    NOW_SQL = "(EXTRACT(EPOCH FROM clock_timestamp())::double precision)"  # the SERVER's clock (fleet)

    def __init__(self, db: PgConnection, target: PgTarget) -> None:  # type: ignore[override]
        super().__init__(db, target)  # type: ignore[arg-type]
        self.pg = db
        self._analyzed: dict[int, float] = {}  # mailing -> when its ledger statistics may be checked next (record_and_claim)
        # Each mailing's count of deferred rows as the last batch read it: with none, the batch
        # has no retries to make due and leaves that statement out (one of its eight), except
        # once every DUE_CHECK_EVERY seconds, so that rows deferred outside the counters' view
        # (a count repaired by hand) are never left waiting for good.
        self._deferred_seen: dict[int, int] = {}
        self._floors: dict[int, tuple[int, float | None]] = {}  # mailing -> (claim floor, last full claim): _claim_floor
        self._due_checked: dict[int, float] = {}

    @property
    def target(self) -> PgTarget:
        return self.path  # type: ignore[return-value]

    @property
    def is_file(self) -> bool:
        return False

    @staticmethod
    def _held_param(held: Iterable[int]) -> Any:
        return sorted(held)

    @staticmethod
    def _remaining_rows(columns: str, where: str, params: list[Any]) -> tuple[str, list[Any]]:
        """PostgreSQL keeps its recipients_remaining index (schema 8 drops it on SQLite only):
        for the merged arms its planner chose a sort of every remaining row after the first id
        (32 ms a page at 300,000 rows), and an UPDATE of `state` writes a new entry in every
        index anyway (it is never a HOT update), so the index costs a mark little here."""
        return (f"SELECT {columns} FROM recipients WHERE mailing_id = ? AND state IN ('pending', 'sending', 'deferred')"
                f"{where}", params)

    @staticmethod
    def _remaining_filter(search: str) -> tuple[str, list[Any]]:
        # SQLite's LOWER folds ASCII only; PostgreSQL's follows the database's locale (Ä -> ä on a
        # UTF-8 one). Under the "C" collation it folds ASCII only too: the same matches on both engines.
        clause, params = Store._remaining_filter(search)
        for column in ("email", "name", "last_error"):
            clause = clause.replace(f"LOWER({column})", f'LOWER({column} COLLATE "C")')
        return clause.replace("LOWER(?)", 'LOWER(? COLLATE "C")'), params

    @classmethod
    async def open(cls, target: PgTarget) -> "PgStore":  # type: ignore[override]
        """Connect and create or check the schema; any failure is one UserError naming the
        database (its URL without the password), or, for a bug, the original exception."""
        try:
            db = await PgConnection.open(target)
        except Exception as exc:
            raise (storage_error(target, exc) or exc) from None
        store = cls(db, target)
        try:
            if not await store._schema_is_current():
                await store._migrate()
        except BaseException as exc:
            await store._close_quietly()
            if isinstance(exc, Exception):
                raise (storage_error(target, exc) or exc) from None
            raise
        return store

    async def _schema_is_current(self) -> bool:
        """Whether the schema is this version's already: a read, so opening a database does not
        queue for the write lock behind another process's long write (only a migration needs it)."""
        async with self.db.execute("SELECT to_regclass('meta') IS NOT NULL") as cur:
            if not (await cur.fetchone())[0]:  # type: ignore[index]
                return False
        async with self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'") as cur:
            row = await cur.fetchone()
        return row is not None and row[0] == str(PG_SCHEMA_VERSION)

    async def _close_quietly(self) -> None:
        try:
            await asyncio.wait_for(self.pg.close(), timeout=CLOSE_TIMEOUT)
        except Exception:  # noqa: BLE001 - the open already failed; its error is reported
            pass

    def check_still_there(self) -> None:
        """A server's database has no file name to lose (see Store.check_still_there)."""

    async def close(self) -> None:
        await self.close_heartbeat()  # the fleet heartbeat's connection, if one was opened (end of class)
        await asyncio.wait_for(self.pg.close(), timeout=CLOSE_TIMEOUT)

    async def _migrate(self) -> None:
        async with self.write() as tx:
            async with tx.db.execute("SELECT to_regclass('meta') IS NOT NULL") as cur:
                exists = (await cur.fetchone())[0]  # type: ignore[index]
            current = 0
            if exists:
                async with tx.db.execute("SELECT value FROM meta WHERE key = 'schema_version'") as cur:
                    row = await cur.fetchone()
                current = int(row[0]) if row else 0
            if current > PG_SCHEMA_VERSION:
                raise UserError(
                    f"database {self.target}: schema version {current} is newer than this mailtower ({PG_SCHEMA_VERSION})"
                )
            if current == 0:
                await self._refuse_foreign_tables(tx)
                await self.pg.script(PG_BASE)
                current = PG_BASE_VERSION
            for version in range(current + 1, PG_SCHEMA_VERSION + 1):
                await self.pg.script(PG_MIGRATIONS[version])
                current = version
            await tx.db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(current),),
            )

    async def _refuse_foreign_tables(self, tx: Tx) -> None:
        """A database that holds tables of its own is not ours to add to."""
        async with tx.db.execute(
            "SELECT string_agg(table_name, ', ' ORDER BY table_name) FROM information_schema.tables "
            "WHERE table_schema = current_schema() AND table_name IN "
            "('mailings', 'recipients', 'events', 'settings', 'suppression', 'wave_groups', 'canary_rows')"
        ) as cur:
            clash = (await cur.fetchone())[0]  # type: ignore[index]
        if clash:
            raise UserError(f"database {self.target}: it has tables named {clash} but no mailtower schema version; "
                            "use an empty database")

    @asynccontextmanager
    async def write(self, *, shared: bool = False) -> AsyncIterator[Tx]:
        """One transaction holding the database's write lock: one writer at a time, as on SQLite.
        `shared` (fleet senders' batches, core/fleet.py): batches of several senders overlap (their
        rows are disjoint, claimed on disk) but every other write still waits for all of them."""
        async with self._write_lock:
            conn = await self.pg.ready()
            self.pg.in_write = True
            try:
                lock = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
                await conn.execute(f"BEGIN; SELECT {lock}({WRITE_LOCK})".encode())  # one round trip
                yield Tx(self.db)
            except BaseException:
                await self._rollback()
                raise
            else:
                await conn.execute("COMMIT")
            finally:
                self.pg.in_write = False

    async def _rollback(self) -> None:
        if self.pg.conn.closed or self.pg.conn.broken or not self.pg.in_transaction:
            return  # nothing to roll back, or the server already did (the connection is gone)
        # psycopg answers a ROLLBACK, once it has prepared statements of its own (any query run
        # five times), with DEALLOCATE ALL, which drops the batch's statements too: the next
        # batch prepares them again (_Batch.run) instead of failing on a missing one.
        self.pg.prepared_on = None
        try:
            await self.pg.conn.execute("ROLLBACK")
        except psycopg.Error as exc:
            # The connection breaking under the ROLLBACK is the fault already being raised: not
            # a second line for it (the server rolls back what a lost connection held).
            level = logging.DEBUG if self.pg.conn.broken or self.pg.conn.closed else logging.WARNING
            log.log(level, "ROLLBACK failed on %s: %s", self.target, self.target.scrub(str(exc)))

    async def data_version(self) -> int:
        """Changes whenever a transaction that wrote anything on the server starts or ends."""
        async with self.db.execute("SELECT pg_current_snapshot()::text") as cur:
            row = await cur.fetchone()
        return zlib.crc32(str(row[0]).encode())  # type: ignore[index]

    # ---- the sender's batch transaction (the twin of core/store._record_and_claim) ------------

    def record_now(self, *args: Any, **kwargs: Any) -> None:
        """No inline write on PostgreSQL: a write is a round trip to the server, which the event
        loop must not block on, so the sender always takes the awaitable path (record_and_claim).
        Its connections still share one write: every mark and outcome that is ready when the
        feeder writes goes in the same batch (one round trip, one commit; see _Batch)."""
        return None

    async def record_and_claim(
        self,
        mailing_id: int,
        outcomes: list[Outcome],
        claim: int,
        *,
        rate: float | None = None,
        marks: list[int] | None = None,
        held: Iterable[int] = (),
        barred: set[int] | None = None,
        inline: bool = True,  # noqa: ARG002 - nothing is ever done inline on PostgreSQL (record_now)
        known: Mailing | None = None,
    ) -> tuple[list[Claimed], Mailing]:
        """What Store.record_and_claim does, in one PostgreSQL transaction (see there).

        The whole transaction goes to the server as one message, and the results are read
        after one wait: one round trip per batch (the sender waits for it before
        a marked row's final dot), not one per statement. Each step is one statement whose
        decisions are taken by the server (see _Batch), so nothing needs a result before the
        next statement is sent. Only a claim that found suppressed addresses and so came back
        short claims on in a further transaction (rare: each pass settles what it skipped)."""
        owner = self.claim_owner
        if claim > 0 and time.monotonic() >= self._analyzed.get(mailing_id, 0.0):
            await self._analyze_if_stale(mailing_id)
        async with self._write_lock:
            await self.pg.ready()  # a lost connection is opened again here, before the batch begins
            self.pg.in_write = True
            self._lower_floor(mailing_id, outcomes)
            floor = self._claim_floor(mailing_id) if claim > 0 else 0
            try:
                columns = mailing_columns(mailing_id, known)
                batch = _Batch(mailing_id, time.time(), owner, columns)
                batch.build(outcomes, claim, rate, marks or [], sorted(held) if claim > 0 else [],  # the claim's alone
                            retries=claim > 0 and self._retries_possible(mailing_id, batch.now), after=floor)
                claimed, row, short = await batch.run(self.pg, claim)
            except BaseException:
                await self._rollback()
                raise
            finally:
                self.pg.in_write = False
        if barred is not None:
            barred.update(batch.barred_marks)
        if row is None:
            raise NotFound(f"no mailing with id {mailing_id}")
        if short:
            claimed, row = await self._claim_past_suppressed(mailing_id, claimed, claim, batch.after, sorted(held), row, columns)
        elif floor and len(claimed) < claim:  # nothing more after the floor: the rest from the first row
            floor = 0
            claimed, row = await self._claim_past_suppressed(
                mailing_id, claimed, claim, 0, sorted({*held, *(c.id for c in claimed)}), row, columns)
        if claim > 0:
            self._raise_floor(mailing_id, floor, claimed, batch.due_from)
        mailing = mailing_as_written(row, known, columns)
        # Rows deferred by this batch or by another sender after this read are seen by the next
        # batch; none of them is due before its retry delay has passed.
        self._deferred_seen[mailing_id] = mailing.deferred
        return claimed, mailing

    def _claim_floor(self, mailing_id: int) -> int:
        """The id after which this batch's claim looks: 0 (every row of the mailing) for the first
        claim, every FULL_CLAIM_EVERY seconds, and after rows this sender gave back; else the
        last row this store claimed. The claim is ordered by id, and its plan walked the primary
        key from the mailing's first row through every row already sent whenever the statistics
        still said most rows were pending (they lag by design: ANALYZE samples): each claim cost
        grew with the rows sent (8 ms at 20,000; a million-row mailing would have spent seconds).
        Rows below the floor that become pending again are found anyway: the due statement's lowest
        id lowers it, a claim that finds nothing after the floor claims on from the first row (so
        a mailing is never taken for exhausted by a floor pass), and the periodic full claim finds
        what another sender gave back; rows this sender gives back lower it (_lower_floor)."""
        floor, full_claim = self._floors.get(mailing_id, (0, None))
        if full_claim is None or time.monotonic() - full_claim >= FULL_CLAIM_EVERY:
            return 0
        return floor

    def _lower_floor(self, mailing_id: int, outcomes: list[Outcome]) -> None:
        """Rows this batch gives back are pending again: the next claim looks from before the
        first of them, whether or not this batch claims (a batch without a claim once left them
        to the periodic full claim, up to FULL_CLAIM_EVERY later)."""
        given_back = [o.recipient_id for o in outcomes if o.state is RecipientState.PENDING]
        if given_back and mailing_id in self._floors:
            floor, full_claim = self._floors[mailing_id]
            self._floors[mailing_id] = (max(min(floor, min(given_back) - 1), 0), full_claim)

    def _raise_floor(self, mailing_id: int, looked_from: int, claimed: list[Claimed], due_from: int | None) -> None:
        """After a claim that looked at the rows after `looked_from` (0: every row)."""
        full_claim = time.monotonic() if looked_from == 0 else self._floors[mailing_id][1]
        floor = max(c.id for c in claimed) if claimed else looked_from
        if due_from is not None:
            floor = min(floor, due_from - 1)
        self._floors[mailing_id] = (max(floor, 0), full_claim)

    def _retries_possible(self, mailing_id: int, now: float) -> bool:
        if self._deferred_seen.get(mailing_id, 1) > 0 or now - self._due_checked.get(mailing_id, 0.0) >= DUE_CHECK_EVERY:
            self._due_checked[mailing_id] = now
            return True
        return False

    async def _analyze_if_stale(self, mailing_id: int) -> None:
        """ANALYZE the ledger when its statistics are stale, checked before a claim at most every
        ANALYZE_EVERY seconds (or 50 times as long as the last ANALYZE took: at most 2% of the
        time). Stale statistics mislead the claim: right after an import they call the table
        tiny; while a mailing sends they still say every row is pending, so the claim walked the
        primary key from the mailing's first row through every row already sent (17 ms for a
        claim at 18,000 of 20,000 sent, growing with the mailing) instead of the (mailing, state,
        id) index (0.5 ms). Autovacuum analyzes too, but only up to a minute later."""
        started = time.monotonic()
        async with self._write_lock:  # never inside another write transaction of this store
            rows = await self._rows(
                "SELECT c.reltuples < 0 OR COALESCE(s.n_mod_since_analyze > 500 + GREATEST(c.reltuples, 0) / 5, FALSE)"
                " FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid"
                " WHERE c.oid = 'recipients'::regclass", ())
            if rows and rows[0][0]:
                await self._rows("ANALYZE (SKIP_LOCKED) recipients", ())  # never waits behind autovacuum
        took = time.monotonic() - started
        self._analyzed[mailing_id] = started + took + max(ANALYZE_EVERY, 50 * took)

    # ---- fleet heartbeat (issue 15 review, core/fleet.py) --------------------------------------
    # A write may hold the database's write lock for long (an import into a big draft, a wave
    # schedule, a psql session): a heartbeat queued behind it (this store's _write_lock, then the
    # advisory lock) would age past sender_heartbeat_timeout and the fleet would fence itself or
    # declare live senders dead. So the heartbeat, the count of live senders and the look for
    # stale senders run on a connection of their own, as single autocommit statements without the
    # advisory lock. That is safe because each touches one `senders` row at a time and the server
    # re-checks the WHERE of an UPDATE on the newest row version: a beat and a declaration of death
    # of the same sender are serialised by that row's lock, whichever commits first wins and the
    # other sees it (_declare_dead below marks dead with the staleness test in the same UPDATE).
    # Releasing a dead sender's rows still runs under the write lock (expire_senders), so it
    # never races a claim.

    _beat_conn: PgConnection | None = None
    _beat_guard: asyncio.Lock | None = None

    async def _beat_db(self) -> PgConnection:
        """The heartbeat's connection, opened at first use (again after a loss) with a lock wait
        of a few seconds: a beat stuck behind a row lock is tried again at the next beat."""
        lost = self._beat_conn is not None and (self._beat_conn.conn.closed or self._beat_conn.conn.broken)
        if lost:
            await self.close_heartbeat()  # opened again here, with the heartbeat's own lock wait
        if self._beat_conn is None:
            self._beat_conn = await PgConnection.open(self.target, lock_timeout=BEAT_LOCK_TIMEOUT)
        return self._beat_conn

    async def _on_beat_db(self, sql: str, params: Sequence[Any]) -> tuple[int, list[tuple[Any, ...]]]:
        """One autocommit statement on the heartbeat's connection: (rowcount, rows)."""
        if self._beat_guard is None:
            self._beat_guard = asyncio.Lock()
        async with self._beat_guard:
            db = await self._beat_db()
            async with db.execute(sql, params) as cur:
                return cur.rowcount, await cur.fetchall()

    async def sender_heartbeat(self, sender_id: int, rate: float, connections: int, timeout: float,
                               budget_sent: int = 0) -> int | None:
        """As Store.sender_heartbeat, without the write lock (see above)."""
        updated, _ = await self._on_beat_db(
            f"UPDATE senders SET heartbeat_at = {self.NOW_SQL}, rate = ?, connections = ?, budget_sent = ?"
            " WHERE id = ? AND state = 'running'",
            (rate, connections, budget_sent, sender_id),
        )
        if updated <= 0:
            return None
        return await self.live_senders(timeout)

    async def live_senders(self, timeout: float) -> int:
        _, rows = await self._on_beat_db(f"SELECT COUNT(*) FROM senders WHERE {self._ALIVE.format(now=self.NOW_SQL)}", (timeout,))
        return int(rows[0][0]) if rows else 0

    async def budget_counts(self, me: int | None) -> list[int]:
        """As Store.budget_counts, on the heartbeat's connection (no wait behind a long write)."""
        _, rows = await self._on_beat_db(self._BUDGET_COUNTS, (-1 if me is None else me,))
        return [int(row[0]) for row in rows]

    async def stale_senders(self, timeout: float, me: int | None = None) -> int:
        """Running senders (not `me`) whose heartbeat is older than `timeout`: a read, no lock.
        Only when there are some does expire_senders need the write lock."""
        _, rows = await self._on_beat_db(
            f"SELECT COUNT(*) FROM senders WHERE state = 'running' AND id <> ? AND heartbeat_at < {self.NOW_SQL} - ?",
            (-1 if me is None else me, timeout),
        )
        return int(rows[0][0]) if rows else 0

    async def expire_senders(self, timeout: float, me: int | None = None) -> int:
        """As Store.expire_senders, but the write lock is asked for only when a sender is stale."""
        if not await self.stale_senders(timeout, me):
            return 0
        return await super().expire_senders(timeout, me)

    async def _declare_dead(self, tx: Tx, timeout: float | None, me: int | None) -> list[tuple[int, str, int]]:
        """As Store._declare_dead in one UPDATE: a heartbeat that commits meanwhile (it takes no
        write lock) is seen by the re-check of the WHERE, so a sender that just beat stays alive."""
        stale = "state = 'running' AND id <> ?" + ("" if timeout is None else f" AND heartbeat_at < {self.NOW_SQL} - ?")
        params: tuple[Any, ...] = (-1 if me is None else me,) + (() if timeout is None else (timeout,))
        async with tx.db.execute(f"UPDATE senders SET state = 'dead' WHERE {stale} RETURNING id, host, pid", params) as cur:
            rows = await cur.fetchall()
        return sorted((int(r[0]), str(r[1]), int(r[2])) for r in rows)

    async def retire_sender(self, sender_id: int, unowned: bool = False) -> int:
        """As Store.retire_sender; then the heartbeat's connection is closed (the sender ends)."""
        try:
            return await super().retire_sender(sender_id, unowned)
        finally:
            await self.close_heartbeat()

    async def close_heartbeat(self) -> None:
        conn, self._beat_conn = self._beat_conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), timeout=CLOSE_TIMEOUT)
            except (psycopg.Error, OSError, asyncio.TimeoutError):
                pass  # the server drops a connection whose client went away

    async def put_sender_status(self, key: str, value: str) -> None:
        """A sender's own status row, once a second: one upsert of a row no other sender writes,
        so on the heartbeat's connection without the write lock (never queued behind a long write)."""
        await self._on_beat_db(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # ---- fleet limits: the hourly budget counted in the shared ledger (issue 15 review) ------

    async def sent_within(self, seconds: float) -> int:
        """Messages sent in the last `seconds` by any sender: rows recorded `sent` then (their
        `updated_at` is when the 250 was recorded) and rows `sending` (marked before their final
        dot: they may be on their way now, their outcome not yet recorded). Only mailings written
        to within the window (plus a minute of clock skew between hosts) are looked at, through
        recipients_work."""
        now = time.time()
        since = iso(datetime.fromtimestamp(now - seconds - 60, timezone.utc))
        _, rows = await self._on_beat_db(
            "SELECT COUNT(*) FROM recipients WHERE state IN ('sent', 'sending') AND updated_at >= ?"
            " AND mailing_id IN (SELECT id FROM mailings WHERE updated_at >= ?)",
            (now - seconds, since),
        )
        return int(rows[0][0]) if rows else 0

    # ---- long writes and lock waits (issue 15 review) -----------------------------------------

    async def operator_lock_wait(self) -> None:
        """A person waits for this process (a CLI command): a write that finds another process
        holding a lock gives up after OPERATOR_LOCK_TIMEOUT with one line, not after two minutes.
        Senders keep LOCK_TIMEOUT: a short wait must not stop them. A connection opened again
        after a loss keeps the operator's wait."""
        await self.pg.set_lock_timeout(OPERATOR_LOCK_TIMEOUT)

    @asynccontextmanager
    async def staged_rows(self, rows: Iterator[ImportedRow], chunk: int = 5000) -> AsyncIterator[StagedRows]:  # noqa: ARG002
        """The file is read inside the write transaction (Tx.import_rows): a new mailing takes the
        lock only for its COMMIT here (new_mailing_write)."""
        yield StagedRows(rows)

    @asynccontextmanager
    async def new_mailing_write(self) -> AsyncIterator[Tx]:
        """The transaction that creates a mailing with its recipients (operations.create_mailing),
        which may take tens of seconds for a million rows. The rows it inserts belong to a new
        mailing nobody else can see before COMMIT, so the bulk of it needs no write lock: the
        lock is taken only for the COMMIT, and other writers (senders' batches, the heartbeat's
        expiry, CLI commands) go on meanwhile. All-or-nothing as before: a failure part-way rolls
        everything back, and nothing of it is visible to senders or readers until it commits.

        Imports into an existing mailing and wave schedules keep the whole-transaction lock:
        they read the mailing's state and act on it, which only the lock keeps true."""
        async with self._write_lock:
            conn = await self.pg.ready()
            self.pg.in_write = True
            try:
                await conn.execute(b"BEGIN")
                yield Tx(self.db)
                await conn.execute(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})".encode())
            except BaseException:
                await self._rollback()
                raise
            else:
                await conn.execute("COMMIT")
            finally:
                self.pg.in_write = False


    async def _claim_past_suppressed(
        self, mailing_id: int, claimed: list[Claimed], claim: int, after: int, held: list[int], row: tuple[Any, ...],
        columns: str,
    ) -> tuple[list[Claimed], tuple[Any, ...]]:
        """As core/store._claim_unsuppressed: a claim whose rows were partly suppressed goes on
        after them (each pass marks the suppressed ones it found), a bounded number of passes.
        The mailing's row is read again with `columns` (the batch's)."""
        owner = self.claim_owner
        async with self.write(shared=owner is not None):
            for _ in range(_CLAIM_PASSES):
                want = claim - len(claimed)
                picked = await self._rows(_claim_sql(owner), _claim_params(mailing_id, after, held, owner, want, time.time()))
                claimed += [_claimed(r) for r in picked if not r[7]]
                if len(picked) < want or len(claimed) >= claim:
                    break  # no more pending rows, or the claim is full
                after = picked[-1][0]
            row = next(iter(await self._rows(_mailing_sql(columns), (mailing_id,))), row)
        return claimed, row

    async def _rows(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows of one statement already in psycopg's placeholders (the batch's own)."""
        async with (await self.pg.ready()).cursor() as cur:
            await cur.execute(sql, _params(params))
            return await cur.fetchall() if cur.description is not None else []


# The statements of the batch. Each one takes its decisions itself (fence, suppression, the
# mailing's state), so the whole batch can be sent before any result is read. They keep the
# order of core/store._record_and_claim: outcomes, marks, due rows, claim, the mailing's row.

# Outcomes: one UPDATE over the arrays of this batch's outcomes (no id twice: see _generations),
# with the mailing's counters summed from the rows it wrote and bounced addresses suppressed.
# Fenced (fleet): only rows still claimed by this sender are written and counted; a row another
# sender took over is that sender's to record. Unfenced: every outcome counts, as on SQLite.
_OUTCOMES_SQL = (
    "WITH v AS (SELECT * FROM unnest(?::bigint[], ?::text[], ?::int[], ?::int[], ?::int[], ?::text[],"
    " ?::float8[], ?::float8[], ?::int[], ?::int[], ?::bool[], ?::bool[]) WITH ORDINALITY"
    " AS v(id, state, tried, doubt, code, reply, next_at, deferred_at, released, resolved, keep, bounce, n)),"
    " w AS (UPDATE recipients r SET state = v.state, attempts = r.attempts + v.tried,"
    " in_doubt = GREATEST(r.in_doubt, v.doubt), last_code = COALESCE(v.code, r.last_code),"
    " last_error = CASE WHEN v.state = 'sent' THEN NULL ELSE COALESCE(v.reply, r.last_error) END, next_attempt_at = v.next_at,"
    " first_deferred_at = COALESCE(r.first_deferred_at, v.deferred_at), updated_at = ?,"
    " claimed_by = CASE WHEN v.keep THEN ?::bigint END"
    " FROM v WHERE r.id = v.id AND r.id = ANY(?::bigint[]){fence}"
    " RETURNING {returning}),"
    " t AS (SELECT COUNT(*) FILTER (WHERE state = 'sent') AS n_sent, COUNT(*) FILTER (WHERE state = 'failed') AS n_failed,"
    " COUNT(*) FILTER (WHERE state = 'deferred') AS n_deferred, COALESCE(SUM(released), 0) AS n_released,"
    " COALESCE(SUM(resolved), 0) AS n_resolved FROM {counted}){bounces}"
    " SELECT set_config('mailtower.counted', COALESCE(current_setting('mailtower.counted', TRUE), '')"
    " || concat_ws(',', n_sent, n_failed, n_deferred, n_released - n_resolved) || ';', TRUE) FROM t"
)
# Bounced addresses join the suppression list in the same statement. Most batches have none: they
# run the statement without that INSERT (and return only what `t` counts from the rows written),
# which the server otherwise set up and ran for nothing at every batch (an INSERT ... ON CONFLICT
# with its indexes opened, a sort of the rows written).
_BOUNCES = (
    ", b AS (INSERT INTO suppression (key, email, source, reason, mailing_id, added_at)"
    " SELECT DISTINCT ON (email_key) email_key, email, 'bounce', COALESCE(reply, ''), mailing_id, ? FROM w"
    " WHERE bounce ORDER BY email_key, n ON CONFLICT (key) DO NOTHING)"
)
_FENCE = " AND COALESCE(r.claimed_by, -1) = ?"
_OUTCOMES_FENCED = pg_sql(_OUTCOMES_SQL.format(fence=_FENCE, counted="w", bounces="",
                                               returning="v.state, v.released, v.resolved"))
_OUTCOMES_OPEN = pg_sql(_OUTCOMES_SQL.format(fence="", counted="v", bounces="", returning="r.id"))
_OUTCOMES_FENCED_BOUNCES = pg_sql(_OUTCOMES_SQL.format(fence=_FENCE, counted="w", bounces=_BOUNCES,
                                                       returning="r.email_key, r.email, r.mailing_id, v.*"))
_OUTCOMES_OPEN_BOUNCES = pg_sql(_OUTCOMES_SQL.format(fence="", counted="v", bounces=_BOUNCES,
                                                     returning="r.email_key, r.email, r.mailing_id, v.*"))


def _outcomes_sql(fenced: bool, bounces: bool) -> str:
    if bounces:
        return _OUTCOMES_FENCED_BOUNCES if fenced else _OUTCOMES_OPEN_BOUNCES
    return _OUTCOMES_FENCED if fenced else _OUTCOMES_OPEN

# Marks: rows about to get their final dot become `sending`, fenced to their claimer (fleet:
# this sender; alone: nobody) and only if their address is not suppressed; marked rows whose
# address is suppressed by now become `suppressed` (counted once). Returns (id, marked) for
# every marked row and every barred one (suppressed now or by an earlier mark). The outer
# SELECT sees the rows as before this statement, so a row barred here is listed once.
# Every lookup goes by primary key (`r.id = ANY`, `+ 0` keeps the planner off the mailing's
# indexes: right after an import the table's statistics say it is tiny, and a plan through the
# mailing_id index then scanned every pending row of the mailing for each batch, 25 ms at 5,000).
_MARKS_SQL = pg_sql(
    "WITH m AS (SELECT unnest(?::bigint[]) AS id),"
    " bar AS (UPDATE recipients r SET state = 'suppressed', updated_at = ? WHERE r.id = ANY(ARRAY(SELECT id FROM m))"
    " AND r.mailing_id + 0 = ? AND r.state = 'pending'"
    " AND EXISTS (SELECT 1 FROM suppression s WHERE s.key = r.email_key) RETURNING r.id, r.in_doubt),"
    " counted AS (UPDATE mailings SET suppressed = suppressed + (SELECT COUNT(*) FROM bar),"
    " in_doubt = in_doubt - (SELECT COUNT(*) FROM bar WHERE in_doubt <> 0)"
    " WHERE id = ? AND EXISTS (SELECT 1 FROM bar)),"
    " marked AS (UPDATE recipients r SET state = 'sending', updated_at = ? WHERE r.id = ANY(ARRAY(SELECT id FROM m))"
    " AND r.state = 'pending' AND COALESCE(r.claimed_by, -1) = ?"
    " AND NOT EXISTS (SELECT 1 FROM suppression s WHERE s.key = r.email_key) RETURNING r.id)"
    " SELECT id, TRUE FROM marked UNION ALL SELECT id, FALSE FROM bar UNION ALL"
    " SELECT r.id, FALSE FROM recipients r WHERE r.id = ANY(ARRAY(SELECT id FROM m)) AND r.mailing_id + 0 = ?"
    " AND r.state = 'suppressed'"
)

# Deferred rows whose retry time has come are pending again (and no longer counted deferred),
# only while the mailing is `sending` (as the claim). Returns the lowest id it made pending (the
# claim's floor goes back to it: see PgStore._claim_floor).
_DUE_SQL = pg_sql(
    "WITH due AS (UPDATE recipients SET state = 'pending' WHERE mailing_id = ? AND state = 'deferred'"
    " AND next_attempt_at <= ?"
    " AND EXISTS (SELECT 1 FROM mailings m WHERE m.id = ? AND m.state = 'sending') RETURNING id),"
    " c AS (UPDATE mailings SET deferred = deferred - (SELECT COUNT(*) FROM due) WHERE id = ? AND EXISTS (SELECT 1 FROM due))"
    " SELECT MIN(id) FROM due"
)

# The claim: rows another transaction has locked are skipped, not waited for (several senders
# claiming at once get disjoint batches). Claimed rows stay `pending` on disk, as on SQLite. Only
# a mailing that is `sending` hands out rows: a stop committed by another process is honoured even
# by a claim that started before it. Rows whose address is suppressed become `suppressed` in the
# same statement (counted on the mailing; lookups by primary key, as in _MARKS_SQL) and are returned flagged; fleet: the others are
# claimed by this sender on disk, only while it is `running` (one declared dead claims nothing,
# and its marks then fail the fence: no final dot).
_CLAIM_SQL = (
    "WITH p AS (SELECT r.id, r.email, r.name, r.fields, r.attempts, r.first_deferred_at, r.in_doubt,"
    " EXISTS (SELECT 1 FROM suppression s WHERE s.key = r.email_key) AS barred FROM recipients r"
    " WHERE r.mailing_id = ? AND r.state = 'pending' AND r.id > ?"
    f" AND {PgStore.NOT_HELD} AND (r.claimed_by IS NULL OR r.claimed_by = ?)"
    " AND EXISTS (SELECT 1 FROM mailings m WHERE m.id = r.mailing_id AND m.state = 'sending')"
    " ORDER BY r.id LIMIT ? FOR UPDATE OF r SKIP LOCKED),"
    " s AS (UPDATE recipients r SET state = 'suppressed', updated_at = ?"
    " WHERE r.id = ANY(ARRAY(SELECT id FROM p WHERE barred)) RETURNING r.in_doubt),"
    " sc AS (UPDATE mailings SET suppressed = suppressed + (SELECT COUNT(*) FROM s),"
    " in_doubt = in_doubt - (SELECT COUNT(*) FROM s WHERE in_doubt <> 0) WHERE id = ? AND EXISTS (SELECT 1 FROM s)){own}"
    " SELECT * FROM p ORDER BY id"
)
_CLAIM_OPEN = pg_sql(_CLAIM_SQL.format(own=""))
_CLAIM_OWNED = pg_sql(_CLAIM_SQL.format(
    own=", o AS (UPDATE recipients r SET claimed_by = ? WHERE r.id = ANY(ARRAY(SELECT id FROM p WHERE NOT barred))"
    " AND EXISTS (SELECT 1 FROM senders WHERE id = ? AND state = 'running'))"))
_MAILING_SQL = pg_sql(f"SELECT {MAILING_LIST_COLUMNS} FROM mailings WHERE id = ?")
_MAILING_COUNTERS_SQL = pg_sql(f"SELECT {_MAILING_COUNTERS} FROM mailings WHERE id = ?")


def _mailing_sql(columns: str) -> str:
    return _MAILING_SQL if columns is MAILING_LIST_COLUMNS else _MAILING_COUNTERS_SQL

# The mailing's counters, added up from what the batch's outcome statements left in the
# transaction-local setting `mailtower.counted`, written by the batch's last statement, which
# returns the mailing's row. Last, because the row is every sender's: the first writer holds it
# to its commit, and another sender's batch waits that long (right after the outcomes, it was
# held for the whole rest of the batch, and a second sender spent ~1 ms a batch waiting).
_COUNTED_TEMPLATE = (
    "WITH k AS (SELECT COALESCE(SUM(split_part(x, ',', 1)::bigint), 0) AS n_sent,"
    " COALESCE(SUM(split_part(x, ',', 2)::bigint), 0) AS n_failed, COALESCE(SUM(split_part(x, ',', 3)::bigint), 0) AS n_deferred,"
    " COALESCE(SUM(split_part(x, ',', 4)::bigint), 0) AS n_doubt"
    " FROM unnest(string_to_array(current_setting('mailtower.counted', TRUE), ';')) AS x WHERE x <> '')"
    " UPDATE mailings SET sent = sent + n_sent, failed = failed + n_failed, deferred = deferred + n_deferred,"
    " in_doubt = in_doubt + n_doubt, rate = COALESCE(?, rate), updated_at = ? FROM k WHERE id = ? RETURNING {columns}"
)
_COUNTED_SQL = pg_sql(_COUNTED_TEMPLATE.format(columns=MAILING_LIST_COLUMNS))
# The sender knows its mailing (record_and_claim's `known`): only the state and counters come
# back, which spares this process converting the whole row (its dates among them) every batch.
_COUNTED_COUNTERS_SQL = pg_sql(_COUNTED_TEMPLATE.format(columns=_MAILING_COUNTERS))


def _counted_sql(columns: str) -> str:
    return _COUNTED_SQL if columns is MAILING_LIST_COLUMNS else _COUNTED_COUNTERS_SQL

_RATE_SQL = pg_sql("UPDATE mailings SET rate = ? WHERE id = ?")

# How the server plans the batch's prepared statements, for this transaction only. Left to itself
# (plan_cache_mode `auto`) it planned the outcomes, marks and counters afresh at every EXECUTE,
# its estimate for a plan kept across calls never winning over one made for the values: that
# planning was a third of the server's CPU per message at K=8 (perf, issue 15). Every lookup in
# them goes by primary key or the mailing's id, so one plan serves every batch. The claim and
# the due rows keep a plan made for their values (a range of the mailing's rows, once per claim).
_PLANS_GENERIC = "set_config('plan_cache_mode', 'force_generic_plan', TRUE)"
_PLANS_CUSTOM = "set_config('plan_cache_mode', 'auto', TRUE)"
# The batch's first statement (the write lock, then generic plans) and the switches around the
# claim, prepared like the others: sent as plain SELECTs they were parsed and planned again at
# every batch.
_LOCK_SHARED_SQL = f"SELECT pg_advisory_xact_lock_shared({WRITE_LOCK}), {_PLANS_GENERIC}"
_LOCK_SQL = f"SELECT pg_advisory_xact_lock({WRITE_LOCK}), {_PLANS_GENERIC}"
_PLANS_CUSTOM_SQL = f"SELECT {_PLANS_CUSTOM}"
_PLANS_GENERIC_SQL = f"SELECT {_PLANS_GENERIC}"


# The batch's statements are prepared once per connection and run by EXECUTE: the batch goes as
# one simple query (see _Batch), which the server would otherwise parse and plan statement by
# statement every time (server CPU per message doubled without it).
_PREPARED = {sql: f"mailtower_batch_{i}" for i, sql in enumerate(
    (_OUTCOMES_FENCED, _OUTCOMES_OPEN, _MARKS_SQL, _DUE_SQL, _CLAIM_OPEN, _CLAIM_OWNED, _MAILING_SQL, _RATE_SQL,
     _COUNTED_SQL, _MAILING_COUNTERS_SQL, _COUNTED_COUNTERS_SQL, _OUTCOMES_FENCED_BOUNCES, _OUTCOMES_OPEN_BOUNCES,
     _LOCK_SHARED_SQL, _LOCK_SQL, _PLANS_CUSTOM_SQL, _PLANS_GENERIC_SQL))}


# psycopg's placeholders and its escaped percent sign, as split by _numbered.
_PLACEHOLDERS = re.compile(r"(%%|%s)")


def _numbered(sql: str) -> str:
    """psycopg's `%s` placeholders as the server's $1, $2... (and `%%` as `%`), for PREPARE."""
    n = itertools.count(1)
    return "".join(f"${next(n)}" if token == "%s" else "%" if token == "%%" else token for token in _PLACEHOLDERS.split(sql))


async def _prepare_batch(conn: psycopg.AsyncConnection[Any]) -> None:
    """PREPARE every batch statement this connection does not have yet (a PREPARE that failed
    half way leaves some: they are kept, not prepared twice)."""
    cur = await conn.execute("SELECT name FROM pg_prepared_statements WHERE name LIKE 'mailtower_batch_%'")
    have = {name for (name,) in await cur.fetchall()}
    missing = [f"PREPARE {name} AS {_numbered(sql)}" for sql, name in _PREPARED.items() if name not in have]
    if missing:
        await conn.execute(";".join(missing).encode())


def _claim_sql(owner: int | None) -> str:
    return _CLAIM_OPEN if owner is None else _CLAIM_OWNED


def _claim_params(mailing_id: int, after: int, held: list[int], owner: int | None, limit: int, now: float) -> list[Any]:
    params: list[Any] = [mailing_id, after, array_literal(held), -1 if owner is None else owner, limit, now, mailing_id]
    return params if owner is None else [*params, owner, owner]


def _generations(outcomes: list[Outcome]) -> list[list[Outcome]]:
    """The outcomes in runs where no row appears twice, in order: one UPDATE writes a row once,
    and a row given back and released again within one batch must end as its last outcome."""
    runs: list[list[Outcome]] = [[]]
    seen: set[int] = set()
    for o in outcomes:
        if o.recipient_id in seen:
            runs.append([])
            seen = set()
        seen.add(o.recipient_id)
        runs[-1].append(o)
    return [run for run in runs if run]


def _outcome_arrays(outcomes: list[Outcome], now: float) -> list[str]:
    """The columns of _OUTCOMES_SQL's `v`, as _outcome_rows computes them row by row, each as
    one array literal (see array_literal)."""
    rows, _ = _outcome_rows(outcomes, now)
    released = [1 if o.in_doubt and not o.was_in_doubt else 0 for o in outcomes]
    resolved = [1 if not r and o.was_in_doubt and o.state in (RecipientState.SENT, RecipientState.FAILED) else 0
                for o, r in zip(outcomes, released)]
    columns: list[list[Any]] = [
        [row[8] for row in rows], [row[0] for row in rows], [row[1] for row in rows], [row[2] for row in rows],
        [row[3] for row in rows], [row[4] for row in rows], [row[5] for row in rows], [row[6] for row in rows],
        released, resolved, [o.keep_claim for o in outcomes], [o.suppress for o in outcomes],
    ]
    return [array_literal(column) for column in columns]


def array_literal(values: Sequence[Any]) -> str:
    """PostgreSQL's text form of a one-dimensional array ('{1,NULL,"it\\"s"}'), for a parameter
    the statement casts (`?::text[]`). The batch's arrays go as these strings rather than Python
    lists: psycopg adapts a list element by element in Python, which was 9% of a sender's CPU on
    PostgreSQL (py-spy, K=8); the server parses the literal in C. Every string is quoted (so
    "NULL" stays a string), with backslash and double quote escaped, which is all the array
    syntax needs inside quotes; NUL is refused by _params, as for any text."""
    parts: list[str] = []
    for value in values:
        if value is None:
            parts.append("NULL")
        elif value is True or value is False:
            parts.append("t" if value else "f")
        elif isinstance(value, str):
            parts.append('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')
        elif isinstance(value, float):
            parts.append(repr(value))  # exact: float8 input reads a repr back to the same double
        else:
            parts.append(str(int(value)))
    return "{" + ",".join(parts) + "}"


def _literal(value: Any) -> str:
    """One parameter of a batch statement as an SQL literal, written into the EXECUTE that runs
    it (the batch goes as one simple query). The batch's parameters are only integers, floats,
    None and strings (array literals, ISO times), so this is all it needs; psycopg's client-side
    binding did the same through a dumper per value and a pass of the whole query (a tenth of
    this process's CPU per batch, py-spy). A string is quoted with its single quotes doubled, as
    E'...' with backslashes doubled too when it has any (right whatever the server's
    standard_conforming_strings); NUL is refused before anything is sent (see _params), so the
    transaction rolls back whole. Its type comes from the prepared statement, as before (psycopg
    sent unknown-typed literals too)."""
    if value is None:
        return "NULL"
    if value is True or value is False:
        return "1" if value else "0"  # the schema's flags are 0/1 integers (see _params)
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f"'{value!r}'::float8"
    if isinstance(value, str):
        if "\0" in value:
            raise UserError(f"a text value contains a NUL character, which PostgreSQL cannot store: {_shown(value)}")
        if "\\" in value:
            return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"a batch parameter of type {type(value).__name__}")  # a bug: never sent unquoted


class _Batch:
    """One record-and-claim transaction as one message: `build` collects the statements (each a
    prepared one run by EXECUTE), `run` sends them joined in one simple query (bound on the
    client) and reads every result after the one wait.

    One message rather than a pipeline of statements: the server runs the whole message at once
    (one implicit transaction, so all or nothing, also for a sender cancelled while sending it),
    while a pipeline gives the event loop back between statements, and the batch held the
    mailing's row lock across those turns; a second sender's batch then waited for them (~1 ms a
    batch at K=32, py-spy and auto_explain, issue 15)."""

    def __init__(self, mailing_id: int, now: float, owner: int | None, columns: str = MAILING_LIST_COLUMNS) -> None:
        self.mailing_id, self.now, self.owner = mailing_id, now, owner
        self.columns = columns  # what the batch reads back of the mailing's row (mailing_columns)
        self.barred_marks: list[int] = []
        self.after = 0  # the last row the claim looked at (a further pass goes on after it)
        self._marks: list[int] = []
        self._sql: list[str] = []
        self._read: list[str] = []  # what each statement's result is: "marks", "due", "claim", "mailing" or ""
        self.due_from: int | None = None  # the lowest id the due statement made pending

    def _add(self, sql: str, params: Sequence[Any], read: str = "") -> None:
        name = _PREPARED[sql]  # every statement of the batch is one of its prepared ones
        self._sql.append(f"EXECUTE {name}({', '.join([_literal(p) for p in params])})" if params else f"EXECUTE {name}")
        self._read.append(read)

    def build(self, outcomes: list[Outcome], claim: int, rate: float | None, marks: list[int], held: list[int],
              *, retries: bool = True, after: int = 0) -> None:
        """`retries`: the mailing may have deferred rows (else no statement makes them due);
        `after`: the claim looks at rows after this id only (PgStore._claim_floor)."""
        m, now, owner = self.mailing_id, self.now, self.owner
        when = _iso_second(int(now))
        self._add(_LOCK_SHARED_SQL if owner is not None else _LOCK_SQL, ())
        if outcomes:
            fenced = owner is not None
            for run in _generations(outcomes):
                head = _outcome_arrays(run, now)
                bounces = any(o.suppress for o in run)
                self._add(_outcomes_sql(fenced, bounces),
                          [*head, now, owner, head[0], *([owner] if fenced else []), *([when] if bounces else [])])
        elif rate is not None:
            self._add(_RATE_SQL, (rate, m))
        if marks:
            # After the outcomes: a row one connection gave back and another took up again in the
            # same batch ends up `sending`.
            self._marks = marks
            me = -1 if owner is None else owner
            self._add(_MARKS_SQL, (array_literal(marks), now, m, m, now, me, m), "marks")
        if claim > 0:
            self._add(_PLANS_CUSTOM_SQL, ())
            if retries:
                self._add(_DUE_SQL, (m, now, m, m), "due")
            self._add(_claim_sql(owner), _claim_params(m, after, held, owner, claim, now), "claim")
            self._add(_PLANS_GENERIC_SQL, ())
        if outcomes:
            self._add(_counted_sql(self.columns), (rate, when, m), "mailing")
        else:
            self._add(_mailing_sql(self.columns), (m,), "mailing")

    async def run(self, pg: PgConnection, claim: int) -> tuple[list[Claimed], tuple[Any, ...] | None, bool]:
        """The claimed rows, the mailing's row, and whether the claim came back short because it
        skipped suppressed rows (the mailing may have more to claim after them)."""
        conn = await pg.ready()
        if pg.prepared_on is not conn:
            await _prepare_batch(conn)
            pg.prepared_on = conn
        found: dict[str, list[tuple[Any, ...]]] = {}
        async with psycopg.AsyncClientCursor(conn) as cur:
            await cur.execute(";".join(self._sql), prepare=False)  # bound here: see _literal
            for i, read in enumerate(self._read):
                if i:
                    cur.nextset()
                if read:
                    found[read] = await cur.fetchall()
        if self._marks:
            if self.owner is None:  # as on SQLite: only suppressed rows are barred
                self.barred_marks = [i for i, marked in found["marks"] if not marked]
            else:  # fenced: every row not marked `sending` for this sender (suppressed or taken over)
                marked = {i for i, ok in found["marks"] if ok}
                self.barred_marks = [i for i in self._marks if i not in marked]
        self.due_from = next(iter(found.get("due", [])), (None,))[0]
        picked = found.get("claim", [])
        row = next(iter(found["mailing"]), None)
        claimed = [_claimed(r) for r in picked if not r[7]]
        if picked:
            self.after = picked[-1][0]
        short = len(picked) == claim and len(claimed) < claim
        return claimed, row, short
