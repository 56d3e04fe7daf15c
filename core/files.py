"""Files a person names: read with a bound, written only after every check, never over what we own.

Every path that reaches mailtower from a flag, the environment, a TOML file or a dialog goes
through here:

- `read_bytes_bounded` / `read_text_bounded` read a file once, with a size bound, whatever it
  is: a regular file, a pipe (`<(cat x)`, `/dev/stdin`, `-`), a FIFO with or without a writer,
  or a device that never ends (`/dev/zero`). Directories are refused; a non-regular file that
  stops producing data for `idle_timeout` seconds is refused rather than waited on for ever.
- `check_output_path` refuses, before any work is done, an output path that is a directory,
  sits in a directory that does not exist, already exists (unless `force`), or is one of the
  files that must never be written: the database, its -wal/-shm/lease files, and the input
  files of the same command, however they are named (symlink, hard link, relative path).
- `atomic_output` writes to a temporary file beside the target and renames it into place only
  when the whole content was written, so a failure never leaves a half-written or clobbered file.
"""

from __future__ import annotations

import errno
import io
import os
import select
import stat
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from .errors import UserError

KIB = 1024
MIB = 1024 * KIB

# Bounds for what a person names. Generous for real use, far below what hurts the machine.
MAX_BODY_BYTES = 10 * MIB  # a text or HTML body
MAX_CONFIG_BYTES = 1 * MIB  # the TOML file
MAX_SECRET_BYTES = 64 * KIB  # a password file
IDLE_TIMEOUT = 30.0  # seconds a pipe may stay silent before we give up on it
# Seconds a named pipe may wait for its writer to open it: until then it reads as empty (no
# writer is end of file), and a writer that came a moment later lost a body without a word.
WRITER_WAIT = 5.0

STDIN_NAMES = ("-",)
_CHUNK = 64 * KIB


def describe_size(size: int) -> str:
    if size >= MIB:
        return f"{size / MIB:g} MiB"
    if size >= KIB:
        return f"{size / KIB:g} KiB"
    return f"{size} bytes"


def is_stdin(path: Path | str) -> bool:
    return str(path) in STDIN_NAMES


def _stdin_fd() -> int:
    """A duplicate of standard input's fd; OSError if there is none (closed, or not a real file)."""
    try:
        return os.dup(sys.stdin.fileno())
    except (AttributeError, ValueError) as exc:  # sys.stdin is None, closed or a stand-in without an fd
        raise OSError(errno.EBADF, "standard input is not open") from exc


def _open_error(path: Path, what: str, exc: OSError) -> UserError:
    """One line for a file that cannot be opened for reading."""
    if is_stdin(path):
        return UserError(f"{what}: cannot read standard input: {exc.strerror or exc}")
    if isinstance(exc, IsADirectoryError):
        return UserError(f"{what}: {path} is a directory, not a file")
    if isinstance(exc, FileNotFoundError):
        return UserError(f"{what}: {path} does not exist")
    return UserError(f"{what}: cannot read {path}: {exc.strerror or exc}")


def stat_named(path: Path, where: str) -> os.stat_result:
    """os.stat of a file a person named (links followed); one line starting with `where` (what
    the file is for, and its name) when it does not exist or cannot be looked at. Which kinds of file it may be is the
    caller's rule (a config file, a password, a key)."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{where} does not exist") from None
    except OSError as exc:  # a file named "-" here is that file, never standard input
        raise UserError(f"{where}: cannot read it: {exc.strerror or exc}") from None


def read_bytes_bounded(path: Path | str, *, limit: int, what: str, idle_timeout: float = IDLE_TIMEOUT) -> bytes:
    """The whole content of `path` (at most `limit` bytes), read once; `what` names the source
    in errors (a flag such as "--text", or a setting such as "MAILTOWER_CONFIG").

    The same bounded, idle-timed reader as `open_stream`, read to the end."""
    path = Path(path)
    named = f"{what}: {'standard input' if is_stdin(path) else path}"
    try:
        stream = open_stream(path, what=named, limit=limit, idle_timeout=idle_timeout)
    except OSError as exc:
        raise _open_error(path, what, exc) from None
    with stream:
        try:
            return stream.read()
        except OSError as exc:
            raise UserError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None


def read_text_bounded(path: Path | str, *, limit: int, what: str, idle_timeout: float = IDLE_TIMEOUT) -> str:
    """As `read_bytes_bounded`, decoded as UTF-8 (a leading BOM is dropped)."""
    data = read_bytes_bounded(path, limit=limit, what=what, idle_timeout=idle_timeout)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"{what}: {path}: line {line}: not valid UTF-8") from None


class _GuardedRaw(io.RawIOBase):
    """The raw side of `open_stream`: every read is counted against `limit` and, for pipes and
    devices, waits at most `idle_timeout` seconds for data (a silent writer is not waited on for ever)."""

    def __init__(
        self, fd: int, *, what: str, limit: int, idle_timeout: float, error: type[UserError]
    ) -> None:
        super().__init__()
        self._fd = fd
        self._what = what
        self._limit = limit
        self._idle_timeout = idle_timeout
        self._error = error
        self._total = 0
        self._restore_blocking: bool | None = None
        self._pending = b""  # a byte read while waiting for the writer (wait_for_writer)

    def wait_for_writer(self, wait: float) -> None:
        """For a named pipe: wait up to `wait` seconds until something was written, or a writer
        came and went (an empty pipe), or holds it open without writing yet (then reading waits as
        for any pipe); one line if nobody opened it to write."""
        ready, _, _ = select.select([self._fd], [], [], wait)
        if ready:
            return
        try:
            first = os.read(self._fd, 1)
        except BlockingIOError:
            return  # a writer has it open and has not written yet
        if not first:
            raise self._error(f"{self._what}: nobody opened this named pipe to write within {wait:g} s; nothing was read")
        self._pending = first  # written between the wait and this read: kept for the reader

    def set_blocking(self, blocking: bool) -> None:
        """Set the fd's mode, putting the old one back on close (stdin's file description is
        shared with the shell that started us)."""
        if self._restore_blocking is None:
            self._restore_blocking = os.get_blocking(self._fd)
        os.set_blocking(self._fd, blocking)

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        # One byte past the limit is enough to know it was passed.
        room = min(len(view), self._limit + 1 - self._total)
        if room <= 0:
            raise self._error(f"{self._what}: larger than the limit of {describe_size(self._limit)}")
        if self._pending:
            view[:1], self._pending = self._pending, b""
            self._total += 1
            return 1
        while True:
            try:
                count = os.readv(self._fd, [view[:room]])
            except BlockingIOError:
                ready, _, _ = select.select([self._fd], [], [], self._idle_timeout)
                if not ready:
                    raise self._error(
                        f"{self._what}: no data for {self._idle_timeout:g} s; giving up"
                    ) from None
                continue
            self._total += count
            if self._total > self._limit:
                raise self._error(f"{self._what}: larger than the limit of {describe_size(self._limit)}")
            return count

    def close(self) -> None:
        if not self.closed:
            try:
                if self._restore_blocking is not None:
                    os.set_blocking(self._fd, self._restore_blocking)
                os.close(self._fd)
            except OSError:
                pass
            finally:
                super().close()


def open_stream(
    path: Path | str,
    *,
    what: str,
    limit: int,
    idle_timeout: float = IDLE_TIMEOUT,
    error: type[UserError] = UserError,
    writer_wait: float = WRITER_WAIT,
) -> BinaryIO:
    """A buffered binary stream over `path`, opened once, for reading line by line.

    Same rules as `read_bytes_bounded` (pipes, FIFOs, devices, `-` for stdin; a FIFO waits at most
    `writer_wait` seconds for a writer, then one line, never blocks for ever) but streamed, so memory
    stays flat whatever the size: the whole stream is bounded by `limit` bytes and a pipe may stay
    silent for `idle_timeout` seconds. Failing to open raises OSError (the caller words it); passing
    a bound raises `error`."""
    if is_stdin(path):
        fd = _stdin_fd()
    else:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        if stat.S_ISREG(info.st_mode) and info.st_size > limit:
            raise error(f"{what}: {describe_size(info.st_size)}; the limit is {describe_size(limit)}")
        raw = _GuardedRaw(fd, what=what, limit=limit, idle_timeout=idle_timeout, error=error)
    except BaseException:
        os.close(fd)
        raise
    try:
        raw.set_blocking(stat.S_ISREG(info.st_mode))
        if stat.S_ISFIFO(info.st_mode) and not is_stdin(path):  # stdin's shell opened it with its writer
            raw.wait_for_writer(writer_wait)
    except BaseException:
        raw.close()
        raise
    return io.BufferedReader(raw, buffer_size=_CHUNK)  # type: ignore[return-value]


# ---- identity of files ------------------------------------------------------------------------


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def database_companions(db: object) -> list[Path]:
    """The database and every file that belongs to it (as named and as resolved); none for a
    database on a PostgreSQL server (core/db_target.PgTarget), which has no file here."""
    if not isinstance(db, (str, os.PathLike)):
        return []
    names: list[Path] = []
    for base in {Path(db), Path(os.path.realpath(db))}:
        names.append(base)
        for suffix in ("-wal", "-shm", "-journal", ".lease"):
            names.append(base.with_name(base.name + suffix))
    from .lease import lease_path  # here: the lease module imports the store, which must not import us back

    lease = lease_path(Path(db))
    if lease is not None:
        names.append(lease)
    return names


def _read_identity(path: Path) -> tuple[int, int, int] | None:
    """(device, inode, mode) of what reading `path` reads: standard input's file for `-`,
    else the file a name leads to (links followed); None when there is none (yet)."""
    try:
        info = os.fstat(sys.stdin.fileno()) if is_stdin(path) else os.stat(path)
    except (OSError, AttributeError, ValueError):
        return None
    return (info.st_dev, info.st_ino, info.st_mode)


def _gives_bytes_once(identity: tuple[int, int, int]) -> bool:
    """A pipe, FIFO or socket, or the terminal standard input reads: what one reader takes, the
    next does not get (on a terminal each would read until its own Ctrl-D, in no order anyone
    could tell)."""
    mode = identity[2]
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return True
    if not stat.S_ISCHR(mode):
        return False
    stdin = _read_identity(Path("-"))
    try:
        terminal = os.isatty(sys.stdin.fileno())
    except (AttributeError, ValueError, OSError):
        terminal = False
    return terminal and stdin is not None and stdin[:2] == identity[:2]


def _source_name(path: Path) -> str:
    return "standard input" if is_stdin(path) else str(path)


def check_inputs(inputs: Iterable[tuple[str, Path | None]], database: Iterable[Path]) -> None:
    """Refuse, before anything is read, input files that cannot be what the person meant: one of
    the database's own files (the database, its -wal, -shm or lease file; an import would read
    binary pages, or an empty log, as a list), and two inputs of one command that read one
    stream (standard input, a pipe, a FIFO or a socket: the first would take all of it, the
    second nothing), however each is named (`-`, /dev/stdin, /dev/fd/0, a link)."""
    own = {identity[:2]: path for path in database if (identity := _read_identity(path)) is not None}
    streams: dict[tuple[int, int], str] = {}
    for flag, path in inputs:
        identity = None if path is None else _read_identity(path)
        if path is None or identity is None:
            continue  # not given, or reading it says what is wrong with it
        where = f"{flag}: " if flag else ""
        if identity[:2] in own:
            raise UserError(f"{where}{_source_name(path)} is the database's own file ({own[identity[:2]]}), not a file to read")
        if not is_stdin(path) and not _gives_bytes_once(identity):
            continue  # a file or a device (/dev/null) may be opened twice; a pipe gives its bytes once
        earlier = streams.setdefault(identity[:2], flag)
        if earlier != flag:
            stdin = _read_identity(Path("-"))
            what = "standard input" if stdin is not None and stdin[:2] == identity[:2] else f"one stream ({path})"
            raise UserError(f"{earlier} and {flag} both read {what}; give a file for all but one")


def same_file(a: Path, b: Path) -> bool:
    """True when `a` and `b` name one file (symlinks, hard links and relative paths included)."""
    ia, ib = _identity(a), _identity(b)
    if ia is not None and ia == ib:
        return True
    return os.path.realpath(a) == os.path.realpath(b)


# ---- writing ----------------------------------------------------------------------------------


def check_output_path(
    path: Path | str,
    *,
    what: str,
    force: bool = False,
    protected: Iterable[Path] = (),
    replace_hint: str = "give --force to replace it",
) -> Path:
    """Refuse an output path before any work is done; returns it as a Path.

    `protected` lists files that must never be written (the database: pass
    `database_companions(db)`; the input files of the same command)."""
    try:
        path = Path(path).expanduser()
    except RuntimeError:  # "~someone" with no such user
        raise UserError(f"{what}: {path}: no such home directory") from None
    if str(path) == "":
        raise UserError(f"{what}: an empty path is not a file name")
    if is_stdin(path):
        raise UserError(f"{what}: '-' is not a file name here (write ./- for a file called '-')")
    try:
        _check_output(path, what, force, protected, replace_hint)
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte, a loop of symlinks...
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UserError(f"{what}: cannot write {path}: {reason}") from None
    return path


def _check_output(path: Path, what: str, force: bool, protected: Iterable[Path], replace_hint: str) -> None:
    _refuse_protected(path, what, protected)
    if path.is_dir():
        raise UserError(f"{what}: {path} is a directory; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise UserError(f"{what}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what}: cannot write in {parent}: permission denied")
    if os.path.lexists(path):
        info = os.stat(path) if path.exists() else None
        if info is not None and not stat.S_ISREG(info.st_mode):
            raise UserError(f"{what}: {path} is not a regular file")
        if not force:
            raise UserError(f"{what}: {path} already exists; {replace_hint}")


def _refuse_protected(path: Path, what: str, protected: Iterable[Path]) -> None:
    for other in protected:
        if same_file(path, Path(other)):
            raise UserError(f"{what}: {path} is the same file as {other}; mailtower will not write over it")


@contextmanager
def atomic_output(
    path: Path,
    *,
    what: str,
    mode: int = 0o600,
    force: bool = True,
    protected: Iterable[Path] = (),
    replace_hint: str = "give --force to replace it",
) -> Iterator[TextIO]:
    """A text file that becomes `path` only if the block finishes; call `check_output_path` first.

    The temporary file is created beside the target (same filesystem, so the rename is atomic)
    with `mode`; on any error it is removed and the target is untouched. Without `force` the file
    is put in place with link(), which fails if the name was taken meanwhile (never a clobber);
    `protected` is checked again just before, so a name swapped for the database is still refused."""
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        # The name is cut so the temporary name stays within NAME_MAX whatever the target's length.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name[:64]}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise UserError(f"{what}: cannot write in {target.parent}: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _refuse_protected(path, what, protected)
        _put_in_place(tmp, target, what=what, force=force, replace_hint=replace_hint)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{what}: cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _put_in_place(tmp: Path, target: Path, *, what: str, force: bool, replace_hint: str) -> None:
    if force:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise UserError(f"{what}: {target} already exists; {replace_hint}") from None
    tmp.unlink()
