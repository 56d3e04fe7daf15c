"""Files a person names, through the real `mailtower` command on real SQLite files (issue 10).

Outputs (--rejects, remaining --output) are checked before anything is read or changed, never
replace the database, its companions or the command's own input, never replace an existing file
without --force, and appear only when the whole command succeeded. Inputs (bodies, recipient
files) are read once and with a bound, whatever they are: a pipe, `-`, a FIFO with no writer, a
device that never ends. Exports neutralise spreadsheet formulas and import reads them back.
"""

from __future__ import annotations

import csv
import hashlib
import os
import resource
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mailtower.core.errors import ImportRejected, UserError
from mailtower.core.exports import export_remaining_csv
from mailtower.core.sink import Sink
from mailtower.core.store import Store
from tests.helpers import Cli, wait_until

# SQLite only (issue 15): about files a person names beside a SQLite database file (companions, links, devices); the PostgreSQL store has tests of its own (test_postgres_*.py).
pytestmark = pytest.mark.sqlite_only

GOOD_AND_BAD = "email,name\nann@example.com,Ann\nnot-an-address,Bob\ncid@example.com,Cid\n"


@pytest.fixture
def plain(db: Path) -> Cli:
    """The CLI on `db` without an SMTP server (none of these commands sends)."""
    return Cli(db)


@pytest.fixture
def people(tmp_path: Path) -> Path:
    path = tmp_path / "people.csv"
    path.write_text(GOOD_AND_BAD, encoding="utf-8")
    return path


@pytest.fixture
def text(tmp_path: Path) -> Path:
    path = tmp_path / "body.txt"
    path.write_text("Hello {{ name }}\n", encoding="utf-8")
    return path


def new_args(text: Path, recipients: Path | str, *extra: str) -> list[str]:
    return ["new", "--name", "n", "--subject", "s", "--from", "news@example.org", "--text", str(text),
            "--recipients", str(recipients), *extra]


def fingerprint(db: Path) -> tuple[int, str]:
    """(mailings, hash of every row): what a refused command must leave exactly as it was."""
    with sqlite3.connect(db) as conn:
        count = conn.execute("SELECT count(*) FROM mailings").fetchone()[0]
        dump = hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
    return count, dump


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def mailing(plain: Cli, text: Path, people: Path, db: Path) -> int:
    """A draft with two recipients in `db`."""
    return int(plain.ok(*new_args(text, people)).strip())


def subprocess_cli(db: Path, *args: str, timeout: float = 20.0, memory: int = 2 << 30,
                   **kw: object) -> subprocess.CompletedProcess[bytes]:
    """`mailtower ARGS` in a child with a memory ceiling, so a regression fails instead of
    sending the machine's OOM killer after everything else."""
    env = {**os.environ, "MAILTOWER_DB": str(db), "MAILTOWER_CONFIG": os.devnull}

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return subprocess.run([sys.executable, "-m", "mailtower.tui.cli", *args], env=env, capture_output=True,
                          timeout=timeout, preexec_fn=limit_memory, **kw)  # type: ignore[call-overload]


# --- --rejects never replaces what it must not -------------------------------------------------------


def _aliases(tmp_path: Path, db: Path, people: Path, alias: str = "") -> dict[str, Path]:
    link = tmp_path / "innocent.csv"
    link.symlink_to(db)
    hard = tmp_path / "hard.csv"
    if alias == "hard link to db":  # only then: a database with a second hard link is refused outright
        os.link(db, hard)
    sub = tmp_path / "sub"
    sub.mkdir()
    return {
        "db": db,
        "db-wal": Path(f"{db}-wal"),
        "db-shm": Path(f"{db}-shm"),
        "db.lease": Path(f"{db}.lease"),
        "symlink to db": link,
        "hard link to db": hard,
        "relative path to db": Path(os.path.relpath(db, os.getcwd())),
        "dotted path to db": sub / ".." / db.name,
        "input file": people,
        "input via symlink": _symlink(tmp_path / "list-link.csv", people),
    }


def _symlink(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


ALIASES = ["db", "db-wal", "db-shm", "db.lease", "symlink to db", "hard link to db", "relative path to db",
           "dotted path to db", "input file", "input via symlink"]


@pytest.mark.parametrize("command", ["new", "import"])
@pytest.mark.parametrize("alias", ALIASES)
def test_rejects_refuses_the_database_and_the_input(
    plain: Cli, mailing: int, tmp_path: Path, db: Path, text: Path, people: Path, command: str, alias: str
) -> None:
    target = _aliases(tmp_path, db, people, alias)[alias]
    before = fingerprint(db)
    people_bytes = people.read_bytes()
    target_bytes = target.read_bytes() if target.exists() else None
    args = new_args(text, people) if command == "new" else ["import", str(mailing), str(people)]
    for force in ([], ["--force"]):
        code, out, err = plain(*args, "--rejects", str(target), *force)
        assert code == 2 and out == ""
        if alias == "hard link to db":
            assert "hard links" in one_line(err)  # refused before anything is opened
        else:
            assert "--rejects" in one_line(err) and "will not write over" in err
        assert fingerprint(db) == before
        assert people.read_bytes() == people_bytes
        if target_bytes is not None and alias not in ("db-wal", "db-shm"):
            assert target.read_bytes() == target_bytes


def test_rejects_refuses_the_file_standard_input_comes_from(db: Path, tmp_path: Path, people: Path, text: Path) -> None:
    Cli(db).ok(*new_args(text, people))
    before = fingerprint(db)
    with people.open("rb") as stdin:
        done = subprocess_cli(db, "import", "1", "-", "--rejects", str(people), "--force", stdin=stdin)
    assert done.returncode == 2, done.stderr
    assert b"will not write over" in done.stderr
    assert people.read_text(encoding="utf-8") == GOOD_AND_BAD
    assert fingerprint(db) == before


@pytest.mark.parametrize("command", ["new", "import"])
def test_existing_rejects_file_needs_force_and_is_replaced_atomically(
    plain: Cli, mailing: int, tmp_path: Path, db: Path, text: Path, people: Path, command: str
) -> None:
    target = tmp_path / "rejects.csv"
    target.write_text("precious\n")
    before = fingerprint(db)
    if command == "import":  # new addresses (a file that adds nobody is refused on its own)
        people.write_text(GOOD_AND_BAD.replace("@example.com", "@example.net"), encoding="utf-8")
    args = new_args(text, people) if command == "new" else ["import", str(mailing), str(people)]
    code, out, err = plain(*args, "--rejects", str(target))
    assert code == 2 and "already exists" in one_line(err) and "--force" in err
    assert target.read_text() == "precious\n" and fingerprint(db) == before

    inode = target.stat().st_ino
    code, out, err = plain(*args, "--rejects", str(target), "--force")
    assert code == 0, err
    with target.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0][:2] == ["line", "reason"] and rows[1][0] == "3" and "not-an-address" in rows[1][1]
    assert target.stat().st_ino != inode  # a new file renamed over the old one, not rewritten in place
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("where", ["directory", "missing directory", "existing directory with slash"])
@pytest.mark.parametrize("command", ["new", "import"])
def test_bad_rejects_location_is_one_line_and_changes_nothing(
    plain: Cli, mailing: int, tmp_path: Path, db: Path, text: Path, people: Path, command: str, where: str
) -> None:
    target = {
        "directory": str(tmp_path),
        "missing directory": str(tmp_path / "nonexistent" / "dir" / "r.csv"),
        "existing directory with slash": str(tmp_path) + "/",
    }[where]
    before = fingerprint(db)
    args = new_args(text, people) if command == "new" else ["import", str(mailing), str(people)]
    code, out, err = plain(*args, "--rejects", target)
    assert code == 2 and out == ""
    line = one_line(err)
    assert "--rejects" in line and ("directory" in line or "does not exist" in line)
    assert fingerprint(db) == before
    assert not (tmp_path / "nonexistent").exists()


def test_rejects_file_appears_only_when_the_import_succeeded(
    plain: Cli, mailing: int, tmp_path: Path, db: Path, text: Path
) -> None:
    broken = tmp_path / "broken.csv"
    broken.write_bytes(b"email\nnot-an-address\nok@example.com\n\xff\xfe@example.com\n")
    target = tmp_path / "rejects.csv"
    before = fingerprint(db)
    for args in (new_args(text, broken), ["import", str(mailing), str(broken)]):
        code, out, err = plain(*args, "--rejects", str(target))
        assert code == 2 and "UTF-8" in err
        assert not target.exists()
        assert fingerprint(db) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_list_of_nothing_but_rejected_rows_still_gets_its_rejects_file(
    plain: Cli, mailing: int, tmp_path: Path, db: Path, text: Path
) -> None:
    """Refused for having no valid row, the import still writes --rejects: stderr names only the
    first 50 rows, the file is the one full account of why (and of a list read from a pipe)."""
    bad = tmp_path / "bad.csv"
    bad.write_text("email,name\n" + "".join(f"person{i}.example.com,P{i}\n" for i in range(60)), encoding="utf-8")
    before = fingerprint(db)
    for number, args in enumerate((new_args(text, bad), ["import", str(mailing), str(bad)])):
        target = tmp_path / f"rejects{number}.csv"
        code, out, err = plain(*args, "--rejects", str(target))
        assert code == 2 and out == ""
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"mailtower: {bad}: no valid recipient (60 rejected); ")
        assert last.endswith(f"; the rejected rows are in {target}")
        with target.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["line", "reason", "email", "name"] and len(rows) == 61
        assert rows[-1][0] == "61" and rows[-1][2:] == ["person59.example.com", "P59"]
        assert fingerprint(db) == before
    code, out, err = plain(*new_args(text, bad), "--rejects", str(tmp_path / "rejects0.csv"))
    assert code == 2 and "already exists" in one_line(err)  # not replaced without --force, as ever
    header_only = tmp_path / "header.csv"
    header_only.write_text("email,name\n", encoding="utf-8")
    code, out, err = plain(*new_args(text, header_only), "--rejects", str(tmp_path / "none.csv"))
    assert code == 2 and not (tmp_path / "none.csv").exists()  # nothing rejected: nothing to account for
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_new_that_fails_after_the_import_leaves_no_rejects_file(plain: Cli, tmp_path: Path, db: Path, text: Path,
                                                              people: Path) -> None:
    target = tmp_path / "rejects.csv"
    code, out, err = plain(*new_args(text, people), "--rejects", str(target), "--at", "2001-01-01 10:00",
                           "--tz", "Europe/Berlin")
    assert code == 2 and "past" in err
    assert not target.exists()
    assert not db.exists()  # the database this refused `new` made is removed again


# --- bodies: bounded, read once -----------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--text", "--html"])
def test_endless_body_is_refused_with_one_line(tmp_path: Path, db: Path, people: Path, text: Path, flag: str) -> None:
    Cli(db).ok("limits")  # makes the database (status would say there is none)
    before = fingerprint(db)
    args = ["new", "--name", "n", "--subject", "s", "--from", "news@example.org", flag, "/dev/zero",
            "--recipients", str(people)]
    done = subprocess_cli(db, *args)
    assert done.returncode == 2, done.stderr[-500:]
    assert flag in one_line(done.stderr.decode()) and "limit" in done.stderr.decode()
    assert fingerprint(db) == before


def test_body_from_a_pipe_is_read_once(plain: Cli, db: Path, people: Path) -> None:
    with feeding(b"Hello from a pipe {{ name }}\n") as path:
        code, out, err = plain("new", "--name", "n", "--subject", "s", "--from", "news@example.org",
                               "--text", path, "--recipients", str(people))
    assert code == 0, err
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT text_body FROM mailings").fetchone()[0] == "Hello from a pipe {{ name }}\n"


def test_body_that_is_a_directory_is_one_line(plain: Cli, tmp_path: Path, people: Path) -> None:
    code, out, err = plain("new", "--name", "n", "--subject", "s", "--from", "news@example.org",
                           "--text", str(tmp_path), "--recipients", str(people))
    assert code == 2 and "directory" in one_line(err)


# --- recipient files: pipes, -, FIFOs, devices -------------------------------------------------------------


class feeding:
    """A pipe whose write end a thread fills with `data` (as `<(cat file)` would); its path is /dev/fd/N."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __enter__(self) -> str:
        self.read_fd, write_fd = os.pipe()

        def write() -> None:
            try:
                with os.fdopen(write_fd, "wb") as out:
                    out.write(self.data)
            except BrokenPipeError:
                pass  # the reader stopped early: that is what some tests check

        self.thread = threading.Thread(target=write, daemon=True)
        self.thread.start()
        return f"/dev/fd/{self.read_fd}"

    def __exit__(self, *exc: object) -> None:
        os.close(self.read_fd)
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


def emails(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [e for (e,) in conn.execute("SELECT email FROM recipients ORDER BY id")]


def test_new_and_import_from_a_pipe(plain: Cli, db: Path, text: Path) -> None:
    with feeding(GOOD_AND_BAD.encode()) as path:
        code, out, err = plain(*new_args(text, path))
    assert code == 0, err
    mailing_id = out.strip()
    with feeding(b"email,name\ndee@example.com,Dee\n") as path:
        code, out, err = plain("import", mailing_id, path)
    assert code == 0, err
    assert emails(db) == ["ann@example.com", "cid@example.com", "dee@example.com"]


def test_import_from_standard_input(db: Path, tmp_path: Path, text: Path, people: Path) -> None:
    Cli(db).ok(*new_args(text, people))
    done = subprocess_cli(db, "import", "1", "-", input=b"email\neve@example.com\nfay@example.com\n")
    assert done.returncode == 0, done.stderr
    assert b"imported 2 recipients" in done.stderr
    done = subprocess_cli(db, "import", "1", "/dev/stdin", input=b"email\ngus@example.com\n")
    assert done.returncode == 0, done.stderr
    assert emails(db)[-3:] == ["eve@example.com", "fay@example.com", "gus@example.com"]


def test_fifo_with_no_writer_does_not_hang(db: Path, tmp_path: Path, text: Path, people: Path) -> None:
    Cli(db).ok(*new_args(text, people))
    before = fingerprint(db)
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    for args in (["import", "1", str(fifo)], new_args(text, fifo)):
        try:
            done = subprocess_cli(db, *args, timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"mailtower {' '.join(args)} still waits on a FIFO with no writer after 15 s")
        assert done.returncode == 2
        assert "nobody opened this named pipe to write within 5 s" in one_line(done.stderr.decode())
    assert fingerprint(db) == before


def test_a_fifo_read_before_its_writer_opens_it_gets_what_the_writer_writes(tmp_path: Path) -> None:
    """The reader opens first (the writer's non-blocking open succeeds only once a reader has the
    FIFO open), the writer after it: the old reader had returned empty by then."""
    from mailtower.core.files import read_bytes_bounded

    fifo = tmp_path / "ordered.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(read_bytes_bounded(fifo, limit=1 << 20, what="--text")),
                              daemon=True)
    reader.start()
    deadline = time.monotonic() + 10
    fd = None
    while fd is None and reader.is_alive() and time.monotonic() < deadline:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader has it open yet
            time.sleep(0.01)
    if fd is not None:
        os.write(fd, b"after the reader\n")
        os.close(fd)
    reader.join(timeout=30)
    assert got == [b"after the reader\n"]


@pytest.mark.parametrize("flag", ["--text", "--recipients"])
def test_a_fifo_whose_writer_comes_a_moment_later_is_read_whole(db: Path, tmp_path: Path, text: Path, people: Path,
                                                               flag: str) -> None:
    """A FIFO opened before its writer read as empty at once: `--text fifo --html page.html` made a
    mailing with an empty text part (exit 0), and the writer that came a second later blocked for
    ever. The writer is waited for (WRITER_WAIT), and what it writes is read."""
    fifo = tmp_path / "late.fifo"
    os.mkfifo(fifo)
    html = tmp_path / "page.html"
    html.write_text("<p>Hello</p>\n", encoding="utf-8")
    content = "Written late\n" if flag == "--text" else people.read_text(encoding="utf-8")

    def late_writer() -> None:
        time.sleep(1.0)  # the reader is waiting by now: this is what arriving late means
        with open(fifo, "w", encoding="utf-8") as handle:
            handle.write(content)

    writer = threading.Thread(target=late_writer, daemon=True)
    writer.start()
    try:
        args = new_args(text, fifo if flag == "--recipients" else people, "--force")
        if flag == "--text":
            args[args.index("--text") + 1] = str(fifo)
            args += ["--html", str(html)]
        done = subprocess_cli(db, *args, timeout=30)
    finally:
        writer.join(timeout=30)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(db) as conn:
        body, total = conn.execute("SELECT text_body, total FROM mailings").fetchone()
    if flag == "--text":
        assert body == "Written late\n"
    else:
        assert total == len(emails(db)) > 0


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_recipient_device_ends_with_one_line(db: Path, text: Path, people: Path, device: str) -> None:
    Cli(db).ok(*new_args(text, people))
    before = fingerprint(db)
    for args in (["import", "1", device], new_args(text, device)):
        done = subprocess_cli(db, *args, timeout=30, memory=1 << 30)
        assert done.returncode == 2, done.stderr[-500:]
        assert device in one_line(done.stderr.decode())
    assert fingerprint(db) == before


def test_recipient_directory_is_one_line(plain: Cli, mailing: int, tmp_path: Path, db: Path) -> None:
    before = fingerprint(db)
    code, out, err = plain("import", str(mailing), str(tmp_path))
    assert code == 2 and "directory" in one_line(err).lower()
    assert fingerprint(db) == before


class endless:
    """A pipe a thread keeps writing `chunk` into until the reader closes it (or a bound)."""

    def __init__(self, head: bytes, chunk: bytes) -> None:
        self.head, self.chunk = head, chunk

    def __enter__(self) -> str:
        self.read_fd, write_fd = os.pipe()

        def write() -> None:
            try:
                with os.fdopen(write_fd, "wb") as out:
                    out.write(self.head)
                    for _ in range(1_000_000):  # bounded: ~64 GiB at most, the reader stops far earlier
                        out.write(self.chunk)
            except BrokenPipeError:
                pass  # the reader gave up, as it should

        self.thread = threading.Thread(target=write, daemon=True)
        self.thread.start()
        return f"/dev/fd/{self.read_fd}"

    def __exit__(self, *exc: object) -> None:
        os.close(self.read_fd)
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


@pytest.mark.parametrize("head", [b"", b"email\n"])
def test_endless_blank_lines_end_with_a_clear_refusal(head: bytes) -> None:
    """`yes ''` as a recipient list: the line and size bounds end it (small bounds, same code)."""
    from mailtower.core.recipients_csv import open_recipients

    with endless(head, b"\n" * 65536) as path:
        with pytest.raises(ImportRejected, match="lines"):
            with open_recipients(path, max_lines=200_000) as source:
                for _ in source.rows(on_reject=lambda r: None):
                    pass


def test_an_endless_stream_without_an_email_column_is_refused_at_its_header() -> None:
    """Judged when the header has arrived, not after the line bound's worth of rows was copied."""
    from mailtower.core.recipients_csv import open_recipients

    with endless(b"name,code\n", b"Ann,1\n" * 10000) as path:
        with pytest.raises(ImportRejected, match="line 1: the header has no 'email' column"):
            open_recipients(path, max_lines=5_000_000)


def test_endless_stream_is_bounded_in_bytes() -> None:
    from mailtower.core.recipients_csv import open_recipients

    with endless(b"email,name\n", b"a@example.com,\"" + b"x" * 65000 + b"\"\n") as path:
        with pytest.raises(ImportRejected, match="limit"):
            with open_recipients(path, max_bytes=8 << 20) as source:
                for _ in source.rows(on_reject=lambda r: None):
                    pass


def test_a_silent_pipe_is_given_up_after_the_idle_timeout() -> None:
    from mailtower.core.files import open_stream

    read_fd, write_fd = os.pipe()
    try:
        with open_stream(f"/dev/fd/{read_fd}", what="list", limit=1 << 20, idle_timeout=0.3) as stream:
            with pytest.raises(UserError, match="no data for 0.3 s"):
                stream.readline()
    finally:
        os.close(read_fd)
        os.close(write_fd)


# --- remaining --output ------------------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["db", "db-wal", "symlink to db", "hard link to db", "relative path to db"])
@pytest.mark.parametrize("as_csv", [True, False])
def test_remaining_output_refuses_the_database(
    plain: Cli, mailing: int, tmp_path: Path, db: Path, people: Path, alias: str, as_csv: bool
) -> None:
    target = _aliases(tmp_path, db, people, alias)[alias]
    before = fingerprint(db)
    fmt = ["--csv"] if as_csv else []
    code, out, err = plain("remaining", str(mailing), *fmt, "--output", str(target), "--force")
    expected = "hard links" if alias == "hard link to db" else "will not write over"
    assert code == 2 and expected in one_line(err)
    assert fingerprint(db) == before


def test_remaining_output_needs_force_to_replace(plain: Cli, mailing: int, tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("precious\n")
    code, out, err = plain("remaining", str(mailing), "--csv", "-o", str(target))
    assert code == 2 and "already exists" in one_line(err)
    assert target.read_text() == "precious\n"
    code, out, err = plain("remaining", str(mailing), "--csv", "-o", str(target), "--force")
    assert code == 0, err
    assert out == ""
    with target.open(newline="", encoding="utf-8") as f:
        assert [r[0] for r in csv.reader(f)] == ["email", "ann@example.com", "cid@example.com"]
    code, out, err = plain("remaining", str(mailing), "-o", str(tmp_path / "missing" / "x.tsv"))
    assert code == 2 and "does not exist" in one_line(err)
    code, out, err = plain("remaining", str(mailing), "--csv")  # stdout stays the default
    assert code == 0 and out.splitlines()[1].startswith("ann@example.com,")


# --- formulas --------------------------------------------------------------------------------------------

HOSTILE_NAMES = ['=HYPERLINK("http://evil.example/?x","Click")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(1)",
                 "'=already quoted", "''=twice", "plain", "'plain with apostrophe"]
# What the import keeps of each: one apostrophe before a formula start is the neutralisation.
STORED_NAMES = [n[1:] if n[:1] == "'" and n[1:2] in "=+-@" else n for n in HOSTILE_NAMES]


def hostile_list(path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["email", "name", "city"])
        for i, name in enumerate(HOSTILE_NAMES):
            writer.writerow([f"user{i}@example.com", name, name])
        writer.writerow(["=x@example.com", "eq", "=1+1"])
    return path


def test_export_neutralises_formulas_and_import_reads_them_back(plain: Cli, tmp_path: Path, db: Path,
                                                                 text: Path) -> None:
    first = int(plain.ok(*new_args(text, hostile_list(tmp_path / "hostile.csv"))).strip())
    exported = tmp_path / "export.csv"
    plain.ok("remaining", str(first), "--csv", "-o", str(exported))
    with exported.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    for row in rows[1:]:
        for cell in row:
            assert cell[:1] not in ("=", "+", "-", "@", "\t", "\r"), row
    names = [r[1] for r in rows[1:]]
    assert names[: len(HOSTILE_NAMES)] == [
        '\'=HYPERLINK("http://evil.example/?x","Click")', "'+cmd|' /C calc'!A0", "'-2+3", "'@SUM(1)",
        "'=already quoted", "''=twice", "plain", "'plain with apostrophe"]
    assert rows[-1][0] == "'=x@example.com"

    second = int(plain.ok(*new_args(text, exported)).strip())
    with sqlite3.connect(db) as conn:
        def people_of(mailing_id: int) -> list[tuple[str, str]]:
            return list(conn.execute("SELECT email, name FROM recipients WHERE mailing_id = ? ORDER BY id",
                                     (mailing_id,)))
        assert people_of(second) == people_of(first)
        assert [n for _e, n in people_of(first)][: len(HOSTILE_NAMES)] == STORED_NAMES


def test_tab_listing_neutralises_formulas_too(plain: Cli, tmp_path: Path, text: Path) -> None:
    first = int(plain.ok(*new_args(text, hostile_list(tmp_path / "hostile.csv"))).strip())
    out = plain.ok("remaining", str(first))
    assert "'=x@example.com\tpending\t" in out.splitlines()


def test_server_replies_are_neutralised_in_the_export(tmp_path: Path, db: Path, text: Path) -> None:
    """last_error comes from a remote server: a 451 that reads as a formula is written as text."""
    victim = "user1@example.com"
    reply = '451 =HYPERLINK("http://evil.example/","busy")'

    def fault(stage: str, address: str, attempt: int) -> str | None:
        return reply if stage == "rcpt" and address == victim else None

    people = tmp_path / "p.csv"
    people.write_text("email\nuser0@example.com\nuser1@example.com\n")
    with Sink(fault=fault) as sink:
        cli = Cli(db, sink.port, MAILTOWER_RETRY_BASE="300", MAILTOWER_RETRY_MAX="300")
        mailing_id = cli.ok(*new_args(text, people), "--now").strip()
        sender = cli.popen("run", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            def deferred() -> bool:
                with sqlite3.connect(db) as conn:
                    row = conn.execute("SELECT last_error FROM recipients WHERE email = ?", (victim,)).fetchone()
                return bool(row and row[0])
            wait_until(deferred, timeout=20, what="the 451 recorded")
        finally:
            sender.send_signal(signal.SIGTERM)
            sender.wait(timeout=20)
        target = tmp_path / "remaining.csv"
        cli.ok("remaining", mailing_id, "--csv", "-o", str(target))
    with target.open(newline="", encoding="utf-8") as f:
        rows = {r[0]: r for r in csv.reader(f)}
    assert rows[victim][5].startswith("'=HYPERLINK("), rows[victim]


# --- the dashboard's export (core.exports) --------------------------------------------------------------------


async def test_dashboard_export_refuses_the_database(mailing: int, db: Path, tmp_path: Path) -> None:
    link = tmp_path / "export.csv"
    link.symlink_to(db)
    before = fingerprint(db)
    store = await Store.open(db)
    try:
        for target in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), link):
            with pytest.raises(UserError, match="will not write over"):
                await export_remaining_csv(store, mailing, target, overwrite=True)
    finally:
        await store.close()
    assert fingerprint(db) == before


def test_new_from_standard_input_and_only_one_input_may_be_stdin(db: Path, text: Path) -> None:
    done = subprocess_cli(db, *new_args(text, "-"), input=GOOD_AND_BAD.encode())
    assert done.returncode == 0, done.stderr
    assert emails(db) == ["ann@example.com", "cid@example.com"]
    before = fingerprint(db)
    done = subprocess_cli(db, "new", "--name", "n", "--subject", "s", "--from", "news@example.org", "--text", "-",
                          "--recipients", "-", input=b"Hello\n")
    assert done.returncode == 2
    assert "standard input" in one_line(done.stderr.decode())
    assert fingerprint(db) == before


def test_two_inputs_that_read_one_stream_are_refused_before_reading(db: Path, tmp_path: Path, text: Path) -> None:
    """However standard input is named (`-`, /dev/stdin, /dev/fd/0), and for one FIFO named
    twice: the first input would take all of it and the second nothing."""
    Cli(db).ok("limits")
    before = fingerprint(db)
    for text_name, recipients in (("/dev/stdin", "-"), ("-", "/dev/fd/0"), ("/dev/fd/0", "/proc/self/fd/0")):
        done = subprocess_cli(db, "new", "--name", "n", "--subject", "s", "--from", "news@example.org",
                              "--text", text_name, "--recipients", recipients, input=b"email\nann@example.com\n")
        assert done.returncode == 2
        assert one_line(done.stderr.decode()) == (
            "mailtower: --text and --recipients both read standard input; give a file for all but one")
        assert fingerprint(db) == before
    done = subprocess_cli(db, "new", "--name", "n", "--subject", "s", "--from", "news@example.org", "--text", "/dev/null",
                          "--html", str(text), "--recipients", "/dev/null", stdin=subprocess.DEVNULL)
    assert "both read" not in done.stderr.decode()  # a device opens twice (an empty list is refused as such)
    fifo = tmp_path / "body.fifo"
    os.mkfifo(fifo)
    done = subprocess_cli(db, "new", "--name", "n", "--subject", "s", "--from", "news@example.org", "--text", str(fifo),
                          "--html", str(fifo), "--recipients", str(text))
    assert done.returncode == 2  # refused at once, not after waiting for a writer
    assert one_line(done.stderr.decode()) == f"mailtower: --text and --html both read one stream ({fifo}); give a file for all but one"
    assert fingerprint(db) == before


def test_standard_input_on_a_terminal_is_one_stream_too(db: Path) -> None:
    """`--text /dev/stdin --recipients -` typed at a terminal: each would read until its own
    Ctrl-D, the list first or the body first as the code happened to open them. Refused at
    once, as for a pipe; nothing waits for the keyboard."""
    import pty

    Cli(db).ok("limits")
    before = fingerprint(db)
    master, slave = pty.openpty()
    try:
        done = subprocess_cli(db, "new", "--name", "n", "--subject", "s", "--from", "news@example.org",
                              "--text", "/dev/stdin", "--recipients", "-", stdin=slave, timeout=15)
    finally:
        os.close(slave)
        os.close(master)
    assert done.returncode == 2
    assert one_line(done.stderr.decode()) == (
        "mailtower: --text and --recipients both read standard input; give a file for all but one")
    assert fingerprint(db) == before


def test_the_database_own_files_are_never_read_as_input(plain: Cli, mailing: int, db: Path, tmp_path: Path,
                                                        text: Path) -> None:
    """The database, its -wal (there while the command has it open) or a link to either, as a
    body, a recipient list or a suppression list, or redirected to standard input."""
    link = tmp_path / "list.csv"
    link.symlink_to(db)
    wal = Path(f"{db}-wal")
    before = fingerprint(db)
    cases: list[tuple[list[str], str]] = [
        (new_args(text, db), f"--recipients: {db}"), (new_args(wal, text), f"--text: {wal}"),
        (new_args(text, text) + ["--html", str(link)], f"--html: {link}"), (["import", str(mailing), str(link)], str(link)),
        (["suppress", "import", str(db)], str(db)),
    ]
    for args, named in cases:
        code, out, err = plain(*args)
        assert code == 2 and out == ""
        line = one_line(err)
        assert line.startswith(f"mailtower: {named} is the database's own file (") and line.endswith("not a file to read")
        assert fingerprint(db) == before
    with db.open("rb") as stdin:
        done = subprocess_cli(db, "import", str(mailing), "-", stdin=stdin)
    assert done.returncode == 2 and one_line(done.stderr.decode()).startswith(
        "mailtower: standard input is the database's own file (")
    assert fingerprint(db) == before


@pytest.mark.parametrize("name", ["a" * 300, "b" * 250])
def test_output_names_at_the_length_limit(plain: Cli, mailing: int, tmp_path: Path, db: Path, text: Path,
                                          people: Path, name: str) -> None:
    """A name over NAME_MAX is one line; one just under it works (the temporary name is cut to fit)."""
    target = tmp_path / name
    before = fingerprint(db)
    code, out, err = plain(*new_args(text, people), "--rejects", str(target))
    if len(name) > 255:
        assert code == 2 and "too long" in one_line(err)
        assert fingerprint(db) == before
    else:
        assert code == 0, err
        assert target.read_text(encoding="utf-8").startswith("line,reason")
    code, out, err = plain("remaining", str(mailing), "-o", str(tmp_path / ("r" + name)))
    assert (code == 2 and "too long" in one_line(err)) if len(name) >= 255 else code == 0


def test_a_slow_pipe_does_not_hold_the_database(db: Path, text: Path, people: Path) -> None:
    """While `import -` waits for the rest of its input, other processes (the sender) can still
    write: the pipe is read into a private copy before the import's transaction begins."""
    Cli(db).ok(*new_args(text, people))
    env = {**os.environ, "MAILTOWER_DB": str(db), "MAILTOWER_CONFIG": os.devnull}
    child = subprocess.Popen([sys.executable, "-m", "mailtower.tui.cli", "import", "1", "-"], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert child.stdin is not None
        # 1 MiB through a 64 KiB pipe: when write() returns, the child has read nearly all of it.
        child.stdin.write(b"email\n" + b"".join(b"slow%06d@example.com\n" % i for i in range(40_000)))
        child.stdin.flush()
        with sqlite3.connect(db, timeout=3) as conn:
            conn.execute("BEGIN IMMEDIATE")  # "database is locked" if the import held the write lock
            conn.execute("UPDATE mailings SET name = name")
        child.stdin.write(b"last@example.com\n")
        child.stdin.close()
        assert child.wait(timeout=60) == 0, child.stderr.read() if child.stderr else ""
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    assert len(emails(db)) == 2 + 40_001


def test_rejects_reasons_are_bounded(plain: Cli, tmp_path: Path, db: Path, text: Path) -> None:
    """A hostile list of long bad addresses: each reason is cut, on stderr and in the file."""
    hostile = tmp_path / "long.csv"
    hostile.write_text("email\n" + "".join(f"{'x' * 20_000}{i}\n" for i in range(200)) + "ok@example.com\n")
    target = tmp_path / "rejects.csv"
    code, out, err = plain(*new_args(text, hostile), "--rejects", str(target))
    assert code == 0, err[-500:]
    assert max(len(line) for line in err.splitlines()) < 1_000
    with target.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 201 and max(len(r[1]) for r in rows[1:]) < 1_000


def test_reject_log_stops_at_its_byte_bound(tmp_path: Path) -> None:
    import io

    from mailtower.core.domain import RejectedRow
    from mailtower.tui.cli import RejectLog

    handle = io.StringIO()
    log = RejectLog(Path("list.csv"), handle, limit=0, max_bytes=2_000)
    for line in range(1, 1_001):
        log(RejectedRow(line, "invalid email address 'x': An email address must have an @-sign."))
    log.close()
    rows = list(csv.reader(io.StringIO(handle.getvalue())))
    assert 10 < len(rows) < 40
    assert rows[-1][0] == "" and "more rows rejected" in rows[-1][1]


@pytest.mark.parametrize("flag", ["--rejects", "--output"])
def test_dash_is_not_an_output_file_name(plain: Cli, mailing: int, tmp_path: Path, text: Path, people: Path,
                                         flag: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    if flag == "--rejects":
        code, out, err = plain(*new_args(text, people), "--rejects", "-")
        assert code == 2 and "'-'" in one_line(err)
    else:
        code, out, err = plain("remaining", str(mailing), "--csv", "-o", "-")
        assert code == 0 and out.startswith("email,")
    assert not (tmp_path / "-").exists()


# --- the files the settings are read from are never written -----------------------------------------------


def settings_files(tmp_path: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """A TOML file naming a relay with its own password file, an SMTP password file and a DKIM key
    (dkimpy's base64 Ed25519 form): each a file the settings are read from."""
    import base64

    def private(name: str, data: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        path.chmod(0o600)
        return path

    files = {
        "password file": private("smtp.pw", b"secret\n"),
        "relay password file": private("relay.pw", b"relay-secret\n"),
        "DKIM key": private("dkim.key", base64.b64encode(os.urandom(32)) + b"\n"),
    }
    config = tmp_path / "mailtower.toml"
    config.write_text(f'[[relays]]\nhost = "127.0.0.1"\nuser = "u"\npassword_file = "{files["relay password file"]}"\n',
                      encoding="utf-8")
    files["config file"] = config
    env = {"MAILTOWER_CONFIG": str(config), "MAILTOWER_SMTP_USER": "u",
           "MAILTOWER_SMTP_PASSWORD_FILE": str(files["password file"]),
           "MAILTOWER_DKIM_DOMAIN": "example.org", "MAILTOWER_DKIM_SELECTOR": "s1",
           "MAILTOWER_DKIM_KEY_FILE": str(files["DKIM key"]), "MAILTOWER_DKIM_ALGORITHM": "ed25519-sha256"}
    return files, env


@pytest.mark.parametrize("which", ["config file", "password file", "relay password file", "DKIM key"])
@pytest.mark.parametrize("output", ["remaining --output", "new --rejects", "run --log"])
def test_no_output_writes_over_a_file_the_settings_are_read_from(
    db: Path, tmp_path: Path, text: Path, people: Path, which: str, output: str
) -> None:
    """`--force` replaced the TOML file, the SMTP password file or the DKIM key with a listing, and
    `run --log` appended log lines to them (no --force needed): a corrupt password or key, and
    every later command refused for a TOML file that no longer parses."""
    files, env = settings_files(tmp_path)
    cli = Cli(db, **env)
    mailing_id = cli.ok(*new_args(text, people, "--force")).strip()  # rows with faults: --rejects has some
    target = files[which]
    before = {name: path.read_bytes() for name, path in files.items()}
    if output == "remaining --output":
        args = ["remaining", mailing_id, "--csv", "--output", str(target), "--force"]
    elif output == "new --rejects":
        args = new_args(text, people, "--rejects", str(target), "--force")
    else:
        args = ["run", "--until-idle", "--log", str(target)]
    code, out, err = cli(*args)
    line = one_line(err)
    assert code == 2 and ("will not write over" in line or "the settings are read from" in line), err
    assert {name: path.read_bytes() for name, path in files.items()} == before


async def test_the_dashboards_export_refuses_a_file_the_settings_are_read_from(
    plain: Cli, mailing: int, db: Path, tmp_path: Path
) -> None:
    password = tmp_path / "smtp.pw"
    password.write_text("secret\n")
    store = await Store.open(db)
    try:
        with pytest.raises(UserError, match="will not write over"):
            await export_remaining_csv(store, mailing, password, overwrite=True, protected=[password])
    finally:
        await store.close()
    assert password.read_text() == "secret\n"
