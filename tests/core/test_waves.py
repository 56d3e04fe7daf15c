"""Local-time schedules as waves by instant (issue 14): one scheduled mailing per instant,
every recipient in exactly one wave, an explicit rule for zones where the time has passed,
and the waves of one schedule acted on together.

A frozen clock (`now=`) decides what has passed; the databases are real SQLite files and the
CLI runs in-process as a person would run it."""

from __future__ import annotations

import sqlite3
import zoneinfo
from collections import Counter
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path

import pytest

from mailtower.core.domain import MailingState, Section
from mailtower.core.errors import RefusedTransition, UserError
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.operations import Draft, create_mailing
from mailtower.core.scheduling import ScheduleResult, schedule_mailing
from mailtower.core.store import SCHEMA_VERSION, Store, open_store
from mailtower.core.timezones import is_valid_zone
from mailtower.core.waves import Passed, cancel_schedule, listed, plan_waves, send_group_now
from tests.helpers import Cli, write_csv
from tests.pg_server import connect


@pytest.fixture
def db(db_target):
    """Every test here runs on SQLite and on PostgreSQL (issue 15), except those marked SQLite-only."""
    return db_target

UTC = timezone.utc
NOW = datetime(2027, 1, 20, 0, 0, tzinfo=UTC)  # the frozen clock of most cases here
NINE = datetime(2027, 1, 20, 9, 0)
# Kiritimati (+14) and Auckland (+13 in January) are past 09:00 on the 20th at midnight UTC.
MIXED = {"Pacific/Kiritimati": 2, "Pacific/Auckland": 1, "Europe/Berlin": 3, "America/New_York": 1, "": 2}
REFUSAL = (
    "2027-01-20 09:00 is already in the past in 2 zones (Pacific/Auckland and Pacific/Kiritimati) for 3 "
    "recipients; say what happens to them: --passed skip (keep them in a draft), --passed now (send to them "
    "at once), --passed next-day (the same time the next day in their zone); nothing was changed"
)


def tzdata_zone(name: str) -> zoneinfo.ZoneInfo:
    with resources.files("tzdata.zoneinfo").joinpath(*name.split("/")).open("rb") as handle:
        return zoneinfo.ZoneInfo.from_file(handle, key=name)


def people(zones: dict[str, int]) -> list[dict[str, str]]:
    rows, i = [], 0
    for zone, n in zones.items():
        for _ in range(n):
            rows.append({"email": f"user{i}@example.com", "name": f"User {i}", "tz": zone})
            i += 1
    return rows


async def new_mailing(store: Store, tmp_path: Path, zones: dict[str, int], name: str = "launch") -> int:
    path = write_csv(tmp_path / f"{name}.csv", people(zones))
    draft = Draft(name=name, subject="Hi", from_addr="news@example.org", text="Hello", html=None)
    mailing_id, _ = await create_mailing(store, draft, path, lambda row: None)
    return mailing_id


async def schedule(
    store: Store, mailing_id: int, local: datetime = NINE, tz: str | None = "UTC", passed: Passed | None = None,
    now: datetime = NOW,
) -> ScheduleResult:
    return await schedule_mailing(store, Lifecycle(store), mailing_id, local, tz, True, passed, now=now)


def placement(db: Path) -> dict[str, tuple[int, str, str, str | None]]:
    """email -> (mailing id, mailing state, mailing name, the recipient's tz) for every recipient."""
    with connect(db) as conn:
        rows = conn.execute(
            "SELECT r.email, m.id, m.state, m.name, r.tz FROM recipients r JOIN mailings m ON m.id = r.mailing_id"
        ).fetchall()
    return {email: (mid, state, name, tz) for email, mid, state, name, tz in rows}


def dump(db: Path) -> list[tuple]:
    with connect(db) as conn:
        return [
            *conn.execute("SELECT * FROM mailings ORDER BY id"),
            *conn.execute("SELECT * FROM recipients ORDER BY id"),
            *conn.execute("SELECT * FROM events ORDER BY id"),
            *conn.execute("SELECT * FROM wave_groups ORDER BY id"),
        ]


@pytest.fixture
async def store(db_target):
    opened = await open_store(db_target)
    yield opened
    await opened.close()


# --- a whole planet ---------------------------------------------------------------------------


async def test_one_recipient_in_every_zone_gives_one_wave_per_distinct_instant(store: Store, tmp_path: Path) -> None:
    zones = sorted(z for z in zoneinfo.available_timezones() if is_valid_zone(z))
    assert len(zones) > 400
    mailing_id = await new_mailing(store, tmp_path, {z: 1 for z in zones})
    # No zone changes its clocks on 2027-01-20, so plain zoneinfo arithmetic is the independent
    # answer (with the tzdata package's rules: the system's copy may be older, e.g. for Morocco).
    instants = {z: datetime(2027, 1, 20, 9, 0, tzinfo=tzdata_zone(z)).astimezone(UTC) for z in zones}
    result = await schedule(store, mailing_id, now=datetime(2027, 1, 19, 0, 0, tzinfo=UTC))

    assert len(result.mailings) == len(set(instants.values()))
    print(f"{len(zones)} zones (tzdata), {len(result.mailings)} waves")  # the figure for the closing note
    assert result.warnings == ()
    # Every recipient in exactly one wave, and every wave holds exactly the zones of its instant.
    placed = placement(store.path)
    assert len(placed) == len(zones)
    scheduled = {m.id: m for m in await store.mailings(Section.SCHEDULED)}
    assert set(scheduled) == set(result.mailing_ids)
    for mid, _, _, tz in placed.values():
        assert scheduled[mid].schedule is not None and scheduled[mid].schedule.utc == instants[tz]
    assert sum(m.total for m in scheduled.values()) == len(zones)
    by_wave = Counter(mid for mid, _, _, _ in placed.values())
    for item in result.mailings:
        wave = item.wave
        assert wave is not None and by_wave[item.mailing_id] == len(wave.zones) == wave.recipients
        assert scheduled[item.mailing_id].name == f"launch [{wave.label}]"
        assert scheduled[item.mailing_id].wave_parent == "launch"
    assert len({m.wave_group for m in scheduled.values()}) == 1
    # The stored zone of each wave gives the wave's instant again (what tzdata upgrades re-derive).
    assert all(m.schedule and m.schedule.tz in zones for m in scheduled.values())


# --- zones where the time has passed ----------------------------------------------------------


async def test_passed_zones_are_refused_in_one_line_and_nothing_changes(store: Store, tmp_path: Path) -> None:
    mailing_id = await new_mailing(store, tmp_path, MIXED)
    before = dump(store.path)
    with pytest.raises(UserError) as refused:
        await schedule(store, mailing_id)
    assert str(refused.value) == REFUSAL
    assert dump(store.path) == before


def test_a_long_list_of_passed_zones_is_abbreviated() -> None:
    zones = {z: 1 for z in ["Pacific/Kiritimati", "Pacific/Tongatapu", "Pacific/Auckland", "Pacific/Fiji", "Asia/Tokyo"]}
    plan = plan_waves(zones, NINE, None, datetime(2027, 1, 20, 1, 0, tzinfo=UTC))
    refusal = plan.refusal()
    assert refusal is not None and "\n" not in refusal
    assert "in 5 zones (Asia/Tokyo, Pacific/Auckland, Pacific/Fiji and 2 more) for 5 recipients" in refusal
    assert listed(["a", "b", "c", "d"]) == "a, b, c and d"  # "and 1 more" would say no less


async def test_passed_skip_keeps_them_in_a_draft_named_so(store: Store, tmp_path: Path) -> None:
    mailing_id = await new_mailing(store, tmp_path, MIXED)
    result = await schedule(store, mailing_id, passed=Passed.SKIP)
    assert [(m.wave.label, m.wave.recipients, m.wave.utc) for m in result.mailings if m.wave] == [
        ("UTC+01:00, 1 zone", 3, datetime(2027, 1, 20, 8, 0, tzinfo=UTC)),
        ("UTC+00:00, 1 zone", 2, datetime(2027, 1, 20, 9, 0, tzinfo=UTC)),
        ("UTC-05:00, 1 zone", 1, datetime(2027, 1, 20, 14, 0, tzinfo=UTC)),
    ]
    assert result.skipped_id is not None
    draft = await store.mailing(result.skipped_id)
    assert (draft.state, draft.name, draft.total) == (MailingState.DRAFT, "launch [skipped, time passed: 2 zones]", 3)
    assert await store.wave_zones(draft.id) == [("Pacific/Auckland", 1), ("Pacific/Kiritimati", 2)]
    placed = placement(store.path)
    assert len(placed) == 9
    assert {tz for mid, _, _, tz in placed.values() if mid == draft.id} == {"Pacific/Auckland", "Pacific/Kiritimati"}


async def test_passed_now_makes_a_wave_due_at_once(store: Store, tmp_path: Path) -> None:
    mailing_id = await new_mailing(store, tmp_path, MIXED)
    result = await schedule(store, mailing_id, passed=Passed.NOW)
    first = result.mailings[0]
    assert first.wave is not None and first.wave.offset is None
    assert (first.wave.label, first.wave.recipients, first.wave.utc) == ("now, 2 zones", 3, NOW)
    stored = await store.mailing(first.mailing_id)
    assert stored.name == "launch [now, 2 zones]" and stored.schedule is not None
    assert (stored.schedule.utc, stored.schedule.tz) == (NOW, "UTC")
    assert len(result.mailings) == 4 and result.skipped_id is None
    assert sum(m.wave.recipients for m in result.mailings if m.wave) == 9


async def test_passed_next_day_uses_the_same_wall_time_a_day_later_in_their_zone(store: Store, tmp_path: Path) -> None:
    # Kiritimati's 09:00 tomorrow is Honolulu's 09:00 today: one wave.
    mailing_id = await new_mailing(store, tmp_path, {**MIXED, "Pacific/Honolulu": 4})
    result = await schedule(store, mailing_id, passed=Passed.NEXT_DAY)
    waves = [(m.wave.utc, m.wave.label, [s.zone for s in m.wave.zones]) for m in result.mailings if m.wave]
    assert waves == [
        (datetime(2027, 1, 20, 8, 0, tzinfo=UTC), "UTC+01:00, 1 zone", ["Europe/Berlin"]),
        (datetime(2027, 1, 20, 9, 0, tzinfo=UTC), "UTC+00:00, 1 zone", ["UTC"]),
        (datetime(2027, 1, 20, 14, 0, tzinfo=UTC), "UTC-05:00, 1 zone", ["America/New_York"]),
        (datetime(2027, 1, 20, 19, 0, tzinfo=UTC), "UTC-10:00, 2 zones", ["Pacific/Honolulu", "Pacific/Kiritimati"]),
        # Review: Auckland's own offset, said to be the next day (it was "UTC-11:00", Pago Pago's).
        (datetime(2027, 1, 20, 20, 0, tzinfo=UTC), "UTC+13:00, 1 zone, next day", ["Pacific/Auckland"]),
    ]
    auckland = await store.mailing(result.mailings[-1].mailing_id)
    assert auckland.schedule is not None
    assert (auckland.schedule.local, auckland.schedule.tz) == (datetime(2027, 1, 21, 9, 0), "Pacific/Auckland")


def test_next_day_still_in_the_past_is_refused() -> None:
    # Review: a time that has passed even a day later has passed at UTC-12 too, and is refused as such.
    with pytest.raises(UserError, match="in the past in every time zone"):
        plan_waves({"Europe/Berlin": 1}, NINE, None, datetime(2027, 1, 22, tzinfo=UTC), Passed.NEXT_DAY)


# --- daylight saving inside a wave ----------------------------------------------------------


async def test_a_gap_zone_joins_the_wave_of_the_instant_it_resolves_to(store: Store, tmp_path: Path) -> None:
    zones = {"Europe/London": 1, "Europe/Berlin": 2, "Europe/Paris": 1, "Africa/Lagos": 1}
    mailing_id = await new_mailing(store, tmp_path, zones)
    result = await schedule(store, mailing_id, datetime(2027, 3, 28, 2, 30), now=datetime(2027, 3, 1, tzinfo=UTC))
    (only,) = result.mailings
    assert only.wave is not None and only.wave.utc == datetime(2027, 3, 28, 1, 30, tzinfo=UTC)
    assert only.wave.label == "UTC+01:00, 4 zones" and only.wave.recipients == 5
    assert result.warnings == (
        "02:30 does not exist in 2 zones that day (the clocks jump forward: Europe/Berlin and Europe/Paris); "
        "their recipients get it with the wave of the time it becomes",
    )
    # The wave is stored in a zone where 02:30 exists: its instant needs no adjusting.
    stored = await store.mailing(only.mailing_id)
    assert stored.schedule is not None and stored.schedule.tz in ("Africa/Lagos", "Europe/London")


async def test_a_fold_zone_joins_the_wave_of_its_first_occurrence(store: Store, tmp_path: Path) -> None:
    zones = {"Europe/Berlin": 1, "Africa/Johannesburg": 1, "Europe/London": 1}
    mailing_id = await new_mailing(store, tmp_path, zones)
    result = await schedule(store, mailing_id, datetime(2027, 10, 31, 2, 30), now=datetime(2027, 10, 1, tzinfo=UTC))
    waves = [(m.wave.utc, [s.zone for s in m.wave.zones]) for m in result.mailings if m.wave]
    assert waves == [
        (datetime(2027, 10, 31, 0, 30, tzinfo=UTC), ["Africa/Johannesburg", "Europe/Berlin"]),
        (datetime(2027, 10, 31, 2, 30, tzinfo=UTC), ["Europe/London"]),
    ]
    assert result.warnings == (
        "2027-10-31 02:30 occurs twice in Europe/Berlin (clocks go back 1 h); using the first, 02:30 CEST (+02:00)",
    )


# --- recipients without a zone ----------------------------------------------------------------


async def test_recipients_without_a_zone_take_tz_and_share_its_wave(store: Store, tmp_path: Path) -> None:
    mailing_id = await new_mailing(store, tmp_path, {"": 3, "Europe/Paris": 2, "Asia/Kolkata": 1})
    with pytest.raises(UserError, match="3 recipients have no zone.*--tz"):
        await schedule(store, mailing_id, tz=None)
    result = await schedule(store, mailing_id, tz="Europe/Berlin")
    waves = [(m.wave.label, m.wave.zone_pairs()) for m in result.mailings if m.wave]
    assert waves == [
        ("UTC+05:30, 1 zone", [("Asia/Kolkata", 1)]),
        ("UTC+01:00, 2 zones", [("Europe/Berlin", 3), ("Europe/Paris", 2)]),
    ]
    placed = placement(store.path)
    berlin_wave = result.mailings[1].mailing_id
    assert {tz for mid, _, _, tz in placed.values() if mid == berlin_wave} == {"", "Europe/Paris"}


# --- the group acts as one --------------------------------------------------------------------


async def test_set_schedule_on_a_wave_replans_the_whole_group(store: Store, tmp_path: Path) -> None:
    mailing_id = await new_mailing(store, tmp_path, {"Europe/Berlin": 2, "Asia/Kolkata": 2, "America/Chicago": 2})
    first = await schedule(store, mailing_id)
    assert len(first.mailings) == 3
    # Again from the last wave, now at one wall time in one zone: one mailing with everybody.
    last = first.mailings[-1].mailing_id
    again = await schedule_mailing(store, Lifecycle(store), last, datetime(2027, 2, 1, 10, 0), "Europe/Berlin", False, now=NOW)
    (only,) = again.mailings
    merged = await store.mailing(only.mailing_id)
    assert (merged.name, merged.total, merged.wave_group) == ("launch", 6, None)
    assert [m.id for m in await store.mailings(Section.SCHEDULED)] == [merged.id]
    # And back to local time from that one mailing: three waves again, six recipients once each.
    third = await schedule(store, merged.id)
    assert len(third.mailings) == 3
    assert Counter(mid for mid, *_ in placement(store.path).values()) == Counter({m: 2 for m in third.mailing_ids})


async def test_cancel_on_a_wave_cancels_the_group_into_one_draft(store: Store, tmp_path: Path) -> None:
    mailing_id = await new_mailing(store, tmp_path, {"Europe/Berlin": 2, "Asia/Kolkata": 3})
    waves = (await schedule(store, mailing_id)).mailing_ids
    kept, count = await cancel_schedule(store, Lifecycle(store), waves[-1])
    assert count == 2
    draft = await store.mailing(kept)
    assert (draft.state, draft.name, draft.total, draft.wave_group) == (MailingState.DRAFT, "launch", 5, None)
    assert not await store.mailings(Section.SCHEDULED)
    assert len(placement(store.path)) == 5


async def test_cancel_of_a_group_is_refused_while_a_mailing_is_sending(store: Store, tmp_path: Path) -> None:
    lifecycle = Lifecycle(store)
    busy = await new_mailing(store, tmp_path, {"UTC": 2}, name="busy")
    await lifecycle.send_now(busy)
    await lifecycle.start(busy)
    mailing_id = await new_mailing(store, tmp_path, {"Europe/Berlin": 2, "Asia/Kolkata": 3})
    waves = (await schedule(store, mailing_id)).mailing_ids
    before = dump(store.path)
    with pytest.raises(RefusedTransition, match="cannot be cancelled while a mailing is being sent"):
        await cancel_schedule(store, lifecycle, waves[0])
    assert dump(store.path) == before


async def test_send_now_on_a_wave_queues_the_whole_group_as_one(store: Store, tmp_path: Path) -> None:
    mailing_id = await new_mailing(store, tmp_path, {"Europe/Berlin": 2, "Asia/Kolkata": 3})
    waves = (await schedule(store, mailing_id)).mailing_ids
    queued, count = await send_group_now(store, Lifecycle(store), waves[1])
    assert count == 2
    (current,) = await store.mailings(Section.CURRENT)
    assert (current.id, current.name, current.total) == (queued, "launch", 5)


# --- the command line -----------------------------------------------------------------------


def test_cli_schedule_in_waves_refuses_passed_zones_then_takes_a_choice(tmp_path: Path, db: Path) -> None:
    cli = Cli(db)
    now = datetime.now(UTC)
    # A wall time that has passed in UTC+14 and is still ahead in UTC and west of it.
    wall = now.replace(tzinfo=None, second=0, microsecond=0) + timedelta(hours=10)
    at = f"{wall:%Y-%m-%d %H:%M}"
    zones = {"Pacific/Kiritimati": 2, "America/Chicago": 1, "": 2}
    path = write_csv(tmp_path / "people.csv", people(zones))
    text = tmp_path / "body.txt"
    text.write_text("Hello", encoding="utf-8")
    mailing_id = cli.ok("new", "--name", "launch", "--subject", "Hi", "--from", "news@example.org",
                        "--text", str(text), "--recipients", str(path)).strip()
    before = dump(db)

    code, out, err = cli("schedule", mailing_id, "--at", at, "--local-time", "--tz", "UTC")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Pacific/Kiritimati" in err and "2 recipients" in err
    assert all(f"--passed {c}" in err for c in ("skip", "now", "next-day"))
    assert dump(db) == before
    code, _, err = cli("schedule", mailing_id, "--at", at, "--tz", "UTC", "--passed", "now")
    assert code == 2 and "--local-time" in err and dump(db) == before

    out = cli.ok("schedule", mailing_id, "--at", at, "--local-time", "--tz", "UTC", "--passed", "skip")
    lines = [line.split("\t") for line in out.strip().splitlines()]
    assert [(offset, zones, people_) for _, offset, _, zones, people_ in lines] == [
        ("UTC+00:00", "1", "2"), ("UTC-06:00", "1", "1"),
    ]
    with connect(db) as conn:
        states = Counter(state for (state,) in conn.execute("SELECT state FROM mailings"))
        draft = conn.execute("SELECT name, total FROM mailings WHERE state = 'draft'").fetchone()
    assert states == Counter({"scheduled": 2, "draft": 1})
    assert draft == ("launch [skipped, time passed: 1 zone]", 2)

    # `unschedule` on one wave cancels the schedule as a whole.
    code, _, err = cli("unschedule", lines[1][0])
    assert code == 0, err
    with connect(db) as conn:
        rows = sorted(conn.execute("SELECT state, name, total FROM mailings"))
    assert rows == [("draft", "launch", 3), ("draft", "launch [skipped, time passed: 1 zone]", 2)]


@pytest.mark.sqlite_only  # SQLite's migrations 1-3; PostgreSQL starts at version 6
async def test_a_database_from_before_waves_is_upgraded_in_place(tmp_path: Path) -> None:
    from mailtower.core.store import MIGRATIONS, _statements

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for version in (1, 2, 3):
            for statement in _statements(MIGRATIONS[version]):
                conn.execute(statement)
        conn.execute("INSERT INTO meta VALUES ('schema_version', '3')")
        conn.execute(
            "INSERT INTO mailings (name, subject, from_addr, state, created_at, updated_at) "
            "VALUES ('old one', 'Hi', 'a@example.org', 'draft', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')"
        )
    store = await Store.open(path)
    try:
        (old,) = await store.mailings()
        assert (old.name, old.wave_group, old.wave_parent) == ("old one", None, None)
        assert await store.meta("schema_version") == str(SCHEMA_VERSION)
    finally:
        await store.close()
