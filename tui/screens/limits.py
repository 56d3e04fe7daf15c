"""The Sending limits dialog: rate, connections and messages per connection, changed live.

The values and their rules are core's (`limits.LIMITS`, `parse_limit`, `set_limits`); the sender
reads the settings table about once a second, so a save here takes effect without a restart.
The dialog shows when each limit last changed and refuses to save what core would refuse.

Typing replaces a field's value (it opens selected, as the schedule dialog's fields do), so "10"
means 10, not 6010. A change that more than doubles a rate or the connections is shown as
old -> new and asked about first, on a dialog that opens on "Go back".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.validation import ValidationResult, Validator
from textual.widgets import Button, Input, Label, Select, Static
from textual.widgets.input import Selection

from mailtower.tui.fields import TextField
from mailtower.core.config import Settings, parse_number
from mailtower.core.db_errors import database_errors
from mailtower.core.errors import UserError
from mailtower.core.limits import LIMITS, Limits, group_limits, group_names, parse_limit, read_limits, set_domain_limits, set_limits
from mailtower.core.store import Store
from mailtower.core.timezones import humanize_delta, utcnow

from .confirm import ConfirmDialog

EXPLANATION = "The sender applies changes within a second, even while a mailing sends; they hold across restarts."
SAVED = "Limits saved; the sender applies them within a second"
AGO_REFRESH = 15.0  # seconds between updates of "3 min ago"


@dataclass(frozen=True, slots=True)
class LimitField:
    """How one limit is presented: its label and what the operator should know about its values."""

    label: str
    hint: str


FIELDS: dict[str, LimitField] = {
    "rate": LimitField("Rate per second", "messages; 0 = unlimited"),
    "rate_per_hour": LimitField("Rate per hour", "messages; 0 = unlimited"),
    "connections": LimitField("Connections", "at least 1"),
    "messages_per_connection": LimitField("Messages per connection", "then reconnect; 0 = never"),
}

# Limits that let more mail out the more they grow; 0 means unlimited for the rates.
PACING: dict[str, str] = {"rate": "msg/s", "rate_per_hour": "msg/h", "connections": ""}
UNLIMITED_AT_ZERO = frozenset({"rate", "rate_per_hour"})
# A domain group's limits: 0 is no cap of its own for every one, connections too (the group may
# then use all of the sender's connections: core/config.py's domain_connections).
GROUP_UNLIMITED_AT_ZERO = frozenset({"rate", "rate_per_hour", "connections"})

# With domain groups configured, a Select picks whose limits the fields show: the whole sender's,
# or one group's (field -> the group's limit, and the BOUNDS row its value is checked against).
WHOLE_SENDER = ""
GROUP_FIELDS: dict[str, tuple[str, str]] = {
    "rate": ("rate", "rate"),
    "rate_per_hour": ("per_hour", "rate_per_hour"),
    "connections": ("connections", "domain_connections"),
}


def more_than_doubles(name: str, old: float, new: float, unlimited_at_zero: frozenset[str] = UNLIMITED_AT_ZERO) -> bool:
    """Whether changing pacing limit `name` from `old` to `new` lets out more than twice as much.

    For a limit in `unlimited_at_zero` 0 is unlimited: setting a limit where there was none is a
    decrease, and removing a limit (to 0) is the largest increase there is.
    """
    if name not in PACING or new == old:
        return False
    if name in unlimited_at_zero:
        if old == 0:
            return False
        if new == 0:
            return True
    return new > 2 * old


def shown_value(name: str, value: float, unlimited_at_zero: frozenset[str] = UNLIMITED_AT_ZERO) -> str:
    if name in unlimited_at_zero and value == 0:
        return "unlimited" if name in UNLIMITED_AT_ZERO else "no cap of its own"
    unit = PACING.get(name, "")
    return f"{format_value(value)} {unit}".rstrip()


def increase_lines(limits: Limits, changes: dict[str, float | int]) -> list[str]:
    """ "Rate per second: 60 msg/s → 6010 msg/s" for each change that more than doubles a limit."""
    lines = []
    for name, new in changes.items():
        old = getattr(limits, name)
        if more_than_doubles(name, old, new):
            lines.append(f"{FIELDS[name].label}: {shown_value(name, old)} → {shown_value(name, new)}")
    return lines


def limit_problem(name: str, text: str, bound: str | None = None) -> str | None:
    """What is wrong with `text` as the value of limit `name` (checked against BOUNDS row `bound`
    instead, for a domain group's), or None if core would accept it."""
    if not text.strip():
        return "enter a number"
    try:
        if bound is not None:
            parse_number(bound, text, f"--{name.replace('_', '-')}")
        else:
            parse_limit(name, text)
    except UserError as exc:
        # Core words it for the command line ("--connections: ..."); here the field says which one.
        return exc.message.removeprefix(f"--{name.replace('_', '-')}: ")
    return None


def format_value(value: float | int) -> str:
    """50.0 reads "50" in the field; 2.5 stays "2.5"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def describe_change(changed_at: datetime | None, now: datetime) -> str:
    """ "changed 14:02:11 UTC, 3 min ago" (with the date when not today), or "from configuration"."""
    if changed_at is None:
        return "from configuration"
    when = changed_at.astimezone(timezone.utc)
    today = now.astimezone(timezone.utc).date()
    stamp = f"{when:%H:%M:%S}" if when.date() == today else f"{when:%Y-%m-%d %H:%M:%S}"
    return f"changed {stamp} UTC, {humanize_delta(when - now)}"


def changed_values(limits: Limits, texts: dict[str, str]) -> dict[str, float | int]:
    """The parsed values that differ from `limits`; every text must be valid."""
    values = {name: parse_limit(name, text) for name, text in texts.items()}
    return {name: value for name, value in values.items() if value != getattr(limits, name)}


class LimitValidator(Validator):
    """Core's rule for one limit, so the field itself shows when it is invalid."""

    def __init__(self, name: str, bound: Callable[[str], str | None] | None = None) -> None:
        super().__init__()
        self.limit = name
        self.bound = bound  # the bounds row of the scope the dialog shows now (a domain group's)

    def validate(self, value: str) -> ValidationResult:
        problem = limit_problem(self.limit, value, self.bound(self.limit) if self.bound else None)
        return self.success() if problem is None else self.failure(problem)


class LimitsScreen(ModalScreen[bool]):
    """Dismisses with True when a limit was changed, False when cancelled or nothing changed."""

    DEFAULT_CSS = """
    LimitsScreen {
        align: center middle;
    }
    LimitsScreen > #limits-box {
        width: 78;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        border: round $primary;
        border-title-style: bold;
        background: $surface;
        padding: 0 1;
    }
    LimitsScreen #limits-explanation {
        width: 100%;
        height: auto;
        color: $text-muted;
        margin-bottom: 1;
    }
    LimitsScreen .limit {
        height: auto;
        margin-bottom: 1;
    }
    LimitsScreen .row {
        height: 1;
    }
    LimitsScreen .field-label {
        width: 25;
    }
    LimitsScreen .row Input {
        width: 14;
    }
    LimitsScreen .hint {
        width: 1fr;
        padding-left: 2;
        color: $text-muted;
    }
    LimitsScreen .changed {
        margin-left: 25;
        color: $text-muted;
    }
    LimitsScreen .error {
        margin-left: 25;
        color: $text-error;
    }
    LimitsScreen #limits-buttons {
        height: 1;
        align-horizontal: right;
    }
    LimitsScreen #limits-buttons Button {
        margin-left: 2;
    }
    """

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "save", "Save"),
    ]

    def __init__(self, store: Store, settings: Settings, now: Callable[[], datetime] | None = None) -> None:
        super().__init__()
        self.store = store
        self.settings = settings
        self._now = now or utcnow
        self.limits: Limits | None = None  # None until read from the database
        self._saving = False
        self.scope = WHOLE_SENDER  # or the name of the domain group whose limits are shown

    def compose(self) -> ComposeResult:
        box = Vertical(id="limits-box")
        box.border_title = "Sending limits"
        with box:
            yield Static(EXPLANATION, id="limits-explanation", markup=False)
            if self.settings.domains:
                with Horizontal(classes="row limit"):
                    yield Label("Limits of", classes="field-label")
                    yield Select([("the whole sender", WHOLE_SENDER)] + [(f"domain group {n}", n) for n in group_names(self.settings)],
                                 value=WHOLE_SENDER, allow_blank=False, id="scope", compact=True)
            for name, field in FIELDS.items():
                with Vertical(classes="limit", id=f"{name}-box"):
                    with Horizontal(classes="row"):
                        yield Label(field.label, classes="field-label")
                        # No `type`: Textual's number fields drop a key they do not take without a
                        # word ("0x10" became 10, "1e3" connections 13); every key is kept and the
                        # validator says what is wrong with the whole value instead.
                        yield TextField(id=name, validators=[LimitValidator(name, self._bound)], compact=True)
                        yield Static(field.hint, classes="hint", markup=False)
                    yield Static("", id=f"{name}-changed", classes="changed", markup=False)
                    yield Static("", id=f"{name}-error", classes="error", markup=False)
            with Horizontal(id="limits-buttons"):
                yield Button("Cancel", id="cancel", compact=True)
                yield Button("Save", id="save", variant="primary", compact=True, disabled=True)

    async def on_mount(self) -> None:
        for name in LIMITS:
            self.query_one(f"#{name}-error", Static).display = False
        self.limits = await read_limits(self.store, self.settings)
        self._fill()
        first = self.query_one(f"#{next(iter(LIMITS))}", Input)
        first.focus()
        # The field may have had focus (empty) before the values arrived: select its value now,
        # so the first keys typed replace it rather than add to it.
        first.selection = Selection(0, len(first.value))
        self.set_interval(AGO_REFRESH, self._show_changed)

    # --- showing state ---------------------------------------------------------------------

    def _fields(self) -> tuple[str, ...]:
        """The limits the dialog shows now: all of the sender's, or a domain group's three."""
        return tuple(LIMITS) if self.scope == WHOLE_SENDER else tuple(GROUP_FIELDS)

    def _bound(self, name: str) -> str | None:
        return None if self.scope == WHOLE_SENDER else GROUP_FIELDS[name][1]

    def _values(self, limits: Limits) -> dict[str, float | int]:
        if self.scope == WHOLE_SENDER:
            return {name: getattr(limits, name) for name in LIMITS}
        group = group_limits(self.settings, limits, self.scope)
        return {name: group[key] for name, (key, _) in GROUP_FIELDS.items()}

    def _fill(self) -> None:
        """Put the values of the scope shown into the fields."""
        assert self.limits is not None
        values = self._values(self.limits)
        self.query_one("#messages_per_connection-box").display = self.scope == WHOLE_SENDER
        for name, value in values.items():
            field = self.query_one(f"#{name}", Input)
            field.value = format_value(value)
            field.cursor_position = len(field.value)
        self._show_changed()
        self._check()

    @on(Select.Changed, "#scope")
    def _scope_changed(self, event: Select.Changed) -> None:
        self.scope = str(event.value) if event.value is not Select.BLANK else WHOLE_SENDER
        if self.limits is not None:
            self._fill()

    def _texts(self) -> dict[str, str]:
        return {name: self.query_one(f"#{name}", Input).value for name in self._fields()}

    def _show_changed(self) -> None:
        if self.limits is None:
            return
        now = self._now()
        stored = self.limits.domains.get(self.scope, {})
        for name in self._fields():
            if self.scope == WHOLE_SENDER:
                line = describe_change(self.limits.changed_at.get(name), now)
            else:
                line = "changed live" if GROUP_FIELDS[name][0] in stored else "from configuration"
            self.query_one(f"#{name}-changed", Static).update(line)

    def _check(self) -> bool:
        """Show each field's problem under it; True when every field is valid."""
        valid = True
        for name, text in self._texts().items():
            problem = limit_problem(name, text, self._bound(name))
            error = self.query_one(f"#{name}-error", Static)
            error.update(f"✗ {problem}" if problem else "")
            error.display = problem is not None
            valid = valid and problem is None
        self.query_one("#save", Button).disabled = not valid or self.limits is None or self._saving
        return valid

    # --- events ----------------------------------------------------------------------------

    @on(Input.Changed)
    def _field_changed(self) -> None:
        if self.limits is not None:  # the fields are blank until the values are read
            self._check()

    @on(Input.Submitted)
    def _field_submitted(self) -> None:
        self.action_save()

    @on(Button.Pressed, "#save")
    def action_save(self) -> None:
        if self.limits is None or self._saving or not self._check():
            return
        self._saving = True  # a second Enter while the question or the write waits must not save twice
        self.query_one("#save", Button).disabled = True
        self._save(self.limits)

    @work(exclusive=True, group="limits-save", exit_on_error=False)
    async def _save(self, limits: Limits) -> None:
        if await self._changed_elsewhere(limits):
            return
        if self.scope != WHOLE_SENDER:
            await self._save_group(limits)
            return
        changes = changed_values(limits, self._texts())
        if not changes:
            self.notify("No limit changed", timeout=3)
            self.dismiss(False)
            return
        raised = increase_lines(limits, changes)
        if raised and not await self.app.push_screen_wait(
            ConfirmDialog(
                "Raise the sending limits?",
                "This lets out more than twice as much mail as before:\n"
                + "\n".join(raised)
                + "\nThe relay or the receiving servers may throttle or block a sudden jump.",
                "Raise limits",
                destructive=True,
                keep_label="Go back",
            )
        ):
            self._saving = False
            self._check()
            return
        try:
            await set_limits(self.store, dict(changes))
        except (UserError, *database_errors(), OSError) as exc:
            self._saving = False
            self._check()
            self.notify(str(exc), title="Not saved", severity="error", timeout=8)
            return
        self.notify(SAVED, title="Sending limits", timeout=5)
        self.dismiss(True)

    async def _changed_elsewhere(self, limits: Limits) -> bool:
        """Whether the limits shown were changed by someone else since the dialog read them: then
        the fields show the new values and nothing is saved. Saved as they were, the stale ones
        would undo that change unseen, and "more than doubles" would be judged against values no
        longer in force (a rate cut to 5 elsewhere, then 100 saved here against the 60 shown)."""
        try:
            live = await read_limits(self.store, self.settings)
        except (*database_errors(), OSError) as exc:
            self._saving = False
            self._check()
            self.notify(str(exc), title="Not saved", severity="error", timeout=8)
            return True
        if self._values(live) == self._values(limits):
            return False
        self.limits = live
        self._saving = False
        self._fill()
        self.notify("The limits were changed elsewhere while this dialog was open. The fields show them now; "
                    "type your change again.", title="Not saved", severity="warning", timeout=10)
        return True

    async def _save_group(self, limits: Limits) -> None:
        """Save the shown domain group's limits (core checks them again, as for the command)."""
        old = self._values(limits)
        texts = self._texts()
        new = {name: parse_number(GROUP_FIELDS[name][1], texts[name], name) for name in texts}
        changes = {name: value for name, value in new.items() if value != old[name]}
        if not changes:
            self.notify("No limit changed", timeout=3)
            self.dismiss(False)
            return
        group = GROUP_UNLIMITED_AT_ZERO
        raised = [f"{FIELDS[n].label}: {shown_value(n, old[n], group)} → {shown_value(n, v, group)}"
                  for n, v in changes.items() if more_than_doubles(n, old[n], v, group)]
        if raised and not await self.app.push_screen_wait(
            ConfirmDialog(f"Raise the limits of {self.scope}?",
                          "This lets out more than twice as much mail to these domains:\n" + "\n".join(raised),
                          "Raise limits", destructive=True, keep_label="Go back")
        ):
            self._saving = False
            self._check()
            return
        try:
            await set_domain_limits(self.store, self.settings, self.scope,
                                    {GROUP_FIELDS[name][0]: str(value) for name, value in changes.items()})
        except (UserError, *database_errors(), OSError) as exc:
            self._saving = False
            self._check()
            self.notify(str(exc), title="Not saved", severity="error", timeout=8)
            return
        self.notify(f"Limits of {self.scope} saved; the sender applies them within a second", title="Sending limits",
                    timeout=5)
        self.dismiss(True)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(False)
