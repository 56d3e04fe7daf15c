"""What `--db` names, through the real `mailtower` command on real SQLite files.

A database name is one file: the file the checks, the sender lease and the output protection look
at is the file SQLite opens, even for names SQLite would otherwise read as a URI (`file:x.db`,
`x.db?mode=memory`) or as no file at all (`:memory:`). A SQLite file that is someone else's
database (tables, but no mailtower schema version) is refused in one line and left as it was.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from pathlib import Path

import pytest

from mailtower.core.errors import UserError
from mailtower.core.sink import Sink
from mailtower.core.store import SCHEMA_VERSION, Store
from tests.helpers import Cli, recipients, wait_until, write_csv

# SQLite only: file names and SQLite files; PostgreSQL refuses foreign tables in test_postgres_store.py.
pytestmark = pytest.mark.sqlite_only

# Names SQLite (built with SQLITE_USE_URI, as Debian's is) reads as a URI or as no file, when relative.
URI_LIKE_NAMES = ["file:m.db", "file:m.db?mode=memory", "m.db?mode=memory", "m.db#x", ":memory:", "file::memory:"]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def new_mailing(cli: Cli, tmp_path: Path, n: int = 2) -> str:
    body = tmp_path / "body.txt"
    body.write_text("Hello {{ name }}\n", encoding="utf-8")
    people = write_csv(tmp_path / "people.csv", recipients(n))
    return cli.ok("new", "--name", "n", "--subject", "s", "--from", "news@example.org", "--text", str(body),
                  "--recipients", str(people)).strip()


def mailings_in(path: Path) -> int:
    with sqlite3.connect(path.absolute()) as conn:  # absolute: the literal file, never a URI
        return int(conn.execute("SELECT count(*) FROM mailings").fetchone()[0])


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the working directory: the names under test are relative."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---- a name is one file ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", URI_LIKE_NAMES)
def test_a_uri_like_db_name_is_stored_in_that_literal_file(here: Path, name: str) -> None:
    cli = Cli(Path(name))
    new_mailing(cli, here)
    assert (here / name).is_file() and mailings_in(here / name) == 1
    # Nothing else became a database: no m.db beside it, and the next command sees the mailing.
    companions = {f"{name}-wal", f"{name}-shm"}
    assert sorted(p.name for p in here.iterdir() if p.name not in companions) == sorted([name, "body.txt", "people.csv"])
    assert '#1 n' in cli.ok("status")


def test_output_naming_the_file_db_is_refused_and_the_database_is_intact(here: Path) -> None:
    cli = Cli(Path("file:X.db"))
    mailing = new_mailing(cli, here)
    before = digest(here / "file:X.db")
    code, out, err = cli("--db", "file:X.db", "remaining", mailing, "--csv", "-o", "file:X.db", "--force")
    assert code == 2 and out == "" and "will not write over" in one_line(err)
    assert digest(here / "file:X.db") == before and mailings_in(here / "file:X.db") == 1


def test_output_to_the_name_sqlite_used_to_open_is_another_file(here: Path) -> None:
    # Before the fix SQLite opened X.db for `--db file:X.db` while the protection looked at
    # file:X.db, so `-o X.db --force` overwrote the live database with CSV.
    cli = Cli(Path("file:X.db"))
    mailing = new_mailing(cli, here)
    before = digest(here / "file:X.db")
    code, out, err = cli("--db", "file:X.db", "remaining", mailing, "--csv", "-o", "X.db", "--force")
    assert code == 0, err
    assert (here / "X.db").read_text(encoding="utf-8").startswith("email,")
    assert digest(here / "file:X.db") == before and mailings_in(here / "file:X.db") == 1


def test_an_existing_database_is_not_opened_through_a_file_uri_name(here: Path) -> None:
    real = Cli(Path("X.db"))
    new_mailing(real, here)
    before = digest(here / "X.db")
    code, out, err = Cli(Path("file:X.db"))("--db", "file:X.db", "remaining", "1", "--csv", "-o", "X.db", "--force")
    assert code != 0 and "Traceback" not in err  # file:X.db is a new, empty database: no mailing 1
    assert digest(here / "X.db") == before and mailings_in(here / "X.db") == 1


def test_a_sender_on_a_file_uri_name_sends_from_that_file(here: Path) -> None:
    # The sender's own connections (inline ledger writes, checkpoints) open the same file too.
    with Sink() as sink:
        cli = Cli(Path("file:S.db"), sink.port)
        mailing = new_mailing(cli, here, n=30)
        cli.ok("send-now", mailing)
        cli.ok("run", "--until-idle")
        assert len(sink.received()) == 30
    with sqlite3.connect(here / "file:S.db") as conn:
        assert conn.execute("SELECT state, sent FROM mailings").fetchone() == ("completed", 30)
    assert not (here / "S.db").exists()


# ---- someone else's SQLite file ---------------------------------------------------------------------


def foreign_db(path: Path, *statements: str) -> Path:
    with sqlite3.connect(path) as conn:
        for statement in statements:
            conn.execute(statement)
    conn.close()
    return path


FOREIGN = {
    "our table names": ("CREATE TABLE recipients (x)", "CREATE TABLE mailings (y)"),
    "other tables": ("CREATE TABLE t (x)", "INSERT INTO t VALUES (1)"),
    "a view only": ("CREATE VIEW v AS SELECT 1",),
    "a meta table of its own": ("CREATE TABLE meta (k, v)", "INSERT INTO meta VALUES ('schema_version', 3)"),
    "meta without a version": ("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
                               "INSERT INTO meta VALUES ('owner', 'someone')"),
    "a version that is not a number": ("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
                                       "INSERT INTO meta VALUES ('schema_version', 'v2')"),
    # no tables yet, but the header says whose it is (`mailtower status` added 20 tables to it)
    "another application's id": ("PRAGMA application_id = 1234",),
    "a user version of its own": ("PRAGMA user_version = 5",),
}


@pytest.mark.parametrize("kind", list(FOREIGN))
@pytest.mark.parametrize("command", [["status"], ["limits"], ["run", "--until-idle"]])
def test_a_foreign_sqlite_database_is_refused_and_left_as_it_was(tmp_path: Path, kind: str, command: list[str]) -> None:
    db = foreign_db(tmp_path / "f.db", *FOREIGN[kind])
    before = digest(db)
    code, out, err = Cli(db)(*command)
    line = one_line(err)
    assert code == 2 and out == ""
    assert str(db) in line and "not a mailtower database" in line and "refusing to add mailtower's tables" in line
    assert digest(db) == before  # not even switched to WAL
    # `run` takes the sender lease (a lock file beside it) before it opens the database; a run
    # that could not open it removes the file it made: nothing is left beside somebody's file.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.db"]


@pytest.mark.parametrize("content", [b"\n", b"x", b"1\n", b"notes\n" * 20, b"\0" * 511])
@pytest.mark.parametrize("command", [["status"], ["limits"], ["run", "--until-idle"], ["migrate", "--to", "postgresql://127.0.0.1:1/x"]])
def test_a_file_too_short_to_be_a_database_is_refused_and_left_as_it_was(tmp_path: Path, content: bytes,
                                                                        command: list[str]) -> None:
    """SQLite took a one-byte file (a lone newline, say) for an empty database and wrote a new
    database over it. No database file is shorter than 512 bytes: every such file is refused."""
    db = tmp_path / "notes.txt"
    db.write_bytes(content)
    code, out, err = Cli(db)(*command)
    line = one_line(err)
    assert code == 2 and out == ""
    assert f"database {db}: the file holds {len(content)} byte" in line and "too few for a SQLite database" in line
    assert db.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_file_of_512_bytes_is_read_by_sqlite_and_refused_as_not_a_database(tmp_path: Path) -> None:
    db = tmp_path / "blob.bin"
    db.write_bytes(b"x" * 512)
    code, _, err = Cli(db)("run", "--until-idle")
    assert code == 2 and "not a SQLite database" in one_line(err)
    assert db.read_bytes() == b"x" * 512
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.bin"]


def test_the_refusal_names_the_tables_on_one_line(tmp_path: Path) -> None:
    db = foreign_db(tmp_path / "f.db", *(f'CREATE TABLE "t{i}" (x)' for i in range(9)), 'CREATE TABLE "a\nb" (x)')
    line = one_line(Cli(db)("status")[2])
    assert "tables named 'a\\nb', t0, t1, t2, t3 and 5 more" in line


@pytest.mark.parametrize("content", [b"", None])
def test_an_empty_file_or_a_new_name_becomes_a_mailtower_database(tmp_path: Path, content: bytes | None) -> None:
    db = tmp_path / "new.db"
    if content is not None:
        db.write_bytes(content)
    cli = Cli(db)
    new_mailing(cli, tmp_path)
    assert mailings_in(db) == 1
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)


def test_a_mailtower_database_with_a_table_of_the_users_own_still_opens(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    cli = Cli(db)
    new_mailing(cli, tmp_path)
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE my_notes (x)")
    conn.close()
    assert "#1 n" in cli.ok("status")


def test_store_open_refuses_a_foreign_database_in_process(tmp_path: Path) -> None:
    db = foreign_db(tmp_path / "f.db", "CREATE TABLE t (x)")
    with pytest.raises(Exception, match="not a mailtower database") as caught:
        asyncio.run(Store.open(db))
    assert type(caught.value).__name__ == "UserError"


# ---- a database that is not there -------------------------------------------------------------------

@pytest.mark.parametrize("command", [
    ["status"], ["status", "--json"], ["remaining", "1"], ["recipients", "1"], ["schedule", "1", "--at", "2099-01-01 09:00"],
    ["move", "1", "up"], ["resume"], ["retry", "1"], ["send-now", "1"], ["unschedule", "1"], ["stop", "1"],
    ["restart", "1"], ["delete", "1"],
])
def test_a_command_on_mailings_of_a_database_that_is_not_there_creates_nothing(here: Path, command: list[str]) -> None:
    """`mailtower --db typo.db status` made an empty database and showed "Inactive (0)": a typo
    looked like every mailing gone. A command about existing mailings now says there is none."""
    cli = Cli(Path("typo.db"))
    code, _, err = cli(*command)
    assert code == 2 and "typo.db: no database there" in one_line(err), err
    assert sorted(p.name for p in here.iterdir()) == []


def test_a_command_on_mailings_of_an_empty_file_leaves_it_empty(here: Path) -> None:
    """`status` on an empty file wrote the whole schema into it and showed "Inactive (0)"; `new`
    still makes an empty file a database (test_an_empty_file_or_a_new_name_becomes_...)."""
    (here / "touched.db").write_bytes(b"")
    code, _, err = Cli(Path("touched.db"))("status")
    assert code == 2 and "touched.db: no database there" in one_line(err)
    assert (here / "touched.db").read_bytes() == b""


def test_new_still_creates_the_database_a_command_names(here: Path) -> None:
    cli = Cli(Path("fresh.db"))
    new_mailing(cli, here)
    assert mailings_in(here / "fresh.db") == 1
    cli.ok("status")  # and the commands above work on it


REFUSED_ON_A_NEW_DATABASE = {
    "a name with an escape": ["new", "--name", "T\x1b[2J", "--subject", "s", "--from", "news@example.org"],
    "a sender that is no address": ["new", "--name", "T", "--subject", "s", "--from", "not an address"],
    "an empty recipient file": ["new", "--name", "T", "--subject", "s", "--from", "news@example.org", "--empty"],
    "nothing to suppress": ["suppress", "import", "empty.txt"],
}


@pytest.mark.parametrize("case", list(REFUSED_ON_A_NEW_DATABASE))
def test_a_command_that_refuses_its_input_leaves_no_new_database(here: Path, case: str) -> None:
    """`new` with a bad --from made the database named by --db, then refused: a typo in --db
    left a new 94 KB database behind a command that said it changed nothing."""
    (here / "body.txt").write_text("Hello\n", encoding="utf-8")
    write_csv(here / "people.csv", recipients(2))
    (here / "empty.txt").write_text("", encoding="utf-8")
    args = list(REFUSED_ON_A_NEW_DATABASE[case])
    if args[0] == "new":
        empty = "--empty" in args
        args = [a for a in args if a != "--empty"] + ["--text", "body.txt", "--recipients", "empty.txt" if empty else "people.csv"]
    code, _, err = Cli(Path("fresh.db"))(*args)
    assert code == 2 and one_line(err)
    assert sorted(p.name for p in here.iterdir()) == ["body.txt", "empty.txt", "people.csv"]


def test_a_refused_command_keeps_a_database_that_was_there(here: Path) -> None:
    cli = Cli(Path("kept.db"))
    cli.ok("limits")  # an existing database with nothing in it yet
    code, _, _ = cli("new", "--name", "T", "--subject", "s", "--from", "not an address", "--text", "x", "--recipients", "y")
    assert code == 2 and (here / "kept.db").exists()
    touched = here / "touched.db"
    touched.write_bytes(b"")  # made by the person: theirs to keep, even empty
    code, _, _ = Cli(touched)("suppress", "import", str(touched.with_name("missing.txt")))
    assert code == 2 and touched.exists()


def test_an_id_written_as_status_shows_it_is_taken(here: Path) -> None:
    """Every id's help says "as `status` shows it: #ID", and `#1` was refused as not a mailing id."""
    cli = Cli(Path("ids.db"))
    mailing = new_mailing(cli, here)
    assert f"#{mailing} n" in cli.ok("status")
    assert cli.ok("recipients", f"#{mailing}").count("@example.com") == 2
    assert cli.ok("remaining", f"#{mailing}").count("@example.com") == 2
    for bad in ("##1", "#", "#x", "# 1"):
        code, _, err = cli("remaining", bad)
        assert code == 2 and "is not a mailing id" in one_line(err), (bad, err)


def test_an_unused_database_is_removed_only_while_nobody_writes_it(here: Path) -> None:
    """remove_if_unused checks and removes under the write lock: a process writing the new database
    meanwhile keeps it (its write is not lost in a file nobody can open again)."""
    from mailtower.core.store import remove_if_unused

    db = here / "u.db"
    Cli(db).ok("limits")
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        assert not remove_if_unused(db) and db.exists()
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    # Merely open (a dashboard or sender that started on the new file): in WAL mode its writes
    # would have gone on into the removed file without an error. Kept, and still usable.
    idle = sqlite3.connect(db, isolation_level=None)
    idle.execute("PRAGMA journal_mode = WAL")
    idle.execute("SELECT count(*) FROM mailings").fetchone()
    try:
        assert not remove_if_unused(db) and db.exists()
        idle.execute("INSERT INTO meta (key, value) VALUES ('probe', 'written')")
    finally:
        idle.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'probe'").fetchone() == ("written",)
        conn.execute("DELETE FROM meta WHERE key = 'probe'")
    conn.close()
    used = here / "used.db"
    new_mailing(Cli(used), here)
    assert not remove_if_unused(used) and mailings_in(used) == 1
    assert remove_if_unused(db)
    assert sorted(p.name for p in here.iterdir() if p.name.startswith("u.db")) == []


def test_a_database_removed_while_it_was_being_opened_is_refused(here: Path) -> None:
    """A process that opened the new database while a refused command removed it would write into
    a file nobody can open again: the name must still name the file opened."""
    from mailtower.core.store import _refuse_if_replaced

    db = here / "r.db"
    Cli(db).ok("limits")
    opened = db.stat()
    _refuse_if_replaced(db, opened)  # the same file: nothing said
    with db.open("rb"):  # held open, as the opening process holds it: its inode is not reused
        db.unlink()
        with pytest.raises(UserError, match="removed, moved or replaced while it was being opened"):
            _refuse_if_replaced(db, opened)
        db.write_bytes(b"")
        with pytest.raises(UserError, match="removed, moved or replaced"):
            _refuse_if_replaced(db, opened)


# ---- a -wal beside the database that is not its own -----------------------------------------------


def wal_of_another_database(tmp_path: Path, *statements: str) -> bytes:
    """The -wal of another mailtower database with `statements` written and not yet copied into
    it (taken while its connection is open, as a crash would leave it)."""
    other = tmp_path / "other"
    other.mkdir()
    new_mailing(Cli(other / "c.db"), other, 30)
    conn = sqlite3.connect(other / "c.db", isolation_level=None)
    try:
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        for statement in statements:
            conn.execute(statement)
        return (other / "c.db-wal").read_bytes()
    finally:
        conn.close()


@pytest.mark.parametrize("statements, said", [
    # pages of another database's recipients, read through this one's schema: damaged
    (("UPDATE recipients SET state = 'sent'",), "the database is damaged (truncated or corrupt) as its -wal file leaves it"),
    # with its page 1 too: a sound database, the other one; only its number tells
    (("CREATE TABLE extra (x)", "UPDATE recipients SET state = 'sent'"), "belongs to another database"),
], ids=["its pages", "its schema too"])
def test_a_wal_of_another_database_is_refused_and_both_files_kept(tmp_path: Path, statements: tuple[str, ...],
                                                                  said: str) -> None:
    """SQLite cannot tell another database's -wal from this one's: the first command to open
    the pair copied it into the file as it closed and deleted it. `status` said "damaged" and had
    turned a database of 300 recipients into a broken one; moving the -wal aside would have saved it."""
    db = tmp_path / "m.db"
    cli = Cli(db)
    new_mailing(cli, tmp_path, 300)
    wal = Path(f"{db}-wal")
    wal.write_bytes(wal_of_another_database(tmp_path, *statements))
    before = digest(db), digest(wal)
    for command in (["status"], ["limits"], ["run", "--until-idle"]):
        code, out, err = cli(*command)
        line = one_line(err)
        assert code == 2 and out == "", err
        assert line.startswith(f"mailtower: database {db}: ") and said in line and line.endswith(
            "move it aside and try again; nothing was changed"), line
        assert (digest(db), digest(wal)) == before
    wal.unlink()
    Path(f"{db}-shm").unlink(missing_ok=True)
    assert "0/300 sent" in cli.ok("status")


def test_a_wal_left_by_a_killed_writer_is_still_recovered(tmp_path: Path) -> None:
    """This database's own -wal, as a process killed before it closed leaves it (its page 1
    included): recovered as before, not refused."""
    import subprocess
    import sys

    db = tmp_path / "m.db"
    cli = Cli(db)
    new_mailing(cli, tmp_path, 50)
    killed = (f"import os, sqlite3; c = sqlite3.connect({str(db)!r}, isolation_level=None); "
              "c.execute('PRAGMA wal_autocheckpoint = 0'); c.execute('CREATE TABLE my_notes (x)'); "
              "c.execute(\"UPDATE mailings SET name = 'renamed'\"); os._exit(0)")
    subprocess.run([sys.executable, "-c", killed], check=True, timeout=30)
    assert Path(f"{db}-wal").stat().st_size > 0
    code, out, err = cli("status")
    assert code == 0 and err == "" and "#1 renamed" in out, (out, err)


@pytest.mark.parametrize("how", ["moved", "replaced", "deleted"])
def test_a_sender_stops_when_the_database_name_no_longer_leads_to_its_file(tmp_path: Path, how: str) -> None:
    """The database's filesystem unmounted under a sender (or the file moved, or a copy put in its
    place): it sent on for 77 s into a file nobody could open, its summary counted another
    sender's sends, and a second sender on the name took another lease and sent everyone again.
    It stops within a second or two, with one line and exit 2."""
    import os
    import shutil
    import subprocess

    db = tmp_path / "m.db"
    with Sink() as sink:
        cli = Cli(db, sink.port, MAILTOWER_RATE="50", MAILTOWER_SMTP_CONNECTIONS="1")
        body = tmp_path / "body.txt"
        body.write_text("Hello\n", encoding="utf-8")
        people = write_csv(tmp_path / "people.csv", recipients(3000))
        cli.ok("new", "--name", "n", "--subject", "s", "--from", "news@example.org", "--text", str(body),
               "--recipients", str(people), "--now")
        runner = cli.popen("run", "--until-idle", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: len(sink.deliveries) >= 10, timeout=30, what="sending")
            if how == "moved":
                db.rename(tmp_path / "elsewhere.db")
            elif how == "replaced":
                shutil.copy(db, tmp_path / "copy.db")
                os.replace(tmp_path / "copy.db", db)
            else:
                db.unlink()
            runner.wait(timeout=30)
        finally:
            if runner.poll() is None:
                runner.kill()
                runner.wait(10)
        err = runner.stderr.read().decode() if runner.stderr else ""
        sent = len(sink.deliveries)
    assert runner.returncode == 2, err
    assert err.strip().splitlines()[-1] == (
        f"mailtower: the sender stopped: database {db}: the file was removed, moved or replaced since it was opened"), err
    assert sent < 1000  # 50 a second: it stopped within seconds, not at the end of the mailing


def test_a_schema_version_below_its_tables_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    """The meta row edited down (or copied from an older file): upgrading again failed on a column
    that was already there, and every command ended in "internal error" (exit 70)."""
    db = tmp_path / "m.db"
    cli = Cli(db)
    new_mailing(cli, tmp_path)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION - 1),))
    conn.close()
    before = digest(db)
    code, out, err = cli("status")
    line = one_line(err)
    assert code == 2 and out == ""
    assert line.startswith(f"mailtower: database {db}: its tables do not match its schema version {SCHEMA_VERSION - 1} ("
                           ) and line.endswith("nothing was changed"), line
    assert digest(db) == before


def test_a_killed_senders_wal_of_another_database_is_refused(tmp_path: Path) -> None:
    """A sender's commits rewrite mailings' and recipients' pages, seldom page 1: the -wal a killed
    sender of another database leaves carries no header to tell, and its pages read as a sound
    database, the other one (the reviewer's case: `status` showed the other campaign sending,
    and the next write committed into the mix)."""
    import subprocess
    import sys

    db = tmp_path / "m.db"
    new_mailing(Cli(db), tmp_path, 2)
    other = tmp_path / "other"
    other.mkdir()
    c = other / "c.db"
    body = other / "body.txt"
    body.write_text("Other\n", encoding="utf-8")
    people = write_csv(other / "p.csv", recipients(300))
    Cli(c).ok("new", "--name", "C", "--subject", "another campaign", "--from", "other@example.org", "--text",
              str(body), "--recipients", str(people), "--now")
    killed = (f"import os, sqlite3; c = sqlite3.connect({str(c)!r}, isolation_level=None); "
              "c.execute('PRAGMA wal_autocheckpoint = 0'); "
              "c.execute(\"UPDATE recipients SET state = 'sent', updated_at = 1 WHERE id <= 100\"); "
              "c.execute('UPDATE mailings SET sent = 100 WHERE id = 1'); os._exit(0)")
    subprocess.run([sys.executable, "-c", killed], check=True, timeout=30)
    wal = Path(f"{db}-wal")
    wal.write_bytes(Path(f"{c}-wal").read_bytes())
    before = digest(db), digest(wal)
    code, out, err = Cli(db)("status")
    line = one_line(err)
    assert code == 2 and out == "", err
    assert "belongs to another database (mailing 1 is another mailing there)" in line, line
    assert (digest(db), digest(wal)) == before
