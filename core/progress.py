"""The sender's in-memory progress snapshot, and the small meters behind it.

The sender writes these plain objects; the dashboard copies the latest snapshot a few times a
second. Nothing here touches the database or the screen.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

from .domain import CanaryPhase, Mailing, MailingState


class SenderState(str, enum.Enum):
    IDLE = "idle"
    SENDING = "sending"
    WAITING = "waiting"  # for the SMTP server (reason says why)
    MONITORING = "monitoring"  # another process holds the lease
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class MailingProgress:
    """One mailing's counters as the sender knows them now (ahead of the store by up to a write)."""

    id: int
    sent: int
    failed: int
    deferred: int
    in_doubt: int
    remaining: int
    total: int
    rate: float
    eta: datetime | None


@dataclass(frozen=True, slots=True)
class SenderSnapshot:
    """What the sender shows the dashboard: its state, rate and each current mailing's progress."""

    state: SenderState = SenderState.IDLE
    reason: str = ""
    rate: float = 0.0
    last_accept_at: float | None = None  # wall-clock seconds of the last 250 to a final dot
    head_id: int | None = None
    mailings: dict[int, MailingProgress] = field(default_factory=dict)
    relays: tuple = ()  # relays.RelayStatus of each relay, in configuration order
    version: int = 0


class RateMeter:
    """Messages per second over a sliding window of whole seconds."""

    def __init__(self, window: int = 10, clock=time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._buckets: deque[list[float]] = deque()
        self._started = clock()

    def add(self, n: int = 1) -> None:
        second = int(self.clock())
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += n
        else:
            self._buckets.append([second, n])
        self._trim(second)

    def _trim(self, second: int) -> None:
        while self._buckets and self._buckets[0][0] <= second - self.window:
            self._buckets.popleft()

    def rate(self) -> float:
        now = self.clock()
        self._trim(int(now))
        if not self._buckets:
            return 0.0
        span = min(float(self.window), max(now - self._started, 1.0))
        return sum(count for _, count in self._buckets) / span


def progress_of(mailing: Mailing, rate: float, ahead: int = 0, now: datetime | None = None) -> MailingProgress:
    """Progress of one mailing; `ahead` is how many messages the queue must send before it."""
    return MailingProgress(
        id=mailing.id,
        sent=mailing.sent,
        failed=mailing.failed,
        deferred=mailing.deferred,
        in_doubt=mailing.in_doubt,
        remaining=mailing.remaining,
        total=mailing.total,
        rate=rate,
        eta=estimate_finish(mailing.remaining + ahead, rate, now),
    )


def estimate_finish(messages: int, rate: float, now: datetime | None = None) -> datetime | None:
    if messages <= 0:
        return now or datetime.now(timezone.utc)
    if rate <= 0:
        return None
    return (now or datetime.now(timezone.utc)) + timedelta(seconds=messages / rate)


def queue_estimates(current: list[Mailing], rate: float, now: datetime | None = None) -> dict[int, datetime | None]:
    """Finish time of each current mailing in queue order: each waits for those ahead of it."""
    now = now or datetime.now(timezone.utc)
    ahead = 0
    start = now  # when the messages counted in `ahead` begin to go out
    result: dict[int, datetime | None] = {}
    for mailing in current:
        held = _canary_hold_end(mailing)
        if held is not None and held > start + timedelta(seconds=ahead / rate if rate > 0 else 0):
            # It holds after its canary, and (strict queue order) the mailings after it wait too:
            # its rest, and theirs, go out after the hold.
            start, ahead = held, 0
        ahead += mailing.remaining
        result[mailing.id] = estimate_finish(ahead, rate, start)
    return result


def _canary_hold_end(mailing: Mailing) -> datetime | None:
    """When a mailing holding after its canary goes on (core/canary.py), else None."""
    canary = mailing.canary
    if canary is None or canary.phase is not CanaryPhase.HOLDING or canary.until is None:
        return None
    return datetime.fromtimestamp(canary.until, timezone.utc)


def bumped(snapshot: SenderSnapshot, **changes: object) -> SenderSnapshot:
    return replace(snapshot, version=snapshot.version + 1, **changes)  # type: ignore[arg-type]


# ---- why a current mailing is held back -------------------------------------------------------


class HoldState(str, enum.Enum):
    PAUSED = "paused"  # a relay refuses us (login refused): nothing goes out until a resume
    WAITING = "waiting"  # the server cannot be reached: the sender tries again by itself
    THROTTLED = "throttled"  # a relay asked us to slow down: it is used again at next_try
    RETRYING = "retrying"  # only recipients waiting for their retry time are left


@dataclass(frozen=True, slots=True)
class Hold:
    """Why a current mailing is not sending now, and when it tries again (wall-clock seconds)."""

    state: HoldState
    reason: str = ""  # the full text (Details); `short` is what fits a row or the header
    since: float | None = None
    next_try: float | None = None
    count: int = 0  # RETRYING: how many recipients wait for a retry
    relays: tuple[str, ...] = ()

    @property
    def short(self) -> str:
        return short_reason(self.reason)


SHORT_REASON = 40  # characters


def short_reason(reason: str) -> str:
    """The first clause of a reason ("login refused: 535 5.7.8 ..." -> "login refused")."""
    first = reason.split(";", 1)[0].split(":", 1)[0].strip()
    return first if len(first) <= SHORT_REASON else first[: SHORT_REASON - 1] + "…"


def _epoch(iso_text: object) -> float | None:
    if not isinstance(iso_text, str):
        return None
    try:
        return datetime.fromisoformat(iso_text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def hold_of(waiting: dict[str, object], mailing: Mailing, next_retry: float | None = None) -> Hold | None:
    """Why `mailing` is held back, from the sender's `sender_waiting` document (read with
    sender_status.parse_waiting in another process, Sender.waiting_document in this one) and, when only
    deferred recipients are left, the earliest retry time (`next_retry`, wall clock)."""
    from .relays import held_back  # relays imports this module

    entries = held_back(waiting, mailing.id, mailing.state is MailingState.SENDING)
    blocked = entries["waiting"]
    if blocked is not None:
        relays = blocked.get("relays")
        return Hold(
            HoldState.PAUSED if blocked.get("state") == "paused" else HoldState.WAITING,
            str(blocked.get("reason", "")),
            _epoch(blocked.get("since")),
            _epoch(blocked.get("next_try")),
            relays=tuple(str(r) for r in relays) if isinstance(relays, list) else (),
        )
    if mailing.remaining > 0 and mailing.deferred >= mailing.remaining and next_retry is not None:
        return Hold(HoldState.RETRYING, "only recipients waiting for a retry are left", None, next_retry, mailing.deferred)
    throttled = entries["throttled"]
    if throttled is not None:
        return Hold(
            HoldState.THROTTLED,
            str(throttled.get("reason", "")),
            _epoch(throttled.get("since")),
            _epoch(throttled.get("next_try")),
            relays=(str(throttled.get("relay", "")),),
        )
    return None


# ---- the first estimates of a run ------------------------------------------------------------

SETTLE_SECONDS = 10.0  # the measured rate counts fully after this much sending


def expected_rate(stored_rate: float, limit_rate: float, limit_per_hour: float = 0.0) -> float:
    """What the rate should be before anything is measured: the mailing's rate from its last run,
    capped by the configured limits (0 = none known)."""
    candidates = [r for r in (stored_rate,) if r > 0 and r == r and r != float("inf")]
    caps = [c for c in (limit_rate, limit_per_hour / 3600.0) if c > 0 and c == c and c != float("inf")]
    if candidates:
        return min([candidates[0], *caps])
    return min(caps) if caps else 0.0


def blended_rate(measured: float, expected: float, sending_for: float, settle: float = SETTLE_SECONDS) -> float:
    """Start from `expected` and move to `measured` over the first `settle` seconds of sending,
    so the first ETA is not an hour for a job of a minute (the meter's first seconds count the
    connecting and logging in) nor a guess once real numbers exist."""
    if expected <= 0 or sending_for >= settle:
        return measured
    weight = max(sending_for, 0.0) / settle
    return weight * measured + (1 - weight) * expected


def paused_relays(waiting: dict[str, object]) -> tuple[str, ...]:
    """Names of the relays that are paused in a `sender_waiting` document (a pool may have one
    paused while the others carry on: Resume is worth offering then too)."""
    relays = waiting.get("relays")
    entries = relays if isinstance(relays, list) else []
    return tuple(str(e.get("relay", "")) for e in entries if isinstance(e, dict) and e.get("state") == "paused")
