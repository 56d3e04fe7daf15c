"""The key line at the bottom of the dashboard and its menus.

Textual's Footer composes its keys again whenever the focus moves (each move may change which
bindings are active). On the dashboard, Tab between the panels changes no key the footer shows,
yet the recompose (a dozen widgets mounted and styled) made Tab one of the slowest keys while
sending (issue 11 item 16). This footer composes again only when what it shows changed.
"""

from __future__ import annotations

from textual.screen import Screen
from textual.widgets import Footer

Shown = tuple[tuple[str, str, str, bool, str], ...]


def shown_keys(screen: Screen) -> Shown:
    """The keys a footer on `screen` shows now: key, action, description, enabled, tooltip."""
    return tuple(
        (binding.key, binding.action, binding.description, enabled, tooltip)
        for _, binding, enabled, tooltip in screen.active_bindings.values()
        if binding.show
    )


class SteadyFooter(Footer):
    """A Footer that recomposes only when the keys it shows change."""

    def __init__(self) -> None:
        super().__init__()
        self._shown: Shown | None = None

    def bindings_changed(self, screen: Screen) -> None:
        if screen.app.app_focus and self.is_attached and screen is self.screen:
            shown = shown_keys(screen)
            if shown == self._shown:
                self._bindings_ready = True
                return
            self._shown = shown
        super().bindings_changed(screen)
