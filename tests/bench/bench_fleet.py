"""The ledger on PostgreSQL and several senders (issue 15), for tests/bench/bench_send.py:

    .venv/bin/python tests/bench/bench_send.py --db postgres [--senders 2] [--n 20000] [--k 8] [--rounds 3]
    .venv/bin/python tests/bench/bench_send.py --db postgresql://user@127.0.0.1:5432/bench --senders 2

`--db postgres` starts a throw-away PostgreSQL server as the tests do (tests/pg_server.py: Debian's
initdb/pg_ctl, a temporary directory, 127.0.0.1, fsync off) and a fresh database per round; a
postgresql:// URL is used as given (mailings accumulate there; each round measures its own).

Figures, alternating rounds (the machine is shared: medians and the spread are printed):
1. one sender, K connections, against Postfix's smtp-sink: PostgreSQL next to SQLite (target >= 0.8);
2. with --senders S: S senders each with 32 connections (a fleet limit of 32*S: limits are the
   fleet's) against sinks that hold each final-dot reply 50 ms, next to one sender with 32
   (target >= 1.8 for S=2). Each sender gets its own sink process so the sink is not the bottleneck.
Rates are "while sending": (sent - 1) / (first to last outcome in the ledger); whole-process rates
(start of the first process to exit of the last) are printed beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
LATENCY_K, LATENCY = 32, 0.05

SINK_CODE = """
import sys
from mailtower.core.sink import Sink
with Sink(latency=float(sys.argv[1])) as sink:
    print(sink.port, flush=True)
    sys.stdin.read()
"""


@dataclass(frozen=True)
class Figures:
    sending: float  # (sent - 1) / (first to last outcome)
    wall: float  # sent / (first start to last exit)


@contextlib.contextmanager
def postgres(db: str) -> Iterator[Callable[[], str]]:
    """A factory of database URLs: fresh databases on a throw-away server (`postgres`), or `db`."""
    if db != "postgres":
        yield lambda: db
        return
    sys.path.insert(0, str(ROOT))
    from tests.pg_server import start_server

    server = start_server()
    try:
        yield server.new_database
    finally:
        server.stop()


@contextlib.contextmanager
def sinks(count: int, latency: float) -> Iterator[list[int]]:
    """`count` aiosmtpd sinks (core/sink.py), each in a process of its own; their ports."""
    procs = [subprocess.Popen([PY, "-c", SINK_CODE, str(latency)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
             for _ in range(count)]
    try:
        yield [int(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
    finally:
        for p in procs:
            p.stdin.close()  # type: ignore[union-attr]
            p.wait(timeout=30)


def environment(db: str, port: int, k: int, **extra: str) -> dict[str, str]:
    return {**os.environ, "MAILTOWER_DB": db, "MAILTOWER_CONFIG": os.devnull, "MAILTOWER_SMTP_HOST": "127.0.0.1",
            "MAILTOWER_SMTP_PORT": str(port), "MAILTOWER_SMTP_CONNECTIONS": str(k),
            "MAILTOWER_MESSAGES_PER_CONNECTION": "0", **extra}


def new_mailing(tmp: Path, db: str, n: int, tag: str) -> int:
    from bench_send import body_files  # type: ignore[import-not-found]

    people = tmp / f"{tag}.csv"
    with people.open("w", encoding="utf-8") as f:
        f.write("email,name,code\n")
        f.writelines(f"person{i}@example.com,Person {i},SPRING{i:06d}\n" for i in range(n))
    text, html = body_files(tmp)
    out = subprocess.run(
        [PY, "-m", "mailtower.tui.cli", "new", "--name", tag, "--subject", "Spring for {{ name }}",
         "--from", "news@example.org", "--text", str(text), "--html", str(html), "--recipients", str(people), "--now"],
        env=environment(db, 25, 1), check=True, capture_output=True, text=True,
    )
    return int(out.stdout.strip())


def run_senders(envs: list[dict[str, str]]) -> float:
    """Start one `mailtower run --until-idle` per environment at once; seconds until the last exits."""
    start = time.perf_counter()
    procs = [subprocess.Popen([PY, "-m", "mailtower.tui.cli", "run", "--until-idle"], env=env) for env in envs]
    codes = [p.wait(timeout=3600) for p in procs]
    assert codes == [0] * len(procs), f"senders exited {codes}"
    return time.perf_counter() - start


def ledger_figures(db: str, mailing_id: int, n: int, elapsed: float) -> Figures:
    sys.path.insert(0, str(ROOT))
    from tests.pg_server import sql_rows

    if db.startswith("postgres"):
        from mailtower.core.db_target import parse_pg_url

        target: object = parse_pg_url(db, "--db")
    else:
        target = Path(db)
    ((sent, first, last),) = sql_rows(
        target, "SELECT COUNT(*), MIN(updated_at), MAX(updated_at) FROM recipients WHERE mailing_id = ? AND state = 'sent'",
        (mailing_id,))
    assert sent == n, f"only {sent} of {n} sent"
    return Figures(sending=(n - 1) / (last - first), wall=n / elapsed)


def one_round(tmp: Path, db: str, n: int, ports: list[int], k: int, tag: str, **extra: str) -> Figures:
    mailing_id = new_mailing(tmp, db, n, tag)
    envs = [environment(db, port, k * len(ports), **extra) for port in ports]  # k each: the limit is the fleet's
    return ledger_figures(db, mailing_id, n, run_senders(envs))


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):,.0f}, min {min(values):,.0f}, max {max(values):,.0f}"


def fleet_block(args: argparse.Namespace, tmp: Path, smtp_sink_port: Callable[[], tuple[int, Callable[[], None]]]) -> None:
    """The figures of the module docstring; `smtp_sink_port()` starts Postfix's smtp-sink (port, stop)."""
    with postgres(args.db) as new_db:
        port, stop = smtp_sink_port()
        pg: list[Figures] = []
        lite: list[Figures] = []
        try:
            for r in range(args.rounds):
                for kind in (("sqlite", "postgres") if r % 2 == 0 else ("postgres", "sqlite")):
                    db = str(tmp / f"fleet-lite{r}.db") if kind == "sqlite" else new_db()
                    (lite if kind == "sqlite" else pg).append(one_round(tmp, db, args.n, [port], args.k, f"{kind}{r}"))
                print(f"round {r + 1}, K={args.k}: SQLite {lite[-1].sending:,.0f} msg/s (whole {lite[-1].wall:,.0f})   "
                      f"PostgreSQL {pg[-1].sending:,.0f} msg/s (whole {pg[-1].wall:,.0f})   "
                      f"ratio {pg[-1].sending / lite[-1].sending:.3f}", flush=True)
        finally:
            stop()
        ratios = [p.sending / s.sending for p, s in zip(pg, lite)]
        print(f"one sender K={args.k}: SQLite {spread([f.sending for f in lite])} msg/s; PostgreSQL "
              f"{spread([f.sending for f in pg])} msg/s; PostgreSQL / SQLite median {statistics.median(ratios):.3f} "
              f"(rounds {', '.join(f'{x:.3f}' for x in ratios)}; target >= 0.8)")
        if args.senders < 2:
            return
        n = max(args.n, 4000)
        one: list[Figures] = []
        many: list[Figures] = []
        with sinks(args.senders, LATENCY) as ports:
            for r in range(args.rounds):
                for count in ((1, args.senders) if r % 2 == 0 else (args.senders, 1)):
                    (one if count == 1 else many).append(one_round(tmp, new_db(), n, ports[:count], LATENCY_K, f"s{count}-{r}"))
                print(f"round {r + 1}, {LATENCY * 1000:.0f} ms per final dot, K={LATENCY_K} each: one sender "
                      f"{one[-1].sending:,.0f} msg/s (whole {one[-1].wall:,.0f})   {args.senders} senders "
                      f"{many[-1].sending:,.0f} msg/s (whole {many[-1].wall:,.0f})   "
                      f"ratio {many[-1].sending / one[-1].sending:.3f}", flush=True)
        ratios = [m.sending / o.sending for m, o in zip(many, one)]
        print(f"{args.senders} senders / one sender (K={LATENCY_K} each, {LATENCY * 1000:.0f} ms replies): one "
              f"{spread([f.sending for f in one])} msg/s; {args.senders} {spread([f.sending for f in many])} msg/s; "
              f"median ratio {statistics.median(ratios):.3f} (rounds {', '.join(f'{x:.3f}' for x in ratios)}; "
              f"target >= 1.8); K/delay per sender {LATENCY_K / LATENCY:,.0f}")
        print(f"load: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs")
