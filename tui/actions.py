"""The Actions menu of one mailing: what can be done to it now, and why not, for what cannot.

The menu only chooses; the app carries the choice out (confirmations, dialogs, the store).
While it is open the app hands it the mailing as it is now (`follow`), so an entry that stops
being possible goes away with a line saying why, instead of being refused only after it is chosen.

The app composes one menu and shows it again for each mailing (`open_for`): composing a screen
(its widgets, their styles, its footer) costs more than the 50 ms a key may take while the
sender runs at full speed (issue 11 item 16), and the menu's parts are the same every time.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Label, OptionList, Static
from textual.widgets.option_list import Option

from mailtower.core.display import one_line
from mailtower.core.domain import Mailing
from mailtower.core.actions_registry import ACTIONS, MOVES_DOWN, MOVES_UP, Offer
from mailtower.core.lifecycle import Action, held_unresolvable

from .footer import SteadyFooter
from .kept import KeptScreen

def gone_reason(key: str, mailing: Mailing) -> str:
    """Why an entry the menu offered when it opened is not possible any more."""
    if key in MOVES_UP:
        return "it is first in the queue now"
    if key in MOVES_DOWN:
        return "it is last in the queue now"
    return f"the mailing is {describe_state(mailing)} now"


def offer_prompt(offer: Offer) -> Text:
    if offer.key == ACTIONS[Action.STOP].key:
        return Text(offer.label, style="bold red")  # the seed's red Cancel button
    return Text(offer.label)


def withheld_text(offers: list[Offer]) -> Text:
    """Why an action is not in the menu now (the seed: not offered while a mailing is being sent),
    and what to do instead."""
    text = Text()
    for offer in offers:
        if offer.enabled:
            continue
        if text:
            text.append("\n")
        reason = offer.reason[:1].upper() + offer.reason[1:]
        text.append(f"{offer.label} is not offered now. ", style="bold")
        text.append(reason + ("" if reason.endswith(".") else "."))
    return text


def _name_text(mailing: Mailing) -> Text:
    return Text(one_line(mailing.name), style="bold")


def describe_state(mailing: Mailing) -> str:
    """"current (sending)", "scheduled", "inactive (stopped)"."""
    section, state = mailing.section.value, mailing.state.value
    return section if state == section else f"{section} ({state})"


def describe(mailing: Mailing) -> str:
    """"Current · sending · id 12": where the mailing is, what it is doing if that says more, and
    its id (what `mailtower` commands take; the panel's # is the place in the queue)."""
    parts = [mailing.section.value.capitalize()]
    if mailing.state.value != mailing.section.value:
        parts.append(mailing.state.value)
    if held_unresolvable(mailing):
        parts.append("time zone unknown to the installed data")
    elif mailing.missed:
        parts.append("missed its send time")
    parts.append(f"id {mailing.id}")
    return " · ".join(parts)


class ActionsMenu(KeptScreen[str | None]):
    """Returns the key of the chosen offer, or None when closed with Escape."""

    BINDINGS = [
        Binding("escape", "close", "Close", id="close"),
        Binding("enter", "choose", "Choose", id="choose"),
        Binding("j", "cursor_down", show=False),
        Binding("k", "cursor_up", show=False),
    ]

    # Opaque on purpose: a see-through screen makes Textual redraw the whole (dimmed) dashboard
    # behind it on every opening, 40-60 ms of a key press while sending (issue 11 item 16).
    DEFAULT_CSS = """
    ActionsMenu { align: center middle; background: $background; }
    ActionsMenu > #menu {
        width: 60; max-width: 95%; height: auto; max-height: 90%;
        border: round $accent; background: $surface; padding: 0 1;
    }
    ActionsMenu #what { color: $text-muted; height: auto; }
    ActionsMenu OptionList, ActionsMenu OptionList:focus {
        height: auto; max-height: 12; border: none; padding: 0; background: $surface;
    }
    ActionsMenu #why { height: auto; color: $warning; margin-top: 1; }
    ActionsMenu #why.-empty { display: none; }
    """

    def __init__(self, mailing: Mailing, offers: list[Offer]) -> None:
        super().__init__()
        self._start(mailing, offers)

    def _start(self, mailing: Mailing, offers: list[Offer]) -> None:
        self.mailing = mailing
        self.offers = offers
        self.opened_with = {o.key: o.label for o in offers if o.enabled}
        self.deleted = False
        self._shown_options = [(o.key, o.label) for o in offers if o.enabled]

    def open_for(self, mailing: Mailing, offers: list[Offer]) -> None:
        """Show this (already composed) menu for another opening: as a new menu would be."""
        self._start(mailing, offers)
        if not self.is_mounted:
            return
        self.query_one("#name", Label).update(_name_text(mailing))
        self.query_one("#what", Label).update(Text(describe(mailing)))
        options = self.query_one(OptionList)
        options.clear_options()
        options.add_options(self._options())
        self._show_why(withheld_text(offers))
        self._first_option()

    def compose(self) -> ComposeResult:
        with Vertical(id="menu") as menu:
            menu.border_title = "Actions"
            menu.border_subtitle = "↑↓ move · Enter choose · Esc close"
            yield Label(_name_text(self.mailing), id="name")
            yield Label(Text(describe(self.mailing)), id="what")
            yield OptionList(*self._options(), id="offers")
            why = withheld_text(self.offers)
            yield Static(why, id="why", classes="" if why else "-empty")
        yield SteadyFooter()

    def _options(self) -> list[Option]:
        return [Option(offer_prompt(o), id=o.key) for o in self.offers if o.enabled]

    def follow(self, mailing: Mailing | None, offers: list[Offer]) -> None:
        """Show what can be done to the mailing now (None: it was deleted meanwhile)."""
        if mailing is None:
            if not self.deleted:
                self.deleted = True
                self.offers = []
                self.query_one(OptionList).clear_options()
                self._show_why(Text("This mailing was deleted meanwhile: nothing can be done to it.", style="bold"))
            return
        if mailing == self.mailing and offers == self.offers:
            return
        self.mailing, self.offers = mailing, offers
        self.query_one("#what", Label).update(Text(describe(mailing)))
        self._replace_options()
        why = self._gone_text()
        withheld = withheld_text(offers)
        if why and withheld:
            why.append("\n")
        self._show_why(why + withheld)

    def _replace_options(self) -> None:
        options = self.query_one(OptionList)
        wanted = [o.key for o in self.offers if o.enabled]
        if [(o.key, o.label) for o in self.offers if o.enabled] == self._shown_options:
            return
        self._shown_options = [(o.key, o.label) for o in self.offers if o.enabled]
        highlighted = options.highlighted_option.id if options.highlighted_option is not None else None
        options.clear_options()
        options.add_options(self._options())
        if options.option_count:
            # Stay on the entry the operator was on; if it went, on the first.
            options.highlighted = wanted.index(highlighted) if highlighted in wanted else 0

    def _gone_text(self) -> Text:
        text = Text()
        enabled = {o.key for o in self.offers if o.enabled}
        withheld = {o.key for o in self.offers if not o.enabled}  # these say why themselves
        for key, label in self.opened_with.items():
            if key in enabled or key in withheld:
                continue
            if text:
                text.append("\n")
            text.append(f"{label} is no longer offered: ", style="bold")
            text.append(gone_reason(key, self.mailing) + ".")
        return text

    def _show_why(self, text: Text) -> None:
        why = self.query_one("#why", Static)
        why.update(text)
        why.set_class(not text, "-empty")

    def on_mount(self) -> None:
        self._first_option()

    def _first_option(self) -> None:
        options = self.query_one(OptionList)
        options.highlighted = 0 if options.option_count else None
        options.scroll_home(animate=False, immediate=True)
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id)

    def action_choose(self) -> None:
        self.query_one(OptionList).action_select()

    def action_close(self) -> None:
        self.dismiss(None)

    def action_cursor_down(self) -> None:
        self.query_one(OptionList).action_cursor_down()

    def action_cursor_up(self) -> None:
        self.query_one(OptionList).action_cursor_up()
