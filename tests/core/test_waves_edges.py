"""Hostile edges of local-time waves (issue 14, review): tz values nobody should have, zones whose
wall time is in a gap or fold that day, times passed everywhere, recipients added to one wave,
and the counts of a group across re-plans and cancels while a wave is being sent.

Real SQLite files, the CLI in-process, a frozen clock (`now=`) wherever the time matters."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from mailtower.core.errors import RefusedTransition, UserError
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.operations import import_recipients
from mailtower.core.scheduling import schedule_mailing
from mailtower.core.store import Store
from mailtower.core.timezones import _zone_index
from mailtower.core.waves import Passed, cancel_schedule, plan_waves
from mailtower.core.store import open_store
from tests.helpers import Cli, write_csv
from tests.pg_server import connect

@pytest.fixture
def db(db_target):
    """Every test here that takes `db` runs on SQLite and on PostgreSQL (issue 15)."""
    return db_target


from .test_waves import dump, new_mailing, people, placement

UTC = timezone.utc
NOW = datetime(2027, 1, 19, 0, 0, tzinfo=UTC)
NINE = datetime(2027, 1, 20, 9, 0)
EVERY_NAME = sorted(_zone_index()[1])  # every name the zone data loads, aliases included


@pytest.fixture
async def store(db_target):
    opened = await open_store(db_target)
    yield opened
    await opened.close()


def totals(db: Path) -> tuple[int, int]:
    """(recipient rows, the sum of the mailings' totals): both must stay the same."""
    with connect(db) as conn:
        rows = conn.execute("SELECT COUNT(*) FROM recipients").fetchone()[0]
        total = conn.execute("SELECT COALESCE(SUM(total), 0) FROM mailings").fetchone()[0]
    return int(rows), int(total)


# --- tz values nobody should have ------------------------------------------------------------

HOSTILE_ZONES = [
    "europe/paris", "UTC+3", "../../etc/passwd", "posixrules", "localtime", "Factory", "\x1b]0;owned\x07",
    "Europe/Paris\u202e", "A" * 5000, "zone1970.tab", "posix/Europe/Paris", "Europe/",
]


def test_hostile_tz_values_are_each_rejected_at_import_in_one_escaped_line(tmp_path: Path, db: Path) -> None:
    rows = [{"email": f"u{i}@example.com", "name": "", "tz": tz} for i, tz in enumerate(HOSTILE_ZONES)]
    rows += [{"email": "blank@example.com", "name": "", "tz": "  \t "}, {"email": "ok@example.com", "name": "", "tz": "Asia/Tokyo"}]
    path = write_csv(tmp_path / "people.csv", rows)
    body = tmp_path / "body.txt"
    body.write_text("Hello", encoding="utf-8")
    code, out, err = Cli(db)("new", "--name", "n", "--subject", "s", "--from", "a@example.org",
                             "--text", str(body), "--recipients", str(path))
    assert code == 0, err
    lines = err.strip().splitlines()
    rejected = [line for line in lines if "unknown time zone" in line]
    assert len(rejected) == len(HOSTILE_ZONES)
    assert not any(ch in err for ch in "\x1b\x07\u202e")
    assert max(len(line) for line in rejected) < 2000  # a 5000-character value is cut short
    # A real zone in other letter case is named in the same line.
    assert any(line.endswith(":2: unknown time zone 'europe/paris'; did you mean Europe/Paris?") for line in rejected)
    # The blank one has no zone: it takes --tz when scheduled.
    with connect(db) as conn:
        assert sorted(conn.execute("SELECT tz FROM recipients")) == [("",), ("Asia/Tokyo",)]


def test_zones_the_data_does_not_know_are_refused_in_one_line_naming_all_of_them() -> None:
    counts = {"Europe/Berlin": 3, "Mars/Olympus": 1, "\x1b[31mred": 1, "B" * 300: 2, "": 1}
    with pytest.raises(UserError) as refused:
        plan_waves(counts, NINE, "UTC", NOW)
    message = str(refused.value)
    assert "\n" not in message and "\x1b" not in message and len(message) < 500
    assert message.startswith("4 recipients have a time zone that the time-zone data")
    assert "'Mars/Olympus'" in message and "'\\x1b[31mred'" in message and "(300 characters)" in message
    assert "without --local-time" in message
    with pytest.raises(UserError, match="^1 recipient has a time zone"):
        plan_waves({"Mars/Olympus": 1}, NINE, "UTC", NOW)


async def test_a_stored_zone_the_data_does_not_know_changes_nothing(store: Store, tmp_path: Path) -> None:
    mailing_id = await new_mailing(store, tmp_path, {"Europe/Berlin": 2, "Asia/Tokyo": 1})
    await store.db.execute("UPDATE recipients SET tz = 'Europe/Atlantis' WHERE tz = 'Asia/Tokyo'")
    await store.db.commit()
    before = dump(store.path)
    with pytest.raises(UserError, match="1 recipient has a time zone .*'Europe/Atlantis'"):
        await schedule_mailing(store, Lifecycle(store), mailing_id, NINE, "UTC", True, now=NOW)
    assert dump(store.path) == before


# --- gaps, folds and date-line skips: every recipient in exactly one wave ---------------------

GAP_AND_FOLD_DAYS = [
    pytest.param(datetime(2011, 12, 30, 9, 0), datetime(2011, 12, 1, tzinfo=UTC), id="Apia-skips-2011-12-30"),
    pytest.param(datetime(2027, 10, 3, 2, 15), datetime(2027, 9, 1, tzinfo=UTC), id="Lord_Howe-30min-gap"),
    pytest.param(datetime(2027, 4, 4, 1, 45), datetime(2027, 3, 1, tzinfo=UTC), id="Lord_Howe-30min-fold"),
    pytest.param(datetime(2018, 11, 4, 0, 30), datetime(2018, 10, 1, tzinfo=UTC), id="Sao_Paulo-midnight-gap"),
    pytest.param(datetime(2019, 2, 16, 23, 30), datetime(2019, 1, 1, tzinfo=UTC), id="Sao_Paulo-fold"),
    pytest.param(datetime(2027, 2, 7, 2, 30), datetime(2027, 1, 1, tzinfo=UTC), id="Casablanca-Ramadan"),
    pytest.param(datetime(2011, 12, 29, 9, 0), datetime(2011, 12, 29, 12, 0, tzinfo=UTC), id="Apia-passed-next-day-is-the-skip"),
]


@pytest.mark.parametrize("local, now", GAP_AND_FOLD_DAYS)
@pytest.mark.parametrize("choice", [Passed.SKIP, Passed.NOW, Passed.NEXT_DAY], ids=lambda c: c.value)
def test_every_name_of_the_zone_data_lands_in_exactly_one_wave(local: datetime, now: datetime, choice: Passed) -> None:
    counts = {zone: 1 for zone in EVERY_NAME}
    plan = plan_waves(counts, local, "UTC", now, choice)
    placed = Counter(s.zone for wave in plan.waves for s in wave.zones) + Counter(s.zone for s in plan.skipped)
    assert placed == Counter(EVERY_NAME)
    assert plan.recipients == len(EVERY_NAME)
    assert all(wave.utc > now for wave in plan.waves if wave.offset is not None)
    assert len({wave.utc for wave in plan.waves}) == len(plan.waves)  # one wave per instant
    assert all("\n" not in line for line in plan.warnings())


# --- recipients added to one wave -------------------------------------------------------------


async def test_importing_into_one_scheduled_wave_is_refused(store: Store, tmp_path: Path) -> None:
    mailing_id = await new_mailing(store, tmp_path, {"Asia/Tokyo": 1, "America/Chicago": 2})
    result = await schedule_mailing(store, Lifecycle(store), mailing_id, NINE, "UTC", True, now=NOW)
    chicago = result.mailing_ids[-1]
    late = write_csv(tmp_path / "late.csv", people({"Asia/Tokyo": 0}) + [{"email": "late@example.com", "name": "", "tz": "Asia/Tokyo"}])
    before = dump(store.path)
    with pytest.raises(UserError) as refused:
        await import_recipients(store, chicago, late, lambda row: None)
    assert "one wave of the local-time schedule 'launch'" in str(refused.value)
    assert "mailtower unschedule" in str(refused.value) and "nothing was imported" in str(refused.value)
    assert dump(store.path) == before


def test_cli_import_into_a_wave_says_so_in_one_line(tmp_path: Path, db: Path) -> None:
    cli = Cli(db)
    path = write_csv(tmp_path / "people.csv", people({"Asia/Tokyo": 1, "America/Chicago": 1}))
    body = tmp_path / "body.txt"
    body.write_text("Hello", encoding="utf-8")
    mailing_id = cli.ok("new", "--name", "launch", "--subject", "s", "--from", "a@example.org",
                        "--text", str(body), "--recipients", str(path)).strip()
    out = cli.ok("schedule", mailing_id, "--at", "2099-01-20 09:00", "--local-time", "--tz", "UTC")
    wave = out.strip().splitlines()[-1].split("\t")[0]
    late = write_csv(tmp_path / "late.csv", [{"email": "late@example.com", "name": "", "tz": "Asia/Tokyo"}])
    before = dump(db)
    code, out, err = cli("import", wave, str(late))
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "one wave of the local-time schedule" in err
    assert dump(db) == before
    # The way it says: cancel (one draft again), import, schedule again; then the late one has its own wave.
    cli.ok("unschedule", wave)
    with connect(db) as conn:
        (draft,) = conn.execute("SELECT id FROM mailings WHERE state = 'draft'").fetchone()
    cli.ok("import", str(draft), str(late))
    out = cli.ok("schedule", str(draft), "--at", "2099-01-20 09:00", "--local-time", "--tz", "UTC")
    assert len(out.strip().splitlines()) == 2
    assert totals(db) == (3, 3)


# --- a group's counts across re-plans and cancels while one wave is sent -----------------------


async def test_replan_and_cancel_while_a_wave_is_sending_keep_every_recipient_once(store: Store, tmp_path: Path) -> None:
    lifecycle = Lifecycle(store)
    mailing_id = await new_mailing(store, tmp_path, {"Asia/Tokyo": 2, "Europe/Berlin": 3, "America/Chicago": 4, "": 2})
    first = await schedule_mailing(store, lifecycle, mailing_id, NINE, "UTC", True, now=NOW)
    assert totals(store.path) == (11, 11)
    tokyo = first.mailing_ids[0]
    assert await lifecycle.promote(tokyo, 0)
    await lifecycle.start(tokyo)
    # The group's Set Schedule from a later wave: the wave being sent keeps its own recipients.
    again = await schedule_mailing(store, lifecycle, first.mailing_ids[1], datetime(2027, 1, 21, 10, 0), "UTC", True, now=NOW)
    assert totals(store.path) == (11, 11)
    assert sum(m.wave.recipients for m in again.mailings if m.wave) == 9
    placed = placement(store.path)
    assert Counter(mid for mid, *_ in placed.values())[tokyo] == 2
    before = dump(store.path)
    with pytest.raises(RefusedTransition, match="while a mailing is being sent"):
        await cancel_schedule(store, lifecycle, again.mailing_ids[-1])
    assert dump(store.path) == before
    # Passed in every recipient's zone: skip would schedule nothing, so it is not offered and is refused.
    late = datetime(2027, 1, 22, 16, 0, tzinfo=UTC)
    wall = datetime(2027, 1, 22, 9, 0)
    with pytest.raises(UserError) as refused:
        await schedule_mailing(store, lifecycle, again.mailing_ids[0], wall, "UTC", True, now=late)
    assert "--passed skip" not in str(refused.value) and "--passed next-day" in str(refused.value)
    with pytest.raises(UserError, match="passed in every recipient's zone, so --passed skip would schedule nothing"):
        await schedule_mailing(store, lifecycle, again.mailing_ids[0], wall, "UTC", True, Passed.SKIP, now=late)
    assert dump(store.path) == before
    done = await schedule_mailing(store, lifecycle, again.mailing_ids[0], wall, "UTC", True, Passed.NEXT_DAY, now=late)
    assert sum(m.wave.recipients for m in done.mailings if m.wave) == 9
    assert totals(store.path) == (11, 11)
    assert len(placement(store.path)) == 11


@pytest.mark.parametrize("choice", [None, Passed.SKIP, Passed.NOW, Passed.NEXT_DAY])
def test_a_time_past_in_every_zone_on_earth_is_refused_whatever_the_choice(choice: Passed | None) -> None:
    # 09:00 on the 20th at UTC-12 is 21:00 UTC: a minute later it has passed everywhere.
    with pytest.raises(UserError, match=r"^2027-01-20 09:00 is in the past in every time zone \(even at UTC-12\)"):
        plan_waves({"Asia/Tokyo": 1, "": 1}, NINE, "UTC", datetime(2027, 1, 20, 21, 1, tzinfo=UTC), choice)
    # A minute before, it still exists at UTC-12: then it is the choice that decides.
    plan = plan_waves({"Etc/GMT+12": 1, "Asia/Tokyo": 1}, NINE, "UTC", datetime(2027, 1, 20, 20, 59, tzinfo=UTC), choice)
    assert plan.recipients == 2 or (choice is None and plan.refusal() is not None)


def test_cli_schedule_at_a_time_long_past_changes_nothing(tmp_path: Path, db: Path) -> None:
    cli = Cli(db)
    path = write_csv(tmp_path / "people.csv", people({"Asia/Tokyo": 1, "America/Chicago": 1, "": 1}))
    body = tmp_path / "body.txt"
    body.write_text("Hello", encoding="utf-8")
    mailing_id = cli.ok("new", "--name", "launch", "--subject", "s", "--from", "a@example.org",
                        "--text", str(body), "--recipients", str(path)).strip()
    before = dump(db)
    for passed in ([], ["--passed", "skip"], ["--passed", "now"], ["--passed", "next-day"]):
        code, out, err = cli("schedule", mailing_id, "--at", "2020-01-01 09:00", "--local-time", "--tz", "UTC", *passed)
        assert (code, out, err.count("\n")) == (2, "", 1), err
        assert "in the past in every time zone" in err
    assert dump(db) == before


def test_a_wave_moved_to_the_next_day_is_named_by_its_own_offset_even_into_a_gap() -> None:
    # 02:30 on 2027-03-27: past in London and Berlin at 02:00 UTC; Berlin's next day 02:30 is in the gap.
    plan = plan_waves({"Europe/Berlin": 2, "America/Chicago": 1, "Europe/Lisbon": 1}, datetime(2027, 3, 27, 2, 30), "UTC",
                      datetime(2027, 3, 27, 2, 0, tzinfo=UTC), Passed.NEXT_DAY)
    assert [(w.utc, w.label) for w in plan.waves] == [
        (datetime(2027, 3, 27, 2, 30, tzinfo=UTC), "UTC+00:00, 1 zone"),  # Lisbon: 02:30 is just ahead
        (datetime(2027, 3, 27, 7, 30, tzinfo=UTC), "UTC-05:00, 1 zone"),
        (datetime(2027, 3, 28, 1, 30, tzinfo=UTC), "UTC+01:00, 1 zone, next day"),  # was "UTC-23:00"
    ]
    assert plan.warnings() == (
        "2027-03-28 02:30 does not exist in Europe/Berlin (clocks jump forward 1 h); using 03:30 CEST (+02:00)",
    )
    assert plan.recipients == 4


@pytest.mark.parametrize(
    "typed", ["A" * 100_000, "Europe/Berlin" * 3000, "\x1b[2J" + "x" * 200], ids=["100k", "berlin-x3000", "escape"]
)
def test_a_huge_or_hostile_zone_typed_is_refused_in_one_short_line(typed: str, tmp_path: Path, db: Path) -> None:
    from mailtower.tui.screens.schedule import preview_schedule

    preview = preview_schedule("2099-06-01", "09:00", typed, operator_tz="UTC", now=NOW)
    assert preview.error is not None and len(preview.error) < 200 and "\x1b" not in preview.error
    assert preview.error.startswith("unknown time zone '")
    path = write_csv(tmp_path / "people.csv", people({"Asia/Tokyo": 1, "": 1}))
    body = tmp_path / "body.txt"
    body.write_text("Hello", encoding="utf-8")
    cli = Cli(db)
    mailing_id = cli.ok("new", "--name", "n", "--subject", "s", "--from", "a@example.org",
                        "--text", str(body), "--recipients", str(path)).strip()
    before = dump(db)
    code, out, err = cli("schedule", mailing_id, "--at", "2099-01-20 09:00", "--local-time", "--tz", typed)
    assert (code, out, err.count("\n")) == (2, "", 1) and len(err) < 300, err[:300]
    assert dump(db) == before
