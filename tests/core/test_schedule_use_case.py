"""The schedule use case (core/scheduling.py) behind `mailtower schedule` and the dashboard's
Set Schedule: one zone, or split by recipient zone, with the warnings for wall times that
do not exist (a spring-forward gap)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from mailtower.core.domain import MailingState, Section
from mailtower.core.errors import UserError
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.operations import Draft, create_mailing
from mailtower.core.scheduling import ScheduleResult, schedule_mailing
from mailtower.core.store import Store, open_store

@pytest.fixture
def db(db_target):
    """Every test here runs on SQLite and on PostgreSQL (issue 15)."""
    return db_target

from tests.helpers import recipients, write_csv

ZONES = ["Europe/Berlin", "America/New_York", "Asia/Kathmandu"]
GAP = datetime(2031, 3, 30, 2, 30)  # Berlin's clocks jump from 02:00 to 03:00 that night; not elsewhere
BERLIN_GAP = "2031-03-30 02:30 does not exist in Europe/Berlin (clocks jump forward 1 h); using 03:30 CEST (+02:00)"


async def new_mailing(store: Store, tmp_path: Path, zones: list[str]) -> int:
    rows = [dict(r, tz=zones[i % len(zones)]) for i, r in enumerate(recipients(12))]
    people = write_csv(tmp_path / "people.csv", rows)
    draft = Draft(name="launch", subject="Hi", from_addr="news@example.org", text="Hello", html=None)
    mailing_id, _ = await create_mailing(store, draft, people, lambda row: None)
    return mailing_id


async def schedule(db: Path, tmp_path: Path, zones: list[str], local: datetime, tz: str | None, local_time: bool) -> tuple[ScheduleResult, Store]:
    store = await open_store(db)
    mailing_id = await new_mailing(store, tmp_path, zones)
    return await schedule_mailing(store, Lifecycle(store), mailing_id, local, tz, local_time), store


async def test_one_zone_in_a_spring_forward_gap(tmp_path: Path, db: Path) -> None:
    result, store = await schedule(db, tmp_path, [""], GAP, "Europe/Berlin", False)
    try:
        (only,) = result.mailings
        assert not result.local_time and result.requested == GAP
        assert only.resolved.tz == "Europe/Berlin"
        assert only.resolved.effective == datetime(2031, 3, 30, 3, 30)
        assert only.resolved.utc == datetime(2031, 3, 30, 1, 30, tzinfo=timezone.utc)
        assert result.warnings == (BERLIN_GAP,)
        stored = await store.mailing(only.mailing_id)
        assert stored.state is MailingState.SCHEDULED and stored.schedule is not None
        assert stored.schedule.utc == only.resolved.utc and stored.schedule.tz == "Europe/Berlin"
    finally:
        await store.close()


async def test_local_time_splits_by_zone_and_warns_only_where_the_time_is_missing(tmp_path: Path, db: Path) -> None:
    result, store = await schedule(db, tmp_path, ZONES, GAP, None, True)
    try:
        assert result.local_time and len(result.mailings) == 3
        by_zone = {m.resolved.tz: m for m in result.mailings}
        assert set(by_zone) == set(ZONES)
        assert by_zone["America/New_York"].resolved.utc == datetime(2031, 3, 30, 6, 30, tzinfo=timezone.utc)
        assert by_zone["Asia/Kathmandu"].resolved.utc == datetime(2031, 3, 29, 20, 45, tzinfo=timezone.utc)
        assert result.warnings == (BERLIN_GAP,)  # one line per kind (issue 14); one zone: its own words
        # The result names exactly the mailings now scheduled, each at its instant.
        scheduled = {m.id: m for m in await store.mailings(Section.SCHEDULED)}
        assert set(scheduled) == set(result.mailing_ids)
        for item in result.mailings:
            stored = scheduled[item.mailing_id].schedule
            assert stored is not None and (stored.tz, stored.utc) == (item.resolved.tz, item.resolved.utc)
        assert sum(m.total for m in scheduled.values()) == 12
    finally:
        await store.close()


@pytest.mark.parametrize(
    "local, tz, local_time, words",
    [
        (GAP, None, False, "time zone"),
        (GAP, "", False, "time zone"),
        (datetime(2001, 1, 1, 9, 0), "Europe/Berlin", False, "in the past"),
        (datetime(2001, 1, 1, 9, 0), None, True, "in the past"),
        (GAP, "Mars/Olympus", False, "Mars/Olympus"),
    ],
)
async def test_a_refused_schedule_changes_nothing(
    tmp_path: Path, db: Path, local: datetime, tz: str | None, local_time: bool, words: str
) -> None:
    store = await open_store(db)
    try:
        mailing_id = await new_mailing(store, tmp_path, ZONES)
        with pytest.raises(UserError, match=words):
            await schedule_mailing(store, Lifecycle(store), mailing_id, local, tz, local_time)
        mailings = [m for ms in (await store.sections()).values() for m in ms]
        assert [(m.id, m.state, m.total) for m in mailings] == [(mailing_id, MailingState.DRAFT, 12)]
    finally:
        await store.close()
