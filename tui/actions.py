"""The Actions menu of one mailing: what can be done to it now, and why not, for what cannot.

The menu only chooses; the app carries the choice out (confirmations, dialogs, the store).
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Label, OptionList, Static
from textual.widgets.option_list import Option

from mailtower.core.domain import Mailing
from mailtower.core.lifecycle import Offer


def offer_prompt(offer: Offer) -> Text:
    if offer.key == "stop":
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


def describe(mailing: Mailing) -> str:
    """"Current · sending · #12": where the mailing is, and what it is doing if that says more."""
    parts = [mailing.section.value.capitalize()]
    if mailing.state.value != mailing.section.value:
        parts.append(mailing.state.value)
    if mailing.missed:
        parts.append("missed its send time")
    parts.append(f"#{mailing.id}")
    return " · ".join(parts)


class ActionsMenu(ModalScreen[str | None]):
    """Returns the key of the chosen offer, or None when closed with Escape."""

    BINDINGS = [
        Binding("escape", "close", "Close", id="close"),
        Binding("enter", "choose", "Choose", id="choose"),
        Binding("j", "cursor_down", show=False),
        Binding("k", "cursor_up", show=False),
    ]

    DEFAULT_CSS = """
    ActionsMenu { align: center middle; }
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
        self.mailing = mailing
        self.offers = offers

    def compose(self) -> ComposeResult:
        with Vertical(id="menu") as menu:
            menu.border_title = "Actions"
            menu.border_subtitle = "↑↓ move · Enter choose · Esc close"
            name = Text(" ".join(self.mailing.name.split()), style="bold")
            yield Label(name, id="name")
            yield Label(Text(describe(self.mailing)), id="what")
            yield OptionList(*[Option(offer_prompt(o), id=o.key) for o in self.offers if o.enabled], id="offers")
            why = withheld_text(self.offers)
            yield Static(why, id="why", classes="" if why else "-empty")
        yield Footer()

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        if options.option_count:
            options.highlighted = 0
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
