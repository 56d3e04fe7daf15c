"""Domain values shared by the store, the sender, the CLI and the dashboard."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class MailingState(str, enum.Enum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENDING = "sending"
    STOPPED = "stopped"
    COMPLETED = "completed"

    @property
    def section(self) -> "Section":
        return SECTION_OF[self]


class Section(str, enum.Enum):
    CURRENT = "current"
    SCHEDULED = "scheduled"
    INACTIVE = "inactive"


SECTION_OF: dict[MailingState, Section] = {
    MailingState.DRAFT: Section.INACTIVE,
    MailingState.SCHEDULED: Section.SCHEDULED,
    MailingState.QUEUED: Section.CURRENT,
    MailingState.SENDING: Section.CURRENT,
    MailingState.STOPPED: Section.INACTIVE,
    MailingState.COMPLETED: Section.INACTIVE,
}


class RecipientState(str, enum.Enum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    DEFERRED = "deferred"
    # Skipped when claimed because its address is on the suppression list (core/suppression):
    # never sent, neither remaining nor failed.
    SUPPRESSED = "suppressed"


@dataclass(frozen=True, slots=True)
class Schedule:
    """A send time as the operator gave it (wall time + IANA zone) and the UTC instant derived from it."""

    local: datetime  # naive wall time in `tz`
    tz: str
    utc: datetime  # aware, UTC
    tzdata_version: str


@dataclass(slots=True)
class Mailing:
    """One mailing as stored, with its counters (kept in the same transaction as the ledger)."""

    id: int
    name: str
    subject: str
    from_addr: str
    text_body: str | None
    html_body: str | None
    state: MailingState
    position: int | None
    schedule: Schedule | None
    missed: bool
    total: int
    sent: int
    failed: int
    deferred: int
    in_doubt: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    last_error: str | None
    parent_id: int | None = None
    rate: float = 0.0  # messages per second, as last recorded by the sender
    fields: tuple[str, ...] = ()  # merge-field columns of the recipient files
    # Suppression and unsubscribe (issue 13, items 6-7): recipients skipped as suppressed when
    # claimed, and the List-Unsubscribe targets stored with the mailing.
    suppressed: int = 0
    unsubscribe_url: str | None = None
    unsubscribe_mailto: str | None = None
    wave_group: int | None = None  # the local-time schedule (core/waves.py) this mailing is a wave of
    wave_parent: str | None = None  # that schedule's name, as the operator gave it
    # Breaker and canary (core/breaker.py, core/canary.py): this mailing's own thresholds in
    # percent (None: the global setting), why the breaker stopped it (None: it did not), since
    # when (epoch seconds) its outcomes count for the breaker, and its canary plan and progress.
    breaker_hard: float | None = None
    breaker_soft: float | None = None
    tripped: str | None = None
    breaker_since: float = 0.0
    canary: "Canary | None" = None

    @property
    def section(self) -> Section:
        return self.state.section

    @property
    def remaining(self) -> int:
        """Recipients who have not received it: pending, deferred or in doubt (anything not sent,
        failed or suppressed)."""
        return self.total - self.sent - self.failed - self.suppressed

    # The one wording of a mailing's counts, for the menu, toasts, Details, the remaining
    # screen and the CLI: "remaining" never includes the failed, so both are always said.
    def counts_text(self) -> str:
        """"8,428 remaining, 39 failed" (", 3 suppressed" when any were skipped as suppressed):
        who has not received it, split by why."""
        text = f"{self.remaining:,} remaining, {self.failed:,} failed"
        return f"{text}, {self.suppressed:,} suppressed" if self.suppressed else text


@dataclass(frozen=True, slots=True)
class Recipient:
    """One ledger row."""

    id: int
    mailing_id: int
    email: str
    name: str
    tz: str
    fields: dict[str, str]
    state: RecipientState
    attempts: int
    in_doubt: bool
    last_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None


@dataclass(frozen=True, slots=True)
class ImportedRow:
    """A validated recipient row from a CSV file, ready to be stored."""

    line: int
    email: str
    name: str = ""
    tz: str = ""
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """A CSV row that was not imported, with its 1-based line number and the reason."""

    line: int
    reason: str


# ---- breaker and canary ---------------------------------------------------------------------


class CanaryPhase(str, enum.Enum):
    PLANNED = "planned"  # not started: the sample is chosen when the mailing first sends
    SENDING = "sending"  # the sample goes out at the canary rate
    HOLDING = "holding"  # the sample is out: the mailing waits until `until`
    DONE = "done"  # passed (or had nobody to sample): the rest goes out normally


@dataclass(frozen=True, slots=True)
class Canary:
    """A mailing's canary: its first `size` recipients (or `size` percent when `percent`),
    spread over the domains, go out at `rate` messages per second; then it holds `wait` seconds."""

    size: float
    percent: bool
    rate: float
    wait: float  # seconds
    phase: CanaryPhase = CanaryPhase.PLANNED
    total: int = 0  # recipients in the sample, once chosen
    done: int = 0  # of them answered (sent, failed or deferred)
    until: float | None = None  # epoch seconds the hold ends

    def spec(self) -> str:
        """"50" or "10%", as the operator gave it."""
        size = f"{self.size:g}"
        return f"{size}%" if self.percent else size
