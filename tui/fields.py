"""The one text field every dialog and filter uses: an Input that keeps out what a terminal acts on.

Textual draws an Input's value as it is: an ESC, a CSI or a direction override pasted into the
filter or a file name field reached the operator's terminal raw (a retitled window, a cleared
screen, text shown reversed). Typed keys never carry them; pasted text can. They are dropped as
they come in (core/display decides which characters those are), so the value never holds one.
"""

from __future__ import annotations

from textual.widgets import Input

from mailtower.core.display import without_unsafe


class TextField(Input):
    """An Input whose inserted and pasted text loses control characters, direction overrides
    and characters that show as nothing."""

    def replace(self, text: str, start: int, end: int) -> None:
        super().replace(without_unsafe(text), start, end)
