"""The `?` screen: every key of the dashboard, what each section's Actions menu holds (from
core/actions_registry, the one list of actions) and which zone data the times use."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from mailtower.core.actions_registry import ACTIONS, section_labels
from mailtower.core.domain import Section

from .footer import SteadyFooter
from .kept import KeptScreen

KEYS: list[tuple[str, str]] = [
    ("Tab / Shift+Tab", "next / previous panel (Current, Scheduled, Inactive)"),
    ("↑ ↓  j k", "move within a panel"),
    ("PgUp PgDn", "page within a panel"),
    ("Home End  g G", "first / last mailing of a panel"),
    ("a  or  Enter", "Actions menu of the highlighted mailing"),
    ("/", "filter all three panels by name, subject or id (Enter: back to the panels, Escape: clear)"),
    ("Escape", "close a menu or dialog; clear the filter"),
    ("Ctrl+P", "command palette: every action, searchable"),
    ("?", "this list of keys"),
    ("l", "sending limits: rate, hourly limit, connections (applied within a second)"),
    ("q", "quit (asks first if mailings are current or scheduled; sending goes on in the background)"),
    ("mouse", "click a panel to focus it, click the highlighted row for its Actions"),
]

QUIT_DEMO = (
    "q",
    "quit the demo at once: its SMTP sink and database are throw-away, so quitting ends the demo "
    "(nothing is handed off to a background sender, nothing is kept)",
)

def section_line(section: Section) -> str:
    """What a section's Actions menu can hold, in the registry's words: "Cancel sending, Move up /
    down / to top / to bottom, Details" (core/actions_registry is the one list)."""
    parts: list[str] = []
    for label, note in section_labels(section):
        text = f"{label} ({note})" if note else label
        if parts and label.startswith("Move ") and parts[-1].startswith("Move "):
            parts[-1] += " / " + label.removeprefix("Move ")  # "Move up / down / to top / to bottom"
        else:
            parts.append(text)
    return ", ".join(parts)


def commands_line() -> str:
    """Each action's `mailtower` command beside the menu's name for it."""
    return ", ".join(f"{e.command} ({e.label})" for e in ACTIONS.values() if e.command is not None)


def help_table(where: str, demo: bool = False) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for key, what in KEYS:
        if demo and key == QUIT_DEMO[0]:
            key, what = QUIT_DEMO
        table.add_row(Text(key), Text(what))
    table.add_row("", "")
    table.add_row(Text("Actions", style="bold underline"), "")
    for section in Section:
        table.add_row(Text(section.value.capitalize()), Text(section_line(section)))
    table.add_row(Text("Commands"), Text(f"the same from a shell, `mailtower COMMAND ID`: {commands_line()}"))
    table.add_row(Text("Destructive"), Text("a question that cannot be taken back opens on the safe choice; "
                                            "its action takes the key shown on its button"))
    table.add_row("", "")
    table.add_row(Text("Times"), Text(where))
    return table


class HelpScreen(KeptScreen[None]):
    BINDINGS = [
        Binding("escape", "close", "Close", id="close"),
        Binding("question_mark", "close", "Close", show=False),
        Binding("q", "close", show=False),
    ]

    # Opaque on purpose: a see-through screen makes Textual redraw the whole (dimmed) dashboard
    # behind it on every opening, 40-60 ms of a key press while sending (issue 11 item 16).
    DEFAULT_CSS = """
    HelpScreen { align: center middle; background: $background; }
    HelpScreen > VerticalScroll {
        width: 90; max-width: 100%; height: auto; max-height: 100%;
        border: round $accent; background: $surface; padding: 0 1;
    }
    HelpScreen Static { height: auto; }
    """

    def __init__(self, where: str, demo: bool = False) -> None:
        super().__init__()
        self.where = where
        self.demo = demo

    def compose(self) -> ComposeResult:
        with VerticalScroll() as box:
            box.border_title = "Keys (demo)" if self.demo else "Keys"
            box.border_subtitle = "Escape closes"
            yield Static(help_table(self.where, self.demo))
        yield SteadyFooter()

    def on_screen_resume(self) -> None:
        # Shown again (the app keeps it): from the top, as when it was new.
        self.query_one(VerticalScroll).scroll_home(animate=False, immediate=True)

    def action_close(self) -> None:
        self.dismiss(None)
