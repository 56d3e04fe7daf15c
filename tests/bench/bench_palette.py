"""How long the command palette's search keeps the event loop from other work, with 10,000 mailings.

    .venv/bin/python tests/bench/bench_palette.py [--mailings 10000] [--rounds 3]

The dashboard (headless, 120x40, no sender) on the tests' fixed database, its Inactive section
made `--mailings` stopped mailings long (as if the store had read them). Each round opens the
palette, types "restart bulk 9876" (one hit), then deletes back to "restart" (every mailing
matches; `MAX_HITS` are shown), and waits for each search to finish. Meanwhile a ticker
sleeping 5 ms at a time measures the CPU time of the event loop's thread between two of its
turns: how long anything waiting for the loop (a key, a redraw) could have waited. The figure
includes whatever else ran between two turns (the dashboard's refresh and its garbage
collection at the refresh, tui/collector.py, drawing the palette), so it is the loop's longest
stretch during a search, not the search's alone. It prints the largest stretches, the median
and the time each search took, per round. The test suite checks the same search by count
instead (tests/tui/test_palette_and_rate.py: never more than YIELD_EVERY mailings' entries
between two turns).

Not a test: it prints figures for the note.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # `tests.*` when run as a script

from textual.command import CommandInput, CommandPalette  # noqa: E402

from mailtower.core.domain import MailingState, Section  # noqa: E402
from tests.helpers import until  # noqa: E402
from tests.tui.conftest import build_fixed  # noqa: E402
from tests.tui.pilot import dashboard_app, running  # noqa: E402
from tests.tui.test_palette_and_rate import palette_lines, search, searching  # noqa: E402


class LoopStretches:
    """CPU time of this thread between two turns of a 5 ms ticker, while started."""

    def __init__(self) -> None:
        self.gaps: list[float] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._tick())

    async def stop(self) -> list[float]:
        self._stop.set()
        if self._task is not None:
            await self._task
        return self.gaps

    async def _tick(self) -> None:
        last = time.thread_time()
        while not self._stop.is_set():
            await asyncio.sleep(0.005)
            now = time.thread_time()
            self.gaps.append(now - last)
            last = now


async def one_round(mailings: int, folder: Path) -> tuple[list[float], float, float]:
    fixture = await build_fixed(folder / "fixed.db", small=True)
    app = dashboard_app(fixture.db)
    async with running(app, size=(120, 40)) as pilot:
        stopped = app.sections[Section.INACTIVE][0]
        assert stopped.state is MailingState.STOPPED
        many = [replace(stopped, id=100_000 + i, name=f"Bulk mailing {i}") for i in range(mailings)]
        app.sections = {**app.sections, Section.INACTIVE: many}
        renders = app.renders
        app.mark_dirty()
        last_key = str(100_000 + mailings - 1)
        await until(pilot, lambda: app.renders > renders and app.dashboard.table(Section.INACTIVE).keys[-1] == last_key)
        target = min(9876, mailings - 1)
        stretches = LoopStretches()
        stretches.start()
        started = time.perf_counter()
        await search(pilot, f"restart bulk {target}", f"Restart 'Bulk mailing {target}' (id {100_000 + target})",
                     timeout=120, first=True)
        one_hit = time.perf_counter() - started
        started = time.perf_counter()
        await pilot.press(*["backspace"] * len(f" bulk {target}"))
        palette = app.screen
        assert isinstance(palette, CommandPalette)
        await until(pilot, lambda: palette.query_one(CommandInput).value == "restart" and not searching(app)
                    and len(palette_lines(app)) > 1, timeout=120)
        every_hit = time.perf_counter() - started
        return await stretches.stop(), one_hit, every_hit


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mailings", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"palette search, {args.mailings:,} inactive mailings, 120x40, {args.rounds} rounds")
    worst: list[float] = []
    for n in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory(prefix="mailtower-palette-") as folder:
            gaps, one_hit, every_hit = await one_round(args.mailings, Path(folder))
        top = sorted(gaps, reverse=True)[:5]
        worst.append(top[0])
        print(f"round {n}: loop stretches (CPU) max {top[0] * 1000:.1f} ms, next {', '.join(f'{g * 1000:.1f}' for g in top[1:])};"
              f" median {statistics.median(gaps) * 1000:.2f} ms over {len(gaps)} turns;"
              f" search 'restart bulk {min(9876, args.mailings - 1)}' {one_hit:.2f} s, back to 'restart' {every_hit:.2f} s")
    print(f"median of the rounds' longest stretch: {statistics.median(worst) * 1000:.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
