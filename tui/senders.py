"""The fleet's senders on the dashboard (issue 15 item 5, core/fleet.py): a Senders table in a
mailing's Details (host, pid, rate, connections, last heartbeat, alive), read from the `senders`
table every couple of seconds while the screen is open. Nothing is drawn while no sender ever
registered (a database nobody sent from yet). Host names come from other machines: shown escaped.

A sender's state: "alive" (beating), "dead" (declared dead by another sender, or its heartbeat
stopped), "gone" (SQLite: its process ended without recording its end, a full disk, an I/O error
or kill -9, and its row still says running; see core/fleet.list_senders), else what its row says
("stopped": it ended cleanly).
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from mailtower.core.db_errors import database_errors
from mailtower.core.display import safe
from mailtower.core.fleet import GONE, SenderInfo, list_senders
from mailtower.core.store import Store

REFRESH = 2.0  # seconds between reads of the senders table
DEFAULT_TIMEOUT = 30.0  # sender_heartbeat_timeout when the screen was not given the settings


STATE_STYLES = {"alive": "green", "dead": "red", GONE: "bold yellow"}
GONE_NOTE = "gone: it ended without recording its end (a full disk, an I/O error, killed?); start `mailtower run` to go on"


def senders_table(senders: list[SenderInfo]) -> RenderableType:
    alive = sum(1 for s in senders if s.alive)
    gone = sum(1 for s in senders if s.state == GONE)
    heading = Text(f"Senders ({alive} alive{f', {gone} gone' if gone else ''})", style="bold")
    table = Table(box=None, padding=(0, 2, 0, 0), show_edge=False, header_style="bold", expand=True)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("Host", ratio=1, overflow="ellipsis", no_wrap=True)
    for title in ("Pid", "Rate", "Connections", "Last heartbeat"):
        table.add_column(title, justify="right", no_wrap=True, min_width=len(title))
    table.add_column("State", no_wrap=True, min_width=7)
    for s in senders:
        state = "alive" if s.alive else ("dead" if s.state in ("running", "dead") else s.state)
        table.add_row(
            str(s.id), Text(safe(s.host)), str(s.pid), f"{s.rate:.1f}/s", str(s.connections), f"{s.age:.0f} s ago",
            Text(safe(state), style=STATE_STYLES.get(state, "dim")),
        )
    if gone:
        return Group(heading, table, Text(GONE_NOTE, style="yellow"))
    return Group(heading, table)


class SendersPanel(Static):
    """The Senders table; hidden while the database has no sender to show."""

    def __init__(self, store: Store, timeout: float | None = None) -> None:
        super().__init__(id="senders")
        self.store = store
        self.timeout = timeout or DEFAULT_TIMEOUT
        self.display = False

    async def on_mount(self) -> None:
        await self.reload()
        self.set_interval(REFRESH, self.reload)

    async def reload(self) -> None:
        try:
            senders = await list_senders(self.store, self.timeout)
        except (*database_errors(), OSError):
            return  # the Details screen says what is wrong with the database; this table waits
        self.update(senders_table(senders) if senders else "")
        self.display = bool(senders)
