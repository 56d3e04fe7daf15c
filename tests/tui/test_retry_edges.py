"""Hostile edges of Retry failed with suppression (issue 13, items 6 and 9), found in review:
retries at the same time, a retry with nothing to send, and the counts after suppression and
retry, which must agree everywhere (status --json, `remaining`, the ledger's rows)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path

from mailtower.core.domain import MailingState, Section
from mailtower.core.sink import Sink
from mailtower.tui.screens.confirm import ConfirmDialog
from tests.helpers import Cli, recipients, write_csv

from .pilot import dashboard_app, focus_row, running, state_of
from .test_app import choose
from .conftest import wait_for

FAULTS = {
    "user1@example.com": ("rcpt", "550 5.1.1 no such user"),  # suppressed by the sender
    "user2@example.com": ("data", "554 5.7.1 rejected by policy"),  # may pass
    "user3@example.com": ("data", "554 5.7.1 rejected by policy"),  # may pass, suppressed by hand later
    "user4@example.com": ("data", "550 5.6.0 bad content"),  # permanent, not a mailbox
}


def body_file(tmp_path: Path) -> Path:
    path = tmp_path / "body.txt"
    path.write_text("Hello {{ name }}\n", encoding="utf-8")
    return path


def finished_with_failures(tmp_path: Path, sink: Sink, n: int = 8) -> tuple[Cli, int]:
    cli = Cli(tmp_path / "r.db", sink.port, MAILTOWER_RETRY_BASE="0.05", MAILTOWER_RETRY_MAX="0.2")
    people = write_csv(tmp_path / "p.csv", recipients(n))
    mailing_id = int(cli.ok("new", "--name", "n", "--subject", "Hi", "--from", "news@example.org",
                            "--text", str(body_file(tmp_path)), "--recipients", str(people), "--now"))
    runner = cli.popen("run", "--until-idle")  # its own process: callable from a test's event loop too
    assert runner.wait(timeout=60) == 0
    return cli, mailing_id


def faulty(on: list[bool]):  # type: ignore[no-untyped-def]
    def fault(stage: str, address: str, attempt: int) -> str | None:
        rule = FAULTS.get(address)
        return rule[1] if on[0] and rule and rule[0] == stage else None

    return fault


def assert_counts_agree(cli: Cli, mailing_id: int) -> dict[str, int]:
    """The mailing's counters, its rows, status --json and `remaining` say the same."""
    with sqlite3.connect(cli.db) as conn:
        rows = Counter(s for (s,) in conn.execute("SELECT state FROM recipients WHERE mailing_id = ?", (mailing_id,)))
        total, sent, failed, suppressed, in_doubt = conn.execute(
            "SELECT total, sent, failed, suppressed, in_doubt FROM mailings WHERE id = ?", (mailing_id,)).fetchone()
        doubt_rows = conn.execute(
            "SELECT COUNT(*) FROM recipients WHERE mailing_id = ? AND in_doubt = 1 AND state IN ('pending', 'sending', 'deferred')",
            (mailing_id,)).fetchone()[0]
    remaining = rows["pending"] + rows["sending"] + rows["deferred"]
    assert (total, sent, failed, suppressed) == (sum(rows.values()), rows["sent"], rows["failed"], rows["suppressed"])
    assert in_doubt == doubt_rows
    doc = json.loads(cli.ok("status", "--json"))
    (entry,) = [m for section in doc.values() if isinstance(section, list) for m in section if m.get("id") == mailing_id]
    assert (entry["sent"], entry["failed"], entry["remaining"]) == (sent, failed, remaining)
    assert entry["total"] == entry["sent"] + entry["failed"] + entry["suppressed"] + entry["remaining"]
    listed = cli.ok("remaining", str(mailing_id)).splitlines()
    assert len(listed) == remaining
    return {"sent": sent, "failed": failed, "suppressed": suppressed, "remaining": remaining}


def test_counts_agree_everywhere_through_suppression_and_retry(tmp_path: Path) -> None:
    on = [True]
    with Sink(fault=faulty(on)) as sink:
        cli, mailing_id = finished_with_failures(tmp_path, sink)
        assert assert_counts_agree(cli, mailing_id) == {"sent": 4, "failed": 4, "suppressed": 0, "remaining": 0}
        cli.ok("suppress", "add", "user3@example.com", "--reason", "unsubscribed by phone")
        on[0] = False
        out = cli("retry", str(mailing_id), "--all")
        assert out[0] == 0 and "2 failed recipients sent again (2 suppressed kept as failed)" in out[2], out
        assert assert_counts_agree(cli, mailing_id) == {"sent": 4, "failed": 2, "suppressed": 0, "remaining": 2}
        cli.ok("suppress", "add", "user4@example.com")  # suppressed while queued: skipped when claimed
        cli.ok("run", "--until-idle")
        received = sink.received()
    assert "user3@example.com" not in received and "user4@example.com" not in received
    assert assert_counts_agree(cli, mailing_id) == {"sent": 5, "failed": 2, "suppressed": 1, "remaining": 0}


def test_two_retries_at_once_requeue_once(tmp_path: Path) -> None:
    on = [True]
    with Sink(fault=faulty(on)) as sink:
        cli, mailing_id = finished_with_failures(tmp_path, sink)
        procs = [cli.popen("retry", str(mailing_id), "--all", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(3)]
        results = [(p.wait(timeout=60), p.stderr.read().decode()) for p in procs]  # type: ignore[union-attr]
        for p in procs:
            p.stderr.close()  # type: ignore[union-attr]
            p.stdout.close()  # type: ignore[union-attr]
    assert sorted(code for code, _ in results) == [0, 2, 2], results
    for code, err in results:
        if code == 2:
            assert "queued" in err and len(err.strip().splitlines()) == 1
    with sqlite3.connect(cli.db) as conn:
        kinds = [k for (k,) in conn.execute("SELECT kind FROM events WHERE mailing_id = ? AND kind = 'retry'", (mailing_id,))]
    assert kinds == ["retry"]
    assert assert_counts_agree(cli, mailing_id)["remaining"] == 3  # user1 (unknown mailbox) is suppressed


def test_a_retry_with_nothing_to_send_changes_nothing(tmp_path: Path) -> None:
    on = [True]
    with Sink(fault=faulty(on)) as sink:
        cli, mailing_id = finished_with_failures(tmp_path, sink)
    cli.ok("suppress", "add", "user2@example.com", "user3@example.com")
    with sqlite3.connect(cli.db) as conn:
        before = conn.execute("SELECT * FROM mailings").fetchall(), conn.execute("SELECT * FROM events").fetchall()
    code, out, err = cli("retry", str(mailing_id))  # 5.7.1 ones suppressed, the others permanent
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "no failed recipient to send again" in err and "--all" in err
    with sqlite3.connect(cli.db) as conn:
        after = conn.execute("SELECT * FROM mailings").fetchall(), conn.execute("SELECT * FROM events").fetchall()
    assert before == after


async def test_the_dashboard_retry_after_another_process_retried_is_refused_in_one_notice(tmp_path: Path) -> None:
    on = [True]
    with Sink(fault=faulty(on)) as sink:  # the CLI runs its own event loop: in a thread here
        cli, mailing_id = await asyncio.to_thread(finished_with_failures, tmp_path, sink)
    app = dashboard_app(cli.db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.INACTIVE, mailing_id)
        await choose(pilot, "retry")
        await wait_for(lambda: isinstance(app.screen, ConfirmDialog), what="the confirmation")
        other = cli.popen("retry", str(mailing_id))  # meanwhile, from another process
        assert await asyncio.to_thread(other.wait, 60) == 0
        await pilot.press("r")
        await wait_for(lambda: any("Not done" == n.title for n in app._notifications), what="the refusal")
        (note,) = [n for n in app._notifications if n.title == "Not done"]
        assert "queued" in str(note.message) and "\n" not in str(note.message)
    assert await state_of(cli.db, mailing_id) is MailingState.QUEUED
    counts = await asyncio.to_thread(assert_counts_agree, cli, mailing_id)
    assert counts["remaining"] == 2  # the policy refusals (5.7.1)


def test_a_retry_while_a_sender_runs_is_taken_up_by_it(tmp_path: Path) -> None:
    """The sender that just finished the mailing (and keeps running) sends the retry, and a
    second retry while it is current is refused without touching it."""
    from tests.helpers import wait_until

    on = [True]
    with Sink(fault=faulty(on)) as sink:
        cli = Cli(tmp_path / "w.db", sink.port, MAILTOWER_RETRY_BASE="0.05", MAILTOWER_RETRY_MAX="0.2")
        people = write_csv(tmp_path / "p.csv", recipients(8))
        mailing_id = int(cli.ok("new", "--name", "n", "--subject", "Hi", "--from", "news@example.org",
                                "--text", str(body_file(tmp_path)), "--recipients", str(people), "--now"))
        runner = cli.popen("run", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            def state() -> str:
                with sqlite3.connect(cli.db) as conn:
                    return str(conn.execute("SELECT state FROM mailings WHERE id = ?", (mailing_id,)).fetchone()[0])

            wait_until(lambda: state() == "completed", what="the first run to complete")
            on[0] = False
            cli.ok("retry", str(mailing_id), "--all")
            code, _, err = cli("retry", str(mailing_id), "--all")  # queued or sending by now: refused
            assert code == 2 and len(err.strip().splitlines()) == 1
            wait_until(lambda: state() == "completed", what="the retry to complete")
        finally:
            runner.terminate()
            _, err_bytes = runner.communicate(timeout=60)
        assert runner.returncode == 0, err_bytes.decode()
        received = sink.received()
    assert received["user2@example.com"] == received["user3@example.com"] == received["user4@example.com"] == 1
    assert "user1@example.com" not in received  # its unknown mailbox is suppressed
    assert assert_counts_agree(cli, mailing_id) == {"sent": 7, "failed": 1, "suppressed": 0, "remaining": 0}
