"""`mailtower domains [ID] [--json]` (issue 13, item 3): per domain group sent, deferred, failed,
in flight, rate, state and last reply, from the ledger and the running sender."""

from __future__ import annotations

import pytest

import json
import signal
import subprocess
from pathlib import Path

from mailtower.core.sink import Sink
from tests.helpers import Cli, wait_until, write_csv

@pytest.fixture
def db(db_target):
    """Runs on SQLite and on PostgreSQL (issue 15)."""
    return db_target


CONFIG = """
[domains.slow]
match = ["slow.example.org"]
rate = {rate}
"""


def setup(tmp_path: Path, db: Path, sink: Sink, rate: float, emails: list[str]) -> tuple[Cli, int]:
    toml = tmp_path / "c.toml"
    toml.write_text(CONFIG.format(rate=rate), encoding="utf-8")
    cli = Cli(db, sink.port, MAILTOWER_CONFIG=str(toml), MAILTOWER_SMTP_CONNECTIONS="2",
              MAILTOWER_RETRY_BASE="30", MAILTOWER_RETRY_MAX="60")
    people = write_csv(tmp_path / "p.csv", [{"email": e} for e in emails])
    body = tmp_path / "b.txt"
    body.write_text("Hi\n", encoding="utf-8")
    out = cli.ok("new", "--name", "N", "--subject", "S", "--from", "news@example.org", "--text", str(body),
                 "--recipients", str(people), "--now")
    return cli, int(out)


def fault(stage: str, address: str, attempt: int) -> str | None:
    if stage == "rcpt" and address.startswith("bad"):
        return "550 5.1.1 no such user"
    if stage == "rcpt" and address.startswith("later"):
        return "450 4.2.1 mailbox busy"
    return None


def test_counts_per_group_from_the_ledger(tmp_path: Path, db: Path) -> None:
    emails = ([f"s{i}@slow.example.org" for i in range(5)] + ["bad1@slow.example.org", "later1@slow.example.org"]
              + [f"f{i}@fast.example.com" for i in range(7)] + ["bad2@fast.example.com"])
    with Sink(fault=fault) as sink:
        cli, mailing_id = setup(tmp_path, db, sink, 0, emails)
        # The deferred one waits 30 s for its retry, so the mailing stays current: the sender
        # runs in the background until every recipient has had its first attempt, then stops.
        runner = cli.popen("run", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: sum(int(line.split("\t")[1]) + int(line.split("\t")[2]) + int(line.split("\t")[3])
                                   for line in cli.ok("domains", str(mailing_id)).splitlines()[1:]) == 15,
                       timeout=20, what="every recipient's first outcome in the ledger")
        finally:
            runner.send_signal(signal.SIGTERM)
            assert runner.wait(timeout=20) == 0
    doc = json.loads(cli.ok("domains", str(mailing_id), "--json"))
    groups = {g["group"]: g for g in doc["groups"]}
    assert doc["mailing"] == mailing_id
    assert (groups["slow"]["sent"], groups["slow"]["failed"], groups["slow"]["deferred"]) == (5, 1, 1)
    assert (groups["default"]["sent"], groups["default"]["failed"], groups["default"]["deferred"]) == (7, 1, 0)
    assert groups["slow"]["domains"] == 1 and groups["default"]["domains"] == 0
    assert groups["slow"]["state"] == "idle"  # no sender runs now
    text = cli.ok("domains", str(mailing_id))
    lines = text.splitlines()
    assert lines[0].split("\t") == ["GROUP", "SENT", "DEFERRED", "FAILED", "IN FLIGHT", "RATE", "STATE", "LAST REPLY"]
    assert lines[1].split("\t")[:4] == ["slow", "5", "1", "1"] and lines[2].split("\t")[:4] == ["default", "7", "0", "1"]


def test_live_figures_while_the_sender_runs(tmp_path: Path, db: Path) -> None:
    with Sink() as sink:
        cli, mailing_id = setup(tmp_path, db, sink, 2, [f"s{i}@slow.example.org" for i in range(40)] + ["f@fast.example.com"])
        runner = cli.popen("run", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: len(sink.deliveries) >= 4, timeout=20, what="a few deliveries")

            def live() -> dict:
                return {g["group"]: g for g in json.loads(cli.ok("domains", "--json"))["groups"]}

            wait_until(lambda: live()["slow"]["waiting"] > 0 and live()["slow"]["rate"] > 0, timeout=10,
                       what="the slow group's live figures")
            groups = live()
            assert groups["slow"]["state"] == "ok" and groups["slow"]["limit_rate"] == 2
            assert groups["slow"]["remaining"] > 20
            assert groups["default"]["sent"] == 1
        finally:
            runner.send_signal(signal.SIGTERM)
            runner.wait(timeout=20)


def test_bad_ids_and_nothing_current(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "x.db")
    code, out, err = cli("domains", "--json")
    assert code == 2 and out == "" and "no mailing is current" in err and err.count("\n") == 1
    code, out, err = cli("domains", "99")
    assert code == 2 and "99" in err and err.count("\n") == 1
    code, out, err = cli("domains", "x")
    assert code == 2 and err.count("\n") == 1
