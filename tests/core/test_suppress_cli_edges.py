"""`suppress remove` is all or nothing and says what it did in one line; `suppress list` shows the
real address (so it can be pasted into `suppress remove`), control characters still escaped."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

from tests.helpers import Cli


def listed(cli: Cli) -> set[str]:
    return {json.loads(line)["email"] for line in cli.ok("suppress", "list", "--json").splitlines()}


def test_removing_what_is_not_an_address_is_one_line_exit_2_and_removes_nothing(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "t.db")
    cli.ok("suppress", "add", "a@example.com", "b@example.com")
    for args in (["bad"], ["a@example.com", "bad"], ["bad", "a@example.com"], ["a@example.com", "  "]):
        code, out, err = cli("suppress", "remove", *args)
        assert code == 2 and out == "" and len(err.splitlines()) == 1, (args, err)
        assert err.startswith("mailtower: suppress remove: ") and "nothing was removed" in err
        assert listed(cli) == {"a@example.com", "b@example.com"}, args
    code, _, err = cli("suppress", "remove", "bad")
    assert "'bad' is not a valid address" in err


def test_an_address_not_on_the_list_is_one_line_exit_0(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "t.db")
    cli.ok("suppress", "add", "a@example.com", "b@example.com")
    code, out, err = cli("suppress", "remove", "zed@example.com")
    assert (code, out, err) == (0, "", "zed@example.com: not on the suppression list; nothing removed\n")
    code, out, err = cli("suppress", "remove", "a@example.com", "zed@example.com", "yan@example.com")
    assert (code, out) == (0, "") and err == (
        "removed 1 address from the suppression list; 2 addresses not on the suppression list: "
        "zed@example.com, yan@example.com\n")
    assert listed(cli) == {"b@example.com"}
    # --quiet silences success, not this: what was asked did not all happen.
    code, out, err = cli("suppress", "remove", "zed@example.com", "--quiet")
    assert code == 0 and err.count("\n") == 1 and "not on the suppression list" in err
    code, out, err = cli("suppress", "remove", "B@Example.com", "--quiet")
    assert (code, out, err) == (0, "", "")
    assert listed(cli) == set()


def test_many_absent_addresses_stay_one_line(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "t.db")
    code, _, err = cli("suppress", "remove", *(f"u{i}@example.com" for i in range(25)))
    assert code == 0 and len(err.splitlines()) == 1
    assert err.startswith("25 addresses not on the suppression list: u0@example.com, ") and "and 15 more" in err


def test_remove_takes_the_address_as_the_listing_shows_it(tmp_path: Path) -> None:
    """The listing writes "'=d@example.org" (it may end up in a spreadsheet); pasted back into
    `suppress remove`, that names the entry "=d@example.org", as `import` reads such a cell."""
    cli = Cli(tmp_path / "t.db")
    cli.ok("suppress", "add", "--", "=d@example.org", "+e@example.org", "-f@example.org")
    shown = [line.split("\t")[0] for line in cli.ok("suppress", "list").splitlines()]
    assert sorted(shown) == ["'+e@example.org", "'-f@example.org", "'=d@example.org"]
    for address in shown:  # copied from the listing as it is
        code, _, err = cli("suppress", "remove", "--", address)
        assert code == 0 and err == "removed 1 address from the suppression list\n", (address, err)
    assert listed(cli) == set()


def test_the_listing_still_escapes_control_characters(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    cli = Cli(db)
    cli.ok("suppress", "add", "a@example.com")
    with sqlite3.connect(db) as conn:  # a bounce's reason is a server's words
        conn.execute("UPDATE suppression SET source = 'bounce', reason = ?", ("=550\tgone\x1b]0;x\x07\nforged\u202e",))
    out = cli.ok("suppress", "list")
    assert out.count("\n") == 1 and out.count("\t") == 4
    assert out.rstrip("\n").split("\t")[4] == "'=550\\tgone\\x1b]0;x\\x07\\nforged\\u202e"


def test_an_entry_that_no_longer_validates_can_still_be_removed(tmp_path: Path) -> None:
    special = Cli(tmp_path / "t.db", MAILTOWER_ALLOW_SPECIAL_DOMAINS="1")
    special.ok("suppress", "add", "bob@corp.local")
    cli = Cli(tmp_path / "t.db")
    code, _, err = cli("suppress", "remove", "bob@corp.local")
    assert code == 0 and err == "removed 1 address from the suppression list\n", err
    code, _, err = cli("suppress", "remove", "bob@corp.local")  # gone now: not valid here, not on the list
    assert code == 2 and "special-use" in err and len(err.splitlines()) == 1


def test_suppress_import_of_an_export_takes_the_addresses_without_the_apostrophe(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "t.db")
    people = tmp_path / "p.csv"
    with people.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["email", "name"], ["=d@example.org", "D"], ["plain@example.org", "P"]])
    body = tmp_path / "b.txt"
    body.write_text("Hi\n", encoding="utf-8")
    mailing = cli.ok("new", "--name", "n", "--subject", "s", "--from", "news@example.org", "--text", str(body),
                     "--recipients", str(people)).strip()
    exported = tmp_path / "left.csv"
    cli.ok("remaining", mailing, "--csv", "-o", str(exported))
    assert "'=d@example.org" in exported.read_text(encoding="utf-8")
    code, _, err = cli("suppress", "import", str(exported))
    assert code == 0 and "suppressed 2 addresses" in err, err
    assert listed(cli) == {"=d@example.org", "plain@example.org"}


def test_remove_help_says_what_happens() -> None:
    code, out, _ = Cli(Path("/dev/null"))("suppress", "remove", "--help")
    assert code == 0 and "All or nothing" in out and "exit 2" in out
