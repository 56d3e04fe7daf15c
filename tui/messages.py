"""Messages the dashboard posts to itself about rare events.

The sender never talks to widgets; the refresh loop notices what changed between two reads of
the store and posts these, so a handler can tell the operator without the loop knowing how.
"""

from __future__ import annotations

from textual.message import Message

from mailtower.core.domain import Mailing, MailingState


class MailingMoved(Message):
    """A mailing changed state between two refreshes (completed, started, came due, was stopped)."""

    def __init__(self, mailing: Mailing, before: MailingState) -> None:
        super().__init__()
        self.mailing = mailing
        self.before = before


class SenderModeChanged(Message):
    """The dashboard started or stopped being the sender (lease taken over, lost or released)."""

    def __init__(self, mode: str, detail: str = "") -> None:
        super().__init__()
        self.mode = mode
        self.detail = detail
