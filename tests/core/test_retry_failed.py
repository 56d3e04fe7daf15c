"""Retry failed (issue 13, item 9): a finished mailing goes back to the queue for its failed
recipients whose failure may pass, never for suppressed addresses; against a real SMTP sink whose
faults are switched off between the runs."""

from __future__ import annotations

import pytest
from collections import Counter
from pathlib import Path

from mailtower.core.sink import Sink
from tests.helpers import Cli, recipients, write_csv
from tests.pg_server import connect


@pytest.fixture
def db(db_target):
    """Every test here runs on SQLite and on PostgreSQL (issue 15), except those marked SQLite-only."""
    return db_target

FAULTS = {
    "user1@example.com": ("rcpt", "550 5.1.1 no such user"),  # suppressed by the sender
    "user2@example.com": ("data", "554 5.7.1 rejected by policy"),  # may pass
    "user3@example.com": ("rcpt", "451 4.3.0 try again later"),  # deferred until given up
    "user4@example.com": ("data", "550 5.6.0 bad content"),  # permanent, not a mailbox
}


def ledger(db: Path, mailing_id: int) -> dict[str, str]:
    with connect(db) as conn:
        return dict(conn.execute("SELECT email, state FROM recipients WHERE mailing_id = ?", (mailing_id,)).fetchall())


def mailing_row(db: Path, mailing_id: int) -> tuple:
    with connect(db) as conn:
        return conn.execute(
            "SELECT state, sent, failed, deferred, in_doubt, suppressed FROM mailings WHERE id = ?", (mailing_id,)
        ).fetchone()


def events(db: Path, mailing_id: int) -> list[tuple[str, str]]:
    with connect(db) as conn:
        return conn.execute("SELECT kind, detail FROM events WHERE mailing_id = ? ORDER BY id", (mailing_id,)).fetchall()


def test_retry_sends_again_to_failures_that_may_pass_then_all_but_suppressed(tmp_path: Path, body: Path, db: Path) -> None:
    faulty = True

    def fault(stage: str, address: str, attempt: int) -> str | None:
        where, reply = FAULTS.get(address, ("", ""))
        return reply if faulty and stage == where else None

    with Sink(fault=fault) as sink:
        cli = Cli(db, sink.port, MAILTOWER_RETRY_BASE="0.05", MAILTOWER_RETRY_MAX="0.1", MAILTOWER_RETRY_MAX_AGE="0.3")
        people = write_csv(tmp_path / "p.csv", [dict(r, code="x") for r in recipients(6)])
        mailing_id = int(cli.ok("new", "--name", "n", "--subject", "Hi", "--from", "news@example.org",
                                "--text", str(body), "--recipients", str(people), "--now"))
        cli.ok("run", "--until-idle")
        assert mailing_row(db, mailing_id) == ("completed", 2, 4, 0, 0, 0)
        faulty = False

        code, _, err = cli("retry", str(mailing_id))
        assert code == 0, err
        assert "2 failed recipients sent again" in err and "1 suppressed" in err and "1 failed permanently" in err
        assert mailing_row(db, mailing_id)[:3] == ("queued", 2, 2)
        assert ledger(db, mailing_id)["user2@example.com"] == "pending"
        assert ledger(db, mailing_id)["user3@example.com"] == "pending"
        assert events(db, mailing_id)[-2][0] == "retry"
        cli.ok("run", "--until-idle")
        assert mailing_row(db, mailing_id) == ("completed", 4, 2, 0, 0, 0)

        cli.ok("retry", str(mailing_id), "--all")
        assert ledger(db, mailing_id)["user4@example.com"] == "pending"
        assert ledger(db, mailing_id)["user1@example.com"] == "failed"
        cli.ok("run", "--until-idle")
        received = sink.received()

    assert mailing_row(db, mailing_id) == ("completed", 5, 1, 0, 0, 0)
    assert "user1@example.com" not in received  # suppressed: never again, even with --all
    assert received == Counter({f"user{i}@example.com": 1 for i in (0, 2, 3, 4, 5)})

    # Nothing left to retry: one line, exit 2, the mailing stays as it was.
    code, _, err = cli("retry", str(mailing_id), "--all")
    assert code == 2 and "no failed recipient" in err and len(err.strip().splitlines()) == 1
    assert mailing_row(db, mailing_id)[0] == "completed"


def test_retry_is_refused_for_mailings_that_are_not_finished(cli: Cli, tmp_path: Path, body: Path) -> None:
    people = write_csv(tmp_path / "p.csv", [dict(r, code="x") for r in recipients(2)])
    mailing_id = int(cli.ok("new", "--name", "n", "--subject", "Hi", "--from", "news@example.org",
                            "--text", str(body), "--recipients", str(people)))
    code, _, err = cli("retry", str(mailing_id))
    assert code == 2 and "draft" in err and "stopped or completed" in err
    cli.ok("send-now", str(mailing_id))
    code, _, err = cli("retry", str(mailing_id), "--all")
    assert code == 2 and "queued" in err
    code, _, err = cli("retry", str(mailing_id), "--all", "--temporary")
    assert code == 2 and "not allowed with" in err
    assert mailing_row(cli.db, mailing_id)[0] == "queued"


def test_a_stopped_mailing_retries_its_failed_and_keeps_its_remaining(tmp_path: Path, body: Path, db: Path) -> None:
    with Sink(fault=lambda stage, address, attempt: "554 5.7.1 policy" if stage == "data" and attempt == 1 and address == "user0@example.com" else None) as sink:
        cli = Cli(db, sink.port)
        people = write_csv(tmp_path / "p.csv", [dict(r, code="x") for r in recipients(3)])
        mailing_id = int(cli.ok("new", "--name", "n", "--subject", "Hi", "--from", "news@example.org",
                                "--text", str(body), "--recipients", str(people), "--now"))
        cli.ok("run", "--until-idle")
        cli.ok("retry", str(mailing_id))
        cli.ok("stop", str(mailing_id))
        assert mailing_row(db, mailing_id)[:3] == ("stopped", 2, 0)
        cli.ok("restart", str(mailing_id))
        cli.ok("run", "--until-idle")
        assert sink.received()["user0@example.com"] == 1
    assert mailing_row(db, mailing_id) == ("completed", 3, 0, 0, 0, 0)
