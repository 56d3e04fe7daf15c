"""What a command writes to: standard output, where scripts read what it prints (an id, a
table, JSON), the three standard streams themselves, and `run --log FILE`.

A write to standard output can fail after the command has done what it was asked (a full disk
behind `> file`, `> /dev/full`): that failure was reported as the database's ("No space left on
device (database m.db)") and looked like a command that changed nothing, so a script that retried
`new --now` queued the mailing twice. Writes go through `GuardedStdout`, whose failure is its own
exception, said as what it is.

A standard stream that is closed when mailtower starts (`>&-`) leaves its number free: the next
file or socket opened takes it, and a print() would go into that file (SQLite refuses numbers
below 3 for its database; uvloop aborted the process when it closed one).

The log file is the sender's narrative, not its work: a line that cannot be written (its disk is
full) is said once, in one line, and sending goes on. Logging's own handling printed a traceback
of some 40 lines per failed line, and the failure to close the file at the end was blamed on the
database with exit 2 after every message had been sent.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TextIO

from mailtower.core.display import safe


class StdoutFailed(Exception):
    """Standard output could not be written (the OSError is the cause)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error.strerror or str(error))
        self.error = error


class GuardedStdout:
    """A text stream in front of standard output whose write or flush failures are StdoutFailed."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise  # the reader went away (`| head`): not a failure, main() ends quietly
        except OSError as exc:
            raise StdoutFailed(exc) from exc

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise StdoutFailed(exc) from exc

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def guard_stdout() -> None:
    """Put GuardedStdout in front of sys.stdout (once)."""
    if sys.stdout is not None and not isinstance(sys.stdout, GuardedStdout):
        sys.stdout = GuardedStdout(sys.stdout)  # type: ignore[assignment]


def fill_closed_streams() -> set[int]:
    """Open /dev/null on standard input, output or error where it is closed, so that nothing else
    takes those numbers; returns the numbers that were closed."""
    closed = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.add(fd)
    for fd in sorted(closed):
        opened = os.open(os.devnull, os.O_RDWR)
        if opened != fd:
            os.dup2(opened, fd)
            os.close(opened)
    # Python set the stream of a number closed at its start to None, and print(file=None) writes to
    # standard output: with standard error closed, errors went where scripts read ids.
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        if fd in closed and getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, encoding="utf-8", errors="backslashreplace", closefd=False))
    return closed


class LogFileHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """`run --log FILE`: its first failure is one warning line on standard error; the rest are
    dropped quietly (the sender goes on)."""

    def __init__(self, stream: TextIO, path: Path) -> None:
        super().__init__(stream)
        self.path = path
        self.failed = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        self._warn_once(sys.exc_info()[1])

    def close_file(self) -> None:
        self.close()
        try:
            self.stream.close()
        except OSError as exc:  # the last lines could not be flushed
            self._warn_once(exc)

    def _warn_once(self, error: BaseException | None) -> None:
        if self.failed:
            return
        self.failed = True
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        try:
            sys.stderr.write(f"mailtower: warning: cannot write the log {safe(str(self.path))}: {safe(reason)}; "
                             "the sender goes on without it\n")
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass  # standard error is that same file, or gone: nowhere left to say it
