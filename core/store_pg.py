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
  the same steps, statement by statement; its claim query already takes rows `FOR UPDATE SKIP
  LOCKED`, ready for several senders claiming disjoint batches.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from .db_target import PgTarget
from .domain import MailingState
from .errors import NotFound, UserError
from .pg_schema import PG_BASE, PG_BASE_VERSION, PG_MIGRATIONS, PG_SCHEMA_VERSION
from .store import (
    MAILING_LIST_COLUMNS,
    Claimed,
    Mailing,
    Outcome,
    Store,
    Tx,
    _claimed,
    _mailing_from_row,
    _outcome_rows,
    iso,
    storage_error,
)

log = logging.getLogger(__name__)
# psycopg logs "error ignored terminating <AsyncPipeline [BAD]>" when the server goes away mid-pipeline;
# with no handler configured (the CLI) logging's last resort would print it to stderr as a second
# line next to our one-line error. A NullHandler keeps it off the terminal; a log file set up on
# the root logger (the background sender's) still receives it.
logging.getLogger("psycopg").addHandler(logging.NullHandler())

# Advisory lock keys (64-bit, one namespace per database): "mailtowr" and "mailtows" in ASCII.
WRITE_LOCK = 0x6D61696C746F7772
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
        if isinstance(value, str) and "\0" in value:
            # Checked before the statement goes out, so the transaction rolls back whole; the
            # inputs a person gives refuse NUL themselves, naming the field: this is the backstop.
            raise UserError(f"a text value contains a NUL character, which PostgreSQL cannot store: {_shown(value)}")
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

    def __init__(self, conn: psycopg.AsyncConnection[Any], target: PgTarget) -> None:
        self.conn = conn
        self.target = target
        self.in_write = False  # set by PgStore.write() for the length of a transaction

    async def ready(self) -> psycopg.AsyncConnection[Any]:
        if not (self.conn.closed or self.conn.broken):
            return self.conn
        if self.in_write:
            raise psycopg.OperationalError("the connection to the server was lost during a transaction")
        log.info("database %s: connection lost; connecting again", self.target)
        self.conn = await connect(self.target)
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
            conn = await connect(target)
        except Exception as exc:
            raise (storage_error(target, exc) or exc) from None
        store = cls(PgConnection(conn, target), target)
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
        try:
            await self.pg.conn.execute("ROLLBACK")
        except psycopg.Error:
            log.warning("ROLLBACK failed on %s", self.target, exc_info=True)

    async def data_version(self) -> int:
        """Changes whenever a transaction that wrote anything on the server starts or ends."""
        async with self.db.execute("SELECT pg_current_snapshot()::text") as cur:
            row = await cur.fetchone()
        return zlib.crc32(str(row[0]).encode())  # type: ignore[index]

    # ---- the sender's batch transaction (the twin of core/store._record_and_claim) ------------

    def record_now(self, *args: Any, **kwargs: Any) -> None:
        """No inline write on PostgreSQL: every statement is a round trip to the server, so the
        sender always takes the awaitable path (record_and_claim). SQLite's inline write would
        open a second connection to a file this store does not have."""
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
    ) -> tuple[list[Claimed], Mailing]:
        """What Store.record_and_claim does, in one PostgreSQL transaction (see there)."""
        async with self.write(shared=self.claim_owner is not None) as tx:
            claimed, row = await _record_and_claim(
                tx, mailing_id, outcomes, claim, rate, marks or [], held, barred, self.claim_owner
            )
        return claimed, _mailing_from_row(row)

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
            self._beat_conn = PgConnection(await connect(self.target, lock_timeout=BEAT_LOCK_TIMEOUT), self.target)
        return self._beat_conn

    async def _on_beat_db(self, sql: str, params: Sequence[Any]) -> tuple[int, list[tuple[Any, ...]]]:
        """One autocommit statement on the heartbeat's connection: (rowcount, rows)."""
        if self._beat_guard is None:
            self._beat_guard = asyncio.Lock()
        async with self._beat_guard:
            db = await self._beat_db()
            async with db.execute(sql, params) as cur:
                return cur.rowcount, await cur.fetchall()

    async def sender_heartbeat(self, sender_id: int, rate: float, connections: int, timeout: float) -> int | None:
        """As Store.sender_heartbeat, without the write lock (see above)."""
        updated, _ = await self._on_beat_db(
            f"UPDATE senders SET heartbeat_at = {self.NOW_SQL}, rate = ?, connections = ? WHERE id = ? AND state = 'running'",
            (rate, connections, sender_id),
        )
        if updated <= 0:
            return None
        return await self.live_senders(timeout)

    async def live_senders(self, timeout: float) -> int:
        _, rows = await self._on_beat_db(f"SELECT COUNT(*) FROM senders WHERE {self._ALIVE.format(now=self.NOW_SQL)}", (timeout,))
        return int(rows[0][0]) if rows else 0

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
        rows = await _fetchall(tx, f"UPDATE senders SET state = 'dead' WHERE {stale} RETURNING id, host, pid", params)
        return sorted((int(r[0]), str(r[1]), int(r[2])) for r in rows)

    async def retire_sender(self, sender_id: int) -> int:
        """As Store.retire_sender; then the heartbeat's connection is closed (the sender ends)."""
        try:
            return await super().retire_sender(sender_id)
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
        Senders keep LOCK_TIMEOUT: a short wait must not stop them. (A connection opened again
        after a loss has LOCK_TIMEOUT: a command that lost its connection is rare and short.)"""
        await self.pg.script(f"SET lock_timeout = {int(OPERATOR_LOCK_TIMEOUT * 1000)}")

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


async def _fetchone(tx: Tx, sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
    async with tx.db.execute(sql, params) as cur:
        return await cur.fetchone()


async def _fetchall(tx: Tx, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    async with tx.db.execute(sql, params) as cur:
        return await cur.fetchall()


async def _record_and_claim(
    tx: Tx,
    mailing_id: int,
    outcomes: list[Outcome],
    claim: int,
    rate: float | None,
    marks: list[int],
    held: Iterable[int],
    barred: set[int] | None,
    owner: int | None = None,
) -> tuple[list[Claimed], tuple[Any, ...]]:
    now = time.time()
    db = tx.db
    me = -1 if owner is None else owner  # fleet: claims carry their sender's id (core/fleet.py)
    written = owner is not None and bool(outcomes)
    if written:
        outcomes = await _write_owned_outcomes(tx, outcomes, owner, now)  # type: ignore[arg-type]
    if outcomes:
        rows, c = _outcome_rows(outcomes, now)
        if not written:
            await db.executemany(
                "UPDATE recipients SET state = ?, attempts = attempts + ?, "
                "in_doubt = GREATEST(in_doubt, ?), "
                "last_code = COALESCE(?, last_code), last_error = COALESCE(?, last_error), next_attempt_at = ?, "
                "first_deferred_at = COALESCE(first_deferred_at, ?), updated_at = ?, claimed_by = NULL WHERE id = ?",
                rows,
            )
        await db.execute(
            "UPDATE mailings SET sent = sent + ?, failed = failed + ?, deferred = deferred + ?, "
            "in_doubt = in_doubt + ? - ?, rate = COALESCE(?, rate), updated_at = ? WHERE id = ?",
            (c["sent"], c["failed"], c["deferred"], c["released_doubt"], c["resolved_doubt"], rate,
             iso(datetime.fromtimestamp(now, timezone.utc)), mailing_id),
        )
        await _suppress_bounced(tx, outcomes, now)
    elif rate is not None:
        await db.execute("UPDATE mailings SET rate = ? WHERE id = ?", (rate, mailing_id))
    if marks and owner is not None:
        await _mark_owned(tx, mailing_id, marks, owner, now, barred)
    elif marks:
        skipped_marks = await _bar_suppressed_marks(tx, mailing_id, marks, now)
        if barred is not None:
            barred.update(skipped_marks)
        await db.executemany(
            "UPDATE recipients SET state = 'sending', updated_at = ? WHERE id = ? AND state = 'pending' AND claimed_by IS NULL",
            [(now, recipient_id) for recipient_id in marks],
        )
    mailing_sql = f"SELECT {MAILING_LIST_COLUMNS} FROM mailings WHERE id = ?"
    row = await _fetchone(tx, mailing_sql, (mailing_id,))
    if row is None:
        raise NotFound(f"no mailing with id {mailing_id}")
    claimed: list[Claimed] = []
    if claim > 0 and row[6] == MailingState.SENDING.value:
        cur = await db.execute(
            "UPDATE recipients SET state = 'pending' WHERE mailing_id = ? AND state = 'deferred' AND next_attempt_at <= ?",
            (mailing_id, now),
        )
        due = max(cur.rowcount, 0)
        if due:
            await db.execute("UPDATE mailings SET deferred = deferred - ? WHERE id = ?", (due, mailing_id))
        claimed, skipped = await _claim_unsuppressed(tx, mailing_id, sorted(held), claim, now, me)
        if owner is not None and claimed:
            # Only while this sender is alive on disk (see core/store._record_and_claim).
            await db.execute("UPDATE recipients SET claimed_by = ? WHERE id = ANY(?::bigint[])"
                             " AND EXISTS (SELECT 1 FROM senders WHERE id = ? AND state = 'running')",
                             (owner, [c.id for c in claimed], owner))
        if due or skipped:
            row = await _fetchone(tx, mailing_sql, (mailing_id,))
    return claimed, row  # type: ignore[return-value]


# The claim: rows another transaction has locked are skipped, not waited for (several senders
# claiming at once get disjoint batches). Claimed rows stay `pending` on disk, as on SQLite.
CLAIM_SQL = (
    "SELECT r.id, r.email, r.name, r.fields, r.attempts, r.first_deferred_at, r.in_doubt,"
    " EXISTS (SELECT 1 FROM suppression s WHERE s.key = r.email_key) FROM recipients r"
    " WHERE r.mailing_id = ? AND r.state = 'pending' AND r.id > ?"
    f" AND {PgStore.NOT_HELD} AND (r.claimed_by IS NULL OR r.claimed_by = ?)"
    # Only a mailing that is `sending` hands out rows: a stop committed by another process is
    # honoured even by a claim that started before it.
    " AND EXISTS (SELECT 1 FROM mailings m WHERE m.id = r.mailing_id AND m.state = 'sending')"
    " ORDER BY r.id LIMIT ? FOR UPDATE OF r SKIP LOCKED"
)


async def _claim_unsuppressed(
    tx: Tx, mailing_id: int, held: list[int], claim: int, now: float, me: int = -1
) -> tuple[list[Claimed], int]:
    claimed: list[Claimed] = []
    skipped = after = 0
    for _ in range(_CLAIM_PASSES):
        picked = await _fetchall(tx, CLAIM_SQL, (mailing_id, after, held, me, claim - len(claimed)))
        if picked:
            after = picked[-1][0]
        barred = [r for r in picked if r[7]]
        claimed += [_claimed(r) for r in picked if not r[7]]
        if barred:
            await tx.db.executemany(
                "UPDATE recipients SET state = 'suppressed', updated_at = ? WHERE id = ?", [(now, r[0]) for r in barred]
            )
            doubt = sum(1 for r in barred if r[6])
            await tx.db.execute(
                "UPDATE mailings SET suppressed = suppressed + ?, in_doubt = in_doubt - ? WHERE id = ?",
                (len(barred), doubt, mailing_id),
            )
            skipped += len(barred)
        if not barred or len(claimed) >= claim:
            break
    return claimed, skipped


async def _write_owned_outcomes(tx: Tx, outcomes: list[Outcome], owner: int, now: float) -> list[Outcome]:
    """Write the outcomes of rows still claimed by `owner` (fleet: a row another sender took over
    is that sender's to record) and return those, in one round trip (counters follow from them)."""
    rows, _ = _outcome_rows(outcomes, now)
    written = await _returning_ids(
        tx,
        "UPDATE recipients SET state = ?, attempts = attempts + ?, in_doubt = GREATEST(in_doubt, ?), "
        "last_code = COALESCE(?, last_code), last_error = COALESCE(?, last_error), next_attempt_at = ?, "
        "first_deferred_at = COALESCE(first_deferred_at, ?), updated_at = ?, claimed_by = NULL "
        "WHERE id = ? AND claimed_by = ? RETURNING id",
        [(*row, owner) for row in rows],
    )
    mine = [o for o in outcomes if o.recipient_id in written]
    kept = [o.recipient_id for o in mine if o.keep_claim]  # back on this sender's own queue: still its own
    if kept:
        await tx.db.execute("UPDATE recipients SET claimed_by = ? WHERE id = ANY(?::bigint[])", (owner, kept))
    return mine


async def _mark_owned(tx: Tx, mailing_id: int, marks: list[int], owner: int, now: float, barred: set[int] | None) -> None:
    """Mark rows `sending` (the commit before their final dot) only if still claimed by `owner`
    (the fence) and their address is not suppressed, in one round trip; a row not marked is
    barred (no final dot): suppressed ones become `suppressed` (core/store._bar_suppressed_marks)."""
    marked = await _returning_ids(
        tx,
        "UPDATE recipients r SET state = 'sending', updated_at = ? WHERE r.id = ? AND r.state = 'pending'"
        " AND r.claimed_by = ? AND NOT EXISTS (SELECT 1 FROM suppression s WHERE s.key = r.email_key) RETURNING r.id",
        [(now, recipient_id, owner) for recipient_id in marks],
    )
    left = [i for i in marks if i not in marked]
    if left:
        await _bar_suppressed_marks(tx, mailing_id, left, now)
        if barred is not None:
            barred.update(left)


async def _returning_ids(tx: Tx, sql: str, rows: list[tuple[Any, ...]]) -> set[int]:
    """executemany of an `UPDATE ... RETURNING id` (pipelined by psycopg): the ids it updated."""
    conn = await tx.db.ready()  # type: ignore[attr-defined]
    ids: set[int] = set()
    async with conn.cursor() as cur:
        await cur.executemany(pg_sql(sql), [_params(row) for row in rows], returning=True)
        while True:
            ids.update(r[0] for r in await cur.fetchall())
            if not cur.nextset():
                break
    return ids


async def _bar_suppressed_marks(tx: Tx, mailing_id: int, marks: list[int], now: float) -> list[int]:
    """As core/store._bar_suppressed_marks: marked rows whose address is suppressed by now."""
    found = await _fetchall(
        tx,
        "SELECT r.id, r.in_doubt, r.state FROM recipients r WHERE r.id = ANY(?::bigint[]) AND r.mailing_id = ?"
        " AND (r.state = 'suppressed' OR (r.state = 'pending'"
        " AND EXISTS (SELECT 1 FROM suppression s WHERE s.key = r.email_key)))",
        (marks, mailing_id),
    )
    fresh = [(i, doubt) for i, doubt, state in found if state == "pending"]
    if fresh:
        await tx.db.executemany(
            "UPDATE recipients SET state = 'suppressed', updated_at = ? WHERE id = ?", [(now, i) for i, _ in fresh]
        )
        await tx.db.execute(
            "UPDATE mailings SET suppressed = suppressed + ?, in_doubt = in_doubt - ? WHERE id = ?",
            (len(fresh), sum(1 for _, doubt in fresh if doubt), mailing_id),
        )
    return [i for i, _, _ in found]


async def _suppress_bounced(tx: Tx, outcomes: list[Outcome], now: float) -> None:
    bounced = [(o.text or "", iso(datetime.fromtimestamp(now, timezone.utc)), o.recipient_id) for o in outcomes if o.suppress]
    if bounced:
        await tx.db.executemany(
            "INSERT INTO suppression (key, email, source, reason, mailing_id, added_at) "
            "SELECT email_key, email, 'bounce', ?, mailing_id, ? FROM recipients WHERE id = ? "
            "ON CONFLICT (key) DO NOTHING",
            bounced,
        )
