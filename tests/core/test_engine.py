"""End to end: the CLI, the sender and a real SMTP server (aiosmtpd on 127.0.0.1)."""

from __future__ import annotations

import json
import pytest
import subprocess
from collections import Counter
from pathlib import Path


from mailtower.core.lease import sender_lease
from mailtower.core.sink import Sink
from tests.helpers import Cli, recipients, wait_until, write_csv
from tests.pg_server import sql_rows


def status(cli: Cli) -> dict:
    return json.loads(cli.ok("status", "--json"))


def find(doc: dict, mailing_id: int) -> tuple[str, dict]:
    for section, items in doc.items():
        for item in items if section != "senders" else ():  # senders: the fleet (core/fleet.py)
            if item["id"] == mailing_id:
                return section, item
    raise AssertionError(f"mailing {mailing_id} not in status")


@pytest.fixture
def db(db_target):
    """Every test here runs on SQLite and on PostgreSQL (issue 15)."""
    return db_target


def ledger(db: Path, mailing_id: int) -> Counter[str]:
    return Counter(dict(sql_rows(db, "SELECT state, COUNT(*) FROM recipients WHERE mailing_id = ? GROUP BY state",
                                 (mailing_id,))))


def new_mailing(cli: Cli, tmp_path: Path, body: Path, n: int, *extra: str, name: str = "Spring sale", start: int = 0) -> int:
    rows = [dict(r, code=f"C{i}") for i, r in enumerate(recipients(n, start=start))]
    csv_path = write_csv(tmp_path / f"{name.replace(' ', '_')}.csv", rows)
    out = cli.ok(
        "new", "--name", name, "--subject", "Hello {{ name }}", "--from", "news@example.org",
        "--text", str(body), "--recipients", str(csv_path), *extra,
    )
    return int(out.strip())


def test_thousand_recipients_arrive_once_and_ledger_agrees(cli: Cli, sink: Sink, tmp_path: Path, body: Path, db: Path) -> None:
    mailing_id = new_mailing(cli, tmp_path, body, 1000, "--now")
    section, item = find(status(cli), mailing_id)
    assert section == "current" and item["state"] == "queued" and item["position"] == 1

    cli.ok("run", "--until-idle")

    received = sink.received()
    assert len(received) == 1000
    assert set(received.values()) == {1}
    assert ledger(db, mailing_id) == Counter({"sent": 1000})
    section, item = find(status(cli), mailing_id)
    assert section == "inactive"
    assert item["state"] == "completed"
    assert (item["sent"], item["failed"], item["remaining"], item["total"]) == (1000, 0, 0, 1000)
    assert item["finished_at"] is not None
    # Message-IDs are derived from (mailing, recipient): all distinct, all naming the mailing.
    ids = {d.message_id for d in sink.deliveries}
    assert len(ids) == 1000 and all(i.startswith(f"<m{mailing_id}.") for i in ids)


def test_merge_fields_reach_the_message(cli: Cli, sink: Sink, tmp_path: Path, body: Path) -> None:
    new_mailing(cli, tmp_path, body, 3, "--now")
    cli.ok("run", "--until-idle")
    assert len(sink.deliveries) == 3


def test_stop_mid_send_then_remaining_then_restart(tmp_path: Path, body: Path, db: Path) -> None:
    with Sink(latency=0.002) as sink:
        cli = Cli(db, sink.port, MAILTOWER_SMTP_CONNECTIONS="2", MAILTOWER_RATE="400")
        mailing_id = new_mailing(cli, tmp_path, body, 2000, "--now")
        runner = cli.popen("run", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: len(sink.deliveries) >= 200, what="200 deliveries")
            cli.ok("stop", str(mailing_id))
            # The sender notices within a second; in-flight messages finish and are recorded.
            wait_until(lambda: ledger(db, mailing_id).get("sending", 0) == 0, what="no rows in flight")
        finally:
            runner.terminate()
            runner.wait(timeout=20)
        section, item = find(status(cli), mailing_id)
        assert (section, item["state"]) == ("inactive", "stopped")
        received = sink.received()
        assert 200 <= len(received) < 2000
        assert set(received.values()) == {1}

        code, out, _ = cli("remaining", str(mailing_id), "--csv")
        assert code == 0
        lines = out.strip().splitlines()
        assert lines[0].startswith("email,")
        remaining = {line.split(",")[0] for line in lines[1:]}
        assert len(remaining) + len(received) == 2000
        assert not remaining & set(received)
        assert item["remaining"] == len(remaining)

        cli.ok("restart", str(mailing_id))
        cli.ok("run", "--until-idle")
        after = sink.received()
        assert len(after) == 2000 and set(after.values()) == {1}
        assert set(after) - set(received) == remaining
        section, item = find(status(cli), mailing_id)
        assert (section, item["state"], item["sent"]) == ("inactive", "completed", 2000)


def test_queue_order_and_move(cli: Cli, sink: Sink, tmp_path: Path, body: Path) -> None:
    first = new_mailing(cli, tmp_path, body, 50, "--now", name="first")
    second = new_mailing(cli, tmp_path, body, 50, "--now", name="second", start=1000)
    third = new_mailing(cli, tmp_path, body, 50, "--now", name="third", start=2000)
    assert cli.ok("move", str(third), "top").strip() == "1"
    doc = status(cli)
    assert [m["id"] for m in doc["current"]] == [third, first, second]
    assert [m["position"] for m in doc["current"]] == [1, 2, 3]
    cli.ok("move", str(first), "down")
    assert [m["id"] for m in status(cli)["current"]] == [third, second, first]

    cli.ok("run", "--until-idle")
    order = [int(d.message_id.split(".")[0][2:]) for d in sink.deliveries]
    # Strictly in queue order: every message of one mailing before any of the next.
    assert order == [third] * 50 + [second] * 50 + [first] * 50


def test_unschedule_refused_while_sending_then_allowed(tmp_path: Path, body: Path, db: Path) -> None:
    with Sink(latency=0.01) as sink:
        cli = Cli(db, sink.port, MAILTOWER_SMTP_CONNECTIONS="1", MAILTOWER_RATE="50")
        sending = new_mailing(cli, tmp_path, body, 500, "--now", name="now")
        later = new_mailing(cli, tmp_path, body, 5, "--at", "2031-06-01 09:00", "--tz", "Europe/Berlin", name="later")
        runner = cli.popen("run", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: find(status(cli), sending)[1]["state"] == "sending", what="sending")
            code, _, err = cli("unschedule", str(later))
            assert code == 2
            assert "stop the current mailing first" in err
            assert len(err.strip().splitlines()) == 1
            assert find(status(cli), later)[1]["state"] == "scheduled"
            cli.ok("stop", str(sending))
            wait_until(lambda: ledger(db, sending).get("sending", 0) == 0, what="sender let go")
        finally:
            runner.terminate()
            runner.wait(timeout=20)
        cli.ok("unschedule", str(later))
        section, item = find(status(cli), later)
        assert (section, item["state"], item["send_at_utc"]) == ("inactive", "draft", None)


def test_second_sender_does_not_send_while_lease_held(cli: Cli, sink: Sink, tmp_path: Path, body: Path, db: Path) -> None:
    if not isinstance(db, Path):
        pytest.skip("on PostgreSQL several senders share a database (core/fleet.py, tests/core/test_fleet.py)")
    new_mailing(cli, tmp_path, body, 10, "--now")
    lease = sender_lease(db)
    assert lease.acquire("test holder")
    try:
        code, _, err = cli("run", "--until-idle")
        assert code == 2
        assert "another sender" in err and "test holder" in err
        assert sink.deliveries == []
    finally:
        lease.release()
    cli.ok("run", "--until-idle")
    assert len(sink.deliveries) == 10


def test_550_fails_and_450_is_sent_later(tmp_path: Path, body: Path, db: Path) -> None:
    def fault(stage: str, address: str, attempt: int) -> str | None:
        if stage == "rcpt" and address.startswith("user1@"):
            return "550 5.1.1 <user1@example.com>: no such mailbox"
        if stage == "rcpt" and address.startswith("user2@") and attempt == 1:
            return "450 4.2.1 mailbox busy"
        return None

    with Sink(fault=fault) as sink:
        cli = Cli(db, sink.port, MAILTOWER_RETRY_BASE="0.2", MAILTOWER_RETRY_MAX="0.5")
        mailing_id = new_mailing(cli, tmp_path, body, 5, "--now")
        cli.ok("run", "--until-idle")
        rows = dict(
            (email, (state, code, error, attempts))
            for email, state, code, error, attempts in sql_rows(
                db, "SELECT email, state, last_code, last_error, attempts FROM recipients WHERE mailing_id = ?",
                (mailing_id,),
            )
        )
        assert rows["user1@example.com"][:2] == ("failed", 550)
        assert "no such mailbox" in rows["user1@example.com"][2]
        assert rows["user2@example.com"][0] == "sent" and rows["user2@example.com"][3] == 2
        assert sink.received()["user2@example.com"] == 1
        assert "user1@example.com" not in sink.received()
        section, item = find(status(cli), mailing_id)
        assert (item["state"], item["sent"], item["failed"]) == ("completed", 4, 1)


def test_server_down_leaves_everyone_untouched_then_resumes(tmp_path: Path, body: Path, db: Path) -> None:
    sink = Sink()
    cli = Cli(db, sink.port)
    mailing_id = new_mailing(cli, tmp_path, body, 20, "--now")
    runner = cli.popen("run", "--until-idle", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: (find(status(cli), mailing_id)[1]["last_error"] or "").startswith("waiting"), what="waiting")
        assert ledger(db, mailing_id).get("failed", 0) == 0
        assert ledger(db, mailing_id).get("sent", 0) == 0
        sink.start()
        assert runner.wait(timeout=30) == 0
    finally:
        if runner.poll() is None:
            runner.kill()
        sink.stop()
    assert len(sink.received()) == 20
    assert ledger(db, mailing_id) == Counter({"sent": 20})


def test_bad_input_is_one_line_exit_2_and_changes_nothing(cli: Cli, tmp_path: Path, body: Path, db: Path) -> None:
    cli.ok("limits")  # the database first: a refused command on a new one leaves none to look at
    good = write_csv(tmp_path / "r.csv", [dict(r, code="1") for r in recipients(3)])
    missing_field = tmp_path / "b2.txt"
    missing_field.write_text("Hi {{ city }}", encoding="utf-8")
    cases = [
        ("new", "--name", "x", "--subject", "s", "--from", "a@example.org", "--text", str(missing_field), "--recipients", str(good)),
        ("new", "--name", "x", "--subject", "s", "--from", "not an address", "--text", str(body), "--recipients", str(good)),
        ("new", "--name", "x", "--subject", "s", "--from", "a@example.org", "--text", str(body), "--recipients", str(tmp_path / "nope.csv")),
        ("new", "--name", "x", "--subject", "s", "--from", "a@example.org", "--text", str(body), "--recipients", str(good), "--at", "2031-01-01 10:00", "--tz", "Europe/Berln"),
        ("new", "--name", "x", "--subject", "s", "--from", "a@example.org", "--text", str(body), "--recipients", str(good), "--at", "2001-01-01 10:00", "--tz", "UTC"),
        ("stop", "99"),
        ("move", "1", "sideways"),
        ("schedule", "1", "--at", "tomorrow", "--tz", "UTC"),
    ]
    for args in cases:
        code, out, err = cli(*args)
        assert code == 2, (args, err)
        assert len(err.strip().splitlines()) == 1, (args, err)
        assert out == ""
    assert "city" in cli(*cases[0])[2]
    assert "Europe/Berlin" in cli(*cases[3])[2]
    assert status(cli) == {"current": [], "scheduled": [], "inactive": []}


def test_status_json_has_every_key(cli: Cli, tmp_path: Path, body: Path) -> None:
    new_mailing(cli, tmp_path, body, 2, "--now")
    code, _, err = cli("new", "--name", "sched", "--subject", "s", "--from", "a@example.org", "--text", str(body),
                       "--recipients", str(write_csv(tmp_path / "s.csv", [dict(r, code="1") for r in recipients(2)])),
                       "--at", "2031-03-30 02:30", "--tz", "Europe/Berlin")
    assert code == 0 and "warning" in err and "does not exist" in err
    new_mailing(cli, tmp_path, body, 2, name="draft")
    doc = status(cli)
    keys = {"id", "name", "subject", "state", "total", "sent", "failed", "deferred", "in_doubt", "remaining",
            "rate", "eta", "send_at_local", "tz", "send_at_utc", "created_at", "started_at", "finished_at", "last_error"}
    for section, items in doc.items():
        assert len(items) == 1
        assert keys <= set(items[0])
        assert ("position" in items[0]) == (section == "current")
    sched = doc["scheduled"][0]
    assert (sched["send_at_local"], sched["tz"], sched["send_at_utc"]) == ("2031-03-30 02:30", "Europe/Berlin", "2031-03-30T01:30:00Z")
    assert doc["inactive"][0]["state"] == "draft"


def test_import_adds_recipients_and_reports_rejects(cli: Cli, tmp_path: Path, body: Path) -> None:
    mailing_id = new_mailing(cli, tmp_path, body, 3)
    more = tmp_path / "more.csv"
    more.write_text("email,name,code\nuser0@example.com,Dup,1\nnew@example.com,New,2\nbad-address,X,3\n", encoding="utf-8")
    code, _, err = cli("import", str(mailing_id), str(more))
    assert code == 0
    assert f"{more}:2: duplicate" in err
    assert f"{more}:4:" in err
    assert find(status(cli), mailing_id)[1]["total"] == 4


def test_limits_command(cli: Cli) -> None:
    doc = json.loads(cli.ok("limits", "--json"))
    assert doc["changed_at"] == {} and doc["connections"] == 4
    doc = json.loads(cli.ok("limits", "--rate", "50", "--rate-per-hour", "10000", "--json"))
    assert (doc["rate"], doc["rate_per_hour"]) == (50.0, 10000.0)
    assert set(doc["changed_at"]) == {"rate", "rate_per_hour"}
    assert "rate: 50 (changed" in cli.ok("limits")
    code, _, err = cli("limits", "--connections", "0")
    assert code == 2 and "--connections" in err and len(err.strip().splitlines()) == 1
    assert json.loads(cli.ok("limits", "--json"))["connections"] == 4


def test_a_deleted_mailings_id_is_never_handed_out_again(cli: Cli, tmp_path: Path, body: Path, db: Path) -> None:
    """SQLite gave a new mailing the highest id + 1: delete the newest, and the next `new` had its
    id. A dashboard dialog left open on the deleted one then deleted or stopped the new one, and
    the new one's Message-IDs and unsubscribe tokens (mailing and recipient ids) were the old one's."""
    first = new_mailing(cli, tmp_path, body, 2, name="first")
    second = new_mailing(cli, tmp_path, body, 2, name="second")
    cli.ok("delete", str(second))
    third = new_mailing(cli, tmp_path, body, 2, name="third")
    assert third > second > first
    cli.ok("delete", str(third))
    cli.ok("delete", str(first))
    assert new_mailing(cli, tmp_path, body, 2, name="fourth") > third
    code, _, err = cli("delete", str(second))
    assert code == 2 and f"no mailing with id {second}" in err
