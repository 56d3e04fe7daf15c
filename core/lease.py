"""The sender lease: at most one sending process per database, held as an OS file lock.

The kernel drops the lock when the holder dies, so a crashed sender never blocks the next one.
The lock file also says who holds it, for the dashboard's monitor mode.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Holder:
    pid: int
    host: str
    since: float
    what: str

    def describe(self) -> str:
        return f"{self.what} (pid {self.pid} on {self.host})"


def lease_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".lease")


class SenderLease:
    def __init__(self, db_path: Path) -> None:
        self.path = lease_path(db_path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, what: str = "mailtower run") -> bool:
        """Take the lease without waiting; False if another process holds it."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "what": what})
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def holder(self) -> Holder | None:
        """Who holds the lease, or None if nobody does (checked by trying the lock)."""
        if self._fd is not None:
            return Holder(os.getpid(), socket.gethostname(), time.time(), "this process")
        if not self.path.exists():
            return None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raw = os.pread(fd, 4096, 0)
                try:
                    data = json.loads(raw or b"{}")
                    return Holder(int(data["pid"]), str(data["host"]), float(data["since"]), str(data["what"]))
                except (ValueError, KeyError):
                    return Holder(0, "?", 0.0, "another process")
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)
