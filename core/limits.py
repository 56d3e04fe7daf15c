"""Live sending limits: changed while a mailing sends, kept in the database, applied within a second.

The settings table holds the operator's latest values with the time each changed; whatever
is not set there comes from the configuration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from .config import Settings
from .errors import UserError
from .store import Store

# name -> (kind, smallest allowed value)
LIMITS: dict[str, tuple[type, float]] = {
    "rate": (float, 0),  # messages per second, 0 = unlimited
    "rate_per_hour": (float, 0),  # messages per hour, 0 = unlimited
    "connections": (int, 1),
    "messages_per_connection": (int, 0),  # 0 = never reconnect on purpose
}


@dataclass(frozen=True, slots=True)
class Limits:
    rate: float
    rate_per_hour: float
    connections: int
    messages_per_connection: int
    changed_at: dict[str, datetime]  # only limits the operator changed live

    def describe(self) -> list[str]:
        lines = []
        for name in LIMITS:
            value = getattr(self, name)
            when = self.changed_at.get(name)
            shown = "unlimited" if value == 0 and name.startswith("rate") else f"{value:g}"
            lines.append(f"{name}: {shown}" + (f" (changed {when:%Y-%m-%d %H:%M:%S} UTC)" if when else " (from configuration)"))
        return lines


def parse_limit(name: str, raw: str | float) -> float | int:
    kind, smallest = LIMITS[name]
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise UserError(f"--{name.replace('_', '-')}: '{raw}' is not a number") from None
    if not math.isfinite(value):
        raise UserError(f"--{name.replace('_', '-')}: '{raw}' is not a finite number")
    if value < smallest:
        raise UserError(f"--{name.replace('_', '-')}: must be at least {smallest:g}")
    return value


async def read_limits(store: Store, settings: Settings) -> Limits:
    stored = await store.get_settings()
    values: dict[str, float | int] = {
        "rate": settings.rate,
        "rate_per_hour": 0.0,
        "connections": settings.connections,
        "messages_per_connection": settings.messages_per_connection,
    }
    changed: dict[str, datetime] = {}
    for name in LIMITS:
        if f"limit.{name}" in stored:
            raw, when = stored[f"limit.{name}"]
            values[name] = parse_limit(name, raw)
            changed[name] = when
    return Limits(changed_at=changed, **values)  # type: ignore[arg-type]


async def set_limits(store: Store, changes: dict[str, str | float | int]) -> None:
    checked = {f"limit.{name}": str(parse_limit(name, raw)) for name, raw in changes.items()}
    if checked:
        await store.put_settings(checked)
