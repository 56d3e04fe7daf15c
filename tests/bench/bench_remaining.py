"""Benchmark: the remaining-recipients screen over a mailing of 1,000,000 pending recipients.

Run:  .venv/bin/python tests/bench/bench_remaining.py [ROWS]
Builds the database (raw executemany into the store's schema, for speed), then, headless at
80x24: time to open the screen until the first rows are drawn, End (jump to the last row),
PageUp from there, a filter typed in and its End (the matches are counted with one query),
and the CSV export of every row. Prints each figure in milliseconds.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from textual.app import App
from textual.pilot import Pilot
from textual.widgets import Input

from mailtower.core.exports import export_remaining_csv
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.store import Store
from mailtower.tui.screens import RemainingScreen
from mailtower.tui.screens.remaining import RecipientList

DOMAINS = ("example.com", "example.org", "mail.example.net")


def address(i: int) -> str:
    return f"user{i:07d}@{DOMAINS[i % 3]}"


def rows(mailing_id: int, count: int) -> Iterator[tuple[int, str, str, str]]:
    for i in range(count):
        email = address(i)
        yield mailing_id, email, email, f"Reader {i}"


async def build(db: Path, count: int) -> int:
    store = await Store.open(db)
    try:
        async with store.write() as tx:
            mailing_id = await tx.insert_mailing(
                name="A million", subject="Hi", from_addr="news@example.com", text_body="Hi", html_body=None, fields=()
            )
            await tx.db.executemany(
                "INSERT INTO recipients (mailing_id, email, email_key, name) VALUES (?, ?, ?, ?)", rows(mailing_id, count)
            )
            await tx.update_mailing(mailing_id, total=count)
        lifecycle = Lifecycle(store)
        await lifecycle.send_now(mailing_id)
        await lifecycle.stop(mailing_id)  # stopped before anything went out: every row remains
    finally:
        await store.close()
    return mailing_id


class Host(App[None]):
    def __init__(self, db: Path, mailing_id: int) -> None:
        super().__init__()
        self.db = db
        self.mailing_id = mailing_id
        self.store: Store | None = None

    async def on_mount(self) -> None:
        self.store = await Store.open(self.db)

    async def open_screen(self) -> None:
        assert self.store is not None
        self.push_screen(RemainingScreen(self.store, await self.store.mailing(self.mailing_id)))

    async def on_unmount(self) -> None:
        if self.store is not None:
            await self.store.close()


async def until(pilot: Pilot[Any], condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.001)


def shows(listing: RecipientList, text: str) -> bool:
    # Long addresses are cut to the column's width at 80 columns; the local part identifies the row.
    local_part = text.split("@")[0] + "@"
    return any(local_part in line for line in listing.visible_lines())


async def timed(label: str, action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    result = action()
    if asyncio.iscoroutine(result):
        await result
    elapsed = (time.perf_counter() - started) * 1000
    print(f"{label:<52}{elapsed:9.1f} ms")
    return elapsed


async def run(db: Path, mailing_id: int, count: int) -> None:
    app = Host(db, mailing_id)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.store is not None)

        async def open_until_drawn() -> None:
            await app.open_screen()
            await until(pilot, lambda: isinstance(app.screen, RemainingScreen) and bool(app.screen.query(RecipientList)))
            listing = app.screen.query_one(RecipientList)
            await until(pilot, lambda: shows(listing, address(0)))

        await timed(f"open screen until first rows drawn ({count:,} rows)", open_until_drawn)
        listing = app.screen.query_one(RecipientList)

        async def end() -> None:
            await pilot.press("end")
            await until(pilot, lambda: shows(listing, address(count - 1)))

        await timed("End: last row drawn", end)

        async def page_up() -> None:
            await pilot.press("pageup")
            await until(pilot, lambda: shows(listing, address(listing.cursor)))

        await timed("PageUp from the end", page_up)

        async def middle() -> None:
            listing.cursor = count // 2
            await until(pilot, lambda: shows(listing, address(count // 2)))

        await timed("jump to the middle row", middle)

        async def home() -> None:
            await pilot.press("home")
            await until(pilot, lambda: shows(listing, address(0)))

        await timed("Home", home)

        async def scroll_down_pages() -> None:
            for _ in range(20):
                await pilot.press("pagedown")
                await until(pilot, lambda: shows(listing, address(listing.cursor)))

        await timed("20 x PageDown via Pilot, each until drawn", scroll_down_pages)

        def page_down_and_draw() -> None:
            # What the widget itself spends per key once its pages are cached: Pilot's own
            # per-key cost (tens of ms) would hide it in the figure above.
            for _ in range(100):
                listing.action_page(1)
                listing.visible_lines()
            for _ in range(100):
                listing.action_page(-1)
                listing.visible_lines()

        spent = await timed("200 x PageDown/PageUp handled and drawn, in-process", page_down_and_draw)
        print(f"{'  per key':<52}{spent / 200:9.2f} ms")

        def apply_filter(text: str) -> Callable[[], Any]:
            async def run_filter() -> None:
                await pilot.press("slash")
                app.screen.query_one("#filter", Input).value = text  # pasted: one change event
                await pilot.press("enter")
                await until(pilot, lambda: listing.pages.search == text and shows(listing, needle if text == needle else address(1)))

            return run_filter

        needle = address(count - 7)
        await timed("filter one address (1 match) until shown", apply_filter(needle))
        await timed("filter 'example.org' (1/3 match) until shown", apply_filter("example.org"))

        async def wide_filter_end() -> None:
            await pilot.press("end")
            last = max(i for i in range(count - 3, count) if i % 3 == 1)
            await until(pilot, lambda: listing.pages.complete and shows(listing, address(last)), timeout=600)

        await timed("  then End (counts the matches with one query)", wide_filter_end)

        store = app.store
        assert store is not None
        target = db.parent / "remaining.csv"
        written = 0

        async def export() -> None:
            nonlocal written
            written = await export_remaining_csv(store, mailing_id, target)

        await timed("export every remaining row to CSV", export)
        print(f"{'  rows written':<52}{written:9,}")


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.sqlite"
        started = time.perf_counter()
        mailing_id = asyncio.run(build(db, count))
        print(f"{'build database':<52}{(time.perf_counter() - started) * 1000:9.1f} ms")
        asyncio.run(run(db, mailing_id, count))


if __name__ == "__main__":
    main()
