"""Pacing of messages: a per-second rate that halves under throttling and recovers, and an hourly budget."""

from __future__ import annotations

import asyncio
import time


class RateLimiter:
    """Spaces messages to a rate; halves it after a throttling reply and recovers gradually
    (a quarter more every RECOVERY_SECONDS) back to the configured rate."""

    RECOVERY_SECONDS = 5.0

    def __init__(self, rate: float, floor: float = 10.0) -> None:
        self.configured = rate
        self.floor = floor  # with no configured rate, throttling starts from at least this
        self.factor = 1.0
        self._base = 0.0
        self._next = 0.0
        self._changed_at = 0.0
        self.per_hour = 0.0
        self._hour_tokens = 0.0
        self._hour_at = time.monotonic()

    def throttle(self, measured: float) -> None:
        """A throttling reply came; `measured` is the rate actually achieved (the base to halve
        when no rate is configured)."""
        now = time.monotonic()
        if self.factor < 1.0 and now - self._changed_at < 1.0:
            return  # one burst of throttling replies counts once
        if self.factor == 1.0:
            self._base = self.configured or max(measured, self.floor)
        self.factor = max(self.factor / 2, 0.05)
        self._changed_at = now

    def _effective(self) -> float:
        if self.factor < 1.0 and time.monotonic() - self._changed_at > self.RECOVERY_SECONDS:
            self.factor = min(1.0, self.factor * 1.25)
            self._changed_at = time.monotonic()
        if self.factor < 1.0:
            return (self.configured or self._base) * self.factor
        return self.configured

    def set_per_hour(self, per_hour: float) -> None:
        if per_hour != self.per_hour:
            self.per_hour = per_hour
            self._hour_tokens = min(self._hour_tokens, per_hour) if per_hour else 0.0
            self._hour_at = time.monotonic()

    def _hour_wait(self) -> float:
        """A bucket of `per_hour` messages refilled evenly over the hour; seconds until one is free."""
        if self.per_hour <= 0:
            return 0.0
        now = time.monotonic()
        self._hour_tokens = min(self.per_hour, self._hour_tokens + (now - self._hour_at) * self.per_hour / 3600)
        self._hour_at = now
        if self._hour_tokens >= 1:
            self._hour_tokens -= 1
            return 0.0
        return (1 - self._hour_tokens) * 3600 / self.per_hour

    @property
    def idle(self) -> bool:
        """Nothing to pace: no rate, no hourly budget, not throttled (the common, fast case)."""
        return self.configured <= 0 and self.per_hour <= 0 and self.factor >= 1.0

    async def acquire(self) -> None:
        # Bounded: each pass either takes a token or sleeps until one is due.
        for _ in range(1000):
            wait = self._hour_wait()
            if wait <= 0:
                break
            await asyncio.sleep(min(wait, 1.0))
        rate = self._effective()
        if rate <= 0:
            return
        now = time.monotonic()
        slot = max(self._next, now)
        self._next = slot + 1.0 / rate
        if slot > now:
            await asyncio.sleep(slot - now)
