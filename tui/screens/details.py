"""Details of one mailing: counts by outcome, failures and deferrals grouped, and its timeline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from mailtower.core.config import Settings
from mailtower.core.display import safe
from mailtower.core.domains import GroupReport, group_reports
from mailtower.core.limits import read_limits
from mailtower.core.domain import Mailing, Section
from mailtower.core.progress import Hold, HoldState
from mailtower.core.store import Store
from mailtower.core.timezones import is_valid_zone, operator_zone, to_zone
from mailtower.tui.senders import SendersPanel

LIVE_REFRESH = 2.0  # seconds between reloads while the mailing is current

# What the usual reply codes mean (RFC 5321 section 4.2.3); anything else is shown by number only.
REPLY_MEANINGS: dict[str, str] = {
    "421": "service not available",
    "450": "mailbox busy or unavailable",
    "451": "local error in processing",
    "452": "insufficient storage",
    "455": "parameters not accommodated",
    "500": "syntax error",
    "501": "syntax error in parameters",
    "503": "bad sequence of commands",
    "521": "does not accept mail",
    "550": "mailbox unavailable",
    "551": "user not local",
    "552": "storage allocation exceeded",
    "553": "mailbox name not allowed",
    "554": "transaction failed",
    "556": "domain does not accept mail",
    "-": "no reply (connection failed)",
}

# Timeline kinds worth a colour; the rest stay plain.
KIND_STYLES: dict[str, str] = {
    "stopped": "bold red",
    "completed": "bold green",
    "missed": "bold yellow",
    "waiting": "yellow",
    "paused": "yellow",
    "in doubt": "magenta",
}


@dataclass(frozen=True, slots=True)
class DetailsData:
    """Everything the screen shows, read in one go."""

    mailing: Mailing
    states: dict[str, int]
    breakdown: dict[str, list[tuple[str, int]]]
    events: list[tuple[datetime, str, str]]
    zones: list[tuple[str, int]] = field(default_factory=list)  # a wave's zones and recipients (issue 14)
    domains: list[GroupReport] | None = None  # per domain group, when groups are configured


# Where the Details screen finds domain groups: the settings (their [domains] tables) and the
# sender's live per-group document (the dashboard's own sender, or the one it monitors).
DomainsSource = tuple[Settings, Callable[[], dict[str, object]]]


async def load_details(store: Store, mailing_id: int, domains: DomainsSource | None = None) -> DetailsData:
    return DetailsData(
        mailing=await store.mailing(mailing_id),
        states=await store.state_counts(mailing_id),
        breakdown=await store.outcome_breakdown(mailing_id),
        events=await store.events(mailing_id),
        zones=await store.wave_zones(mailing_id),
        domains=await load_domains(store, mailing_id, domains),
    )


def zones_line(zones: list[tuple[str, int]]) -> Text:
    text = Text(f"Zones ({len(zones):,}): ", style="bold")
    text.append(", ".join(f"{safe(zone)} {n:,}" for zone, n in zones))
    return text


async def load_domains(store: Store, mailing_id: int, source: DomainsSource | None) -> list[GroupReport] | None:
    if source is None or not source[0].domains:
        return None  # no groups configured: one pipe, nothing per domain to show
    settings, live = source
    limits = await read_limits(store, settings)
    return group_reports(settings.domains, await store.domain_state_counts(mailing_id), live(), mailing_id,
                         limits.domains)


STATE_STYLES = {"ok": "green", "throttled": "bold yellow", "paused": "bold red", "idle": "dim"}


def domains_table(reports: list[GroupReport]) -> RenderableType:
    """Per domain group: sent, deferred, failed, in flight, rate, state and the last reply."""
    heading = Text("Domains", style="bold")
    table = Table(box=None, padding=(0, 2, 0, 0), show_edge=False, header_style="bold", expand=True)
    table.add_column("Group", no_wrap=True, overflow="ellipsis", min_width=5, max_width=16)
    for title in ("Sent", "Deferred", "Failed", "In flight", "Rate"):
        table.add_column(title, justify="right", no_wrap=True, min_width=len(title))
    table.add_column("State", no_wrap=True, min_width=9)
    # The reply that throttled a group, else its last reply that was not a plain acceptance.
    table.add_column("Last reply", ratio=1, overflow="ellipsis", no_wrap=True)
    for r in reports:
        table.add_row(
            Text(safe(r.group)), f"{r.sent:,}", f"{r.deferred:,}", f"{r.failed:,}", f"{r.in_flight:,}",
            f"{r.rate:.1f}/s", Text(safe(r.state), style=STATE_STYLES.get(r.state, "")),
            Text(safe(r.reason or r.last_reply), style="" if r.reason else "dim"),
        )
    return Group(heading, table)


def outcome_table(data: DetailsData) -> Table:
    """One row of counts: the mailing's counters, plus pending and in-flight rows from the ledger."""
    mailing = data.mailing
    table = Table(box=None, padding=(0, 2, 0, 0), show_edge=False, header_style="bold")
    columns = [
        ("Sent", mailing.sent, "green"),
        ("Failed", mailing.failed, "red"),
        ("Deferred", mailing.deferred, "yellow"),
        ("In doubt", mailing.in_doubt, "magenta"),
        ("Pending", data.states.get("pending", 0), ""),
        ("Sending", data.states.get("sending", 0), ""),
        ("Total", mailing.total, "bold"),
    ]
    if mailing.suppressed:  # skipped when claimed: the address is on the suppression list
        columns.insert(4, ("Suppressed", mailing.suppressed, "dim"))
    for title, _, _ in columns:
        table.add_column(title, justify="right")
    table.add_row(*(Text(f"{value:,}", style=style) for _, value, style in columns))
    return table


def grouped_table(title: str, rows: list[tuple[str, int]], *, codes: bool) -> RenderableType:
    heading = Text(title, style="bold")
    if not rows:
        return Group(heading, Text("  none", style="dim"))
    table = Table(box=None, padding=(0, 2, 0, 0), show_edge=False, show_header=False)
    table.add_column(no_wrap=True, overflow="ellipsis")
    table.add_column(justify="right", no_wrap=True)
    if codes:
        table.add_column(no_wrap=True, overflow="ellipsis", style="dim")
    for key, count in rows:
        # Rich parses a str cell as markup: user and server text goes in as Text, made safe.
        cells: list[RenderableType] = [Text(f"  {safe(key)}"), f"{count:,}"]
        if codes:
            cells.append(REPLY_MEANINGS.get(key, ""))
        table.add_row(*cells)
    return Group(heading, table)


def timeline_table(events: list[tuple[datetime, str, str]], tz: str) -> RenderableType:
    heading = Text("Timeline", style="bold")
    if not events:
        return Group(heading, Text("  nothing recorded yet", style="dim"))
    table = Table(box=None, padding=(0, 1, 0, 0), show_edge=False, show_header=False, expand=True)
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True)
    table.add_column(ratio=1)
    for at, kind, detail in events:
        local = to_zone(at, tz)
        table.add_row(
            f"  {local:%Y-%m-%d %H:%M} {local.tzname()}",
            Text(safe(kind), style=KIND_STYLES.get(kind, "")),
            Text(safe(detail)),  # names file names and server replies; Text, so no markup either
        )
    return Group(heading, Text(f"  times in {tz}", style="dim"), table)


def hold_line(hold: Hold, tz: str) -> Text:
    """Why the mailing does not send now, in full, and when the sender tries again."""
    def clock(wall: float) -> str:
        local = to_zone(datetime.fromtimestamp(wall, timezone.utc), tz)
        return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname()}"

    if hold.state is HoldState.RETRYING:
        what = f"retrying: {hold.count:,} recipients wait for a retry"
    else:
        what = f"{hold.state.value}: {hold.reason or 'no reason given'}"
    text = Text("Now: ", style="bold")
    text.append(safe(what))
    if hold.relays:
        text.append(f" (relay {safe(', '.join(hold.relays))})")
    if hold.since:
        text.append(f"; since {clock(hold.since)}")
    if hold.next_try:
        text.append(f"; next try {clock(hold.next_try)}")
    if hold.state is HoldState.PAUSED:
        text.append("; Resume sending is in the Actions menu")
    return text


def schedule_line(mailing: Mailing) -> Text:
    from mailtower.tui.rows import send_time_text

    schedule = mailing.schedule
    assert schedule is not None
    text = Text("Send time: ", style="bold")
    text.append(f"{send_time_text(schedule)} {safe(schedule.tz)}")
    asked = f"{schedule.local:%Y-%m-%d %H:%M}"
    if not send_time_text(schedule).startswith(asked + " ") and send_time_text(schedule) != asked:
        text.append(f" (asked for {asked}, which does not exist there)", style="dim")
    elif send_time_text(schedule).endswith("(first)"):
        text.append(" (that wall time happens twice; the first is used)", style="dim")
    return text


class DetailsScreen(Screen[None]):
    """What happened to one mailing. Escape goes back; `r` reloads."""

    DEFAULT_CSS = """
    DetailsScreen #details-title {
        height: 1;
        background: $primary;
        color: $text;
        text-style: bold;
        padding: 0 1;
    }
    DetailsScreen #details-body {
        padding: 0 1;
    }
    DetailsScreen #details-body > * {
        margin-bottom: 1;
    }
    DetailsScreen .pair {
        height: auto;
    }
    DetailsScreen .pair > Static {
        width: 1fr;
        height: auto;
    }
    DetailsScreen .pair > Static:first-child {
        margin-right: 2;
    }
    DetailsScreen #last-error {
        color: $text-warning;
    }
    """

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("r", "reload", "Reload"),
    ]

    def __init__(
        self,
        store: Store,
        mailing: Mailing,
        *,
        operator_tz: str | None = None,
        hold: Callable[[int], Hold | None] | None = None,
        domains: DomainsSource | None = None,
    ) -> None:
        super().__init__()
        self.domains = domains
        self.store = store
        self.mailing = mailing
        self.hold = hold  # why a current mailing is held back now (the dashboard knows, the store not)
        zone = operator_tz or operator_zone()
        self.operator_tz = zone if is_valid_zone(zone) else "UTC"

    def compose(self) -> ComposeResult:
        yield Static(id="details-title", markup=False)
        with VerticalScroll(id="details-body"):
            yield Static(id="outcomes")
            yield Static(id="now", markup=False)
            yield Static(id="last-error", markup=False)
            yield Static(id="domains")
            yield SendersPanel(self.store, self.domains[0].sender_heartbeat_timeout if self.domains else None)  # fleet
            with Horizontal(classes="pair"):
                yield Static(id="failed-codes")
                yield Static(id="deferred-codes")
            with Horizontal(classes="pair"):
                yield Static(id="failed-domains")
                yield Static(id="deferred-domains")
            yield Static(id="timeline")
        yield Footer()

    async def on_mount(self) -> None:
        await self.action_reload()
        self.query_one("#details-body").focus()
        self.set_interval(LIVE_REFRESH, self._live_reload)

    async def _live_reload(self) -> None:
        # A finished mailing does not change; only current ones are worth re-reading.
        if self.mailing.section is Section.CURRENT:
            await self.action_reload()

    async def action_reload(self) -> None:
        data = await load_details(self.store, self.mailing.id, self.domains)
        self.mailing = data.mailing
        self.show(data)

    def show(self, data: DetailsData) -> None:
        mailing = data.mailing
        self.query_one("#details-title", Static).update(
            Text(
                f"Details: {safe(mailing.name)} (id {mailing.id}, {mailing.state.value}) · "
                f"{mailing.sent:,} of {mailing.total:,} sent, {mailing.counts_text()}"
            )
        )
        self.query_one("#outcomes", Static).update(Group(Text("Outcomes", style="bold"), outcome_table(data)))
        now = self.query_one("#now", Static)
        hold = self.hold(mailing.id) if self.hold is not None and mailing.section is Section.CURRENT else None
        lines = []
        if mailing.schedule is not None and mailing.section is Section.SCHEDULED:
            lines.append(schedule_line(mailing))
        if data.zones:
            lines.append(zones_line(data.zones))
        if hold is not None:
            lines.append(hold_line(hold, self.operator_tz))
        now.update(Text("\n").join(lines) if lines else "")
        now.display = bool(lines)
        last_error = self.query_one("#last-error", Static)
        last_error.update(Text(f"Last error: {safe(mailing.last_error)}") if mailing.last_error else "")
        if mailing.tripped and mailing.state.value == "stopped":  # the breaker stopped it: in red
            last_error.update(Text(f"Stopped by the {safe(mailing.tripped)}", style="bold red"))
        last_error.display = bool(mailing.last_error)
        domains = self.query_one("#domains", Static)
        domains.update(domains_table(data.domains) if data.domains is not None else "")
        domains.display = data.domains is not None
        parts = data.breakdown
        self.query_one("#failed-codes", Static).update(
            grouped_table("Failures by reply code", parts.get("failed_by_code", []), codes=True)
        )
        self.query_one("#deferred-codes", Static).update(
            grouped_table("Deferrals by reply code", parts.get("deferred_by_code", []), codes=True)
        )
        self.query_one("#failed-domains", Static).update(
            grouped_table("Failures by domain", parts.get("failed_by_domain", []), codes=False)
        )
        self.query_one("#deferred-domains", Static).update(
            grouped_table("Deferrals by domain", parts.get("deferred_by_domain", []), codes=False)
        )
        self.query_one("#timeline", Static).update(timeline_table(data.events, self.operator_tz))

    def action_back(self) -> None:
        self.dismiss()
