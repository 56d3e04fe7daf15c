"""What each panel shows: column layouts and the cells of one mailing's row.

Pure functions of a mailing, its live counters and the clock, so the panels can diff rows and
touch only the cells that changed, and tests can check the text without a screen. Cells become
rich `Text` (never a plain str, which the table would parse as markup) only when written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from rich.text import Text

from mailtower.core.breaker import short_reason
from mailtower.core.canary import progress_text
from mailtower.core.display import one_line, safe
from mailtower.core.domain import CanaryPhase, Mailing, MailingState, Section
from mailtower.core.progress import Hold, HoldState
from mailtower.core.domain import Schedule
from mailtower.core.errors import UserError
from mailtower.core.timezones import Shift, format_offset, humanize_delta, resolve, to_zone

BAR_FULL = "█"
BAR_EMPTY = "░"
# Eighth blocks give the bar a smooth front edge at small widths.
BAR_PARTS = " ▏▎▍▌▋▊▉"
DASH = "—"

# A cell as plain data: (right-aligned?, ((text, style), ...)). Comparing these is cheap, so
# the panels diff rows as data and only build a Text for a cell that actually changed.
Segments = tuple[tuple[str, str], ...]
Cell = tuple[bool, Segments]
Cells = tuple[Cell, ...]


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    label: str
    width: int  # including one leading space that separates it from the previous column
    right: bool = False


@dataclass(frozen=True, slots=True)
class Layout:
    """The columns of one panel at one terminal width. `compact` shortens numbers and times."""

    columns: tuple[Column, ...]
    compact: bool

    def width_of(self, key: str) -> int:
        return next(c.width for c in self.columns if c.key == key)


@dataclass(frozen=True, slots=True)
class View:
    """Everything a row's text depends on besides the mailing itself."""

    now: datetime  # aware, UTC
    operator_tz: str
    compact: bool


COMPACT_BELOW = 110  # terminal columns; narrower terminals get the short number formats

# Fixed columns per section as (key, label, compact width, wide width, right-aligned).
_FIXED: dict[Section, list[tuple[str, str, int, int, bool]]] = {
    Section.CURRENT: [
        ("pos", "#", 3, 4, True),
        ("name", "Name", 0, 0, False),
        ("progress", "Progress", 14, 19, False),
        ("sent", "Sent/Total", 12, 16, True),
        ("failed", "Fail", 6, 8, True),
        ("deferred", "Def", 6, 9, True),
        ("rate", "Rate", 7, 9, True),
        ("finish", "ETA", 6, 12, True),
        ("left", "Left", 7, 12, True),
    ],
    Section.SCHEDULED: [
        ("name", "Name", 0, 0, False),
        ("local", "Send at (zone)", 34, 40, False),
        ("here", "Your time", 12, 22, False),
        ("starts", "Starts", 12, 16, True),  # "in 1501d12h" and a space before it
    ],
    Section.INACTIVE: [
        ("name", "Name", 0, 0, False),
        ("outcome", "Outcome", 10, 11, False),
        ("sent", "Sent/Total", 14, 18, True),
        ("ended", "Ended", 17, 20, True),
    ],
}

NAME_MIN = 10
NAME_MAX = 60


def layout_for(section: Section, width: int) -> Layout:
    """Columns that fill `width` cells: fixed columns, and the name takes what is left."""
    compact = width < COMPACT_BELOW
    fixed = [(k, label, cw if compact else ww, right) for k, label, cw, ww, right in _FIXED[section]]
    used = sum(w for _, _, w, _ in fixed)
    name = max(NAME_MIN, min(NAME_MAX, width - used - 1)) + 1
    columns = tuple(Column(k, label, name if k == "name" else w, right) for k, label, w, right in fixed)
    return Layout(columns, compact)


def label_cell(column: Column) -> Cell:
    """A column's label, aligned as its cells are."""
    return _cell(column.label, right=column.right)


def to_text(cell: Cell) -> Text:
    right, segments = cell
    text = Text(justify="right" if right else None, no_wrap=True, overflow="ellipsis")
    for part, style in segments:
        # Names come from people: nothing the terminal would act on (escapes, direction overrides).
        text.append(safe(part), style or None)
    return text


def _cell(text: str, style: str = "", *, right: bool = False) -> Cell:
    # Right-aligned cells get their separating space from the column being one wider.
    return (True, ((text, style),)) if right else (False, ((" " + text, style),))


def _name(mailing: Mailing, style: str = "") -> Cell:
    # No newlines or tabs from user data in a one-line row.
    return _cell(one_line(mailing.name), style)


def count(n: int, compact: bool) -> str:
    """12,345 or, compact, 12.3k / 1.2M."""
    if not compact or n < 10_000:
        return f"{n:,}"
    if n < 1_000_000:
        return f"{n / 1000:.1f}k" if n < 100_000 else f"{n // 1000}k"
    return f"{n / 1_000_000:.1f}M"


def progress_bar(done: int, total: int, width: int) -> Cell:
    """"█████▌░░░░ 52%": sent plus failed over total, drawn in eighths of a cell."""
    fraction = 1.0 if total <= 0 else min(max(done / total, 0.0), 1.0)
    eighths = int(fraction * width * 8)
    full, part = divmod(eighths, 8)
    bar = BAR_FULL * full
    if full < width:
        bar += (BAR_PARTS[part] if part else "") + BAR_EMPTY * (width - full - (1 if part else 0))
    percent = int(fraction * 100)  # floor: never show 100% before the last recipient
    edge = full + (1 if part else 0)
    return (False, ((" ", ""), (bar[:edge], "green"), (bar[edge:], "bright_black"), (f" {percent:>3}%", "")))


def duration(seconds: float, compact: bool) -> str:
    """Time left: "45 s", "12 min", "2 h 05 min", "3 d 4 h" (compact: "45s", "12m", "2h05m", "3d04h")."""
    seconds = max(int(seconds), 0)
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if compact:
        if days:
            return f"{days}d{hours:02d}h"
        if hours:
            return f"{hours}h{minutes:02d}m"
        return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def finish_text(utc: datetime, view: View) -> str:
    """An estimated finish in the operator's zone: the clock if it is today there, else the date too."""
    local = to_zone(utc, view.operator_tz)
    if local.date() == to_zone(view.now, view.operator_tz).date():
        return f"{local:%H:%M}"
    return f"{local:%m-%d}" if view.compact else f"{local:%m-%d %H:%M}"


def here_text(utc: datetime, view: View) -> str:
    """A scheduled instant in the operator's zone."""
    local = to_zone(utc, view.operator_tz)
    if view.compact:
        today = local.date() == to_zone(view.now, view.operator_tz).date()
        return f"{local:%H:%M}" if today else f"{local:%m-%d %H:%M}"
    return f"{local:%Y-%m-%d %H:%M} {local.tzname() or ''}".rstrip()


def rate_text(rate: float, compact: bool) -> str:
    if rate <= 0:
        return DASH
    if rate >= 100:
        return f"{rate:.0f}/s"
    return f"{rate:.1f}/s" if not compact or rate < 10 else f"{rate:.0f}/s"


# ---- one row per section ----------------------------------------------------------------------


# The glyph before the queue place of a mailing that is held back, and its style.
HOLD_GLYPHS: dict[HoldState, tuple[str, str]] = {
    HoldState.PAUSED: ("‖", "bold yellow"),
    HoldState.WAITING: ("…", "bold yellow"),
    HoldState.THROTTLED: ("≈", "yellow"),
    HoldState.RETRYING: ("↻", "cyan"),
}


def hold_words(hold: Hold, view: View) -> str:
    """What the ETA and Left columns say instead of a time while a mailing is held back:
    "paused: login refused", "throttled, try 10:41", "retrying 24 at 10:41"."""
    at = finish_text(datetime.fromtimestamp(hold.next_try, view.now.tzinfo), view) if hold.next_try else ""
    if hold.state is HoldState.PAUSED:
        return f"paused: {hold.short}" if hold.short else "paused"
    if hold.state is HoldState.THROTTLED:
        return f"throttled, try {at}" if at else "throttled"
    if hold.state is HoldState.RETRYING:
        return f"retrying {count(hold.count, view.compact)} at {at}" if at else f"retrying {count(hold.count, view.compact)}"
    return f"waiting: {hold.short}" if hold.short else "waiting"


def _short_hold_words(hold: Hold, view: View) -> str:
    """A narrow terminal's form: the state, and the time when it fits (the header says why)."""
    at = finish_text(datetime.fromtimestamp(hold.next_try, view.now.tzinfo), view) if hold.next_try else ""
    if hold.state is HoldState.RETRYING and at:
        return f"retry {at}"
    return hold.state.value


def _fixed_width(section: Section, key: str, compact: bool) -> int:
    return next(cw if compact else ww for k, _, cw, ww, _ in _FIXED[section] if k == key)


def _hold_cells(hold: Hold, view: View) -> tuple[Cell, Cell]:
    """The ETA and Left cells read as one left-aligned phrase across both columns."""
    words = hold_words(hold, view)
    first = _fixed_width(Section.CURRENT, "finish", view.compact) - 1  # after the separating space
    second = _fixed_width(Section.CURRENT, "left", view.compact)
    if len(words) > first + second and view.compact:
        words = _short_hold_words(hold, view)
    if len(words) > first + second:
        words = words[: first + second - 1] + "…"
    style = HOLD_GLYPHS[hold.state][1]
    return (False, ((" " + words[:first], style),)), (False, ((words[first:], style),))


def current_cells(
    mailing: Mailing,
    position: int,
    eta: datetime | None,
    rate: float,
    view: View,
    bar_width: int,
    hold: Hold | None = None,
) -> Cells:
    compact = view.compact
    sending = mailing.state is MailingState.SENDING
    done = mailing.total - mailing.remaining  # sent, failed or skipped as suppressed
    if mailing.remaining <= 0:
        finish, left = DASH, "done"
    elif eta is None:
        finish, left = DASH, DASH
    else:
        finish = finish_text(eta, view)
        left = duration((eta - view.now).total_seconds(), compact)
    marker, marker_style = ("▶" if sending else ""), ("bold" if sending else "")
    finish_cell, left_cell = _cell(finish, right=True), _cell(left, right=True)
    progress = progress_bar(done, mailing.total, bar_width)
    if hold is not None and mailing.remaining > 0:
        marker, marker_style = HOLD_GLYPHS[hold.state]
        finish_cell, left_cell = _hold_cells(hold, view)
    canary = _canary_cells(mailing, view)
    if canary is not None:
        progress, finish_cell, left_cell = canary
        if not sending:
            marker, marker_style = CANARY_GLYPH
    return (
        _cell(f"{marker}{position}", marker_style, right=True),
        _name(mailing, "bold" if sending else ""),
        progress,
        _cell(f"{count(mailing.sent, compact)}/{count(mailing.total, compact)}", right=True),
        _cell(count(mailing.failed, compact), "red" if mailing.failed else "", right=True),
        _cell(count(mailing.deferred, compact), "yellow" if mailing.deferred else "", right=True),
        _cell(rate_text(rate, compact) if sending else DASH, right=True),
        finish_cell,
        left_cell,
    )


@dataclass(frozen=True, slots=True)
class WaveGroup:
    """The scheduled waves of one local-time schedule (core/waves.py), shown as one row: the
    schedule's name, its next wave, and how many waves are left."""

    parent: str
    waves: int


def group_waves(mailings: list[Mailing], indexes: list[int]) -> tuple[list[int], dict[int, WaveGroup]]:
    """Of the Scheduled rows `indexes` (into `mailings`, earliest first), one row per wave group:
    its first wave shown, the next to go. Returns the rows kept and, by the id of each wave
    standing for a group, the group's summary (counted over the whole section, filter or not)."""
    left: dict[int, int] = {}
    for mailing in mailings:
        if mailing.wave_group is not None:
            left[mailing.wave_group] = left.get(mailing.wave_group, 0) + 1
    kept: list[int] = []
    groups: dict[int, WaveGroup] = {}
    seen: set[int] = set()
    for index in indexes:
        mailing = mailings[index]
        group = mailing.wave_group
        if group is None:
            kept.append(index)
        elif group not in seen:
            seen.add(group)
            kept.append(index)
            groups[mailing.id] = WaveGroup(mailing.wave_parent or mailing.name, left[group])
    return kept, groups


def grouped_count(mailings: list[Mailing]) -> int:
    """How many rows the Scheduled panel has for these mailings unfiltered: one per wave group."""
    return sum(1 for m in mailings if m.wave_group is None) + len({m.wave_group for m in mailings} - {None})


def _wave_cells(mailing: Mailing, schedule: Schedule, group: WaveGroup, view: View) -> tuple[Cell, Cell]:
    """The Name and Send at cells of a group's row: whose waves, how many left, the next one."""
    style = "red" if mailing.missed else ""
    waves = f"{group.waves} wave{'s' if group.waves != 1 else ''}"
    parent = " " + one_line(group.parent)
    local = f"{schedule.local:%Y-%m-%d %H:%M} local"
    if view.compact:
        # The name column is narrow here: the count goes with the time.
        return (False, ((parent, style),)), _cell(f"{local}, {waves}")
    offset = schedule.local - schedule.utc.replace(tzinfo=None)
    name: Cell = (False, ((parent, style), (f" ({waves} left)", "bright_black")))
    return name, _cell(f"{local}, next UTC{format_offset(offset)}")


def scheduled_cells(mailing: Mailing, view: View, group: WaveGroup | None = None) -> Cells:
    schedule = mailing.schedule
    if schedule is None:  # cannot happen for a scheduled mailing; shown plainly if it does
        return (_name(mailing), _cell(DASH), _cell(DASH), _cell(DASH, right=True))
    local = f"{send_time_text(schedule)} {schedule.tz}"
    here = here_text(schedule.utc, view)
    delta = schedule.utc - view.now
    if mailing.missed:
        starts = _cell("MISSED", "bold red", right=True)
    elif delta <= timedelta(0):
        starts = _cell("due now", "bold", right=True)
    else:
        starts = _cell(_short_delta(delta) if view.compact else humanize_delta(delta), right=True)
    if group is not None:
        return (*_wave_cells(mailing, schedule, group, view), _cell(here), starts)
    return (_name(mailing, "red" if mailing.missed else ""), _cell(local), _cell(here), starts)


def send_time_text(schedule: Schedule) -> str:
    """The wall time a schedule is really sent at: as typed when it exists once; a time the
    clocks skip as the time it becomes ("03:30 CEST"); a time that happens twice with the offset
    it took ("02:30 CEST (first)"). core.timezones.resolve decides; nothing is converted here."""
    try:
        resolved = resolve(schedule.local, schedule.tz)
    except (UserError, ValueError, KeyError, OSError):
        return f"{schedule.local:%Y-%m-%d %H:%M}"  # the zone went away: as stored
    if resolved.shift is Shift.NONE:
        return f"{resolved.effective:%Y-%m-%d %H:%M}"
    label = to_zone(resolved.utc, schedule.tz).tzname() or ""
    first = " (first)" if resolved.shift is Shift.FOLD else ""
    return f"{resolved.effective:%Y-%m-%d %H:%M} {label}{first}"


def _short_delta(delta: timedelta) -> str:
    """"in 2h05m" for the compact Starts column (whole minutes, like humanize_delta)."""
    minutes = int(delta.total_seconds()) // 60
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"in {days}d{hours:02d}h"
    if hours:
        return f"in {hours}h{minutes:02d}m"
    return f"in {minutes}m" if minutes else "in <1m"


OUTCOME_STYLE = {
    MailingState.COMPLETED: ("completed", "green"),
    MailingState.STOPPED: ("stopped", "yellow"),
    MailingState.DRAFT: ("draft", "bright_black"),
}


def inactive_cells(mailing: Mailing, view: View) -> Cells:
    label, style = OUTCOME_STYLE.get(mailing.state, (mailing.state.value, ""))
    name = _name(mailing)
    if mailing.state is MailingState.STOPPED and mailing.tripped:
        # Stopped by the breaker: said in red where the eye is, the full reason in Details.
        label, style = "tripped", "bold red"
        name = (False, name[1] + ((f" · {short_reason(mailing.tripped)}", "red"),))
    if mailing.state is MailingState.DRAFT:
        sent = f"{DASH}/{count(mailing.total, view.compact)}"
    else:
        sent = f"{count(mailing.sent, view.compact)}/{count(mailing.total, view.compact)}"
    ended = _ended(mailing.finished_at, view) if mailing.state is not MailingState.DRAFT else DASH
    return (name, _cell(label, style), _cell(sent, right=True), _cell(ended, right=True))


def _ended(finished: datetime | None, view: View) -> str:
    if finished is None:
        return DASH
    local = to_zone(finished, view.operator_tz)
    return f"{local:%Y-%m-%d %H:%M}"


# ---- canary (core/canary.py) ------------------------------------------------------------------

CANARY_GLYPH = ("◔", "cyan")  # before the queue place of a mailing holding after its canary


def canary_words(mailing: Mailing, view: View) -> tuple[str, str] | None:
    """("canary 37/50", "continues 10:42") while a canary is sent or holds, else None. While it
    is sent the time is an estimate: the rest of the sample at the canary's rate, then the hold."""
    canary = mailing.canary
    if canary is None or canary.phase not in (CanaryPhase.SENDING, CanaryPhase.HOLDING) or mailing.remaining <= 0:
        return None
    if canary.phase is CanaryPhase.HOLDING and canary.until is not None:
        at = datetime.fromtimestamp(canary.until, view.now.tzinfo)
        approx = ""
    else:
        left = max(canary.total - canary.done, 0) / canary.rate if canary.rate > 0 else 0.0
        at = view.now + timedelta(seconds=left + canary.wait)
        approx = "~"
    return progress_text(canary), f"{approx}{finish_text(at, view)}"


def _canary_cells(mailing: Mailing, view: View) -> tuple[Cell, Cell, Cell] | None:
    """The Progress cell says the canary's progress; ETA and Left say when the rest goes on."""
    words = canary_words(mailing, view)
    if words is None:
        return None
    progress, at = words
    first = _fixed_width(Section.CURRENT, "finish", view.compact) - 1
    second = _fixed_width(Section.CURRENT, "left", view.compact)
    room = first + second
    phrase = next((p for p in (f"continues {at}", f"cont. {at}") if len(p) <= room), at[:room])
    return (
        (False, ((" " + progress, "cyan"),)),
        (False, ((" " + phrase[:first], "cyan"),)),
        (False, ((phrase[first:first + second], "cyan"),)),
    )
