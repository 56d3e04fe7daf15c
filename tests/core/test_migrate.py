"""`mailtower migrate --to postgresql://...` (issue 15 item 6): a real SQLite file copied into a
database of the throw-away PostgreSQL (tests/pg_server.py), every table byte-exact with its ids,
the source untouched; each refusal one line, exit 2, nothing changed on either side."""

from __future__ import annotations

import hashlib
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailtower.core.lease import SenderLease
from mailtower.core.migrate import TABLES
from mailtower.core.sink import Sink, free_port
from tests.helpers import Cli, recipients, write_csv
from tests.pg_server import PASSWORD_USER, sql_rows

pytestmark = pytest.mark.timeout(180)

HOSTILE = "Zoë \x1b[31mred\x1b[0m\r\n\ttab \u202e\u0007 \U0001F4E7 '\"\\ %s ?"


@pytest.fixture
def empty_pg(pg_server) -> Iterator[str]:
    """A database with nothing in it at all (no schema): what a person gives migrate."""
    url = pg_server.new_database(empty=True)
    try:
        yield url
    finally:
        pg_server.drop_database(url)


def snapshot_files(db: Path) -> dict[str, str]:
    """Every file of the database's directory with its content hash: 'untouched' means equal."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(db.parent.iterdir()) if p.is_file()}


def all_rows(db: object, table: str) -> list[tuple]:
    key = {"meta": "key", "settings": "key", "suppression": "key", "canary_rows": "mailing_id, recipient_id"}.get(table, "id")
    where = " WHERE key <> 'schema_version'" if table == "meta" else ""
    cols = [r[1] for r in sql_rows(db, f"PRAGMA table_info({table})")] if not hasattr(db, "url") else None
    columns = ", ".join(cols) if cols else "*"
    return sql_rows(db, f"SELECT {columns} FROM {table}{where} ORDER BY {key}")


def source_columns(db: Path, table: str) -> str:
    return ", ".join(r[1] for r in sql_rows(db, f"PRAGMA table_info({table})"))


@pytest.fixture
def source(tmp_path: Path, sink: Sink, body: Path) -> Path:
    """A SQLite database with every table filled: a sent mailing, a draft with hostile names,
    suppression, settings, a wave group (AUTOINCREMENT with a deleted highest id), a canary row."""
    db = tmp_path / "src" / "mailtower.db"
    db.parent.mkdir()
    cli = Cli(db, sink.port, MAILTOWER_SMTP_CONNECTIONS="4")
    people = write_csv(tmp_path / "r.csv", recipients(40, code="c1"), ["email", "name", "code"])
    cli.ok("new", "--name", "sent one", "--subject", "Hi", "--from", "news@example.org", "--text", str(body),
           "--recipients", str(people), "--now")
    cli.ok("run", "--until-idle")
    hostile = write_csv(tmp_path / "h.csv", [{"email": "x@example.net", "name": HOSTILE, "code": HOSTILE},
                                             {"email": "y@example.net", "name": "Ünïcødé", "code": "2"}], ["email", "name", "code"])
    cli.ok("new", "--name", "draft", "--subject", "Zoë \U0001F4E7", "--from", "news@example.org", "--text", str(body),
           "--recipients", str(hostile))
    cli.ok("suppress", "add", "gone@example.com", "--reason", "asked")
    cli.ok("limits", "--rate", "12.5")
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO wave_groups (name, send_at_local, created_at) VALUES ('w1', '2026-12-01T09:00', 'x')")
        conn.execute("INSERT INTO wave_groups (name, send_at_local, created_at) VALUES ('w2', '2026-12-01T09:00', 'x')")
        conn.execute("DELETE FROM wave_groups WHERE name = 'w2'")  # its id is never handed out again
        conn.execute("INSERT INTO canary_rows VALUES (1, 3)")
        # What the CLI refuses today an older version or a hand edit may have stored: kept as is.
        conn.execute("UPDATE mailings SET name = ?, text_body = ? WHERE id = 2", (HOSTILE, HOSTILE))
        conn.execute("UPDATE suppression SET reason = ?", (HOSTILE,))
        conn.execute("UPDATE recipients SET name = ? WHERE email = 'y@example.net'", (HOSTILE,))
        conn.execute("INSERT INTO events (mailing_id, at, kind, detail) VALUES (1, 'now', 'note', ?)", (HOSTILE,))
        conn.execute("UPDATE recipients SET next_attempt_at = ?, updated_at = 1e300 WHERE id = 2", (math.inf,))
    conn.close()
    return db


def migrate(db: Path, *args: str) -> tuple[int, str, str]:
    return Cli(db)("migrate", *args)


def assert_untouched(before: dict[str, str], db: Path) -> None:
    """The database file and every file there was are byte-identical. A read-only reader of a WAL
    database may leave SQLite's own empty -wal and its -shm index beside it (as any reader does);
    an empty -wal holds no change."""
    after = snapshot_files(db)
    new = {name: after.pop(name) for name in set(after) - set(before)}
    assert after == before
    assert set(new) <= {f"{db.name}-wal", f"{db.name}-shm"}
    if f"{db.name}-wal" in new:
        assert (db.parent / f"{db.name}-wal").stat().st_size == 0


def assert_no_data(url: str) -> None:
    present = {r[0] for r in sql_rows(_target(url), "SELECT table_name FROM information_schema.tables "
                                                    "WHERE table_schema = 'public'")}
    for table in set(TABLES) & present:
        where = " WHERE key <> 'schema_version'" if table == "meta" else ""
        assert sql_rows(_target(url), f"SELECT COUNT(*) FROM {table}{where}") == [(0,)], table


def _target(url: str):  # noqa: ANN202 - a PgTarget
    from mailtower.core.db_target import parse_pg_url

    return parse_pg_url(url, "test")


def test_migrate_copies_every_table_byte_exact_keeping_ids(source: Path, empty_pg: str) -> None:
    before = snapshot_files(source)
    code, out, err = migrate(source, "--to", empty_pg)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == list(TABLES)
    assert lines[-1].startswith("migrated ") and lines[-1].endswith("verified")
    assert_untouched(before, source)  # read-only: not a byte changed
    assert err == ""  # the counters agree with the ledger
    target = _target(empty_pg)
    for table in TABLES:
        cols = source_columns(source, table)
        key = {"meta": "key", "settings": "key", "suppression": "key"}.get(table, "1, 2")
        where = " WHERE key <> 'schema_version'" if table == "meta" else ""
        want = sql_rows(source, f"SELECT {cols} FROM {table}{where} ORDER BY {key}")
        got = sql_rows(target, f"SELECT {cols} FROM {table}{where} ORDER BY {key}")
        assert got == want, table
        assert want, f"the source's {table} should not be empty"
    assert sql_rows(target, "SELECT name FROM recipients WHERE email = 'y@example.net'") == [(HOSTILE,)]
    assert sql_rows(target, "SELECT next_attempt_at FROM recipients WHERE id = 2") == [(math.inf,)]
    # New ids go on after the copied ones (wave_groups: after the deleted highest one too).
    cli = Cli(target)
    tmp = source.parent.parent
    more = write_csv(tmp / "more.csv", recipients(2, domain="example.org", code="c"), ["email", "name", "code"])
    new_id = int(cli.ok("new", "--name", "after", "--subject", "s", "--from", "a@example.org", "--text",
                        str(tmp / "body.txt"), "--recipients", str(more)).strip())
    assert sql_rows(target, "SELECT MIN(id) FROM recipients WHERE mailing_id = ?", (new_id,)) == [
        (sql_rows(source, "SELECT MAX(id) FROM recipients")[0][0] + 1,)]
    assert new_id == sql_rows(source, "SELECT MAX(id) FROM mailings")[0][0] + 1
    assert sql_rows(target, "SELECT nextval(pg_get_serial_sequence('wave_groups', 'id'))") == [(3,)]
    # The store opens it and sees the same mailings and counters.
    status = cli.ok("status", "--json")
    assert "sent one" in status


def test_migrate_refuses_a_target_that_holds_data(source: Path, empty_pg: str) -> None:
    assert migrate(source, "--to", empty_pg)[0] == 0
    counts = {t: sql_rows(_target(empty_pg), f"SELECT COUNT(*) FROM {t}") for t in TABLES}
    code, out, err = migrate(source, "--to", empty_pg)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "already holds mailtower data" in err
    assert {t: sql_rows(_target(empty_pg), f"SELECT COUNT(*) FROM {t}") for t in TABLES} == counts


def test_migrate_into_a_database_with_the_empty_schema(source: Path, pg_url: str) -> None:
    code, _, err = migrate(source, "--to", pg_url)  # created by the store's open, nothing in it
    assert code == 0, err


@pytest.mark.parametrize("column, value, said", [
    ("name", "a\x00b", "recipients row 3, column name: it contains a NUL character"),
    ("name", b"\xff\xfe", "recipients row 3, column name: a blob value"),
    ("attempts", "three", "recipients row 3, column attempts: a text value"),
])
def test_migrate_refuses_values_postgresql_cannot_hold_naming_the_row(
        source: Path, empty_pg: str, column: str, value: object, said: str) -> None:
    with sqlite3.connect(source) as conn:
        conn.execute(f"UPDATE recipients SET {column} = ? WHERE id = 3", (value,))
    conn.close()
    before = snapshot_files(source)
    code, out, err = migrate(source, "--to", empty_pg)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and said in err, err
    assert_untouched(before, source)
    # Refused before the target was opened: not even the schema was created.
    assert sql_rows(_target(empty_pg), "SELECT to_regclass('mailings') IS NULL") == [(True,)]


def test_migrate_refuses_text_that_is_not_utf8_naming_the_row(source: Path, empty_pg: str) -> None:
    with sqlite3.connect(source) as conn:
        conn.execute("UPDATE recipients SET name = CAST(x'41ff42' AS TEXT) WHERE id = 5")
    conn.close()
    code, _, err = migrate(source, "--to", empty_pg)
    assert code == 2 and err.count("\n") == 1
    assert "row 5, column name" in err and "not valid UTF-8" in err, err
    assert_no_data(empty_pg)


def test_a_copy_that_fails_midway_is_rolled_back(source: Path, empty_pg: str) -> None:
    # Fits SQLite's INTEGER, not PostgreSQL's integer column: COPY fails after rows went over.
    with sqlite3.connect(source) as conn:
        conn.execute("UPDATE recipients SET last_code = ? WHERE id = 39", (2**40,))
    conn.close()
    code, out, err = migrate(source, "--to", empty_pg)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "rolled back" in err and "last_code" in err, err
    assert_no_data(empty_pg)
    with sqlite3.connect(source) as conn:
        conn.execute("UPDATE recipients SET last_code = 250 WHERE id = 39")
    conn.close()
    assert migrate(source, "--to", empty_pg)[0] == 0  # the empty schema left behind is accepted


def test_migrate_refuses_bad_targets_in_one_line(source: Path, pg_server, empty_pg: str) -> None:
    before = snapshot_files(source)
    port = empty_pg.rsplit(":", 1)[1].split("/")[0]
    cases = {
        "/tmp/other.db": "--to: '/tmp/other.db' is not a PostgreSQL URL",
        "mysql://u@127.0.0.1/x": "is not a PostgreSQL URL",
        f"postgresql://mailtower@127.0.0.1:{free_port()}/x": "127.0.0.1",
        f"postgresql://{PASSWORD_USER}:wrong-horse@127.0.0.1:{port}/postgres": "password",
        "postgresql://mailtower@127.0.0.1:99999/x": "port 99999",
    }
    for url, said in cases.items():
        code, out, err = migrate(source, "--to", url)
        assert code == 2 and out == "", (url, err)
        assert err.count("\n") == 1 and said in err, (url, err)
        assert "wrong-horse" not in err
    assert_untouched(before, source)


def test_migrate_refuses_a_source_that_is_not_a_mailtower_database(tmp_path: Path, empty_pg: str) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a database\n" * 100)
    for db, said in ((other, "not a mailtower database"), (text, "not a mailtower database"),
                     (tmp_path / "missing.db", "no such file"), (tmp_path, "")):
        code, out, err = migrate(db, "--to", empty_pg)
        assert code == 2 and out == "", (db, err)
        assert err.count("\n") == 1 and said in err, (db, err)
    assert sql_rows(_target(empty_pg), "SELECT to_regclass('mailings') IS NULL") == [(True,)]


def test_migrate_refuses_while_a_sender_holds_the_lease(source: Path, empty_pg: str) -> None:
    lease = SenderLease(source)
    assert lease.acquire("mailtower run")
    try:
        code, _, err = migrate(source, "--to", empty_pg)
    finally:
        lease.release()
    assert code == 2 and err.count("\n") == 1 and "is sending from it" in err, err
    assert sql_rows(_target(empty_pg), "SELECT to_regclass('mailings') IS NULL") == [(True,)]


def test_migrate_refuses_column_names_that_are_not_plain_identifiers(source: Path, empty_pg: str) -> None:
    with sqlite3.connect(source) as conn:
        conn.execute('ALTER TABLE settings ADD COLUMN "x) FROM STDIN; DROP TABLE meta; --" TEXT')
    conn.close()
    code, _, err = migrate(source, "--to", empty_pg)
    assert code == 2 and err.count("\n") == 1 and "settings has a column named" in err, err
    assert sql_rows(_target(empty_pg), "SELECT to_regclass('mailings') IS NULL") == [(True,)]


def test_counters_that_disagree_with_the_ledger_are_copied_and_reported(source: Path, empty_pg: str) -> None:
    with sqlite3.connect(source) as conn:
        conn.execute("UPDATE mailings SET sent = sent - 1 WHERE id = 1")
    conn.close()
    code, _, err = migrate(source, "--to", empty_pg)
    assert code == 0
    assert err.count("\n") == 1 and "warning: mailing 1: its counters say sent 39 but 40 rows" in err, err
    assert sql_rows(_target(empty_pg), "SELECT sent FROM mailings WHERE id = 1") == [(39,)]
