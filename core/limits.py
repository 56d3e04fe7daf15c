"""Live sending limits: changed while a mailing sends, kept in the database, applied within a second.

The settings table holds the operator's latest values with the time each changed; whatever
is not set there comes from the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from .config import BOUNDS, DEFAULT_GROUP, DOMAIN_LIMITS, Bound, Settings, flag_name, parse_number, show_value
from .display import safe
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
    """The sending limits in force: the operator's live changes over the configured values."""

    rate: float
    rate_per_hour: float
    connections: int
    messages_per_connection: int
    changed_at: dict[str, datetime]  # only limits the operator changed live
    # Stored values that are out of bounds (an older version wrote them, or someone edited the
    # database): ignored in favour of the configuration, and said here.
    ignored: tuple[str, ...] = field(default=())
    # Domain groups' live values the operator changed: group -> {connections|rate|per_hour: value}
    # (the rest of each group's limits come from its [domains.NAME] table).
    domains: dict[str, dict[str, float]] = field(default_factory=dict)

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
    domains = _stored_domain_limits(stored, settings, ignored)
    return Limits(changed_at=changed, ignored=tuple(ignored), domains=domains, **values)  # type: ignore[arg-type]


async def set_limits(store: Store, changes: dict[str, str | float | int]) -> None:
    checked = {f"limit.{name}": str(parse_limit(name, raw)) for name, raw in changes.items()}
    if checked:
        await store.put_settings(checked)


# ---- domain groups' live limits (pacing by destination, core/domains.py) -------------------------

DOMAIN_KEY = "domain."  # settings rows "domain.NAME.rate", "domain.NAME.connections", "domain.NAME.per_hour"


def group_names(settings: Settings) -> list[str]:
    """The configured groups and the default one, in configuration order."""
    names = [g.name for g in settings.domains if g.name != DEFAULT_GROUP]
    return names + [DEFAULT_GROUP]


def _stored_domain_limits(
    stored: dict[str, tuple[str, datetime]], settings: Settings, ignored: list[str]
) -> dict[str, dict[str, float]]:
    """The operator's per-group values: checked like every other source; a value out of bounds,
    or one for a group the configuration no longer has, is ignored and said."""
    known = set(group_names(settings))
    result: dict[str, dict[str, float]] = {}
    for key, (raw, _) in sorted(stored.items()):
        if not key.startswith(DOMAIN_KEY):
            continue
        group, _, name = key[len(DOMAIN_KEY):].rpartition(".")
        shown = f"stored limit {show_value(key)}"  # the database may hold anything: never raw escapes
        if name not in DOMAIN_LIMITS:
            ignored.append(f"{shown}: {show_value(name)} is not a limit of a domain group; ignored")
        elif group not in known:
            ignored.append(f"{shown}: no domain group {show_value(group)} is configured; ignored "
                           f"(`mailtower limits --domain {safe(group)} --reset` forgets it)")
        else:
            try:
                result.setdefault(group, {})[name] = parse_number(DOMAIN_LIMITS[name], raw, shown)
            except UserError as exc:
                ignored.append(f"{exc}; using the configured value")
    return result


def group_limits(settings: Settings, limits: Limits, name: str) -> dict[str, float]:
    """One group's limits now: the stored live values over its configuration's."""
    spec = next((g for g in settings.domains if g.name == name), None)
    values = {key: float(getattr(spec, key)) if spec is not None else 0.0 for key in DOMAIN_LIMITS}
    values.update(limits.domains.get(name, {}))
    values["connections"] = int(values["connections"])  # a count, as the TOML file and --connections give it
    return values


async def set_domain_limits(store: Store, settings: Settings, group: str, changes: dict[str, object],
                            source: str = "--domain", flags: dict[str, str] | None = None) -> None:
    """Store live limits of one domain group (checked against the same bounds as the TOML file);
    `changes` maps connections / rate / per_hour to the values given, `flags` names where each
    came from (default: --connections, --rate, --per-hour)."""
    names = group_names(settings)
    if group not in names:
        raise UserError(f"{source}: no domain group {show_value(group)}; the configured groups are {', '.join(names)}")
    checked = {}
    for name, raw in changes.items():
        if name not in DOMAIN_LIMITS:
            raise UserError(f"{source}: {show_value(name)} is not a limit of a domain group")
        value = parse_number(DOMAIN_LIMITS[name], raw, (flags or {}).get(name, flag_name(name)))
        checked[f"{DOMAIN_KEY}{group}.{name}"] = str(value)
    if checked:
        await store.put_settings(checked)


async def reset_domain_limits(store: Store, settings: Settings, group: str, source: str = "--domain") -> int:
    """Forget one group's live values: its [domains.NAME] table applies again. Also for a group
    the configuration no longer has, whose stored rows would otherwise be reported forever."""
    stored = await store.get_settings()
    keys = [f"{DOMAIN_KEY}{group}.{name}" for name in DOMAIN_LIMITS]
    if group not in group_names(settings) and not any(key in stored for key in keys):
        names = ", ".join(group_names(settings))
        raise UserError(f"{source}: no domain group {show_value(group)} and no stored limits of one; "
                        f"the configured groups are {names}")
    return await store.delete_settings(keys)
