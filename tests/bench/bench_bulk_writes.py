"""Benchmark: how long the big one-transaction writes of a SQLite database hold up a sender.

Run:  .venv/bin/python tests/bench/bench_bulk_writes.py [--rows 1000000] [--zones 10]

Each case runs while `mailtower run` sends another mailing at 200 messages a second to Postfix's
smtp-sink (installed with Debian's postfix package if missing), and prints the command's time
and the longest stretch in which that sender recorded no message (read from the ledger every
0.25 s): that is how long the write kept the database's write lock from the sender.

  new       `mailtower new` of a file of ROWS recipients in ZONES zones (the file is read and
            checked before the write lock is taken; only the copy into the mailing holds it);
  schedule  `mailtower schedule ID --local-time` of that mailing: ZONES - 1 waves are split off
            in one statement;
  replan    `schedule` again on one of its waves: the waves are gathered and split again;
  send-now  `send-now` of a wave: the whole group made one mailing again, queued after the other
            (the same gathering as a cancel, which the seed does not allow while one is sending).
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.bench_send import SmtpSink, ensure_postfix_tools  # noqa: E402
from tests.bench.compiled import MAILTOWER, precompile  # noqa: E402

ZONES = ("America/New_York", "Europe/London", "Asia/Tokyo", "Australia/Sydney", "America/Los_Angeles",
         "Europe/Berlin", "Asia/Kolkata", "America/Sao_Paulo", "Africa/Lagos", "Asia/Shanghai",
         "Pacific/Auckland", "America/Chicago")
SENDER_RATE = 200
OTHER = 40_000  # the other mailing's recipients: more than the sender gets through in the run


def write_people(path: Path, rows: int, zones: int, seed: int = 1) -> Path:
    rnd = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        f.write("email,name,tz\n")
        for i in range(rows):
            f.write(f"u{rnd.randrange(10**9):09d}x{i}@example.com,Reader {i},{ZONES[i % zones]}\n")
    return path


class SentWatch:
    """Reads the other mailing's `sent` counter every 0.25 s; the longest time it stood still."""

    def __init__(self, db: Path, mailing_id: int) -> None:
        self.db, self.mailing_id = db, mailing_id
        self.points: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = sqlite3.connect(self.db, timeout=0.1)
        try:
            for _ in range(100_000):  # bounded: ~7 hours at 0.25 s
                if self._stop.wait(0.25):
                    return
                try:
                    (sent,) = conn.execute("SELECT sent FROM mailings WHERE id = ?", (self.mailing_id,)).fetchone()
                except sqlite3.OperationalError:
                    continue  # busy for a moment: the next read
                self.points.append((time.monotonic(), int(sent)))
        finally:
            conn.close()

    def __enter__(self) -> "SentWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def longest_pause(self, start: float, end: float) -> float:
        """Longest time between two different readings, for stretches that touch [start, end]."""
        best, i, pts = 0.0, 0, self.points
        while i < len(pts):
            j = i
            while j + 1 < len(pts) and pts[j + 1][1] == pts[i][1]:
                j += 1
            if j + 1 < len(pts) and pts[j + 1][0] >= start and pts[i][0] <= end:
                best = max(best, pts[j + 1][0] - pts[i][0])
            i = j + 1
        return best


def mailtower(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([*MAILTOWER, *args], env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"mailtower {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def timed(watch: SentWatch, env: dict[str, str], *args: str) -> tuple[float, float, str]:
    start = time.monotonic()
    out = mailtower(env, *args)
    end = time.monotonic()
    time.sleep(1.0)  # a reading or two after it, to see the sender going again
    return end - start, watch.longest_pause(start, end), out


def wave_ids(listing: str) -> list[int]:
    """The wave ids `schedule --local-time` lists on standard output (one line a wave, id first)."""
    return [int(line.split("\t")[0]) for line in listing.splitlines() if line[:1].isdigit()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--zones", type=int, default=10)
    args = ap.parse_args()
    if not (1_000 <= args.rows <= 5_000_000) or not (2 <= args.zones <= len(ZONES)):
        ap.error(f"--rows must be 1000..5000000 and --zones 2..{len(ZONES)}")
    ensure_postfix_tools()
    precompile()
    tmp = Path(tempfile.mkdtemp(prefix="mailtower-bulk-"))
    db = tmp / "bulk.db"
    body = tmp / "body.txt"
    body.write_text("Hello {{ name }}\n", encoding="utf-8")
    people = write_people(tmp / "people.csv", args.rows, args.zones)
    other = write_people(tmp / "other.csv", OTHER, 1, seed=2)
    sink = SmtpSink()
    env = {**os.environ, "MAILTOWER_DB": str(db), "MAILTOWER_CONFIG": "/dev/null", "MAILTOWER_SMTP_HOST": "127.0.0.1",
           "MAILTOWER_SMTP_PORT": str(sink.port), "MAILTOWER_SMTP_CONNECTIONS": "2", "MAILTOWER_RATE": str(SENDER_RATE)}
    sender = None
    try:
        other_id = int(mailtower(env, "-q", "new", "--name", "other", "--subject", "Hi", "--from", "news@example.org",
                                 "--text", str(body), "--recipients", str(other), "--now").strip())
        sender = subprocess.Popen([*MAILTOWER, "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"rows {args.rows:,} in {args.zones} zones; a sender sends mailing {other_id} at {SENDER_RATE}/s meanwhile")
        with SentWatch(db, other_id) as watch:
            deadline = time.monotonic() + 30
            while (not watch.points or watch.points[-1][1] == 0) and time.monotonic() < deadline:
                time.sleep(0.1)
            took, paused, out = timed(watch, env, "-q", "new", "--name", "big", "--subject", "Hi", "--from",
                                      "news@example.org", "--text", str(body), "--recipients", str(people))
            big = int(out.strip())
            print(f"new:      {took:6.1f} s; the sender paused at most {paused:5.1f} s", flush=True)
            took, paused, out = timed(watch, env, "schedule", str(big), "--at", "2031-01-20 09:00", "--local-time", "--tz", "UTC")
            waves = wave_ids(out)
            print(f"schedule: {took:6.1f} s; the sender paused at most {paused:5.1f} s ({len(waves)} waves)", flush=True)
            took, paused, out = timed(watch, env, "schedule", str(waves[-1]), "--at", "2031-01-21 10:00", "--local-time", "--tz", "UTC")
            waves = wave_ids(out)
            print(f"replan:   {took:6.1f} s; the sender paused at most {paused:5.1f} s", flush=True)
            took, paused, _ = timed(watch, env, "send-now", str(waves[-1]))
            print(f"send-now: {took:6.1f} s; the sender paused at most {paused:5.1f} s", flush=True)
        with sqlite3.connect(db) as conn:
            check = conn.execute("PRAGMA integrity_check").fetchone()[0]
            rows = conn.execute("SELECT COUNT(*) FROM recipients WHERE mailing_id <> ?", (other_id,)).fetchone()[0]
        print(f"integrity {check}; {rows:,} recipients outside the other mailing (expected {args.rows:,})")
    finally:
        if sender is not None:
            sender.terminate()
            try:
                sender.wait(timeout=30)
            except subprocess.TimeoutExpired:
                sender.kill()
        sink.stop()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    main()
