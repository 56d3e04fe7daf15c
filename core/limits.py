"""Live sending limits: changed while a mailing sends, kept in the database, applied within a second.

The settings table holds the operator's latest values with the time each changed; whatever
is not set there comes from the configuration. A limit given explicitly when the sender starts
(a flag, a variable, the TOML file; Settings.limit_sources) and a stored one that differs are
never settled silently: the more careful of the two applies (the lower rate, the fewer
connections), and a warning names both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from .config import (BOUNDS, DEFAULT_GROUP, DOMAIN_LIMITS, LIVE_LIMITS, Bound, Settings, flag_name, parse_number,
                     show_value)
from .display import safe
from .errors import UserError
from .store import Store

# The limits that change live, with their bounds: the same rows of config.BOUNDS that every other
# source of these values is checked against. The dashboard's dialog uses this table and parse_limit.
LIMIT_BOUNDS: dict[str, Bound] = {name: BOUNDS[name] for name in LIVE_LIMITS}
# name -> (kind, smallest allowed value); kept for callers that only need the kind.
LIMITS: dict[str, tuple[type, float]] = {name: (bound.kind, bound.low) for name, bound in LIMIT_BOUNDS.items()}


@dataclass(frozen=True, slots=True)
class Limits:
    """The sending limits in force: the operator's live changes over the configured values."""

    rate: float
    rate_per_hour: float
    connections: int
    messages_per_connection: int
    # Only limits whose stored live value is in force; None: its time is unknown (a hand-edited row).
    changed_at: dict[str, datetime | None]
    # What the operator must be told (the sender logs each as a warning): stored values that are
    # out of bounds (an older version wrote them, or someone edited the database), ignored in
    # favour of the configuration; and stored values that differ from one given explicitly.
    ignored: tuple[str, ...] = field(default=())
    # Domain groups' live values the operator changed: group -> {connections|rate|per_hour: value}
    # (the rest of each group's limits come from its [domains.NAME] table).
    domains: dict[str, dict[str, float]] = field(default_factory=dict)
    # The source of each configured value in force that was given explicitly ("--rate").
    given: dict[str, str] = field(default_factory=dict)

    def describe(self) -> list[str]:
        lines = [f"{name}: {limit_text(name, getattr(self, name))} ({self._origin(name)})" for name in LIMITS]
        return lines + [f"warning: {problem}" for problem in self.ignored]

    def _origin(self, name: str) -> str:
        if name in self.changed_at:
            when = self.changed_at[name]
            return changed_text(when) if when is not None else f"stored, {changed_text(when)}"
        return f"from {self.given[name]}" if name in self.given else "from configuration"


def limit_text(name: str, value: float) -> str:
    """A limit's value as the lines show it: a rate of 0 is "unlimited"."""
    return "unlimited" if value == 0 and name.startswith("rate") else f"{value:g}"


def changed_text(when: datetime | None) -> str:
    return f"changed {when:%Y-%m-%d %H:%M:%S} UTC" if when is not None else "changed at an unknown time"


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


async def read_limits(store: Store, settings: Settings, since: datetime | None = None) -> Limits:
    """The live limits: the operator's stored values, else the configuration's. A stored value out
    of bounds never stops the sender; it is ignored and reported in `Limits.ignored`. A stored
    value that differs from one given explicitly yields to it when that one is more careful,
    and either way is reported there too; but not one stored after `since` (a sender's
    start): that is the operator's latest word, given live to the running sender, and it holds."""
    ignored: list[str] = []
    stored = await _stored_settings(store, ignored)
    values = configured_limits(settings)
    given = {name: source for name, source in settings.limit_sources if name in LIMITS}
    changed: dict[str, datetime | None] = {}
    for name in LIMITS:
        if f"limit.{name}" not in stored:
            continue
        raw, when = stored[f"limit.{name}"]
        try:
            value = parse_limit(name, raw, f"stored limit {name}")
        except UserError as exc:
            ignored.append(f"{exc}; using the configured {values[name]:g}")
            continue
        later = since is not None and when is not None and when > since
        if name in given and value != values[name] and not later:
            ignored.append(_conflict(name, given[name], values[name], value, when))
            if careful(name, values[name], value) != value:
                continue  # the value given explicitly applies
        values[name] = value
        changed[name] = when
        given.pop(name, None)
    domains = _stored_domain_limits(stored, settings, ignored)
    return Limits(changed_at=changed, ignored=tuple(ignored), domains=domains, given=given,  # type: ignore[arg-type]
                  **values)


def careful(name: str, configured: float, stored: float) -> float:
    """The more careful of two values of live limit `name`: the lower rate (0 is unlimited, the
    highest), the fewer connections; messages_per_connection is not a pace: the stored one."""
    if name in ("rate", "rate_per_hour"):
        return min((v for v in (configured, stored) if v), default=0.0)
    if name == "connections":
        return min(configured, stored)
    return stored


def _conflict(name: str, source: str, configured: float, stored: float, when: datetime | None) -> str:
    """One line: both values, where each came from, which applies and how to settle it."""
    applied = careful(name, configured, stored)
    which = {"rate": "the lower", "rate_per_hour": "the lower", "connections": "the fewer"}.get(name, "the stored one")
    return (f"{name}: {source} says {limit_text(name, configured)} but the stored live limit "
            f"({changed_text(when)}) says {limit_text(name, stored)}; {which}, {limit_text(name, applied)}, "
            f"applies; to store {limit_text(name, configured)} instead of {limit_text(name, stored)}: "
            f"mailtower limits {flag_name(name)} {configured:g}")


async def _stored_settings(store: Store, ignored: list[str]) -> dict[str, tuple[str, datetime | None]]:
    """The settings table, each time read where it can be: a hand-edited changed_at that is not a
    time leaves the value standing (it may be the lower rate), its time unknown, and is said."""
    result: dict[str, tuple[str, datetime | None]] = {}
    for key, value, written in await store.settings_rows():
        result[key] = (value, _time(written))
        if result[key][1] is None and key.startswith(("limit.", DOMAIN_KEY)):
            ignored.append(f"stored limit {show_value(key)}: changed_at {show_value(written)} is not a time; "
                           "the value is kept, its time unknown")
    return result


def _time(written: object) -> datetime | None:
    try:
        return datetime.fromisoformat(written.replace("Z", "+00:00")) if isinstance(written, str) else None
    except ValueError:
        return None


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
    stored = await _stored_settings(store, [])
    keys = [f"{DOMAIN_KEY}{group}.{name}" for name in DOMAIN_LIMITS]
    if group not in group_names(settings) and not any(key in stored for key in keys):
        names = ", ".join(group_names(settings))
        raise UserError(f"{source}: no domain group {show_value(group)} and no stored limits of one; "
                        f"the configured groups are {names}")
    return await store.delete_settings(keys)
