"""The header line: what the sender is doing, how fast, and whether progress has stalled."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from rich.text import Text
from textual.widget import Widget

from mailtower.core.display import safe
from mailtower.core.progress import Hold, HoldState, short_reason


REPLY_CODE = re.compile(r"[245]\d\d(?: [245]\.\d{1,3}\.\d{1,3})?")  # "421 4.7.0"


class Mode(str, enum.Enum):
    SENDING = "sending"
    IDLE = "idle"
    WAITING = "waiting"  # for the SMTP server
    MONITORING = "monitoring"  # another process holds the sender lease
    OFF = "off"  # nobody sends (the dashboard was told not to start a sender)
    STOPPING = "stopping"


@dataclass(frozen=True, slots=True)
class HeaderInfo:
    mode: Mode
    rate: float = 0.0
    reason: str = ""
    holder: tuple[str, ...] = ()  # who sends, in monitor mode: ways to say it, longest first
    remote_state: str = ""  # the other sender's state, in monitor mode
    last_accept_age: float | None = None  # seconds since the server last accepted a message
    stalled_for: float | None = None  # seconds without progress while work is current
    where: str = ""  # right-hand side: operator zone and tzdata version
    hold: Hold | None = None  # why the head (or the first held) current mailing does not send now
    hold_since: str = ""  # the hold's start, as a clock time in the operator's zone
    next_try_in: float | None = None  # seconds until the sender tries again (None: unknown)
    in_doubt: int = 0  # recipients of current mailings that may have reached the server already
    domains_throttled: int = 0  # domain groups slowed by their own pushback (core/domains.py)
    domains_paused: int = 0  # domain groups whose hourly budget is used up (core/domains.py)


def _span(seconds: float) -> str:
    """"8 s", "14 min", "2 h 05 min"."""
    whole = max(int(seconds), 0)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def age_text(seconds: float | None) -> str:
    return "never" if seconds is None else f"{_span(seconds)} ago"


def in_text(seconds: float) -> str:
    """"in 8 s", "in 14 min", "in 2 h 05 min": how long until the next try."""
    return f"in {_span(seconds)}"


def hold_text(info: HeaderInfo, tight: bool = False) -> str:
    """"paused: login refused · since 10:39 · next try in 14 min": one plain line about a hold;
    the full reason is in the mailing's Details, Resume sending in its Actions menu."""
    hold = info.hold
    assert hold is not None
    if tight:  # a narrow terminal: what, and when it tries again (since when is in Details)
        what = f"{hold.state.value}: {hold.short}" if hold.short else hold.state.value
        if hold.state is HoldState.THROTTLED:  # a server's reply: its code says enough here
            code = REPLY_CODE.match(hold.short)
            what = f"throttled ({code.group(0)})" if code else "throttled"
        when = f" · next try {in_text(info.next_try_in)}" if info.next_try_in is not None else ""
        return safe(what) + when
    if hold.state is HoldState.PAUSED:
        what = f"paused: {hold.short or 'the server refuses us'}"
    elif hold.state is HoldState.THROTTLED:
        what = f"throttled: {hold.short or 'the server asked us to slow down'}"
    elif hold.state is HoldState.RETRYING:
        what = f"retrying {hold.count:,}"
    else:
        what = f"waiting: {hold.short or 'the SMTP server does not answer'}"
    parts = [safe(what)]
    if info.hold_since:
        parts.append(f"since {info.hold_since}")
    if info.next_try_in is not None:
        parts.append(f"next try {in_text(info.next_try_in)}")
    return " · ".join(parts)


def _activity(
    state: str, rate: float, reason: str, info: HeaderInfo | None = None, tight: bool = False
) -> tuple[str, str]:
    """(text, style) for a sender state, ours or another process's."""
    hold = info.hold if info is not None else None
    if hold is not None and hold.state in (HoldState.PAUSED, HoldState.WAITING) and state in ("waiting", "sending"):
        return hold_text(info, tight), "bold yellow"  # type: ignore[arg-type]
    if state == "sending":
        if hold is not None and hold.state is HoldState.THROTTLED:
            return f"sending {rate:.1f} msg/s · {hold_text(info, tight)}", "bold yellow"  # type: ignore[arg-type]
        return f"sending {rate:.1f} msg/s", "bold green"
    if state == "waiting":
        return f"waiting for the SMTP server ({safe(reason) or 'no reason given'})", "bold yellow"
    if state == "stopped":
        return "stopped", "bold"
    return "idle", "bold"


def _left(info: HeaderInfo, *, short: bool, holder: str = "", tight: bool = False) -> Text:
    text = Text()
    if info.stalled_for is not None:
        text.append(" STALLED ", style="bold white on red")
        text.append(" ")
    if info.mode is Mode.MONITORING:
        text.append("monitoring ", style="bold cyan")
        text.append(safe(holder))  # from the lease file another process wrote
        activity, style = _activity(info.remote_state, info.rate, info.reason, info, tight)
        text.append(": ")
        text.append(activity, style=style)
    elif info.mode is Mode.OFF and info.reason:
        text.append("not sending", style="bold red")  # our sender failed: the reason names the cause
        text.append(f" ({info.reason})")
    elif info.mode is Mode.OFF:
        text.append("not sending", style="bold")
        text.append(" (no sender running)")
    elif info.mode is Mode.STOPPING:
        text.append("stopping the sender…", style="bold yellow")
    else:
        activity, style = _activity(info.mode.value, info.rate, info.reason, info, tight)
        text.append(activity, style=style)
    if info.in_doubt and info.mode not in (Mode.OFF, Mode.STOPPING):
        text.append(f" · {info.in_doubt:,} in doubt", style="magenta")
    if info.domains_throttled and info.mode not in (Mode.OFF, Mode.STOPPING):
        n = info.domains_throttled
        text.append(f" · {n} domain{'s' if n != 1 else ''} throttled", style="yellow")
    if info.domains_paused and info.mode not in (Mode.OFF, Mode.STOPPING):
        n = info.domains_paused
        text.append(f" · {n} domain{'s' if n != 1 else ''} paused", style="bold red")
    held = info.hold is not None and info.hold.state in (HoldState.PAUSED, HoldState.WAITING)
    if info.mode not in (Mode.OFF, Mode.STOPPING) and not (short and held):
        # Short of room while held back, the hold's "since" says more than the last accept.
        text.append(" · accepted " if short else " · last accepted ", style="dim")
        text.append(age_text(info.last_accept_age))
    return text


def header_text(info: HeaderInfo, width: int = 200) -> Text:
    """The line for `width` cells: the zone data goes first, then words, then the end is cut."""
    holders = info.holder or ("",)
    tries = [(False, True, holders[0], False), (False, False, holders[0], False)]
    tries += [(True, False, h, False) for h in holders]
    if info.hold is not None:
        tries.append((True, False, holders[-1], True))
    for short, where, holder, tight in tries:
        left = _left(info, short=short, holder=holder, tight=tight)
        right = Text(info.where, style="dim") if where and info.where else Text()
        room = width - 2 - left.cell_len - right.cell_len
        if room >= (2 if right else 0):
            return Text.assemble(" ", left, " " * room, right, " ")
    left.truncate(max(width - 2, 1), overflow="ellipsis")
    return Text.assemble(" ", left)


class HeaderLine(Widget):
    """One line at the top. Redrawn only when its information or its width changes."""

    DEFAULT_CSS = """
    HeaderLine { height: 1; dock: top; background: $panel; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.info: HeaderInfo | None = None

    def show(self, info: HeaderInfo) -> None:
        if info != self.info:
            self.info = info
            self.refresh()

    def render(self) -> Text:
        if self.info is None:
            return Text()
        return header_text(self.info, self.size.width or 80)

    @property
    def plain(self) -> str:
        return header_text(self.info, self.size.width or 80).plain if self.info else ""


def notice_text(warnings: list[str], relays: tuple) -> Text:  # relays: core.relays.RelayStatus
    """Security warnings first (they must not be missed), then each relay of a pool."""
    text = Text()
    for warning in warnings:
        text.append(" ⚠ ", style="bold black on yellow")
        text.append(f" {safe(warning)}  ", style="yellow")
    # One relay's trouble is the header's line; a pool says which relay is in which condition,
    # each reason cut to its first clause (the full text is in the mailing's Details).
    if len(relays) > 1:
        text.append(" relays:", style="dim")
        for relay in relays:
            text.append(f" {safe(relay.name)} ")
            if relay.state in ("resting", "paused", "throttled"):
                text.append(relay.state, style="bold yellow")
                if relay.reason:
                    text.append(f" ({safe(short_reason(relay.reason))})", style="dim")
            elif relay.state == "up":
                text.append(f"up {relay.rate:.0f}/s", style="green")
            else:
                text.append("idle", style="dim")
            text.append(" ·", style="dim")
        text.rstrip()
        if text.plain.endswith("·"):
            text.right_crop(1)
    return text


class NoticeLine(Widget):
    """A second line under the header, shown only when there is something to warn about or a relay pool."""

    DEFAULT_CSS = """
    NoticeLine { height: 1; dock: top; background: $panel; display: none; }
    NoticeLine.-shown { display: block; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.text = Text()

    def show(self, text: Text) -> None:
        if text.plain != self.text.plain:
            self.text = text
            self.set_class(bool(text.plain), "-shown")
            self.refresh()

    def render(self) -> Text:
        return self.text
