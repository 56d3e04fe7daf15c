"""Scheduling a mailing: the one use case behind `mailtower schedule` and the dashboard's
Set Schedule.

Either at a wall time in one zone, or (`local_time`) at that wall time in each recipient's own
zone: then the recipients are grouped into waves by the instant their zone gives (core/waves.py;
recipients without a zone use `tz`), and zones where the time has passed need a `passed`
choice. A scheduled wave stands for its whole local-time schedule: scheduling it again acts on
every wave of it. The result says which mailings were scheduled, at which instants, and what
the person should be warned about (gaps and folds, one line per kind); each interface words it
in its own way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .errors import UserError
from .lifecycle import Lifecycle
from .store import Store
from .timezones import Resolved, reversed_sign_note, utcnow
from .waves import Passed, Wave, WavePlan, schedule_single, schedule_waves


@dataclass(frozen=True, slots=True)
class ScheduledMailing:
    mailing_id: int
    resolved: Resolved  # the zone, the wall time in effect and the UTC instant (a wave: its stored zone)
    wave: Wave | None = None  # for a local-time schedule: the zones and recipients of this wave


@dataclass(frozen=True, slots=True)
class ScheduleResult:
    requested: datetime  # the wall time asked for
    local_time: bool  # grouped by the instant of each recipient's zone
    mailings: tuple[ScheduledMailing, ...]  # earliest first
    warnings: tuple[str, ...] = ()  # one human line per kind of adjustment (a gap, a fold)
    plan: WavePlan | None = None  # local time: the waves as planned
    skipped_id: int | None = None  # local time with Passed.SKIP: the draft keeping those recipients
    notes: tuple[str, ...] = ()  # facts worth a second look, not warnings (an Etc/GMT zone's reversed sign)

    @property
    def mailing_ids(self) -> tuple[int, ...]:
        return tuple(m.mailing_id for m in self.mailings)


async def schedule_mailing(
    store: Store,
    lifecycle: Lifecycle,
    mailing_id: int,
    local: datetime,
    tz: str | None,
    local_time: bool,
    passed: Passed | None = None,
    now: datetime | None = None,
) -> ScheduleResult:
    """Schedule `mailing_id` at wall time `local` in zone `tz`, or in each recipient's zone.

    Refuses (UserError, nothing changed) a time in the past, an unknown zone, a mailing that
    cannot be scheduled now, a single-zone schedule without a zone, and a local-time schedule
    where the time has passed in some zones unless `passed` says what to do with them."""
    now = now or utcnow()
    # "Etc/GMT-3" is UTC+3: a person who typed it may have meant the opposite.
    sign = reversed_sign_note(tz) if tz else None
    notes = (sign,) if sign else ()
    if local_time:
        done = await schedule_waves(store, lifecycle, mailing_id, local, tz, now, passed)
        scheduled = tuple(ScheduledMailing(p.mailing_id, p.wave.schedule(), p.wave) for p in done.waves)
        return ScheduleResult(local, True, scheduled, done.plan.warnings(), done.plan, done.skipped_id, notes)
    if not tz:
        raise UserError("scheduling needs a time zone (or local time, to use each recipient's zone)")
    if passed is not None:
        raise UserError("--passed applies to a schedule in each recipient's zone (--local-time) only")
    target, resolved = await schedule_single(store, lifecycle, mailing_id, local, tz, now)
    warnings = (resolved.warning,) if resolved.warning else ()
    return ScheduleResult(local, False, (ScheduledMailing(target, resolved),), warnings, notes=notes)
