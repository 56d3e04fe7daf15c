"""The fleet on the dashboard (issue 15 item 5): a mailing's Details list the senders of the
database (host, pid, rate, last heartbeat, alive) from the `senders` table, on PostgreSQL, and a
dashboard monitoring a fleet says how many send in its header. Real parts: the throw-away
PostgreSQL server, Textual's Pilot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.app import App
from textual.geometry import Region
from textual.widget import Widget

from mailtower.core.db_target import PgTarget, parse_pg_url
from mailtower.core.lease import sender_lease
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.operations import Draft, create_mailing
from mailtower.core.store import Store, open_store
from mailtower.tui.screens.details import DetailsScreen
from tests.helpers import recipients, until, wait_until, write_csv
from tests.pg_server import sql_execute


class DetailsHost(App[None]):
    def __init__(self, target: PgTarget, mailing_id: int) -> None:
        super().__init__()
        self.target, self.mailing_id = target, mailing_id
        self.store: Store | None = None

    async def on_mount(self) -> None:
        self.store = await open_store(self.target)
        self.push_screen(DetailsScreen(self.store, await self.store.mailing(self.mailing_id), operator_tz="UTC"))

    async def on_unmount(self) -> None:
        if self.store is not None:
            await self.store.close()


async def new_mailing(store: Store, tmp_path: Path, n: int) -> int:
    people = write_csv(tmp_path / "r.csv", recipients(n))
    mailing_id, _ = await create_mailing(store, Draft("m", "s", "news@example.org", "Hi", None), people, lambda r: None)
    return mailing_id


def text_of(widget: Widget) -> str:
    width, height = widget.size
    return "\n".join(strip.text.rstrip() for strip in widget.render_lines(Region(0, 0, width, height)))


async def test_details_list_the_senders_with_host_pid_rate_and_heartbeat(pg_url: str, tmp_path: Path) -> None:
    target = parse_pg_url(pg_url, "test")
    store = await open_store(target)
    try:
        mailing_id = await new_mailing(store, tmp_path, 5)
        await Lifecycle(store).send_now(mailing_id)
        first = await store.register_sender("alpha.example", 4242, 32)
        second = await store.register_sender("beta\x1b[31m.example", 5151, 16)  # a host name with an escape
        await store.sender_heartbeat(first, 123.4, 32, 30.0)
        sql_execute(target, "UPDATE senders SET heartbeat_at = heartbeat_at - 100 WHERE id = ?", (second,))
    finally:
        await store.close()
    app = DetailsHost(target, mailing_id)
    async with app.run_test(size=(120, 50)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, DetailsScreen) and app.screen.is_mounted)
        panel = app.screen.query_one("#senders")
        await until(pilot, lambda: "alpha.example" in text_of(panel))
        text = text_of(panel)
        assert "Senders (1 alive)" in text
        alpha = next(line for line in text.splitlines() if "alpha.example" in line)
        assert "4242" in alpha and "123.4/s" in alpha and "32" in alpha and "alive" in alpha and "s ago" in alpha
        beta = next(line for line in text.splitlines() if "5151" in line)
        assert "dead" in beta and "\x1b" not in beta and "10" in beta.split("s ago")[0]  # 100 s or more ago


async def test_details_show_no_senders_table_before_anyone_sent(pg_url: str, tmp_path: Path) -> None:
    target = parse_pg_url(pg_url, "test")
    store = await open_store(target)
    try:
        mailing_id = await new_mailing(store, tmp_path, 3)
    finally:
        await store.close()
    app = DetailsHost(target, mailing_id)
    async with app.run_test(size=(120, 50)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, DetailsScreen) and app.screen.is_mounted)
        await pilot.pause()
        assert app.screen.query_one("#senders").display is False


def test_the_lease_probe_names_how_many_senders_a_fleet_has(pg_url: str) -> None:
    target = parse_pg_url(pg_url, "test")
    one, two, probe = sender_lease(target), sender_lease(target), sender_lease(target)
    try:
        assert one.acquire("mailtower run") and two.acquire("mailtower run")  # shared: both may send
        holder: Any = probe.holder()
        assert holder is not None and holder.describe().startswith("mailtower run and 1 more sender(s) (pid ")
        two.release()  # the server drops the lock when that backend has ended: a moment later
        wait_until(lambda: probe.holder().describe().startswith("mailtower run (pid "), timeout=10,  # type: ignore[union-attr]
                   what="the probe to see one sender")
    finally:
        for lease in (one, two, probe):
            lease.release()
