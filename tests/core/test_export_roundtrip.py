"""`remaining --csv` gives back a file `new`/`import` read into the same recipients (time zones and
merge fields included, the export's status columns not taken as merge fields), and `--rejects`
keeps each rejected row's own cells, so a list read from standard input loses nothing."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mailtower.core.exports import HEADER, export_remaining_csv
from mailtower.core.operations import Draft, create_mailing, import_recipients
from mailtower.core.store import open_store
from tests.helpers import Cli

FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")

# email, name, tz, city, note: unicode, values a spreadsheet would run, a tab and a line break in a
# body field, a recipient without a zone, a merge field whose name starts with "=".
PEOPLE = [
    ["email", "name", "tz", "city", "=note"],
    ["ann@example.com", "Ann Ünal", "Europe/Berlin", "Zürich", "=1+1"],
    ["bob@example.com", "Bob", "America/New_York", "東京", "-2 apples"],
    ["=cid@example.com", "@cid", "", "São Paulo", "tab\there\nand a line"],
    ["dee@example.com", "'=already quoted", "Asia/Kolkata", "+cmd|' /C calc'!A0", ""],
]


def write_rows(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


@pytest.fixture
def text(tmp_path: Path) -> Path:
    path = tmp_path / "body.txt"
    path.write_text("Hello {{ name }} from {{ city }}: {{ =note }}\n", encoding="utf-8")
    return path


def new_args(text: Path, people: Path | str, *extra: str, subject: str = "Hi {{ city }}") -> list[str]:
    return ["new", "--name", "round trip", "--subject", subject, "--from", "news@example.org",
            "--text", str(text), "--recipients", str(people), *extra]


def ledger(db: Path, mailing_id: int) -> list[tuple[str, str, str, dict[str, str]]]:
    with sqlite3.connect(db) as conn:
        return [(e, n, tz, json.loads(f)) for e, n, tz, f in conn.execute(
            "SELECT email, name, tz, fields FROM recipients WHERE mailing_id = ? ORDER BY id", (mailing_id,))]


def mailing_fields(db: Path, mailing_id: int) -> list[str]:
    with sqlite3.connect(db) as conn:
        return json.loads(conn.execute("SELECT fields FROM mailings WHERE id = ?", (mailing_id,)).fetchone()[0])


def run_cli(db: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """`mailtower ARGS` in a child process, for standard input."""
    env = {**os.environ, "MAILTOWER_DB": str(db), "MAILTOWER_CONFIG": os.devnull}
    return subprocess.run([sys.executable, "-m", "mailtower.tui.cli", *args], env=env, input=stdin,
                          capture_output=True, timeout=60)


# ---- remaining --csv -> new / import --------------------------------------------------------------


def test_remaining_csv_reimports_into_the_same_recipients(tmp_path: Path, db: Path, text: Path) -> None:
    cli = Cli(db)
    first = int(cli.ok(*new_args(text, write_rows(tmp_path / "people.csv", PEOPLE))))
    exported = tmp_path / "left.csv"
    code, out, err = cli("remaining", str(first), "--csv", "-o", str(exported))
    assert code == 0 and out == "" and "4 remaining recipients" in err, err

    rows = read_rows(exported)
    assert rows[0] == [*HEADER, "tz", "'=note", "city"]  # the merge fields sorted by name
    for row in rows:  # nothing a spreadsheet would run, header included
        assert all(cell[:1] not in FORMULA_LEADS for cell in row), row
    assert rows[1][6:] == ["Europe/Berlin", "'=1+1", "Zürich"]

    # The same subject and body work: city and =note came along, and tz with them.
    second = int(cli.ok(*new_args(text, exported)))
    assert ledger(db, second) == ledger(db, first)
    assert [r[:3] for r in ledger(db, first)] == [tuple(r[:3]) for r in PEOPLE[1:3]] + [
        ("=cid@example.com", "@cid", ""), ("dee@example.com", "=already quoted", "Asia/Kolkata")]  # import took one apostrophe
    assert ledger(db, first)[2][3] == {"city": "São Paulo", "=note": "tab\there\nand a line"}
    # The status columns are the export's, not merge fields.
    assert mailing_fields(db, second) == mailing_fields(db, first) == ["=note", "city"]

    # Standard output carries the same file; `import` reads it like `new` (all duplicates here).
    assert list(csv.reader(io.StringIO(cli.ok("remaining", str(first), "--csv"), newline=""))) == rows
    code, _, err = cli("import", str(second), str(exported))
    assert code == 2 and "4 already in the mailing" in err and len(err.splitlines()) == 1


def test_remaining_csv_of_a_partly_sent_mailing_keeps_fields_of_those_left(tmp_path: Path, db: Path,
                                                                            text: Path) -> None:
    """Status columns hold other values once a mailing has been tried; they still do not come back."""
    cli = Cli(db)
    first = int(cli.ok(*new_args(text, write_rows(tmp_path / "people.csv", PEOPLE))))
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE recipients SET state = 'deferred', attempts = 2, last_code = 451, "
                     "last_error = '=4.7.1 greylisted' WHERE email = 'bob@example.com'")
    exported = tmp_path / "left.csv"
    cli.ok("remaining", str(first), "--csv", "-o", str(exported))
    bob = next(r for r in read_rows(exported) if r[0] == "bob@example.com")
    assert bob[2:6] == ["deferred", "2", "451", "'=4.7.1 greylisted"]
    second = int(cli.ok(*new_args(text, exported)))
    assert ledger(db, second) == ledger(db, first)
    assert mailing_fields(db, second) == ["=note", "city"]


def test_a_list_without_zones_or_fields_keeps_the_old_columns(tmp_path: Path, db: Path, text: Path) -> None:
    cli = Cli(db)
    people = write_rows(tmp_path / "p.csv", [["email", "name"], ["a@example.com", "A"], ["b@example.com", "B"]])
    plain = tmp_path / "plain.txt"
    plain.write_text("Hi\n", encoding="utf-8")
    first = int(cli.ok(*new_args(plain, people, subject="Hi")))
    rows = list(csv.reader(io.StringIO(cli.ok("remaining", str(first), "--csv"), newline="")))
    assert rows == [list(HEADER), ["a@example.com", "A", "pending", "0", "", ""],
                    ["b@example.com", "B", "pending", "0", "", ""]]


def test_a_state_column_alone_is_still_a_merge_field(tmp_path: Path, db: Path) -> None:
    """Only the export's four status columns together are read as status: a mailing list's `state`
    column is a merge field as ever."""
    cli = Cli(db)
    body = tmp_path / "b.txt"
    body.write_text("Hi {{ state }}\n", encoding="utf-8")
    people = write_rows(tmp_path / "p.csv", [["email", "state", "last_code"], ["a@example.com", "Ohio", "3"]])
    mailing = int(cli.ok(*new_args(body, people, subject="Hi")))
    assert ledger(db, mailing)[0][3] == {"state": "Ohio", "last_code": "3"}

    # Its export writes those fields as `field:last_code` and `field:state` beside the status
    # columns (it was refused: two `state` columns), and reads back into the same recipient.
    target = tmp_path / "left.csv"
    cli.ok("remaining", str(mailing), "--csv", "-o", str(target))
    assert read_rows(target) == [[*HEADER, "field:last_code", "field:state"],
                                 ["a@example.com", "", "pending", "0", "", "", "3", "Ohio"]]
    again = int(cli.ok(*new_args(body, target, subject="Hi")))
    assert ledger(db, again)[0][3] == {"state": "Ohio", "last_code": "3"}
    # The listing still works.
    assert cli.ok("remaining", str(mailing)) == "a@example.com\tpending\t\n"


def test_a_merge_field_an_export_cannot_name_apart_is_refused_in_one_line(tmp_path: Path, db: Path) -> None:
    """`state` is written as `field:state`: a mailing that also has a merge field literally named
    `field:state` could not be read back. Refused in one line, nothing written."""
    cli = Cli(db)
    body = tmp_path / "b.txt"
    body.write_text("Hi\n", encoding="utf-8")
    people = write_rows(tmp_path / "p.csv", [["email", "state", "field:state"], ["a@example.com", "Ohio", "x"]])
    mailing = int(cli.ok(*new_args(body, people, subject="Hi")))
    target = tmp_path / "left.csv"
    code, out, err = cli("remaining", str(mailing), "--csv", "-o", str(target))
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert "merge field 'state' would be written as 'field:state'" in err and "nothing was written" in err
    assert not target.exists() and [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_field_prefix_outside_an_export_is_an_ordinary_name(tmp_path: Path, db: Path) -> None:
    """Only in an export (all four status columns) is `field:state` read as `state`."""
    cli = Cli(db)
    body = tmp_path / "b.txt"
    body.write_text("Hi\n", encoding="utf-8")
    people = write_rows(tmp_path / "p.csv", [["email", "field:state"], ["a@example.com", "x"]])
    mailing = int(cli.ok(*new_args(body, people, subject="Hi")))
    assert ledger(db, mailing)[0][3] == {"field:state": "x"}


def test_fields_from_several_imports_make_one_sorted_header(tmp_path: Path, db: Path) -> None:
    cli = Cli(db)
    body = tmp_path / "b.txt"
    body.write_text("Hi\n", encoding="utf-8")
    first = int(cli.ok(*new_args(body, write_rows(tmp_path / "a.csv", [["email", "zip"], ["a@example.com", "10115"]]),
                                 subject="Hi")))
    cli.ok("import", str(first), str(write_rows(tmp_path / "b.csv", [["email", "city", "tz"],
                                                                      ["b@example.net", "Köln", "Europe/Berlin"]])))
    rows = list(csv.reader(io.StringIO(cli.ok("remaining", str(first), "--csv"), newline="")))
    assert rows[0] == [*HEADER, "tz", "city", "zip"]
    assert [r[6:] for r in rows[1:]] == [["", "", "10115"], ["Europe/Berlin", "Köln", ""]]


async def test_a_filtered_export_has_the_columns_of_the_rows_it_lists(tmp_path: Path) -> None:
    a = write_rows(tmp_path / "a.csv", [["email", "zip"], ["a@a.example", "10115"]])
    b = write_rows(tmp_path / "b.csv", [["email", "city"], ["b@b.example", "Köln"]])
    store = await open_store(tmp_path / "m.db")
    try:
        mailing_id, _ = await create_mailing(store, Draft("m", "s", "news@example.org", "hi", None), a,
                                             lambda row: None)
        await import_recipients(store, mailing_id, b, lambda row: None)
        assert await export_remaining_csv(store, mailing_id, tmp_path / "b-only.csv", search="b.example") == 1
        assert await export_remaining_csv(store, mailing_id, tmp_path / "all.csv") == 2
    finally:
        await store.close()
    assert read_rows(tmp_path / "b-only.csv") == [[*HEADER, "city"], ["b@b.example", "", "pending", "0", "", "", "Köln"]]
    assert read_rows(tmp_path / "all.csv")[0] == [*HEADER, "city", "zip"]


def test_the_tab_listing_escapes_control_characters_and_formulas(tmp_path: Path, db: Path, text: Path) -> None:
    cli = Cli(db)
    first = int(cli.ok(*new_args(text, write_rows(tmp_path / "people.csv", PEOPLE))))
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE recipients SET state = 'deferred', last_error = ? WHERE email = '=cid@example.com'",
                     ("=451\tbusy\x1b[2J\nforged",))
    lines = cli.ok("remaining", str(first)).splitlines()
    assert lines[2] == "'=cid@example.com\tdeferred\t'=451\\tbusy\\x1b[2J\\nforged"
    assert len(lines) == 4 and all(line.count("\t") == 2 for line in lines)


# ---- --rejects ----------------------------------------------------------------------------------------


STDIN_LIST = (
    "email,name,=city,tz\n"
    "ok@example.com,Ok,Berlin,Europe/Berlin\n"
    "not-an-address,\"Smith, Jo\",=SUM(1),Europe/Paris\n"
    "x@example.com,Eve,\"multi\nline\",\n"
    "y@example.com,Yan,Köln,Mars/Olympus\n"
    ",,,\n"
    ",Nameless,Bonn,\n"
)


def test_rejects_file_keeps_each_rejected_row_and_reads_back(tmp_path: Path, db: Path) -> None:
    body = tmp_path / "b.txt"
    body.write_text("Hi {{ name }}\n", encoding="utf-8")
    rejects = tmp_path / "rejects.csv"
    done = run_cli(db, "new", "--name", "n", "--subject", "Hi {{ =city }}", "--from", "news@example.org",
                   "--text", str(body), "--recipients", "-", "--rejects", str(rejects), stdin=STDIN_LIST.encode())
    assert done.returncode == 0, done.stderr
    rows = read_rows(rejects)
    assert rows[0] == ["line", "reason", "email", "name", "'=city", "tz"]
    assert [r[0] for r in rows[1:]] == ["3", "4", "6", "8"]  # physical lines; the blank row is no reject
    assert rows[1][2:] == ["not-an-address", "Smith, Jo", "'=SUM(1)", "Europe/Paris"]
    assert rows[2][2:] == ["x@example.com", "Eve", "multi\nline", ""]  # a line break in the subject field
    assert rows[3][2:] == ["y@example.com", "Yan", "Köln", "Mars/Olympus"] and "Mars/Olympus" in rows[3][1]
    assert rows[4][2:] == ["", "Nameless", "Bonn", ""] and rows[4][1] == "empty email"
    for row in rows:
        assert all(cell[:1] not in FORMULA_LEADS for cell in row), row

    # Fixed and with `line` and `reason` deleted, the rows import with their fields as they were.
    fixed = [row[2:] for row in rows]
    fixed[1][0], fixed[2][2], fixed[3][3], fixed[4][0] = "jo@example.com", "Ulm", "Europe/Rome", "n@example.com"
    cli = Cli(db)
    code, _, err = cli("import", "1", str(write_rows(tmp_path / "fixed.csv", fixed)))
    assert code == 0 and "imported 4 recipients" in err, err
    assert ledger(db, 1)[1:] == [
        ("jo@example.com", "Smith, Jo", "Europe/Paris", {"=city": "=SUM(1)"}),
        ("x@example.com", "Eve", "", {"=city": "Ulm"}),
        ("y@example.com", "Yan", "Europe/Rome", {"=city": "Köln"}),
        ("n@example.com", "Nameless", "", {"=city": "Bonn"}),
    ]


def test_rejects_file_without_rejects_is_the_bare_header(tmp_path: Path, db: Path, text: Path) -> None:
    rejects = tmp_path / "rejects.csv"
    Cli(db).ok(*new_args(text, write_rows(tmp_path / "people.csv", PEOPLE)), "--rejects", str(rejects))
    assert read_rows(rejects) == [["line", "reason"]]


def test_rejects_help_says_what_the_file_holds() -> None:
    for command in (["new", "--help"], ["import", "--help"]):
        code, out, _ = Cli(Path(os.devnull))(*command)
        assert code == 0 and "the row's own cells" in " ".join(out.split()), out


async def test_rows_with_columns_the_header_lacks_stop_the_export(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Recipients imported between the pass that finds the columns and the one that writes: the
    export stops rather than drop their values, and leaves no file."""
    from mailtower.core import exports
    from mailtower.core.errors import UserError

    people = write_rows(tmp_path / "a.csv", [["email", "city"], ["a@example.com", "Köln"]])
    store = await open_store(tmp_path / "m.db")
    try:
        mailing_id, _ = await create_mailing(store, Draft("m", "s", "news@example.org", "hi", None), people,
                                             lambda row: None)

        async def before_the_import(*args: object, **kwargs: object) -> exports.Columns:
            return exports.Columns()

        monkeypatch.setattr(exports, "remaining_columns", before_the_import)
        with pytest.raises(UserError, match="export again"):
            await export_remaining_csv(store, mailing_id, tmp_path / "out.csv")
    finally:
        await store.close()
    assert not (tmp_path / "out.csv").exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
