"""A yes/no question whose buttons say what they do.

A harmless question (quit, hand the sending off) starts on its confirm button: Enter confirms.
A destructive or risky one (stop a sending, delete, cancel a schedule, restart, raise the limits)
starts on the safe choice, so Enter alone, pressed once too often, never does it: the action takes
its own key, shown on its button, or a click on that button, which never takes the focus (Tab,
Enter would press it). The key counts only once the dialog has had ARM_SECONDS without a key
press: a word typed ahead ("spring" after Enter, Enter) or keys pasted into it stopped a sending
with its `s`. Escape always keeps things as they are.
"""

from __future__ import annotations

import time

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from mailtower.core.display import safe


# How long a destructive dialog must have been shown, with no key pressed, before its key counts.
ARM_SECONDS = 0.5


def action_key(label: str) -> str:
    """The key that confirms a destructive dialog by default: the first letter of its button."""
    for char in label:
        if char.isalpha():
            return char.lower()
    raise ValueError(f"no letter in {label!r} to use as its key")


class KeyArming:
    """For a modal screen whose letter keys act: they count only after ARM_SECONDS without a key
    press since it opened (see the module's docstring). `armed_keys` are the keys that wait; any
    other key pressed starts the wait again."""

    armed_keys: frozenset[str] = frozenset()
    _quiet_since = 0.0

    def start_arming(self) -> None:
        self._quiet_since = time.monotonic()

    def on_key(self, event: events.Key) -> None:
        if event.key not in self.armed_keys:
            self._quiet_since = time.monotonic()

    @property
    def armed(self) -> bool:
        """Its keys would count now."""
        return time.monotonic() - self._quiet_since >= ARM_SECONDS

    def too_soon(self) -> bool:
        """True (and the wait starts again) when an armed key came before the screen was armed:
        typed ahead, or part of a burst, it is no answer to a question just shown."""
        if self.armed:
            return False
        self._quiet_since = time.monotonic()
        return True


class ConfirmDialog(KeyArming, ModalScreen[bool]):
    """Dismisses with True when confirmed, False when kept as it is."""

    DEFAULT_CSS = """
    ConfirmDialog {
        align: center middle;
    }
    ConfirmDialog > #confirm-box {
        width: 64;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        border: round $primary;
        border-subtitle-color: $text-muted;
        background: $surface;
        padding: 0 1;
    }
    ConfirmDialog.-destructive > #confirm-box {
        border: round $error;
    }
    ConfirmDialog #confirm-title {
        text-style: bold;
        width: 100%;
        margin-bottom: 1;
    }
    ConfirmDialog #confirm-message {
        width: 100%;
        height: auto;
        margin-bottom: 1;
    }
    ConfirmDialog #confirm-buttons {
        height: auto;
        align-horizontal: right;
    }
    ConfirmDialog #confirm-buttons Button {
        margin-left: 2;
    }
    """

    BINDINGS = [Binding("escape", "cancel", "Keep")]

    def __init__(
        self,
        title: str,
        message: str,
        confirm_label: str = "OK",
        destructive: bool = False,
        *,
        keep_label: str = "Cancel",
        key: str | None = None,
    ) -> None:
        super().__init__(classes="-destructive" if destructive else "")
        self.title_text = title
        self.message = message
        self.confirm_label = confirm_label
        self.keep_label = keep_label
        self.destructive = destructive
        # Only a destructive dialog has its own key; a harmless one confirms with Enter.
        self.key = (key or action_key(confirm_label)) if destructive else None
        if self.key is not None:
            self._bindings.bind(self.key, "confirm_key", confirm_label, show=False)
            self.armed_keys = frozenset({self.key})
        self.start_arming()

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box") as box:
            if self.key is not None:
                box.border_subtitle = f"{self.key} {self.confirm_label.lower()} · Enter or Esc: {self.keep_label.lower()}"
            # Questions quote mailing names: user data, shown with its escapes visible (core/display.py);
            # the message's own line breaks stay line breaks.
            yield Label(Text(safe(self.title_text)), id="confirm-title")
            yield Static(self._message_text(), id="confirm-message", markup=False)
            with Horizontal(id="confirm-buttons"):
                yield Button(Text(self.keep_label), id="cancel", compact=True)
                confirm = Button(self.confirm_text(), id="confirm", variant="error" if self.destructive else "primary",
                                 compact=True)
                confirm.can_focus = not self.destructive
                yield confirm

    def _message_text(self) -> str:
        return "\n".join(safe(line) for line in self.message.split("\n"))

    def show_message(self, message: str) -> None:
        """Say the question anew (a count that moved while it was open); the focus, the key's
        wait and the buttons stay as they are."""
        if message == self.message:
            return
        self.message = message
        if self.is_mounted:
            self.query_one("#confirm-message", Static).update(self._message_text())

    def confirm_text(self) -> Text:
        """"Stop sending (s)": the button names its key, so the key is never a secret."""
        return Text(self.confirm_label if self.key is None else f"{self.confirm_label} ({self.key})")

    def on_mount(self) -> None:
        # Enter presses the focused button: the safe one when the action cannot be taken back.
        self.query_one("#cancel" if self.destructive else "#confirm", Button).focus()
        self.start_arming()

    def action_confirm_key(self) -> None:
        if self.too_soon():
            box = self.query_one("#confirm-box")
            box.border_subtitle = f"{self.key} came too soon: read the question, then press {self.key}"
            return
        self.dismiss(True)

    @on(Button.Pressed, "#confirm")
    def action_confirm(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(False)
