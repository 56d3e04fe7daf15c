"""The sender's batch on PostgreSQL by itself (issue 15): what one record-and-claim transaction
costs this process and the server, with no SMTP, sink or second process in the way.

    .venv/bin/python tests/bench/bench_pg_batch.py [--n 10000] [--marks 5] [--rounds 5] [--statements]

It starts a throw-away server as the tests do (tests/pg_server.py) and, in a fresh database per
round, replays what one sender does against an instant sink: every batch writes the outcomes
(sent) of the rows the batch before marked and marks the next `--marks` rows `sending`, and it
claims 200 rows whenever fewer than 100 are held. At K=8 against smtp-sink a batch carried about
4.5 marks (bench_send: 0.22 transactions a message), hence the default of 5. The store claims as
a registered sender (fenced), as `mailtower run` does on PostgreSQL.

Printed per round and as medians: this process's CPU per batch, the server backend's CPU per
batch, wall time per batch, and the rate of the ledger alone in messages a second. With
--statements the server loads pg_stat_statements (shipped with Debian's postgresql) and the
statements the batch runs are listed with their calls and mean execution time.

Why a separate bench: whole rounds of bench_send on this 2-core machine move by a third with the
host's speed, more than most changes to the batch are worth. Measure such a change here first,
old code against new back to back: `PYTHONPATH` pointing at a worktree of the old commit, seen
as `mailtower` through a symlink, loads the old store (the script prints which one it loaded).
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(1, str(ROOT))  # tests.*; mailtower itself from the environment (a PYTHONPATH wins)

from mailtower.core import store_pg  # noqa: E402
from mailtower.core.db_target import parse_pg_url  # noqa: E402
from mailtower.core.domain import RecipientState  # noqa: E402
from mailtower.core.lifecycle import Lifecycle  # noqa: E402
from mailtower.core.operations import Draft, create_mailing  # noqa: E402
from mailtower.core.store import Outcome, Store, open_store  # noqa: E402
from mailtower.tui import loops  # noqa: E402 - the sender's own event loop (uvloop where installed)
from tests.helpers import recipients, write_csv  # noqa: E402
from tests.pg_server import PgServer, sql_execute, sql_rows, start_server  # noqa: E402

CLAIM, REFILL_BELOW = 200, 100  # as the sender at K=8 (batch size 8 * 25, refilled at half)


@dataclass(frozen=True)
class Round:
    client_ms: float  # this process's CPU per batch
    server_ms: float  # the backend's CPU per batch
    wall_ms: float  # per batch
    rate: float  # messages a second
    batches: int


def backend_cpu(pid: int) -> float:
    """Seconds of CPU (user + system) the server process `pid` has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def sending_mailing(store: Store, n: int, tmp: Path) -> int:
    people = write_csv(tmp / "people.csv", recipients(n))
    mailing_id, _ = await create_mailing(store, Draft("batch", "Hi", "news@example.org", "Hello", None), people,
                                         lambda _row: None)
    await Lifecycle(store).send_now(mailing_id)
    await Lifecycle(store).start(mailing_id)
    return mailing_id


async def replay(store: Store, mailing_id: int, n: int, marks_per_batch: int) -> tuple[int, int]:
    """Mark, then record, every row of the mailing as a sender would; (batches, messages)."""
    held: list[int] = []
    marked: list[int] = []
    batches = sent = 0
    # As the sender: each batch is told the mailing as the one before returned it (a store of an
    # older commit, loaded to compare, may not take it).
    known: dict[str, Any] = {"known": None} if "known" in inspect.signature(store.record_and_claim).parameters else {}
    for _ in range(4 * n + 10):  # bounded: each pass marks or records rows until none are left
        outcomes = [Outcome(row_id, RecipientState.SENT, 250, None) for row_id in marked]
        marks = held[:marks_per_batch]
        claim = CLAIM if len(held) < REFILL_BELOW else 0
        claimed, mailing = await store.record_and_claim(mailing_id, outcomes, claim, rate=1.0, marks=marks, held=set(held),
                                                        **known)
        if known:
            known["known"] = mailing
        batches += 1
        sent += len(outcomes)
        held = held[len(marks):] + [row.id for row in claimed]
        marked = marks
        if not (held or marked):
            return batches, sent
    raise AssertionError(f"the replay did not finish: {sent} of {n} recorded")


async def one_round(server: PgServer, n: int, marks_per_batch: int, statements: bool) -> Round:
    url = server.new_database()
    target = parse_pg_url(url, "--db")
    store = await open_store(target)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            mailing_id = await sending_mailing(store, n, Path(tmp))
        store.claim_owner = await store.register_sender("bench", os.getpid(), 8)
        sql_execute(target, "VACUUM ANALYZE recipients")
        if statements:
            sql_execute(target, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            sql_execute(target, "SELECT pg_stat_statements_reset()")
        conn = await store.pg.ready()  # type: ignore[attr-defined]
        pid = (await (await conn.execute("SELECT pg_backend_pid()")).fetchone())[0]  # type: ignore[index]
        server_before, client_before, start = backend_cpu(pid), time.process_time(), time.perf_counter()
        batches, sent = await replay(store, mailing_id, n, marks_per_batch)
        wall = time.perf_counter() - start
        client, server_cpu = time.process_time() - client_before, backend_cpu(pid) - server_before
        if statements:
            print_statements(target)
    finally:
        await store.close()
    assert sent == n, f"{sent} of {n} recorded"
    return Round(client * 1000 / batches, server_cpu * 1000 / batches, wall * 1000 / batches, sent / wall, batches)


def print_statements(target: object) -> None:
    rows = sql_rows(target, "SELECT calls, total_exec_time / calls, rows / calls, regexp_replace(query, '\\s+', ' ', 'g')"
                            " FROM pg_stat_statements WHERE calls >= 10 ORDER BY total_exec_time DESC LIMIT 8")
    for calls, mean_ms, rows_per_call, query in rows:
        print(f"    {calls:6d} calls  {mean_ms * 1000:7.0f} us each  {rows_per_call:6.1f} rows  {query[:90]}")


def load_pg_stat_statements(server: PgServer) -> None:
    with open(server.data / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
        conf.write("shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = 'all'\n")
    server._run(str(server.bindir / "pg_ctl"), "-D", str(server.data), "-l", str(server.root / "server.log"),  # noqa: SLF001
                "-w", "restart")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="recipients per round")
    ap.add_argument("--marks", type=int, default=5, help="rows marked (and recorded) per batch")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--statements", action="store_true", help="list the statements' mean times (pg_stat_statements)")
    args = ap.parse_args()
    if args.n < 1 or args.marks < 1 or args.rounds < 1:
        ap.error("--n, --marks and --rounds must be at least 1")
    print(f"store: {store_pg.__file__}; N={args.n}, {args.marks} marks a batch, {args.rounds} rounds", flush=True)
    server = start_server()
    try:
        if args.statements:
            load_pg_stat_statements(server)
        rounds = []
        for number in range(1, args.rounds + 1):
            figures = loops.run(one_round(server, args.n, args.marks, args.statements))
            rounds.append(figures)
            print(f"round {number}: client CPU {figures.client_ms:.3f} ms/batch, server CPU {figures.server_ms:.3f} ms/batch, "
                  f"wall {figures.wall_ms:.3f} ms/batch, {figures.rate:,.0f} msg/s ({figures.batches} batches)", flush=True)
    finally:
        server.stop()
    median = statistics.median
    print(f"median: client CPU {median(r.client_ms for r in rounds):.3f} ms/batch, "
          f"server CPU {median(r.server_ms for r in rounds):.3f} ms/batch, wall {median(r.wall_ms for r in rounds):.3f} ms/batch, "
          f"{median(r.rate for r in rounds):,.0f} msg/s; per message: client {median(r.client_ms for r in rounds) / args.marks:.3f} ms, "
          f"server {median(r.server_ms for r in rounds) / args.marks:.3f} ms")


if __name__ == "__main__":
    main()
