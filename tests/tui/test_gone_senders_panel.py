"""The Senders table of a mailing's Details (tui/senders.py) tells a sender that is gone (its
process ended without recording its end: kill -9, a full disk; SQLite's lease is free) from one
that is alive and from one declared dead by another sender. Real parts: a SQLite file, its lease
file held by this process, Textual's Pilot."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from textual.app import App
from textual.geometry import Region
from textual.widget import Widget

from mailtower.core.lease import SenderLease
from mailtower.core.store import Store, open_store
from mailtower.tui.screens.details import DetailsScreen
from tests.helpers import until
from tests.core.test_gone_senders import queued_mailing
from tests.tui.test_screens import text_of

pytestmark = pytest.mark.sqlite_only  # the lease file is SQLite's

GONE_PID, DEAD_PID = 2_000_000_011, 2_000_000_012  # no such processes


class DetailsHost(App[None]):
    def __init__(self, db: Path, mailing_id: int) -> None:
        super().__init__()
        self.db, self.mailing_id = db, mailing_id
        self.store: Store | None = None

    async def on_mount(self) -> None:
        self.store = await open_store(self.db)
        self.push_screen(DetailsScreen(self.store, await self.store.mailing(self.mailing_id), operator_tz="UTC"))

    async def on_unmount(self) -> None:
        if self.store is not None:
            await self.store.close()




def state_styles(widget: Widget) -> dict[str, str]:
    """The colour of each state word the table shows (alive, gone, dead)."""
    styles: dict[str, str] = {}
    width, height = widget.size
    for strip in widget.render_lines(Region(0, 0, width, height)):
        for segment in strip:
            word = segment.text.strip()
            if word in ("alive", "gone", "dead") and segment.style is not None:
                styles[word] = str(segment.style.color.name if segment.style.color else "")
    return styles


async def test_details_show_a_gone_sender_apart_from_alive_and_dead(tmp_path: Path) -> None:
    db = tmp_path / "panel.db"
    lease = SenderLease(db)
    assert lease.acquire("test")  # this process is the live sender: its pid in the lease file
    try:
        store = await Store.open(db)
        try:
            mailing_id = await queued_mailing(store, tmp_path)
            await store.register_sender("gone.example", GONE_PID, 4)  # ended without recording its end
            dead = await store.register_sender("dead.example", DEAD_PID, 4)
            await store.register_sender("alive\x1b[31m.example", os.getpid(), 8)  # the lease holder
        finally:
            await store.close()
        with sqlite3.connect(db) as conn:  # declared dead by another sender, as its expiry does
            conn.execute("UPDATE senders SET state = 'dead' WHERE id = ?", (dead,))

        app = DetailsHost(db, mailing_id)
        async with app.run_test(size=(140, 50)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, DetailsScreen) and app.screen.is_mounted)
            panel = app.screen.query_one("#senders")
            await until(pilot, lambda: "gone.example" in text_of(panel))
            text = text_of(panel)
            lines = text.splitlines()
            assert "Senders (1 alive, 1 gone)" in text
            gone = next(line for line in lines if str(GONE_PID) in line)
            assert gone.rstrip().endswith("gone") and "s ago" in gone
            dead_line = next(line for line in lines if str(DEAD_PID) in line)
            assert dead_line.rstrip().endswith("dead")
            alive = next(line for line in lines if str(os.getpid()) in line)
            assert alive.rstrip().endswith("alive") and "\x1b" not in alive
            assert "ended without recording its end" in text and "start `mailtower run` to go on" in text
            styles = state_styles(panel)
            # Three colours (the terminal theme maps the names): gone looks like neither alive nor dead.
            assert set(styles) == {"alive", "gone", "dead"} and len(set(styles.values())) == 3
    finally:
        lease.release()
