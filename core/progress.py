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

from .domain import Mailing


class SenderState(str, enum.Enum):
    IDLE = "idle"
    SENDING = "sending"
    WAITING = "waiting"  # for the SMTP server (reason says why)
    MONITORING = "monitoring"  # another process holds the lease
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class MailingProgress:
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
    result: dict[int, datetime | None] = {}
    for mailing in current:
        ahead += mailing.remaining
        result[mailing.id] = estimate_finish(ahead, rate, now)
    return result


def bumped(snapshot: SenderSnapshot, **changes: object) -> SenderSnapshot:
    return replace(snapshot, version=snapshot.version + 1, **changes)  # type: ignore[arg-type]
