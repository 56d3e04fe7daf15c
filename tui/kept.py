"""Screens the app composes once and shows again (the Actions menu, the Keys screen).

Textual refreshes every style of a screen each time it is pushed, in case the app's CSS changed
while it was away; for a screen that is composed once and shown again that is most of the cost
of showing it (5-10 ms of each `a` while sending, issue 11 item 16). A `KeptScreen` refreshes
its styles when shown only if the app's CSS changed since it was mounted or last refreshed (a
new theme).
"""

from __future__ import annotations

from typing import TypeVar

from textual import events
from textual.screen import ModalScreen

ResultType = TypeVar("ResultType")


class KeptScreen(ModalScreen[ResultType]):
    """A modal screen kept by the app and shown again: its styles refreshed only when stale."""

    _styled_for: int | None = None  # the app's CSS generation this screen's styles were refreshed for

    def _on_mount(self, event: events.Mount) -> None:
        # Mounting styled every widget for the CSS of now: a first showing need not again
        # (the app composes these screens before their first key, tui/app.py _prepare_screens).
        self._styled_for = self.app._css_update_count

    def _on_screen_resume(self, event: events.ScreenResume) -> None:
        generation = self.app._css_update_count  # Textual's count of CSS changes (themes)
        if self._styled_for == generation:
            event.refresh_styles = False
        self._styled_for = generation
        # No super() call: Textual calls each class's handler along the MRO itself, this one
        # first, so Screen's own sees the event as changed here.
