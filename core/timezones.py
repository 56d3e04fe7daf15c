"""Time-zone conversion: the one place that turns a wall time in an IANA zone into a UTC instant.

The zone data always comes from the `tzdata` PyPI package, never the system's zone files, so a
schedule derives the same instant on every machine and records which data version it used.

Daylight-saving rules (issue 4):
- a wall time inside a gap (spring forward) is moved forward by the gap's length;
- a wall time inside an overlap (fall back) means its first occurrence;
both come back with a one-line warning for the person who asked.
"""

from __future__ import annotations

import difflib
import enum
import functools
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Mapping
from zoneinfo import ZoneInfo

import tzdata

from .errors import UserError

_ZONE_PACKAGE = "tzdata.zoneinfo"
_WALL_TIME_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2}) ([0-9]{2}):([0-9]{2})")
_DATE_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_CLOCK_RE = re.compile(r"([0-9]{1,2})(?::([0-9]{2}))?")


class Shift(str, enum.Enum):
    """How a requested wall time had to be interpreted."""

    NONE = "none"  # exists exactly once
    GAP = "gap"  # skipped by the clocks: moved forward by the gap's length
    FOLD = "fold"  # happens twice: the first occurrence is used


@dataclass(frozen=True, slots=True)
class Resolved:
    """A wall time in a zone, resolved to one UTC instant."""

    requested: datetime  # naive wall time as asked
    effective: datetime  # naive wall time actually used (requested + gap length for a gap)
    tz: str
    utc: datetime  # aware, tzinfo=timezone.utc
    utc_offset: timedelta  # offset in effect at the instant
    shift: Shift
    warning: str | None  # one human line for GAP / FOLD


# --- zone data -------------------------------------------------------------------------------


def tzdata_version() -> str:
    """The IANA release of the bundled zone data, e.g. "2026f"."""
    return tzdata.IANA_VERSION


@functools.cache
def _zone_index() -> tuple[tuple[str, ...], frozenset[str]]:
    """(canonical zone names, every loadable name including backward-compatible links).

    tzdata.zi is the compiler input shipped with the package: "Z name ..." defines a zone,
    "L target name" a link. It is the only listing that tells canonical names from aliases.
    """
    text = resources.files(_ZONE_PACKAGE).joinpath("tzdata.zi").read_text(encoding="utf-8")
    canonical: list[str] = []
    every: set[str] = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "Z" and fields[1] != "Factory":
            # "Factory" only means "zone not configured"; nobody schedules in it.
            every.add(fields[1])
            # Names without a region ("EST5EDT", ...) are legacy POSIX-style
            # zones nobody should pick; Etc/UTC and Etc/GMT±N cover the fixed offsets.
            if "/" in fields[1]:
                canonical.append(fields[1])
        elif len(fields) >= 3 and fields[0] == "L":
            every.add(fields[2])
    return tuple(sorted(canonical)), frozenset(every)


def zone_names() -> list[str]:
    """Sorted canonical IANA zone names of the bundled data (no aliases, no "Factory")."""
    return list(_zone_index()[0])


def is_valid_zone(name: str) -> bool:
    """True if `name` is a zone or alias in the bundled data (case-sensitive, as IANA names are)."""
    return name in _zone_index()[1]


@functools.cache
def _load_known_zone(name: str) -> ZoneInfo:
    with resources.files(_ZONE_PACKAGE).joinpath(*name.split("/")).open("rb") as handle:
        return ZoneInfo.from_file(handle, key=name)


def load_zone(name: str) -> ZoneInfo:
    """The zone `name` from the bundled tzdata; UserError with suggestions if there is none."""
    # Checking the name against the index first also keeps arbitrary paths out of the file lookup.
    if not is_valid_zone(name):
        raise UserError(_unknown_zone_message(name))
    return _load_known_zone(name)


@functools.cache
def _names_by_lower() -> dict[str, str]:
    return {zone.lower(): zone for zone in sorted(_zone_index()[1])}


def case_hint(name: str) -> str:
    """"; did you mean Europe/Paris?" when `name` is a zone in other letter case ("europe/paris"),
    else "". One lookup: cheap enough for every rejected row of a hostile file."""
    found = _names_by_lower().get(name.strip().lower())
    return f"; did you mean {found}?" if found is not None and found != name else ""


ZONE_NAME_MAX = 64  # the longest IANA name has 32 characters; anything longer is quoted cut short


def quoted_zone(name: str) -> str:
    """The name as typed, escaped (repr) and at most ZONE_NAME_MAX characters of it."""
    if len(name) <= ZONE_NAME_MAX:
        return repr(name)
    return f"{name[:ZONE_NAME_MAX]!r}... ({len(name):,} characters)"


def _unknown_zone_message(name: str) -> str:
    if not name.strip():
        return "no time zone given; expected an IANA name such as Europe/Berlin"
    if len(name) <= ZONE_NAME_MAX:
        # An offset or an abbreviation says which offset was meant: a look-alike name with
        # another offset (Etc/GMT-3 for "GMT-3", CET for "EDT") would move the send time.
        special = _offset_advice(name) or _abbreviation_advice(name)
        if special is not None:
            return f"unknown time zone {quoted_zone(name)}; {special}"
    suggestions = _suggest_zones(name) if len(name) <= ZONE_NAME_MAX else []
    if not suggestions:
        return f"unknown time zone {quoted_zone(name)}; expected an IANA name such as Europe/Berlin"
    return f"unknown time zone {quoted_zone(name)}; did you mean {_either(suggestions)}?"


def _either(names: list[str]) -> str:
    """"A", "A or B", "A, B or C"."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


# --- offsets and abbreviations typed for a zone ----------------------------------------------

# "GMT-3", "UTC+5", "+03:00", "-0330", "UTC−3" (a Unicode minus), "Etc/GMT-03" (POSIX sign).
_OFFSET_TYPED_RE = re.compile(
    r"(?P<etc>etc/)?(?P<base>gmt|utc|ut)?\s*(?P<sign>[+\-\u2212])\s*(?P<hours>[0-9]{1,2})(?::?(?P<minutes>[0-9]{2}))?",
    re.IGNORECASE,
)
_ETC_GMT_RE = re.compile(r"Etc/GMT[+-][0-9]{1,2}")
# Zones most people mean when several use one abbreviation, named first (the rest alphabetical).
_WELL_KNOWN = (
    "America/New_York", "America/Chicago", "America/Denver", "America/Phoenix", "America/Los_Angeles",
    "America/Anchorage", "Pacific/Honolulu", "America/Halifax", "America/St_Johns", "America/Toronto",
    "America/Vancouver", "America/Mexico_City", "America/Sao_Paulo", "Europe/London", "Europe/Dublin",
    "Europe/Lisbon", "Europe/Berlin", "Europe/Paris", "Europe/Athens", "Europe/Helsinki", "Europe/Moscow",
    "Asia/Kolkata", "Asia/Jerusalem", "Asia/Karachi", "Asia/Shanghai", "Asia/Hong_Kong", "Asia/Tokyo",
    "Asia/Seoul", "Asia/Manila", "Asia/Jakarta", "Africa/Johannesburg", "Africa/Lagos", "Africa/Nairobi",
    "Australia/Sydney", "Australia/Melbourne", "Australia/Brisbane", "Australia/Adelaide",
    "Australia/Perth", "Pacific/Auckland",
)


def _typed_offset(name: str) -> timedelta | None:
    """The UTC offset an offset-like name means, or None if it is not one.

    "GMT-3" is read as people write it (UTC-3); only an "Etc/GMT-3" spelling takes the POSIX
    sign, where minus means east of Greenwich (UTC+3).
    """
    match = _OFFSET_TYPED_RE.fullmatch(name.strip())
    if match is None or (match["etc"] and not match["base"]):
        return None
    hours, minutes = int(match["hours"]), int(match["minutes"] or 0)
    if minutes >= 60:
        return None
    offset = timedelta(hours=hours, minutes=minutes)
    east = match["sign"] == "+"
    if match["etc"]:
        east = not east
    return offset if east else -offset


def etc_zone_for(offset: timedelta) -> str | None:
    """The Etc zone fixed at `offset` ("Etc/GMT+3" for UTC-03:00; "UTC" for zero), if there is one."""
    hours, rest = divmod(int(offset.total_seconds()), 3600)
    if rest or not -12 <= hours <= 14:
        return None
    if hours == 0:
        return "UTC"
    # POSIX counts west of Greenwich as positive: the sign of the name is the reverse of the offset's.
    return f"Etc/GMT{'-' if hours > 0 else '+'}{abs(hours)}"


def _offset_advice(name: str) -> str | None:
    offset = _typed_offset(name)
    if offset is None:
        return None
    shown = f"UTC{format_offset(offset)}"
    etc = etc_zone_for(offset)
    if etc == "UTC":
        return f"for {shown} use UTC"
    if etc is not None:
        mirror = etc_zone_for(-offset)
        opposite = f", {mirror} is UTC{format_offset(-offset)}" if mirror else ""
        return f"for {shown} use {etc} (the POSIX sign is reversed: {etc} is {shown}{opposite})"
    steady = _zones_fixed_at(offset)
    if steady:
        return f"there is no Etc zone for {shown}; did you mean {_either(steady)} ({shown} all year)?"
    return f"no zone is {shown} all year: give the IANA name of the place, such as Europe/Berlin"


def _zones_fixed_at(offset: timedelta, limit: int = 3) -> list[str]:
    """Places whose offset is `offset` in January and July of this year and the next."""
    found = [zone for zone, offsets in _zone_samples().items() if set(offsets) == {offset} and not zone.startswith("Etc/")]
    return _well_known_first(found)[:limit]


def _abbreviation_advice(name: str) -> str | None:
    """For "EDT", "cest", "BST": the zones whose clocks show that abbreviation now or next year."""
    key = name.strip()
    if not key.isalpha() or not 2 <= len(key) <= 6:
        return None
    users = _abbreviation_users().get(key.upper())
    if users:
        zones = _well_known_first(users)[:3]
        return f"{key.upper()} is an abbreviation, not a zone: did you mean {_either(zones)} (zones that use {key.upper()})?"
    if key.isupper():
        # Looks like an abbreviation no zone uses now: only a city of that name, never a
        # look-alike legacy name ("EST" for "SGT") whose offset is another.
        cities = search_zones(key, limit=3)
        return f"did you mean {_either(cities)}?" if cities else f"{key} is not a zone name (nor an abbreviation any zone uses now); expected an IANA name such as Europe/Berlin"
    return None


def _well_known_first(zones: list[str]) -> list[str]:
    rank = {zone: index for index, zone in enumerate(_WELL_KNOWN)}
    return sorted(zones, key=lambda zone: (rank.get(zone, len(rank)), zone))


def _sample_instants() -> list[datetime]:
    """15 January and 15 July of this year and the next: winter and summer, north and south."""
    year = utcnow().year
    return [datetime(y, m, 15, 12, tzinfo=timezone.utc) for y in (year, year + 1) for m in (1, 7)]


@functools.cache
def _zone_samples() -> dict[str, tuple[timedelta, ...]]:
    """Each place's offsets on the sample days (_sample_instants)."""
    samples: dict[str, tuple[timedelta, ...]] = {}
    for zone in zone_names():
        loaded = _load_known_zone(zone)
        samples[zone] = tuple(_offset_at(instant, loaded) for instant in _sample_instants())
    return samples


@functools.cache
def _abbreviation_users() -> dict[str, list[str]]:
    """Abbreviation ("EDT") -> the places whose clocks show it on the sample days (_sample_instants)."""
    instants = _sample_instants()
    users: dict[str, list[str]] = {}
    for zone in zone_names():
        if zone.startswith("Etc/"):
            continue
        loaded = _load_known_zone(zone)
        for label in {instant.astimezone(loaded).tzname() or "" for instant in instants}:
            if label.isalpha():  # "+03" is an offset, not an abbreviation
                users.setdefault(label.upper(), []).append(zone)
    return users


def reversed_sign_note(tz: str) -> str | None:
    """"Etc/GMT-3 is UTC+03:00 (the POSIX sign is reversed)" for an Etc/GMT±N zone, else None."""
    if not _ETC_GMT_RE.fullmatch(tz) or not is_valid_zone(tz):
        return None
    offset = _offset_at(datetime(2000, 1, 1, tzinfo=timezone.utc), _load_known_zone(tz))
    if not offset:
        return None  # Etc/GMT-0 is UTC either way
    return f"{tz} is UTC{format_offset(offset)} (the POSIX sign is reversed)"


def _suggest_zones(name: str, limit: int = 3) -> list[str]:
    """Closest valid names: same name in other case, a city match, then spelling neighbours."""
    every = sorted(_zone_index()[1])
    by_lower = {zone.lower(): zone for zone in every}
    key = name.strip().lower().replace(" ", "_")
    found: list[str] = []
    if key in by_lower:
        found.append(by_lower[key])
    if "/" not in key:
        found.extend(search_zones(key, limit=limit))
    found.extend(by_lower[match] for match in _closest_spellings(key, list(by_lower), limit))
    return list(dict.fromkeys(found))[:limit]


def _closest_spellings(key: str, candidates: list[str], limit: int) -> list[str]:
    """difflib's close matches, minus those clearly worse than the best (Berln: not Dublin)."""
    matcher = difflib.SequenceMatcher(b=key)
    scored: list[tuple[float, str]] = []
    for candidate in candidates:
        matcher.set_seq1(candidate)
        if matcher.real_quick_ratio() >= 0.6 and matcher.quick_ratio() >= 0.6:
            score = matcher.ratio()
            if score >= 0.6:
                scored.append((score, candidate))
    if not scored:
        return []
    best = max(score for score, _ in scored)
    scored.sort(key=lambda item: (-item[0], item[1]))
    return [candidate for score, candidate in scored[:limit] if score >= best - 0.1]


def search_zones(query: str, limit: int = 50) -> list[str]:
    """Canonical zone names containing `query` (case-insensitive; spaces match underscores).

    Best first: city name equal to the query, city name starting with it, any part of the name
    starting with it, then any substring; alphabetical within each rank. Empty query: all names.
    """
    key = query.strip().lower().replace(" ", "_")
    names = _zone_index()[0]
    if not key:
        return list(names[:limit])
    ranked: list[tuple[int, str]] = []
    for zone in names:
        lowered = zone.lower()
        if key not in lowered:
            continue
        parts = lowered.split("/")
        if parts[-1] == key:
            rank = 0
        elif parts[-1].startswith(key):
            rank = 1
        elif lowered.startswith(key) or any(part.startswith(key) for part in parts):
            rank = 2
        else:
            rank = 3
        ranked.append((rank, zone))
    ranked.sort()
    return [zone for _, zone in ranked[: max(limit, 0)]]


# --- resolving wall times --------------------------------------------------------------------


def resolve(local: datetime, tz: str) -> Resolved:
    """The UTC instant for wall time `local` (naive) in zone `tz`, with any DST shift explained.

    PEP 495: with fold=0 a gap or overlap time takes the offset in force *before* the transition,
    with fold=1 the one after. Those two offsets are only candidates: an instant counts when it
    round-trips, i.e. converting it back to the zone gives `local` again. One instant: plain;
    two: an overlap (the first wins); none: a gap. The round trip matters because zoneinfo's
    wall-time lookup can report a transition that never happened where a zone's table of
    transitions hands over to its yearly rule (America/Nuuk, 2023-10-28 23:00-24:00).
    """
    if local.tzinfo is not None:
        raise ValueError("resolve() takes a naive wall time; the zone is given separately")
    zone = load_zone(tz)
    try:
        resolved = _resolve_in(local, tz, zone)
    except OverflowError:
        resolved = None
    if resolved is None or not _SCHEDULABLE_MIN <= resolved.utc <= _SCHEDULABLE_MAX:
        # Near year 1 or 9999 the instant, or its wall time in some other zone, falls outside
        # what datetime can hold: refused here so no later display or comparison overflows.
        raise UserError(
            f"{_wall(local)} in {tz} is outside the range of times that can be scheduled "
            f"({_SCHEDULABLE_MIN.date().isoformat()} to {_SCHEDULABLE_MAX.date().isoformat()} UTC)"
        )
    return resolved


# Two days inside datetime's range: any zone's wall time of an instant in here still exists.
_SCHEDULABLE_MIN = datetime.min.replace(tzinfo=timezone.utc) + timedelta(days=2)
_SCHEDULABLE_MAX = datetime.max.replace(tzinfo=timezone.utc) - timedelta(days=2)


def _resolve_in(local: datetime, tz: str, zone: ZoneInfo) -> Resolved:
    in_force = _offsets_in_force(local, zone)
    # Largest offset first: that reading is the earlier instant.
    readings = sorted((offset for offset, actual in in_force.items() if actual == offset), reverse=True)
    if readings:
        shift = Shift.FOLD if len(readings) > 1 else Shift.NONE
        utc = _as_utc(local - readings[0])
    else:
        # Inside a gap the largest candidate is the offset after the jump, so `local` minus it
        # lies just before the jump, where the offset the gap starts from is in force.
        shift = Shift.GAP
        utc = _as_utc(local - in_force[max(in_force)])
    at_instant = utc.astimezone(zone)
    effective = at_instant.replace(tzinfo=None)
    utc_offset = at_instant.utcoffset()
    assert utc_offset is not None  # a ZoneInfo always has one
    if shift is Shift.GAP:
        warning: str | None = (
            f"{_wall(local)} does not exist in {tz} "
            f"(clocks jump forward {_length(effective - local)}); "
            f"using {_wall_after(effective, local)} {_label(at_instant)}"
        )
    elif shift is Shift.FOLD:
        back = readings[0] - readings[-1]
        warning = (
            f"{_wall(local)} occurs twice in {tz} (clocks go back {_length(back)}); "
            f"using the first, {_clock(effective)} {_label(at_instant)}"
        )
    else:
        warning = None
    return Resolved(
        requested=local,
        effective=effective,
        tz=tz,
        utc=utc,
        utc_offset=utc_offset,
        shift=shift,
        warning=warning,
    )


def _offsets_in_force(local: datetime, zone: ZoneInfo) -> dict[timedelta, timedelta]:
    """Candidate offsets for `local`, each mapped to the offset in force at `local - candidate`.

    Starts from zoneinfo's fold=0/fold=1 guesses; the offsets found in force are candidates too,
    which pulls in the true offsets near `local` even if both guesses were off. A candidate whose
    instant has that very offset is a reading of `local`.
    """
    in_force: dict[timedelta, timedelta] = {}
    pending: set[timedelta] = set()
    for fold in (0, 1):
        guess = local.replace(tzinfo=zone, fold=fold).utcoffset()
        assert guess is not None  # a ZoneInfo always has one
        pending.add(guess)
    for _ in range(4):  # each round adds only offsets in force within a day of `local`
        for offset in pending:
            in_force[offset] = _offset_at(_as_utc(local - offset), zone)
        pending = set(in_force.values()) - set(in_force)
        if not pending:
            break
    return in_force


def _offset_at(instant: datetime, zone: ZoneInfo) -> timedelta:
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None  # a ZoneInfo always has one
    return offset


def _as_utc(naive_utc: datetime) -> datetime:
    return naive_utc.replace(tzinfo=timezone.utc)


def to_zone(utc: datetime, tz: str) -> datetime:
    """The aware datetime in zone `tz` for an aware instant."""
    if utc.tzinfo is None or utc.utcoffset() is None:
        # A naive value would silently be read as the machine's own zone by astimezone().
        raise ValueError("to_zone() needs an aware datetime")
    return utc.astimezone(load_zone(tz))


@dataclass(frozen=True, slots=True)
class WallClock:
    """How a stored schedule's instant reads on the clocks of its zone."""

    wall: datetime  # naive: the wall time at the instant (after a gap, not the one asked for)
    abbreviation: str  # "EDT"; "" for zones that show only an offset ("+03")
    offset: timedelta  # UTC offset in effect at the instant
    shift: Shift  # how the wall time asked for had to be read

    def text(self) -> str:
        """"2027-03-14 03:30" when plain, "2027-03-14 03:30 EDT" after a gap and
        "2027-11-07 01:30 EDT (first)" in a fold (the dashboard's words)."""
        if self.shift is Shift.NONE:
            return wall_minute(self.wall)
        label = self.abbreviation or f"UTC{format_offset(self.offset)}"
        first = " (first)" if self.shift is Shift.FOLD else ""
        return f"{wall_minute(self.wall)} {label}{first}"


def wall_clock(requested: datetime, tz: str, utc: datetime) -> WallClock | None:
    """The wall time the stored instant `utc` of a schedule asked for at `requested` in `tz`
    really happens at; None when the bundled data does not know `tz` (nothing can be said)."""
    if not is_valid_zone(tz):
        return None
    local = to_zone(utc, tz)
    try:
        shift = resolve(requested, tz).shift
    except UserError:  # out of range: the stored instant is all there is
        shift = Shift.NONE
    offset = local.utcoffset()
    assert offset is not None  # a ZoneInfo always has one
    name = local.tzname() or ""
    return WallClock(local.replace(tzinfo=None), name if name.isalpha() else "", offset, shift)


def utcnow() -> datetime:
    """Now, aware, in UTC."""
    return datetime.now(timezone.utc)


# --- parsing ---------------------------------------------------------------------------------


def parse_wall_time(text: str) -> datetime:
    """Strict "YYYY-MM-DD HH:MM" to a naive wall time; UserError saying what is wrong otherwise."""
    match = _WALL_TIME_RE.fullmatch(text.strip())
    if match is None:
        raise UserError(f"expected a date and time as YYYY-MM-DD HH:MM, got {text!r}")
    year, month, day, hour, minute = (int(group) for group in match.groups())
    try:
        return datetime(year, month, day, hour, minute)
    except ValueError as exc:
        raise UserError(f"no such date and time {text.strip()!r}: {exc}") from None


def parse_date_hour(date_text: str, hour_text: str) -> datetime:
    """The schedule dialog's fields, "2027-03-28" and "14:30" (or "14"), to a naive wall time."""
    date_match = _DATE_RE.fullmatch(date_text.strip())
    if date_match is None:
        raise UserError(f"expected a date as YYYY-MM-DD, got {date_text!r}")
    clock_match = _CLOCK_RE.fullmatch(hour_text.strip())
    if clock_match is None:
        raise UserError(f"expected a time as HH:MM or HH, got {hour_text!r}")
    hour = int(clock_match.group(1))
    minute = int(clock_match.group(2) or 0)
    if hour > 23 or minute > 59:
        raise UserError(f"no such time {hour_text.strip()!r}: use 00:00 to 23:59")
    year, month, day = (int(group) for group in date_match.groups())
    try:
        return datetime(year, month, day, hour, minute)
    except ValueError as exc:
        raise UserError(f"no such date {date_text.strip()!r}: {exc}") from None


# --- formatting ------------------------------------------------------------------------------


def format_offset(offset: timedelta) -> str:
    """"+05:45", "-03:00", "+00:00" (seconds only if the offset has them)."""
    sign = "-" if offset < timedelta(0) else "+"
    total = abs(int(offset.total_seconds()))
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{sign}{hours:02d}:{minutes:02d}"
    return f"{text}:{seconds:02d}" if seconds else text


def format_instant(utc: datetime, tz: str) -> str:
    """One line such as "2027-03-28 03:30 CEST (+02:00) Europe/Berlin"."""
    local = to_zone(utc, tz)
    return f"{_wall(local)} {_label(local)} {tz}"


def humanize_delta(delta: timedelta) -> str:
    """"in 4 min", "in 2 h 05 min", "in 3 d 4 h"; past deltas read "5 min ago"."""
    minutes_total = int(abs(delta).total_seconds()) // 60
    days, rest = divmod(minutes_total, 24 * 60)
    hours, minutes = divmod(rest, 60)
    if minutes_total == 0:
        amount = "under 1 min"
    elif days:
        amount = f"{days} d {hours} h"
    elif hours:
        amount = f"{hours} h {minutes:02d} min"
    else:
        amount = f"{minutes} min"
    return f"{amount} ago" if delta < timedelta(0) else f"in {amount}"


def _clock(value: datetime) -> str:
    return value.strftime("%H:%M:%S" if value.second or value.microsecond else "%H:%M")


def _wall(value: datetime) -> str:
    return f"{value.year:04d}-{value:%m-%d} {_clock(value)}"


def wall_minute(value: datetime) -> str:
    """YYYY-MM-DD HH:MM, the year in four digits as it was typed (strftime writes year 1 as "1")."""
    return f"{value.year:04d}-{value:%m-%d %H:%M}"


def _wall_after(effective: datetime, requested: datetime) -> str:
    # A gap can skip a whole day (Pacific/Apia, 2011): then the date has to be said too.
    return _clock(effective) if effective.date() == requested.date() else _wall(effective)


def _label(aware: datetime) -> str:
    """"CEST (+02:00)"; zones without a real abbreviation only get the offset."""
    offset = aware.utcoffset()
    assert offset is not None
    name = aware.tzname() or ""
    shown = format_offset(offset)
    if not name or name[0] in "+-":
        return f"({shown})"
    return f"{name} ({shown})"


def _length(span: timedelta) -> str:
    hours, rest = divmod(int(span.total_seconds()), 3600)
    minutes = rest // 60
    if hours and minutes:
        return f"{hours} h {minutes} min"
    if hours:
        return f"{hours} h"
    return f"{minutes} min"


# --- the operator's own zone -----------------------------------------------------------------


def operator_zone(
    environ: Mapping[str, str] | None = None,
    localtime: Path = Path("/etc/localtime"),
) -> str:
    """The operator's IANA zone: $TZ if it names one, else where /etc/localtime points, else UTC."""
    env = os.environ if environ is None else environ
    from_env = _zone_from_setting(env.get("TZ", ""))
    if from_env is not None:
        return from_env
    # The link's own text names the zone the operator chose; resolving it fully could land on
    # another alias (Europe/Kiev -> Europe/Kyiv) or a distribution's "posix/" copy.
    try:
        targets = [os.readlink(localtime), os.path.realpath(localtime)]
    except OSError:
        targets = []
    for target in targets:
        found = _zone_from_setting(target)
        if found is not None:
            return found
    return "UTC"


def _zone_from_setting(value: str) -> str | None:
    """A zone name from "Europe/Berlin", ":Europe/Berlin" or ".../zoneinfo/Europe/Berlin"."""
    value = value.strip().removeprefix(":")
    if "zoneinfo/" in value:
        value = value.rsplit("zoneinfo/", 1)[1]
        for variant in ("posix/", "right/"):
            value = value.removeprefix(variant)
    return value if value and is_valid_zone(value) else None
