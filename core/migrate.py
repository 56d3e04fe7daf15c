"""`mailtower migrate --to postgresql://...`: copy a SQLite database into an empty PostgreSQL one.

What is copied: every table of the SQLite schema that holds the mailings' state, with its ids:
mailings, recipients (the ledger), events, settings, suppression, wave_groups, canary_rows, and
meta except `schema_version` (the target's store writes its own; the rest, e.g. the unsubscribe
secret, must move or the tokens already sent out would stop verifying). Nothing is local to one
host in the SQLite schema at version 6; tables named in LOCAL_TABLES (a later schema's
per-process state, such as registered senders) are skipped, and any other unknown table is
refused rather than silently left behind.

How, in this order, so a refusal changes nothing on either side:
1. The source is opened read-only (`file:...?mode=ro`), refused while a sender holds its lease
   (the ledger would move under the copy), and read in ONE read transaction: a CLI command that
   writes during the copy is simply not in it, the copy is one consistent snapshot.
2. Every value is checked in SQL on the source before the target is touched: PostgreSQL text
   cannot hold a NUL character and a column must hold its declared type (SQLite would store a
   blob or a string anywhere); the first offending row is named in one line.
3. The target is opened through the PostgreSQL store's own open (which creates the schema, or
   refuses a database with foreign tables), refused if any mailtower table already holds rows,
   and filled in ONE transaction holding the store's write lock, by COPY, streamed in chunks (a
   million-row ledger is never in memory); the identity sequences are set past the copied ids;
   the row counts per table and the ledger's counts per mailing and state are compared with the
   source's before COMMIT. Any failure rolls the transaction back: never a half copy (the empty
   schema the open created stays; a second migrate accepts it).
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .db_target import PgTarget, looks_like_postgres, parse_pg_url
from .errors import UserError
from .lease import SenderLease
from .store import SCHEMA_VERSION, check_database_path

# The tables copied, parents first (the order the lines are printed in), and the column that
# orders each (the primary key's first column).
TABLES: tuple[str, ...] = (
    "meta", "settings", "wave_groups", "mailings", "recipients", "events", "suppression", "canary_rows",
)
# Tables a later schema may add that hold per-process state of one installation, not data.
LOCAL_TABLES = frozenset({"senders"})
# Tables whose id is a generated identity on PostgreSQL: the sequence is set past the copied ids.
IDENTITY_TABLES = ("mailings", "recipients", "events", "wave_groups")
CHUNK = 5000  # rows per fetch from the source: bounded memory whatever the ledger's size
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


@dataclass(frozen=True, slots=True)
class TableCopy:
    table: str
    rows: int


@dataclass(frozen=True, slots=True)
class MigrationResult:
    tables: tuple[TableCopy, ...]
    seconds: float
    disagreements: tuple[str, ...] = ()  # mailings whose counters disagree with their ledger (copied as they are)

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)


def parse_to(value: str) -> PgTarget:
    """The --to value: a postgresql:// URL, else one line saying so."""
    if not looks_like_postgres(value):
        raise UserError(f"--to: {value!r} is not a PostgreSQL URL (postgresql://user@host:port/database)")
    return parse_pg_url(value, "--to")


# ---- the source -----------------------------------------------------------------------------


def open_source(path: Path) -> sqlite3.Connection:
    """The SQLite file, read-only, checked to be a mailtower database at this schema version."""
    if isinstance(path, PgTarget):
        raise UserError(f"--db: {path}: migrate copies FROM a SQLite file; give its path with --db")
    check_database_path(path)
    if not path.exists():
        raise UserError(f"--db: {path}: no such file")
    holder = SenderLease(path).holder()
    if holder is not None:
        raise UserError(f"--db: {path}: {holder.describe()} is sending from it; stop it first "
                        "(the ledger would change under the copy)")
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30.0)
    except sqlite3.Error as exc:
        raise UserError(f"--db: {path}: cannot open it read-only: {exc}") from None
    try:
        conn.execute("BEGIN")  # one read transaction: the whole copy sees one snapshot
        _check_source(conn, path)
        for table in TABLES:
            check_values(conn, table, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _check_source(conn: sqlite3.Connection, path: Path) -> None:
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.OperationalError as exc:  # locked, unreadable, a WAL file it may not open...
        raise UserError(f"--db: {path}: cannot read it ({exc})") from None
    except sqlite3.DatabaseError as exc:
        raise UserError(f"--db: {path}: not a mailtower database ({exc})") from None
    if "meta" not in names:
        raise UserError(f"--db: {path}: not a mailtower database (it has no meta table)")
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    version = row[0] if row else None
    if str(version) != str(SCHEMA_VERSION):
        if version is not None and str(version).isdigit() and int(version) < SCHEMA_VERSION:
            raise UserError(f"--db: {path}: schema version {version} is older than this mailtower's "
                            f"({SCHEMA_VERSION}); open it once (e.g. `mailtower status --db {path}`) to upgrade it")
        raise UserError(f"--db: {path}: schema version {version!r} is not this mailtower's ({SCHEMA_VERSION})")
    missing = [t for t in TABLES if t not in names]
    if missing:
        raise UserError(f"--db: {path}: not a complete mailtower database (no table {', '.join(missing)})")
    unknown = sorted(n for n in names - set(TABLES) - LOCAL_TABLES if not n.startswith("sqlite_"))
    if unknown:
        raise UserError(f"--db: {path}: it has tables migrate does not know ({', '.join(unknown)}); nothing copied")
    for table in TABLES:  # column names go into SQL text on both sides: plain identifiers only
        odd = [c for c in source_columns(conn, table) if not _IDENTIFIER.fullmatch(c)]
        if odd:
            raise UserError(f"--db: {path}: {table} has a column named {odd[0]!r}, which no mailtower schema has")


def source_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


# Which SQLite storage classes each declared column type may hold to reach PostgreSQL unchanged
# (TEXT is text there, INTEGER a bigint or integer, REAL a double precision).
_ACCEPTED = {
    "TEXT": ("text", "null"),
    "INTEGER": ("integer", "null"),
    "REAL": ("real", "integer", "null"),
}


def declared_types(conn: sqlite3.Connection, table: str) -> dict[str, str]:
    return {r[1]: str(r[2]).upper() for r in conn.execute(f"PRAGMA table_info({table})")}


def check_values(conn: sqlite3.Connection, table: str, path: Path) -> None:
    """Refuse (one line naming the row and column) a value PostgreSQL would refuse or change:
    a NUL in text, or a value of another type than the column's (a blob, a number as text...).
    One scan of the table in SQL, before anything is written anywhere."""
    conditions = []
    for name, kind in declared_types(conn, table).items():
        if kind not in _ACCEPTED:
            raise UserError(f"--db: {path}: {table}.{name} has a type migrate does not know ({kind}); nothing copied")
        kinds = ", ".join(f"'{k}'" for k in _ACCEPTED[kind])
        conditions.append(f"CASE WHEN typeof({name}) NOT IN ({kinds}) THEN '{name}: a ' || typeof({name}) ||"
                          f" ' value where the schema says {kind.lower()}' END")
        if kind == "TEXT":
            conditions.append(f"CASE WHEN instr(CAST({name} AS BLOB), x'00') > 0 THEN '{name}: it contains a NUL"
                              " character, which PostgreSQL text cannot hold' END")
    key = _row_key(conn, table)
    problem = conditions[0] if len(conditions) == 1 else f"COALESCE({', '.join(conditions)})"
    sql = f"SELECT {key}, {problem} AS problem FROM {table} WHERE problem IS NOT NULL LIMIT 1"
    row = conn.execute(sql).fetchone()
    if row is not None:
        raise UserError(f"--db: {path}: {table} row {row[0]!s}, column {row[1]}; fix or delete it, then migrate again "
                        "(nothing copied)")


def _row_key(conn: sqlite3.Connection, table: str) -> str:
    """How a row is named in a message: its primary key (columns joined with '/')."""
    keys = [r[1] for r in sorted(conn.execute(f"PRAGMA table_info({table})"), key=lambda r: r[5]) if r[5]]
    return " || '/' || ".join(f"quote({k})" for k in keys) if keys else "rowid"


def stream_rows(conn: sqlite3.Connection, table: str, columns: list[str], path: Path) -> Iterator[list[tuple[Any, ...]]]:
    """The table's rows in chunks of CHUNK (never the whole table in memory)."""
    where = " WHERE key <> 'schema_version'" if table == "meta" else ""
    cur = conn.execute(f"SELECT {', '.join(columns)} FROM {table}{where}")
    while True:
        try:
            chunk = cur.fetchmany(CHUNK)
        except sqlite3.OperationalError as exc:
            if "decode" in str(exc).lower():
                raise UserError(f"--db: {path}: {table}: {_undecodable_row(conn, table, columns)} holds text that is "
                                "not valid UTF-8; fix it, then migrate again (nothing copied)") from None
            raise
        if not chunk:
            return
        yield chunk


def _undecodable_row(conn: sqlite3.Connection, table: str, columns: list[str]) -> str:
    """Which row holds text that is not UTF-8 (read as bytes to find it; only on that error)."""
    key_sql = _row_key(conn, table)
    conn.text_factory = bytes
    try:
        for row in conn.execute(f"SELECT {key_sql}, {', '.join(columns)} FROM {table}"):
            for name, value in zip(columns, row[1:]):
                if isinstance(value, bytes):
                    try:
                        value.decode("utf-8")
                    except UnicodeDecodeError:
                        return f"row {row[0].decode('utf-8', 'replace')}, column {name},"
    finally:
        conn.text_factory = str
    return "a row"


def count_rows(conn: Any, table: str) -> int:
    where = " WHERE key <> 'schema_version'" if table == "meta" else ""
    return int(conn.execute(f"SELECT COUNT(*) FROM {table}{where}").fetchone()[0])


# Each mailing's counters against its ledger: total = its rows, sent and failed = rows in that state.
AGREEMENT_SQL = (
    "SELECT m.id, m.total, COUNT(r.id), m.sent, COUNT(CASE WHEN r.state = 'sent' THEN 1 END), "
    "m.failed, COUNT(CASE WHEN r.state = 'failed' THEN 1 END) "
    "FROM mailings m LEFT JOIN recipients r ON r.mailing_id = m.id GROUP BY m.id, m.total, m.sent, m.failed ORDER BY m.id"
)
LEDGER_SQL = "SELECT mailing_id, state, COUNT(*) FROM recipients GROUP BY mailing_id, state ORDER BY 1, 2"
COUNTERS_SQL = ("SELECT id, total, sent, failed, deferred, in_doubt, suppressed FROM mailings ORDER BY id")


def sqlite_sequence(conn: sqlite3.Connection, table: str) -> int:
    """An AUTOINCREMENT table's highest id ever handed out (ids of deleted rows are not reused)."""
    try:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    except sqlite3.OperationalError:
        return 0  # no AUTOINCREMENT table at all
    return int(row[0]) if row and row[0] is not None else 0


def deleted_id_floor(conn: sqlite3.Connection, table: str) -> int:
    """The highest mailing id deleted (core/store.py keeps it so that no id is handed out twice)."""
    if table != "mailings":
        return 0
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'mailing_id_floor'").fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(row[0]) if row and str(row[0]).isdigit() else 0


# ---- the target -----------------------------------------------------------------------------


async def migrate(source: Path, target: PgTarget, say: Callable[[str], None]) -> MigrationResult:
    """Copy `source` into `target` (see the module's docstring); `say` gets one line per table."""
    started = time.monotonic()
    src = open_source(source)
    try:
        return await _copy(src, source, target, say, started)
    finally:
        src.close()


async def _copy(src: sqlite3.Connection, source: Path, target: PgTarget, say: Callable[[str], None],
                started: float) -> MigrationResult:
    store = await _open_target(target)
    import psycopg  # present: the open above needed it

    try:
        async with store.write():  # one transaction, the write lock held: nobody writes meanwhile
            try:
                copies = await _fill(src, store.pg.conn, source, target)
                disagreements = await ledger_disagreements(store.pg.conn)
            except psycopg.Error as exc:  # e.g. a number out of a column's range: rolled back, said once
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                where = (getattr(getattr(exc, "diag", None), "context", None) or "").strip().splitlines()
                reason = f"{where[0]}: {reason}" if where else reason  # "COPY recipients, line 39, column last_code"
                raise UserError(f"--to: {target}: the copy failed and was rolled back, nothing copied: {reason}") from None
    finally:
        await store.close()
    for copy in copies:  # after COMMIT: a line says what is there
        say(f"{copy.table}: {copy.rows:,} rows copied and verified")
    return MigrationResult(tuple(copies), time.monotonic() - started, disagreements)


async def _fill(src: sqlite3.Connection, conn: Any, source: Path, target: PgTarget) -> list[TableCopy]:
    for table in TABLES:
        _refuse_extra_columns(src, table, await _target_columns(conn, table), source)
    await _refuse_data(conn, target)
    copies = []
    for table in TABLES:
        rows = await _copy_table(src, conn, table, source_columns(src, table), source)
        copies.append(TableCopy(table, rows))
    await _set_sequences(src, conn)
    await _verify(src, conn, copies, target)
    return copies


async def ledger_disagreements(conn: Any) -> tuple[str, ...]:
    """Mailings (on the target, after the copy) whose counters do not match their ledger. The
    copy is exact either way; a disagreement was in the source already and is reported."""
    cur = await conn.execute(AGREEMENT_SQL)
    said = []
    for mailing_id, *pairs in await cur.fetchall():
        wrong = [f"{name} {pairs[i]} but {pairs[i + 1]} rows" for i, name in ((0, "total"), (2, "sent"), (4, "failed"))
                 if pairs[i] != pairs[i + 1]]
        if wrong:
            said.append(f"mailing {mailing_id}: its counters say {', '.join(wrong)} in the ledger (copied as they were)")
    return tuple(said)


async def _open_target(target: PgTarget) -> Any:
    from .store import open_store  # names the postgres extra when psycopg is missing

    return await open_store(target)


async def _target_columns(conn: Any, table: str) -> dict[str, str]:
    cur = await conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = %s", (table,))
    return {name: kind for name, kind in await cur.fetchall()}


def _refuse_extra_columns(src: sqlite3.Connection, table: str, target: dict[str, str], source: Path) -> None:
    extra = [c for c in source_columns(src, table) if c not in target]
    if extra:
        raise UserError(f"--db: {source}: {table} has columns the PostgreSQL schema lacks ({', '.join(extra)}); "
                        "nothing copied")


async def _refuse_data(conn: Any, target: PgTarget) -> None:
    """An empty schema is fine (a failed migrate leaves one); any row is somebody's data."""
    for table in TABLES:
        where = " WHERE key <> 'schema_version'" if table == "meta" else ""
        cur = await conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table}{where})")
        if (await cur.fetchone())[0]:
            raise UserError(f"--to: {target}: it already holds mailtower data (table {table} is not empty); "
                            "migrate copies into an empty database only")


async def _copy_table(src: sqlite3.Connection, conn: Any, table: str, columns: list[str], source: Path) -> int:
    rows = 0
    cur = conn.cursor()
    async with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for chunk in stream_rows(src, table, columns, source):
            for row in chunk:
                await copy.write_row(row)
            rows += len(chunk)
    return rows


async def _set_sequences(src: sqlite3.Connection, conn: Any) -> None:
    """Each identity goes on after the highest id copied (or ever handed out, for AUTOINCREMENT)."""
    for table in IDENTITY_TABLES:
        cur = await conn.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}")
        high = max(int((await cur.fetchone())[0]), sqlite_sequence(src, table), deleted_id_floor(src, table))
        await conn.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), %s, %s)", (max(high, 1), high > 0))


async def _verify(src: sqlite3.Connection, conn: Any, copies: list[TableCopy], target: PgTarget) -> None:
    """Counts per table, the ledger's counts per mailing and state, and each mailing's counters
    equal on both sides, read back from the target inside the transaction, before COMMIT."""
    for copy in copies:
        where = " WHERE key <> 'schema_version'" if copy.table == "meta" else ""
        cur = await conn.execute(f"SELECT COUNT(*) FROM {copy.table}{where}")
        there = int((await cur.fetchone())[0])
        here = count_rows(src, copy.table)
        if not here == there == copy.rows:
            raise UserError(f"--to: {target}: {copy.table}: {there} rows arrived of {here}; nothing copied")
    for name, sql in (("the ledger's counts per mailing", LEDGER_SQL), ("the mailings' counters", COUNTERS_SQL)):
        cur = await conn.execute(sql)
        there = [tuple(r) for r in await cur.fetchall()]
        here = [tuple(r) for r in src.execute(sql).fetchall()]
        if here != there:
            raise UserError(f"--to: {target}: {name} differ after the copy; nothing copied")
