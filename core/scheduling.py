"""Scheduling a mailing: the one use case behind `mailtower schedule` and the dashboard's
Set Schedule.

Either at a wall time in one zone, or (`local_time`) at that wall time in each recipient's own
zone, which splits the mailing into one scheduled mailing per zone (operations.split_by_zone;
recipients without a zone use `tz`). The result says which mailings were scheduled, at which
instants, and what the person should be warned about (a wall time in a spring-forward gap or
an autumn fold); each interface words it in its own way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .errors import UserError
from .lifecycle import Lifecycle
from .operations import split_by_zone
from .store import Store
from .timezones import Resolved


@dataclass(frozen=True, slots=True)
class ScheduledMailing:
    mailing_id: int
    resolved: Resolved  # the zone, the wall time in effect and the UTC instant


@dataclass(frozen=True, slots=True)
class ScheduleResult:
    requested: datetime  # the wall time asked for
    local_time: bool  # split by recipient zone
    mailings: tuple[ScheduledMailing, ...]  # the original first

    @property
    def warnings(self) -> tuple[tuple[int, str], ...]:
        """(mailing id, one human line) for each mailing whose wall time needed adjusting."""
        return tuple((m.mailing_id, m.resolved.warning) for m in self.mailings if m.resolved.warning)

    @property
    def mailing_ids(self) -> tuple[int, ...]:
        return tuple(m.mailing_id for m in self.mailings)


async def schedule_mailing(
    store: Store, lifecycle: Lifecycle, mailing_id: int, local: datetime, tz: str | None, local_time: bool
) -> ScheduleResult:
    """Schedule `mailing_id` at wall time `local` in zone `tz`, or in each recipient's zone.

    Refuses (UserError, nothing changed) a time in the past, an unknown zone, a mailing that
    cannot be scheduled now, and a single-zone schedule without a zone."""
    if local_time:
        results = await split_by_zone(store, lifecycle, mailing_id, local, tz)
        scheduled = tuple(ScheduledMailing(mid, resolved) for mid, resolved in results)
    else:
        if not tz:
            raise UserError("scheduling needs a time zone (or local time, to use each recipient's zone)")
        scheduled = (ScheduledMailing(mailing_id, await lifecycle.schedule(mailing_id, local, tz)),)
    return ScheduleResult(requested=local, local_time=local_time, mailings=scheduled)
