"""The one place that speaks SQL: mailings, the per-recipient ledger, events, settings.

One SQLite file in WAL mode. Every write happens inside `Store.write()`, a BEGIN IMMEDIATE
transaction, so two processes on one database never interleave half-done changes. Mailing
counters are updated in the same transaction as the ledger rows they summarise.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import itertools
import json
import logging
import os
import secrets
import sqlite3
import stat
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields  # `fields` is a column and a parameter here
from datetime import datetime, timezone
from operator import attrgetter
from pathlib import Path
from typing import Any

import aiosqlite

from .domain import (
    Canary,
    CanaryPhase,
    ImportedRow,
    Mailing,
    MailingState,
    Recipient,
    RecipientState,
    Schedule,
    Section,
)
from .db_errors import is_pg_error, pg_failure
from .db_target import INSTALL_HINT, PgTarget
from .errors import NotFound, UserError

log = logging.getLogger(__name__)

# How often the sender's inline ledger writes have the WAL checkpointed (Store._checkpoint_soon):
# at ~7 WAL pages a write, a few thousand pages a second at most.
CHECKPOINT_INTERVAL = 0.1
CHECKPOINT_WAIT_MS = 20  # RESTART's wait for the writer under way
RESTART_FRAMES = 1000  # the WAL's length (pages) at which it is started again: SQLite's own default

SCHEMA_VERSION = 9

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE mailings (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        subject TEXT NOT NULL,
        from_addr TEXT NOT NULL,
        text_body TEXT,
        html_body TEXT,
        fields TEXT NOT NULL DEFAULT '[]',
        state TEXT NOT NULL,
        position INTEGER,
        send_at_local TEXT,
        tz TEXT,
        send_at_utc TEXT,
        tzdata_version TEXT,
        missed INTEGER NOT NULL DEFAULT 0,
        total INTEGER NOT NULL DEFAULT 0,
        sent INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        deferred INTEGER NOT NULL DEFAULT 0,
        in_doubt INTEGER NOT NULL DEFAULT 0,
        rate REAL NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        updated_at TEXT NOT NULL,
        last_error TEXT,
        parent_id INTEGER
    );
    CREATE INDEX mailings_state ON mailings(state, position);
    CREATE TABLE recipients (
        id INTEGER PRIMARY KEY,
        mailing_id INTEGER NOT NULL,
        email TEXT NOT NULL,
        email_key TEXT NOT NULL,
        name TEXT NOT NULL DEFAULT '',
        tz TEXT NOT NULL DEFAULT '',
        fields TEXT NOT NULL DEFAULT '{}',
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        in_doubt INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        first_deferred_at REAL,
        last_code INTEGER,
        last_error TEXT,
        updated_at REAL
    );
    CREATE UNIQUE INDEX recipients_key ON recipients(mailing_id, email_key);
    CREATE INDEX recipients_work ON recipients(mailing_id, state, id);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        mailing_id INTEGER NOT NULL,
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX events_mailing ON events(mailing_id, id);
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL, changed_at TEXT NOT NULL);
    """,
    # Paging the remaining recipients of a million-row mailing walks this index in order
    # instead of sorting every remaining id (dropped by 8: _remaining_arms does it without).
    2: """
    CREATE INDEX recipients_remaining ON recipients(mailing_id, id)
        WHERE state IN ('pending', 'sending', 'deferred');
    CREATE INDEX mailings_due ON mailings(send_at_utc) WHERE state = 'scheduled';
    """,
    # Every change to a mailing bumps its version, so a dashboard can tell which sections
    # changed without reading them all (the sender's progress touches only Current).
    3: """
    ALTER TABLE mailings ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
    CREATE TRIGGER mailings_version AFTER UPDATE ON mailings
        WHEN NEW.version = OLD.version
        BEGIN UPDATE mailings SET version = OLD.version + 1 WHERE id = NEW.id; END;
    """,
    # Suppression and one-click unsubscribe (issue 13, items 6-7): one suppression list per
    # database keyed like recipients.email_key (looked up by primary key when a row is claimed),
    # the count of rows skipped as suppressed, and a mailing's List-Unsubscribe targets.
    4: """
    CREATE TABLE suppression (
        key TEXT PRIMARY KEY,
        email TEXT NOT NULL,
        source TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        mailing_id INTEGER,
        added_at TEXT NOT NULL
    ) WITHOUT ROWID;
    ALTER TABLE mailings ADD COLUMN suppressed INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE mailings ADD COLUMN unsubscribe_url TEXT;
    ALTER TABLE mailings ADD COLUMN unsubscribe_mailto TEXT;
    """,
    # Local-time waves (issue 14): the mailings one local-time schedule made share a wave group.
    # wave_parent is the name the operator gave (the group's name in the Scheduled panel),
    # wave_zones the zones of the wave and their recipients when it was planned (JSON pairs).
    # wave_groups hands out group ids that are never reused, and records what was asked.
    5: """
    ALTER TABLE mailings ADD COLUMN wave_group INTEGER;
    ALTER TABLE mailings ADD COLUMN wave_parent TEXT;
    ALTER TABLE mailings ADD COLUMN wave_zones TEXT;
    CREATE TABLE wave_groups (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        send_at_local TEXT NOT NULL,
        default_tz TEXT,
        passed TEXT,
        created_at TEXT NOT NULL
    );
    CREATE INDEX mailings_wave_group ON mailings(wave_group) WHERE wave_group IS NOT NULL;
    """,
    # Breaker and canary (core/breaker.py, core/canary.py): per-mailing thresholds (NULL: the
    # global settings), what tripped, since when outcomes count for the breaker (a restart after
    # a trip starts a fresh window), the canary plan/progress as JSON, and the canary's sample.
    6: """
    ALTER TABLE mailings ADD COLUMN breaker_hard REAL;
    ALTER TABLE mailings ADD COLUMN breaker_soft REAL;
    ALTER TABLE mailings ADD COLUMN tripped TEXT;
    ALTER TABLE mailings ADD COLUMN breaker_since REAL NOT NULL DEFAULT 0;
    ALTER TABLE mailings ADD COLUMN canary TEXT;
    CREATE TABLE canary_rows (
        mailing_id INTEGER NOT NULL,
        recipient_id INTEGER NOT NULL,
        PRIMARY KEY (mailing_id, recipient_id)
    ) WITHOUT ROWID;
    """,
    # Several senders on one database (issue 15, core/fleet.py): who is sending (a heartbeat in the
    # database's clock, epoch seconds) and which sender holds a ledger row (NULL: nobody).
    7: """
    CREATE TABLE senders (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started_at REAL NOT NULL,
        heartbeat_at REAL NOT NULL,
        rate REAL NOT NULL DEFAULT 0,
        connections INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT 'running'
    );
    ALTER TABLE recipients ADD COLUMN claimed_by INTEGER;
    CREATE INDEX recipients_claimed ON recipients(claimed_by) WHERE claimed_by IS NOT NULL;
    """,
    # The sender's write before each final dot changes a row's `state` twice a message (its
    # `sending` mark, then its outcome), and SQLite updates every index that names a changed
    # column, a partial index's WHERE included: this one cost about a third of that write
    # (issue 12). The remaining recipients are read in id order by merging one ordered walk of
    # recipients_work per remaining state instead (_remaining_arms): a page as fast, an offset
    # about twice as slow (21 ms instead of 10 for 90,000 remaining rows). PostgreSQL keeps it.
    8: """
    DROP INDEX IF EXISTS recipients_remaining;
    """,
    # The fleet's hourly budget (core/fleet.py, FleetMember._count_budget): each sender's own
    # sends within the budget's window, written with its heartbeat, so that what one sender may
    # still send never counts what another may still send as left over.
    9: """
    ALTER TABLE senders ADD COLUMN budget_sent INTEGER NOT NULL DEFAULT 0;
    """,
}

# Recipient states that count as "not received yet".
REMAINING_STATES = (RecipientState.PENDING.value, RecipientState.SENDING.value, RecipientState.DEFERRED.value)

# Moving or copying recipients into a mailing (Tx._indexes_set_aside): below this many rows the
# indexes are kept up to date row by row; above it they are built again when the rows are at
# least a 1/REBUILD_ROW_COST share of the table (measured: ~20 us a row kept up to date, ~4 us a
# row of the table to build `recipients_key` and `recipients_work` again).
REBUILD_MIN_ROWS = 20_000
REBUILD_ROW_COST = 5


@dataclass(frozen=True)
class _Counts:
    """Recipients moved between mailings and the counters they carry."""

    total: int
    deferred: int
    in_doubt: int

    def __add__(self, other: _Counts) -> _Counts:
        return _Counts(self.total + other.total, self.deferred + other.deferred, self.in_doubt + other.in_doubt)

    def __neg__(self) -> _Counts:
        return _Counts(-self.total, -self.deferred, -self.in_doubt)


_NONE = _Counts(0, 0, 0)


def _remaining_arms(columns: str, where: str, params: list[Any]) -> tuple[str, list[Any]]:
    """The remaining recipients of mailing `?` (params[0]) with `where` (and the rest of params),
    ready for `ORDER BY id`: one SELECT per remaining state, joined by UNION ALL, which SQLite
    merges in id order, each arm an ordered range of recipients_work (mailing_id, state, id), so
    a page or an offset walks only remaining rows and sorts nothing."""
    sql = " UNION ALL ".join(
        f"SELECT {columns} FROM recipients WHERE mailing_id = ? AND state = '{state}'{where}" for state in REMAINING_STATES
    )
    return sql, params * len(REMAINING_STATES)


def _statements(script: str) -> list[str]:
    """Split a migration into statements (a trigger's body holds semicolons of its own)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(dt: datetime | None, timespec: str = "seconds") -> str | None:
    return None if dt is None else dt.astimezone(timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")


def parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


MAILING_COLUMNS = (
    "id, name, subject, from_addr, text_body, html_body, state, position, send_at_local, tz, "
    "send_at_utc, tzdata_version, missed, total, sent, failed, deferred, in_doubt, created_at, "
    "started_at, finished_at, last_error, parent_id, rate, fields, suppressed, unsubscribe_url, unsubscribe_mailto, "
    "wave_group, wave_parent, breaker_hard, breaker_soft, tripped, breaker_since, canary"
)
# The list views never need the bodies; leaving them out keeps 10,000-row sections cheap.
MAILING_LIST_COLUMNS = MAILING_COLUMNS.replace("text_body, html_body", "NULL, NULL")


def _mailing_from_row(row: sqlite3.Row | tuple[Any, ...]) -> Mailing:
    schedule = None
    if row[8] and row[9] and row[10]:
        schedule = Schedule(
            local=datetime.fromisoformat(row[8]),
            tz=row[9],
            utc=parse_iso(row[10]),  # type: ignore[arg-type]
            tzdata_version=row[11] or "",
        )
    return Mailing(
        id=row[0],
        name=row[1],
        subject=row[2],
        from_addr=row[3],
        text_body=row[4],
        html_body=row[5],
        state=MailingState(row[6]),
        position=row[7],
        schedule=schedule,
        missed=bool(row[12]),
        total=row[13],
        sent=row[14],
        failed=row[15],
        deferred=row[16],
        in_doubt=row[17],
        created_at=parse_iso(row[18]),  # type: ignore[arg-type]
        started_at=parse_iso(row[19]),
        finished_at=parse_iso(row[20]),
        last_error=row[21],
        parent_id=row[22],
        rate=row[23] or 0.0,
        fields=tuple(json.loads(row[24] or "[]")),
        suppressed=row[25] or 0,
        unsubscribe_url=row[26],
        unsubscribe_mailto=row[27],
        wave_group=row[28],
        wave_parent=row[29],
        breaker_hard=row[30],
        breaker_soft=row[31],
        tripped=row[32],
        breaker_since=row[33] or 0.0,
        canary=canary_from_text(row[34]),
    )


def canary_from_text(text: str | None) -> Canary | None:
    """The canary column (JSON) as a Canary; None when there is none or it cannot be read."""
    if not text:
        return None
    try:
        data = json.loads(text)
        return Canary(
            size=float(data["size"]), percent=bool(data["percent"]), rate=float(data["rate"]),
            wait=float(data["wait"]), phase=CanaryPhase(data["phase"]), total=int(data.get("total", 0)),
            done=int(data.get("done", 0)), until=None if data.get("until") is None else float(data["until"]),
        )
    except (ValueError, KeyError, TypeError):
        log.warning("unreadable canary column %r; ignored", text[:80])
        return None


def canary_text(canary: Canary | None) -> str | None:
    if canary is None:
        return None
    return json.dumps({"size": canary.size, "percent": canary.percent, "rate": canary.rate, "wait": canary.wait,
                       "phase": canary.phase.value, "total": canary.total, "done": canary.done, "until": canary.until})


def _recipient_from_row(row: tuple[Any, ...]) -> Recipient:
    return Recipient(
        id=row[0],
        mailing_id=row[1],
        email=row[2],
        name=row[3],
        tz=row[4],
        fields=json.loads(row[5]) if row[5] and row[5] != "{}" else {},
        state=RecipientState(row[6]),
        attempts=row[7],
        in_doubt=bool(row[8]),
        last_code=row[9],
        last_error=row[10],
        next_attempt_at=datetime.fromtimestamp(row[11], timezone.utc) if row[11] else None,
    )


RECIPIENT_COLUMNS = (
    "id, mailing_id, email, name, tz, fields, state, attempts, in_doubt, last_code, last_error, next_attempt_at"
)


@dataclass(frozen=True, slots=True)
class Claimed:
    """A ledger row the sender holds in memory to send. On disk it stays `pending` until a
    connection is about to send it (see `_record_and_claim`), so only rows that may really have
    reached a server are ever found `sending` after a crash."""

    id: int
    email: str
    name: str
    fields: dict[str, str]
    attempts: int
    first_deferred_at: float | None
    in_doubt: bool = False  # an earlier attempt may have been delivered


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one claimed row, to be written in the next batch."""

    recipient_id: int
    state: RecipientState  # SENT, FAILED, DEFERRED, or PENDING (released, not attempted)
    code: int | None = None
    text: str | None = None
    next_attempt_at: float | None = None
    in_doubt: bool = False  # this attempt broke off after the final dot (released, deferred or given up)
    counted_attempt: bool = True
    was_in_doubt: bool = False  # the row was already in doubt when it was claimed
    suppress: bool = False  # FAILED as an unknown or disabled mailbox: its address joins the suppression list
    keep_claim: bool = False  # fleet: PENDING for this sender's own queue again, so it stays claimed by it


@dataclass(frozen=True, slots=True)
class ImportSummary:
    """What an import of recipients did: rows added, duplicates, suppressed rows, notes for the operator."""

    imported: int
    duplicates: list[int]  # line numbers of rows whose address was already in the mailing
    suppressed: int = 0  # rows skipped because their address is on the suppression list
    notes: tuple[str, ...] = ()  # what the operator should know about the file (one line each)


@dataclass
class StagedRows:
    """A recipient file on its way into a mailing (Store.staged_rows, then Tx.insert_staged).

    SQLite: read and checked already, its rows in `table` (a TEMP table of the store's
    connection), `count` of them, with the lines that repeated an address of the file and how
    many suppressed addresses were left out. PostgreSQL: `table` is None and `rows` is read
    inside the write transaction."""

    rows: Iterator[ImportedRow]
    table: str | None = None
    count: int = 0
    duplicates: list[int] = field(default_factory=list)
    suppressed: int = 0


# ---- opening ------------------------------------------------------------------------------

# sqlite3 reports storage faults only as text; these phrases (from sqlite3_errstr) say which.
_STORAGE_FAULTS: tuple[tuple[str, str], ...] = (
    ("disk is full", "the disk is full"),
    ("readonly database", "it is read-only (file permissions or a read-only filesystem)"),
    ("read-only", "it is read-only (file permissions or a read-only filesystem)"),
    ("file is not a database", "it is not a SQLite database"),
    ("malformed", "the database is damaged (truncated or corrupt)"),
    ("disk i/o error", "input/output error (disk failure, a full disk, or the file changed underneath)"),
    ("unable to open database file", "SQLite cannot open it or create its -wal/-shm files beside it"),
    ("authorization denied", "access was denied"),
)
# OSError numbers that mean the storage refused, not that mailtower is wrong.
_STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.ENOTDIR,
     errno.EISDIR, errno.ENOENT, errno.ELOOP, errno.ENAMETOOLONG, errno.ENXIO, errno.ETXTBSY}
)


def storage_error(path: Path, exc: BaseException) -> UserError | None:
    """A one-line UserError naming the file for a storage fault (full disk, read-only, not a
    database, damaged...), or None when `exc` is not one and so is a bug."""
    if isinstance(exc, UserError):
        return exc
    if is_pg_error(exc):
        return pg_failure(path, exc)  # PostgreSQL (core/store_pg.py): server down, auth, disk full...
    if isinstance(exc, sqlite3.Error):
        text = str(exc).lower()
        for phrase, meaning in _STORAGE_FAULTS:
            if phrase in text:
                return UserError(f"database {path}: {meaning}")
        return None
    if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
        reason = exc.strerror or str(exc)
        if exc.filename is not None:
            return UserError(f"{exc.filename}: {reason}")
        return UserError(f"{reason} (database {path})")
    return None


# SQLite's smallest page: a database file is empty (new) or at least one page long.
MIN_DATABASE_BYTES = 512


def check_database_path(path: Path) -> None:
    """Refuse, before SQLite sees it, a path that cannot be a database file.

    SQLite would block for ever on a FIFO, write into a device, or fail with a bare
    "unable to open database file"; each case gets its own one line here instead. The
    directory is never created: a mistyped --db must not leave a new tree behind (the
    default location is prepared by the front end)."""
    if str(path) == "":
        raise UserError("database: an empty path is not a file name")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise UserError(f"database {path}: {exc.strerror or exc}") from None
    if info is None:
        if os.path.islink(path):
            raise UserError(f"database {path}: a symbolic link to {os.readlink(path)}, which does not exist")
        parent = path.parent
        if not parent.is_dir():
            what = "is not a directory" if parent.exists() else "does not exist"
            raise UserError(f"database {path}: the directory {parent} {what}")
        return
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"database {path}: is a directory, not a database file")
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"database {path}: is {_file_kind(info.st_mode)}, not a regular file")
    if info.st_nlink > 1:
        # SQLite finds a database's -wal and journal by the name it was opened with; through two
        # hard links two processes would use two journals (a documented way to corrupt it), and
        # no lock could be shared by every name. A symbolic link is fine: it resolves to one name.
        raise UserError(
            f"database {path}: the file has {info.st_nlink} hard links; a database must have one name "
            "(remove the other links, or use a symbolic link)"
        )
    if 0 < info.st_size < MIN_DATABASE_BYTES:
        # SQLite takes a file of one byte for an empty database and writes over it (a file holding
        # only a newline, say); no database file is this short, so it is somebody else's file.
        size = f"{info.st_size} byte{'s' if info.st_size > 1 else ''}"
        raise UserError(f"database {path}: the file holds {size}, too few for a SQLite database "
                        f"(one is empty or at least {MIN_DATABASE_BYTES} bytes); it was left as it is: give a new file name")
    _check_companions(path)


def _check_companions(path: Path) -> None:
    """SQLite keeps its -wal and -shm files beside the database under the resolved name."""
    real = Path(os.path.realpath(path))
    for suffix in ("-wal", "-shm", "-journal"):
        companion = real.with_name(real.name + suffix)
        try:
            info = os.stat(companion)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise UserError(f"database {path}: {companion}: {exc.strerror or exc}") from None
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else _file_kind(info.st_mode)
            raise UserError(f"database {path}: its {suffix[1:]} file {companion} is {kind}, not a regular file")


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "a special file")


def _create_private_file(path: Path) -> None:
    """Create the database file readable by its owner only, before SQLite opens it.

    O_EXCL with O_NOFOLLOW: a file or link that appeared since the check is never
    followed or truncated, it is opened by SQLite as it is (and checked again)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise UserError(f"database {path}: cannot create it: {exc.strerror or exc}") from None
    os.close(fd)


def sqlite_filename(path: Path) -> str:
    """The name SQLite is given for the database file `path` names: that path made absolute.
    SQLite built with SQLITE_USE_URI (Debian's is) reads a name starting with `file:` as a URI
    (`file:x.db?mode=memory` would be x.db, in memory) and `:memory:` as no file at all, while the
    checks, the sender lease and the output protection see the file as named: a name starting
    with '/' is always a plain file name to SQLite, so both mean one and the same file."""
    return str(Path(path).absolute())


def remove_if_unused(path: Path) -> bool:
    """Remove the SQLite database `path` (and its -wal, -shm and -journal files) if it holds
    nothing but mailtower's empty schema: for a command that created it and then refused its
    input, which must leave nothing behind. False (kept) if anything was written to it, if it is
    not one of ours, if another process has it open, or if it cannot be read.

    In WAL mode a connection that merely has the file open would go on writing into the removed
    file without an error, so the file leaves WAL mode first, which SQLite allows only while no
    other connection has it open; then the check and the removal happen under the exclusive
    lock. A process that opened the file meanwhile waits for that lock and then finds its file
    gone (Store.open refuses it, see _refuse_if_replaced)."""
    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(sqlite_filename(path))}?mode=rw", uri=True,
                               isolation_level=None, timeout=0)
    except sqlite3.Error:
        return False
    try:
        if conn.execute("PRAGMA journal_mode = DELETE").fetchone() != ("delete",):
            return False
        conn.execute("BEGIN EXCLUSIVE")
        tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        if "meta" not in tables or conn.execute("SELECT key FROM meta").fetchall() != [("schema_version",)]:
            return False
        for table in tables:
            if table not in ("meta", "sqlite_sequence") and conn.execute(f'SELECT 1 FROM "{table}" LIMIT 1').fetchone():
                return False
        for name in (path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))):
            try:
                name.unlink()
            except FileNotFoundError:
                pass
        return True
    except (sqlite3.Error, OSError):
        return False
    finally:
        conn.close()  # rolls the empty transaction back; a kept file goes back to WAL at its next open


def _refuse_if_replaced(path: Path, opened: os.stat_result, when: str = "while it was being opened; try again") -> None:
    """After the first read of a database just opened (which waited for any lock on it): the name
    still names the file that was opened. A refused command that made the database may have
    removed it meanwhile (remove_if_unused); writing on would go into a file nobody can open."""
    try:
        now = os.stat(path)
    except OSError:  # gone, or its filesystem unmounted (ENOENT, ENOTCONN, ESTALE...)
        now = None
    if now is None or (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
        raise UserError(f"database {path}: the file was removed, moved or replaced {when}")


_SHOWN_TABLES = 5


def _look_before_writing(path: Path) -> None:
    """Read the file through a read-only connection before any connection that can write opens it.

    Refused here, with nothing changed: someone else's database (tables but no mailtower schema
    version, or an empty schema whose header carries another application's id or version), and a
    file that reads as damaged. The last matters with a -wal beside it: SQLite cannot tell a -wal
    of another database (or of another copy of this one) from this one's, and the last writing
    connection to close copies it into the file and deletes it, so a command that only said
    "damaged" had destroyed a database that moving the wrong -wal aside would have saved. A
    read-only connection never copies it."""
    left_over = _wal_left_over(path)  # before this connection takes its own lock on the -shm
    uri = f"file:{urllib.parse.quote(sqlite_filename(path))}?mode=ro"
    try:
        ro = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None)
    except sqlite3.Error:
        return  # cannot even be read: the writing connection says why, as before
    try:
        _refuse_foreign_database(ro, path)
        if left_over:
            _refuse_a_foreign_wal(ro, path)
            if ro.execute("PRAGMA quick_check(1)").fetchone() != ("ok",):
                raise sqlite3.DatabaseError("database disk image is malformed (quick_check)")
    except sqlite3.DatabaseError as exc:
        fault = storage_error(path, exc)
        damaged = fault is not None and any(word in str(exc).lower() for word in ("malformed", "not a database"))
        wal = Path(f"{path}-wal")
        if damaged and wal.is_file() and wal.stat().st_size > 0:
            raise UserError(f"{fault} as its -wal file leaves it ({wal}); if that file is another database's or "
                            "another copy's, move it aside and try again; nothing was changed") from None
        if damaged:
            raise fault from None  # type: ignore[misc]
        # Anything else (busy, a -shm it may not create): the writing connection meets it and says so.
    finally:
        ro.close()


# The file's header (page 1) says whose it is: mailtower's application id (PRAGMA application_id,
# "mtwr") and a random number for this database (PRAGMA user_version). Page 1 goes into the -wal
# when the schema or the file's size changes (an import, a new mailing), so a -wal of another
# database often brings its number along; a sender's -wal often does not (_refuse_a_foreign_wal).
APPLICATION_ID = 0x6D747772


async def _mark_database(db: aiosqlite.Connection) -> None:
    async with db.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    if not row or row[0] == 0:
        await db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        await db.execute(f"PRAGMA user_version = {secrets.randbelow(2**31 - 1) + 1}")


def _database_id(db: sqlite3.Connection) -> int | None:
    try:
        row = db.execute("PRAGMA user_version").fetchone()
    except sqlite3.Error:
        return None
    return None if not row or not row[0] else int(row[0])


def _refuse_a_foreign_wal(ro: sqlite3.Connection, path: Path) -> None:
    """The -wal left beside the file was written for another database: the file read alone (an
    immutable connection does not look at the -wal) and the file as the -wal leaves it carry two
    numbers (see APPLICATION_ID). A -wal of another mailtower database can leave a structurally
    sound mix of the two, which no check of the pages tells from this database."""
    alone = sqlite3.connect(f"file:{urllib.parse.quote(sqlite_filename(path))}?immutable=1", uri=True)
    try:
        own, own_mailings = _database_id(alone), _mailing_births(alone)
    finally:
        alone.close()
    applied = _database_id(ro)
    wal = f"{path}-wal"
    if own is not None and applied != own:
        raise UserError(f"database {path}: the -wal file beside it ({wal}) belongs to another database (it makes the "
                        f"file's id {applied or 0}, which is {own}); move it aside and try again; nothing was changed")
    # A sender's commits seldom touch page 1: its -wal carries mailings' pages instead. A mailing
    # never changes its creation time, subject or sender, and no id is handed out twice
    # (mailing_id_floor), so one id that is two different mailings means two databases.
    applied_mailings = _mailing_births(ro)
    changed = sorted(i for i, born in own_mailings.items() if applied_mailings.get(i, born) != born)
    if changed:
        raise UserError(f"database {path}: the -wal file beside it ({wal}) belongs to another database (mailing "
                        f"{changed[0]} is another mailing there); move it aside and try again; nothing was changed")


def _mailing_births(db: sqlite3.Connection) -> dict[int, tuple[str, str, str]]:
    """What never changes of each mailing, by id; nothing where the file cannot say (damaged)."""
    try:
        rows = db.execute("SELECT id, created_at, subject, from_addr FROM mailings")
        return {int(i): (str(born), str(subject), str(sender)) for i, born, subject, sender in rows}
    except sqlite3.Error:
        return {}


def _wal_left_over(path: Path) -> bool:
    """A -wal with frames in it that no open connection uses: a writer was killed, or the file
    came from somewhere else. Only then is the whole file checked before it is opened to write
    (PRAGMA quick_check reads every page, about 2 ms a MB): while a sender runs, every command
    meets a -wal in use, and that one is sound. An open connection holds a lock on the -shm
    file as long as it is open; Linux lists every lock in /proc/locks (where that cannot be
    read, the -wal is taken to be in use and nothing is checked)."""
    try:
        if os.stat(f"{path}-wal").st_size == 0:
            return False
        shm = os.stat(f"{path}-shm")
    except FileNotFoundError:
        return os.path.exists(f"{path}-wal")  # frames but no -shm: nobody has it open
    except OSError:
        return False
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            table = locks.read(1 << 24)
    except OSError:
        return False
    shm_id = f"{os.major(shm.st_dev):02x}:{os.minor(shm.st_dev):02x}:{shm.st_ino}"
    return all(shm_id not in line.split() for line in table.splitlines())


def _refuse_foreign_database(db: sqlite3.Connection, path: Path) -> None:
    """A SQLite file that has tables but no mailtower schema version is someone else's database:
    refused before anything is written to it (not even the switch to WAL); so is a file without
    tables whose header names another application (`PRAGMA application_id` and `user_version`
    other than mailtower's, APPLICATION_ID). An empty file, or a new one, becomes a mailtower
    database; one of any older schema version is upgraded as before."""
    names = sorted(row[0] for row in db.execute(
        "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"))
    if "meta" in names and _has_schema_version(db):
        return
    if not names:
        application = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if application in (0, APPLICATION_ID) and (version == 0 or application == APPLICATION_ID):
            return  # new, or made by mailtower (its tables came in the same transaction: a crash left none)
        raise UserError(f"database {path}: not a mailtower database (no tables, but its header names another "
                        f"application: application_id {application}, user_version {version}); refusing to add "
                        "mailtower's tables to it: give a new file name")
    shown = ", ".join(n if n.isprintable() and len(n) <= 40 else repr(n[:40]) for n in names[:_SHOWN_TABLES])
    if len(names) > _SHOWN_TABLES:
        shown += f" and {len(names) - _SHOWN_TABLES} more"
    raise UserError(f"database {path}: not a mailtower database (it has tables named {shown} but no mailtower "
                    "schema version); refusing to add mailtower's tables to it: give a new file name")


def _has_schema_version(db: sqlite3.Connection) -> bool:
    """True when the meta table holds a schema version as mailtower writes it (a whole number)."""
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError:  # a meta table of another shape: not ours
        return False
    return row is not None and str(row[0]).isascii() and str(row[0]).isdigit()


def _open_failure(path: Path, exc: Exception) -> Exception:
    """The error to raise when opening failed: one line saying what to fix, where we can tell."""
    fault = storage_error(path, exc)
    if fault is None:
        return exc
    if isinstance(exc, sqlite3.Error) and ("readonly" in str(exc) or "unable to open" in str(exc)):
        # SQLite cannot say why; the usual reasons can be checked.
        directory = path.parent
        if not os.access(directory, os.W_OK | os.X_OK):
            return UserError(
                f"database {path}: cannot write in {directory} (read-only or no permission); "
                f"SQLite needs to create {path.name}-wal and {path.name}-shm there"
            )
        if not os.access(path, os.R_OK | os.W_OK):
            return UserError(f"database {path}: the file is read-only or not readable (permissions or a read-only mount)")
    return fault


def _daemonize(conn: aiosqlite.Connection) -> None:
    """A connection nobody closed must never keep the process alive after main() returns:
    aiosqlite's worker thread is not a daemon, and a leaked one made `mailtower` hang at exit."""
    thread = getattr(conn, "_thread", conn)
    if isinstance(thread, threading.Thread) and not thread.is_alive():
        thread.daemon = True


async def _close_quietly(db: aiosqlite.Connection) -> None:
    """Close after a failure; the first error is the one worth reporting, not this one."""
    try:
        await asyncio.wait_for(db.close(), timeout=30.0)
    except Exception:  # noqa: BLE001 - the open already failed; its error is reported
        pass


# SQLite gives a new row the highest id + 1, so deleting the newest mailing handed its id to the
# next one: a dialog left open on the deleted one then stopped or deleted the new one, and the new
# one's Message-IDs and unsubscribe tokens (made from mailing and recipient ids) were the old one's.
# The highest id deleted is kept in meta and new ids start above it.
_KEEP_MAILING_ID_FLOOR = (
    "INSERT INTO meta (key, value) VALUES ('mailing_id_floor', ?) ON CONFLICT (key) DO UPDATE SET "
    "value = MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))"
)
_NEXT_MAILING_ID = (
    "MAX(COALESCE((SELECT MAX(id) FROM mailings), 0), "
    "COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'mailing_id_floor'), 0)) + 1"
)


class Tx:
    """SQL available inside one write transaction. Only `lifecycle` calls `set_state`."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db
        self.now = utcnow()

    @property
    def on_sqlite(self) -> bool:
        """A SQLite file (PostgreSQL's store runs these statements through its own connection)."""
        return isinstance(self.db, aiosqlite.Connection)

    async def mailing(self, mailing_id: int) -> Mailing:
        async with self.db.execute(f"SELECT {MAILING_COLUMNS} FROM mailings WHERE id = ?", (mailing_id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"no mailing with id {mailing_id}")
        return _mailing_from_row(row)

    async def any_sending(self) -> bool:
        async with self.db.execute("SELECT 1 FROM mailings WHERE state = 'sending' LIMIT 1") as cur:
            return await cur.fetchone() is not None

    async def set_state(self, mailing_id: int, state: MailingState, **columns: Any) -> None:
        columns["state"] = state.value
        columns["updated_at"] = iso(self.now)
        assignments = ", ".join(f"{name} = ?" for name in columns)
        await self.db.execute(
            f"UPDATE mailings SET {assignments} WHERE id = ?", (*columns.values(), mailing_id)
        )

    async def update_mailing(self, mailing_id: int, **columns: Any) -> None:
        if "state" in columns:
            raise ValueError("mailing state is written only through the lifecycle")
        columns["updated_at"] = iso(self.now)
        assignments = ", ".join(f"{name} = ?" for name in columns)
        await self.db.execute(
            f"UPDATE mailings SET {assignments} WHERE id = ?", (*columns.values(), mailing_id)
        )

    async def bottom_position(self) -> int:
        async with self.db.execute(
            "SELECT COALESCE(MAX(position), 0) + 1 FROM mailings WHERE state IN ('queued', 'sending')"
        ) as cur:
            row = await cur.fetchone()
        return int(row[0])  # type: ignore[index]

    async def queue(self) -> list[tuple[int, int]]:
        """(id, position) of current mailings in queue order."""
        async with self.db.execute(
            "SELECT id, position FROM mailings WHERE state IN ('queued', 'sending') ORDER BY position, id"
        ) as cur:
            return [(r[0], r[1]) for r in await cur.fetchall()]

    async def set_positions(self, order: list[int]) -> None:
        await self.db.executemany(
            "UPDATE mailings SET position = ? WHERE id = ?", [(i + 1, mid) for i, mid in enumerate(order)]
        )

    async def last_events(self, mailing_id: int, kinds: tuple[str, ...], n: int = 2) -> list[tuple[str, str]]:
        """The mailing's latest `n` events of these kinds, newest first, as (kind, detail)."""
        marks = ",".join("?" * len(kinds))
        async with self.db.execute(
            f"SELECT kind, detail FROM events WHERE mailing_id = ? AND kind IN ({marks}) ORDER BY id DESC LIMIT ?",
            (mailing_id, *kinds, n),
        ) as cur:
            return [(str(k), str(d)) for k, d in await cur.fetchall()]

    async def add_event(self, mailing_id: int, kind: str, detail: str = "") -> None:
        await self.db.execute(
            "INSERT INTO events (mailing_id, at, kind, detail) VALUES (?, ?, ?, ?)",
            (mailing_id, iso(self.now), kind, detail),
        )

    async def delete_mailing(self, mailing_id: int) -> None:
        await self.db.execute("DELETE FROM recipients WHERE mailing_id = ?", (mailing_id,))
        await self.db.execute("DELETE FROM events WHERE mailing_id = ?", (mailing_id,))
        await self.db.execute("DELETE FROM canary_rows WHERE mailing_id = ?", (mailing_id,))  # breaker/canary
        await self.db.execute("DELETE FROM mailings WHERE id = ?", (mailing_id,))
        if self.on_sqlite:  # PostgreSQL's identity never hands an id out twice
            await self.db.execute(_KEEP_MAILING_ID_FLOOR, (mailing_id,))

    async def insert_mailing(
        self,
        *,
        name: str,
        subject: str,
        from_addr: str,
        text_body: str | None,
        html_body: str | None,
        fields: Iterable[str],
        parent_id: int | None = None,
    ) -> int:
        cur = await self.db.execute(
            "INSERT INTO mailings (id, name, subject, from_addr, text_body, html_body, fields, state, "
            f"created_at, updated_at, parent_id) VALUES ({_NEXT_MAILING_ID if self.on_sqlite else 'DEFAULT'}, "
            "?, ?, ?, ?, ?, ?, 'draft', ?, ?, ?) RETURNING id",
            (
                name,
                subject,
                from_addr,
                text_body,
                html_body,
                json.dumps(sorted(fields)),
                iso(self.now),
                iso(self.now),
                parent_id,
            ),
        )
        return await _returned_id(cur)

    async def import_rows(self, mailing_id: int, rows: Iterator[ImportedRow], chunk: int = 5000) -> ImportSummary:
        """Insert validated rows; duplicates of an address already in the mailing are reported, not inserted.

        Rows are consumed in chunks so memory stays flat; the caller's transaction makes the file
        all-or-nothing when the iterator raises part-way.
        """
        imported = suppressed = 0
        duplicates: list[int] = []
        batch: list[ImportedRow] = []

        async def flush() -> None:
            nonlocal imported, suppressed
            fresh = await self._without_duplicates(mailing_id, batch, duplicates)
            kept = await self.without_suppressed(fresh)
            suppressed += len(fresh) - len(kept)
            fresh = kept
            await self.db.executemany(
                "INSERT INTO recipients (mailing_id, email, email_key, name, tz, fields) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (mailing_id, r.email, r.email.lower(), r.name, r.tz, json.dumps(r.fields) if r.fields else "{}")
                    for r in fresh
                ],
            )
            imported += len(fresh)

        # The CSV reader is iterated here in slices, yielding between chunks so other
        # coroutines (the dashboard) keep running during a large import.
        for row in rows:
            batch.append(row)
            if len(batch) >= chunk:
                await flush()
                batch = []
                await asyncio.sleep(0)
        if batch:
            await flush()
        await self.db.execute(
            "UPDATE mailings SET total = total + ?, updated_at = ? WHERE id = ?", (imported, iso(self.now), mailing_id)
        )
        return ImportSummary(imported=imported, duplicates=duplicates, suppressed=suppressed)

    async def insert_staged(self, mailing_id: int, staged: StagedRows) -> ImportSummary:
        """Add the recipients of `staged` to the mailing: rows read ahead into a TEMP table by
        Store.staged_rows (SQLite) in one statement, leaving out (and reporting) addresses already
        in the mailing; else the file's rows read now (PostgreSQL, import_rows)."""
        if staged.table is None:
            return await self.import_rows(mailing_id, staged.rows)
        table = staged.table
        async with self.db.execute("SELECT 1 FROM recipients WHERE mailing_id = ? LIMIT 1", (mailing_id,)) as cur:
            has_rows = await cur.fetchone() is not None
        already: list[int] = []
        if has_rows:  # a new mailing has none: no lookup a row
            # Settled here, while recipients_key is there to answer (the copy below may set it aside).
            found = "EXISTS (SELECT 1 FROM recipients r WHERE r.mailing_id = ? AND r.email_key = s.email_key)"
            async with self.db.execute(f"SELECT line FROM temp.{table} s WHERE {found}", (mailing_id,)) as cur:
                already = [int(line) for line, in await cur.fetchall()]
            if already:
                await self.db.execute(f"DELETE FROM temp.{table} AS s WHERE {found}", (mailing_id,))
        imported = staged.count - len(already)
        async with self._indexes_set_aside(imported):
            await self.db.execute(
                "INSERT INTO recipients (mailing_id, email, email_key, name, tz, fields) "
                f"SELECT ?, email, email_key, name, tz, fields FROM temp.{table} ORDER BY line",
                (mailing_id,),
            )
        await self.db.execute(
            "UPDATE mailings SET total = total + ?, updated_at = ? WHERE id = ?", (imported, iso(self.now), mailing_id)
        )
        return ImportSummary(imported=imported, duplicates=sorted([*staged.duplicates, *already]), suppressed=staged.suppressed)

    async def _without_duplicates(
        self, mailing_id: int, batch: list[ImportedRow], duplicates: list[int]
    ) -> list[ImportedRow]:
        """Drop rows whose mailbox is already in the mailing or earlier in the chunk, noting their lines."""
        keys = list({r.email.lower() for r in batch})
        async with self.db.execute(
            f"SELECT email_key FROM recipients WHERE mailing_id = ? AND email_key IN ({','.join('?' * len(keys))})",
            (mailing_id, *keys),
        ) as cur:
            seen = {row[0] for row in await cur.fetchall()}
        fresh: list[ImportedRow] = []
        for r in batch:
            key = r.email.lower()
            if key in seen:
                duplicates.append(r.line)
            else:
                seen.add(key)
                fresh.append(r)
        return fresh

    # ---- suppression and retry (issue 13, items 6 and 9) ---------------------------------

    async def without_suppressed(self, rows: list[ImportedRow]) -> list[ImportedRow]:
        """The rows whose address is not on the suppression list (one indexed lookup per chunk)."""
        if not rows:
            return rows
        keys = list({r.email.lower() for r in rows})
        async with self.db.execute(
            f"SELECT key FROM suppression WHERE key IN ({','.join('?' * len(keys))})", keys
        ) as cur:
            barred = {row[0] for row in await cur.fetchall()}
        return [r for r in rows if r.email.lower() not in barred] if barred else rows

    async def add_suppressions(self, entries: Iterable[tuple[str, str]], source: str, reason: str) -> int:
        """Suppress (key, address) pairs; an address already suppressed keeps its first entry.
        Returns how many were new."""
        cur = await self.db.executemany(
            "INSERT INTO suppression (key, email, source, reason, added_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (key) DO NOTHING",
            [(key, email, source, reason, iso(self.now)) for key, email in entries],
        )
        return max(cur.rowcount, 0)

    async def remove_suppressions(self, keys: Iterable[str]) -> int:
        cur = await self.db.executemany("DELETE FROM suppression WHERE key = ?", [(k,) for k in keys])
        return max(cur.rowcount, 0)

    async def failed_rows(self, mailing_id: int, after_id: int, limit: int) -> list[tuple[int, int | None, str | None, bool, bool]]:
        """A page of a mailing's failed rows: (id, last code, last reply, in doubt, suppressed now)."""
        async with self.db.execute(
            "SELECT r.id, r.last_code, r.last_error, r.in_doubt, s.key IS NOT NULL FROM recipients r "
            "LEFT JOIN suppression s ON s.key = r.email_key "
            "WHERE r.mailing_id = ? AND r.state = 'failed' AND r.id > ? ORDER BY r.id LIMIT ?",
            (mailing_id, after_id, limit),
        ) as cur:
            return [(int(i), c, e, bool(d), bool(s)) for i, c, e, d, s in await cur.fetchall()]

    async def requeue_failed(self, mailing_id: int, ids: list[int]) -> None:
        """Failed rows back to pending with a fresh retry age; the counters follow (a row that
        was in doubt is an open in-doubt row again until it is sent or fails)."""
        if not ids:
            return
        moved = doubt = 0
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            async with self.db.execute(
                f"SELECT COUNT(*) FROM recipients WHERE id IN ({marks}) AND state = 'failed' AND in_doubt = 1", chunk
            ) as cur:
                doubt += int((await cur.fetchone())[0])  # type: ignore[index]
            cur = await self.db.execute(
                f"UPDATE recipients SET state = 'pending', next_attempt_at = NULL, first_deferred_at = NULL, "
                f"updated_at = ? WHERE id IN ({marks}) AND mailing_id = ? AND state = 'failed'",
                (time.time(), *chunk, mailing_id),
            )
            moved += max(cur.rowcount, 0)
        await self.db.execute(
            "UPDATE mailings SET failed = failed - ?, in_doubt = in_doubt + ? WHERE id = ?", (moved, doubt, mailing_id)
        )


    # ---- local-time waves (issue 14) ---------------------------------------------------

    async def waiting_zones(self, mailing_ids: Iterable[int]) -> dict[str, int]:
        """Recipients not yet sent to ('' for those without a zone), per zone, across mailings."""
        return await _waiting_zones(self.db, mailing_ids)

    async def move_waiting_by_zone(self, source_id: int, targets: Mapping[str, int]) -> dict[int, int]:
        """Move the recipients of `source_id` not yet sent to whose zone is a key of `targets` to
        that mailing, with the counters that describe them (total, deferred, in doubt), in one
        statement: a wave schedule splits a mailing into all its waves in one pass over its rows.
        Sent and failed rows stay: they are that mailing's history. Returns what each target got."""
        if not targets:
            return {}
        zones = list(targets)
        where = f"mailing_id = ? AND state IN ('pending', 'sending', 'deferred') AND tz IN ({','.join('?' * len(zones))})"
        by_zone = await self._waiting_counts("tz", where, [source_id, *zones])
        got: dict[int, _Counts] = {}
        for zone, counts in by_zone.items():
            target = targets[str(zone)]
            got[target] = got.get(target, _NONE) + counts
        cases = " ".join("WHEN ? THEN ?" for _ in zones)
        await self._move_rows(
            f"UPDATE recipients SET mailing_id = CASE tz {cases} END WHERE {where}",
            [*(v for zone in zones for v in (zone, targets[zone])), source_id, *zones],
            got,
            {source_id: sum(got.values(), _NONE)},
        )
        return {target: counts.total for target, counts in got.items()}

    async def gather_waiting(self, source_ids: Sequence[int], target_id: int) -> dict[int, int]:
        """Move every recipient not yet sent to of the `source_ids` mailings to `target_id`, with
        their counters, in one statement (a wave group made one mailing again). Returns how many
        came from each source."""
        if not source_ids:
            return {}
        where = f"mailing_id IN ({','.join('?' * len(source_ids))}) AND state IN ('pending', 'sending', 'deferred')"
        came = {int(m): counts for m, counts in (await self._waiting_counts("mailing_id", where, list(source_ids))).items()}
        await self._move_rows(
            f"UPDATE recipients SET mailing_id = ? WHERE {where}", [target_id, *source_ids],
            {target_id: sum(came.values(), _NONE)}, came,
        )
        return {source: counts.total for source, counts in came.items()}

    async def _waiting_counts(self, key: str, where: str, params: list[Any]) -> dict[Any, _Counts]:
        async with self.db.execute(
            f"SELECT {key}, COUNT(*), SUM(CASE WHEN state = 'deferred' THEN 1 ELSE 0 END), SUM(in_doubt) "
            f"FROM recipients WHERE {where} GROUP BY {key}", params
        ) as cur:
            return {k: _Counts(int(n), int(d or 0), int(i or 0)) for k, n, d, i in await cur.fetchall()}

    async def _move_rows(self, update: str, params: list[Any], gained: Mapping[int, _Counts], lost: Mapping[int, _Counts]) -> None:
        """Run the `update` that moves recipients, then the counters of the mailings that gained and lost them."""
        moved = sum(counts.total for counts in gained.values())
        if not moved:
            return
        async with self._indexes_set_aside(moved):
            await self.db.execute(update, params)
        for mailing_id, counts in [*gained.items(), *((m, -c) for m, c in lost.items())]:
            await self.db.execute(
                "UPDATE mailings SET total = total + ?, deferred = deferred + ?, in_doubt = in_doubt + ? WHERE id = ?",
                (counts.total, counts.deferred, counts.in_doubt, mailing_id),
            )

    @asynccontextmanager
    async def _indexes_set_aside(self, rows: int) -> AsyncIterator[None]:
        """Around a statement that moves `rows` recipients from one mailing to another, or
        copies them into one (an import, Tx.insert_staged).

        On SQLite each such row deletes and/or inserts an entry in every index that names
        `mailing_id`; `recipients_key` is ordered by address, so those land all over the index
        (about 20 us a row on the project's machine: a million-recipient wave schedule held the
        write lock ~50 s, and every sender waited for it). When the rows are a large share of the
        table, those indexes are dropped here and built again after the statement from one sort
        (about 4 us a row of the whole table), in the same transaction: a failure rolls the drop
        back with the rest. The statement must not need them (a lookup would scan the table).
        PostgreSQL is left as it is."""
        indexes = await self._indexes_worth_rebuilding(rows)
        for name, _ in indexes:
            await self.db.execute(f'DROP INDEX "{name}"')
        yield
        for _, sql in indexes:
            await self.db.execute(sql)

    async def _indexes_worth_rebuilding(self, rows: int) -> list[tuple[str, str]]:
        """(name, CREATE statement) of the recipients indexes naming `mailing_id`, when writing
        `rows` is cheaper with them built again than kept up to date; else none."""
        if rows < REBUILD_MIN_ROWS or not self.on_sqlite:
            return []
        async with self.db.execute("SELECT COUNT(*) FROM recipients") as cur:
            table = int((await cur.fetchone())[0])  # type: ignore[index]
        if rows * REBUILD_ROW_COST < table:
            return []
        async with self.db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'recipients' AND sql IS NOT NULL"
        ) as cur:
            candidates = [(str(name), str(sql)) for name, sql in await cur.fetchall()]
        found = []
        for name, sql in candidates:
            async with self.db.execute(f'PRAGMA index_info("{name}")') as cur:
                if any(column == "mailing_id" for _, _, column in await cur.fetchall()):
                    found.append((name, sql))
        return found

    async def recipient_count(self, mailing_id: int) -> int:
        async with self.db.execute("SELECT COUNT(*) FROM recipients WHERE mailing_id = ?", (mailing_id,)) as cur:
            return int((await cur.fetchone())[0])  # type: ignore[index]

    async def new_wave_group(self, name: str, local: datetime, default_tz: str | None, passed: str | None) -> int:
        cur = await self.db.execute(
            "INSERT INTO wave_groups (name, send_at_local, default_tz, passed, created_at) VALUES (?, ?, ?, ?, ?) RETURNING id",
            (name, local.strftime("%Y-%m-%dT%H:%M"), default_tz, passed, iso(self.now)),
        )
        return await _returned_id(cur)

    async def wave_members(self, group: int) -> list[Mailing]:
        """The mailings of one wave group, earliest instant first."""
        return await _wave_members(self.db, group)


def _outcome_rows(outcomes: list[Outcome], now: float) -> tuple[list[tuple[Any, ...]], dict[str, int]]:
    counts = {"sent": 0, "failed": 0, "deferred": 0, "released_doubt": 0, "resolved_doubt": 0}
    rows = []
    for o in outcomes:
        state = o.state
        if state is RecipientState.SENT:
            counts["sent"] += 1
        elif state is RecipientState.FAILED:
            counts["failed"] += 1
        elif state is RecipientState.DEFERRED:
            counts["deferred"] += 1
        if o.in_doubt and not o.was_in_doubt:
            counts["released_doubt"] += 1
        elif o.was_in_doubt and state in (RecipientState.SENT, RecipientState.FAILED):
            # It keeps its flag (a possible duplicate stays recognisable) but is no longer open.
            counts["resolved_doubt"] += 1
        rows.append(
            (
                state.value,
                1 if o.counted_attempt else 0,
                1 if o.in_doubt else 0,
                o.code,
                o.text,
                o.next_attempt_at,
                # Retries give up retry_max_age after the first real deferral; a row only put off
                # (counted_attempt=False: a domain group's hourly budget) starts no such clock.
                now if state is RecipientState.DEFERRED and o.counted_attempt else None,
                now,
                o.recipient_id,
            )
        )
    return rows, counts


# Numbered: the state (?1) is read twice. A sent row's last error is gone (a deferral before it
# said why it waited, not why it failed); otherwise an outcome without words keeps the last.
# A bare ? appended after this (the fence) is ?10.
_OUTCOME_UPDATE = (
    "UPDATE recipients SET state = ?1, attempts = attempts + ?2, in_doubt = MAX(in_doubt, ?3), "
    "last_code = COALESCE(?4, last_code), last_error = CASE WHEN ?1 = 'sent' THEN NULL ELSE COALESCE(?5, last_error) END, "
    "next_attempt_at = ?6, first_deferred_at = COALESCE(first_deferred_at, ?7), updated_at = ?8, claimed_by = NULL WHERE id = ?9"
)


def _write_owned_outcomes(conn: sqlite3.Connection, outcomes: list[Outcome], owner: int, now: float) -> list[Outcome]:
    """Write the outcomes of rows still claimed by `owner`, one fenced UPDATE each; returns those
    written (a row another sender took over is that sender's to record now). One statement per
    outcome instead of a fence query and then the updates: the sender's write before each final
    dot mostly carries one outcome (issue 12)."""
    rows = _outcome_rows(outcomes, now)[0]
    ids = [o.recipient_id for o in outcomes]
    if len(set(ids)) < len(ids):
        # A row twice in one batch: ownership as it was before the first of them (whose
        # UPDATE gives the claim up), as the separate fence query had it.
        mine = {r[0] for r in conn.execute(
            "SELECT id FROM recipients WHERE id IN (SELECT value FROM json_each(?)) AND claimed_by = ?",
            (json.dumps(ids), owner))}
        owned = [(o, row) for o, row in zip(outcomes, rows) if o.recipient_id in mine]
        conn.executemany(_OUTCOME_UPDATE, [row for _, row in owned])
        return [o for o, _ in owned]
    sql = _OUTCOME_UPDATE + " AND claimed_by = ?"
    return [o for o, row in zip(outcomes, rows) if conn.execute(sql, (*row, owner)).rowcount]


# The mark before a row's final dot: only a pending row still claimed by `me` (-1: no fleet) and
# whose address is not suppressed. The suppression probe is in the UPDATE itself, so the common
# write (no mark suppressed) runs no query to look for suppressed ones (issue 12).
_MARK_SQL = (
    "UPDATE recipients SET state = 'sending', updated_at = ? WHERE id = ? AND state = 'pending'"
    " AND COALESCE(claimed_by, -1) = ? AND NOT EXISTS (SELECT 1 FROM suppression s WHERE s.key = recipients.email_key)"
)


def _write_marks(conn: sqlite3.Connection, marks: list[int], now: float, me: int) -> list[int]:
    """Mark rows `sending` (see _MARK_SQL); returns the marks that changed nothing (suppressed
    address or row, not this sender's any more, or already marked by an earlier one in `marks`)."""
    return [recipient_id for recipient_id in marks if not conn.execute(_MARK_SQL, (now, recipient_id, me)).rowcount]


def _claimed(row: tuple[Any, ...]) -> Claimed:
    return Claimed(
        id=row[0],
        email=row[1],
        name=row[2],
        fields=json.loads(row[3]) if row[3] and row[3] != "{}" else {},
        attempts=row[4],
        first_deferred_at=row[5],
        in_doubt=bool(row[6]),
    )


def _begin_immediate_sync(conn: sqlite3.Connection) -> None:
    for attempt in range(50):
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            time.sleep(min(0.05 * (attempt + 1), 1.0))
    raise UserError("the database stayed busy; try again")


def _record_and_claim(
    conn: sqlite3.Connection,
    mailing_id: int,
    outcomes: list[Outcome],
    claim: int,
    rate: float | None,
    marks: list[int],
    held: Iterable[int],
    barred: set[int] | None = None,
    owner: int | None = None,
    begin: Callable[[sqlite3.Connection], None] = _begin_immediate_sync,
    columns: str = MAILING_LIST_COLUMNS,
) -> tuple[list[Claimed], tuple[Any, ...]]:
    """The sender's batch transaction, run on the database thread or, through Store.record_now,
    on the event loop's own (see Store.record_and_claim). `columns`: what to read back of the
    mailing's row (the state first when not MAILING_LIST_COLUMNS)."""
    now = time.time()
    me = -1 if owner is None else owner  # fleet: claims carry their sender's id (core/fleet.py)
    begin(conn)
    try:
        if owner is not None and outcomes:
            # Fenced in the UPDATE itself: a row another sender took over (this one was declared
            # dead meanwhile) is not ours to record, and its UPDATE changes nothing.
            outcomes = _write_owned_outcomes(conn, outcomes, owner, now)
            c = _outcome_rows(outcomes, now)[1]
        elif outcomes:
            written, c = _outcome_rows(outcomes, now)
            conn.executemany(_OUTCOME_UPDATE, written)
        # The mailing's row as this write leaves it comes back from its own UPDATE (RETURNING),
        # not from a SELECT after it; read again only if a later statement changes it.
        rows: list[Any] | None = None
        if outcomes:
            # version + 1 here: the mailings_version trigger then has nothing to do (its WHEN is
            # false), one UPDATE of the mailing's row per write instead of two; same version.
            rows = conn.execute(
                "UPDATE mailings SET sent = sent + ?, failed = failed + ?, deferred = deferred + ?, "
                "in_doubt = in_doubt + ? - ?, rate = COALESCE(?, rate), updated_at = ?, version = version + 1 WHERE id = ?"
                f" RETURNING {columns}",
                (c["sent"], c["failed"], c["deferred"], c["released_doubt"], c["resolved_doubt"], rate,
                 _iso_second(int(now)), mailing_id),
            ).fetchall()  # to the end: an unfinished statement would keep the COMMIT from happening
            _suppress_bounced(conn, outcomes, now)
            if owner is not None:
                _keep_claims(conn, outcomes, owner)
        elif rate is not None:
            rows = conn.execute(f"UPDATE mailings SET rate = ? WHERE id = ? RETURNING {columns}", (rate, mailing_id)).fetchall()
        if marks:
            # After the outcomes: a row one connection gave back and another took up again
            # in the same batch ends up `sending`.
            # Fenced: only a row still claimed by this sender (another may have taken it over).
            missed = _write_marks(conn, marks, now, me)
            if missed:
                # Only a mark that changed nothing can have met a suppressed address (issue 13
                # item 6: a row whose address was suppressed after it was claimed is not sent)
                # or failed the fence; the common write, where every mark took, asks nothing more.
                skipped_marks = _bar_suppressed_marks(conn, mailing_id, missed, now)
                if skipped_marks:
                    rows = None  # its counters changed
                if barred is not None:
                    barred.update(skipped_marks)
                    if owner is not None:
                        barred.update(_unmarked(conn, missed, owner))
        row = rows[0] if rows else None
        if rows is None:
            row = conn.execute(f"SELECT {columns} FROM mailings WHERE id = ?", (mailing_id,)).fetchone()
        if row is None:
            raise NotFound(f"no mailing with id {mailing_id}")
        claimed: list[Claimed] = []
        state = row[6] if columns is MAILING_LIST_COLUMNS else row[0]
        if claim > 0 and state == MailingState.SENDING.value:
            due = conn.execute(
                "UPDATE recipients SET state = 'pending' WHERE mailing_id = ? AND state = 'deferred' "
                "AND next_attempt_at <= ?",
                (mailing_id, now),
            ).rowcount
            if due:
                conn.execute("UPDATE mailings SET deferred = deferred - ? WHERE id = ?", (due, mailing_id))
            # Claiming writes nothing: the rows stay `pending` and the sender skips those it
            # already holds, so a crash leaves claimed-but-unstarted rows plainly pending.
            claimed, skipped = _claim_unsuppressed(conn, mailing_id, json.dumps(sorted(held)), claim, now, me)
            if owner is not None and claimed:
                # Only while this sender is alive on disk: one declared dead claims nothing (its
                # marks then fail the fence and no final dot is sent).
                conn.execute("UPDATE recipients SET claimed_by = ? WHERE id IN (SELECT value FROM json_each(?))"
                             " AND EXISTS (SELECT 1 FROM senders WHERE id = ? AND state = 'running')",
                             (owner, json.dumps([c.id for c in claimed]), owner))
            if due or skipped:
                row = conn.execute(f"SELECT {columns} FROM mailings WHERE id = ?", (mailing_id,)).fetchone()
        conn.execute("COMMIT")
    except BaseException:
        _rollback_sync(conn)
        raise
    return claimed, row


def _checkpoint_wal(conn: sqlite3.Connection) -> None:
    """Checkpoint the WAL on the store's checkpoint connection (run off the event loop). PASSIVE
    copies what is there beside the writers; a writer restarts the WAL from its start only
    after a checkpoint that left nothing behind, which a writer writing all the time never
    lets PASSIVE finish, so RESTART then copies the few pages written meanwhile, holding new
    writes back briefly (the inline write gives way to the database thread's meanwhile). A
    reader on an old snapshot (another process) makes it give up after CHECKPOINT_WAIT_MS, to
    try next time."""
    _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    if frames >= RESTART_FRAMES:
        conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()


def _checkpoint_connection(path: Path) -> sqlite3.Connection:
    """The store's own connection for checkpoints, opened once (off the event loop) and kept,
    so the database's name is not opened again while the sender runs."""
    conn = sqlite3.connect(sqlite_filename(path), isolation_level=None, timeout=0, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}")  # RESTART's wait; PASSIVE never waits
    except BaseException:
        conn.close()
        raise
    return conn


class _Busy(Exception):
    """The database is being written by someone else right now (the inline path gives way)."""


def _begin_now(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE without waiting: on the event loop's thread a busy database must not block."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise _Busy() from None
        raise


@functools.lru_cache(maxsize=4)
def _iso_second(second: int) -> str | None:
    # The mailing's updated_at, formatted once per second rather than once per ledger write.
    return iso(datetime.fromtimestamp(second, timezone.utc))


# What the sender's inline ledger write reads back of the mailing's row (Store.record_now with
# `known`): the state first, then what a ledger write can change.
_MAILING_COUNTERS = "state, total, sent, failed, deferred, in_doubt, rate, suppressed"


def mailing_columns(mailing_id: int, known: Mailing | None) -> str:
    """What a sender's write reads back of the mailing's row: only its state and counters when
    the caller knows the rest (`known`, the mailing as last returned), else the whole row."""
    return MAILING_LIST_COLUMNS if known is None or known.id != mailing_id else _MAILING_COUNTERS


# Every field of a Mailing in order, and where _MAILING_COUNTERS' columns go among them: the
# sender's write makes its new Mailing with one positional call. dataclasses.replace took ~11 µs
# a write (it passes all 32 fields by keyword), as long as converting the whole row; this ~3 µs.
_MAILING_FIELD_NAMES = tuple(f.name for f in dataclass_fields(Mailing))
_MAILING_VALUES = attrgetter(*_MAILING_FIELD_NAMES)
_COUNTER_PLACES = tuple(_MAILING_FIELD_NAMES.index(name) for name in _MAILING_COUNTERS.split(", "))


def mailing_as_written(row: Sequence[Any], known: Mailing | None, columns: str) -> Mailing:
    """The mailing from a row read with `columns` (mailing_columns): the whole row, or `known`
    with the state and counters the row holds."""
    if known is None or columns is MAILING_LIST_COLUMNS:
        return _mailing_from_row(row)
    values = list(_MAILING_VALUES(known))
    state = known.state if row[0] == known.state.value else MailingState(row[0])
    for place, value in zip(_COUNTER_PLACES, (state, row[1], row[2], row[3], row[4], row[5], row[6] or 0.0, row[7] or 0)):
        values[place] = value
    return Mailing(*values)


# ---- suppression in the sender's batch transaction (issue 13, item 6) -----------------------

_CLAIM_PASSES = 100  # bound on claim passes that found only suppressed rows (each marks them)


def _claim_unsuppressed(
    conn: sqlite3.Connection, mailing_id: int, held: str, claim: int, now: float, me: int = -1
) -> tuple[list[Claimed], int]:
    """Claim up to `claim` pending rows (none of `held`, a JSON list); rows whose address is on
    the suppression list (a primary-key probe per row) become `suppressed` instead, counted on
    the mailing. Returns the claimed rows and how many were skipped."""
    claimed: list[Claimed] = []
    skipped = after = 0
    for _ in range(_CLAIM_PASSES):
        picked = conn.execute(
            "SELECT r.id, r.email, r.name, r.fields, r.attempts, r.first_deferred_at, r.in_doubt,"
            " EXISTS (SELECT 1 FROM suppression s WHERE s.key = r.email_key) FROM recipients r"
            " WHERE r.mailing_id = ? AND r.state = 'pending' AND r.id > ?"
            " AND r.id NOT IN (SELECT value FROM json_each(?)) AND (r.claimed_by IS NULL OR r.claimed_by = ?)"
            " ORDER BY r.id LIMIT ?",
            (mailing_id, after, held, me, claim - len(claimed)),
        ).fetchall()
        if picked:
            after = picked[-1][0]  # a further pass goes on after these (claimed rows stay pending)
        barred = [r for r in picked if r[7]]
        claimed += [_claimed(r) for r in picked if not r[7]]
        if barred:
            conn.executemany(
                "UPDATE recipients SET state = 'suppressed', updated_at = ? WHERE id = ?", [(now, r[0]) for r in barred]
            )
            doubt = sum(1 for r in barred if r[6])  # an open in-doubt row is settled by the skip
            conn.execute(
                "UPDATE mailings SET suppressed = suppressed + ?, in_doubt = in_doubt - ? WHERE id = ?",
                (len(barred), doubt, mailing_id),
            )
            skipped += len(barred)
        if not barred or len(claimed) >= claim:
            break
    return claimed, skipped


def _bar_suppressed_marks(conn: sqlite3.Connection, mailing_id: int, marks: list[int], now: float) -> list[int]:
    """Marks that did not take (_write_marks) whose address is on the suppression list: their
    rows become `suppressed` instead, counted as a claim's skip is; returns them and the marked
    rows that were `suppressed` already. The sender holds claimed rows in memory
    ahead of its connections; this is the last word before a row's final dot, in commit order
    with `suppress add`, so an address suppressed once that commits is never sent."""
    found: list[tuple[int, int, str]] = []
    for start in range(0, len(marks), 500):
        chunk = marks[start : start + 500]
        # A row already `suppressed` (barred by an earlier mark whose connection then gave the
        # row back for another to send) is barred again, not counted again.
        # `+r.mailing_id`: a lookup by id. Left to itself SQLite took the mailing_id index from
        # about four marks on and scanned the whole mailing for every write (3.5 ms at 20,000
        # recipients, growing with the mailing; issue 12). Unary plus is plain SQL everywhere.
        found += conn.execute(
            "SELECT r.id, r.in_doubt, r.state FROM recipients r"
            f" WHERE r.id IN ({','.join('?' * len(chunk))}) AND +r.mailing_id = ? AND (r.state = 'suppressed'"
            " OR (r.state = 'pending' AND EXISTS (SELECT 1 FROM suppression s WHERE s.key = r.email_key)))",
            (*chunk, mailing_id),
        ).fetchall()
    fresh = [(i, doubt) for i, doubt, state in found if state == "pending"]
    if fresh:
        conn.executemany("UPDATE recipients SET state = 'suppressed', updated_at = ? WHERE id = ?", [(now, i) for i, _ in fresh])
        conn.execute(
            "UPDATE mailings SET suppressed = suppressed + ?, in_doubt = in_doubt - ? WHERE id = ?",
            (len(fresh), sum(1 for _, doubt in fresh if doubt), mailing_id),
        )
    return [i for i, _, _ in found]


def _suppress_bounced(conn: sqlite3.Connection, outcomes: list[Outcome], now: float) -> None:
    """Addresses that failed as unknown or disabled mailboxes join the suppression list with the
    reply, in the transaction that records the failure (the first entry of an address stays)."""
    bounced = [(o.text or "", iso(datetime.fromtimestamp(now, timezone.utc)), o.recipient_id) for o in outcomes if o.suppress]
    if bounced:
        conn.executemany(
            "INSERT OR IGNORE INTO suppression (key, email, source, reason, mailing_id, added_at) "
            "SELECT email_key, email, 'bounce', ?, mailing_id, ? FROM recipients WHERE id = ?",
            bounced,
        )


# ---- fleet: claims on disk (issue 15, core/fleet.py) -----------------------------------------


def _keep_claims(conn: sqlite3.Connection, outcomes: list[Outcome], owner: int) -> None:
    """Rows given back to this sender's own queue (a relay could not take them) stay its own:
    its next mark of them must pass the fence."""
    kept = [o.recipient_id for o in outcomes if o.keep_claim]
    if kept:
        conn.execute("UPDATE recipients SET claimed_by = ? WHERE id IN (SELECT value FROM json_each(?))",
                     (owner, json.dumps(kept)))


def _unmarked(conn: sqlite3.Connection, marks: list[int], owner: int) -> list[int]:
    """Marked rows that did not become `sending` for `owner` (suppressed, or no longer its own):
    their connection must not send the final dot."""
    rows = conn.execute(
        "SELECT id FROM recipients WHERE id IN (SELECT value FROM json_each(?))"
        " AND NOT (state = 'sending' AND claimed_by = ?)", (json.dumps(marks), owner)).fetchall()
    return [r[0] for r in rows]


def _rollback_sync(conn: sqlite3.Connection) -> None:
    # SQLite rolls back by itself after some errors (a full disk): a second ROLLBACK would
    # then fail and hide the error that matters.
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.warning("ROLLBACK failed", exc_info=True)


async def _returned_id(cur: Any) -> int:
    """The id an `INSERT ... RETURNING id` gave (read to the end: an unfinished SQLite statement
    would keep the transaction from committing)."""
    rows = await cur.fetchall()
    await cur.close()
    return int(rows[0][0])


class Store:
    """An open SQLite database. Use `await open_store(target)` (a path or a PostgreSQL URL);
    close with `await store.close()`. core/store_pg.PgStore is the PostgreSQL one: it inherits
    every query here that both engines accept and overrides the few that differ."""

    # Rows of `r` the sender already holds (one parameter, see _held_param): SQLite reads a JSON list.
    NOT_HELD = "r.id NOT IN (SELECT value FROM json_each(?))"

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self.db = db
        self.path = path
        self._write_lock = asyncio.Lock()
        self._staging_ids = itertools.count(1)  # names of the TEMP tables of imports (staged_rows)
        # The sender's ledger writes done on the event loop's thread (see record_now, fast path).
        self._inline: sqlite3.Connection | None = None
        self._inline_broken = False
        # The inline connection never checkpoints the WAL itself (see _checkpoint_soon).
        self._checkpoint: asyncio.Task[None] | None = None
        self._checkpoint_at = 0.0
        self._checkpointer: sqlite3.Connection | None = None
        self._opened: os.stat_result | None = None  # the file opened (see check_still_there)

    @property
    def target(self) -> Any:
        """What this store was opened on, as shown to a person (a path here; a redacted URL on PostgreSQL)."""
        return self.path

    @property
    def is_file(self) -> bool:
        """True for a database file (companions, leases and output-path protection apply)."""
        return True

    @staticmethod
    def _held_param(held: Iterable[int]) -> Any:
        return json.dumps(sorted(held))

    @classmethod
    async def open(cls, path: Path | str) -> "Store":
        """Open (creating if needed) and migrate; any failure is one UserError naming the file
        (or, for a bug, the original exception) and leaves no connection or thread behind."""
        path = Path(path)
        check_database_path(path)
        if not path.exists():
            _create_private_file(path)
        check_database_path(path)  # what SQLite will open is still a regular file
        opened = os.stat(path)
        await asyncio.to_thread(_look_before_writing, path)  # before WAL mode changes the file's header
        conn = aiosqlite.connect(sqlite_filename(path), isolation_level=None, timeout=30.0)
        _daemonize(conn)
        try:
            db = await conn
        except Exception as exc:
            raise _open_failure(path, exc) from None
        try:
            _refuse_if_replaced(path, opened)
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute("PRAGMA busy_timeout = 30000")
            await db.execute("PRAGMA foreign_keys = ON")
            store = cls(db, path)
            store._opened = opened
            await store._migrate()
        except BaseException as exc:
            await _close_quietly(db)
            if isinstance(exc, Exception):
                raise _open_failure(path, exc) from None
            raise
        return store

    def check_still_there(self) -> None:
        """Raise UserError when the database's name no longer leads to the file this store opened:
        deleted or replaced (a restore copied over it), renamed, or its filesystem unmounted. A
        sender writing on would record results nobody will read, and a second sender started on
        the name would take another lease (it is named after the file) and send everyone again."""
        if self._opened is not None:
            _refuse_if_replaced(self.path, self._opened, "since it was opened")

    async def close(self) -> None:
        """Close the connections (the inline and checkpoint ones after any checkpoint under way);
        the database thread ends even if the final close fails."""
        inline, self._inline = self._inline, None
        try:
            if self._checkpoint is not None:
                await self._checkpoint  # a few ms; it logs its own failure
            checkpointer, self._checkpointer = self._checkpointer, None
            if checkpointer is not None:
                checkpointer.close()
            if inline is not None:
                inline.close()
        finally:
            await self.db.close()

    async def _migrate(self) -> None:
        async with self.write() as tx:
            await tx.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            async with tx.db.execute("SELECT value FROM meta WHERE key = 'schema_version'") as cur:
                row = await cur.fetchone()
            current = int(row[0]) if row else 0
            if current > SCHEMA_VERSION:
                raise UserError(
                    f"{self.path}: database schema version {current} is newer than this mailtower ({SCHEMA_VERSION})"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in _statements(MIGRATIONS[version]):
                    try:
                        await tx.db.execute(statement)
                    except sqlite3.OperationalError as exc:
                        if storage_error(self.path, exc) is not None:
                            raise  # a full disk, a read-only file: said as such
                        # Tables of a later version under an earlier number (the meta row edited,
                        # or copied from another file): upgrading again would only half work.
                        raise UserError(f"database {self.path}: its tables do not match its schema version "
                                        f"{current} (upgrading to {version}: {exc}); nothing was changed") from None
                await tx.db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(version),)
                )
            await _mark_database(tx.db)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Tx]:
        """One BEGIN IMMEDIATE transaction; commits on success, rolls back on any exception."""
        async with self._write_lock:
            await self._begin_immediate()
            tx = Tx(self.db)
            try:
                yield tx
            except BaseException:
                await self._rollback()
                raise
            else:
                await self.db.execute("COMMIT")

    async def _rollback(self) -> None:
        # SQLite rolls back by itself after some errors (a full disk): a second ROLLBACK would
        # then fail and hide the error that matters.
        if not self.db.in_transaction:
            return
        try:
            await self.db.execute("ROLLBACK")
        except sqlite3.Error:
            log.warning("ROLLBACK failed on %s", self.path, exc_info=True)

    async def _begin_immediate(self) -> None:
        # busy_timeout covers most contention; a bounded retry covers the rest without crashing.
        for attempt in range(50):
            try:
                await self.db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                await asyncio.sleep(min(0.05 * (attempt + 1), 1.0))
        raise UserError(f"{self.path}: the database stayed busy; try again")

    @asynccontextmanager
    async def staged_rows(self, rows: Iterator[ImportedRow], chunk: int = 5000) -> AsyncIterator[StagedRows]:
        """Read a recipient file into a TEMP table before the write transaction that adds it to a
        mailing (Tx.insert_staged): reading and checking a million rows took ~50 s, and inside
        the transaction every sender waited for all of it; now only the copy into `recipients`
        holds the lock. A TEMP table belongs to this connection and its own file: writing it takes
        no lock on the database. Rows go in as they come (in chunks: memory stays flat); then
        addresses repeated within the file are noted by line and suppressed ones counted, and
        both left out (the sender checks suppression again before each message). The table is
        dropped on the way out, whatever happens. A structural error in the file raises out of
        here: nothing was written to the database."""
        table = f"staged_recipients_{next(self._staging_ids)}"
        await self._staging_statement(
            f"CREATE TEMP TABLE {table} (line INTEGER PRIMARY KEY, email TEXT NOT NULL, "
            "email_key TEXT NOT NULL, name TEXT NOT NULL, tz TEXT NOT NULL, fields TEXT NOT NULL)"
        )
        staged = StagedRows(iter(()), table)
        try:
            batch: list[ImportedRow] = []
            for row in rows:
                batch.append(row)
                if len(batch) >= chunk:
                    await self._stage_chunk(staged, batch)
                    batch = []
            await self._stage_chunk(staged, batch)
            await self._settle_staged(staged)
            yield staged
        finally:
            await self._drop_staging(table)

    async def _stage_chunk(self, staged: StagedRows, batch: list[ImportedRow]) -> None:
        await self._staging_statement(
            f"INSERT INTO temp.{staged.table} (line, email, email_key, name, tz, fields) VALUES (?, ?, ?, ?, ?, ?)",
            [(r.line, r.email, r.email.lower(), r.name, r.tz, json.dumps(r.fields) if r.fields else "{}") for r in batch],
        )
        staged.count += len(batch)

    async def _settle_staged(self, staged: StagedRows) -> None:
        """Leave out of the staged rows every repeat of an address (the first line keeps it),
        then the suppressed addresses; note what was left out. The index is built once from a
        sort: kept up to date row by row, it cost more than reading the file."""
        table = staged.table
        await self._staging_statement(f"CREATE INDEX temp.{table}_key ON {table} (email_key, line)")
        repeats = f"EXISTS (SELECT 1 FROM temp.{table} t WHERE t.email_key = s.email_key AND t.line < s.line)"
        async with self.db.execute(f"SELECT line FROM temp.{table} s WHERE {repeats} ORDER BY line") as cur:
            staged.duplicates = [int(line) for line, in await cur.fetchall()]
        if staged.duplicates:
            await self._staging_statement(f"DELETE FROM temp.{table} AS s WHERE {repeats}")
        barred = "email_key IN (SELECT key FROM main.suppression)"
        async with self.db.execute(f"SELECT COUNT(*) FROM temp.{table} WHERE {barred}") as cur:
            staged.suppressed = int((await cur.fetchone())[0])  # type: ignore[index]
        if staged.suppressed:
            await self._staging_statement(f"DELETE FROM temp.{table} WHERE {barred}")
        staged.count -= len(staged.duplicates) + staged.suppressed

    async def _drop_staging(self, table: str) -> None:
        # On the way out of a failure too: an error here must not hide that one. A table left
        # behind goes with the connection (TEMP), and its name is never used again.
        try:
            await self._staging_statement(f"DROP TABLE IF EXISTS temp.{table}")
        except (sqlite3.Error, UserError, ValueError) as exc:
            log.debug("could not drop the import's table %s: %s", table, exc)

    async def _staging_statement(self, sql: str, rows: list[tuple[Any, ...]] | None = None) -> None:
        """A statement on the TEMP table, never inside another coroutine's write transaction on
        this connection (a rollback of that one would take staged rows with it). SQLite keeps
        TEMP tables in a file of its temporary directory, not beside the database: a fault there
        is said so."""
        async with self._write_lock:
            try:
                if rows is None:
                    await self.db.execute(sql)
                elif rows:
                    await self.db.execute("BEGIN")  # one transaction (of the TEMP file only) a chunk
                    try:
                        await self.db.executemany(sql, rows)
                    except BaseException:
                        await self._rollback()
                        raise
                    await self.db.execute("COMMIT")
            except sqlite3.Error as exc:
                fault = storage_error(self.path, exc)
                if fault is None:
                    raise
                raise UserError(
                    f"reading the recipient file into SQLite's temporary directory failed: {str(exc).lower()} (SQLite "
                    "takes SQLITE_TMPDIR, TMPDIR, /var/tmp or /tmp: point SQLITE_TMPDIR at a disk with room); nothing was imported"
                ) from None

    # ---- reads -------------------------------------------------------------------------

    async def mailing(self, mailing_id: int) -> Mailing:
        async with self.db.execute(f"SELECT {MAILING_COLUMNS} FROM mailings WHERE id = ?", (mailing_id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"no mailing with id {mailing_id}")
        return _mailing_from_row(row)

    async def mailings(self, section: Section | None = None) -> list[Mailing]:
        """Mailings of one section (or all), in the order the dashboard shows them."""
        order = {
            Section.CURRENT: "position, id",
            Section.SCHEDULED: "send_at_utc, id",
            Section.INACTIVE: "COALESCE(finished_at, updated_at) DESC, id DESC",
        }
        if section is None:
            sql = f"SELECT {MAILING_LIST_COLUMNS} FROM mailings ORDER BY id"
            params: tuple[Any, ...] = ()
        else:
            states = [s.value for s in MailingState if s.section is section]
            sql = (
                f"SELECT {MAILING_LIST_COLUMNS} FROM mailings WHERE state IN ({','.join('?' * len(states))}) "
                f"ORDER BY {order[section]}"
            )
            params = tuple(states)
        async with self.db.execute(sql, params) as cur:
            return [_mailing_from_row(r) for r in await cur.fetchall()]

    async def due_schedules(self, now: datetime) -> list[Mailing]:
        """Scheduled mailings whose instant has come (missed ones included, for the caller to skip)."""
        async with self.db.execute(
            f"SELECT {MAILING_LIST_COLUMNS} FROM mailings WHERE state = 'scheduled' AND send_at_utc <= ? ORDER BY send_at_utc, id",
            (iso(now),),
        ) as cur:
            return [_mailing_from_row(r) for r in await cur.fetchall()]

    async def section_signatures(self) -> dict[Section, tuple[int, int, int]]:
        """Per section (count, sum of versions, sum of ids): equal signatures mean nothing in it changed."""
        result = {section: (0, 0, 0) for section in Section}
        async with self.db.execute(
            "SELECT state, COUNT(*), COALESCE(SUM(version), 0), COALESCE(SUM(id), 0) FROM mailings GROUP BY state"
        ) as cur:
            for state, count, versions, ids in await cur.fetchall():
                section = MailingState(state).section
                n, v, i = result[section]
                result[section] = (n + count, v + int(versions), i + int(ids))
        return result

    async def sections(self) -> dict[Section, list[Mailing]]:
        return {section: await self.mailings(section) for section in Section}

    async def data_version(self) -> int:
        """Changes whenever another connection commits: a cheap 'did anything change?' probe."""
        async with self.db.execute("PRAGMA data_version") as cur:
            return int((await cur.fetchone())[0])  # type: ignore[index]

    # The remaining recipients' rows for a page or an offset (SQLite: merged arms, see there).
    _remaining_rows = staticmethod(_remaining_arms)

    @staticmethod
    def _remaining_filter(search: str) -> tuple[str, list[Any]]:
        if not search:
            return "", []
        like = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        # LOWER on both sides: SQLite's LIKE ignores ASCII case, PostgreSQL's does not.
        clause = (" AND (LOWER(email) LIKE LOWER(?) ESCAPE '\\' OR LOWER(name) LIKE LOWER(?) ESCAPE '\\'"
                  " OR LOWER(last_error) LIKE LOWER(?) ESCAPE '\\')")
        return clause, [like, like, like]

    async def remaining(
        self, mailing_id: int, *, after_id: int = 0, limit: int = 200, search: str = ""
    ) -> list[Recipient]:
        """A page of recipients who have not received the mailing, in ledger order."""
        clause, params = self._remaining_filter(search)
        sql, args = self._remaining_rows(RECIPIENT_COLUMNS, f" AND id > ?{clause}", [mailing_id, after_id, *params])
        async with self.db.execute(sql + " ORDER BY id LIMIT ?", [*args, limit]) as cur:
            return [_recipient_from_row(r) for r in await cur.fetchall()]

    async def remaining_count(self, mailing_id: int, search: str = "") -> int:
        """How many recipients have not received the mailing, of those matching `search`."""
        clause, params = self._remaining_filter(search)
        async with self.db.execute(
            f"SELECT COUNT(*) FROM recipients WHERE mailing_id = ? AND state IN ('pending', 'sending', 'deferred'){clause}",
            [mailing_id, *params],
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def remaining_ids_at(self, mailing_id: int, offset: int, search: str = "") -> int:
        """Id just before the `offset`-th remaining row (for paging by position)."""
        clause, params = self._remaining_filter(search)
        sql, args = self._remaining_rows("id", clause, [mailing_id, *params])
        async with self.db.execute(sql + " ORDER BY id LIMIT 1 OFFSET ?", [*args, offset]) as cur:
            row = await cur.fetchone()
        return int(row[0]) - 1 if row else 0

    async def recipients(self, mailing_id: int) -> list[Recipient]:
        async with self.db.execute(
            f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE mailing_id = ? ORDER BY id", (mailing_id,)
        ) as cur:
            return [_recipient_from_row(r) for r in await cur.fetchall()]

    async def recipient_zones(self, mailing_id: int) -> dict[str, int]:
        async with self.db.execute(
            "SELECT tz, COUNT(*) FROM recipients WHERE mailing_id = ? GROUP BY tz", (mailing_id,)
        ) as cur:
            return {tz: n for tz, n in await cur.fetchall()}

    async def events(self, mailing_id: int) -> list[tuple[datetime, str, str]]:
        async with self.db.execute(
            "SELECT at, kind, detail FROM events WHERE mailing_id = ? ORDER BY id", (mailing_id,)
        ) as cur:
            return [(parse_iso(a), k, d) for a, k, d in await cur.fetchall()]  # type: ignore[misc]

    async def outcome_breakdown(self, mailing_id: int) -> dict[str, list[tuple[str, int]]]:
        """Failures and deferrals grouped by reply code and by recipient domain."""
        result: dict[str, list[tuple[str, int]]] = {}
        queries = {
            "failed_by_code": ("failed", "COALESCE(CAST(last_code AS TEXT), '-')"),
            "deferred_by_code": ("deferred", "COALESCE(CAST(last_code AS TEXT), '-')"),
            "failed_by_domain": ("failed", "substr(email_key, instr(email_key, '@') + 1)"),
            "deferred_by_domain": ("deferred", "substr(email_key, instr(email_key, '@') + 1)"),
        }
        for key, (state, expr) in queries.items():
            async with self.db.execute(
                f"SELECT {expr} AS k, COUNT(*) AS n FROM recipients WHERE mailing_id = ? AND state = ? "
                "GROUP BY k ORDER BY n DESC, k LIMIT 20",
                (mailing_id, state),
            ) as cur:
                result[key] = [(str(k), int(n)) for k, n in await cur.fetchall()]
        return result

    async def state_counts(self, mailing_id: int) -> dict[str, int]:
        """Counted from the ledger: for verification and details, never for progress bars."""
        async with self.db.execute(
            "SELECT state, COUNT(*) FROM recipients WHERE mailing_id = ? GROUP BY state", (mailing_id,)
        ) as cur:
            return {s: n for s, n in await cur.fetchall()}

    async def settings_rows(self) -> list[tuple[str, str, str]]:
        """The settings table as stored: key, value, changed_at (text, perhaps edited by hand)."""
        async with self.db.execute("SELECT key, value, changed_at FROM settings") as cur:
            return [(str(k), str(v), str(c)) for k, v, c in await cur.fetchall()]

    async def get_settings(self) -> dict[str, tuple[str, datetime]]:
        return {k: (v, parse_iso(c)) for k, v, c in await self.settings_rows()}  # type: ignore[misc]

    async def put_settings(self, values: dict[str, str]) -> None:
        async with self.write() as tx:
            await tx.db.executemany(
                "INSERT INTO settings (key, value, changed_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, changed_at = excluded.changed_at",
                # To the microsecond: a sender tells a limit stored after its start (the operator's
                # latest word) from one stored before, even within one second (core/limits.py).
                [(k, v, iso(tx.now, "microseconds")) for k, v in values.items()],
            )

    async def meta(self, key: str) -> str | None:
        async with self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return row[0] if row else None

    async def put_meta(self, values: dict[str, str]) -> None:
        async with self.write() as tx:
            await tx.db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                list(values.items()),
            )

    # ---- the sender's ledger operations ------------------------------------------------

    async def recover_in_doubt(self, heartbeat_timeout: float | None = None, me: int | None = None) -> int:
        """At start-up: rows left `sending` by a dead sender may have been delivered; send again.

        Fleet (core/fleet.py): only rows of senders that are not alive, or without an owner; a
        live sender's rows in flight are its own. `heartbeat_timeout` None: every sender but
        `me` is dead (SQLite: the lease says so); else those whose heartbeat is older."""
        async with self.write() as tx:
            await self._declare_dead(tx, heartbeat_timeout, me)
            orphan = "state = 'sending' AND (claimed_by IS NULL OR claimed_by IN (SELECT id FROM senders WHERE state <> 'running'))"
            async with tx.db.execute(
                f"SELECT mailing_id, COUNT(*) FROM recipients WHERE {orphan} AND in_doubt = 0 GROUP BY mailing_id"
            ) as cur:
                per_mailing = await cur.fetchall()
            await tx.db.execute(
                f"UPDATE recipients SET state = 'pending', in_doubt = 1, claimed_by = NULL, updated_at = ? WHERE {orphan}",
                (time.time(),),
            )
            await tx.db.execute(
                "UPDATE recipients SET claimed_by = NULL WHERE claimed_by IN (SELECT id FROM senders WHERE state <> 'running')"
            )
            return await _count_in_doubt(tx, per_mailing, "a sender stopped")

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
        inline: bool = True,
        known: Mailing | None = None,
    ) -> tuple[list[Claimed], Mailing]:
        """Write outcomes, mark the rows connections are about to send `sending`, and claim up
        to `claim` more due rows (none of `held`, the rows the sender already has), in one
        transaction.

        A connection marks its next row in the same commit that records its previous outcome,
        and waits for that commit before the row's final dot: `sending` on disk means "may
        have reached the server", at most one row per connection, without a commit per
        message. Claimed rows stay `pending` on disk.

        Claiming happens only while the mailing is `sending`, so a stop committed by another
        process is honoured at the next batch.

        This is the sender's hot path: the whole transaction runs as one call on the database
        thread instead of a hop per statement.

        Marked rows whose address is suppressed by now become `suppressed` and are added to
        `barred`: their connection must not send the final dot.

        Done at once on the calling thread when the store is free (record_now), else on the
        database thread; always there when not `inline` (a front end answering keys on the same
        event loop: a claim of 200 rows held the dashboard's loop 12-21 ms).

        With `known` (this mailing as last returned) only its state and counters are read back.
        """
        if inline:
            done = self.record_now(mailing_id, outcomes, claim, rate=rate, marks=marks, held=held, barred=barred, known=known)
            if done is not None:
                return done
        columns = mailing_columns(mailing_id, known)
        async with self._write_lock:
            claimed, row = await self.db._execute(  # noqa: SLF001 - aiosqlite's own way to run on its thread
                _record_and_claim, self.db._conn, mailing_id, outcomes, claim, rate, marks or [], held, barred,  # noqa: SLF001
                self.claim_owner, _begin_immediate_sync, columns,
            )
        return claimed, mailing_as_written(row, known, columns)

    async def next_retry(self, mailing_id: int) -> float | None:
        """Wall-clock time of the mailing's earliest deferred recipient's next attempt."""
        async with self.db.execute(
            "SELECT MIN(next_attempt_at) FROM recipients WHERE mailing_id = ? AND state = 'deferred'", (mailing_id,)
        ) as cur:
            row = await cur.fetchone()
        return float(row[0]) if row and row[0] is not None else None

    async def last_sent_at(self) -> datetime | None:
        """When a mailing last counted a message sent (its row's last update), across runs."""
        async with self.db.execute("SELECT MAX(updated_at) FROM mailings WHERE sent > 0") as cur:
            row = await cur.fetchone()
        return parse_iso(row[0]) if row and row[0] else None

    async def has_due_work(self, mailing_id: int) -> bool:
        async with self.db.execute(
            "SELECT 1 FROM recipients WHERE mailing_id = ? AND (state = 'pending' OR "
            "(state = 'deferred' AND next_attempt_at <= ?)) AND (claimed_by IS NULL OR claimed_by = ?) LIMIT 1",
            (mailing_id, time.time(), -1 if self.claim_owner is None else self.claim_owner),
        ) as cur:
            return await cur.fetchone() is not None

    async def recipients_page(
        self, mailing_id: int, labels: Iterable[str] = (), *, after_id: int = 0, limit: int = 2000
    ) -> list[Recipient]:
        """A keyset page of a mailing's ledger in id order, all rows or those whose state label
        (pending, in doubt, sending, deferred, sent, failed; see exports.state_label) is in `labels`.

        "pending" and "deferred" mean so and not in doubt; "in doubt" a pending or deferred row
        that may have been delivered already (exports.state_label). Callers page with `after_id`
        = the last id of the previous page.
        """
        conditions = {
            "pending": "(state = 'pending' AND in_doubt = 0)",
            "deferred": "(state = 'deferred' AND in_doubt = 0)",
            "in doubt": "(state IN ('pending', 'deferred') AND in_doubt = 1)",
            **{s.value: f"state = '{s.value}'" for s in RecipientState
               if s not in (RecipientState.PENDING, RecipientState.DEFERRED)},
        }
        labels = set(labels)
        unknown = sorted(labels - set(conditions))
        if unknown:
            raise ValueError(f"unknown recipient state label {unknown[0]!r}")
        where = f" AND ({' OR '.join(conditions[label] for label in sorted(labels))})" if labels else ""
        async with self.db.execute(
            f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE mailing_id = ? AND id > ?{where} ORDER BY id LIMIT ?",
            (mailing_id, after_id, limit),
        ) as cur:
            return [_recipient_from_row(r) for r in await cur.fetchall()]

    # ---- breaker and canary (core/breaker.py, core/canary.py) ------------------------------

    async def recent_outcomes(
        self, mailing_id: int, *, since: float, limit: int, canary_only: bool = False
    ) -> list[tuple[str, int | None, str, str | None]]:
        """The mailing's latest `limit` answered recipients (sent, failed, deferred) whose answer
        came after `since` (epoch seconds), oldest first, as (state, last code, address, last
        reply): what the breaker's window is rebuilt from when a sender starts."""
        join = " JOIN canary_rows c ON c.mailing_id = r.mailing_id AND c.recipient_id = r.id" if canary_only else ""
        async with self.db.execute(
            f"SELECT r.state, r.last_code, r.email_key, r.last_error FROM recipients r{join} WHERE r.mailing_id = ? "
            "AND r.state IN ('sent', 'failed', 'deferred') AND r.updated_at > ? "
            "ORDER BY r.updated_at DESC, r.id DESC LIMIT ?",
            (mailing_id, since, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [(str(s), c, str(e), t) for s, c, e, t in reversed(rows)]

    async def start_canary(self, mailing_id: int, canary: Canary, size: int) -> Canary:
        """Choose the canary's sample, `size` pending recipients taken round-robin by domain
        (the biggest domains first in every round, so each big domain is sampled), and record
        the canary as sending, in one transaction."""
        async with self.write() as tx:
            await tx.db.execute("DELETE FROM canary_rows WHERE mailing_id = ?", (mailing_id,))
            cur = await tx.db.execute(
                "INSERT INTO canary_rows (mailing_id, recipient_id) SELECT ?, id FROM ("
                " SELECT id, ROW_NUMBER() OVER (PARTITION BY d ORDER BY id) AS turn, COUNT(*) OVER (PARTITION BY d) AS n"
                " FROM (SELECT id, substr(email_key, instr(email_key, '@') + 1) AS d FROM recipients"
                "       WHERE mailing_id = ? AND state = 'pending'"
                "       AND NOT EXISTS (SELECT 1 FROM suppression s WHERE s.key = recipients.email_key)) AS by_domain"
                ") AS turns ORDER BY turn, n DESC, id LIMIT ?",
                (mailing_id, mailing_id, max(size, 0)),
            )
            chosen = max(cur.rowcount, 0)
            started = replace(canary, phase=CanaryPhase.SENDING if chosen else CanaryPhase.DONE, total=chosen, done=0)
            await tx.update_mailing(mailing_id, canary=canary_text(started))
            await tx.add_event(mailing_id, "canary", f"sending to {chosen:,} recipients first, spread over their domains"
                               if chosen else "nobody left to sample; sending normally")
        return started

    async def claim_canary(self, mailing_id: int, held: Iterable[int], limit: int) -> list[Claimed]:
        """Up to `limit` pending recipients of the canary's sample that the sender does not hold yet."""
        sql = (
            "SELECT r.id, r.email, r.name, r.fields, r.attempts, r.first_deferred_at, r.in_doubt"
            " FROM canary_rows c JOIN recipients r ON r.id = c.recipient_id"
            " WHERE c.mailing_id = ? AND r.mailing_id = ? AND r.state = 'pending'"
            # A suppressed address is never sent, canary or not: the normal claim marks it later.
            " AND NOT EXISTS (SELECT 1 FROM suppression s WHERE s.key = r.email_key)"
            f" AND {self.NOT_HELD} AND (r.claimed_by IS NULL OR r.claimed_by = ?) ORDER BY r.id LIMIT ?"
        )
        params = (mailing_id, mailing_id, self._held_param(held), -1 if self.claim_owner is None else self.claim_owner, limit)
        if self.claim_owner is not None:
            return await self._claim_owned(sql, params)
        async with self.db.execute(sql, params) as cur:
            return [_claimed(r) for r in await cur.fetchall()]

    async def canary_answered(self, mailing_id: int) -> int:
        """How many of the canary's sample have an answer (sent, failed or deferred)."""
        async with self.db.execute(
            "SELECT COUNT(*) FROM canary_rows c JOIN recipients r ON r.id = c.recipient_id"
            " WHERE c.mailing_id = ? AND r.state IN ('sent', 'failed', 'deferred')",
            (mailing_id,),
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def put_canary(self, mailing_id: int, canary: Canary | None, event: tuple[str, str] | None = None) -> None:
        """Store a mailing's canary plan or progress (and an event, when it changes phase)."""
        async with self.write() as tx:
            await tx.update_mailing(mailing_id, canary=canary_text(canary))
            if event is not None:
                await tx.add_event(mailing_id, *event)

    async def set_breaker(self, mailing_id: int, hard: float | None, soft: float | None) -> None:
        """A mailing's own breaker thresholds in percent (None: the global setting)."""
        async with self.write() as tx:
            await tx.mailing(mailing_id)  # NotFound for an unknown id
            await tx.update_mailing(mailing_id, breaker_hard=hard, breaker_soft=soft)

    # ---- pacing by destination (core/domains.py) ------------------------------------------

    async def domain_state_counts(self, mailing_id: int) -> list[tuple[str, str, int]]:
        """(recipient domain, ledger state, count) of one mailing, for the per-group figures:
        one row per domain and state, counted by SQLite (never a row per recipient in memory)."""
        async with self.db.execute(
            "SELECT substr(email_key, instr(email_key, '@') + 1) AS d, state, COUNT(*) FROM recipients "
            "WHERE mailing_id = ? GROUP BY d, state",
            (mailing_id,),
        ) as cur:
            return [(str(d), str(s), int(n)) for d, s, n in await cur.fetchall()]

    async def delete_settings(self, keys: Iterable[str]) -> int:
        """Forget the operator's live values `keys` (then the configuration's apply); how many were set."""
        wanted = list(keys)
        async with self.write() as tx:
            cur = await tx.db.executemany("DELETE FROM settings WHERE key = ?", [(k,) for k in wanted])
            return max(cur.rowcount, 0)

    # ---- suppression and unsubscribe (issue 13, items 6-7) -------------------------------

    async def suppression_page(self, after_key: str = "", limit: int = 2000) -> list[tuple[str, str, str, str, int | None, str]]:
        """A keyset page of the suppression list in key order: (key, address, source, reason,
        mailing id, added at)."""
        async with self.db.execute(
            "SELECT key, email, source, reason, mailing_id, added_at FROM suppression WHERE key > ? ORDER BY key LIMIT ?",
            (after_key, limit),
        ) as cur:
            return [tuple(row) for row in await cur.fetchall()]  # type: ignore[misc]

    async def suppressed_keys(self, keys: Iterable[str]) -> set[str]:
        """Which of `keys` are on the suppression list."""
        wanted = list(set(keys))
        found: set[str] = set()
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            async with self.db.execute(
                f"SELECT key FROM suppression WHERE key IN ({','.join('?' * len(chunk))})", chunk
            ) as cur:
                found.update(row[0] for row in await cur.fetchall())
        return found

    async def meta_once(self, key: str, make: str) -> str:
        """The meta value of `key`, storing `make` first if there is none (two processes that
        race both read the one that was stored first)."""
        async with self.write() as tx:
            await tx.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", (key, make))
            async with tx.db.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
                row = await cur.fetchone()
        return str(row[0])  # type: ignore[index]

    # ---- local-time waves (issue 14) ---------------------------------------------------

    async def waiting_zones(self, mailing_ids: Iterable[int]) -> dict[str, int]:
        """Recipients not yet sent to ('' for those without a zone), per zone, across mailings."""
        return await _waiting_zones(self.db, mailing_ids)

    async def wave_members(self, group: int) -> list[Mailing]:
        """The mailings of one wave group, earliest instant first."""
        return await _wave_members(self.db, group)

    async def wave_request(self, group: int) -> tuple[datetime, str | None] | None:
        """What a wave group was asked for: the wall time, and the zone of recipients without one."""
        async with self.db.execute("SELECT send_at_local, default_tz FROM wave_groups WHERE id = ?", (group,)) as cur:
            row = await cur.fetchone()
        return (datetime.fromisoformat(row[0]), row[1]) if row else None

    async def wave_zones(self, mailing_id: int) -> list[tuple[str, int]]:
        """The zones of a wave and how many recipients each had when it was planned."""
        async with self.db.execute("SELECT wave_zones FROM mailings WHERE id = ?", (mailing_id,)) as cur:
            row = await cur.fetchone()
        try:
            pairs = json.loads(row[0]) if row and row[0] else []
            return [(str(zone), int(n)) for zone, n in pairs]
        except (ValueError, TypeError):
            return []  # a hand-edited value: Details shows no zones rather than failing

    # ---- fleet: several senders on one database (issue 15, core/fleet.py) --------------
    # A sender registers (a `senders` row) and beats its heartbeat in the DATABASE's clock (hosts'
    # clocks differ); alive = state 'running' and a heartbeat younger than the timeout. Every
    # claimed ledger row carries its sender's id (recipients.claimed_by) until its outcome or its
    # release; rows of a sender declared dead are released (`sending` ones become in doubt).

    claim_owner: int | None = None  # the sender id this store's claims carry (set by core/fleet.py)
    NOW_SQL = "((julianday('now') - 2440587.5) * 86400.0)"  # the database's clock, epoch seconds
    _ALIVE = "state = 'running' AND heartbeat_at >= {now} - ?"
    _BUDGET_COUNTS = "SELECT budget_sent FROM senders WHERE state = 'running' AND id <> ?"

    async def register_sender(self, host: str, pid: int, connections: int) -> int:
        """A new `running` sender; senders that ended more than a day ago are forgotten."""
        now = self.NOW_SQL
        async with self.write() as tx:
            await tx.db.execute(f"DELETE FROM senders WHERE state <> 'running' AND heartbeat_at < {now} - 86400")
            cur = await tx.db.execute(
                f"INSERT INTO senders (host, pid, started_at, heartbeat_at, connections) VALUES (?, ?, {now}, {now}, ?) RETURNING id",
                (host, pid, connections),
            )
            return await _returned_id(cur)

    async def sender_heartbeat(self, sender_id: int, rate: float, connections: int, timeout: float,
                               budget_sent: int = 0) -> int | None:
        """Beat; how many senders are alive now, or None when this one is no longer `running`
        (another declared it dead). `budget_sent`: what this sender sent within the hourly
        budget's window (core/fleet.py counts the fleet's budget with it)."""
        async with self.write() as tx:
            cur = await tx.db.execute(
                f"UPDATE senders SET heartbeat_at = {self.NOW_SQL}, rate = ?, connections = ?, budget_sent = ?"
                " WHERE id = ? AND state = 'running'",
                (rate, connections, budget_sent, sender_id),
            )
            if cur.rowcount <= 0:
                return None
            return await self._live_senders(tx.db, timeout)

    async def live_senders(self, timeout: float) -> int:
        return await self._live_senders(self.db, timeout)

    async def budget_counts(self, me: int | None) -> list[int]:
        """What each `running` sender but `me` said at its last heartbeat it sent within the
        hourly budget's window. Running, not alive: a sender whose heartbeat is late keeps its
        part of the budget until it is declared dead (never handed out twice)."""
        async with self.db.execute(self._BUDGET_COUNTS, (-1 if me is None else me,)) as cur:
            return [int(row[0]) for row in await cur.fetchall()]

    async def _live_senders(self, db: Any, timeout: float) -> int:
        async with db.execute(f"SELECT COUNT(*) FROM senders WHERE {self._ALIVE.format(now=self.NOW_SQL)}", (timeout,)) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def held_by_others(self, mailing_id: int, timeout: float) -> bool:
        """Whether another live sender holds rows of this mailing (claimed or in flight): strict
        queue order waits for them, and this sender's end of turn does not yield the mailing."""
        me = -1 if self.claim_owner is None else self.claim_owner
        async with self.db.execute(
            "SELECT 1 FROM recipients WHERE claimed_by IS NOT NULL AND claimed_by <> ? AND mailing_id = ?"
            f" AND claimed_by IN (SELECT id FROM senders WHERE {self._ALIVE.format(now=self.NOW_SQL)}) LIMIT 1",
            (me, mailing_id, timeout),
        ) as cur:
            return await cur.fetchone() is not None

    async def sender_rows(self, timeout: float) -> list[tuple[Any, ...]]:
        """Senders running or ended within the hour: id, host, pid, started_at, heartbeat_at,
        rate, connections, state, alive, the database's clock now."""
        now = self.NOW_SQL
        async with self.db.execute(
            f"SELECT id, host, pid, started_at, heartbeat_at, rate, connections, state,"
            f" CASE WHEN {self._ALIVE.format(now=now)} THEN 1 ELSE 0 END, {now} FROM senders"
            f" WHERE state = 'running' OR heartbeat_at >= {now} - 3600 ORDER BY id",
            (timeout,),
        ) as cur:
            return list(await cur.fetchall())

    async def expire_senders(self, timeout: float, me: int | None = None) -> int:
        """Declare dead every running sender (not `me`) whose heartbeat is older than `timeout`
        and release its rows: `sending` ones become in doubt (counted, with an event), claimed
        ones claimable. Returns how many rows became in doubt."""
        async with self.write() as tx:
            dead = await self._declare_dead(tx, timeout, me)
            return await self._release_claims(tx, dead, "its heartbeat stopped") if dead else 0

    async def retire_sender(self, sender_id: int, unowned: bool = False) -> int:
        """A sender that ends: `stopped`, its claims released (rows cut off in flight in doubt).
        `unowned`: rows in flight without an owner are its own too (SQLite's lease: its claims
        carry no owner, core/fleet.py)."""
        async with self.write() as tx:
            await tx.db.execute(f"UPDATE senders SET state = 'stopped', heartbeat_at = {self.NOW_SQL} WHERE id = ?", (sender_id,))
            return await self._release_claims(tx, [(sender_id, "", 0)], "it stopped", unowned)

    async def _declare_dead(self, tx: Tx, timeout: float | None, me: int | None) -> list[tuple[int, str, int]]:
        """Running senders (not `me`) older than `timeout` (None: all of them) become `dead`."""
        stale = "state = 'running' AND id <> ?" + ("" if timeout is None else f" AND heartbeat_at < {self.NOW_SQL} - ?")
        params: tuple[Any, ...] = (-1 if me is None else me,) + (() if timeout is None else (timeout,))
        async with tx.db.execute(f"SELECT id, host, pid FROM senders WHERE {stale}", params) as cur:
            dead = [(int(r[0]), str(r[1]), int(r[2])) for r in await cur.fetchall()]
        if dead:
            await tx.db.execute(f"UPDATE senders SET state = 'dead' WHERE id IN ({','.join('?' * len(dead))})",
                                [d[0] for d in dead])
        return dead

    async def _release_claims(self, tx: Tx, senders: list[tuple[int, str, int]], why: str, unowned: bool = False) -> int:
        ids = [s[0] for s in senders]
        held = f"claimed_by IN ({','.join('?' * len(ids))})"
        flights: list[tuple[str, list[Any]]] = [(f"{held} AND state = 'sending'", list(ids))]
        if unowned:
            # By mailing, so the (mailing_id, state) index finds them: not a scan of every row.
            flights.append(("mailing_id IN (SELECT id FROM mailings) AND state = 'sending' AND claimed_by IS NULL", []))
        cut: Counter[int] = Counter()
        for where, params in flights:
            async with tx.db.execute(
                f"SELECT mailing_id, COUNT(*) FROM recipients WHERE {where} AND in_doubt = 0 GROUP BY mailing_id", params
            ) as cur:
                for mailing_id, n in await cur.fetchall():
                    cut[mailing_id] += n
            await tx.db.execute(
                f"UPDATE recipients SET state = 'pending', in_doubt = 1, claimed_by = NULL, updated_at = ? WHERE {where}",
                [time.time(), *params],
            )
        await tx.db.execute(f"UPDATE recipients SET claimed_by = NULL WHERE {held}", ids)
        who = ", ".join(f"sender {i} (pid {pid} on {host})" if host else f"sender {i}" for i, host, pid in senders)
        return await _count_in_doubt(tx, cut.items(), f"{who} stopped ({why})")

    async def _claim_owned(self, sql: str, params: tuple[Any, ...]) -> list[Claimed]:
        """Rows chosen by `sql` (a claim query), recorded as claimed by this store's sender."""
        async with self.write() as tx:
            async with tx.db.execute(sql, params) as cur:
                rows = [_claimed(r) for r in await cur.fetchall()]
            if rows:
                await tx.db.execute(
                    f"UPDATE recipients SET claimed_by = ? WHERE id IN ({','.join('?' * len(rows))})"
                    " AND EXISTS (SELECT 1 FROM senders WHERE id = ? AND state = 'running')",
                    [self.claim_owner, *(r.id for r in rows), self.claim_owner],
                )
        return rows

    # ---- fast path: the sender's ledger write on the event loop's thread (issue 12) --------

    def record_now(
        self,
        mailing_id: int,
        outcomes: list[Outcome],
        claim: int = 0,
        *,
        rate: float | None = None,
        marks: list[int] | None = None,
        held: Iterable[int] = (),
        barred: set[int] | None = None,
        known: Mailing | None = None,
    ) -> tuple[list[Claimed], Mailing] | None:
        """`record_and_claim` done at once on the calling (event loop) thread, or None when it
        cannot be without waiting: another write of this store is under way, or another process
        holds the database's write lock. The caller then uses the awaitable path. The same
        transaction, so the same guarantees (suppressed marks end in `barred`).

        Why: a hop to the database thread and back costs a thread wake-up and a GIL hand-off
        each way (up to sys.getswitchinterval() while the loop is busy), and a connection waits
        for this write before every final dot (issue 12). The write itself is a few short
        statements in WAL mode with synchronous=NORMAL: no fsync.

        With `known` (this mailing as last returned) only its state and counters are read
        back, the rest is taken from it: the sender's per-message write needs nothing else."""
        if self._write_lock.locked() or self._inline_broken:
            return None
        conn = self._inline
        if conn is None:
            conn = self._inline = self._open_inline()
            if conn is None:
                return None
        columns = mailing_columns(mailing_id, known)
        try:
            claimed, row = _record_and_claim(
                conn, mailing_id, outcomes, claim, rate, marks or [], held, barred, self.claim_owner, _begin_now, columns
            )
        except _Busy:
            return None
        self._checkpoint_soon()
        return claimed, mailing_as_written(row, known, columns)

    def _open_inline(self) -> sqlite3.Connection | None:
        """A second connection to the same file for record_now; None (and the awaitable path
        from then on) if it cannot be opened."""
        try:
            conn = sqlite3.connect(sqlite_filename(self.path), isolation_level=None, timeout=0,
                                   check_same_thread=False)
        except sqlite3.Error:
            self._inline_broken = True
            return None
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # _checkpoint_soon does it off the loop
        except sqlite3.Error:
            conn.close()
            self._inline_broken = True
            return None
        return conn

    def _checkpoint_soon(self) -> None:
        """After an inline write: copy the WAL back into the database on another thread, at most
        every CHECKPOINT_INTERVAL. SQLite's automatic checkpoint runs inside the commit that
        crosses 1,000 WAL pages: on the event loop's thread that stalled every connection
        10-25 ms every half second (issue 12)."""
        now = time.monotonic()
        if self._checkpoint is not None or now - self._checkpoint_at < CHECKPOINT_INTERVAL:
            return
        self._checkpoint_at = now
        self._checkpoint = asyncio.get_running_loop().create_task(self._run_checkpoint())

    async def _run_checkpoint(self) -> None:
        try:
            if self._checkpointer is None:
                self._checkpointer = await asyncio.to_thread(_checkpoint_connection, self.path)
            await asyncio.to_thread(_checkpoint_wal, self._checkpointer)
        except sqlite3.Error as exc:
            # The next write meets a storage fault (a full disk...) itself and says so in its one
            # line; a warning here too was a second line for the same fault on the sender's stderr.
            level = logging.DEBUG if storage_error(self.path, exc) is not None else logging.WARNING
            log.log(level, "WAL checkpoint of %s failed: %s", self.path, exc)
        finally:
            self._checkpoint = None

    # ---- fleet: long writes and lock waits (issue 15 review; PostgreSQL's in core/store_pg.py) ----

    def new_mailing_write(self) -> Any:
        """The transaction that creates a mailing with its recipients. SQLite has one writer at a
        time whatever is written: the ordinary write. PostgreSQL takes its lock only to commit."""
        return self.write()

    async def operator_lock_wait(self) -> None:
        """A person waits for this process: SQLite's busy timeout (30 s) is short already."""

    async def meta_prefixed(self, prefix: str) -> dict[str, str]:
        """Every meta key that starts with `prefix` (each fleet sender's own status), with its value."""
        async with self.db.execute(
            "SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)
        ) as cur:
            return {str(k): str(v) for k, v in await cur.fetchall()}

    async def put_sender_status(self, key: str, value: str) -> None:
        """One sender's own status row (PostgreSQL writes it without the write lock)."""
        await self.put_meta({key: value})

    async def forget_sender_statuses(self, prefix: str) -> None:
        """Drop the status rows of senders no longer registered (forgotten a day after they ended)."""
        async with self.write() as tx:
            await tx.db.execute(
                "DELETE FROM meta WHERE substr(key, 1, ?) = ? AND substr(key, ?) NOT IN (SELECT CAST(id AS TEXT) FROM senders)",
                (len(prefix), prefix, len(prefix) + 1),
            )

    async def sent_within(self, seconds: float) -> int:
        """Messages recorded sent in the last `seconds` (PostgreSQL: by every sender; one sender
        here, whose own limiter counts exactly, so the fleet never asks)."""
        async with self.db.execute(
            "SELECT COUNT(*) FROM recipients WHERE state = 'sent' AND updated_at >= ?", (time.time() - seconds,)
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0


async def _waiting_zones(db: aiosqlite.Connection, mailing_ids: Iterable[int]) -> dict[str, int]:
    ids = list(mailing_ids)
    if not ids:
        return {}
    async with db.execute(
        f"SELECT tz, COUNT(*) FROM recipients WHERE mailing_id IN ({','.join('?' * len(ids))}) "
        "AND state IN ('pending', 'sending', 'deferred') GROUP BY tz",
        ids,
    ) as cur:
        return {str(tz): int(n) for tz, n in await cur.fetchall()}


async def _wave_members(db: aiosqlite.Connection, group: int) -> list[Mailing]:
    async with db.execute(
        f"SELECT {MAILING_LIST_COLUMNS} FROM mailings WHERE wave_group = ? ORDER BY send_at_utc IS NULL, send_at_utc, id",
        (group,),
    ) as cur:
        return [_mailing_from_row(r) for r in await cur.fetchall()]


async def _count_in_doubt(tx: Tx, per_mailing: Iterable[tuple[int, int]], when: str) -> int:
    """Rows that became in doubt, per mailing: counted on the mailing, with an event saying when."""
    total = 0
    for mailing_id, n in per_mailing:
        total += n
        await tx.db.execute("UPDATE mailings SET in_doubt = in_doubt + ? WHERE id = ?", (n, mailing_id))
        await tx.add_event(mailing_id, "in doubt", f"{n} recipients were in flight when {when}; sending them again")
    return total


# ---- choosing the engine (issue 15) ---------------------------------------------------------


async def open_store(target: Any) -> Store:
    """The one way to open a database: a path opens the SQLite Store, a PgTarget (a
    postgresql:// URL, core/db_target.py) the PostgreSQL one. Without the driver installed,
    one line says which extra to install."""
    if not isinstance(target, PgTarget):
        return await Store.open(target)
    return await pg_store_class(target).open(target)


def pg_store_class(target: PgTarget) -> Any:
    try:
        from .store_pg import PgStore
    except ImportError:
        raise UserError(f"database {target}: {INSTALL_HINT}") from None
    return PgStore
