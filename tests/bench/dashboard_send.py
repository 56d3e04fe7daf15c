"""Send with the dashboard open (headless) instead of `mailtower run`; used by bench_send.py --dashboard.

    MAILTOWER_DB=... .venv/bin/python tests/bench/dashboard_send.py --until-idle

Opens the full Textual dashboard at 120x40 without a terminal, lets its in-process sender work
until nothing is current, then quits without handing off.
"""

from __future__ import annotations

import asyncio
import sys
import time

from mailtower.core.config import load_settings
from mailtower.core.domain import Section
from mailtower.tui import loops
from mailtower.tui.app import DashboardApp

LIMIT_SECONDS = 1800


async def main() -> int:
    app = DashboardApp(load_settings(), hand_off_on_quit=False)
    deadline = time.monotonic() + LIMIT_SECONDS
    async with app.run_test(size=(120, 40)):
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            store = app.store
            if store is None or app.sender is None:
                continue
            if not await store.mailings(Section.CURRENT):
                return 0
    print("gave up waiting for the queue to empty", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(loops.run(main()))
