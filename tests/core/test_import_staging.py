"""On SQLite a recipient file is read and checked before the write transaction that adds it to a
mailing (Store.staged_rows into a TEMP table, then one INSERT ... SELECT in Tx.insert_staged):
reading a million rows inside the transaction made every sender wait ~50 s. What must hold:
another process can write while the file is read; the result is what it was (duplicates of the
file and of the mailing reported by line, suppressed addresses left out, all or nothing); a full
temporary directory is one line that says so, and nothing is imported.

Real SQLite files; the CLI runs as a person runs it."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mailtower.core.errors import ImportRejected
from mailtower.core.operations import Draft, create_mailing, import_recipients
from mailtower.core.recipients_csv import ReadProgress
from mailtower.core.store import Store, open_store
from tests.core.test_edge_sender import fill, small_fs  # noqa: F401 - small_fs is a fixture used below
from tests.helpers import recipients, write_csv

DRAFT = Draft(name="n", subject="Hi", from_addr="news@example.org", text="Hello", html=None)


def another_writer_can_write(db: Path) -> bool:
    """BEGIN IMMEDIATE without waiting, as another process's sender would."""
    conn = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


@pytest.fixture
async def store(tmp_path: Path):
    opened = await open_store(tmp_path / "m.db")
    yield opened
    await opened.close()


async def test_other_writers_go_on_while_a_file_is_read_into_a_new_or_an_existing_mailing(store: Store, tmp_path: Path) -> None:
    seen: list[bool] = []

    def progress(_: ReadProgress) -> None:  # every 1,000 valid rows, while the file is being read
        seen.append(another_writer_can_write(store.path))

    mailing_id, summary = await create_mailing(
        store, DRAFT, write_csv(tmp_path / "a.csv", recipients(3000)), lambda row: None, progress=progress)
    assert summary.imported == 3000 and seen == [True] * 3
    seen.clear()
    more = await import_recipients(
        store, mailing_id, write_csv(tmp_path / "b.csv", recipients(3000, start=2000)), lambda row: None, progress=progress)
    assert (more.imported, more.duplicates[:1], len(more.duplicates)) == (2000, [2], 1000)
    assert seen == [True] * 3
    assert (await store.mailing(mailing_id)).total == 5000


async def test_duplicates_suppressed_rows_and_the_file_order_are_kept(store: Store, tmp_path: Path) -> None:
    async with store.write() as tx:
        await tx.add_suppressions([("user3@example.com", "user3@example.com")], "test", "complained")
    rows = recipients(6)
    rows.insert(4, {"email": "USER1@example.com", "name": "Again"})  # line 6 repeats line 3 (case aside)
    mailing_id, summary = await create_mailing(store, DRAFT, write_csv(tmp_path / "a.csv", rows), lambda row: None)
    assert (summary.imported, summary.duplicates, summary.suppressed) == (5, [6], 1)
    existing = write_csv(tmp_path / "b.csv", [{"email": "user9@example.com", "name": "New"}, *recipients(2, start=4)])
    more = await import_recipients(store, mailing_id, existing, lambda row: None)
    assert (more.imported, more.duplicates, more.suppressed) == (1, [3, 4], 0)
    with sqlite3.connect(store.path) as conn:
        order = [e for e, in conn.execute("SELECT email FROM recipients WHERE mailing_id = ? ORDER BY id", (mailing_id,))]
        temp_left = conn.execute("SELECT COUNT(*) FROM sqlite_temp_master").fetchone()[0]
    assert order == ["user0@example.com", "user1@example.com", "user2@example.com", "user4@example.com",
                     "user5@example.com", "user9@example.com"]
    assert temp_left == 0


async def test_a_file_broken_part_way_imports_nothing_and_leaves_no_staging_table(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "broken.csv"
    path.write_bytes(b"email,name\n" + b"".join(b"user%d@example.com,U\n" % i for i in range(7000)) + b"\xff\xfe,bad\n")
    with pytest.raises(ImportRejected):
        await create_mailing(store, DRAFT, path, lambda row: None)
    assert await store.mailings() == []
    async with store.db.execute("SELECT name FROM sqlite_temp_master") as cur:
        assert await cur.fetchall() == []  # dropped on the way out of the failure
    mailing_id, summary = await create_mailing(store, DRAFT, write_csv(tmp_path / "ok.csv", recipients(3)), lambda row: None)
    assert summary.imported == 3 and (await store.mailing(mailing_id)).total == 3


def temp_tables_in_files() -> bool:
    """SQLite built with TEMP_STORE 0 or 1 (Debian's: 1) keeps TEMP tables in files by default."""
    with sqlite3.connect(":memory:") as conn:
        options = [o for o, in conn.execute("PRAGMA compile_options") if o.startswith("TEMP_STORE=")]
    return not options or int(options[0].split("=")[1]) <= 1


def test_a_full_temporary_directory_is_one_line_and_nothing_is_imported(small_fs: Path, tmp_path: Path) -> None:  # noqa: F811
    if not temp_tables_in_files():
        pytest.skip("this SQLite keeps TEMP tables in memory: no temporary directory to fill")
    db = tmp_path / "m.db"
    people = write_csv(tmp_path / "p.csv", recipients(60_000))
    fill(small_fs / "filler", 0)
    env = {"MAILTOWER_DB": str(db), "MAILTOWER_CONFIG": "/dev/null", "SQLITE_TMPDIR": str(small_fs), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "mailtower.tui.cli", "new", "--name", "n", "--subject", "Hi", "--from", "news@example.org",
         "--text", str(write_text(tmp_path / "body.txt")), "--recipients", str(people)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1, done.stderr
    assert "temporary directory" in lines[0] and "full" in lines[0] and "nothing was imported" in lines[0]
    assert not db.exists()  # the database this refused `new` made is removed again


def write_text(path: Path) -> Path:
    path.write_text("Hello {{ name }}\n", encoding="utf-8")
    return path


async def test_a_large_import_into_a_mailing_with_rows_sets_the_indexes_aside_and_still_skips_its_addresses(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailtower.core import store as store_module
    from tests.core.test_wave_moves import schema

    mailing_id, _ = await create_mailing(store, DRAFT, write_csv(tmp_path / "a.csv", recipients(4)), lambda row: None)
    version, indexes, _ = schema(store.path)
    monkeypatch.setattr(store_module, "REBUILD_MIN_ROWS", 1)  # 8 rows into a table of 4 stand for a million
    more = await import_recipients(store, mailing_id, write_csv(tmp_path / "b.csv", recipients(10, start=2)), lambda row: None)
    assert (more.imported, more.duplicates) == (8, [2, 3])
    after, rebuilt, check = schema(store.path)
    assert after > version and (rebuilt, check) == (indexes, "ok")
    with sqlite3.connect(store.path) as conn:
        emails = [e for e, in conn.execute("SELECT email FROM recipients WHERE mailing_id = ? ORDER BY id", (mailing_id,))]
    assert emails == [f"user{i}@example.com" for i in range(12)]
    assert (await store.mailing(mailing_id)).total == 12
