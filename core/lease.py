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
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .store import check_database_path


@dataclass(frozen=True, slots=True)
class Holder:
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


class SenderLease:
    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self._fd: int | None = None
        self._held_path: Path | None = None

    @property
    def path(self) -> Path | None:
        """The lease file now (it follows the database file if that is replaced)."""
        return self._held_path if self._held_path is not None else lease_path(self.db_path)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, what: str = "mailtower run") -> bool:
        """Take the lease without waiting; False if another process holds it.

        Creates the database file (empty, private) if it does not exist yet, so that it has
        an identity; a path that cannot be a database is refused with a UserError."""
        if self._fd is not None:
            return True
        self._ensure_database()
        path = lease_path(self.db_path)
        if path is None:
            raise UserError(f"database {self.db_path}: it disappeared while taking the sender lease")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise _lease_error(path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as exc:
            os.close(fd)
            raise _lease_error(path, exc) from None
        try:
            self._write_info(fd, what)
        except OSError as exc:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise _lease_error(path, exc) from None
        self._fd, self._held_path = fd, path
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

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd, self._held_path = self._fd, None, None
        try:
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


def _read_holder(fd: int) -> Holder:
    raw = os.pread(fd, 4096, 0)
    try:
        data = json.loads(raw or b"{}")
        return Holder(int(data["pid"]), str(data["host"]), float(data["since"]), str(data["what"]))
    except (ValueError, KeyError, TypeError):
        return Holder(0, "?", 0.0, "another process")
