"""Command palette (Ctrl+P): the highlighted mailing's actions and the dashboard's own commands."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from textual.command import DiscoveryHit, Hit, Hits, Provider


@dataclass(frozen=True, slots=True)
class Command:
    title: str
    help: str
    run: Callable[[], object]


class HasCommands(Protocol):
    def palette_commands(self) -> list[Command]: ...


class DashboardCommands(Provider):
    """Asks the app for its commands each time, so they follow the highlighted mailing."""

    def _commands(self) -> list[Command]:
        app = self.app
        return app.palette_commands() if hasattr(app, "palette_commands") else []  # type: ignore[no-any-return]

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for command in self._commands():
            score = matcher.match(command.title)
            if score > 0:
                yield Hit(score, matcher.highlight(command.title), command.run, text=command.title, help=command.help)

    async def discover(self) -> Hits:
        for command in self._commands():
            yield DiscoveryHit(command.title, command.run, text=command.title, help=command.help)
