"""Trust at the edges, part one: starting up on a database that cannot be used, the sender lease
under every name of one database, and every error ending as one line and a known exit status.

Everything runs against real files: SQLite databases in tmp_path, FIFOs, devices, a small tmpfs
that fills up, read-only mounts. Commands run in a subprocess with a timeout wherever the fault
used to hang the process, so a hang fails the test instead of stalling the run.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailtower.core.errors import UserError
from mailtower.core import lease as lease_module
from mailtower.core.lease import SenderLease
from mailtower.core.sink import Sink
from mailtower.core.store import Store
from mailtower.tui.cli import EXIT_INTERNAL_ERROR
from tests.helpers import Cli, recipients, write_csv

# SQLite only (issue 15): a SQLite database file that cannot be used, and the file lease under every name of one file; the PostgreSQL store has tests of its own (test_postgres_*.py).
pytestmark = pytest.mark.sqlite_only

TIMEOUT = 60  # seconds: far above a normal start (< 2 s); only a hang reaches it


# ---- helpers -------------------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`mailtower ARGS` in its own process; a hang raises TimeoutExpired (the process is killed)."""
    full_env = {name: value for name, value in os.environ.items() if name != "MAILTOWER_DB"}
    full_env.update({"MAILTOWER_CONFIG": os.devnull, **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "mailtower.tui.cli", *args],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def assert_one_line(result: tuple[int, str] | subprocess.CompletedProcess[str], *needles: str, code: int = 2) -> str:
    if isinstance(result, subprocess.CompletedProcess):
        returncode, err = result.returncode, result.stderr
    else:
        returncode, err = result
    lines = err.strip().splitlines()
    assert returncode == code, f"exit {returncode}, stderr:\n{err}"
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def make_db(path: Path) -> Path:
    """A real, migrated mailtower database."""

    async def create() -> None:
        store = await Store.open(path)
        await store.close()

    asyncio.run(create())
    return path


def mailing_count(db: Path) -> int:
    """Mailings in `db`; 0 where there is no database (a refused command removes one it made)."""
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM mailings").fetchone()[0])


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a real filesystem that fills up."""
    yield from _tmpfs(tmp_path / "small", "2m")


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, to be remounted read-only by the test."""
    yield from _tmpfs(tmp_path / "fs", "16m")


def _tmpfs(where: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the full-disk and read-only cases)")
    where.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where))
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def remount_read_only(where: Path) -> None:
    _mount("-o", "remount,ro", str(where))


def fill(directory: Path, leave: int) -> None:
    """Fill the filesystem of `directory` until only `leave` bytes are free."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(100_000):  # bounded: 2 MiB in 4 KiB steps needs ~500
            info = os.statvfs(directory)
            free = info.f_bavail * info.f_frsize
            if free <= leave:
                return
            try:
                os.write(fd, b"x" * min(4096, free - leave))
            except OSError:
                return
    finally:
        os.close(fd)


# ---- item 3: a database that cannot be opened -------------------------------------------------


def _not_sqlite(tmp: Path) -> Path:
    path = tmp / "notes.db"
    path.write_text("these are my notes, not a database\n" * 200)
    return path


def _random(tmp: Path) -> Path:
    path = tmp / "random.db"
    path.write_bytes(os.urandom(8192))
    return path


def _truncated(tmp: Path) -> Path:
    good = make_db(tmp / "good.db")
    conn = sqlite3.connect(good, isolation_level=None)  # content, checkpointed into the file
    try:
        conn.execute("CREATE TABLE padding (x TEXT)")
        conn.executemany("INSERT INTO padding VALUES (?)", [("x" * 500,)] * 200)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    data = good.read_bytes()
    path = tmp / "truncated.db"
    path.write_bytes(data[: len(data) // 3])
    return path


def _directory(tmp: Path) -> Path:
    path = tmp / "dir.db"
    path.mkdir()
    return path


def _fifo(tmp: Path) -> Path:
    path = tmp / "fifo.db"
    os.mkfifo(path)
    return path


def _device(tmp: Path) -> Path:
    return Path("/dev/null")


def _symlink_to_device(tmp: Path) -> Path:
    path = tmp / "zero.db"
    path.symlink_to("/dev/zero")
    return path


def _dangling_symlink(tmp: Path) -> Path:
    path = tmp / "dangling.db"
    path.symlink_to(tmp / "nowhere" / "x.db")
    return path


def _wal_blocked(tmp: Path) -> Path:
    path = make_db(tmp / "walblocked.db")
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    Path(f"{path}-wal").mkdir()  # SQLite cannot create its -wal file
    return path


BAD_DATABASES = {
    "not-sqlite": (_not_sqlite, "not a SQLite database"),
    "random-bytes": (_random, "not a SQLite database"),
    "truncated": (_truncated, "damaged"),
    "directory": (_directory, "is a directory"),
    "fifo": (_fifo, "FIFO"),
    "dev-null": (_device, "character device"),
    "symlink-to-dev-zero": (_symlink_to_device, "character device"),
    "dangling-symlink": (_dangling_symlink, "does not exist"),
    "wal-cannot-be-created": (_wal_blocked, "-wal"),
}


@pytest.mark.parametrize("kind", list(BAD_DATABASES))
@pytest.mark.parametrize("command", [["status"], ["run", "--until-idle"]])
def test_a_database_that_cannot_be_opened_is_one_line_and_exit_2(tmp_path: Path, kind: str, command: list[str]) -> None:
    make, reason = BAD_DATABASES[kind]
    db = make(tmp_path)
    result = run_cli("--db", str(db), *command)
    assert_one_line(result, str(db), reason)


def test_store_open_failure_leaves_no_thread_running(tmp_path: Path) -> None:
    """Store.open used to leave aiosqlite's worker thread running when a PRAGMA failed, so the
    process never exited. In-process: after the refusal no new non-daemon thread is alive."""
    db = _not_sqlite(tmp_path)
    before = set(threading.enumerate())
    with pytest.raises(UserError, match="not a SQLite database"):
        asyncio.run(Store.open(db))
    leftover = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    assert leftover == []


# ---- item 21: --db in a directory that does not exist -----------------------------------------


def test_explicit_db_in_a_missing_directory_is_refused_and_nothing_is_created(tmp_path: Path) -> None:
    db = tmp_path / "typo" / "deeper" / "m.db"
    assert_one_line(run_cli("--db", str(db), "status"), "--db", str(db.parent), "does not exist")
    assert_one_line(run_cli("status", env={"MAILTOWER_DB": str(db)}), "MAILTOWER_DB", "does not exist")
    assert not (tmp_path / "typo").exists()


def test_the_default_data_directory_is_still_created(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path / "data"), "HOME": str(tmp_path)}
    result = run_cli("status", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "mailtower" / "mailtower.db").is_file()


# ---- item 4: one database, one sender, however it is named -----------------------------------


def _other_names(db: Path) -> dict[str, Path]:
    symlink = db.parent / "via-symlink.db"
    symlink.symlink_to(db)
    linked_dir = db.parent.parent / f"{db.parent.name}-dirlink"
    linked_dir.symlink_to(db.parent, target_is_directory=True)
    return {
        "symlink": symlink,
        "symlinked directory": linked_dir / db.name,
        "dotted path": db.parent / "." / ".." / db.parent.name / db.name,
    }


def test_second_lease_is_refused_under_every_name_of_the_database(tmp_path: Path) -> None:
    db = make_db(tmp_path / "m.db")
    first = SenderLease(db)
    assert first.acquire("first sender")
    try:
        for name, other in _other_names(db).items():
            second = SenderLease(other)
            assert not second.acquire("second sender"), f"a second sender got the lease through the {name} {other}"
            holder = second.holder()
            assert holder is not None and holder.what == "first sender", name
    finally:
        first.release()
    # Released: any name can take it now.
    again = SenderLease(tmp_path / "via-symlink.db")
    assert again.acquire()
    again.release()


@pytest.mark.parametrize("where", ["same directory", "other directory"])
def test_a_database_with_a_second_hard_link_is_refused(tmp_path: Path, sink: Sink, where: str) -> None:
    """Two hard links in two directories could not share any lock file (and SQLite would keep a
    journal per name): a database with more than one hard link is refused by every command, so
    two senders can never run on it, whatever names they are given."""
    db = make_db(tmp_path / "m.db")
    other_dir = tmp_path if where == "same directory" else tmp_path / "elsewhere"
    other_dir.mkdir(exist_ok=True)
    hardlink = other_dir / "hardlink.db"
    os.link(db, hardlink)
    before = db.read_bytes()
    env = {"MAILTOWER_SMTP_HOST": "127.0.0.1", "MAILTOWER_SMTP_PORT": str(sink.port)}
    for name in (db, hardlink):
        with pytest.raises(UserError, match="hard links"):
            SenderLease(name).acquire()
        for command in (["run", "--until-idle"], ["status"]):
            assert_one_line(run_cli("--db", str(name), *command, env=env), str(name), "2 hard links")
    assert db.read_bytes() == before
    hardlink.unlink()
    lease = SenderLease(db)
    assert lease.acquire()  # one name again: usable
    lease.release()


def test_a_lease_file_removed_before_it_was_locked_is_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that cannot open its database removes the lease file it made (no litter beside
    somebody else's file). A process that opened that file just before would lock a file nobody
    else can find; acquire sees it is no longer the named one and locks the file now named."""
    db = make_db(tmp_path / "m.db")
    real_open = lease_module._open_lease_file  # noqa: SLF001
    opened: list[int] = []

    def removed_before_locking(path: Path) -> tuple[int, bool]:
        fd, created = real_open(path)
        if not opened:
            path.unlink()  # what release(discard=True) of another process does in this gap
        opened.append(fd)
        return fd, created

    monkeypatch.setattr(lease_module, "_open_lease_file", removed_before_locking)
    first = SenderLease(db)
    assert first.acquire("first sender")
    try:
        assert len(opened) == 2  # the orphan was let go, the file now named was taken
        assert first.path is not None and first.path.exists()
        second = SenderLease(db)
        assert not second.acquire("second sender")
        holder = second.holder()
        assert holder is not None and holder.what == "first sender"
    finally:
        first.release()


def test_a_discarded_lease_removes_only_a_file_it_made(tmp_path: Path) -> None:
    db = make_db(tmp_path / "m.db")
    lease = SenderLease(db)
    assert lease.acquire()
    path = lease.path
    assert path is not None
    lease.release(discard=True)
    assert not path.exists()
    path.write_bytes(b"")  # a lease file that was there before (an earlier run's)
    lease = SenderLease(db)
    assert lease.acquire()
    lease.release(discard=True)
    assert path.exists()


def test_relative_name_shares_the_lease(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = make_db(tmp_path / "m.db")
    monkeypatch.chdir(tmp_path)
    first = SenderLease(Path("./m.db"))
    assert first.acquire()
    try:
        assert not SenderLease(db).acquire()
        assert SenderLease(db).holder() is not None
    finally:
        first.release()
    assert SenderLease(db).holder() is None


@pytest.mark.parametrize("name", ["symlink", "relative"])
def test_mailtower_run_refuses_while_another_name_holds_the_lease(tmp_path: Path, sink: Sink, name: str) -> None:
    db = make_db(tmp_path / "m.db")
    lease = SenderLease(db)
    assert lease.acquire("the first sender")
    try:
        if name == "relative":
            other, cwd = "./m.db", tmp_path
        else:
            other, cwd = str(_other_names(db)[name]), None
        env = {"MAILTOWER_SMTP_HOST": "127.0.0.1", "MAILTOWER_SMTP_PORT": str(sink.port)}
        result = run_cli("--db", other, "run", "--until-idle", env=env, cwd=cwd)
        assert_one_line(result, "another sender is running", "the first sender")
    finally:
        lease.release()


def test_two_senders_through_a_symlink_send_each_message_once(tmp_path: Path, sink: Sink, body: Path) -> None:
    """The reported failure: two `mailtower run` on one database through two names sent
    duplicates. Started together, one of them is refused and every recipient gets one message."""
    db = tmp_path / "m.db"
    cli = Cli(db, sink.port, MAILTOWER_SMTP_CONNECTIONS="2")
    csv_path = write_csv(tmp_path / "r.csv", recipients(300, code="c"))
    cli.ok("new", "--name", "n", "--subject", "s", "--from", "a@example.com", "--text", str(body),
           "--recipients", str(csv_path), "--now")
    link = tmp_path / "link.db"
    link.symlink_to(db)
    # 3 s of sending: the second process, however late it starts, finds the first one at work.
    env = {"MAILTOWER_SMTP_HOST": "127.0.0.1", "MAILTOWER_SMTP_PORT": str(sink.port), "MAILTOWER_RATE": "100"}
    base = {**os.environ, "MAILTOWER_CONFIG": os.devnull, **env}
    procs = [
        subprocess.Popen([sys.executable, "-m", "mailtower.tui.cli", "--db", str(name), "run", "--until-idle"],
                         env=base, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        for name in (db, link)
    ]
    codes = []
    for proc in procs:
        try:
            proc.wait(timeout=TIMEOUT)
        finally:
            proc.kill()
        codes.append(proc.returncode)
    assert sorted(codes) == [0, 2], [p.stderr.read() if p.stderr else "" for p in procs]
    received = sink.received()
    assert len(received) == 300 and max(received.values()) == 1


# ---- item 17: bad input is one line and exit 2, and changes nothing ---------------------------


@pytest.fixture
def mailing(tmp_path: Path, body: Path) -> tuple[Cli, int]:
    cli = Cli(tmp_path / "m.db")
    csv_path = write_csv(tmp_path / "r.csv", recipients(3, code="c"))
    out = cli.ok("new", "--name", "n", "--subject", "s", "--from", "a@example.com", "--text", str(body),
                 "--recipients", str(csv_path))
    return cli, int(out)


@pytest.mark.parametrize("command", ["send-now", "unschedule", "stop", "restart", "delete", "remaining"])
@pytest.mark.parametrize("value", ["99999999999999999999999", "9223372036854775808", "-1", "0", "1_0", "\u0661", "1e3"])
def test_ids_outside_sqlites_range_are_one_line(mailing: tuple[Cli, int], command: str, value: str) -> None:
    cli, _ = mailing
    code, _, err = cli(command, "--", value) if value.startswith("-") else cli(command, value)
    assert_one_line((code, err), "not a mailing id")


def test_the_largest_id_is_accepted_and_simply_not_found(mailing: tuple[Cli, int]) -> None:
    cli, _ = mailing
    code, _, err = cli("send-now", "9223372036854775807")
    assert_one_line((code, err), "no mailing with id 9223372036854775807")


@pytest.mark.parametrize(
    ("at", "tz"),
    [("9999-12-31 23:59", "Etc/GMT+12"), ("9999-12-31 23:59", "Pacific/Kiritimati"), ("0001-01-01 00:00", "Etc/GMT-14"),
     ("9999-12-31 12:00", "UTC")],
)
def test_schedules_at_the_edge_of_time_are_one_line(mailing: tuple[Cli, int], at: str, tz: str) -> None:
    cli, mailing_id = mailing
    code, _, err = cli("schedule", str(mailing_id), "--at", at, "--tz", tz)
    assert_one_line((code, err), "outside the range")
    assert f"{at} in {tz} is outside" in err  # echoed as typed: strftime wrote year 1 as "1"
    assert "draft" in cli.ok("status")


@pytest.mark.parametrize("at", ["0001-01-03 12:00", "0999-06-01 10:00"])
def test_a_past_schedule_before_the_year_1000_is_echoed_as_typed(mailing: tuple[Cli, int], at: str) -> None:
    cli, mailing_id = mailing
    for command in (["schedule", str(mailing_id), "--at", at, "--tz", "UTC"],
                    ["schedule", str(mailing_id), "--at", at, "--local-time", "--tz", "UTC"]):
        code, _, err = cli(*command)
        assert code == 2 and err.startswith(f"mailtower: {at} ") and "in the past" in err, err
    assert "draft" in cli.ok("status")


@pytest.mark.parametrize(
    ("at", "tz", "reason"),
    [("9999-12-31 23:59", "Etc/GMT+12", "outside the range"), ("2001-01-01 10:00", "UTC", "in the past"),
     ("2999-02-30 10:00", "UTC", "no such date")],
)
def test_new_with_a_bad_schedule_leaves_nothing_behind(tmp_path: Path, body: Path, at: str, tz: str, reason: str) -> None:
    cli = Cli(tmp_path / "m.db")
    csv_path = write_csv(tmp_path / "r.csv", recipients(3, code="c"))
    code, out, err = cli("new", "--name", "n", "--subject", "s", "--from", "a@example.com", "--text", str(body),
                         "--recipients", str(csv_path), "--at", at, "--tz", tz)
    assert_one_line((code, err), reason)
    assert out == ""
    assert mailing_count(tmp_path / "m.db") == 0


UNDECODABLE = os.fsdecode(b"caf\xe9")  # Latin-1 bytes in a UTF-8 world: a lone surrogate in argv


@pytest.mark.parametrize("flag", ["--name", "--subject", "--from", "--recipients", "--text", "--tz"])
def test_invalid_utf8_in_an_argument_is_one_line_and_changes_nothing(tmp_path: Path, body: Path, flag: str) -> None:
    db = tmp_path / "m.db"
    csv_path = write_csv(tmp_path / "r.csv", recipients(3, code="c"))
    args = {"--name": "n", "--subject": "s", "--from": "a@example.com", "--text": str(body),
            "--recipients": str(csv_path), "--tz": "UTC"}
    args[flag] = UNDECODABLE
    argv = ["new", *[item for pair in args.items() for item in pair], "--at", "2999-01-01 10:00"]
    code, _, err = Cli(db)(*argv)
    assert_one_line((code, err), flag, "caf\\xe9", "not valid UTF-8")
    assert not db.exists()


def test_invalid_utf8_in_argv_of_a_real_process(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mailtower.tui.cli", "--db", str(tmp_path / "m.db"), "new", "--name", b"caf\xe9",
         "--subject", "s", "--from", "a@example.com", "--recipients", "r.csv"],
        env={**os.environ, "MAILTOWER_CONFIG": os.devnull, "LC_ALL": "C.UTF-8"},
        capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert_one_line(result, "--name", "not valid UTF-8")
    assert not (tmp_path / "m.db").exists()


def test_invalid_utf8_in_mailtower_db_is_one_line(tmp_path: Path) -> None:
    code, _, err = Cli(tmp_path / UNDECODABLE)("status")
    assert_one_line((code, err), "MAILTOWER_DB", "not valid UTF-8")


# ---- item 17: full disk, read-only storage ------------------------------------------------------


def big_csv(path: Path, count: int) -> Path:
    return write_csv(path, recipients(count, domain="a-rather-long-domain-name-to-take-space.example.com", code="c"))


def test_full_disk_during_new_is_one_line_and_leaves_nothing(small_fs: Path, tmp_path: Path, body: Path) -> None:
    db = small_fs / "m.db"
    csv_path = big_csv(tmp_path / "big.csv", 40_000)  # ~4 MiB of database: more than the 2 MiB there is
    result = run_cli("--db", str(db), "new", "--name", "n", "--subject", "s", "--from", "a@example.com",
                     "--text", str(body), "--recipients", str(csv_path))
    assert_one_line(result, str(db), "disk is full")
    assert mailing_count(db) == 0


def test_full_disk_during_run_is_one_line_and_the_process_ends(small_fs: Path, tmp_path: Path, body: Path, sink: Sink) -> None:
    db = small_fs / "m.db"
    cli = Cli(db, sink.port)
    csv_path = big_csv(tmp_path / "r.csv", 3000)
    cli.ok("new", "--name", "n", "--subject", "s", "--from", "a@example.com", "--text", str(body),
           "--recipients", str(csv_path), "--now")
    lease = SenderLease(db)
    assert lease.acquire()  # the lease file exists before the disk fills (as after any earlier run)
    lease.release()
    fill(small_fs, leave=64 * 1024)
    env = {"MAILTOWER_SMTP_HOST": "127.0.0.1", "MAILTOWER_SMTP_PORT": str(sink.port)}
    result = run_cli("--db", str(db), "run", "--until-idle", env=env)
    assert_one_line(result, str(db), "disk is full")


def test_read_only_filesystem_is_one_line(fs: Path, tmp_path: Path, body: Path) -> None:
    db = make_db(fs / "m.db")
    csv_path = write_csv(tmp_path / "r.csv", recipients(3, code="c"))
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    remount_read_only(fs)
    new = ["new", "--name", "n", "--subject", "s", "--from", "a@example.com", "--text", str(body),
           "--recipients", str(csv_path)]
    assert_one_line(run_cli("--db", str(db), *new), str(db), "cannot write in")
    assert_one_line(run_cli("--db", str(db), "status"), str(db), "cannot write in")
    assert_one_line(run_cli("--db", str(fs / "new.db"), "limits"), str(fs / "new.db"), "Read-only file system")
    assert_one_line(run_cli("--db", str(db), "run", "--until-idle"), "lease", "Read-only file system")


def test_read_only_database_file_is_one_line(tmp_path: Path, body: Path) -> None:
    """A database file that cannot be written (a read-only bind mount of the file: permission
    bits do not stop root) in a writable directory: reading works, `new` is one line."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    db = make_db(tmp_path / "m.db")
    try:
        _mount("--bind", str(db), str(db))
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot bind-mount here: {exc}")
    try:
        _mount("-o", "remount,ro,bind", str(db))
        csv_path = write_csv(tmp_path / "r.csv", recipients(3, code="c"))
        result = run_cli("--db", str(db), "new", "--name", "n", "--subject", "s", "--from", "a@example.com",
                         "--text", str(body), "--recipients", str(csv_path))
        assert_one_line(result, str(db), "read-only")
    finally:
        subprocess.run(["umount", "-l", str(db)], capture_output=True, timeout=30)
    assert mailing_count(db) == 0


# ---- item 17: what nobody expected --------------------------------------------------------------


def test_an_unexpected_error_is_one_line_naming_a_log_with_the_traceback(
    mailing: tuple[Cli, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value no mailtower writes (a database edited by hand) makes `status` fail in a way
    nobody planned for: one line with the distinct exit status, the traceback in the log."""
    cli, mailing_id = mailing
    with sqlite3.connect(cli.db) as conn:
        conn.execute("UPDATE mailings SET fields = '[bogus' WHERE id = ?", (mailing_id,))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    code, _, err = cli("status")
    line = assert_one_line((code, err), "internal error", "the details are in", code=EXIT_INTERNAL_ERROR)
    log = Path(line.rsplit("the details are in ", 1)[1])
    assert log.is_relative_to(tmp_path / "state")
    text = log.read_text()
    assert "Traceback" in text and "JSONDecodeError" in text and "'status'" in text
