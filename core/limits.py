"""Live sending limits: changed while a mailing sends, kept in the database, applied within a second.

The settings table holds the operator's latest values with the time each changed; whatever
is not set there comes from the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from .config import BOUNDS, Bound, Settings, flag_name, parse_number
from .errors import UserError
from .store import Store

# The limits that change live, with their bounds: the same rows of config.BOUNDS that every other
# source of these values is checked against. The dashboard's dialog uses this table and parse_limit.
LIMIT_BOUNDS: dict[str, Bound] = {
    name: BOUNDS[name] for name in ("rate", "rate_per_hour", "connections", "messages_per_connection")
}
# name -> (kind, smallest allowed value); kept for callers that only need the kind.
LIMITS: dict[str, tuple[type, float]] = {name: (bound.kind, bound.low) for name, bound in LIMIT_BOUNDS.items()}


@dataclass(frozen=True, slots=True)
class Limits:
    rate: float
    rate_per_hour: float
    connections: int
    messages_per_connection: int
    changed_at: dict[str, datetime]  # only limits the operator changed live
    # Stored values that are out of bounds (an older version wrote them, or someone edited the
    # database): ignored in favour of the configuration, and said here.
    ignored: tuple[str, ...] = field(default=())

    def describe(self) -> list[str]:
        lines = []
        for name in LIMITS:
            value = getattr(self, name)
            when = self.changed_at.get(name)
            shown = "unlimited" if value == 0 and name.startswith("rate") else f"{value:g}"
            lines.append(f"{name}: {shown}" + (f" (changed {when:%Y-%m-%d %H:%M:%S} UTC)" if when else " (from configuration)"))
        return lines + [f"warning: {problem}" for problem in self.ignored]


def parse_limit(name: str, raw: object, source: str | None = None) -> float | int:
    """The value of live limit `name` from `raw`, checked against LIMIT_BOUNDS; errors start with
    `source` (by default the `mailtower limits` flag, e.g. "--connections")."""
    if name not in LIMIT_BOUNDS:
        raise UserError(f"{source or flag_name(name)}: '{name}' is not a sending limit")
    return parse_number(name, raw, source or flag_name(name))


def configured_limits(settings: Settings) -> dict[str, float | int]:
    return {
        "rate": settings.rate,
        "rate_per_hour": 0.0,
        "connections": settings.connections,
        "messages_per_connection": settings.messages_per_connection,
    }


async def read_limits(store: Store, settings: Settings) -> Limits:
    """The live limits: the operator's stored values, else the configuration's. A stored value out
    of bounds never stops the sender; it is ignored and reported in `Limits.ignored`."""
    stored = await store.get_settings()
    values = configured_limits(settings)
    changed: dict[str, datetime] = {}
    ignored: list[str] = []
    for name in LIMITS:
        if f"limit.{name}" not in stored:
            continue
        raw, when = stored[f"limit.{name}"]
        try:
            values[name] = parse_limit(name, raw, f"stored limit {name}")
        except UserError as exc:
            ignored.append(f"{exc}; using the configured {values[name]:g}")
            continue
        changed[name] = when
    return Limits(changed_at=changed, ignored=tuple(ignored), **values)  # type: ignore[arg-type]


async def set_limits(store: Store, changes: dict[str, str | float | int]) -> None:
    checked = {f"limit.{name}": str(parse_limit(name, raw)) for name, raw in changes.items()}
    if checked:
        await store.put_settings(checked)
