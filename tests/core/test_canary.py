"""The canary: a sample spread over the domains goes out slowly, the mailing holds, then goes on
by itself unless the breaker tripped (issue 13, item 5). Real sink, real SQLite; no sleeps for
synchronisation (the hold is a fraction of a minute, allowed by --canary-wait)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from mailtower.core.canary import canary_minimum, parse_size, sample_size
from mailtower.core.config import Settings, load_settings
from mailtower.core.domain import Canary, CanaryPhase
from mailtower.core.errors import UserError
from mailtower.core.sender import Sender
from mailtower.core.sink import Sink
from mailtower.core.store import canary_from_text, open_store
from tests.helpers import Cli, recipients, wait_until, write_csv
from tests.pg_server import connect

@pytest.fixture
def db(db_target):
    """Every test here that takes `db` runs on SQLite and on PostgreSQL (issue 15)."""
    return db_target



@pytest.fixture
def body(tmp_path: Path) -> Path:
    path = tmp_path / "body.txt"
    path.write_text("Hello {{ name }}\n", encoding="utf-8")
    return path


def spread() -> list[dict[str, str]]:
    """40 at big.example, 20 at mid.example, 2 at small.example, in blocks (ledger order)."""
    return recipients(40, "big.example") + recipients(20, "mid.example") + recipients(2, "small.example")


def new_mailing(cli: Cli, tmp_path: Path, body: Path, rows: list[dict[str, str]], *extra: str, name: str = "Sale") -> int:
    path = write_csv(tmp_path / f"{name}.csv", rows)
    out = cli.ok("new", "--name", name, "--subject", "Hi", "--from", "news@example.org", "--text", str(body),
                 "--recipients", str(path), *extra)
    return int(out.strip())


def canary_of(db: Path, mailing_id: int) -> Canary | None:
    with connect(db) as conn:
        return canary_from_text(conn.execute("SELECT canary FROM mailings WHERE id = ?", (mailing_id,)).fetchone()[0])


def state_of(db: Path, mailing_id: int) -> str:
    with connect(db) as conn:
        return str(conn.execute("SELECT state FROM mailings WHERE id = ?", (mailing_id,)).fetchone()[0])


def event_kinds(db: Path, mailing_id: int) -> list[tuple[str, str]]:
    with connect(db) as conn:
        return conn.execute("SELECT kind, detail FROM events WHERE mailing_id = ? ORDER BY id", (mailing_id,)).fetchall()


class Background:
    """A real Sender on its own thread and loop, stopped (bounded) at the end."""

    def __init__(self, settings: Settings) -> None:
        self.sender = Sender(settings)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self.sender.run())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def __enter__(self) -> "Background":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sender.request_stop()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "the sender did not stop in time"
        assert self.error is None, self.error


def settings(db: Path, port: int, **extra: object) -> Settings:
    return Settings(db=db, smtp_port=port, connections=2, retry_base=0.2, retry_max=0.5, **extra)  # type: ignore[arg-type]


# ---- pure parts ----------------------------------------------------------------------------------


def test_sizes_and_minimum() -> None:
    assert parse_size("50") == (50.0, False) and parse_size("10%") == (10.0, True) and parse_size(" 2.5 % ") == (2.5, True)
    for bad in ["0", "-3", "nan", "inf", "0%", "101%", "5%%", "", "1e3", "٣", "99999999999"]:
        with pytest.raises(UserError) as env:
            parse_size(bad)
        assert str(env.value).startswith("--canary: ")
    assert sample_size(Canary(10, True, 1, 0), 62) == 7 and sample_size(Canary(100, False, 1, 0), 62) == 62
    assert canary_minimum(Settings(breaker_min=20), 50) == 10 and canary_minimum(Settings(), 2) == 2
    with pytest.raises(UserError) as env:
        load_settings(environ={"MAILTOWER_CANARY_WAIT": "nan"}, config_path=Path("/dev/null"))
    assert str(env.value).startswith("MAILTOWER_CANARY_WAIT: ")


def test_bad_canary_options_create_nothing(cli: Cli, tmp_path: Path, body: Path) -> None:
    cli.ok("limits")  # the database first: a refused command on a new one leaves none to look at
    path = write_csv(tmp_path / "r.csv", recipients(3))
    for extra in (["--canary", "0"], ["--canary", "5", "--canary-rate", "inf"], ["--canary", "5", "--canary-wait", "-1"],
                  ["--canary-rate", "2"]):
        code, out, err = cli("new", "--name", "X", "--subject", "s", "--from", "a@example.org", "--text", str(body),
                             "--recipients", str(path), *extra)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, (extra, err)
    assert '"inactive": []' in cli.ok("status", "--json")


# ---- end to end ---------------------------------------------------------------------------------


def test_canary_samples_every_domain_slowly_then_holds_then_goes_on(tmp_path: Path, body: Path, db: Path) -> None:
    with Sink() as sink:
        cli = Cli(db, sink.port)
        mailing_id = new_mailing(cli, tmp_path, body, spread(), "--now", "--canary", "6", "--canary-rate", "10",
                                 "--canary-wait", "0.02")  # 1.2 s hold
        started = time.monotonic()
        cli.ok("run", "--until-idle")
        elapsed = time.monotonic() - started
        first = [d.recipient.split("@")[1] for d in sink.deliveries[:6]]
        # Round-robin by domain, biggest first: every domain is in the sample, even the small one.
        assert Counter(first) == Counter({"big.example": 2, "mid.example": 2, "small.example": 2})
        assert len(sink.deliveries) == 62 and state_of(db, mailing_id) == "completed"
        assert elapsed >= 0.5 + 1.2 * 0.9  # 6 at 10/s, then the hold (upper bound: nothing to prove)
        canary = canary_of(db, mailing_id)
        assert canary is not None and canary.phase is CanaryPhase.DONE and (canary.done, canary.total) == (6, 6)
        details = [d for k, d in event_kinds(db, mailing_id) if k == "canary"]
        assert any("sending to 6 recipients first" in d for d in details)
        assert any("holding" in d for d in details) and any("passed" in d for d in details)


def test_hold_survives_a_sender_restart_and_later_mailings_wait(tmp_path: Path, body: Path, db: Path) -> None:
    with Sink() as sink:
        cli = Cli(db, sink.port)
        first = new_mailing(cli, tmp_path, body, spread(), "--now", "--canary", "10%", "--canary-rate", "50",
                            "--canary-wait", "60")
        second = new_mailing(cli, tmp_path, body, recipients(5, "other.example"), "--now", name="Next")
        with Background(settings(db, sink.port)):
            wait_until(lambda: (c := canary_of(db, first)) is not None and c.phase is CanaryPhase.HOLDING,
                       timeout=20, what="the canary holds")
        assert len(sink.deliveries) == 7  # 10 % of 62: the sample only
        held = canary_of(db, first)
        assert held is not None and held.until is not None and held.until > time.time() + 30
        assert state_of(db, first) == "queued" and state_of(db, second) == "queued"

        # A new sender resumes the hold (not the full send), and the next mailing waits behind it.
        with Background(settings(db, sink.port)) as again:
            wait_until(lambda: again.sender.snapshot.state.value == "idle", timeout=20, what="the sender idles")
            assert len(sink.deliveries) == 7
            assert canary_of(db, first) == held

            async def shorten() -> None:  # the operator's clock moves on: the hold ends now
                store = await open_store(db)
                try:
                    from dataclasses import replace
                    await store.put_canary(first, replace(held, until=time.time()))
                finally:
                    await store.close()

            asyncio.run(shorten())
            wait_until(lambda: state_of(db, second) == "completed", timeout=30, what="both mailings sent")
        assert state_of(db, first) == "completed" and len(sink.deliveries) == 67
        # Strict queue order: every recipient of the first went out before any of the second.
        domains = [d.recipient.split("@")[1] for d in sink.deliveries]
        assert domains.index("other.example") == 62


def bad_big(stage: str, address: str, attempt: int) -> str | None:
    return "550 5.1.1 user unknown" if stage == "rcpt" and address.endswith("@big.example") else None


def test_a_bad_canary_trips_the_breaker_and_the_rest_is_never_sent(tmp_path: Path, body: Path, db: Path) -> None:
    with Sink(fault=bad_big) as sink:
        cli = Cli(db, sink.port)
        mailing_id = new_mailing(cli, tmp_path, body, spread(), "--now", "--canary", "9", "--canary-rate", "20",
                                 "--canary-wait", "0.01")
        cli.ok("run", "--until-idle")
        assert state_of(db, mailing_id) == "stopped"
        with connect(db) as conn:
            tripped, sent, failed = conn.execute("SELECT tripped, sent, failed FROM mailings WHERE id = ?",
                                                 (mailing_id,)).fetchone()
        assert tripped.startswith("breaker: ") and "failed permanently" in tripped
        assert sent + failed <= 9  # only the sample was tried
        canary = canary_of(db, mailing_id)
        assert canary is not None and canary.phase is CanaryPhase.SENDING
        # Its canary was sent: a new one cannot be planned, and the refusal changes nothing.
        code, out, err = cli("schedule", str(mailing_id), "--at", "2099-01-01 09:00", "--tz", "UTC", "--canary", "5")
        assert code == 2 and len(err.strip().splitlines()) == 1 and "canary already" in err
        assert state_of(db, mailing_id) == "stopped" and canary_of(db, mailing_id) == canary
