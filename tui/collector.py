"""The garbage collector's pauses, kept off the keys (issue 11 item 16).

Python's cyclic collector runs whenever allocations pass a threshold, wherever the program is.
With the sender at full speed in the same process that is many times a second, and its passes
held the event loop up to 29 ms (young generation), 62 ms (middle) and 175 ms (full) in
`tests/bench/bench_dashboard.py --stalls 10` on a loaded machine: as long as a key may take,
and at any moment, so a key often waited behind one. While the dashboard runs, only the
youngest generation is collected automatically (its passes cover the few hundred objects made
since the last one: 0.1-0.2 ms each). The middle generation is collected at the dashboard's
refresh, which runs in the gaps between keys (refresh.KeysFirst), a few times a second: 3-6 ms,
where collecting the youngest there as well (the automatic collector wholly off) took 19-31 ms
at 1,000 msg/s, the objects of a quarter second of sending. Everything is collected every
`full_every` seconds. Memory that reference counting frees (most of it) is freed at once
as ever; only garbage in reference cycles waits, for less than a second (young) or `full_every`.

A full pass costs far more than a young one (45 ms of CPU after 30 s at full sending speed,
`tests/bench/bench_dashboard.py`, against 10-15 ms), more than a key may take on its own. So it
waits for a pause in the operator's typing (`key_pause` seconds without a key): keys come in
bursts, and a burst is where a 45 ms pause would be felt. A burst that never ends does not put it
off for ever: past `full_every + max_delay` it runs at the next refresh whatever the keys do.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

FULL_EVERY = 30.0  # seconds between full collections while the dashboard runs
KEY_PAUSE = 2.0  # seconds without a key before a due full collection may run
MAX_DELAY = 300.0  # seconds a due full collection may wait for such a pause
YOUNG_THRESHOLD = 700  # Python's default for the youngest generation
NEVER = 2**30  # a threshold no count reaches


@dataclass(slots=True)
class Collector:
    """Owns the process's automatic collection while the dashboard runs; gives it back after."""

    full_every: float = FULL_EVERY
    key_pause: float = KEY_PAUSE
    max_delay: float = MAX_DELAY
    collections: int = 0  # for tests: how many collections the dashboard made
    full_collections: int = 0  # for tests: how many of them were full
    _was_enabled: bool | None = None  # None: not taken over
    _thresholds: tuple[int, ...] = ()
    _full_at: float = 0.0
    _key_at: float = float("-inf")

    @property
    def active(self) -> bool:
        return self._was_enabled is not None

    def take_over(self, now: float) -> None:
        if self._was_enabled is None:
            self._was_enabled = gc.isenabled()
            self._thresholds = gc.get_threshold()
            # The youngest generation stays automatic (passes of well under a millisecond, over
            # the few hundred objects made since the last); the older ones, whose passes are
            # long, are collected only when the dashboard chooses (never automatically: their
            # thresholds are out of reach).
            gc.set_threshold(YOUNG_THRESHOLD, NEVER, NEVER)
            gc.enable()
            self._full_at = now + self.full_every

    def give_back(self) -> None:
        if self._was_enabled is not None:
            gc.set_threshold(*self._thresholds)
            if not self._was_enabled:
                gc.disable()
            self._was_enabled = None

    def key(self, now: float) -> None:
        """A key arrived (the dashboard tells every one): a full pass due now waits for a pause."""
        self._key_at = now

    def full_pass_due(self, now: float) -> bool:
        """A full pass is due and the keys allow it: paused long enough, or waited too long."""
        if now < self._full_at:
            return False
        return now - self._key_at >= self.key_pause or now >= self._full_at + self.max_delay

    def collect(self, now: float) -> None:
        """One collection, at a moment the dashboard chose (no key is waiting)."""
        if self._was_enabled is None:
            return
        if self.full_pass_due(now):
            self._full_at = now + self.full_every
            gc.collect(2)
            self.full_collections += 1
        else:
            gc.collect(1)
        self.collections += 1
