"""The Set Schedule dialog: date, hour and time zone with a live preview of the instant.

The rules are core's (`timezones.resolve`, `parse_date_hour`): a gap time moves forward, a fold
time means its first occurrence, past times and unknown zones are refused. The dialog only
shows them as the operator types and refuses to submit what the lifecycle would refuse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from mailtower.core.display import safe
from mailtower.core.domain import Mailing
from mailtower.core.errors import UserError
from mailtower.core.timezones import (
    Resolved,
    format_instant,
    humanize_delta,
    is_valid_zone,
    load_zone,
    parse_date_hour,
    resolve,
    search_zones,
    to_zone,
    utcnow,
)

DST_LINE = "Daylight savings automatically applied"
ZONE_MATCHES = 50
DEFAULT_HOUR = time(9, 0)


@dataclass(frozen=True, slots=True)
class ScheduleRequest:
    """What the operator asked for: a wall time in a zone (the lifecycle derives the instant)."""

    local: datetime  # naive wall time in `tz`
    tz: str
    local_time: bool  # deliver at that wall time in each recipient's own zone; `tz` for those without one


@dataclass(frozen=True, slots=True)
class Preview:
    """The dialog's reading of its fields: the instant if there is one, and what is wrong if anything."""

    local: datetime | None
    resolved: Resolved | None
    lines: tuple[tuple[str, str], ...]  # (label, value) rows of the preview
    warning: str | None
    error: str | None

    @property
    def valid(self) -> bool:
        return self.resolved is not None and self.error is None


def preview_schedule(date_text: str, hour_text: str, zone_text: str, *, operator_tz: str, now: datetime) -> Preview:
    """Read the three fields against the clock `now` (aware); never raises for bad input."""
    try:
        local = parse_date_hour(date_text, hour_text)
    except UserError as exc:
        return Preview(None, None, (), None, exc.message)
    zone = zone_text.strip()
    if not is_valid_zone(zone):
        try:
            load_zone(zone)
        except UserError as exc:
            return Preview(local, None, (), None, exc.message)
    resolved = resolve(local, zone)
    until = resolved.utc - now
    lines = (
        ("Chosen zone", format_instant(resolved.utc, zone)),
        ("UTC", format_instant(resolved.utc, "UTC").removesuffix(" UTC")),
        ("Your zone", format_instant(resolved.utc, operator_tz)),
        ("Starts", humanize_delta(until)),
    )
    error = None
    if until <= timedelta(0):
        error = f"{local:%Y-%m-%d %H:%M} in {zone} is in the past ({humanize_delta(until)}); choose a later time"
    return Preview(local, resolved, lines, resolved.warning, error)


def default_wall_time(mailing: Mailing, operator_tz: str, now: datetime) -> tuple[datetime, str]:
    """The mailing's own schedule, else tomorrow 09:00 in the operator's zone."""
    if mailing.schedule is not None:
        return mailing.schedule.local, mailing.schedule.tz
    tomorrow = to_zone(now, operator_tz).date() + timedelta(days=1)
    return datetime.combine(tomorrow, DEFAULT_HOUR), operator_tz


class ZoneList(OptionList, can_focus=False):
    """Matches for the zone field; driven from the field with the arrow keys, or clicked."""


class ZoneInput(Input):
    """The zone field: up and down walk the matches below it (an Input does not use them)."""

    BINDINGS = [
        Binding("down", "screen.zone_move(1)", "Next match", show=False),
        Binding("up", "screen.zone_move(-1)", "Previous match", show=False),
    ]


class ScheduleDialog(ModalScreen[ScheduleRequest | None]):
    """Dismisses with a ScheduleRequest, or None when cancelled."""

    DEFAULT_CSS = """
    ScheduleDialog {
        align: center middle;
    }
    ScheduleDialog > #schedule-box {
        width: 78;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        border: round $primary;
        border-title-style: bold;
        background: $surface;
        padding: 0 1;
    }
    ScheduleDialog .row {
        height: 1;
    }
    ScheduleDialog .field-label {
        width: 12;
    }
    ScheduleDialog .gap-label {
        width: 8;
        padding-left: 2;
    }
    ScheduleDialog #date {
        width: 12;
    }
    ScheduleDialog #hour {
        width: 7;
    }
    ScheduleDialog #zone {
        width: 1fr;
    }
    ScheduleDialog #zones {
        height: 4;
        margin-left: 12;
        border: none;
        padding: 0;
        background: $boost;
    }
    ScheduleDialog #dst {
        color: $text-muted;
        margin-left: 12;
    }
    ScheduleDialog #local-time {
        margin-bottom: 1;
    }
    ScheduleDialog #preview {
        height: auto;
    }
    ScheduleDialog #problem {
        height: auto;
        margin-top: 1;
    }
    ScheduleDialog #problem.-error {
        color: $text-error;
    }
    ScheduleDialog #problem.-warning {
        color: $text-warning;
    }
    ScheduleDialog #schedule-buttons {
        height: 1;
        margin-top: 1;
        align-horizontal: right;
    }
    ScheduleDialog #schedule-buttons Button {
        margin-left: 2;
    }
    """

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "submit", "Schedule"),
    ]

    def __init__(self, mailing: Mailing, operator_tz: str, now: Callable[[], datetime] | None = None) -> None:
        super().__init__()
        self.mailing = mailing
        self.operator_tz = operator_tz if is_valid_zone(operator_tz) else "UTC"
        self._now = now or utcnow
        self.preview = Preview(None, None, (), None, None)

    def compose(self) -> ComposeResult:
        local, zone = default_wall_time(self.mailing, self.operator_tz, self._now())
        box = Vertical(id="schedule-box")
        box.border_title = Text(f"Set schedule: {safe(self.mailing.name)} (id {self.mailing.id})")
        with box:
            with Horizontal(classes="row"):
                yield Label("Date", classes="field-label")
                yield Input(f"{local:%Y-%m-%d}", placeholder="YYYY-MM-DD", id="date", max_length=10, compact=True)
                yield Label("Hour", classes="gap-label")
                yield Input(f"{local:%H:%M}", placeholder="HH:MM", id="hour", max_length=5, compact=True)
            with Horizontal(classes="row", id="zone-row"):
                yield Label("Time zone", classes="field-label")
                yield ZoneInput(zone, placeholder="part of a name, e.g. berlin", id="zone", compact=True)
            yield ZoneList(id="zones")
            yield Static(DST_LINE, id="dst")
            yield Checkbox("Deliver in each recipient's time zone", id="local-time", compact=True)
            yield Static(id="preview", markup=False)
            yield Static(id="problem", markup=False)
            with Horizontal(id="schedule-buttons"):
                yield Button("Cancel", id="cancel", compact=True)
                yield Button("Schedule", id="submit", variant="primary", compact=True)

    def on_mount(self) -> None:
        self._show_matches(self.query_one("#zone", Input).value)
        self._refresh_preview()
        self.query_one("#date", Input).focus()
        # "Starts in ..." and the past-time check follow the clock while the dialog stays open.
        self.set_interval(15, self._refresh_preview)

    # --- reading the fields --------------------------------------------------------------

    def _fields(self) -> tuple[str, str, str]:
        return (
            self.query_one("#date", Input).value,
            self.query_one("#hour", Input).value,
            self.query_one("#zone", Input).value,
        )

    def _refresh_preview(self) -> None:
        date_text, hour_text, zone_text = self._fields()
        self.preview = preview_schedule(date_text, hour_text, zone_text, operator_tz=self.operator_tz, now=self._now())
        self.query_one("#preview", Static).update(self._preview_text())
        problem = self.query_one("#problem", Static)
        problem.set_class(self.preview.error is not None, "-error")
        problem.set_class(self.preview.error is None and self.preview.warning is not None, "-warning")
        if self.preview.error is not None:
            problem.update(f"✗ {self.preview.error}")
        elif self.preview.warning is not None:
            problem.update(f"⚠ {self.preview.warning}")
        else:
            problem.update("")
        problem.display = bool(self.preview.error or self.preview.warning)
        self.query_one("#submit", Button).disabled = not self.preview.valid

    def _preview_text(self) -> str:
        if not self.preview.lines:
            return f"{'Sends':<12}-"
        rows = [f"{label:<12}{value}" for label, value in self.preview.lines]
        if self.query_one("#local-time", Checkbox).value and self.preview.local is not None:
            zone = self.preview.resolved.tz if self.preview.resolved else ""
            rows.append(
                f"{'Recipients':<12}each at {self.preview.local:%H:%M} in their own zone; "
                f"those without one at {zone}"
            )
        return "\n".join(rows)

    # --- the zone search -----------------------------------------------------------------

    def _show_matches(self, query: str) -> None:
        matches = search_zones(query, limit=ZONE_MATCHES)
        zones = self.query_one(ZoneList)
        zones.set_options(Option(zone, id=zone) for zone in matches)
        exact = query.strip()
        zones.highlighted = matches.index(exact) if exact in matches else (0 if matches else None)

    def action_zone_move(self, step: int) -> None:
        zones = self.query_one(ZoneList)
        if step > 0:
            zones.action_cursor_down()
        else:
            zones.action_cursor_up()

    def _accept_highlighted_zone(self) -> bool:
        """Put the highlighted match into the zone field; False if there is none to take."""
        option = self.query_one(ZoneList).highlighted_option
        field = self.query_one("#zone", Input)
        if option is None or option.id is None or option.id == field.value:
            return False
        field.value = option.id
        field.cursor_position = len(option.id)
        return True

    # --- events --------------------------------------------------------------------------

    @on(Input.Changed)
    def _field_changed(self, event: Input.Changed) -> None:
        if event.input.id == "zone":
            self._show_matches(event.value)
        self._refresh_preview()

    @on(Checkbox.Changed)
    def _local_time_changed(self) -> None:
        self._refresh_preview()

    @on(Input.Submitted)
    def _field_submitted(self, event: Input.Submitted) -> None:
        # Enter in the zone field first completes a partial name ("berlin") to the highlighted match.
        if event.input.id == "zone" and not is_valid_zone(event.value.strip()) and self._accept_highlighted_zone():
            return
        self.action_submit()

    @on(OptionList.OptionSelected, "#zones")
    def _zone_clicked(self, event: OptionList.OptionSelected) -> None:
        field = self.query_one("#zone", Input)
        field.value = event.option.id or ""
        field.focus()

    @on(Button.Pressed, "#submit")
    def action_submit(self) -> None:
        self._refresh_preview()  # the clock may have moved since the last keystroke
        if not self.preview.valid or self.preview.resolved is None or self.preview.local is None:
            return
        self.dismiss(
            ScheduleRequest(
                local=self.preview.local,
                tz=self.preview.resolved.tz,
                local_time=self.query_one("#local-time", Checkbox).value,
            )
        )

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)

