"""The suppression list (issue 13, item 6): filled by the sender from unknown-mailbox failures
(a real SMTP sink injecting the replies), kept by hand, skipped by imports and at claim time."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mailtower.core.sink import Sink
from mailtower.core.smtp_replies import failure_may_pass, mailbox_gone
from tests.helpers import Cli, recipients, write_csv
from tests.pg_server import connect


@pytest.fixture
def db(db_target):
    """Every test here runs on SQLite and on PostgreSQL (issue 15), except those marked SQLite-only."""
    return db_target


def new_mailing(cli: Cli, tmp_path: Path, body: Path, n: int, *extra: str, name: str = "news") -> tuple[int, str]:
    people = write_csv(tmp_path / f"{name}.csv", [dict(r, code="x") for r in recipients(n)])
    code, out, err = cli(
        "new", "--name", name, "--subject", "Hi {{ name }}", "--from", "news@example.org",
        "--text", str(body), "--recipients", str(people), *extra,
    )
    assert code == 0, err
    return int(out), err


def suppressed(cli: Cli) -> dict[str, dict]:
    return {d["email"]: d for d in map(json.loads, cli.ok("suppress", "list", "--json").splitlines())}


def counters(db: Path, mailing_id: int) -> tuple:
    with connect(db) as conn:
        return conn.execute(
            "SELECT state, total, sent, failed, suppressed FROM mailings WHERE id = ?", (mailing_id,)
        ).fetchone()


@pytest.mark.parametrize(
    ("code", "text", "gone"),
    [
        (550, "5.1.1 <x@example.com>: Recipient address rejected: User unknown", True),
        (550, "5.1.2 bad destination system", True),
        (553, "5.1.10 Recipient address has null MX", True),
        (550, "5.2.1 mailbox disabled", True),
        (550, "User unknown in virtual mailbox table", True),  # no enhanced code: the words decide
        (551, "no such user here", True),
        (550, "5.0.0 No such mailbox", True),
        (550, "mailbox unavailable", False),  # RFC 5321's catch-all: policy blocks say it too
        (550, "5.7.1 Message rejected as spam", False),
        (554, "5.7.1 User unknown? no: blocked by policy", False),  # the enhanced code decides
        (450, "4.1.1 user unknown, try later", False),  # temporary
        (552, "5.2.2 mailbox full", False),
        (None, "recipient address needs SMTPUTF8", False),
        (451, "gave up after 5.0 h of temporary failures; last: 4.1.1 user unknown", False),
    ],
)
def test_which_failures_mean_the_mailbox_is_gone(code: int | None, text: str, gone: bool) -> None:
    assert mailbox_gone(code, text) is gone
    if gone:
        assert not failure_may_pass(code, text)


FAULTS = {
    "user1@example.com": "550 5.1.1 <user1@example.com>: Recipient address rejected: User unknown",
    "user2@example.com": "550 5.7.1 Service unavailable; client host blocked",
    "user3@example.com": "550 User unknown in local recipient table",
    "user4@example.com": "553 5.1.10 Recipient address has null MX",
    "user5@example.com": "550 5.2.1 The email account that you tried to reach is disabled",
    "user6@example.com": "550 mailbox unavailable",
}


def test_unknown_and_disabled_mailboxes_are_suppressed_by_the_sender(tmp_path: Path, body: Path, db: Path) -> None:
    def fault(stage: str, address: str, attempt: int) -> str | None:
        if address == "user7@example.com" and stage == "rcpt" and attempt == 1:
            return "450 4.2.1 mailbox busy"
        return FAULTS.get(address) if stage == "rcpt" else None

    with Sink(fault=fault) as sink:
        cli = Cli(db, sink.port, MAILTOWER_RETRY_BASE="0.05", MAILTOWER_RETRY_MAX="0.2")
        mailing_id, _ = new_mailing(cli, tmp_path, body, 10, "--now")
        cli.ok("run", "--until-idle")
        assert "user7@example.com" in sink.received()
    listed = suppressed(cli)
    assert set(listed) == {"user1@example.com", "user3@example.com", "user4@example.com", "user5@example.com"}
    entry = listed["user1@example.com"]
    assert entry["source"] == "bounce" and entry["mailing_id"] == mailing_id
    assert entry["reason"].startswith("5.1.1") and entry["added_at"]
    assert counters(db, mailing_id) == ("completed", 10, 4, 6, 0)


def test_new_and_import_skip_suppressed_addresses_and_say_how_many(cli: Cli, tmp_path: Path, body: Path) -> None:
    cli.ok("suppress", "add", "user1@example.com", "USER2@Example.COM", "--reason", "asked by phone")
    mailing_id, err = new_mailing(cli, tmp_path, body, 5)
    assert "2 suppressed addresses skipped" in err
    emails = [json.loads(line)["email"] for line in cli.ok("recipients", str(mailing_id), "--json").splitlines()]
    assert emails == ["user0@example.com", "user3@example.com", "user4@example.com"]

    more = write_csv(tmp_path / "more.csv", [{"email": "user2@example.com", "code": "y"}, {"email": "new@example.com", "code": "z"}])
    code, _, err = cli("import", str(mailing_id), str(more))
    assert code == 0 and "1 suppressed address skipped" in err
    only_suppressed = write_csv(tmp_path / "only.csv", [{"email": "user1@example.com", "code": "y"}])
    code, _, err = cli("import", str(mailing_id), str(only_suppressed))
    assert code == 2 and "1 suppressed" in err and len(err.strip().splitlines()) == 1
    assert counters(cli.db, mailing_id)[1] == 4


def test_an_address_suppressed_while_queued_is_skipped_when_claimed(cli: Cli, sink: Sink, tmp_path: Path, body: Path) -> None:
    mailing_id, _ = new_mailing(cli, tmp_path, body, 10, "--now")
    cli.ok("suppress", "add", "user3@example.com", "user8@example.com")
    cli.ok("run", "--until-idle")
    received = sink.received()
    assert "user3@example.com" not in received and "user8@example.com" not in received and len(received) == 8
    assert set(received.values()) == {1}  # the others once each
    # Neither remaining nor failed: the mailing completed with the two counted as suppressed.
    assert counters(cli.db, mailing_id) == ("completed", 10, 8, 0, 2)
    listed = cli.ok("recipients", str(mailing_id), "--state", "suppressed")
    assert [line.split("\t")[:2] for line in listed.splitlines()] == [
        ["user3@example.com", "suppressed"], ["user8@example.com", "suppressed"]]
    doc = json.loads(cli.ok("status", "--json"))["inactive"][0]
    assert (doc["remaining"], doc["failed"], doc["sent"]) == (0, 0, 8)


def test_every_row_suppressed_completes_the_mailing(cli: Cli, sink: Sink, tmp_path: Path, body: Path) -> None:
    mailing_id, _ = new_mailing(cli, tmp_path, body, 300, "--now")
    lines = "\n".join(f"user{i}@example.com" for i in range(300))
    (tmp_path / "all.txt").write_text(f"# every one\n{lines}\n", encoding="utf-8")
    cli.ok("suppress", "import", str(tmp_path / "all.txt"))
    cli.ok("run", "--until-idle")
    assert sink.received() == {}
    assert counters(cli.db, mailing_id) == ("completed", 300, 0, 0, 300)


def test_suppress_add_list_remove(cli: Cli, tmp_path: Path, body: Path) -> None:
    code, _, err = cli("suppress", "add", "a@example.com", "not an address")
    assert code == 2 and "not an address" in err and len(err.strip().splitlines()) == 1
    assert suppressed(cli) == {}  # all or nothing
    code, _, err = cli("suppress", "add", "a@example.com", "--reason", "bad\x1b[2Jreason")
    assert code == 2 and "--reason" in err and suppressed(cli) == {}

    cli.ok("suppress", "add", "a@example.com", "user0@example.com", "--reason", "asked")
    code, _, err = cli("suppress", "add", "A@example.com")
    assert code == 0 and "0 addresses" in err and "1 already" in err
    listed = suppressed(cli)
    assert listed["a@example.com"]["source"] == "manual" and listed["a@example.com"]["reason"] == "asked"
    table = cli.ok("suppress", "list")
    assert table.splitlines()[0].split("\t")[:2] == ["a@example.com", "manual"]

    code, _, err = cli("suppress", "remove", "user0@example.com", "zed@example.com")
    assert code == 0 and "zed@example.com: not on the suppression list" in err and "removed 1 address" in err
    assert set(suppressed(cli)) == {"a@example.com"}
    mailing_id, err = new_mailing(cli, tmp_path, body, 2)
    assert "suppressed" not in err and counters(cli.db, mailing_id)[1] == 2


def test_suppress_import_reads_addresses_csv_and_refuses_what_is_not_a_file(cli: Cli, tmp_path: Path) -> None:
    people = write_csv(tmp_path / "p.csv", [{"name": "A", "email": "a@example.com"}, {"name": "B", "email": "b@example.com"},
                                            {"name": "C", "email": "broken"}])
    code, _, err = cli("suppress", "import", str(people))
    assert code == 0 and "suppressed 2 addresses" in err and f"{people}:4:" in err
    assert suppressed(cli)["b@example.com"]["source"] == "import"

    code, _, err = cli("suppress", "import", str(tmp_path))
    assert code == 2 and len(err.strip().splitlines()) == 1
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n", encoding="utf-8")
    code, _, err = cli("suppress", "import", str(empty))
    assert code == 2 and "nothing to suppress" in err
    no_email = write_csv(tmp_path / "n.csv", [{"name": "A", "mail": "x@example.com"}])
    code, _, err = cli("suppress", "import", str(no_email))
    assert code == 2 and "'email' column" in err
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    pid = os.fork()
    if pid == 0:  # a writer that sends one address and closes
        with open(fifo, "w") as handle:
            handle.write("fifo@example.com\n")
        os._exit(0)
    try:
        cli.ok("suppress", "import", str(fifo))
    finally:
        os.waitpid(pid, 0)
    assert "fifo@example.com" in suppressed(cli)
