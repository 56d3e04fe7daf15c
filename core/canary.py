"""The canary: a mailing's first recipients go out slowly, then it holds before the rest.

`--canary N` or `--canary P%`: when the mailing first sends, N recipients (or P percent of its
recipients) are chosen round-robin by domain (each round takes the next recipient of every
domain, biggest domains first, so every big domain is sampled) and sent at `canary_rate`
messages per second. Once every one of them has an answer, the mailing holds for `canary_wait`
minutes, then goes on by itself unless the breaker tripped (during the canary the breaker's
window is the canary's outcomes, judged from a small minimum; see `canary_minimum`).

While it holds, the mailing stays the head of the queue: mailings after it wait (strict queue
order; move another one above it to send that one first). Every phase is stored on the mailing
(`Mailing.canary`, the sample in `canary_rows`), so a sender that restarts during the hold
resumes the hold, and one that restarts while sampling sends the rest of the sample only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from .config import Settings, parse_number, show_value
from .domain import Canary, CanaryPhase, Mailing, Section
from .errors import UserError
from .ratelimit import RateLimiter
from .store import Claimed, Store

MAX_SAMPLE = 100_000  # recipients in a canary at most (a sample, not a second mailing)
SAVE_EVERY = 0.5  # seconds between writes of the canary's progress while it sends
CANARY_FLOOR = 3  # a canary is judged from this many outcomes at least (or all of a smaller one)


def parse_size(raw: str, source: str = "--canary") -> tuple[float, bool]:
    """"50" -> (50, False): 50 recipients; "10%" -> (10, True): 10 percent of them."""
    text = raw.strip() if isinstance(raw, str) else ""
    if text.endswith("%"):
        if not text[:-1].strip() or text[:-1].strip().endswith("%"):  # "%", "5%%": no number at all
            raise UserError(f"{source}: {show_value(raw)} is not a number of recipients (N) or a percentage (P%)")
        value = parse_number("breaker_hard", text, source)  # a percent, 0..100, finite; errors quote `raw`
        if value <= 0:
            raise UserError(f"{source}: {show_value(raw)} must be more than 0 %")
        return float(value), True
    if not text.isascii() or not text.isdigit():
        raise UserError(f"{source}: {show_value(raw)} is not a number of recipients (N) or a percentage (P%)")
    count = int(text) if len(text) < 10 else MAX_SAMPLE + 1
    if not 1 <= count <= MAX_SAMPLE:
        raise UserError(f"{source}: {show_value(raw)} must be from 1 to {MAX_SAMPLE:,} recipients (or a percentage)")
    return float(count), False


def plan(size: str, rate: str | None, wait: str | None, settings: Settings) -> Canary:
    """The canary a person asked for with --canary, --canary-rate and --canary-wait (minutes)."""
    amount, is_percent = parse_size(size)
    pace = settings.canary_rate if rate is None else float(parse_number("canary_rate", rate, "--canary-rate"))
    minutes = settings.canary_wait if wait is None else float(parse_number("canary_wait", wait, "--canary-wait"))
    return Canary(size=amount, percent=is_percent, rate=pace, wait=minutes * 60.0)


def sample_size(canary: Canary, total: int) -> int:
    """How many recipients the canary samples of a mailing of `total`."""
    # MAX_SAMPLE bounds a percentage too: 100% of a million recipients at the canary's slow pace
    # would be days of "canary", and a million rows in canary_rows.
    if canary.percent:
        return min(total, MAX_SAMPLE, max(1, math.ceil(total * canary.size / 100)))
    return min(total, MAX_SAMPLE, int(canary.size))


def canary_minimum(settings: Settings, sample: int) -> int:
    """The least canary outcomes the breaker judges: a fifth of the sample, at least
    CANARY_FLOOR, at most the usual minimum (and at most the whole sample)."""
    return max(1, min(sample, max(CANARY_FLOOR, min(settings.breaker_min, sample // 5))))


def progress_text(canary: Canary) -> str:
    """"canary 37/50" (the Current panel adds when it continues)."""
    return f"canary {canary.done:,}/{canary.total:,}"


@dataclass(eq=False)
class CanaryRun:
    """The canary while one sender turn sends its sample: the pace and the answers so far."""

    mailing_id: int
    canary: Canary
    pacer: RateLimiter
    answered: int = 0
    _saved: tuple[int, float] = field(default=(0, 0.0))

    def answer(self) -> None:
        self.answered += 1

    async def claim(self, store: Store, held: set[int], want: int) -> list[Claimed]:
        """Up to `want` rows of the sample not held yet; writes the progress now and then."""
        await self.save_progress(store)
        return await store.claim_canary(self.mailing_id, held, want) if want > 0 else []

    async def save_progress(self, store: Store, force: bool = False) -> None:
        done = min(self.answered, self.canary.total)
        if done == self._saved[0] or (not force and time.monotonic() - self._saved[1] < SAVE_EVERY):
            return
        self._saved = (done, time.monotonic())
        self.canary = replace(self.canary, done=done)
        await store.put_canary(self.mailing_id, self.canary)

    async def hold(self, store: Store) -> Canary:
        """Every one of the sample has an answer: hold until the wait is over."""
        until = time.time() + self.canary.wait
        self.canary = replace(self.canary, phase=CanaryPhase.HOLDING, done=self.canary.total, until=until)
        await store.put_canary(
            self.mailing_id, self.canary,
            ("canary", f"all {self.canary.total:,} answered; holding {self.canary.wait / 60:g} min before the rest"),
        )
        return self.canary


async def begin(store: Store, mailing: Mailing, settings: Settings) -> CanaryRun | None:
    """The canary of a head mailing that is (or now starts) sending its sample; None when it
    has no canary, or its canary is holding or done."""
    canary = mailing.canary
    if canary is None or canary.phase in (CanaryPhase.HOLDING, CanaryPhase.DONE):
        return None
    if canary.phase is CanaryPhase.PLANNED:
        canary = await store.start_canary(mailing.id, canary, sample_size(canary, mailing.total))
        if canary.phase is CanaryPhase.DONE:
            return None
    answered = await store.canary_answered(mailing.id)
    run = CanaryRun(mailing.id, canary, RateLimiter(canary.rate, floor=canary.rate), answered)
    run._saved = (canary.done, 0.0)
    return run


async def sample_finished(store: Store, mailing_id: int) -> bool:
    """No one of the sample is still to be sent (each is sent, failed or deferred)."""
    return not await store.claim_canary(mailing_id, (), 1)


async def holds(store: Store, mailing: Mailing) -> bool:
    """Whether the mailing holds after its canary now; a hold that is over ends here (the
    breaker did not trip, or the mailing would be stopped, not current)."""
    canary = mailing.canary
    if canary is None or canary.phase is not CanaryPhase.HOLDING:
        return False
    if canary.until is not None and canary.until > time.time():
        return True
    await store.put_canary(mailing.id, replace(canary, phase=CanaryPhase.DONE),
                           ("canary", "passed: the hold is over, sending the rest"))
    return False


async def holding_notes(store: Store) -> list[str]:
    """What the sender waits for while current mailings hold after their canary, for its
    "nothing to send now; waiting for ..." line: `run --until-idle` waits out a hold (it is part
    of sending the mailing, like a retry), and says until when, so it never waits silently."""
    notes = []
    for mailing in await store.mailings(Section.CURRENT):
        canary = mailing.canary
        if canary is not None and canary.phase is CanaryPhase.HOLDING and canary.until is not None:
            until = datetime.fromtimestamp(canary.until, timezone.utc)
            notes.append(f'mailing {mailing.id} "{mailing.name}" holding after its canary until {until:%H:%M:%S} UTC '
                         "(mailings after it wait: strict queue order)")
    return notes
