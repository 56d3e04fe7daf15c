"""The Set Schedule dialog: date, hour and time zone with a live preview of the instant.

The rules are core's (`timezones.resolve`, `parse_date_hour`, `waves.plan_waves`): a gap time
moves forward, a fold time means its first occurrence, past times and unknown zones are refused.
With "each recipient's time zone" chosen it previews the waves (core/waves.py): when each goes
out in the operator's zone, its zones and recipients; where the time has already passed in some
zones it asks what happens to them (`PassedChoice`) before it schedules anything. A save that
would send to anyone sooner than the mailing is scheduled now asks first too (`sooner_question`),
on Go back, with its own key: Enter, Space and Tab by reflex never bring a campaign forward.
The dialog only shows the rules as the operator types and refuses to submit what the lifecycle
would refuse.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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

from mailtower.tui.fields import TextField
from mailtower.tui.screens.confirm import ConfirmDialog, KeyArming
from mailtower.core.display import one_line, safe
from mailtower.core.domain import Mailing, MailingState
from mailtower.core.errors import UserError
from mailtower.core.scheduling import ScheduleResult
from mailtower.core.waves import (
    PASSED_MEANING,
    Passed,
    Sooner,
    WavePlan,
    listed,
    plan_waves,
    send_times,
    sooner_sends,
)
from mailtower.core.timezones import (
    Resolved,
    format_instant,
    humanize_delta,
    is_valid_zone,
    load_zone,
    parse_date_hour,
    reversed_sign_note,
    resolve,
    search_zones,
    to_zone,
    wall_minute,
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
    passed: Passed | None = None  # local time: what happens where the time has already passed


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


def preview_schedule(
    date_text: str, hour_text: str, zone_text: str, *, operator_tz: str, now: datetime, local_time: bool = False
) -> Preview:
    """Read the three fields against the clock `now` (aware); never raises for bad input.

    With `local_time` the zone is only for recipients without one, so its own instant being past
    is not an error: the waves decide (`wave_preview`)."""
    if not date_text.strip():
        tomorrow = to_zone(now, operator_tz).date() + timedelta(days=1)
        return Preview(None, None, (), None, f"type the date to send on, as YYYY-MM-DD (tomorrow is {tomorrow:%Y-%m-%d})")
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
    if until <= timedelta(0) and not local_time:
        error = f"{wall_minute(local)} in {zone} is in the past ({humanize_delta(until)}); choose a later time"
    # "Etc/GMT+5 is UTC-05:00 (the POSIX sign is reversed)": the note `mailtower schedule` prints.
    warning = "; ".join(part for part in (resolved.warning, reversed_sign_note(zone)) if part) or None
    return Preview(local, resolved, lines, warning, error)


WAVE_ROWS = 4  # waves listed in the preview; the rest are counted


@dataclass(frozen=True, slots=True)
class WavePreview:
    lines: tuple[str, ...]
    plan: WavePlan | None
    error: str | None


def wave_preview(zones: Mapping[str, int], local: datetime, default_tz: str, *, operator_tz: str, now: datetime) -> WavePreview:
    """The waves a local-time schedule would make, as preview lines; never raises for bad input."""
    try:
        plan = plan_waves(zones, local, default_tz, now)
    except UserError as exc:
        return WavePreview((), None, exc.message)
    recipients = sum(zones.values())
    zone_count = len({z for wave in plan.waves for z in (s.zone for s in wave.zones)} | {s.zone for s in plan.passed})
    head = f"{'Waves':<12}{len(plan.waves):,} · {recipients:,} recipients in {zone_count:,} zones"
    lines = [head, f"  {'Your time':<22}{'Zones':<38}{'Recipients':>10}"]
    for wave in plan.waves[:WAVE_ROWS]:
        here = to_zone(wave.utc, operator_tz)
        when = f"{here:%Y-%m-%d %H:%M} {here.tzname() or ''}".rstrip()
        names = listed([share.zone for share in wave.zones], 1)
        names = names if len(names) <= 36 else names[:35] + "…"
        lines.append(f"  {when:<22}{names:<38}{wave.recipients:>10,}")
    rest = plan.waves[WAVE_ROWS:]
    if rest:
        lines.append(f"  … and {len(rest):,} more waves, the last at "
                     f"{to_zone(rest[-1].utc, operator_tz):%Y-%m-%d %H:%M} ({sum(w.recipients for w in rest):,} recipients)")
    if plan.passed:
        people = f"{plan.passed_recipients:,} recipient{'s' if plan.passed_recipients != 1 else ''}"
        lines.append(f"{'Passed':<12}{listed([s.zone for s in plan.passed], 2)} ({people}): asked on Schedule")
    return WavePreview(tuple(lines), plan, None)


def passed_question(plan: WavePlan) -> str:
    people = f"{plan.passed_recipients:,} recipient{'s' if plan.passed_recipients != 1 else ''}"
    return (
        f"{wall_minute(plan.requested)} has already passed in {len(plan.passed):,} "
        f"zone{'s' if len(plan.passed) != 1 else ''} ({listed([s.zone for s in plan.passed])}) for {people}. "
        "What happens to them?"
    )


SOONER_KEY = "s"


def sooner_question(name: str, sooner: Sooner, *, operator_tz: str, recipients_known: bool = True) -> str:
    """The question before a save that brings send times forward: how much sooner, for whom, and
    the earliest new send time in UTC, in its zone and in the operator's."""
    amount = humanize_delta(sooner.by).removeprefix("in ")
    who = f"{sooner.recipients:,} recipient{'s' if sooner.recipients != 1 else ''} in " if recipients_known else ""
    first = f"{utc_minute(sooner.earliest)} = {format_instant(sooner.earliest, sooner.earliest_zone)}"
    if sooner.earliest_zone != operator_tz:
        first += f" (your zone: {format_instant(sooner.earliest, operator_tz)})"
    return (
        f"This sends “{name}” up to {amount} sooner than it is scheduled now, "
        f"to {who}{listed(sooner.zones)}.\n"
        f"Earliest send: {first}; until now {utc_minute(sooner.before)}."
    )


def utc_minute(instant: datetime) -> str:
    """"2099-06-07 04:00 UTC"."""
    return f"{wall_minute(to_zone(instant, 'UTC'))} UTC"


def schedule_done_text(name: str, request: ScheduleRequest, result: ScheduleResult) -> str:
    """The notice after scheduling: when, and for local time how many waves (and who was kept back)."""
    if not result.local_time:
        resolved = result.mailings[0].resolved
        return f"“{name}” scheduled for {resolved.effective:%Y-%m-%d %H:%M} {resolved.tz}"
    waves = len(result.mailings)
    text = f"“{name}” scheduled for {request.local:%Y-%m-%d %H:%M} in each recipient's zone: {waves} wave{'s' if waves != 1 else ''}"
    if result.skipped_id is not None and result.plan is not None:
        text += f"; {result.plan.passed_recipients:,} recipients where it had passed kept in a draft (Inactive)"
    return text


class PassedChoice(KeyArming, ModalScreen[Passed | None]):
    """Zones where the time has passed: skip, now or next day, each by its own key (or a click);
    the focus is on Go back and stays there (the choices cannot take it), so neither Enter nor
    Tab then Enter decides for the operator."""

    DEFAULT_CSS = """
    PassedChoice { align: center middle; }
    PassedChoice > Vertical {
        width: 72; max-width: 100%; height: auto; border: round $warning; background: $surface; padding: 0 1;
    }
    PassedChoice #passed-question { height: auto; margin-bottom: 1; }
    PassedChoice .passed-buttons { height: auto; }
    PassedChoice Button { width: 100%; margin-bottom: 0; }
    """

    BINDINGS = [
        Binding("s", "choose('skip')", "Keep in a draft"),
        Binding("n", "choose('now')", "Send now"),
        Binding("d", "choose('next-day')", "Next day"),
        Binding("escape", "back", "Go back"),
    ]

    KEYS = {Passed.SKIP: "s", Passed.NOW: "n", Passed.NEXT_DAY: "d"}
    armed_keys = frozenset({"n", "d"})  # they send, now or tomorrow: not typed ahead (KeyArming)

    def __init__(self, plan: WavePlan) -> None:
        super().__init__()
        self.plan = plan
        self.start_arming()

    def compose(self) -> ComposeResult:
        box = Vertical()
        box.border_title = "Zones already past"
        with box:
            yield Static(passed_question(self.plan), id="passed-question", markup=False)
            with Vertical(classes="passed-buttons"):
                yield Button("Go back to the schedule (Esc)", id="back", compact=True)
                for choice in self.plan.choices():  # not "skip" when that would schedule nothing
                    meaning = PASSED_MEANING[choice]
                    label = f"{choice.value}: {meaning[:1].upper()}{meaning[1:]} ({self.KEYS[choice]})"
                    button = Button(label, id=f"passed-{choice.value}", compact=True)
                    button.can_focus = False  # "now" may be the next button: Tab, Enter would send
                    yield button

    def on_mount(self) -> None:
        self.query_one("#back", Button).focus()
        self.start_arming()

    def action_choose(self, value: str) -> None:
        choice = Passed(value)
        if choice in self.plan.choices() and not (self.KEYS[choice] in self.armed_keys and self.too_soon()):
            self.dismiss(choice)

    def action_back(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        button = event.button.id or ""
        self.dismiss(Passed(button.removeprefix("passed-")) if button.startswith("passed-") else None)


def default_wall_time(mailing: Mailing, operator_tz: str, now: datetime) -> tuple[datetime, str]:
    """The mailing's own schedule, else tomorrow 09:00 in the operator's zone (the dialog then
    shows only the hour and zone: see ScheduleDialog.compose)."""
    if mailing.schedule is not None:
        return mailing.schedule.local, mailing.schedule.tz
    tomorrow = to_zone(now, operator_tz).date() + timedelta(days=1)
    return datetime.combine(tomorrow, DEFAULT_HOUR), operator_tz


class ZoneList(OptionList, can_focus=False):
    """Matches for the zone field; driven from the field with the arrow keys, or clicked."""


class ZoneInput(TextField):
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

    def __init__(
        self,
        mailing: Mailing,
        operator_tz: str,
        now: Callable[[], datetime] | None = None,
        *,
        zones: Mapping[str, int] | None = None,
        waves: int = 1,
        wall: tuple[datetime, str] | None = None,
        current: Mapping[str, datetime] | None = None,
    ) -> None:
        """`zones`: the recipients not yet sent to per zone ('' for none), for the waves preview;
        `waves`: how many scheduled waves the mailing stands for (a local-time schedule's row);
        `wall`: the wall time and zone to start from (a local-time schedule's own request);
        `current`: when each of those zones' recipients are sent to now (its scheduled waves'
        instants), against which a save is judged sooner."""
        super().__init__()
        self.mailing = mailing
        self.operator_tz = operator_tz if is_valid_zone(operator_tz) else "UTC"
        self._now = now or utcnow
        self.preview = Preview(None, None, (), None, None)
        self.wave_lines: tuple[str, ...] = ()
        self.zones = dict(zones) if zones is not None else None
        self.waves = waves
        self.wall = wall
        self.current = dict(current) if current else None
        self.wave_plan: WavePlan | None = None

    def compose(self) -> ComposeResult:
        local, zone = self.wall or default_wall_time(self.mailing, self.operator_tz, self._now())
        # A mailing without a schedule gets no date until one is typed: Enter pressed by reflex
        # (Enter on the row, Enter on Set Schedule, Enter) must not schedule a draft to go out,
        # also a draft kept back from a local-time schedule (its group's hour and zone are shown).
        shown_date = f"{local:%Y-%m-%d}" if self.mailing.schedule is not None else ""
        box = Vertical(id="schedule-box")
        if self.waves > 1:
            title = f"Set schedule: {safe(self.mailing.wave_parent or self.mailing.name)} (all {self.waves} waves)"
        else:
            title = f"Set schedule: {safe(self.mailing.name)} (id {self.mailing.id})"
        box.border_title = Text(title)
        with box:
            with Horizontal(classes="row"):
                yield Label("Date", classes="field-label")
                yield TextField(shown_date, placeholder="YYYY-MM-DD", id="date", max_length=10, compact=True)
                yield Label("Hour", classes="gap-label")
                yield TextField(f"{local:%H:%M}", placeholder="HH:MM", id="hour", max_length=5, compact=True)
            with Horizontal(classes="row", id="zone-row"):
                yield Label("Time zone", classes="field-label")
                yield ZoneInput(zone, placeholder="part of a name, e.g. berlin", id="zone", compact=True)
            yield ZoneList(id="zones")
            yield Static(DST_LINE, id="dst")
            yield Checkbox(
                "Deliver in each recipient's time zone", self.mailing.wave_group is not None, id="local-time", compact=True
            )
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

    def _local_time(self) -> bool:
        return self.query_one("#local-time", Checkbox).value

    def _refresh_preview(self) -> None:
        date_text, hour_text, zone_text = self._fields()
        local_time = self._local_time()
        now = self._now()
        preview = preview_schedule(
            date_text, hour_text, zone_text, operator_tz=self.operator_tz, now=now, local_time=local_time
        )
        self.wave_plan = None
        if local_time and self.zones is not None and preview.valid and preview.local is not None:
            waves = wave_preview(self.zones, preview.local, zone_text.strip(), operator_tz=self.operator_tz, now=now)
            self.wave_plan = waves.plan
            warnings = list(waves.plan.warnings()) if waves.plan is not None else []
            sign = reversed_sign_note(zone_text.strip())  # the zone of recipients without one
            warning = "; ".join([*warnings, *([sign] if sign else [])])
            preview = Preview(preview.local, preview.resolved, (), warning or None, waves.error)
            self.wave_lines = waves.lines
        self.preview = preview
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
        if self.wave_plan is not None:
            zone = self.preview.resolved.tz if self.preview.resolved else ""
            return "\n".join([*self.wave_lines, f"{'No zone':<12}recipients without one use {zone}"])
        if not self.preview.lines:
            return f"{'Sends':<12}-"
        rows = [f"{label:<12}{value}" for label, value in self.preview.lines]
        if self._local_time() and self.preview.local is not None:
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

    # --- sooner than now -----------------------------------------------------------------

    def _counts(self) -> dict[str, int]:
        """The recipients per tz value the send times are judged for ('' for those without one)."""
        return dict(self.zones) if self.zones else {"": 1}

    def _current_times(self, counts: Mapping[str, int]) -> dict[str, datetime] | None:
        """When each tz value's recipients get the mailing as it is scheduled now: the scheduled
        waves' own instants (`current`, waves.current_send_times), else the mailing's schedule;
        None for a mailing with no send time (a draft being scheduled is not "sooner")."""
        mailing = self.mailing
        if mailing.state is not MailingState.SCHEDULED or mailing.schedule is None:
            return None
        # A zone missing from `current` (none expected) counts as the latest wave: a doubt leads
        # to the question, never to a silent move forward.
        latest = max(self.current.values()) if self.current else mailing.schedule.utc
        return {key: (self.current or {}).get(key, latest) for key in counts}

    def _sooner(self, request: ScheduleRequest) -> Sooner | None:
        """What saving `request` would bring forward, if anything."""
        now = self._now()
        counts = self._counts()
        current = self._current_times(counts)
        if current is None:
            return None
        try:
            new = send_times(counts, request.local, request.tz, now, local_time=request.local_time, choice=request.passed)
        except UserError:
            return None  # the lifecycle refuses it and says why; nothing is saved
        return sooner_sends(current, new, counts)

    def _save(self, request: ScheduleRequest) -> None:
        """Dismiss with `request`, once confirmed if it brings any send time forward: the question
        opens on Go back (Enter, Space, Esc), the save takes its own key or a click."""
        sooner = self._sooner(request)
        if sooner is None:
            self.dismiss(request)
            return
        name = one_line(self.mailing.wave_parent or self.mailing.name)
        question = ConfirmDialog(
            "Send sooner than scheduled?",
            sooner_question(name, sooner, operator_tz=self.operator_tz, recipients_known=bool(self.zones)),
            "Send sooner",
            destructive=True,
            keep_label="Go back",
            key=SOONER_KEY,
        )

        def answered(confirmed: bool | None) -> None:
            if confirmed:
                self.dismiss(request)

        self.app.push_screen(question, answered)

    @on(Button.Pressed, "#submit")
    def action_submit(self) -> None:
        self._refresh_preview()  # the clock may have moved since the last keystroke
        if not self.preview.valid or self.preview.resolved is None or self.preview.local is None:
            return
        request = ScheduleRequest(local=self.preview.local, tz=self.preview.resolved.tz, local_time=self._local_time())
        plan = self.wave_plan
        if request.local_time and plan is not None and plan.passed:
            # Nothing is scheduled until the operator says what happens where the time has passed.
            def chosen(choice: Passed | None) -> None:
                if choice is not None:
                    self._save(ScheduleRequest(request.local, request.tz, True, choice))

            self.app.push_screen(PassedChoice(plan), chosen)
            return
        self._save(request)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)

