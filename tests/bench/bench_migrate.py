"""Benchmark: `mailtower migrate --to postgresql://...` of a ledger of N recipients.

Run:  .venv/bin/python tests/bench/bench_migrate.py [ROWS]        (default 1,000,000)
Builds a SQLite database (the store's schema, then raw executemany, for speed) with one mailing
of ROWS recipients, half of them sent, and events; starts the throw-away PostgreSQL of
tests/pg_server.py; runs the real command (`mailtower migrate --db ... --to ...`, in-process) and
prints the wall time, rows per second, and the process's peak memory (the ledger is streamed in
chunks, so it must not grow with ROWS).
"""

from __future__ import annotations

import asyncio
import resource
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # `tests.pg_server` when run as a script

from mailtower.core.store import Store  # noqa: E402
from mailtower.tui.cli import main as cli_main  # noqa: E402
from tests.pg_server import start_server  # noqa: E402


def recipients(count: int) -> Iterator[tuple]:
    for i in range(count):
        email = f"user{i:07d}@example.com"
        sent = i % 2 == 0
        yield (1, email, email, f"Reader {i}", '{"code": "%d"}' % i, "sent" if sent else "pending",
               1 if sent else 0, 250 if sent else None, 1.7e9 + i if sent else None)


def build(db: Path, count: int) -> None:
    async def schema() -> None:
        store = await Store.open(db)
        await store.close()

    asyncio.run(schema())
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(
            "INSERT INTO mailings (id, name, subject, from_addr, text_body, state, total, sent, created_at, updated_at) "
            "VALUES (1, 'bench', 'Hi', 'news@example.org', 'Hello', 'stopped', ?, ?, '2026-11-30T00:00:00Z', "
            "'2026-11-30T00:00:00Z')", (count, (count + 1) // 2))
        conn.executemany(
            "INSERT INTO recipients (mailing_id, email, email_key, name, fields, state, attempts, last_code, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", recipients(count))
        conn.executemany("INSERT INTO events (mailing_id, at, kind, detail) VALUES (1, '2026-11-30T00:00:00Z', 'note', ?)",
                         ((f"event {i}",) for i in range(1000)))
    conn.close()


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory(prefix="bench-migrate-") as tmp:
        db = Path(tmp) / "source.db"
        started = time.perf_counter()
        build(db, count)
        print(f"built {count:,} recipients in {time.perf_counter() - started:.1f} s "
              f"({db.stat().st_size / 1e6:.0f} MB)", flush=True)
        server = start_server()
        try:
            url = server.new_database(empty=True)
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            started = time.perf_counter()
            code = cli_main(["--config", "/dev/null", "--db", str(db), "migrate", "--to", url])
            seconds = time.perf_counter() - started
            rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        finally:
            server.stop()
    if code != 0:
        raise SystemExit(f"migrate exited {code}")
    print(f"migrate: {count:,} recipients in {seconds:.1f} s = {count / seconds:,.0f} rows/s; "
          f"peak RSS {rss_after / 1024:.0f} MB (before the migrate {rss_before / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
