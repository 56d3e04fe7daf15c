"""The breaker: a mailing stops by itself when its recent outcomes pass a threshold (issue 13, item 4).

End to end against the real SMTP sink with fault injection (550 for some addresses, 451 for a
whole domain) and a real SQLite ledger."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from mailtower.core.breaker import Breaker, Breakers, Thresholds
from mailtower.core.config import Settings, load_settings
from mailtower.core.domain import MailingState, RecipientState
from mailtower.core.errors import UserError
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.sink import Sink
from mailtower.core.store import open_store
from tests.helpers import Cli, recipients, write_csv
from tests.pg_server import connect


@pytest.fixture
def db(db_target):
    """Every test here runs on SQLite and on PostgreSQL (issue 15), except those marked SQLite-only."""
    return db_target

S = RecipientState


@pytest.fixture
def body(tmp_path: Path) -> Path:
    path = tmp_path / "body.txt"
    path.write_text("Hello {{ name }}\n", encoding="utf-8")
    return path


def mixed(n_ok: int, n_bad: int, domain: str = "example.com") -> list[dict[str, str]]:
    """Good and bad (user unknown) recipients interleaved, bad ones every few rows."""
    rows = []
    bad = 0
    for i in range(n_ok + n_bad):
        step = max(1, (n_ok + n_bad) // n_bad)
        if bad < n_bad and i % step == step - 1:
            rows.append({"email": f"bad{i}@{domain}", "name": f"Bad {i}"})
            bad += 1
        else:
            rows.append({"email": f"user{i}@{domain}", "name": f"User {i}"})
    return rows


def unknown_users(stage: str, address: str, attempt: int) -> str | None:
    return "550 5.1.1 user unknown" if stage == "rcpt" and address.startswith("bad") else None


def mailing_row(db: Path, mailing_id: int) -> dict[str, object]:
    with connect(db, rows_as_dicts=True) as conn:
        return dict(conn.execute("SELECT * FROM mailings WHERE id = ?", (mailing_id,)).fetchone())


def events(db: Path, mailing_id: int) -> list[tuple[str, str]]:
    with connect(db) as conn:
        return conn.execute("SELECT kind, detail FROM events WHERE mailing_id = ? ORDER BY id", (mailing_id,)).fetchall()


def new_mailing(cli: Cli, tmp_path: Path, body: Path, rows: list[dict[str, str]], *extra: str, name: str = "Sale") -> int:
    path = write_csv(tmp_path / f"{name}.csv", rows)
    out = cli.ok("new", "--name", name, "--subject", "Hi", "--from", "news@example.org", "--text", str(body),
                 "--recipients", str(path), *extra)
    return int(out.strip())


# ---- the window itself -------------------------------------------------------------------------


def test_window_needs_the_minimum_before_judging() -> None:
    b = Breaker(Thresholds(window=500, hard=5, soft=20, minimum=20))
    assert b.add(S.FAILED, 550, "user unknown", "a@x.org") is None  # 1 of 1: not judged yet
    for i in range(18):
        assert b.add(S.SENT, 250, None, f"u{i}@x.org") is None
    reason = b.add(S.FAILED, 550, "5.1.1 user unknown", "b@x.org")  # 2 of 20 = 10 % > 5 %
    assert reason is not None and "2 of the last 20 outcomes failed permanently" in reason
    assert "550 5.1.1 user unknown" in reason
    assert b.add(S.FAILED, 550, "again", "c@x.org") is None  # said once


def test_window_slides_old_failures_out() -> None:
    b = Breaker(Thresholds(window=100, hard=5, soft=0, minimum=20))
    for i in range(5):
        b.add(S.FAILED, 550, "no", f"bad{i}@x.org")
    # 5 failures are diluted below 5 % only after 100 outcomes... but the minimum is 20, so the
    # 20th outcome with 5 failures (25 %) trips: prove sliding with a fresh breaker instead.
    b2 = Breaker(Thresholds(window=100, hard=5, soft=0, minimum=100))
    for i in range(4):
        b2.add(S.FAILED, 550, "no", f"bad{i}@x.org")
    for i in range(200):  # the 4 failures slide out of the window of 100
        assert b2.add(S.SENT, 250, None, f"u{i}@x.org") is None
    assert len(b2) == 100 and b2.failed == 0
    for i in range(5):  # 5 of 100: not more than 5 %
        assert b2.add(S.FAILED, 550, "no", f"late{i}@x.org") is None
    assert b2.add(S.FAILED, 550, "no", "one-more@x.org") is not None  # 6 of 100


def test_one_domain_deferrals_trip_with_its_own_minimum() -> None:
    b = Breaker(Thresholds(window=500, hard=5, soft=20, minimum=10))
    assert b.add(S.DEFERRED, 451, "try later", "a@slow.example") is None  # 1 of 1 (of 2) does not trip
    assert b.add(S.SENT, 250, None, "b@slow.example") is None
    for i in range(50):
        b.add(S.SENT, 250, None, f"u{i}@fast.example")
    for i in range(7):
        b.add(S.SENT, 250, None, f"s{i}@slow.example")
    reason = b.add(S.DEFERRED, 451, "4.2.0 mailbox temporarily unavailable", "z@slow.example")  # 2 of 10 = 20 %: not more
    assert reason is None
    reason = b.add(S.DEFERRED, 451, "4.2.0 mailbox temporarily unavailable", "y@Slow.Example")  # 3 of 11 = 27 %
    assert reason is not None and "for slow.example were deferred" in reason and "more than 20%" in reason
    assert b.domain_counts("fast.example") == (50, 0)


def test_throttle_deferrals_are_pacing_not_the_breakers() -> None:
    """Postfix's anvil ("450 4.7.1 Error: too much mail from ...") or a 421 asks for a slower pace:
    counted in the window, not as the domain's deferrals."""
    b = Breaker(Thresholds(window=500, hard=5, soft=20, minimum=10))
    for i in range(30):
        assert b.add(S.DEFERRED, 450, "4.7.1 Error: too much mail from 127.0.0.1", f"u{i}@x.org") is None
        assert b.add(S.DEFERRED, 421, "4.7.0 Try again later, closing connection.", f"v{i}@x.org") is None
    assert len(b) == 60 and b.domain_counts("x.org") == (60, 0)
    reasons = [b.add(S.DEFERRED, 451, "4.7.1 Client host rejected: blocked", f"w{i}@x.org") for i in range(20)]
    assert reasons.index(b.tripped) == 15  # 16 of 76: more than 20 %
    assert b.tripped is not None and "for x.org were deferred" in b.tripped


def test_zero_thresholds_are_off() -> None:
    b = Breaker(Thresholds(window=50, hard=0, soft=0, minimum=1))
    for i in range(50):
        assert b.add(S.FAILED if i % 2 else S.DEFERRED, 550, "no", f"u{i}@x.org") is None


# ---- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "101", "1e999", "5%%", "five", ""])
def test_bad_thresholds_are_refused_from_every_source(tmp_path: Path, value: str) -> None:
    with pytest.raises(UserError) as env:
        load_settings(environ={"MAILTOWER_BREAKER_HARD": value or " "}, config_path=Path("/dev/null"))
    assert str(env.value).startswith("MAILTOWER_BREAKER_HARD: ") and "\n" not in str(env.value)
    config = tmp_path / "c.toml"
    config.write_text(f'breaker_soft = "{value}"\n')
    with pytest.raises(UserError) as env:
        load_settings(environ={}, config_path=config, config_flag="--config")
    assert "breaker_soft" in str(env.value)


def test_percent_thresholds_from_env_and_config(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('breaker_soft = "30%"\nbreaker_window = 200\nbreaker_min = 7\n')
    s = load_settings(environ={"MAILTOWER_BREAKER_HARD": "2.5%"}, config_path=config, config_flag="--config")
    assert (s.breaker_hard, s.breaker_soft, s.breaker_window, s.breaker_min) == (2.5, 30.0, 200, 7)
    assert Settings().breaker_hard == 5.0 and Settings().breaker_window == 500


def test_new_refuses_a_bad_threshold_and_creates_nothing(cli: Cli, tmp_path: Path, body: Path, db: Path) -> None:
    cli.ok("limits")  # the database first: a refused command on a new one leaves none to look at
    path = write_csv(tmp_path / "r.csv", recipients(3))
    for flag, value in [("--breaker-hard", "nan"), ("--breaker-soft", "120%"), ("--breaker-hard", "-5%")]:
        code, out, err = cli("new", "--name", "X", "--subject", "s", "--from", "a@example.org", "--text", str(body),
                             "--recipients", str(path), flag, value)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and flag in err
    assert json.loads(cli.ok("status", "--json")) == {"current": [], "scheduled": [], "inactive": []}


# ---- end to end --------------------------------------------------------------------------------


def test_permanent_failures_stop_the_mailing_with_reason_and_event(tmp_path: Path, body: Path, db: Path) -> None:
    with Sink(fault=unknown_users) as sink:
        cli = Cli(db, sink.port, MAILTOWER_SMTP_CONNECTIONS="2", MAILTOWER_BREAKER_MIN="20")
        # 1 in 20 is exactly 5 %: the default (more than 5 %) lets it complete; its own 3 % trips it.
        mailing_id = new_mailing(cli, tmp_path, body, mixed(950, 50), "--now", "--breaker-hard", "3%")
        cli.ok("run", "--until-idle")
        row = mailing_row(db, mailing_id)
        assert row["state"] == "stopped"
        assert str(row["tripped"]).startswith("breaker: ") and "failed permanently" in str(row["tripped"])
        assert "more than 3%" in str(row["tripped"]) and "550 5.1.1 user unknown" in str(row["tripped"])
        assert row["last_error"] == row["tripped"]
        assert ("stopped", row["tripped"]) in events(db, mailing_id)
        # It stopped early: most recipients were never tried.
        assert len(sink.deliveries) < 200
        assert int(row["sent"]) + int(row["failed"]) < 300


def test_failures_under_the_threshold_let_it_complete(cli: Cli, tmp_path: Path, body: Path, db: Path, sink: Sink) -> None:
    sink.handler.fault = unknown_users
    mailing_id = new_mailing(cli, tmp_path, body, mixed(780, 20), "--now")  # 1 in 40: 2.5 %
    cli.ok("run", "--until-idle")
    row = mailing_row(db, mailing_id)
    assert row["state"] == "completed" and row["tripped"] is None and row["failed"] == 20


def slow_domain(stage: str, address: str, attempt: int) -> str | None:
    return "450 4.2.0 mailbox temporarily unavailable" if stage == "rcpt" and address.endswith("@slow.example") else None


def test_one_domains_deferrals_stop_it_per_mailing_threshold(tmp_path: Path, body: Path, db: Path) -> None:
    with Sink(fault=slow_domain) as sink:
        cli = Cli(db, sink.port, MAILTOWER_SMTP_CONNECTIONS="2", MAILTOWER_BREAKER_MIN="10")
        rows = []
        for i in range(300):
            rows += recipients(1, "fast.example", start=i)
            if i % 3 == 0:
                rows += recipients(1, "slow.example", start=i)
        mailing_id = new_mailing(cli, tmp_path, body, rows, "--now", "--breaker-soft", "50%", "--breaker-hard", "0")
        cli.ok("run", "--until-idle")
        row = mailing_row(db, mailing_id)
        assert row["state"] == "stopped" and row["breaker_soft"] == 50.0
        assert "for slow.example were deferred" in str(row["tripped"]) and "more than 50%" in str(row["tripped"])
        assert "450 4.2.0 mailbox temporarily unavailable" in str(row["tripped"])
        assert len(sink.deliveries) < 300  # fast.example was not sent in full


def test_restart_of_a_tripped_mailing_needs_force_and_says_what_tripped(tmp_path: Path, body: Path, db: Path) -> None:
    with Sink(fault=unknown_users) as sink:
        cli = Cli(db, sink.port, MAILTOWER_BREAKER_MIN="10")
        mailing_id = new_mailing(cli, tmp_path, body, mixed(100, 30), "--now")
        cli.ok("run", "--until-idle")
        tripped = mailing_row(db, mailing_id)["tripped"]
        assert tripped
        code, out, err = cli("restart", str(mailing_id))
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
        assert "stopped by the breaker: " in err and "--force" in err
        assert mailing_row(db, mailing_id)["state"] == "stopped"
        code, out, err = cli("send-now", str(mailing_id))
        assert code == 2 and "--force" in err
        code, _, err = cli("restart", str(mailing_id), "--force")
        assert code == 0 and "the breaker: " in err and "fresh window" in err
        row = mailing_row(db, mailing_id)
        assert row["state"] == "queued" and row["tripped"] is None and float(row["breaker_since"]) > 0  # type: ignore[arg-type]
        shown = json.loads(cli.ok("breaker", str(mailing_id), "--json"))
        assert shown["tripped"] is None and shown["hard_percent"] == 5.0


def test_window_is_rebuilt_from_the_ledger_after_a_sender_restart(tmp_path: Path, body: Path, db: Path) -> None:
    """The window survives a restart: a new sender's breaker has the ledger's latest outcomes,
    and trips on the next failure it sees; a restart after a trip starts from an empty window."""
    with Sink(fault=unknown_users) as sink:
        cli = Cli(db, sink.port, MAILTOWER_BREAKER_MIN="1000")  # never judged during the run
        mailing_id = new_mailing(cli, tmp_path, body, mixed(90, 10), "--now")
        cli.ok("run", "--until-idle")
        assert mailing_row(db, mailing_id)["state"] == "completed"

    async def check() -> None:
        store = await open_store(db)
        try:
            mailing = await store.mailing(mailing_id)
            settings = Settings(db=db, breaker_window=50, breaker_min=20)
            breaker = await Breakers(settings).for_mailing(store, mailing)
            assert len(breaker) == 50  # the 50 latest of 100 outcomes
            with connect(db) as conn:
                latest = conn.execute(
                    "SELECT state FROM recipients WHERE mailing_id = ? ORDER BY updated_at DESC, id DESC LIMIT 50",
                    (mailing_id,),
                ).fetchall()
            assert breaker.failed == sum(1 for (s,) in latest if s == "failed") > 0
            # A mailing the operator restarts after a trip starts afresh.
            async with store.write() as tx:  # as if the breaker had stopped it
                await tx.set_state(mailing_id, MailingState.STOPPED, tripped="breaker: test")
            await Lifecycle(store).send_now(mailing_id, despite_trip=True)
            fresh = await Breakers(settings).for_mailing(store, await store.mailing(mailing_id))
            assert len(fresh) == 0
        finally:
            await store.close()

    asyncio.run(check())


def test_breaker_command_refuses_a_current_mailing(cli: Cli, tmp_path: Path, body: Path, db: Path) -> None:
    mailing_id = new_mailing(cli, tmp_path, body, recipients(3), "--now")
    code, out, err = cli("breaker", str(mailing_id), "--breaker-hard", "2%")
    assert code == 2 and "stop it before" in err and len(err.strip().splitlines()) == 1
    assert mailing_row(db, mailing_id)["breaker_hard"] is None
    assert MailingState(mailing_row(db, mailing_id)["state"]) is MailingState.QUEUED
