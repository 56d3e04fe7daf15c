"""Several operators on one database at once: one sender, no double sends, no crashes."""

from __future__ import annotations

import json
import random
import pytest
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mailtower.core.sink import Sink
from tests.helpers import Cli, recipients, wait_until, write_csv
from tests.pg_server import connect


@pytest.fixture
def db(db_target):
    """Every test here runs on SQLite and on PostgreSQL (issue 15), except those marked SQLite-only."""
    return db_target


def test_two_senders_and_many_commands_at_once(tmp_path: Path, db: Path) -> None:
    body = tmp_path / "b.txt"
    body.write_text("Hello {{ name }}\n")
    rng = random.Random(7)
    with Sink(latency=0.002) as sink:
        cli = Cli(db, sink.port, MAILTOWER_SMTP_CONNECTIONS="3", MAILTOWER_RATE="300")

        def new(i: int, n: int, *when: str) -> int:
            people = write_csv(tmp_path / f"p{i}.csv", recipients(n, start=i * 10_000))
            return int(cli.ok("new", "--name", f"m{i}", "--subject", "s", "--from", "news@example.org",
                              "--text", str(body), "--recipients", str(people), *when))

        first = [new(i, 300, "--now") for i in range(3)]
        runners = [cli.popen("run", stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
        try:
            def command(args: list[str]) -> tuple[list[str], int, str]:
                proc = cli.popen(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                out, err = proc.communicate(timeout=60)
                return args, proc.returncode, err.decode()

            jobs: list[list[str]] = []
            for _ in range(8):
                jobs.append(["status", "--json"])
                jobs.append(["move", str(rng.choice(first)), rng.choice(["up", "down", "top"])])
            jobs += [["limits", "--rate", str(rng.choice([200, 300, 400]))] for _ in range(3)]
            for i in range(3, 6):
                people = write_csv(tmp_path / f"p{i}.csv", recipients(100, start=i * 10_000))
                jobs.append(["new", "--name", f"m{i}", "--subject", "s", "--from", "news@example.org",
                             "--text", str(body), "--recipients", str(people), "--now"])
            with ThreadPoolExecutor(max_workers=6) as pool:
                results = list(pool.map(command, jobs))

            wait_until(lambda: not json.loads(cli.ok("status", "--json"))["current"], timeout=60, what="queue empty")
            for runner in runners:
                if runner.poll() is None:
                    runner.terminate()  # a graceful stop: exit status 0
            outcomes = [(r.wait(timeout=60), r.stderr.read().decode()) for r in runners]
        finally:
            for runner in runners:  # never leave a sender behind when the test fails
                if runner.poll() is None:
                    runner.kill()
                    runner.wait(timeout=10)

    for args, code, err in results:
        assert "Traceback" not in err, (args, err)
        if args[0] == "move":
            assert code in (0, 2), (args, err)  # refused when that mailing has already completed
            if code == 2:
                assert len(err.strip().splitlines()) == 1
        else:
            assert code == 0, (args, err)
    if isinstance(db, Path):
        # Exactly one of the two runners was the sender; the other was told so and sent nothing.
        assert sorted(code for code, _ in outcomes) == [0, 2]
        assert any("another sender" in err for _, err in outcomes)
    else:  # PostgreSQL: both are senders of one fleet (core/fleet.py); still each recipient once
        assert [code for code, _ in outcomes] == [0, 0], outcomes
    assert all("Traceback" not in err for _, err in outcomes)

    received = sink.received()
    assert len(received) == 3 * 300 + 3 * 100
    assert set(received.values()) == {1}
    with connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM mailings WHERE state = 'completed'").fetchone()[0] == 6
        assert conn.execute("SELECT COUNT(*) FROM recipients WHERE state != 'sent'").fetchone()[0] == 0
