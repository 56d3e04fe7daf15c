"""Benchmark: stream a generated recipient CSV through read_recipients.

Run:  .venv/bin/python tests/bench/bench_csv.py [ROWS] [DOMAINS]
(60% of the addresses go to 5 big providers, the rest spread over DOMAINS small domains; default
1,000,000 rows and 5,000 domains.)
Prints generation time, rows/s of the reader, and peak RSS after the first tenth of the rows and at
the end (equal figures mean memory stayed flat while streaming).
"""

from __future__ import annotations

import random
import resource
import sys
import tempfile
import time
from pathlib import Path

from mailtower.core.domain import RejectedRow
from mailtower.core.recipients_csv import read_recipients


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def write_csv(path: Path, rows: int, domains: int) -> None:
    rng = random.Random(20240601)
    # A long tail of domains like a real list: a few big providers, many small ones.
    big = ["gmail.com", "yahoo.com", "outlook.com", "web.de", "orange.fr"]
    cities = ["Paris", "Lyon", "Zürich", "São Paulo", "Kraków", "Tokyo"]
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("email,name,city,plan\r\n")
        for i in range(rows):
            if rng.random() < 0.6:
                domain = rng.choice(big)
            else:
                n = rng.randrange(domains)
                domain = f"mail{n}.example-{n % 97}.com"
            out.write(f"user.{i}+tag@{domain},User {i},{rng.choice(cities)},plan-{i % 3}\r\n")


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    domains = int(sys.argv[2]) if len(sys.argv) > 2 else 5_000
    rejected: list[RejectedRow] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipients.csv"
        started = time.perf_counter()
        write_csv(path, rows, domains)
        print(f"generated {rows:,} rows ({path.stat().st_size / 2**20:.1f} MiB) "
              f"in {time.perf_counter() - started:.1f} s")
        rss_before = peak_rss_mib()
        started = time.perf_counter()
        count = 0
        rss_tenth = 0.0
        for _ in read_recipients(path, header_fields={"city"}, on_reject=rejected.append):
            count += 1
            if count == rows // 10:
                rss_tenth = peak_rss_mib()
        elapsed = time.perf_counter() - started
    print(f"read {count:,} rows, {len(rejected)} rejected, in {elapsed:.2f} s "
          f"= {count / elapsed:,.0f} rows/s")
    print(f"peak RSS: before reading {rss_before:.1f} MiB, after 10% {rss_tenth:.1f} MiB, "
          f"at the end {peak_rss_mib():.1f} MiB")


if __name__ == "__main__":
    main()
