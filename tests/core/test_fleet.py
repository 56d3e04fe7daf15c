"""Several senders on one PostgreSQL database (issue 15 items 3-4, core/fleet.py).

Real parts: the throw-away PostgreSQL server of tests/pg_server.py, one aiosmtpd sink per sender
(so each sink says what its sender delivered; together they say what every recipient got), and
real `mailtower run` processes, one killed with SIGKILL. A short heartbeat timeout (2 s) keeps
the expiry tests fast; every wait is bounded.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from mailtower.core.db_target import PgTarget, parse_pg_url
from mailtower.core.domain import RecipientState
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.operations import Draft, create_mailing
from mailtower.core.sink import Sink
from mailtower.core.store import Outcome, open_store
from tests.helpers import Cli, recipients, wait_until, write_csv
from tests.pg_server import sql_execute, sql_rows

TIMEOUT = "2"  # seconds: sender_heartbeat_timeout in these tests
FAST = {"MAILTOWER_SENDER_HEARTBEAT_TIMEOUT": TIMEOUT, "MAILTOWER_SMTP_CONNECTIONS": "4",
        "MAILTOWER_RETRY_BASE": "0.2", "MAILTOWER_RETRY_MAX": "0.5"}


@pytest.fixture
def target(pg_url: str) -> PgTarget:
    return parse_pg_url(pg_url, "test database")


@pytest.fixture(autouse=True)
def _no_inherited_db(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILTOWER_DB", raising=False)


class DataLog:
    """A sink fault rule that never faults: it notes (time, address) of each message's DATA, so
    two sinks' deliveries can be put in one order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[float, str]] = []

    def __call__(self, stage: str, address: str, attempt: int) -> str | None:
        if stage == "data":
            with self.lock:
                self.seen.append((time.monotonic(), address.lower()))
        return None


def new_mailing(cli: Cli, tmp_path: Path, n: int, *, name: str = "m", domain: str = "example.com") -> int:
    body = tmp_path / "body.txt"
    body.write_text("Hello {{ name }}\n", encoding="utf-8")
    csv_path = write_csv(tmp_path / f"{name}.csv", recipients(n, domain=domain))
    out = cli.ok("new", "--name", name, "--subject", "s", "--from", "news@example.org", "--text", str(body),
                 "--recipients", str(csv_path), "--now")
    return int(out.strip())


def mailing_row(target: PgTarget, mailing_id: int) -> dict[str, object]:
    (row,) = sql_rows(target, "SELECT state, total, sent, failed, in_doubt FROM mailings WHERE id = ?", (mailing_id,))
    return dict(zip(("state", "total", "sent", "failed", "in_doubt"), row))


def claimed_rows(target: PgTarget) -> int:
    return int(sql_rows(target, "SELECT COUNT(*) FROM recipients WHERE claimed_by IS NOT NULL")[0][0])


def combined(*sinks: Sink) -> Counter[str]:
    total: Counter[str] = Counter()
    for sink in sinks:
        total.update(sink.received())
    return total


def everyone(n: int, domain: str = "example.com") -> set[str]:
    return {f"user{i}@{domain}" for i in range(n)}


def kill_left(*procs: subprocess.Popen[bytes] | None) -> None:
    """A test that failed leaves no sender behind."""
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def stop_process(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=60)


def test_two_senders_share_the_head_mailing_each_recipient_once_within_the_fleets_rate(
    target: PgTarget, tmp_path: Path
) -> None:
    n, rate = 600, 150.0
    log_a, log_b = DataLog(), DataLog()
    with Sink(latency=0.01, fault=log_a) as sink_a, Sink(latency=0.01, fault=log_b) as sink_b:
        a = Cli(target, sink_a.port, **FAST, MAILTOWER_RATE=str(rate))
        b = Cli(target, sink_b.port, **FAST, MAILTOWER_RATE=str(rate))
        mailing_id = new_mailing(a, tmp_path, n)
        pa = a.popen("run", "--until-idle", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        pb = None
        try:
            wait_until(lambda: len(sink_a.deliveries) > 0, timeout=30, what="the first sender sending")
            pb = b.popen("run", "--until-idle", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            assert pa.wait(timeout=90) == 0, pa.stderr.read().decode()  # type: ignore[union-attr]
            assert pb.wait(timeout=90) == 0, pb.stderr.read().decode()  # type: ignore[union-attr]
        finally:
            kill_left(pa, pb)
        got = combined(sink_a, sink_b)
        assert set(got) == everyone(n) and set(got.values()) == {1}  # each recipient exactly once
        assert len(sink_a.deliveries) > 0 and len(sink_b.deliveries) > 0  # both did part of the work
        # The rate is the fleet's: once both run (a heartbeat later), together they keep to it.
        times = sorted(t for t, _ in log_a.seen + log_b.seen)
        both_from = min(t for t, _ in log_b.seen) + 1.5
        window = [t for t in times if t >= both_from]
        if len(window) > 100:
            measured = (len(window) - 1) / (window[-1] - window[0])
            assert measured <= rate * 1.3, f"{measured:.0f}/s for a fleet limit of {rate:g}/s"
    row = mailing_row(target, mailing_id)
    assert (row["state"], row["sent"], row["in_doubt"]) == ("completed", n, 0)
    assert claimed_rows(target) == 0
    states = [s for (s,) in sql_rows(target, "SELECT state FROM senders ORDER BY id")]
    assert states == ["stopped", "stopped"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_one_sender_mid_mailing_the_other_finishes_it(target: PgTarget, tmp_path: Path, seed: int) -> None:
    n, connections = 900, 4
    moment = random.Random(seed).uniform(0.15, 0.6)  # how far into the mailing the kill comes
    with Sink(latency=0.03) as sink_a, Sink(latency=0.03) as sink_b:
        a = Cli(target, sink_a.port, **FAST)
        b = Cli(target, sink_b.port, **FAST)
        mailing_id = new_mailing(a, tmp_path, n)
        pa = a.popen("run", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pb = None
        try:
            wait_until(lambda: len(sink_a.deliveries) > 0, timeout=30, what="the first sender sending")
            pb = b.popen("run", "--until-idle", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            wait_until(lambda: len(sink_b.deliveries) > 0, timeout=30, what="the second sender sending")
            wait_until(lambda: len(sink_a.deliveries) + len(sink_b.deliveries) >= n * moment, timeout=60,
                       what="the moment of the kill")
            pa.kill()
            pa.wait(timeout=30)
            in_flight_claims = int(sql_rows(target, "SELECT COUNT(*) FROM recipients r JOIN senders s ON s.id = r.claimed_by"
                                                    " WHERE s.pid = ? AND r.state = 'sending'", (pa.pid,))[0][0])
            assert in_flight_claims <= connections
            assert pb.wait(timeout=120) == 0, pb.stderr.read().decode()  # type: ignore[union-attr]
        finally:
            kill_left(pa, pb)
        got = combined(sink_a, sink_b)
    assert set(got) == everyone(n)  # nobody lost
    duplicates = sum(c - 1 for c in got.values())
    assert duplicates <= connections, f"{duplicates} duplicates; the killed sender had {connections} connections"
    row = mailing_row(target, mailing_id)
    assert (row["state"], row["sent"], row["in_doubt"]) == ("completed", n, 0)
    assert claimed_rows(target) == 0  # nothing left claimed by the dead sender (or anyone)
    dead = sql_rows(target, "SELECT state FROM senders WHERE pid = ?", (pa.pid,))
    assert dead == [("dead",)]


def test_status_lists_both_senders_a_stop_stops_both_and_restart_continues(target: PgTarget, tmp_path: Path) -> None:
    n = 1500
    with Sink(latency=0.01) as sink_a, Sink(latency=0.01) as sink_b:
        a = Cli(target, sink_a.port, **FAST, MAILTOWER_RATE="100")
        b = Cli(target, sink_b.port, **FAST, MAILTOWER_RATE="100")
        mailing_id = new_mailing(a, tmp_path, n)
        pa = a.popen("run", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        pb = b.popen("run", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: len(sink_a.deliveries) > 0 and len(sink_b.deliveries) > 0, timeout=30,
                       what="both senders sending")

            def listed() -> list[dict[str, object]]:
                return [s for s in json.loads(a.ok("status", "--json")).get("senders", []) if s["alive"]]

            wait_until(lambda: len(listed()) == 2, timeout=20, what="status --json listing both senders")
            senders = listed()
            assert {s["pid"] for s in senders} == {pa.pid, pb.pid}
            assert all(s["host"] and s["connections"] and s["heartbeat_age"] <= float(TIMEOUT) for s in senders)
            text = a.ok("status")
            assert "Senders (2 alive)" in text and f"pid {pa.pid}" in text and f"pid {pb.pid}" in text

            a.ok("stop", str(mailing_id))
            wait_until(lambda: claimed_rows(target) == 0 and mailing_row(target, mailing_id)["state"] == "stopped"
                       and not sql_rows(target, "SELECT 1 FROM recipients WHERE state = 'sending'"),
                       timeout=20, what="both senders letting go of the stopped mailing")
            stopped = mailing_row(target, mailing_id)
            assert 0 < int(stopped["sent"]) < n  # type: ignore[call-overload]
            # Every message the sinks took is in the ledger: nothing went out after the stop.
            assert len(sink_a.deliveries) + len(sink_b.deliveries) == stopped["sent"]
            assert pa.poll() is None and pb.poll() is None  # the senders live on, idle

            before_a, before_b = len(sink_a.deliveries), len(sink_b.deliveries)
            a.ok("restart", str(mailing_id))
            wait_until(lambda: mailing_row(target, mailing_id)["state"] == "completed", timeout=60, what="completed")
            assert len(sink_a.deliveries) > before_a and len(sink_b.deliveries) > before_b  # both went on
        finally:
            codes = [stop_process(pa), stop_process(pb)]
        assert codes == [0, 0]
        got = combined(sink_a, sink_b)
    assert set(got) == everyone(n) and set(got.values()) == {1}


def test_strict_queue_order_no_row_of_the_second_mailing_while_the_first_has_rows_left(
    target: PgTarget, tmp_path: Path
) -> None:
    log = DataLog()
    with Sink(latency=0.01, fault=log) as sink_a, Sink(latency=0.01, fault=log) as sink_b:
        a = Cli(target, sink_a.port, **FAST)
        b = Cli(target, sink_b.port, **FAST)
        first = new_mailing(a, tmp_path, 700, name="first", domain="a.example")
        second = new_mailing(a, tmp_path, 100, name="second", domain="b.example")
        pa = a.popen("run", "--until-idle", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        pb = b.popen("run", "--until-idle", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert pa.wait(timeout=120) == 0, pa.stderr.read().decode()  # type: ignore[union-attr]
            assert pb.wait(timeout=120) == 0, pb.stderr.read().decode()  # type: ignore[union-attr]
        finally:
            kill_left(pa, pb)
        got = combined(sink_a, sink_b)
        a_got = {d.recipient.lower() for d in sink_a.deliveries}
        b_got = {d.recipient.lower() for d in sink_b.deliveries}
    assert set(got) == everyone(700, "a.example") | everyone(100, "b.example") and set(got.values()) == {1}
    assert any(r.endswith("@a.example") for r in a_got) and any(r.endswith("@a.example") for r in b_got)
    last_of_first = max(t for t, r in log.seen if r.endswith("@a.example"))
    first_of_second = min(t for t, r in log.seen if r.endswith("@b.example"))
    assert last_of_first < first_of_second
    assert mailing_row(target, first)["state"] == "completed" and mailing_row(target, second)["state"] == "completed"


async def test_recover_at_start_up_leaves_a_live_senders_rows_and_a_dead_senders_rows_are_fenced(
    target: PgTarget, tmp_path: Path
) -> None:
    a, b = await open_store(target), await open_store(target)
    try:
        people = write_csv(tmp_path / "r.csv", recipients(10))
        mailing_id, _ = await create_mailing(a, Draft("m", "s", "news@example.org", "Hi", None), people, lambda r: None)
        await Lifecycle(a).send_now(mailing_id)
        await Lifecycle(a).start(mailing_id)
        a_id = await a.register_sender("host-a", 101, 4)
        a.claim_owner = a_id
        claimed, _ = await a.record_and_claim(mailing_id, [], 5)
        barred: set[int] = set()
        await a.record_and_claim(mailing_id, [], 0, marks=[c.id for c in claimed[:3]], barred=barred)
        assert barred == set()
        b_id = await b.register_sender("host-b", 102, 4)
        b.claim_owner = b_id
        # b starts up: a is alive, so its rows in flight are its own, not in doubt.
        assert await b.recover_in_doubt(30.0, me=b_id) == 0
        rows = dict(sql_rows(target, "SELECT id, state || ':' || COALESCE(claimed_by, 0) FROM recipients"))
        assert [rows[c.id] for c in claimed] == [f"sending:{a_id}"] * 3 + [f"pending:{a_id}"] * 2
        others, _ = await b.record_and_claim(mailing_id, [], 100)
        assert {c.id for c in others} == set(rows) - {c.id for c in claimed}  # disjoint: a's rows are a's
        assert await b.held_by_others(mailing_id, 30.0)
        # a's heartbeat stops (in the server's clock): b declares it dead and takes its rows over.
        sql_execute(target, "UPDATE senders SET heartbeat_at = heartbeat_at - 100 WHERE id = ?", (a_id,))
        assert await b.expire_senders(30.0, me=b_id) == 3
        assert mailing_row(target, mailing_id)["in_doubt"] == 3
        rows = dict(sql_rows(target, "SELECT id, state || ':' || in_doubt || ':' || COALESCE(claimed_by, 0) FROM recipients"))
        assert [rows[c.id] for c in claimed] == ["pending:1:0"] * 3 + ["pending:0:0"] * 2
        events = sql_rows(target, "SELECT detail FROM events WHERE kind = 'in doubt'")
        assert len(events) == 1 and "host-a" in events[0][0]
        # The fence: a's outcome and its next mark find the rows no longer its own.
        barred = set()
        _, mailing = await a.record_and_claim(
            mailing_id, [Outcome(claimed[0].id, RecipientState.SENT, 250)], 0, marks=[claimed[3].id], barred=barred
        )
        assert barred == {claimed[3].id} and mailing.sent == 0
        assert await a.sender_heartbeat(a_id, 0.0, 4, 30.0) is None  # a learns it was declared dead
        await a.record_and_claim(mailing_id, [], 100)  # and claims nothing on disk
        assert sql_rows(target, "SELECT COUNT(*) FROM recipients WHERE claimed_by = ?", (a_id,)) == [(0,)]
        again, _ = await b.record_and_claim(mailing_id, [], 100, held={c.id for c in others})
        assert {c.id for c in again} == {c.id for c in claimed}  # b sends them (three in doubt)
        assert sum(c.in_doubt for c in again) == 3
    finally:
        await a.close()
        await b.close()


def test_a_sender_declared_dead_stops_without_sending_more(target: PgTarget, tmp_path: Path) -> None:
    with Sink(latency=0.01) as sink:
        cli = Cli(target, sink.port, **FAST, MAILTOWER_RATE="50")
        mailing_id = new_mailing(cli, tmp_path, 2000)
        proc = cli.popen("run", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: len(sink.deliveries) > 0, timeout=30, what="sending")
            sql_execute(target, "UPDATE senders SET state = 'dead' WHERE pid = ?", (proc.pid,))
            code = proc.wait(timeout=30)
            err = proc.stderr.read().decode()  # type: ignore[union-attr]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        assert code == 2 and "declared dead by another sender" in err and "Traceback" not in err, err
        sent = int(mailing_row(target, mailing_id)["sent"])  # type: ignore[call-overload]
        # What it sent after being declared dead went to the sink but not to its (fenced) ledger:
        # at most one message per connection.
        assert 0 <= len(sink.deliveries) - sent <= int(FAST["MAILTOWER_SMTP_CONNECTIONS"])


def test_heartbeat_timeout_setting_is_checked(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "m.db", MAILTOWER_SENDER_HEARTBEAT_TIMEOUT="0")
    code, _, err = cli("run", "--until-idle")
    assert code == 2 and "MAILTOWER_SENDER_HEARTBEAT_TIMEOUT" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.db").exists()


def test_on_sqlite_one_sender_registers_and_recovers_everything_a_dead_one_left(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    with Sink() as sink:
        cli = Cli(db, sink.port, **FAST)
        mailing_id = new_mailing(cli, tmp_path, 20)
        # A sender that died with a row in flight (its heartbeat is fresh: the lease says it is dead).
        sql_execute(db, "INSERT INTO senders (host, pid, started_at, heartbeat_at) VALUES ('h', 1, 1e12, 1e12)")
        sql_execute(db, "UPDATE mailings SET state = 'sending' WHERE id = ?", (mailing_id,))
        sql_execute(db, "UPDATE recipients SET state = 'sending', claimed_by = 1 WHERE id = 1")
        sql_execute(db, "UPDATE recipients SET claimed_by = 1 WHERE id IN (2, 3)")
        cli.ok("run", "--until-idle")
        assert combined(sink) == Counter(everyone(20))
    assert sql_rows(db, "SELECT state FROM senders ORDER BY id") == [("dead",), ("stopped",)]
    assert sql_rows(db, "SELECT in_doubt FROM recipients WHERE id = 1") == [(1,)]
    assert sql_rows(db, "SELECT COUNT(*) FROM recipients WHERE claimed_by IS NOT NULL") == [(0,)]
