"""The live rate over the last minutes: a one-line sparkline at the right of the header.

The app samples the rate it already shows (its sender's snapshot, or the `sender_rate` another
process writes) once a second into a bounded history, and hands the history to this widget in
the same batched refresh as the panels. With a relay pool and room (>= `PER_RELAY_WIDTH`
columns, the relays taking at most a quarter of them) there is one sparkline per relay;
otherwise one for the total.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from textual.containers import Horizontal
from textual.widgets import Label, Sparkline

from mailtower.core.display import safe

SAMPLES = 300  # one a second: the last 5 minutes
# The header's words need about 105 columns when monitoring; below WIDE_FROM the sparkline takes
# only what the header can spare at 80 and 120 columns without dropping a word.
NARROW = 12  # columns of the total's sparkline (11 bars: 27 s a bar)
WIDE = 20  # columns of the total's sparkline from WIDE_FROM on (19 bars: 16 s a bar)
WIDE_FROM = 160  # terminal columns
PER_RELAY_WIDTH = 160  # terminal columns from which each relay of a pool gets its own sparkline
RELAY_SPARK = 10  # columns of each relay's sparkline
RELAY_LABEL = 8  # characters of a relay's name before its sparkline
RELAY_CELL = RELAY_LABEL + 1 + RELAY_SPARK + 1  # columns per relay: name, space, sparkline, space
TOTAL = "total"


def clean_rate(value: float) -> float:
    """A rate fit to draw: NaN, infinities and negatives (a corrupt meta value) are 0."""
    return value if math.isfinite(value) and value > 0 else 0.0


@dataclass
class RateHistory:
    """The last `size` once-a-second samples of the total rate and of each relay's."""

    size: int = SAMPLES
    total: deque[float] = field(default_factory=deque)
    relays: dict[str, deque[float]] = field(default_factory=dict)
    version: int = 0  # bumped by every sample, so the widget redraws only when asked to

    def __post_init__(self) -> None:
        self.total = deque(self.total, maxlen=self.size)

    def sample(self, rate: float, relays: Iterable[tuple[str, float]] = ()) -> None:
        self.total.append(clean_rate(rate))
        seen: set[str] = set()
        for name, relay_rate in relays:
            seen.add(name)
            series = self.relays.get(name)
            if series is None:
                # A relay that joins later has no past: zeros, so all series share one time axis.
                series = self.relays[name] = deque([0.0] * (len(self.total) - 1), maxlen=self.size)
            series.append(clean_rate(relay_rate))
        for gone in set(self.relays) - seen:
            del self.relays[gone]  # the pool was reconfigured (or the sender stopped)
        self.version += 1

    def padded(self, series: deque[float]) -> list[float]:
        """The series on a fixed 5-minute axis: zeros before the first sample, and a leading 0 so
        the bars are measured from zero (the built-in sparkline scales from the minimum)."""
        return [0.0] * (self.size - len(series) + 1) + list(series)


class RateSparklines(Horizontal):
    """One line: the total's sparkline, or each relay's name and sparkline when there is room."""

    def __init__(self) -> None:
        super().__init__(id="rate")
        self.tooltip = "messages per second, the last 5 minutes (one bar is the highest rate in its span)"
        self.shown: tuple[str, ...] = ()  # the series on screen: ("total",) or relay names
        self.data: dict[str, list[float]] = {}  # what each sparkline was last given (tests read it)
        self._sparks: list[Sparkline] = []
        self._version = -1

    def wanted(self, history: RateHistory, width: int) -> tuple[str, ...]:
        """Each relay of a pool if the terminal is wide and they take at most a quarter of it."""
        relays = len(history.relays)
        if width >= PER_RELAY_WIDTH and relays > 1 and relays * RELAY_CELL <= width // 4:
            return tuple(history.relays)
        return (TOTAL,)

    def show(self, history: RateHistory, width: int) -> None:
        """Copy the history into the sparklines (only when it changed, or the layout did)."""
        wanted = self.wanted(history, width)
        if wanted != self.shown:
            self._rebuild(wanted, width)
        elif history.version == self._version:
            return
        self._version = history.version
        for i, name in enumerate(self.shown):
            series = history.total if name == TOTAL else history.relays.get(name, deque())
            data = history.padded(series)
            if self.data.get(name) != data:
                self.data[name] = data
                self._sparks[i].data = data

    def _rebuild(self, wanted: tuple[str, ...], width: int) -> None:
        self.shown = wanted
        self.data = {}
        self.remove_children()
        if wanted == (TOTAL,):
            self.styles.width = WIDE if width >= WIDE_FROM else NARROW
            self._sparks = [Sparkline([], classes="rate-total")]
            self.mount(*self._sparks)
            return
        self.styles.width = len(wanted) * RELAY_CELL
        self._sparks = []
        widgets: list[Label | Sparkline] = []
        for name in wanted:
            label = safe(name)
            label = label if len(label) <= RELAY_LABEL else label[: RELAY_LABEL - 1] + "…"
            spark = Sparkline([], classes="rate-relay")
            self._sparks.append(spark)
            widgets += [Label(label, classes="rate-relay-name", markup=False), spark]
        self.mount(*widgets)
