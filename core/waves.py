"""Local-time delivery as waves by instant (issue 14).

"09:00 in each recipient's zone" is one instant per *offset*, not per zone: Europe/Paris,
Europe/Rome and Europe/Berlin reach 09:00 together in January. So the recipients are grouped
by the UTC instant their zone gives for the wall time, and each instant becomes one scheduled
mailing, a *wave*, named after the schedule with the offset and how many zones it holds
("Spring sale [UTC+01:00, 42 zones]"). The waves of one schedule share a wave group, so the
dashboard shows them as one row and acts on them together.

Zones where the wall time has already passed are never decided silently: `plan_waves` refuses
unless told what to do with them (`Passed`): keep their recipients in a draft (skip), send to
them at once (now), or at the same wall time the next day in their zone (next-day).

The plan is a pure function of the zones' recipient counts and the clock (the dialog previews
it as the operator types); `schedule_waves` carries it out in one transaction, and the state
changes themselves go through the lifecycle.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from .domain import Mailing, MailingState
from .errors import UserError
from .lifecycle import Action, Lifecycle, target_state
from .store import Store, Tx
from .timezones import Resolved, Shift, format_offset, is_valid_zone, load_zone, resolve, tzdata_version, wall_minute

LISTED_ZONES = 3  # zones named in one line before "and N more"


class Passed(str, enum.Enum):
    """What happens to recipients in zones where the wall time has already passed."""

    SKIP = "skip"  # kept in a draft mailing, not scheduled
    NOW = "now"  # a wave due at once
    NEXT_DAY = "next-day"  # the same wall time the next day in their zone


PASSED_MEANING: dict[Passed, str] = {
    Passed.SKIP: "keep them in a draft",
    Passed.NOW: "send to them at once",
    Passed.NEXT_DAY: "the same time the next day in their zone",
}


@dataclass(frozen=True, slots=True)
class ZoneShare:
    """The recipients of one zone and the instant they get the mailing."""

    zone: str
    recipients: int
    resolved: Resolved  # the requested wall time (next-day: a day later) in this zone
    passed: bool  # the requested wall time had already passed in this zone
    keys: tuple[str, ...]  # the recipients' tz values it stands for ('' for those given the default zone)


@dataclass(frozen=True, slots=True)
class Wave:
    """Zones whose recipients get the mailing at one instant."""

    utc: datetime  # aware, UTC
    zones: tuple[ZoneShare, ...]  # sorted by zone name
    offset: timedelta | None  # its zones' wall time (as asked) minus the instant; None for the wave due now
    next_day: bool = False  # every zone of it is a passed one, moved to the next day (--passed next-day)

    @property
    def recipients(self) -> int:
        return sum(share.recipients for share in self.zones)

    @property
    def keys(self) -> list[str]:
        return [key for share in self.zones for key in share.keys]

    @property
    def label(self) -> str:
        """"UTC+01:00, 42 zones" or, for the wave due at once, "now, 3 zones"."""
        when = "now" if self.offset is None else f"UTC{format_offset(self.offset)}"
        return f"{when}, {_zones(len(self.zones))}" + (", next day" if self.next_day else "")

    def name(self, parent: str) -> str:
        return f"{parent} [{self.label}]"

    def zone_pairs(self) -> list[tuple[str, int]]:
        return [(share.zone, share.recipients) for share in self.zones]

    def schedule(self) -> Resolved:
        """The wall time and zone stored for the wave: a zone where the time exists once (its
        instant is the wave's), or UTC itself for the wave due now."""
        if self.offset is None:
            wall = self.utc.replace(tzinfo=None)
            return Resolved(wall, wall, "UTC", self.utc, timedelta(0), Shift.NONE, None)
        plain = next((share for share in self.zones if share.resolved.shift is Shift.NONE), self.zones[0])
        return plain.resolved


@dataclass(frozen=True, slots=True)
class WavePlan:
    """A local-time schedule worked out: the waves, earliest first, and the zones whose time had passed."""

    requested: datetime  # the wall time asked for
    default_tz: str | None  # the zone of recipients without one
    choice: Passed | None  # what to do where the time has passed (None: not said)
    waves: tuple[Wave, ...]  # earliest first
    passed: tuple[ZoneShare, ...]  # zones where the requested time had passed (at the requested day)
    skipped: tuple[ZoneShare, ...]  # with Passed.SKIP: the passed zones, kept in a draft

    @property
    def recipients(self) -> int:
        return sum(w.recipients for w in self.waves) + sum(s.recipients for s in self.skipped)

    @property
    def passed_recipients(self) -> int:
        return sum(share.recipients for share in self.passed)

    def warnings(self) -> tuple[str, ...]:
        """One line per kind of daylight-saving adjustment (a gap, a fold), naming the zones."""
        shares = [share for wave in self.waves for share in wave.zones]
        lines: list[str] = []
        for shift, words in (
            (Shift.GAP, "does not exist in {n} that day (the clocks jump forward: {zones}); "
                        "their recipients get it with the wave of the time it becomes"),
            (Shift.FOLD, "occurs twice in {n} that day (the clocks go back: {zones}); the first occurrence is used"),
        ):
            hit = [share for share in shares if share.resolved.shift is shift]
            if len(hit) == 1 and hit[0].resolved.warning:
                lines.append(hit[0].resolved.warning)
            elif hit:
                names = listed([share.zone for share in hit])
                lines.append(f"{self.requested:%H:%M} " + words.format(n=_zones(len(hit)), zones=names))
        return tuple(lines)

    def choices(self) -> tuple[Passed, ...]:
        """What may be done where the time has passed: not skip when it has passed everywhere
        (that would schedule nothing)."""
        if self.passed and not any(w.offset is not None and not _all_passed(w) for w in self.waves):
            return (Passed.NOW, Passed.NEXT_DAY)
        return tuple(Passed)

    def refusal(self) -> str | None:
        """The one line that refuses the plan when zones have passed and nobody said what to do."""
        if not self.passed or self.choice is not None:
            return None
        zones = listed([share.zone for share in self.passed])
        people = f"{self.passed_recipients:,} recipient{'s' if self.passed_recipients != 1 else ''}"
        choices = ", ".join(f"--passed {c.value} ({PASSED_MEANING[c]})" for c in self.choices())
        return (
            f"{wall_minute(self.requested)} is already in the past in {_zones(len(self.passed))} "
            f"({zones}) for {people}; say what happens to them: {choices}; nothing was changed"
        )


def _all_passed(wave: Wave) -> bool:
    return all(share.passed for share in wave.zones)


def listed(names: Iterable[str], first: int = LISTED_ZONES) -> str:
    """"A", "A and B", "A, B and C", "A, B, C and 4 more"."""
    items = list(names)
    if len(items) > first + 1:
        return f"{', '.join(items[:first])} and {len(items) - first} more"
    if len(items) > 1:
        return f"{', '.join(items[:-1])} and {items[-1]}"
    return items[0] if items else ""


def _zones(n: int) -> str:
    return f"{n:,} zone{'s' if n != 1 else ''}"


# --- planning ----------------------------------------------------------------------------------


def plan_waves(
    zone_counts: Mapping[str, int],
    local: datetime,
    default_tz: str | None,
    now: datetime,
    choice: Passed | None = None,
) -> WavePlan:
    """Group recipients by the instant their zone gives for wall time `local`.

    `zone_counts` maps each recipient tz value ('' for none) to how many recipients have it.
    Raises UserError for recipients without a zone and no `default_tz`, an unknown zone, or a
    next-day time that has passed too; a plan with passed zones and no `choice` is returned
    with `refusal()` saying so (the dialog shows it; `schedule_waves` raises it)."""
    _refuse_past_everywhere(local, now)
    shares = _zone_shares(zone_counts, default_tz)
    timed: dict[datetime, list[ZoneShare]] = {}
    passed: list[ZoneShare] = []
    due_now: list[ZoneShare] = []
    skipped: list[ZoneShare] = []
    for zone, (count, keys) in sorted(shares.items()):
        resolved = resolve(local, zone)
        share = ZoneShare(zone, count, resolved, resolved.utc <= now, keys)
        if not share.passed:
            timed.setdefault(resolved.utc, []).append(share)
            continue
        passed.append(share)
        if choice is Passed.SKIP:
            skipped.append(share)
        elif choice is Passed.NOW:
            due_now.append(share)
        elif choice is Passed.NEXT_DAY:
            later = _next_day(local, zone, now)
            timed.setdefault(later.utc, []).append(ZoneShare(zone, count, later, True, keys))
    waves = [_timed_wave(utc, group) for utc, group in sorted(timed.items())]
    if due_now:
        waves.insert(0, Wave(now.astimezone(timezone.utc).replace(microsecond=0), tuple(due_now), None))
    if skipped and not waves:
        # Every zone had passed: "skip" would schedule nothing and only rename the mailing.
        raise UserError(
            f"{wall_minute(local)} has already passed in every recipient's zone, so --passed skip would "
            "schedule nothing; choose a later time, or --passed now or --passed next-day; nothing was changed"
        )
    return WavePlan(local, default_tz, choice, tuple(waves), tuple(passed), tuple(skipped))


def _timed_wave(utc: datetime, group: list[ZoneShare]) -> Wave:
    """One instant's wave. Its offset is the wall time its zones were asked for minus the instant,
    from a zone of the requested day if it has one: a zone moved to the next day asked for a
    wall time a day later (Berlin's next day is UTC+01:00 next day, not UTC-23:00)."""
    shares = tuple(sorted(group, key=lambda s: s.zone))
    lead = next((share for share in shares if not share.passed), shares[0])
    offset = lead.resolved.requested - utc.replace(tzinfo=None)
    return Wave(utc, shares, offset, next_day=all(share.passed for share in shares))


# The last wall clocks on Earth (Etc/GMT+12, Baker Island) are 12 hours behind UTC.
LATEST_OFFSET = timedelta(hours=-12)


def _refuse_past_everywhere(local: datetime, now: datetime) -> None:
    """A wall time already past at UTC-12 is past in every zone: a mistake (a wrong year, a wrong
    day), never something to send "now" or to move to the next day."""
    if (local - LATEST_OFFSET).replace(tzinfo=timezone.utc) <= now:
        raise UserError(
            f"{wall_minute(local)} is in the past in every time zone (even at UTC-12); "
            "choose a later time; nothing was changed"
        )


def _zone_shares(zone_counts: Mapping[str, int], default_tz: str | None) -> dict[str, tuple[int, tuple[str, ...]]]:
    """Recipient counts per real zone (those without one counted in `default_tz`)."""
    without = zone_counts.get("", 0)
    if without > 0 and not default_tz:
        raise UserError(
            f"{without:,} recipient{'s have' if without != 1 else ' has'} no zone (tz column); "
            "give --tz ZONE for them"
        )
    if default_tz:
        load_zone(default_tz)  # an unknown zone is refused with suggestions
    _refuse_unknown_zones(zone_counts)
    shares: dict[str, tuple[int, tuple[str, ...]]] = {}
    for key, count in zone_counts.items():
        if count <= 0:
            continue
        zone = key or default_tz or ""
        before, keys = shares.get(zone, (0, ()))
        shares[zone] = (before + count, tuple(sorted({*keys, key})))
    return shares


ZONE_SHOWN = 40  # characters of an unknown zone value quoted in a message


def _refuse_unknown_zones(zone_counts: Mapping[str, int]) -> None:
    """One line naming every stored tz value the zone data does not know (and how many have it).

    Import refuses them, so only a newer tzdata dropping a name or a hand-edited database gets
    here; the values are quoted escaped and cut short, as they may hold anything."""
    unknown = sorted(key for key, count in zone_counts.items() if count > 0 and key and not is_valid_zone(key))
    if not unknown:
        return
    people = sum(zone_counts[key] for key in unknown)
    shown = [_quoted(key) for key in unknown]
    raise UserError(
        f"{people:,} recipient{'s have' if people != 1 else ' has'} a time zone that the time-zone data "
        f"(tzdata {tzdata_version()}) does not know: {listed(shown)}; they cannot be given their local time: "
        "schedule them at one zone (without --local-time) or cancel them; nothing was changed"
    )


def _quoted(value: str) -> str:
    text = repr(value[:ZONE_SHOWN])  # repr escapes control characters and terminal escapes
    return text if len(value) <= ZONE_SHOWN else f"{text}... ({len(value):,} characters)"


def _next_day(local: datetime, zone: str, now: datetime) -> Resolved:
    later = resolve(local + timedelta(days=1), zone)
    if later.utc <= now:
        raise UserError(
            f"{wall_minute(local)} is in the past in {zone} even a day later; choose a later time"
        )
    return later


# --- sooner than now ------------------------------------------------------------------------------


def send_times(
    zone_counts: Mapping[str, int],
    local: datetime,
    tz: str,
    now: datetime,
    *,
    local_time: bool,
    choice: Passed | None = None,
) -> dict[str, tuple[datetime, str]]:
    """When the recipients of each tz value ('' for none) would get a schedule of wall time
    `local`, and the zone giving that instant: all at `local` in `tz`, or (`local_time`) in
    their own zone as `plan_waves` groups them; recipients kept in a draft (skip) get none.
    Raises what `plan_waves` raises."""
    keys = [key for key, count in zone_counts.items() if count > 0]
    if not local_time:
        utc = resolve(local, tz).utc
        return {key: (utc, tz) for key in keys}
    plan = plan_waves(zone_counts, local, tz, now, choice)
    return {key: (wave.utc, share.zone) for wave in plan.waves for share in wave.zones for key in share.keys}


@dataclass(frozen=True, slots=True)
class Sooner:
    """A new schedule that sends to some recipients earlier than they are scheduled now."""

    recipients: int  # how many would get it sooner
    zones: tuple[str, ...]  # their own zones (the new schedule's for those without one), sorted
    by: timedelta  # the most any of them moves forward
    earliest: datetime  # the earliest send time of the new schedule (UTC)
    earliest_zone: str  # the zone giving that instant
    before: datetime  # the earliest send time until now (UTC)


def sooner_sends(
    current: Mapping[str, datetime], new: Mapping[str, tuple[datetime, str]], zone_counts: Mapping[str, int]
) -> Sooner | None:
    """Whether the send times `new` (per tz value: instant and zone, as `send_times` gives them)
    bring any recipient's send time forward from `current` (per tz value: its instant now);
    None when nobody gets it sooner. A tz value without a current time (nothing scheduled yet)
    is never sooner."""
    moved = {key: current[key] - new[key][0] for key in new if key in current and new[key][0] < current[key]}
    if not moved:
        return None
    earliest, zone = min(new.values())
    return Sooner(
        recipients=sum(zone_counts.get(key, 0) for key in moved),
        zones=tuple(sorted({key or new[key][1] for key in moved})),
        by=max(moved.values()),
        earliest=earliest,
        earliest_zone=zone,
        before=min(current.values()),
    )


# --- carrying a plan out --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlacedWave:
    """A wave of a local-time schedule and the mailing that sends it."""

    mailing_id: int
    wave: Wave


@dataclass(frozen=True, slots=True)
class WaveResult:
    """A local-time schedule as it was written: its plan, its group of wave mailings, the draft of
    skipped zones."""

    plan: WavePlan
    group: int
    waves: tuple[PlacedWave, ...]
    skipped_id: int | None  # the draft holding the skipped zones' recipients


async def grouped_with(store: Store, mailing: Mailing) -> list[Mailing]:
    """What a schedule action on `mailing` acts on: every scheduled wave of its group when it
    is a scheduled wave, else the mailing alone. Lowest id first (it keeps the group's rows)."""
    if mailing.wave_group is None or mailing.state is not MailingState.SCHEDULED:
        return [mailing]
    members = [m for m in await store.wave_members(mailing.wave_group) if m.state is MailingState.SCHEDULED]
    return sorted(members, key=lambda m: m.id) or [mailing]


def refuse_import_into_wave(mailing: Mailing) -> None:
    """Recipients added to one scheduled wave would get the mailing at that wave's instant, not
    at their own local time (a Tokyo reader in the Chicago wave at midnight): refused, saying how."""
    if mailing.wave_group is None or mailing.state is not MailingState.SCHEDULED:
        return
    raise UserError(
        f"mailing {mailing.id} is one wave of the local-time schedule {_parent_name(mailing)!r}: recipients "
        "imported into it would get it at that wave's instant, not at their own local time; cancel the "
        f"schedule (mailtower unschedule {mailing.id}: its waves become one draft), import into that draft "
        "and schedule it again; nothing was imported"
    )


async def _current_members(tx: Tx, members: list[Mailing]) -> list[Mailing]:
    """The members as they are inside the transaction; refused if any changed meanwhile."""
    fresh = [await tx.mailing(m.id) for m in members]
    if any((a.state, a.wave_group) != (b.state, b.wave_group) for a, b in zip(members, fresh)):
        raise UserError(f"mailing {members[0].id} changed while scheduling; try again")
    return fresh


async def _merge(tx: Tx, lifecycle: Lifecycle, members: list[Mailing]) -> int:
    """Bring the waves of `members` back into the first one; returns its id."""
    anchor = members[0].id
    if members[1:]:
        await lifecycle.absorb_waves_in(tx, [other.id for other in members[1:]], anchor)
    return anchor


def _parent_name(mailing: Mailing) -> str:
    return mailing.wave_parent if mailing.wave_parent is not None else mailing.name


async def current_send_times(store: Store, members: list[Mailing]) -> dict[str, datetime]:
    """When the recipients of each tz value ('' for none) not yet sent to get the mailing as it
    is scheduled now: the instant of the scheduled wave (or mailing) holding them, the latest
    when several do. Empty when none of `members` is scheduled."""
    times: dict[str, datetime] = {}
    for member in members:
        if member.state is not MailingState.SCHEDULED or member.schedule is None:
            continue
        for key in await store.waiting_zones([member.id]):
            if key not in times or member.schedule.utc > times[key]:
                times[key] = member.schedule.utc
    return times


async def preview_for(store: Store, mailing: Mailing) -> dict[str, int]:
    """The recipient zones a local-time schedule of `mailing` (its whole group) would plan with."""
    return await store.waiting_zones(m.id for m in await grouped_with(store, mailing))


async def schedule_waves(
    store: Store,
    lifecycle: Lifecycle,
    mailing_id: int,
    local: datetime,
    default_tz: str | None,
    now: datetime,
    choice: Passed | None = None,
) -> WaveResult:
    """Schedule `mailing_id` (a scheduled wave: its whole group) at `local` in each recipient's
    zone, one scheduled mailing per instant. Refuses, changing nothing, what `plan_waves`
    refuses and zones that have passed without a `choice`."""
    mailing = await store.mailing(mailing_id)
    members = await grouped_with(store, mailing)
    for member in members:
        target_state(member, Action.SCHEDULE, any_sending=False)
    counts = await store.waiting_zones(m.id for m in members)
    if not counts:
        raise UserError(f"mailing {mailing_id} has no recipient left to send to")
    plan = plan_waves(counts, local, default_tz, now, choice)
    refusal = plan.refusal()
    if refusal is not None:
        raise UserError(refusal)
    parent = _parent_name(mailing)
    async with store.write() as tx:
        anchor = await _merge(tx, lifecycle, await _current_members(tx, members))
        if await tx.waiting_zones([anchor]) != counts:
            raise UserError(f"the recipients of mailing {mailing_id} changed while scheduling; try again")
        group = await tx.new_wave_group(parent, local, default_tz, choice.value if choice else None)
        source = await tx.mailing(anchor)
        # Every part is made first and the recipients are moved to them in one statement.
        targets = [anchor] + [await _new_part(tx, source) for _ in plan.waves[1:]]
        skipped_to = None  # with --passed skip: the draft of the passed zones (the mailing itself if all passed)
        if plan.skipped:
            skipped_to = await _new_part(tx, source) if plan.waves else anchor
        moved = await tx.move_waiting_by_zone(anchor, _zone_targets(plan, targets, skipped_to))
        placed: list[PlacedWave] = []
        for target, wave in zip(targets, plan.waves):
            if target != anchor:
                await _created(tx, target, moved, source, f"{wave.label} wave")
            await _mark(tx, target, wave.name(parent), group, parent, wave.zone_pairs())
            await lifecycle.schedule_in(tx, target, wave.schedule())
            await tx.add_event(target, "wave", _wave_detail(plan, wave))
            placed.append(PlacedWave(target, wave))
        if skipped_to is not None:
            await _keep_skipped(tx, lifecycle, source, plan, group, parent, skipped_to, moved)
    return WaveResult(plan, group, tuple(placed), skipped_to)


def _zone_targets(plan: WavePlan, targets: list[int], skipped_to: int | None) -> dict[str, int]:
    """Where the recipients of each zone key go; the first wave's stay where they are."""
    moves = {key: target for target, wave in zip(targets[1:], plan.waves[1:]) for key in wave.keys}
    if skipped_to is not None and skipped_to != targets[0]:
        moves.update((key, skipped_to) for share in plan.skipped for key in share.keys)
    return moves


async def _new_part(tx: Tx, source: Mailing) -> int:
    """A new, empty mailing with `source`'s message, to take some of its recipients."""
    target = await tx.insert_mailing(
        name=source.name,
        subject=source.subject,
        from_addr=source.from_addr,
        text_body=source.text_body,
        html_body=source.html_body,
        fields=source.fields,
        parent_id=source.id,
    )
    # Every wave keeps the mailing's List-Unsubscribe targets (issue 13).
    await tx.update_mailing(target, unsubscribe_url=source.unsubscribe_url, unsubscribe_mailto=source.unsubscribe_mailto)
    return target


async def _created(tx: Tx, target: int, moved: dict[int, int], source: Mailing, what: str) -> None:
    await tx.add_event(target, "created", f"{moved.get(target, 0):,} recipients from mailing {source.id}, for its {what}")


async def _mark(tx: Tx, mailing_id: int, name: str, group: int, parent: str, zones: list[tuple[str, int]]) -> None:
    await tx.update_mailing(
        mailing_id, name=name, wave_group=group, wave_parent=parent, wave_zones=json.dumps(zones)
    )


def _wave_detail(plan: WavePlan, wave: Wave) -> str:
    asked = wave.schedule().requested  # a day later for a wave moved to the next day
    head = (
        "due at once for zones where the time had passed"
        if wave.offset is None
        else f"{asked:%Y-%m-%d %H:%M} local time, UTC{format_offset(wave.offset)}"
    )
    return f"{head}: {wave.recipients:,} recipients in {listed(wave_zone_names(wave), 10)}"


def wave_zone_names(wave: Wave) -> list[str]:
    return [share.zone for share in wave.zones]


async def _keep_skipped(
    tx: Tx, lifecycle: Lifecycle, source: Mailing, plan: WavePlan, group: int, parent: str, target: int, moved: dict[int, int]
) -> None:
    """With --passed skip: the passed zones' recipients stay together in a draft named so, `target`
    (the mailing itself when every zone had passed)."""
    if target == source.id:
        if source.state is MailingState.SCHEDULED:
            await lifecycle.unschedule_in(tx, target, "every recipient's time had passed; kept as a draft")
    else:
        await _created(tx, target, moved, source, "zones where the time had passed")
    count = sum(share.recipients for share in plan.skipped)
    name = f"{parent} [skipped, time passed: {_zones(len(plan.skipped))}]"
    await _mark(tx, target, name, group, parent, [(share.zone, share.recipients) for share in plan.skipped])
    await tx.add_event(
        target,
        "skipped",
        f"{wall_minute(plan.requested)} had passed in {listed([s.zone for s in plan.skipped], 10)}: "
        f"{count:,} recipients kept here as a draft, not scheduled",
    )


async def schedule_single(
    store: Store, lifecycle: Lifecycle, mailing_id: int, local: datetime, tz: str, now: datetime
) -> tuple[int, Resolved]:
    """Schedule at one wall time in one zone; a scheduled wave brings its whole group back into
    one mailing first (the group's Set Schedule without local time). Returns (mailing, instant)."""
    resolved = resolve(local, tz)
    if resolved.utc <= now:
        raise UserError(f"{wall_minute(local)} in {tz} is in the past; choose a later time")
    mailing = await store.mailing(mailing_id)
    members = await grouped_with(store, mailing)
    async with store.write() as tx:
        members = await _current_members(tx, members)
        for member in members:
            target_state(member, Action.SCHEDULE, any_sending=False)
        anchor = await _merge(tx, lifecycle, members)
        await lifecycle.schedule_in(tx, anchor, resolved)
        await _leave_group(tx, anchor, mailing)
    return anchor, resolved


async def _leave_group(tx: Tx, mailing_id: int, was: Mailing) -> None:
    """The mailing is one mailing again: the schedule's own name back, no wave columns."""
    if was.wave_group is None:
        return
    name = _parent_name(was) if was.state is MailingState.SCHEDULED else was.name
    await tx.update_mailing(mailing_id, name=name, wave_group=None, wave_parent=None, wave_zones=None)


async def _act_on_group(
    store: Store,
    lifecycle: Lifecycle,
    mailing_id: int,
    action: Action,
    alone: Callable[[int], Awaitable[object]],
    finish: Callable[[Tx, int, int], Awaitable[None]],
) -> tuple[int, int]:
    """`action` on a mailing; on a scheduled wave, on every scheduled wave of its group, checked
    each (the seed's rules apply to every wave), merged into one mailing that `finish` acts on.
    Returns (the mailing acted on, how many waves it was)."""
    mailing = await store.mailing(mailing_id)
    members = await grouped_with(store, mailing)
    if len(members) == 1 and mailing.wave_group is None:
        await alone(mailing_id)
        return mailing_id, 1
    async with store.write() as tx:
        members = await _current_members(tx, members)
        any_sending = await tx.any_sending()
        for member in members:
            target_state(member, action, any_sending=any_sending)
        anchor = await _merge(tx, lifecycle, members)
        await _leave_group(tx, anchor, mailing)
        await finish(tx, anchor, len(members))
    return anchor, len(members)


async def cancel_schedule(store: Store, lifecycle: Lifecycle, mailing_id: int) -> tuple[int, int]:
    """Cancel a schedule; a scheduled wave cancels its whole group, which becomes one draft again.

    The seed's rule applies to each wave: refused while any mailing is being sent. Returns
    (the draft's id, how many waves were cancelled)."""

    async def finish(tx: Tx, anchor: int, waves: int) -> None:
        await lifecycle.unschedule_in(tx, anchor, f"the local-time schedule ({waves} waves) was cancelled; kept as one draft")

    return await _act_on_group(store, lifecycle, mailing_id, Action.UNSCHEDULE, lifecycle.unschedule, finish)


async def send_group_now(store: Store, lifecycle: Lifecycle, mailing_id: int) -> tuple[int, int]:
    """Send now; a scheduled wave brings its whole group back into one mailing that joins the
    queue. Returns (the queued mailing's id, how many waves it was)."""

    async def finish(tx: Tx, anchor: int, waves: int) -> None:
        await lifecycle.send_now_in(tx, anchor)

    return await _act_on_group(store, lifecycle, mailing_id, Action.SEND_NOW, lifecycle.send_now, finish)
