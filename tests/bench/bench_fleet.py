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
   (target >= 1.8 for S=2). Each sender gets its own sink process (tests/bench/latency_sink.py, a
   lean asyncio SMTP sink: two aiosmtpd sinks took ~0.75 of a core here, which the senders and
   the server then lacked) so the sink is not the bottleneck.
Rates are "while sending": (sent - 1) / (first to last outcome in the ledger); whole-process rates
(start of the first process to exit of the last) are printed beside them.
Under each figure a "costs" line gives what holds on a shared machine: the senders' CPU per message
and, on PostgreSQL, transactions committed per message (a sender batch is one transaction in one
round trip, so these are the round trips per message too) and the throw-away server's CPU per message.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import latency_sink  # noqa: E402 - beside this file, on sys.path as the benchmark's directory
from host_cpu import host_busy  # noqa: E402 - beside this file, too

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
LATENCY_K, LATENCY = 32, 0.05



@dataclass(frozen=True)
class Figures:
    sending: float  # (sent - 1) / (first to last outcome)
    wall: float  # sent / (first start to last exit)
    cpu_ms: float = 0.0  # the senders' CPU (user + system) per message, ms
    commits: float | None = None  # PostgreSQL: transactions committed in the database per message
    server_ms: float | None = None  # throw-away server: its processes' CPU per message, ms
    busy_share: float = 0.0  # the share of all the host's cores busy while the senders ran (0..1)


def server_cpu(data_dir: Path | None) -> float | None:
    """Seconds of CPU the throw-away server's processes used so far (exited backends counted by
    the postmaster that reaped them); None for a server that is not ours (a postgresql:// URL)."""
    if data_dir is None:
        return None
    try:
        postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
        fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
        total = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
        for child in Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split():
            child_fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(child_fields[11]) + int(child_fields[12])
    except (OSError, ValueError, IndexError):
        return None
    return total / os.sysconf("SC_CLK_TCK")


def commits(db: str) -> int | None:
    if not db.startswith("postgres"):
        return None
    from mailtower.core.db_target import parse_pg_url
    from tests.pg_server import sql_rows

    ((count,),) = sql_rows(parse_pg_url(db, "--db"),
                           "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
    return int(count)


@dataclass(frozen=True)
class Databases:
    new: Callable[[], str]  # a fresh database's URL (or the one given)
    data_dir: Path | None = None  # the throw-away server's data directory (its postmaster.pid)


@contextlib.contextmanager
def postgres(db: str) -> Iterator[Databases]:
    """Fresh databases on a throw-away server (`postgres`), or `db` every time."""
    if db != "postgres":
        yield Databases(lambda: db)
        return
    sys.path.insert(0, str(ROOT))
    from tests.pg_server import start_server

    server = start_server()
    try:
        yield Databases(server.new_database, server.data)
    finally:
        server.stop()


@contextlib.contextmanager
def sinks(count: int, latency: float) -> Iterator[list[int]]:
    """`count` lean sinks (latency_sink.py: aiosmtpd's CPU would be the bottleneck on 2 cores),
    each in a process of its own; their ports."""
    with latency_sink.started(count, latency) as started:
        yield started.ports


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


def run_senders(envs: list[dict[str, str]]) -> tuple[float, float]:
    """Start one `mailtower run --until-idle` per environment at once; seconds until the last
    exits, and the CPU seconds they used together."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    procs = [subprocess.Popen([PY, "-m", "mailtower.tui.cli", "run", "--until-idle"], env=env) for env in envs]
    codes = [p.wait(timeout=3600) for p in procs]
    assert codes == [0] * len(procs), f"senders exited {codes}"
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


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


def one_round(tmp: Path, db: str, n: int, ports: list[int], k: int, tag: str, data_dir: Path | None = None,
              **extra: str) -> Figures:
    """One mailing of `n` sent by one sender per port; `data_dir`: the throw-away server's (its CPU is counted)."""
    mailing_id = new_mailing(tmp, db, n, tag)
    envs = [environment(db, port, k * len(ports), **extra) for port in ports]  # k each: the limit is the fleet's
    server = data_dir if db.startswith("postgres") else None
    commits_before, server_before = commits(db), server_cpu(server)
    busy_before = host_busy()
    elapsed, cpu = run_senders(envs)
    busy = (host_busy() - busy_before) / (elapsed * (os.cpu_count() or 1))
    figures = ledger_figures(db, mailing_id, n, elapsed)
    if commits_before is not None:
        time.sleep(1.0)  # the server publishes its transaction counts within a second
    commits_after, server_after = commits(db), server_cpu(server)
    return replace(
        figures, cpu_ms=cpu * 1000 / n, busy_share=busy,
        commits=None if commits_before is None or commits_after is None else (commits_after - commits_before) / n,
        server_ms=None if server_before is None or server_after is None else (server_after - server_before) * 1000 / n,
    )


def costs(figures: list[Figures]) -> str:
    """What holds under load: CPU per message, and on PostgreSQL transactions per message (each
    sender batch is one round trip, so this is round trips per message too)."""
    text = f"sender CPU {statistics.median(f.cpu_ms for f in figures):.3f} ms/msg"
    if figures[0].commits is not None:
        text += f", {statistics.median(f.commits for f in figures):.3f} transactions/msg"  # type: ignore[misc]
    if figures[0].server_ms is not None:
        text += f", server CPU {statistics.median(f.server_ms for f in figures):.3f} ms/msg"  # type: ignore[misc]
    return text + f", host busy {statistics.median(f.busy_share for f in figures):.0%} of {os.cpu_count()} cores"


def cpu_needed(lite: list[Figures], pg: list[Figures], ratio: float) -> str:
    """The cores PostgreSQL's sender and server would use at `ratio` times SQLite's median rate,
    at their measured CPU per message (the sink's and the kernel's share not counted)."""
    per_message = statistics.median(f.cpu_ms for f in pg) + statistics.median(f.server_ms or 0.0 for f in pg)
    rate = ratio * statistics.median(f.sending for f in lite)
    return (f"  at {ratio} x SQLite's median ({rate:,.0f} msg/s), PostgreSQL's sender + server at "
            f"{per_message:.3f} ms/msg would use {rate * per_message / 1000:.2f} of the host's {os.cpu_count()} cores")


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):,.0f}, min {min(values):,.0f}, max {max(values):,.0f}"


def fleet_block(args: argparse.Namespace, tmp: Path, smtp_sink_port: Callable[[], tuple[int, Callable[[], None]]]) -> None:
    """The figures of the module docstring; `smtp_sink_port()` starts Postfix's smtp-sink (port, stop)."""
    with postgres(args.db) as dbs:
        port, stop = smtp_sink_port()
        pg: list[Figures] = []
        lite: list[Figures] = []
        try:
            for r in range(args.rounds):
                for kind in (("sqlite", "postgres") if r % 2 == 0 else ("postgres", "sqlite")):
                    db = str(tmp / f"fleet-lite{r}.db") if kind == "sqlite" else dbs.new()
                    (lite if kind == "sqlite" else pg).append(one_round(tmp, db, args.n, [port], args.k, f"{kind}{r}",
                                                                        dbs.data_dir))
                print(f"round {r + 1}, K={args.k}: SQLite {lite[-1].sending:,.0f} msg/s (whole {lite[-1].wall:,.0f})   "
                      f"PostgreSQL {pg[-1].sending:,.0f} msg/s (whole {pg[-1].wall:,.0f})   "
                      f"ratio {pg[-1].sending / lite[-1].sending:.3f}", flush=True)
        finally:
            stop()
        ratios = [p.sending / s.sending for p, s in zip(pg, lite)]
        print(f"one sender K={args.k}: SQLite {spread([f.sending for f in lite])} msg/s; PostgreSQL "
              f"{spread([f.sending for f in pg])} msg/s; PostgreSQL / SQLite median {statistics.median(ratios):.3f} "
              f"(rounds {', '.join(f'{x:.3f}' for x in ratios)}; target >= 0.8)")
        print(f"  costs (median): SQLite: {costs(lite)}; PostgreSQL: {costs(pg)}")
        if pg[0].server_ms is not None:
            print(cpu_needed(lite, pg, 0.8))
        if args.senders < 2:
            return
        n = max(args.n, 4000)
        one: list[Figures] = []
        many: list[Figures] = []
        with sinks(args.senders, LATENCY) as ports:
            for r in range(args.rounds):
                for count in ((1, args.senders) if r % 2 == 0 else (args.senders, 1)):
                    (one if count == 1 else many).append(one_round(tmp, dbs.new(), n, ports[:count], LATENCY_K,
                                                                          f"s{count}-{r}", dbs.data_dir))
                print(f"round {r + 1}, {LATENCY * 1000:.0f} ms per final dot, K={LATENCY_K} each: one sender "
                      f"{one[-1].sending:,.0f} msg/s (whole {one[-1].wall:,.0f})   {args.senders} senders "
                      f"{many[-1].sending:,.0f} msg/s (whole {many[-1].wall:,.0f})   "
                      f"ratio {many[-1].sending / one[-1].sending:.3f}", flush=True)
        ratios = [m.sending / o.sending for m, o in zip(many, one)]
        print(f"{args.senders} senders / one sender (K={LATENCY_K} each, {LATENCY * 1000:.0f} ms replies): one "
              f"{spread([f.sending for f in one])} msg/s; {args.senders} {spread([f.sending for f in many])} msg/s; "
              f"median ratio {statistics.median(ratios):.3f} (rounds {', '.join(f'{x:.3f}' for x in ratios)}; "
              f"target >= 1.8); K/delay per sender {LATENCY_K / LATENCY:,.0f}")
        print(f"  costs (median): one sender: {costs(one)}; {args.senders} senders: {costs(many)}")
        print(f"load: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs")
