"""Crash safety: `mailtower run` killed with SIGKILL at random moments, again and again.

At the end every recipient has been received at least once, nobody is lost, extra copies are
at most (connections in flight) x (kills), and the ledger says exactly what the server holds.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from mailtower.core.sink import Sink
from tests.helpers import Cli, recipients, wait_until, write_csv

# SQLite only (issue 15): the kill -9 harness checks the SQLite file and its WAL after every kill; the PostgreSQL store has tests of its own (test_postgres_*.py).
pytestmark = pytest.mark.sqlite_only

N = 1500
CONNECTIONS = 4
KILLS = 10


def in_flight_on_disk(db: Path) -> int:
    """Rows a killed sender left `sending`: those are the ones the next start counts in doubt."""
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM recipients WHERE state = 'sending'").fetchone()[0]


def sent_in_ledger(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT email FROM recipients WHERE state = 'sent'")}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_many_times_loses_nothing(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    db = tmp_path / "crash.db"
    body = tmp_path / "body.txt"
    body.write_text("Hello {{ name }}\n", encoding="utf-8")
    people = write_csv(tmp_path / "people.csv", recipients(N))
    with Sink(latency=0.002) as sink:
        cli = Cli(db, sink.port, MAILTOWER_SMTP_CONNECTIONS=str(CONNECTIONS), MAILTOWER_RATE="600")
        mailing_id = int(cli.ok("new", "--name", "crash", "--subject", "Hi", "--from", "news@example.org",
                                "--text", str(body), "--recipients", str(people), "--now"))
        kills = 0
        max_in_doubt = 0
        for _ in range(KILLS):
            before = len(sink.deliveries)
            runner = cli.popen("run", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                # Kill at a random moment once this run is really sending, counted in deliveries
                # (at most half the mailing over all kills): counted in time, a fast host finished
                # the mailing in fewer kills than the test needs.
                target = before + rng.randint(1, max(1, N // (2 * KILLS)))
                wait_until(lambda: len(sink.deliveries) >= target or runner.poll() is not None, timeout=30,
                           what=f"{target - before} deliveries")
            finally:
                if runner.poll() is None:
                    runner.send_signal(signal.SIGKILL)
                    kills += 1
                runner.wait(timeout=10)
            # In doubt means "may have reached the server": at most one message per connection,
            # never a whole claimed batch.
            left = in_flight_on_disk(db)
            max_in_doubt = max(max_in_doubt, left)
            assert left <= CONNECTIONS, f"{left} rows left in doubt by one kill with {CONNECTIONS} connections"
            if len(sink.received()) >= N:
                break
        fast = Cli(db, sink.port, MAILTOWER_SMTP_CONNECTIONS=str(CONNECTIONS))
        fast.ok("run", "--until-idle")
        received = sink.received()

    everyone = {r["email"] for r in recipients(N)}
    lost = everyone - set(received)
    extra = sum(count - 1 for count in received.values())
    bound = CONNECTIONS * kills
    print(f"seed {seed}: kills {kills}, lost {len(lost)}, extra copies {extra}, bound {bound}, most in doubt after a kill {max_in_doubt}")
    assert kills >= 5
    assert not lost
    assert extra <= bound
    assert sent_in_ledger(db) == set(received) == everyone
    with sqlite3.connect(db) as conn:
        state, sent, total, in_doubt = conn.execute(
            "SELECT state, sent, total, in_doubt FROM mailings WHERE id = ?", (mailing_id,)
        ).fetchone()
    assert (state, sent, total, in_doubt) == ("completed", N, N, 0)
