"""The garbage collector's pauses, kept off the keys (issue 11 item 16).

Python's cyclic collector runs whenever allocations pass a threshold, wherever the program is.
With the sender at full speed in the same process that is many times a second, and its passes
held the event loop up to 29 ms (young generation), 62 ms (middle) and 175 ms (full) in
`tests/bench/bench_dashboard.py --stalls 10` on a loaded machine: as long as a key may take,
and at any moment, so a key often waited behind one. While the dashboard runs, the automatic
collector is off and the dashboard collects at its refresh, which runs in the gaps between keys
(refresh.KeysFirst): the young generations at every refresh (a few times a second), everything
every `full_every` seconds. Memory that reference counting frees (most of it) is freed at once
as ever; only garbage in reference cycles waits, for less than a second (young) or `full_every`.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

FULL_EVERY = 30.0  # seconds between full collections while the dashboard runs


@dataclass(slots=True)
class Collector:
    """Owns the process's automatic collection while the dashboard runs; gives it back after."""

    full_every: float = FULL_EVERY
    collections: int = 0  # for tests: how many collections the dashboard made
    _was_enabled: bool | None = None  # None: not taken over
    _full_at: float = 0.0

    @property
    def active(self) -> bool:
        return self._was_enabled is not None

    def take_over(self, now: float) -> None:
        if self._was_enabled is None:
            self._was_enabled = gc.isenabled()
            gc.disable()
            self._full_at = now + self.full_every

    def give_back(self) -> None:
        if self._was_enabled is not None:
            if self._was_enabled:
                gc.enable()
            self._was_enabled = None

    def collect(self, now: float) -> None:
        """One collection, at a moment the dashboard chose (no key is waiting)."""
        if self._was_enabled is None:
            return
        if now >= self._full_at:
            self._full_at = now + self.full_every
            gc.collect(2)
        else:
            gc.collect(1)
        self.collections += 1
