"""Command palette (Ctrl+P): every action on every mailing, and the dashboard's own commands.

"restart spring" finds "Restart 'Spring sale' (id 4)" whichever row is highlighted. The entries
are the Actions menu's own offers (`mailing_offers`, which the menu uses too), and choosing one
runs the menu's code path with its confirmations. With 10,000 mailings there are some 50,000
entries: they are built once per change of the sections, matched with plain substring tests
(not the fuzzy matcher, whose cost grows with every way the letters can be placed), the event
loop gets a turn every few hundred entries so typing is never held up, and at most `MAX_HITS`
hits are shown.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from textual.content import Content
from textual.style import Style
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.markup import escape

from mailtower.core.display import one_line
from mailtower.core.domain import Mailing, MailingState, Section
from mailtower.core.actions_registry import Offer, offers

from .actions import describe

MAX_HITS = 50  # what a person reads; more only costs time to sort and draw
YIELD_EVERY = 100  # mailings indexed and matched between two turns of the event loop
MAX_NAME = 60  # characters of a name shown in a hit (names can be long)


@dataclass(frozen=True, slots=True)
class Command:
    title: str
    help: str
    run: Callable[[], object]


@dataclass(frozen=True, slots=True)
class MailingCommand:
    """One (action, mailing) entry of the palette."""

    title: str  # "Restart 'Spring sale' (id 4)", terminal-safe, shown as plain text
    folded: str  # title.casefold(), what a query is matched against
    help: str
    key: str  # the Offer's key
    mailing_id: int
    enabled: bool
    reason: str  # why not, when not enabled


class HasCommands(Protocol):
    sections: dict[Section, list[Mailing]]

    def palette_commands(self) -> list[Command]: ...

    def highlighted(self) -> Mailing | None: ...

    def palette_run(self, entry: MailingCommand) -> None: ...

    def offers_for(self, mailing: Mailing) -> list[Offer]: ...

    def situational_offers_now(self) -> Callable[[Mailing], list[Offer]]: ...


def mailing_offers(mailing: Mailing, place: int | None, queue_length: int, *, any_sending: bool) -> list[Offer]:
    """The Actions menu of `mailing` (at `place` in a queue of `queue_length`, None if not queued):
    the one list of what may be done to it, for the menu and the palette alike."""
    return offers(mailing, any_sending=any_sending, place=place, queue_length=queue_length)


def action_name(offer: Offer) -> str:
    """"Restart" for "Restart (150 remaining)": the count goes to the help line."""
    return offer.label.split(" (", 1)[0]


def shown_name(mailing: Mailing) -> str:
    name = one_line(mailing.name)
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 1] + "…"


def commands_of(mailing: Mailing, menu: list[Offer]) -> list[MailingCommand]:
    """The palette entries of one mailing: one per offer of its Actions menu (`menu`)."""
    name = shown_name(mailing)
    where = describe(mailing)
    entries = []
    for offer in menu:
        action = action_name(offer)
        title = f"{action} '{name}' (id {mailing.id})" + ("" if offer.enabled else " (not available)")
        detail = where if offer.label == action else f"{offer.label} · {where}"
        entries.append(
            MailingCommand(
                title, title.casefold(), detail if offer.enabled else offer.reason,
                offer.key, mailing.id, offer.enabled, offer.reason,
            )
        )
    return entries


class PaletteIndex:
    """Every mailing's entries, built as they are first needed and kept while the mailing (the
    object the app read) and its place in the queue stay the same."""

    def __init__(self) -> None:
        self._kept: dict[int, tuple[Mailing, tuple[int | None, int, bool], list[MailingCommand]]] = {}

    async def scan(
        self,
        sections: Mapping[Section, list[Mailing]],
        situational: Callable[[Mailing], list[Offer]] = lambda mailing: [],
    ) -> AsyncIterator[MailingCommand]:
        """Every entry of every section in panel order; the event loop gets a turn every
        `YIELD_EVERY` mailings, so a long scan never holds up the keyboard.

        `situational` gives the offers that depend on the sender rather than on the mailing
        (Resume while a relay is paused); they are asked for the Current section only, never cached."""
        current = sections.get(Section.CURRENT, [])
        places = {m.id: i for i, m in enumerate(current)}
        any_sending = any(m.state is MailingState.SENDING for m in current)
        kept, seen = self._kept, set[int]()
        n = 0
        for section in Section:
            for mailing in sections.get(section, []):
                n += 1
                if n % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # a key typed meanwhile cancels the search here
                where = (places.get(mailing.id), len(current), any_sending)
                cached = kept.get(mailing.id)
                if cached is not None and cached[0] is mailing and cached[1] == where:
                    entries = cached[2]
                else:
                    entries = commands_of(mailing, mailing_offers(mailing, *where[:2], any_sending=any_sending))
                    kept[mailing.id] = (mailing, where, entries)  # kept even if this scan is cancelled
                seen.add(mailing.id)
                if section is Section.CURRENT:
                    for entry in commands_of(mailing, situational(mailing)):
                        yield entry
                for entry in entries:
                    yield entry
        for gone in kept.keys() - seen:  # a complete scan: mailings deleted since are forgotten
            del kept[gone]


def match_words(words: list[str], folded: str) -> list[tuple[int, int]] | None:
    """Where each query word occurs in `folded` (in any order), or None if one does not."""
    spans = []
    for word in words:
        at = folded.find(word)
        if at < 0:
            return None
        spans.append((at, at + len(word)))
    return spans


def score_of(spans: list[tuple[int, int]], folded: str) -> float:
    """Higher for words found at word starts, in the order typed, early in the title; in (0, 1]."""
    score = 1.0
    for at, _ in spans:
        if at > 0 and folded[at - 1].isalnum():
            score -= 0.1  # inside a word
    if any(b[0] < a[0] for a, b in zip(spans, spans[1:])):
        score -= 0.1
    score -= min(spans[0][0], 40) / 400
    return max(score, 0.05)


def highlighted(title: str, spans: Iterable[tuple[int, int]], style: Style | None) -> Content:
    """`title` as plain text (never markup: the palette parses str prompts and help as markup)
    with the matched spans styled."""
    content = Content(title)
    for start, end in spans:
        content = content.stylize(style or Style(reverse=True), start, end)
    return content


class DashboardCommands(Provider):
    """The dashboard's commands and, for each mailing of each section, the actions of its menu."""

    def __init__(self, screen, match_style: Style | None = None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(screen, match_style)
        self._index = PaletteIndex()

    def _commands(self) -> list[Command]:
        app = self.app
        return app.palette_commands() if hasattr(app, "palette_commands") else []  # type: ignore[no-any-return]

    async def startup(self) -> None:
        # Build the index while the palette opens, so the first key typed finds it ready.
        async for _ in self._scan():
            pass

    def _scan(self) -> AsyncIterator[MailingCommand]:
        now = getattr(self.app, "situational_offers_now", None)
        situational = now() if now is not None else (lambda mailing: [])
        return self._index.scan(getattr(self.app, "sections", None) or {}, situational)

    def _run(self, entry: MailingCommand) -> Callable[[], object]:
        app = self.app

        def run() -> object:
            return app.palette_run(entry)  # type: ignore[attr-defined]

        return run

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for command in self._commands():
            score, offsets = matcher.fuzzy_search.match(query, command.title)
            if score > 0:
                prompt = highlighted(command.title, [(o, o + 1) for o in offsets], self.match_style)
                yield Hit(score, prompt, command.run, text=command.title, help=escape(command.help))
        words = query.casefold().split()
        if not words:
            return
        found: list[tuple[float, MailingCommand, list[tuple[int, int]]]] = []
        worst = 0.0
        async for entry in self._scan():
            spans = match_words(words, entry.folded)
            if spans is None:
                continue
            score = score_of(spans, entry.folded)
            if len(found) >= MAX_HITS and score <= worst:
                continue
            found.append((score, entry, spans))
            if len(found) > 2 * MAX_HITS:  # keep the best, in bounded memory
                found.sort(key=lambda hit: -hit[0])
                del found[MAX_HITS:]
                worst = found[-1][0]
        found.sort(key=lambda hit: -hit[0])
        for score, entry, spans in found[:MAX_HITS]:
            # Case folding can change a title's length ("ß" is "ss"): then no marks rather than wrong ones.
            marks = spans if len(entry.folded) == len(entry.title) else []
            prompt = highlighted(entry.title, marks, self.match_style)
            yield Hit(score, prompt, self._run(entry), text=entry.title, help=escape(entry.help))

    async def discover(self) -> Hits:
        # Before anything is typed: the highlighted mailing's actions, then the dashboard's commands.
        app = self.app
        mailing = app.highlighted() if hasattr(app, "highlighted") else None  # type: ignore[attr-defined]
        if mailing is not None:
            for entry in commands_of(mailing, app.offers_for(mailing)):  # type: ignore[attr-defined]
                yield DiscoveryHit(Content(entry.title), self._run(entry), text=entry.title, help=escape(entry.help))
        for command in self._commands():
            yield DiscoveryHit(Content(command.title), command.run, text=command.title, help=escape(command.help))
