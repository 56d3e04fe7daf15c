"""Hostile recipient files through the command line: valid rows in, each reject reported, structural errors change nothing."""

from __future__ import annotations

import pytest

import csv
import json
from pathlib import Path

from tests.helpers import Cli
from tests.pg_server import connect

@pytest.fixture
def db(db_target):
    """Every test here that takes `db` runs on SQLite and on PostgreSQL (issue 15)."""
    return db_target


HOSTILE = (
    "\ufeffEmail,Name,code\r\n"
    "ann@example.com,Ann,1\r\n"
    "\r\n"
    "not-an-address,Bob,2\r\n"
    "ANN@example.com,Ann again,3\r\n"
    "cid@example.com,\"Cid\r\nInjected: yes\",4\r\n"
    "dee@example.com,Dee,5\r\n"
    ",Nobody,6\r\n"
)


def emails(db: Path) -> list[str]:
    with connect(db) as conn:
        return [e for (e,) in conn.execute("SELECT email FROM recipients ORDER BY id")]


def test_hostile_file_imports_valid_rows_and_reports_each_reject(cli: Cli, tmp_path: Path, body: Path, db: Path) -> None:
    people = tmp_path / "hostile.csv"
    people.write_bytes(HOSTILE.encode("utf-8"))
    rejects = tmp_path / "rejects.csv"
    body.write_text("Hi {{ name }} {{ code }}")
    code, out, err = cli("new", "--name", "h", "--subject", "s", "--from", "news@example.org", "--text", str(body),
                         "--recipients", str(people), "--rejects", str(rejects))
    assert code == 0, err
    assert emails(db) == ["ann@example.com", "dee@example.com"]
    lines = err.strip().splitlines()
    assert any(line.startswith(f"{people}:4:") for line in lines)  # malformed address
    assert any(line.startswith(f"{people}:5:") and "duplicate" in line for line in lines)
    assert any(line.startswith(f"{people}:6:") and "name" in line for line in lines)  # line break in a header value
    assert any(line.startswith(f"{people}:9:") for line in lines)  # empty address
    with rejects.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0][:2] == ["line", "reason"] and {r[0] for r in rows[1:]} >= {"4", "6", "9"}
    assert json.loads(cli.ok("status", "--json"))["inactive"][0]["total"] == 2


def test_invalid_utf8_anywhere_imports_nothing(cli: Cli, tmp_path: Path, body: Path, db: Path) -> None:
    good = "".join(f"user{i}@example.com,U{i}\n" for i in range(20_000))
    people = tmp_path / "bad.csv"
    people.write_bytes(b"email,name\n" + good.encode() + b"late@example.com,\xff\xfe\n")
    code, out, err = cli("new", "--name", "h", "--subject", "s", "--from", "news@example.org", "--text", str(_plain(tmp_path)),
                         "--recipients", str(people))
    assert code == 2
    assert "20002" in err and "UTF-8" in err and len(err.strip().splitlines()) == 1
    assert out == ""
    if isinstance(db, Path):  # the database the refused `new` made is gone again (nothing was created)
        assert not db.exists()
    else:
        assert json.loads(cli.ok("status", "--json")) == {"current": [], "scheduled": [], "inactive": []}


def test_import_into_existing_mailing_is_all_or_nothing(cli: Cli, tmp_path: Path, db: Path) -> None:
    first = tmp_path / "first.csv"
    first.write_text("email,name\na@example.com,A\n")
    mailing_id = int(cli.ok("new", "--name", "m", "--subject", "s", "--from", "news@example.org",
                            "--text", str(_plain(tmp_path)), "--recipients", str(first)))
    no_email = tmp_path / "no_email.csv"
    no_email.write_text("mail,name\nb@example.com,B\n")
    code, _, err = cli("import", str(mailing_id), str(no_email))
    assert code == 2 and "email" in err
    broken = tmp_path / "broken.csv"
    broken.write_bytes(b"email,name\nb@example.com,B\nc@example.com,\"unterminated\n")
    code, _, err = cli("import", str(mailing_id), str(broken))
    assert code == 2
    assert emails(db) == ["a@example.com"]
    cli.ok("send-now", str(mailing_id))
    code, _, err = cli("import", str(mailing_id), str(first))
    assert code == 2 and "queued" in err


def _plain(tmp_path: Path) -> Path:
    path = tmp_path / "plain.txt"
    path.write_text("Hello\n")
    return path
