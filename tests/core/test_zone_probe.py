"""Schedules and zones a tester probed: a zone the installed tzdata does not know, offsets and
abbreviations typed for a zone, the wall time status shows in a gap or fold, small wordings."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from mailtower.core.errors import UserError
from mailtower.core.sink import Sink
from mailtower.core.store import iso
from mailtower.core.timezones import load_zone, to_zone, tzdata_version
from tests.helpers import Cli, recipients, write_csv

from .test_scheduling import new, status

LATER = "2031-07-01 09:00"


def set_columns(db: Path, mailing_id: int, **columns: object) -> None:
    with sqlite3.connect(db) as conn:
        for key, value in columns.items():
            conn.execute(f"UPDATE mailings SET {key} = ? WHERE id = ?", (value, mailing_id))


def unknown_zone(db: Path, mailing_id: int, **more: object) -> None:
    """As after a tzdata downgrade that dropped the zone (the tester's reproduction)."""
    set_columns(db, mailing_id, tz="Mars/Olympus", tzdata_version="1999a", **more)


def scheduled(cli: Cli, mailing_id: int) -> dict:
    return next(m for m in status(cli)["scheduled"] if m["id"] == mailing_id)


# ---- 1. a schedule whose zone the installed tzdata does not know -------------------------------


def test_unknown_zone_blocks_nothing_and_is_never_sent(cli: Cli, sink: Sink, tmp_path: Path, body: Path, db: Path) -> None:
    rows = lambda start: [dict(r, code="1") for r in recipients(2, start=start)]  # noqa: E731
    held = new(cli, tmp_path, body, rows(0), "--at", LATER, "--tz", "UTC", name="held")
    other = new(cli, tmp_path, body, rows(10), name="other")
    # Its stored instant is already due: sending at it would be sending at a guessed time.
    unknown_zone(db, held, send_at_utc=iso(datetime.now(timezone.utc) - timedelta(minutes=1)))

    text = cli.ok("status")
    line = next(x for x in text.splitlines() if f"#{held} " in x)
    assert "Mars/Olympus" in line and "CANNOT BE RESOLVED" in line
    assert "'Mars/Olympus' is not in the installed time-zone data" in text
    assert f"mailtower unschedule {held}" in text and f"mailtower schedule {held}" in text
    item = scheduled(cli, held)
    assert item["unresolvable"] is True and item["missed"] is True and item["send_at_effective"] is None
    assert item["tz"] == "Mars/Olympus" and "Mars/Olympus" in item["last_error"]
    assert cli.ok("limits", "--json") and cli.ok("recipients", str(held))

    cli.ok("send-now", str(other))
    code, _, err = cli("run", "--until-idle")
    assert code == 0, err
    assert set(sink.received()) == {"user10@example.com", "user11@example.com"}
    warned = [x for x in err.splitlines() if "Mars/Olympus" in x]
    assert len(warned) == 1 and f'mailing {held} "held"' in warned[0] and "will not be sent" in warned[0]
    assert scheduled(cli, held)["state"] == "scheduled"


def test_unknown_zone_schedule_can_be_set_again_cancelled_sent_or_deleted(cli: Cli, sink: Sink, tmp_path: Path, body: Path, db: Path) -> None:
    mailing_id = new(cli, tmp_path, body, [dict(r, code="1") for r in recipients(2)], "--at", LATER, "--tz", "UTC")
    unknown_zone(db, mailing_id)
    # A scheduled mailing is deleted after its schedule is cancelled, as any other: the usual refusal.
    code, _, err = cli("delete", str(mailing_id))
    assert code == 2 and "unknown time zone" not in err and "only inactive" in err

    cli.ok("schedule", str(mailing_id), "--at", LATER, "--tz", "Europe/Berlin")
    item = scheduled(cli, mailing_id)
    assert (item["tz"], item["missed"], item["unresolvable"], item["last_error"]) == ("Europe/Berlin", False, False, None)
    assert item["send_at_utc"] == "2031-07-01T07:00:00Z"

    unknown_zone(db, mailing_id)
    cli.ok("unschedule", str(mailing_id))
    draft = next(m for m in status(cli)["inactive"] if m["id"] == mailing_id)
    assert draft["state"] == "draft" and draft["last_error"] is None
    cli.ok("delete", str(mailing_id))

    again = new(cli, tmp_path, body, [dict(r, code="1") for r in recipients(2, start=5)], "--at", LATER, "--tz", "UTC", name="again")
    unknown_zone(db, again)
    cli.ok("send-now", str(again))
    cli.ok("run", "--until-idle")
    assert set(sink.received()) == {"user5@example.com", "user6@example.com"}


def test_zone_known_again_releases_the_hold(cli: Cli, tmp_path: Path, body: Path, db: Path) -> None:
    mailing_id = new(cli, tmp_path, body, [dict(r, code="1") for r in recipients(1)], "--at", LATER, "--tz", "UTC")
    unknown_zone(db, mailing_id)
    assert scheduled(cli, mailing_id)["missed"] is True
    set_columns(db, mailing_id, tz="Europe/Berlin")  # a tzdata that knows the zone again
    item = scheduled(cli, mailing_id)
    assert (item["missed"], item["unresolvable"], item["last_error"]) == (False, False, None)
    assert item["send_at_utc"] == "2031-07-01T07:00:00Z"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT tzdata_version FROM mailings WHERE id = ?", (mailing_id,)).fetchone()[0] == tzdata_version()


def test_unknown_zone_of_a_wave_holds_only_that_wave(cli: Cli, tmp_path: Path, body: Path, db: Path) -> None:
    zones = ["Europe/Berlin", "Asia/Tokyo"]
    rows = [dict(r, code="1", tz=zones[i % 2]) for i, r in enumerate(recipients(4))]
    mailing_id = new(cli, tmp_path, body, rows, name="launch")
    out = cli.ok("schedule", str(mailing_id), "--at", LATER, "--local-time", "--tz", "UTC")
    waves = [int(line.split("\t")[0]) for line in out.strip().splitlines()]
    assert len(waves) == 2
    unknown_zone(db, waves[0])

    by_id = {m["id"]: m for m in status(cli)["scheduled"]}
    assert by_id[waves[0]]["unresolvable"] is True and by_id[waves[1]]["unresolvable"] is False
    assert by_id[waves[0]]["missed"] is True and by_id[waves[1]]["missed"] is False
    cli.ok("unschedule", str(waves[0]))  # the whole schedule, as for any wave
    assert status(cli)["scheduled"] == []
    drafts = [m for m in status(cli)["inactive"] if m["state"] == "draft"]
    assert sum(m["total"] for m in drafts) == 4


# ---- 2. offsets and abbreviations typed as a zone ------------------------------------------------


def refusal(name: str) -> str:
    with pytest.raises(UserError) as caught:
        load_zone(name)
    return str(caught.value)


@pytest.mark.parametrize(
    "typed, etc, meaning",
    [
        ("GMT-3", "Etc/GMT+3", "UTC-03:00"),
        ("GMT+3", "Etc/GMT-3", "UTC+03:00"),
        ("UTC+5", "Etc/GMT-5", "UTC+05:00"),
        ("UTC-3", "Etc/GMT+3", "UTC-03:00"),
        ("-03:00", "Etc/GMT+3", "UTC-03:00"),
        ("Etc/GMT-03", "Etc/GMT-3", "UTC+03:00"),  # the Etc spelling keeps its POSIX sign
    ],
)
def test_offsets_suggest_the_etc_zone_with_that_offset(typed: str, etc: str, meaning: str) -> None:
    message = refusal(typed)
    assert f"for {meaning} use {etc} " in message
    assert f"{etc} is {meaning}" in message  # the reversed sign said in words
    suggested = message.split("; ", 1)[1].split(" (", 1)[0]
    assert suggested == f"for {meaning} use {etc}"  # one zone suggested, and no other
    offset = to_zone(datetime(2031, 1, 1, tzinfo=timezone.utc), etc).strftime("%z")
    assert f"UTC{offset[:3]}:{offset[3:]}" == meaning


def test_offsets_without_an_etc_zone_suggest_only_places_at_that_offset() -> None:
    message = refusal("+05:30")
    assert "Asia/Kolkata" in message and "Etc/" not in message.split("no Etc zone")[1]
    assert "UTC" not in refusal("UTC+5").split("use ")[1].split(" ")[0]  # not "UTC", hours off


@pytest.mark.parametrize("abbreviation, expected", [("EDT", "America/New_York"), ("PDT", "America/Los_Angeles"),
                                                    ("CEST", "Europe/Berlin"), ("BST", "Europe/London")])
def test_abbreviations_suggest_zones_that_use_them(abbreviation: str, expected: str) -> None:
    message = refusal(abbreviation)
    suggested = message.split("did you mean ", 1)[1].split(" (", 1)[0].replace(" or ", ", ").split(", ")
    assert suggested[0] == expected
    year = datetime.now(timezone.utc).year
    for zone in suggested:
        used = {to_zone(datetime(y, m, 15, 12, tzinfo=timezone.utc), zone).tzname() for y in (year, year + 1) for m in (1, 7)}
        assert abbreviation in used, (zone, used)


def test_unknown_abbreviation_suggests_no_lookalike() -> None:
    message = refusal("SGT")
    assert "did you mean" not in message and "EST" not in message


def test_etc_gmt_zone_is_accepted_with_a_note_on_its_offset(cli: Cli, tmp_path: Path, body: Path) -> None:
    rows = [dict(r, code="1") for r in recipients(1)]
    code, _, err = cli("new", "--name", "n", "--subject", "s", "--from", "news@example.org", "--text", str(body),
                       "--recipients", str(write_csv(tmp_path / "n.csv", rows)), "--at", LATER, "--tz", "Etc/GMT-3")
    assert code == 0, err
    assert "mailtower: note: Etc/GMT-3 is UTC+03:00 (the POSIX sign is reversed)" in err.splitlines()
    mailing_id = new(cli, tmp_path, body, rows, name="later")
    code, _, err = cli("schedule", str(mailing_id), "--at", LATER, "--tz", "Etc/GMT+5")
    assert code == 0, err
    assert [x for x in err.splitlines() if "note:" in x] == ["mailtower: note: Etc/GMT+5 is UTC-05:00 (the POSIX sign is reversed)"]
    assert scheduled(cli, mailing_id)["send_at_utc"] == "2031-07-01T14:00:00Z"
    code, _, err = cli("schedule", str(mailing_id), "--at", LATER, "--tz", "Europe/Berlin")
    assert code == 0 and "note:" not in err


# ---- 3. status shows the wall time that will happen -----------------------------------------------


def test_status_shows_the_wall_time_of_a_gap_and_a_fold(cli: Cli, tmp_path: Path, body: Path) -> None:
    rows = lambda start: [dict(r, code="1") for r in recipients(1, start=start)]  # noqa: E731
    gap = new(cli, tmp_path, body, rows(0), "--at", "2031-03-09 02:30", "--tz", "America/New_York", name="gap")
    fold = new(cli, tmp_path, body, rows(1), "--at", "2031-11-02 01:30", "--tz", "America/New_York", name="fold")
    plain = new(cli, tmp_path, body, rows(2), "--at", LATER, "--tz", "Europe/Berlin", name="plain")

    lines = {int(x.split("#")[1].split()[0]): x for x in cli.ok("status").splitlines() if "#" in x}
    assert "2031-03-09 03:30 EDT America/New_York (2031-03-09T07:30:00Z; asked for 2031-03-09 02:30, which the clocks skip)" in lines[gap]
    assert "02:30 America/New_York" not in lines[gap]
    assert "2031-11-02 01:30 EDT (first) America/New_York (2031-11-02T05:30:00Z)" in lines[fold]
    assert lines[plain].endswith("  2031-07-01 09:00 Europe/Berlin (2031-07-01T07:00:00Z)")

    items = {m["id"]: m for m in status(cli)["scheduled"]}
    assert items[gap]["send_at_local"] == "2031-03-09 02:30"  # as asked, unchanged
    assert (items[gap]["send_at_effective"], items[gap]["send_at_offset"], items[gap]["send_at_shift"]) == ("2031-03-09 03:30", "-04:00", "gap")
    assert (items[fold]["send_at_effective"], items[fold]["send_at_offset"], items[fold]["send_at_shift"]) == ("2031-11-02 01:30", "-04:00", "fold")
    assert items[fold]["send_at_abbreviation"] == "EDT" and items[fold]["send_at_text"] == "2031-11-02 01:30 EDT (first)"
    assert (items[plain]["send_at_effective"], items[plain]["send_at_shift"]) == ("2031-07-01 09:00", "none")


# ---- 4. small wordings -------------------------------------------------------------------------------


def test_a_tiny_grace_says_how_late_in_seconds(tmp_path: Path, body: Path, sink: Sink, db: Path) -> None:
    cli = Cli(db, sink.port, MAILTOWER_GRACE="1")
    mailing_id = new(cli, tmp_path, body, [dict(r, code="1") for r in recipients(1)], "--at", LATER, "--tz", "UTC")
    set_columns(db, mailing_id, send_at_utc=iso(datetime.now(timezone.utc) - timedelta(seconds=20)), tzdata_version=tzdata_version())
    cli.ok("run", "--until-idle")
    error = scheduled(cli, mailing_id)["last_error"]
    assert "0 min" not in error and "missed its send time by 2" in error and " s while" in error


def test_an_over_long_zone_is_cut_short_in_reject_lines(cli: Cli, tmp_path: Path, body: Path) -> None:
    rows = [dict(r, code="1", tz="Europe/Berlin") for r in recipients(2)]
    rows[1]["tz"] = "Z" * 480
    people = write_csv(tmp_path / "long.csv", rows)
    code, _, err = cli("new", "--name", "n", "--subject", "s", "--from", "news@example.org", "--text", str(body),
                       "--recipients", str(people))
    assert code == 0, err
    rejected = [x for x in err.splitlines() if "unknown time zone" in x]
    assert len(rejected) == 1 and len(rejected[0]) < 200 and "480 characters" in rejected[0]


def test_the_dashboard_says_an_unresolvable_schedule_is_not_a_missed_time(tmp_path: Path) -> None:
    """The Actions menu's line and the pop-up said "missed its send time: send it now", which for
    a zone the data does not know sends a schedule nobody can place."""
    from mailtower.core.lifecycle import Lifecycle
    from mailtower.core.store import Store
    from mailtower.tui.actions import describe

    db = tmp_path / "m.db"
    body = tmp_path / "body.txt"
    body.write_text("Hello\n", encoding="utf-8")
    mailing_id = new(Cli(db), tmp_path, body, recipients(2), "--at", LATER, "--tz", "Europe/Berlin")
    unknown_zone(db, mailing_id)

    async def shown_in_the_menu() -> str:
        store = await Store.open(db)
        try:
            await Lifecycle(store).rederive_schedules(warn=False)
            return describe(await store.mailing(mailing_id))
        finally:
            await store.close()

    import asyncio

    shown = asyncio.run(shown_in_the_menu())
    assert shown == f"Scheduled · time zone unknown to the installed data · id {mailing_id}"
