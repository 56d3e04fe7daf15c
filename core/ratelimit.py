"""Pacing of messages: a per-second rate that halves under throttling and recovers, and an hourly budget.

Nothing here reserves a slot in the future: every wait is at most PACING_STEP long and is
computed again from the limits of that moment, so a changed limit applies at once (a rate of
0.001 followed by "unlimited" does not leave anyone asleep for 1,000 s) and a stop is noticed
within PACING_STEP.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

PACING_STEP = 0.25  # seconds: the longest single wait before the limits are looked at again
CATCH_UP = 0.05  # seconds of lateness a rate may make up for (a short burst, never a long one)
HOUR = 3600.0


class Clock(Protocol):
    """Where the limiter reads time and waits; tests pass one that does both in virtual time."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class RateLimiter:
    """Spaces messages to a rate; halves it after a throttling reply and recovers gradually
    (a quarter more every RECOVERY_SECONDS) back to the configured rate. The hourly budget
    is a sliding window: at most `per_hour` messages in any 3600 s, whatever the concurrency."""

    RECOVERY_SECONDS = 5.0

    def __init__(self, rate: float, floor: float = 10.0, clock: Clock | None = None, step: float = PACING_STEP) -> None:
        self.clock: Clock = clock or MonotonicClock()
        self.step = step  # the longest single wait
        self.configured = rate
        self.floor = floor  # with no configured rate, throttling starts from at least this
        self.factor = 1.0
        self._base = 0.0
        self._changed_at = 0.0
        self._anchor: float | None = None  # the scheduled time of the last message let through
        self.per_hour = 0.0
        # Messages let through while a budget is set, counted per whole second of the clock:
        # bounded by the window's seconds however many messages go out.
        self._window: deque[list[float]] = deque()
        self._window_count = 0
        # Fleet (core/fleet.py): the part of the budget this limiter leaves to other senders,
        # counted against it as if sent here (set_elsewhere).
        self.elsewhere = 0

    # ---- per-second rate ----------------------------------------------------------------

    def throttle(self, measured: float) -> None:
        """A throttling reply came; `measured` is the rate actually achieved (the base to halve
        when no rate is configured)."""
        now = self.clock.now()
        if self.factor < 1.0 and now - self._changed_at < 1.0:
            return  # one burst of throttling replies counts once
        if self.factor == 1.0:
            self._base = self.configured or max(measured, self.floor)
        self.factor = max(self.factor / 2, 0.05)
        self._changed_at = now

    def _effective(self, now: float) -> float:
        if self.factor < 1.0 and now - self._changed_at > self.RECOVERY_SECONDS:
            self.factor = min(1.0, self.factor * 1.25)
            self._changed_at = now
        if self.factor < 1.0:
            return (self.configured or self._base) * self.factor
        return self.configured

    def _rate_ready_at(self, now: float) -> float:
        """When the next message may go at the rate of this moment (not of when the last one went)."""
        rate = self._effective(now)
        if rate <= 0 or not math.isfinite(rate) or self._anchor is None:
            return now
        return self._anchor + 1.0 / rate

    # ---- hourly budget ------------------------------------------------------------------

    def set_per_hour(self, per_hour: float) -> None:
        if per_hour != self.per_hour:
            self.per_hour = per_hour
            if per_hour <= 0:
                self._window.clear()
                self._window_count = 0
            # A lower budget keeps what already went out in the window: it is never exceeded.

    def set_elsewhere(self, messages: int) -> None:
        """Fleet: `messages` of the budget belong to other senders (sent, or their share of what
        is left); this limiter lets through only what remains of it."""
        self.elsewhere = max(0, int(messages))

    def sent_in_window(self) -> int:
        """Messages this limiter let through within the budget's window (0 without a budget)."""
        if self.per_hour <= 0 or not math.isfinite(self.per_hour):
            return 0
        self._budget_ready_at(self.clock.now())  # forgets what left the window
        return self._window_count

    def budget_window(self) -> tuple[float, int]:
        """(window in seconds, messages allowed in it) of the hourly budget."""
        return self._budget()

    def _budget(self) -> tuple[float, int]:
        """(window in seconds, messages allowed in it): per_hour per hour, or for less than one
        an hour, one message per 3600/per_hour seconds."""
        if self.per_hour >= 1:
            return HOUR, int(self.per_hour)
        return HOUR / self.per_hour, 1

    def _budget_ready_at(self, now: float) -> float:
        if self.per_hour <= 0 or not math.isfinite(self.per_hour):
            return now
        window, allowed = self._budget()
        # A message counted in second s is forgotten only once all of that second is out of the
        # window (s + 1 + window): conservative, so the budget holds for any exact timing.
        while self._window and self._window[0][0] + 1 + window <= now:
            self._window_count -= int(self._window.popleft()[1])
        if self._window_count + self.elsewhere < allowed:
            return now
        if not self._window:
            return now + self.step  # all of it is other senders': look again when the fleet's count is read again
        return self._window[0][0] + 1 + window

    # ---- taking a slot ------------------------------------------------------------------

    def _take(self, now: float, ready: float) -> None:
        # The anchor is the scheduled time (so a slightly late wake-up does not slow the rate
        # down), but never more than CATCH_UP behind: an idle spell is no credit for a burst.
        self._anchor = max(ready, now - CATCH_UP) if self._anchor is not None else now
        if self.per_hour > 0:
            second = float(math.floor(now))
            if self._window and self._window[-1][0] == second:
                self._window[-1][1] += 1
            else:
                self._window.append([second, 1.0])
            self._window_count += 1

    @property
    def idle(self) -> bool:
        """Nothing to pace: no rate, no hourly budget, not throttled (the common, fast case)."""
        return self.configured <= 0 and self.per_hour <= 0 and self.factor >= 1.0

    def poll(self) -> float:
        """Take a slot now if one is free (0.0), else the seconds until it is worth asking again
        (at most `step`): for callers that hold work back instead of waiting (domain pacing)."""
        now = self.clock.now()
        rate_ready = self._rate_ready_at(now)
        ready = max(rate_ready, self._budget_ready_at(now))
        if ready <= now:
            self._take(now, rate_ready)
            return 0.0
        return min(ready - now, self.step)

    def budget_used_up(self) -> bool:
        """The hourly budget allows nothing more now (for a status line)."""
        now = self.clock.now()
        return self._budget_ready_at(now) > now

    def budget_frees_in(self) -> float:
        """Seconds until the hourly budget allows another message (0.0: it does now)."""
        now = self.clock.now()
        return max(0.0, self._budget_ready_at(now) - now)

    async def acquire(self, stop: Callable[[], bool] | None = None) -> bool:
        """Wait until a message may go and count it; False (nothing counted) once `stop()` is true.

        Every pass either lets the message through or waits at most `step` and looks at
        the limits again, so the loop ends by a slot, a limit change or a stop, never by
        giving up on the budget."""
        while True:
            if stop is not None and stop():
                return False
            now = self.clock.now()
            rate_ready = self._rate_ready_at(now)
            ready = max(rate_ready, self._budget_ready_at(now))
            if ready <= now:
                self._take(now, rate_ready)
                return True
            await self.clock.sleep(min(ready - now, self.step))
