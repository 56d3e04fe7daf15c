"""Hostile edges of the breaker and canary (issue 13 items 4-5, reviewed): values that round to
something not written, a canary percentage without the sample's bound, a relay's reply carrying
terminal escapes into the trip reason. Real SQLite and CLI in-process; no sleeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailtower.core.breaker import Breaker, Thresholds, short_reason
from mailtower.core.canary import MAX_SAMPLE, parse_size, sample_size
from mailtower.core.config import load_settings, parse_number
from mailtower.core.display import safe
from mailtower.core.domain import Canary
from mailtower.core.errors import UserError
from tests.helpers import Cli, recipients, write_csv
from tests.pg_server import connect

@pytest.fixture
def db(db_target):
    """Every test here that takes `db` runs on SQLite and on PostgreSQL (issue 15)."""
    return db_target



def new_draft(cli: Cli, tmp_path: Path) -> int:
    body = tmp_path / "plain.txt"
    body.write_text("Hello\n", encoding="utf-8")
    path = write_csv(tmp_path / "r.csv", recipients(5))
    return int(cli.ok("new", "--name", "X", "--subject", "s", "--from", "a@example.org", "--text", str(body),
                      "--recipients", str(path)).strip())


@pytest.mark.parametrize("raw", ["1e-400", "1e-400%", "0.1e-330", "-1e-999"])
def test_a_threshold_that_underflows_to_zero_is_refused_not_turned_off(raw: str) -> None:
    # float("1e-400") is 0.0, and 0 turns the check off: the person wrote a (tiny) positive number.
    with pytest.raises(UserError) as env:
        parse_number("breaker_hard", raw, "--breaker-hard")
    assert str(env.value).startswith("--breaker-hard: ") and "too small" in str(env.value)
    with pytest.raises(UserError) as env:
        load_settings(environ={"MAILTOWER_BREAKER_SOFT": raw}, config_path=Path("/dev/null"))
    assert str(env.value).startswith("MAILTOWER_BREAKER_SOFT: ")


def test_negative_zero_is_plain_zero_from_every_source(tmp_path: Path) -> None:
    assert str(parse_number("breaker_hard", "-0", "x")) == "0.0"
    assert str(parse_number("breaker_soft", -0.0, "x")) == "0.0"  # a TOML -0.0
    settings = load_settings(environ={"MAILTOWER_BREAKER_HARD": "-0%"}, config_path=Path("/dev/null"))
    assert str(settings.breaker_hard) == "0.0"  # shown as "0%", never "-0%"


def test_flag_underflow_changes_nothing(cli: Cli, tmp_path: Path) -> None:
    mailing = new_draft(cli, tmp_path)
    code, out, err = cli("breaker", str(mailing), "--breaker-hard", "1e-400", "--json")
    assert code == 2 and out == "" and err.count("\n") == 1 and "--breaker-hard" in err
    doc = json.loads(cli.ok("breaker", str(mailing), "--json"))
    assert doc["own"]["hard_percent"] is None and doc["hard_percent"] == 5.0


@pytest.mark.parametrize("raw", ["%", "5%%", " % ", "%%"])
def test_canary_percent_without_a_number_says_so(raw: str) -> None:
    with pytest.raises(UserError) as env:
        parse_size(raw)
    assert "is not a number of recipients (N) or a percentage (P%)" in str(env.value)


def test_canary_nan_percent_quotes_what_was_typed() -> None:
    with pytest.raises(UserError) as env:
        parse_size("nan%")
    assert "'nan%'" in str(env.value)


def test_a_percentage_canary_is_bounded_like_a_count() -> None:
    assert sample_size(Canary(100, True, 1, 0), 5_000_000) == MAX_SAMPLE
    assert sample_size(Canary(50, True, 1, 0), 1_000_000) == MAX_SAMPLE
    assert sample_size(Canary(100, True, 1, 0), 80) == 80  # all of a small mailing stays all of it


HOSTILE = "5.1.1 \x1b]0;owned\x07\x1b[2J\x9b31m [bold red]x[/] \u202eevil\r\nmore"


def test_a_hostile_reply_never_reaches_the_trip_reason_raw() -> None:
    breaker = Breaker(Thresholds(window=10, hard=5, soft=0, minimum=1))
    reason = breaker.add("failed", 550, HOSTILE, "a@b.example")
    assert reason is not None
    assert safe(reason) == reason, reason  # nothing left for a terminal to act on
    assert "\\x1b" in reason  # and the operator sees that it was there


def test_short_reason_is_safe_whatever_is_stored() -> None:
    stored = "breaker: 3 of the last 9 outcomes for ev\x1b[2Jil.example were deferred (33.3%, more than 20%); last: x"
    shown = short_reason(stored)
    assert safe(shown) == shown and "\x1b" not in shown


# ---- retries: a recipient deferred again and again is one recipient, not many outcomes ------------


def stuck(stage: str, address: str, attempt: int) -> str | None:
    return "450 4.2.1 mailbox busy, try again later" if stage == "rcpt" and address.startswith("stuck@") else None


def test_one_recipient_retried_many_times_does_not_trip_its_domain(tmp_path: Path, db: Path) -> None:
    """The window holds each recipient's latest outcome: a greylisted address retried twenty
    times is one deferral of its domain (as the window rebuilt from the ledger says), not twenty
    that stop the mailing at its tail, when retries are all that is left."""
    from mailtower.core.sink import Sink
    from mailtower.core.config import Settings
    from tests.core.test_canary import Background
    from tests.helpers import wait_until

    with Sink(fault=stuck) as sink:
        cli = Cli(db, sink.port)
        body = tmp_path / "plain.txt"
        body.write_text("Hello\n", encoding="utf-8")
        rows = recipients(20, "ok.example") + [{"email": "stuck@grey.example", "name": "S"}]
        path = write_csv(tmp_path / "r.csv", rows)
        mailing = int(cli.ok("new", "--name", "X", "--subject", "s", "--from", "a@example.org", "--text", str(body),
                             "--recipients", str(path), "--now").strip())

        def attempts() -> int:
            with connect(db) as conn:
                return int(conn.execute("SELECT attempts FROM recipients WHERE email = 'stuck@grey.example'").fetchone()[0])

        def stopped() -> bool:
            with connect(db) as conn:
                return conn.execute("SELECT state FROM mailings WHERE id = ?", (mailing,)).fetchone()[0] == "stopped"

        with Background(Settings(db=db, smtp_port=sink.port, connections=2, breaker_min=3, retry_base=0.02, retry_max=0.05)):
            wait_until(lambda: attempts() >= 8 or stopped(), timeout=30, what="the stuck recipient retried 8 times")
        with connect(db) as conn:
            state, tripped = conn.execute("SELECT state, tripped FROM mailings WHERE id = ?", (mailing,)).fetchone()
        assert tripped is None and state != "stopped", tripped


def test_a_recipient_answering_again_replaces_its_outcome_and_memory_stays_bounded() -> None:
    breaker = Breaker(Thresholds(window=10, hard=50, soft=50, minimum=3))
    for _ in range(10_000):  # one address deferred over and over: one outcome, never a trip
        assert breaker.add("deferred", 450, "4.2.1 busy", "Stuck@grey.example") is None
    assert len(breaker) == 1 and breaker.domain_counts("grey.example") == (1, 1)
    assert len(breaker._window) <= 2 * 10 + 1
    assert breaker.add("sent", 250, "ok", "stuck@grey.example") is None  # it got through at last
    assert breaker.domain_counts("grey.example") == (1, 0)
    reasons = [breaker.add("deferred", 450, "4.2.1 busy", f"u{i}@grey.example") for i in range(2)]
    # two different recipients deferred, of three: that is the domain's problem
    assert reasons[0] is None and reasons[1] is not None and "2 of the last 3 outcomes for grey.example" in reasons[1]


# ---- run --until-idle while the head mailing holds after its canary ------------------------------


def test_run_until_idle_waits_out_a_canary_hold_and_says_until_when(tmp_path: Path, db: Path) -> None:
    """Decision: `run --until-idle` waits out the hold (it is part of sending that mailing, as a
    retry is), and its log says which mailing holds, until when, and that later ones wait."""
    import time

    from mailtower.core.sink import Sink

    with Sink() as sink:
        cli = Cli(db, sink.port)
        body = tmp_path / "plain.txt"
        body.write_text("Hello\n", encoding="utf-8")
        ids = []
        for name, rows, extra in (("First", recipients(10, "a.example"), ["--canary", "2", "--canary-rate", "100",
                                                                           "--canary-wait", "0.04"]),
                                  ("Second", recipients(3, "b.example"), [])):
            path = write_csv(tmp_path / f"{name}.csv", rows)
            ids.append(int(cli.ok("new", "--name", name, "--subject", "s", "--from", "a@example.org", "--text",
                                  str(body), "--recipients", str(path), "--now", *extra).strip()))
        log = tmp_path / "sender.log"
        started = time.monotonic()
        cli.ok("run", "--until-idle", "--log", str(log))
        assert time.monotonic() - started < 60
        text = log.read_text(encoding="utf-8")
        assert f'mailing {ids[0]} "First" holding after its canary until ' in text, text
        assert "mailings after it wait" in text
        with connect(db) as conn:
            states = [conn.execute("SELECT state FROM mailings WHERE id = ?", (i,)).fetchone()[0] for i in ids]
        assert states == ["completed", "completed"] and len(sink.deliveries) == 13


# ---- a tripped mailing scheduled, then unscheduled: it can still be sent -------------------------


def test_a_tripped_mailing_scheduled_then_unscheduled_can_be_sent_again(cli: Cli, tmp_path: Path, db: Path) -> None:
    """Scheduling is the decision to send it again: the trip is forgotten then. Before, the draft
    left by `unschedule` kept it: send-now refused, naming `restart --force`, which refuses a
    draft; nothing could send it."""
    import asyncio

    from mailtower.core.lifecycle import Lifecycle
    from mailtower.core.store import open_store

    mailing = new_draft(cli, tmp_path)

    async def trip() -> None:
        store = await open_store(db)
        try:
            await Lifecycle(store).send_now(mailing)
            assert await Lifecycle(store).trip(mailing, "breaker: 9 of the last 9 outcomes failed permanently "
                                                        "(100.0%, more than 5%); last: 550 5.1.1 unknown")
        finally:
            await store.close()

    asyncio.run(trip())
    code, _, err = cli("send-now", str(mailing))
    assert code == 2 and "restart" in err and "--force" in err  # a stopped tripped mailing: asks
    cli.ok("schedule", str(mailing), "--at", "2099-01-01 09:00", "--tz", "UTC")
    assert json.loads(cli.ok("breaker", str(mailing), "--json"))["tripped"] is None
    cli.ok("unschedule", str(mailing))
    cli.ok("send-now", str(mailing))
    assert json.loads(cli.ok("status", "--json"))["current"][0]["id"] == mailing


# ---- kill -9 between the trip decision and its write ---------------------------------------------


def test_a_trip_lost_to_a_kill_is_decided_again_before_anything_more_is_sent(cli: Cli, tmp_path: Path, db: Path) -> None:
    """A sender killed after deciding a trip, before writing it, leaves the mailing current with
    its failures in the ledger (nothing lost). The next sender stops it before sending more: the
    rest would all be accepted, and a message sent never trips a breaker, so waiting for the next
    failure sent them all."""
    import asyncio
    import time

    from mailtower.core.config import Settings
    from mailtower.core.sender import Sender
    from mailtower.core.sink import Sink

    body = tmp_path / "plain.txt"
    body.write_text("Hello\n", encoding="utf-8")
    path = write_csv(tmp_path / "r.csv", recipients(10, "bad.example") + recipients(20, "good.example", start=10))
    mailing = int(cli.ok("new", "--name", "X", "--subject", "s", "--from", "a@example.org", "--text", str(body),
                         "--recipients", str(path), "--now").strip())
    with connect(db) as conn:  # what the killed sender had written: 10 permanent failures
        conn.execute("UPDATE recipients SET state = 'failed', attempts = 1, last_code = 550, "
                     "last_error = '5.1.1 user unknown', updated_at = ? WHERE mailing_id = ? AND email LIKE '%@bad.example'",
                     (time.time(), mailing))
        conn.execute("UPDATE mailings SET state = 'sending', failed = 10 WHERE id = ?", (mailing,))
    with Sink() as sink:
        settings = Settings(db=db, smtp_port=sink.port, connections=2, breaker_min=5)
        asyncio.run(asyncio.wait_for(Sender(settings).run(until_idle=True), timeout=60))
        assert sink.deliveries == []
    with connect(db) as conn:
        state, tripped, pending = conn.execute(
            "SELECT state, tripped, (SELECT COUNT(*) FROM recipients WHERE mailing_id = ? AND state = 'pending') "
            "FROM mailings WHERE id = ?", (mailing, mailing)).fetchone()
    assert state == "stopped" and tripped.startswith("breaker: 10 of the last 10 outcomes failed permanently")
    assert pending == 20  # every recipient is kept for a restart


def test_finish_estimates_of_the_queue_wait_for_a_canary_hold() -> None:
    """Strict queue order while a canary holds: the mailings after it finish after the hold,
    and the Current panel's ETA and Left (and `status`) say so rather than "in 3 s"."""
    from datetime import datetime, timedelta, timezone

    from mailtower.core.domain import CanaryPhase, Mailing, MailingState
    from mailtower.core.progress import queue_estimates

    now = datetime(2026, 11, 30, 10, 0, tzinfo=timezone.utc)
    until = (now + timedelta(minutes=10)).timestamp()

    def mailing(i: int, remaining: int, canary: Canary | None = None) -> Mailing:
        return Mailing(id=i, name=f"m{i}", subject="s", from_addr="a@example.org", text_body="x", html_body=None,
                       state=MailingState.QUEUED, position=i, schedule=None, missed=False, total=remaining, sent=0,
                       failed=0, deferred=0, in_doubt=0, created_at=now, started_at=None, finished_at=None,
                       last_error=None, canary=canary)

    head = mailing(1, 90, Canary(10, False, 1, 600, CanaryPhase.HOLDING, 10, 10, until))
    estimates = queue_estimates([head, mailing(2, 50)], 10.0, now)
    assert estimates[1] == now + timedelta(minutes=10, seconds=9)
    assert estimates[2] == now + timedelta(minutes=10, seconds=14)
    # Without a hold: as before, each waits only for the messages ahead of it.
    plain = queue_estimates([mailing(1, 90), mailing(2, 50)], 10.0, now)
    assert plain == {1: now + timedelta(seconds=9), 2: now + timedelta(seconds=14)}


# ---- canaries on degenerate mailings: every one ends, in bounded time -----------------------------


def always_deferred(stage: str, address: str, attempt: int) -> str | None:
    return "450 4.2.0 try later" if stage == "rcpt" else None


@pytest.mark.parametrize("case", ["one domain", "all suppressed", "all deferred"])
def test_a_canary_on_a_degenerate_mailing_ends(case: str, tmp_path: Path, db: Path) -> None:
    """One domain: the sample is its first recipients, then the rest. All suppressed (after the
    import, so the mailing has them): nobody to sample, nothing sent, the mailing completes.
    All deferred: the breaker's domain check stops it on the canary, the rest never tried."""
    import asyncio
    from mailtower.core.config import Settings
    from mailtower.core.sender import Sender
    from mailtower.core.sink import Sink

    with Sink(fault=always_deferred if case == "all deferred" else None) as sink:
        cli = Cli(db, sink.port)
        body = tmp_path / "plain.txt"
        body.write_text("Hello\n", encoding="utf-8")
        path = write_csv(tmp_path / "r.csv", recipients(12, "one.example"))
        mailing = int(cli.ok("new", "--name", "X", "--subject", "s", "--from", "a@example.org", "--text", str(body),
                             "--recipients", str(path), "--canary", "4", "--canary-rate", "100",
                             "--canary-wait", "0.01").strip())
        if case == "all suppressed":
            for i in range(12):
                cli.ok("suppress", "add", recipients(12, "one.example")[i]["email"])
        cli.ok("send-now", str(mailing))
        settings = Settings(db=db, smtp_port=sink.port, connections=2, retry_base=0.05, retry_max=0.1, retry_max_age=0.5)
        asyncio.run(asyncio.wait_for(Sender(settings).run(until_idle=True), timeout=60))
        with connect(db) as conn:
            state, sent, tripped = conn.execute("SELECT state, sent, tripped FROM mailings WHERE id = ?",
                                                (mailing,)).fetchone()
            tried = conn.execute("SELECT COUNT(*) FROM recipients WHERE mailing_id = ? AND attempts > 0",
                                 (mailing,)).fetchone()[0]
    if case == "one domain":
        assert state == "completed" and sent == 12 and len(sink.deliveries) == 12
    elif case == "all suppressed":
        assert state == "completed" and sent == 0 and sink.deliveries == []
    else:
        assert state == "stopped" and tripped and "one.example" in tripped and "deferred" in tripped
        assert 3 <= tried <= 4  # only (part of) the canary's sample was tried: it trips on 3 of 4
