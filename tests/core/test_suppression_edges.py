"""Hostile edges of suppression and one-click unsubscribe (issue 13, items 6 and 7), found in review.

Real parts only: a real SMTP sink (core/sink.py) on 127.0.0.1, real SQLite files, the CLI."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
from pathlib import Path

from mailtower.core.sink import Sink
from tests.helpers import Cli, recipients, wait_until, write_csv


def new_mailing(cli: Cli, tmp_path: Path, body: Path, n: int, *extra: str, name: str = "news") -> int:
    people = write_csv(tmp_path / f"{name}.csv", [dict(r, code="x") for r in recipients(n)])
    code, out, err = cli(
        "new", "--name", name, "--subject", "Hi {{ name }}", "--from", "news@example.org",
        "--text", str(body), "--recipients", str(people), *extra,
    )
    assert code == 0, err
    return int(out)


def row_states(db: Path, mailing_id: int) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT email, state FROM recipients WHERE mailing_id = ?", (mailing_id,)))


def counters(db: Path, mailing_id: int) -> tuple:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT state, total, sent, failed, suppressed, in_doubt FROM mailings WHERE id = ?", (mailing_id,)
        ).fetchone()


# ---- the suppression check while a mailing is sending ------------------------------------------


def test_an_address_suppressed_while_sending_is_not_sent_after_the_add_commits(tmp_path: Path, body: Path) -> None:
    """The sender holds claimed rows in memory ahead of its connections; an address suppressed
    after its row was claimed but before it is sent must not be sent (the `sending` mark is
    where the decision is made, in the same transaction order as the `suppress add`)."""
    held, release = threading.Event(), threading.Event()

    def fault(stage: str, address: str, attempt: int) -> str | None:
        if stage == "rcpt" and address == "user0@example.com":
            held.set()
            release.wait(20)  # bounded: the sink answers the first recipient once the test says so
        return None

    with Sink(fault=fault) as sink:
        cli = Cli(tmp_path / "s.db", sink.port, MAILTOWER_SMTP_CONNECTIONS="1")
        mailing_id = new_mailing(cli, tmp_path, body, 10, "--now")
        runner = cli.popen("run", "--until-idle", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_until(held.is_set, what="the first message to reach RCPT")
            # Every row is claimed by now (one batch holds all ten); two of them are suppressed.
            cli.ok("suppress", "add", "user5@example.com", "USER9@example.com")
            release.set()
            _, err = runner.communicate(timeout=60)
            assert runner.returncode == 0, err.decode()
        finally:
            release.set()
            if runner.poll() is None:
                runner.kill()
                runner.wait()
        received = sink.received()
    assert "user5@example.com" not in received and "user9@example.com" not in received
    assert len(received) == 8
    states = row_states(cli.db, mailing_id)
    assert states["user5@example.com"] == states["user9@example.com"] == "suppressed"
    assert counters(cli.db, mailing_id) == ("completed", 10, 8, 0, 2, 0)
    doc = json.loads(cli.ok("status", "--json"))["inactive"][0]
    assert (doc["remaining"], doc["failed"], doc["sent"]) == (0, 0, 8)
