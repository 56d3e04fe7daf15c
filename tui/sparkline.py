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

from .header import HeaderInfo, header_text

SAMPLES = 300  # one a second: the last 5 minutes
# The header's words need about 105 columns when monitoring; below WIDE_FROM the sparkline takes
# only what the header can spare at 80 and 120 columns without dropping a word.
NARROW = 12  # columns of the total's sparkline: a space and 11 bars (27 s a bar)
WIDE = 20  # columns from WIDE_FROM on: a space and 19 bars (16 s a bar)
WIDE_FROM = 160  # terminal columns
PER_RELAY_WIDTH = 160  # terminal columns from which each relay of a pool gets its own sparkline
RELAY_SPARK = 10  # columns of each relay's sparkline
RELAY_LABEL = 8  # characters of a relay's name before its sparkline
RELAY_CELL = 1 + RELAY_LABEL + 1 + RELAY_SPARK  # columns per relay: space, name, space, sparkline
MIN_STRIP = 6  # columns (a space and 5 bars): narrower than that it says nothing and is hidden
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
        self._layout: tuple[tuple[str, ...], int] = ((), -1)
        self._version = -1

    def show(self, history: RateHistory, width: int, header: HeaderInfo | None = None) -> None:
        """Copy the history into the sparklines (only when it changed, or the layout did)."""
        layout = strip_layout(history, width, header)
        if layout != self._layout:
            self._rebuild(*layout)
        elif history.version == self._version:
            return
        self._version = history.version
        for spark, name in zip(self._sparks, self.shown):
            series = history.total if name == TOTAL else history.relays.get(name, deque())
            data = history.padded(series)
            if self.data.get(name) != data:
                self.data[name] = data
                spark.data = data

    def _rebuild(self, shown: tuple[str, ...], width: int) -> None:
        same_series = shown == self.shown
        self._layout = (shown, width)
        self.styles.width = width
        self.display = width > 0
        if same_series:
            return  # only the width changed
        self.shown = shown
        self.data = {}
        self.remove_children()
        self._sparks = [Sparkline([], classes="rate-total" if name == TOTAL else "rate-relay") for name in shown]
        widgets: list[Label | Sparkline] = []
        for name, spark in zip(shown, self._sparks):
            if name != TOTAL:
                label = safe(name)
                label = label if len(label) <= RELAY_LABEL else label[: RELAY_LABEL - 1] + "…"
                widgets.append(Label(label, classes="rate-relay-name", markup=False))
            widgets.append(spark)
        if widgets:
            self.mount(*widgets)


def header_fits(header: HeaderInfo | None, width: int) -> bool:
    """The header says everything it has to say (in one of its shorter forms if need be) in `width`
    cells; `header_text` cuts the line short (one cell less, ending in "…") only when it cannot."""
    return header is None or (width > 0 and header_text(header, width).cell_len == width)


def strip_layout(history: RateHistory, width: int, header: HeaderInfo | None) -> tuple[tuple[str, ...], int]:
    """Which series to draw and how many columns they take: each relay of a pool on a wide
    terminal, else the total, as wide as the header can spare without losing a word (hidden when
    it cannot spare `MIN_STRIP`, e.g. STALLED at 80 columns)."""
    relays = len(history.relays)
    if width >= PER_RELAY_WIDTH and relays > 1:
        strip = relays * RELAY_CELL
        if strip <= width // 4 and header_fits(header, width - strip):
            return tuple(history.relays), strip
    for strip in range(WIDE if width >= WIDE_FROM else NARROW, MIN_STRIP - 1, -1):
        if header_fits(header, width - strip):
            return (TOTAL,), strip
    return (), 0
