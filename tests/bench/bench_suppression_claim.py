"""Claiming with an empty suppression list vs 100,000 entries (issue 13 item 6): `python tests/bench/bench_suppression_claim.py DIR`."""
import asyncio, csv, sys, time
from pathlib import Path
from mailtower.core.store import Store, Outcome
from mailtower.core.domain import RecipientState
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.operations import Draft, create_mailing

N = 20_000
async def run(tmp: Path, suppressed: int) -> float:
    db = tmp / f"b{suppressed}.db"
    for f in tmp.glob(f"b{suppressed}.db*"):
        f.unlink()
    people = tmp / "p.csv"
    if not people.exists():
        with people.open("w", newline="") as fh:
            w = csv.writer(fh); w.writerow(["email", "name"])
            for i in range(N):
                w.writerow([f"user{i}@example.com", f"U {i}"])
    store = await Store.open(db)
    try:
        body = tmp / "body.txt"; body.write_text("hi\n")
        mid, _ = await create_mailing(store, Draft("b", "s", "news@example.org", "hi", None), people, lambda *a: None)
        async with store.write() as tx:
            # keys that never match (a different domain): the cost is the probe, not the skip
            await tx.add_suppressions([(f"other{i}@example.com", f"other{i}@example.com") for i in range(suppressed)], "import", "bench")
        lc = Lifecycle(store); await lc.send_now(mid); await lc.start(mid)
        t = time.perf_counter(); outcomes = []; marks = []
        while True:
            # as the sender does: the previous batch's rows marked `sending` (the mark checks the
            # list too), then recorded as sent, and the next batch claimed, in one transaction
            claimed, _ = await store.record_and_claim(mid, [], 0, marks=marks)
            claimed, _ = await store.record_and_claim(mid, outcomes, 500)
            if not claimed:
                break
            marks = [c.id for c in claimed]
            outcomes = [Outcome(c.id, RecipientState.SENT, 250) for c in claimed]
        await store.record_and_claim(mid, outcomes, 0)
        return time.perf_counter() - t
    finally:
        await store.close()

async def main() -> None:
    tmp = Path(sys.argv[1]); tmp.mkdir(exist_ok=True)
    times = {0: [], 100_000: []}
    for rnd in range(5):
        for s in (0, 100_000):
            el = await run(tmp, s)
            times[s].append(el)
            print(f"round {rnd} suppression={s:>7,}: {N:,} rows marked+claimed+recorded in {el:.3f} s = {N/el:,.0f} rows/s")
    for s, ts in times.items():
        m = sorted(ts)[len(ts) // 2]
        print(f"median suppression={s:>7,}: {m:.3f} s = {N/m:,.0f} rows/s")
asyncio.run(main())
