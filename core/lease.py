"""The sender lease: at most one sending process per database, held as an OS file lock.

The kernel drops the lock when the holder dies, so a crashed sender never blocks the next one.
The lock file also says who holds it, for the dashboard's monitor mode.

One database, one lease, however the database is named: the lease file is named after the
database file's identity (device and inode, in the directory the name resolves to), not after
the name a person typed. `./x.db`, `/abs/x.db`, a symlink to it and a hard link beside it all
reach the same lease file, so a second sender is refused whichever name it was given.

The database file itself is never opened here: closing any descriptor of a file drops every
POSIX lock the process holds on it, SQLite's included (the classic SQLite corruption hazard).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .db_target import PgTarget
from .store import check_database_path


@dataclass(frozen=True, slots=True)
class Holder:
    """The process holding a database's sender lease."""

    pid: int
    host: str
    since: float
    what: str

    def describe(self) -> str:
        return f"{self.what} (pid {self.pid} on {self.host})"


def _resolved(db_path: Path) -> Path:
    return Path(os.path.realpath(db_path))


def lease_path(db_path: Path) -> Path | None:
    """The lease file of the database `db_path` names, or None while that file does not exist
    (a database must exist to have an identity; `SenderLease.acquire` creates it first)."""
    real = _resolved(db_path)
    try:
        info = os.stat(real)
    except OSError:
        return None
    # Named by identity alone: two hard links in one directory share this file.
    return real.parent / f".mailtower-{info.st_dev:x}-{info.st_ino:x}.lease"


def _lease_error(path: Path, exc: OSError) -> UserError:
    return UserError(f"sender lease {path}: {exc.strerror or exc}")


# How often acquire takes a lease file that was removed under it before it gives up (each time
# another process made and removed one in between: bounded, never a spin).
LOCK_ATTEMPTS = 5
# Readers of the lease (SenderLease.holder, fleet.lease_pid: the dashboard and `status`) hold a
# shared lock on it for microseconds; a sender starting in that instant waits them out instead of
# being refused as if another sender held it. Bounded: a real holder is reported after this long.
READER_GRACE = 0.05  # seconds
READER_POLL = 0.002  # seconds between tries


def _lock_exclusive(fd: int) -> bool:
    """The exclusive lock on the lease file, waiting out readers' brief shared locks; False when
    it is still held after READER_GRACE (another sender holds it)."""
    deadline = time.monotonic() + READER_GRACE
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(READER_POLL)


def _open_lease_file(path: Path) -> tuple[int, bool]:
    """The lease file opened for locking, made (private) if missing; and whether we made it."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(LOCK_ATTEMPTS):  # made and removed by others in between: try again, bounded
        try:
            return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600), True
        except FileExistsError:
            pass
        except OSError as exc:
            raise _lease_error(path, exc) from None
        try:
            return os.open(path, flags), False
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise _lease_error(path, exc) from None
    raise UserError(f"sender lease {path}: the file kept being made and removed; try again")


def _still_named(fd: int, path: Path) -> bool:
    """The open file `fd` is still the one `path` names (it was not removed or replaced)."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino)


class SenderLease:
    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self._fd: int | None = None
        self._held_path: Path | None = None
        self._created = False  # the lease file was made by this process's acquire

    @property
    def path(self) -> Path | None:
        """The lease file now (it follows the database file if that is replaced)."""
        return self._held_path if self._held_path is not None else lease_path(self.db_path)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, what: str = "mailtower run") -> bool:
        """Take the lease without waiting for a holder (only for a reader's brief look, at most
        READER_GRACE); False if another process holds it.

        Creates the database file (empty, private) if it does not exist yet, so that it has
        an identity; a path that cannot be a database is refused with a UserError."""
        if self._fd is not None:
            return True
        self._ensure_database()
        path = lease_path(self.db_path)
        if path is None:
            raise UserError(f"database {self.db_path}: it disappeared while taking the sender lease")
        for _ in range(LOCK_ATTEMPTS):
            fd, created = _open_lease_file(path)
            try:
                locked = _lock_exclusive(fd)
            except OSError as exc:
                os.close(fd)
                raise _lease_error(path, exc) from None
            if not locked:
                os.close(fd)
                return False
            try:
                named = _still_named(fd, path)
            except OSError as exc:  # the directory became unreadable: the lock must not stay held
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise _lease_error(path, exc) from None
            if named:
                break
            # A run that failed before its store opened removed the file it had made while we
            # waited to lock it: a lock on that orphan guards nothing; lock the file now named.
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        else:
            raise UserError(f"sender lease {path}: the file kept being replaced while it was locked; try again")
        try:
            self._write_info(fd, what)
        except OSError as exc:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise _lease_error(path, exc) from None
        self._fd, self._held_path, self._created = fd, path, created
        return True

    def _ensure_database(self) -> None:
        check_database_path(self.db_path)
        try:
            fd = os.open(self.db_path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            check_database_path(self.db_path)
            return
        except OSError as exc:
            raise UserError(f"database {self.db_path}: cannot create it: {exc.strerror or exc}") from None
        os.close(fd)

    def _write_info(self, fd: int, what: str) -> None:
        info = json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "what": what,
             "db": str(self.db_path)}
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)

    def release(self, *, discard: bool = False) -> None:
        """Give the lease up. `discard`: the run never opened the database (it is not one of
        ours, or could not be read), so a lease file this process made is removed rather than
        left beside somebody else's file; one that was there before stays."""
        if self._fd is None:
            return
        fd, path, created = self._fd, self._held_path, self._created
        self._fd, self._held_path, self._created = None, None, False
        try:
            if discard and created and path is not None:
                # Removed while still locked: a process that opened it meanwhile finds it is no
                # longer named when it gets the lock (acquire checks), and takes the new one.
                path.unlink(missing_ok=True)
            else:
                os.ftruncate(fd, 0)
        except OSError:
            pass  # a full or read-only disk: the lock below still goes
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def holder(self) -> Holder | None:
        """Who holds the lease, or None if nobody does (checked by trying the lock)."""
        if self._fd is not None:
            return Holder(os.getpid(), socket.gethostname(), time.time(), "this process")
        path = lease_path(self.db_path)
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                return Holder(0, "?", 0.0, "another user's process")
            return None  # unreadable: taking the lease will say why, in one line
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _read_holder(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)


def lease_pid(db_path: Path) -> int | None:
    """The pid holding the sender lease of the SQLite database `db_path`: 0 when nobody holds it,
    None when that cannot be told (the caller keeps the heartbeat's word).

    For a status reader, on a full, read-only or failing disk: never creates or writes a file, never
    waits (a non-blocking open, so not even a FIFO put in the lease file's place can hold it up,
    and a non-blocking shared lock, dropped at once). Unlike SenderLease.holder, which answers
    "nobody" when the lease file cannot be read, anything unclear here is "cannot tell": a sender
    that is alive is never shown gone because of an error of the reader's."""
    path = lease_path(db_path)
    if path is None:
        return None  # the database file is not there to name its lease
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return 0  # a sender makes the lease file before it registers: no file, no sender
    except OSError:
        return None  # another user's file, a link, an I/O error: cannot tell
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_holder(fd).pid  # held: the holder wrote its pid there
            return pid if pid > 0 else None
        except OSError:
            return None  # no locks on this filesystem (ENOLCK) or the like: cannot tell
        fcntl.flock(fd, fcntl.LOCK_UN)
        return 0
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_holder(fd: int) -> Holder:
    raw = os.pread(fd, 4096, 0)
    try:
        data = json.loads(raw or b"{}")
        return Holder(int(data["pid"]), str(data["host"]), float(data["since"]), str(data["what"]))
    except (ValueError, KeyError, TypeError):
        return Holder(0, "?", 0.0, "another process")


# ---- PostgreSQL (issue 15) --------------------------------------------------------------------
# A database on a server has no file to lock: the lease is a session advisory lock held by the
# sender on a connection of its own, dropped by the server when that connection ends (the process
# exited or died). Who holds it is read from pg_stat_activity: the holder names itself in its
# application_name. The fleet work (several senders) replaces this with registered senders.

SENDER_LOCK = 0x6D61696C746F7773  # "mailtows": one advisory lock key per database
# holder() runs on the dashboard's refresh: when the server cannot be reached it says so, and tries
# again only after PROBE_RETRY seconds, each try bounded by PROBE_CONNECT_TIMEOUT (libpq's unit: s).
PROBE_CONNECT_TIMEOUT = 3
PROBE_RETRY = 5.0
_UNREACHABLE = Holder(0, "?", 0.0, "unknown (the database server cannot be reached)")
_APP_PREFIX = "mailtower-lease"


def sender_lease(target: "Path | PgTarget") -> "SenderLease | PgSenderLease":
    """The sender lease of a database: a lock file beside a SQLite file, an advisory lock on PostgreSQL."""
    if isinstance(target, PgTarget):
        return PgSenderLease(target)
    return SenderLease(target)


class PgSenderLease:
    """SenderLease's interface over `pg_try_advisory_lock` (see above)."""

    def __init__(self, target: PgTarget) -> None:
        self.target = target
        self._conn = None  # the connection that holds the lock
        self._probe = None  # a connection kept for holder() (the dashboard asks every second)
        self._probe_retry_at = 0.0  # monotonic: no probe before then (the server was unreachable)

    @property
    def path(self) -> None:
        return None

    @property
    def held(self) -> bool:
        return self._conn is not None

    def _connect(self, what: str, timeout: int = 10):  # noqa: ANN202 - a psycopg Connection
        from .store import pg_store_class

        pg_store_class(self.target)  # the one line naming the extra when psycopg is missing
        import psycopg

        from .db_errors import pg_failure

        name = f"{_APP_PREFIX} {os.getpid()} {socket.gethostname()} {what}"[:63]
        try:
            return psycopg.connect(self.target.url, autocommit=True, connect_timeout=timeout, application_name=name)
        except psycopg.Error as exc:
            raise (pg_failure(self.target, exc) or UserError(f"database {self.target}: cannot connect")) from None

    def acquire(self, what: str = "mailtower run") -> bool:
        if self._conn is not None:
            return True
        conn = self._connect(what)
        try:
            # Shared: several senders may work on one PostgreSQL database (core/fleet.py); the lock
            # still says to a dashboard that someone sends.
            got = conn.execute("SELECT pg_try_advisory_lock_shared(%s)", (SENDER_LOCK,)).fetchone()[0]
        except Exception:
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def release(self, *, discard: bool = False) -> None:  # noqa: ARG002 - no file to discard on PostgreSQL
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()  # the server drops a session lock with its session
        self._close_probe()

    def _close_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.close()

    def holder(self) -> Holder | None:
        if self._conn is not None:
            return Holder(os.getpid(), socket.gethostname(), time.time(), "this process")
        import psycopg

        if time.monotonic() < self._probe_retry_at:
            return _UNREACHABLE  # the server could not be reached a moment ago: do not wait on it again yet
        for _ in range(2):  # a probe connection the server closed is opened again, once
            try:
                if self._probe is None or self._probe.closed:
                    try:
                        self._probe = self._connect("probe", timeout=PROBE_CONNECT_TIMEOUT)
                    except UserError:
                        break  # a fresh connection failed: a second one would only wait as long again
                rows = self._probe.execute(
                    "SELECT a.application_name, EXTRACT(EPOCH FROM a.backend_start) FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                    "AND l.objsubid = 1 AND ((l.classid::bigint << 32) | l.objid::bigint) = %s "
                    "ORDER BY a.backend_start",
                    (SENDER_LOCK,),
                ).fetchall()
            except (psycopg.Error, UserError):  # the server went away (or never answered)
                self._close_probe()
                continue
            if not rows:
                return None
            first = _pg_holder(str(rows[0][0] or ""), float(rows[0][1] or 0.0))
            if len(rows) > 1:  # a fleet (core/fleet.py): the header says how many send
                first = Holder(first.pid, first.host, first.since, f"{first.what} and {len(rows) - 1} more sender(s)")
            return first
        # Unknown is not free: a dashboard must not start a sender on a database it cannot reach.
        self._probe_retry_at = time.monotonic() + PROBE_RETRY
        return _UNREACHABLE


def _pg_holder(application_name: str, since: float) -> Holder:
    parts = application_name.split(" ", 3)
    if len(parts) == 4 and parts[0] == _APP_PREFIX and parts[1].isdigit():
        return Holder(int(parts[1]), parts[2], since, parts[3])
    return Holder(0, "?", since, "another process")
