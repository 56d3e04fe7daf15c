"""Schedules end to end: tzdata changes, missed due times, delivery in each recipient's zone."""

from __future__ import annotations

import json
import pytest
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

from mailtower.core.sink import Sink
from mailtower.core.store import iso
from mailtower.core.timezones import tzdata_version
from tests.helpers import Cli, recipients, write_csv
from tests.pg_server import connect


@pytest.fixture
def db(db_target):
    """Every test here runs on SQLite and on PostgreSQL (issue 15), except those marked SQLite-only."""
    return db_target


def status(cli: Cli) -> dict:
    return json.loads(cli.ok("status", "--json"))


def new(cli: Cli, tmp_path: Path, body: Path, rows: list[dict[str, str]], *extra: str, name: str = "m") -> int:
    people = write_csv(tmp_path / f"{name}.csv", rows)
    return int(cli.ok("new", "--name", name, "--subject", "Hi {{ name }}", "--from", "news@example.org",
                      "--text", str(body), "--recipients", str(people), *extra))


def set_columns(db: Path, mailing_id: int, **columns: object) -> None:
    with connect(db) as conn:
        for key, value in columns.items():
            conn.execute(f"UPDATE mailings SET {key} = ? WHERE id = ?", (value, mailing_id))


def test_new_tzdata_version_rederives_future_schedules(cli: Cli, tmp_path: Path, body: Path, db: Path) -> None:
    rows = [dict(r, code="1") for r in recipients(2)]
    mailing_id = new(cli, tmp_path, body, rows, "--at", "2031-07-01 09:00", "--tz", "Europe/Berlin")
    # As if it had been scheduled under older data that put Berlin an hour off.
    set_columns(db, mailing_id, send_at_utc="2031-07-01T08:00:00Z", tzdata_version="2020a")
    # Any command (and the sender at start) derives the instant again under the new data.
    item = status(cli)["scheduled"][0]
    assert item["send_at_utc"] == "2031-07-01T07:00:00Z"
    assert item["send_at_local"] == "2031-07-01 09:00" and item["tz"] == "Europe/Berlin"
    with connect(db) as conn:
        assert conn.execute("SELECT tzdata_version FROM mailings WHERE id = ?", (mailing_id,)).fetchone()[0] == tzdata_version()
        details = [d for k, d in conn.execute("SELECT kind, detail FROM events WHERE mailing_id = ?", (mailing_id,)) if k == "rescheduled"]
    assert details and "2020a" in details[0] and tzdata_version() in details[0]


def test_sender_down_across_due_time_inside_and_beyond_grace(cli: Cli, sink: Sink, tmp_path: Path, body: Path, db: Path) -> None:
    rows = lambda start: [dict(r, code="1") for r in recipients(3, start=start)]  # noqa: E731
    inside = new(cli, tmp_path, body, rows(0), "--at", "2031-07-01 09:00", "--tz", "UTC", name="inside")
    beyond = new(cli, tmp_path, body, rows(100), "--at", "2031-07-01 09:00", "--tz", "UTC", name="beyond")
    now = datetime.now(timezone.utc)
    # The sender was not running when these came due: 20 minutes ago, and a day ago.
    set_columns(db, inside, send_at_utc=iso(now - timedelta(minutes=20)), tzdata_version=tzdata_version())
    set_columns(db, beyond, send_at_utc=iso(now - timedelta(days=1)), tzdata_version=tzdata_version())

    cli.ok("run", "--until-idle")

    doc = status(cli)
    assert [m["id"] for m in doc["inactive"]] == [inside]
    assert doc["inactive"][0]["state"] == "completed"
    assert [(m["id"], m["state"], m["missed"]) for m in doc["scheduled"]] == [(beyond, "scheduled", True)]
    assert "missed" in doc["scheduled"][0]["last_error"]
    assert set(sink.received()) == {f"user{i}@example.com" for i in range(3)}
    assert "missed" in cli.ok("status")  # visible in the plain listing too (as MISSED)

    # The operator decides: send now.
    cli.ok("send-now", str(beyond))
    cli.ok("run", "--until-idle")
    assert len(sink.received()) == 6


def test_local_time_splits_by_recipient_zone(cli: Cli, tmp_path: Path, body: Path, db: Path) -> None:
    zones = ["Europe/Berlin", "America/New_York", "Asia/Kathmandu"]
    rows = [dict(r, code="1", tz=zones[i % 3]) for i, r in enumerate(recipients(30))]
    rows[0]["tz"] = ""  # no zone: uses --tz
    mailing_id = new(cli, tmp_path, body, rows, name="launch")
    code, _, err = cli("schedule", str(mailing_id), "--at", "2031-07-01 09:00", "--local-time")
    assert code == 2 and "--tz" in err

    out = cli.ok("schedule", str(mailing_id), "--at", "2031-07-01 09:00", "--local-time", "--tz", "Europe/Berlin")
    assert len(out.strip().splitlines()) == 3

    scheduled = status(cli)["scheduled"]
    assert len(scheduled) == 3
    by_zone = {m["tz"]: m for m in scheduled}
    assert set(by_zone) == set(zones)
    assert {m["send_at_local"] for m in scheduled} == {"2031-07-01 09:00"}
    assert by_zone["Europe/Berlin"]["send_at_utc"] == "2031-07-01T07:00:00Z"
    assert by_zone["America/New_York"]["send_at_utc"] == "2031-07-01T13:00:00Z"
    assert by_zone["Asia/Kathmandu"]["send_at_utc"] == "2031-07-01T03:15:00Z"
    # One wave per instant (issue 14), named by its offset and zone count.
    offsets = {"Europe/Berlin": "+02:00", "America/New_York": "-04:00", "Asia/Kathmandu": "+05:45"}
    assert all(m["name"] == f"launch [UTC{offsets[m['tz']]}, 1 zone]" for m in scheduled)
    assert sum(m["total"] for m in scheduled) == 30
    # Every recipient exactly once across the three, each in the mailing for its zone.
    with connect(db) as conn:
        placed = Counter(e for (e,) in conn.execute("SELECT email FROM recipients"))
        pairs = set(conn.execute(
            "SELECT r.tz, m.tz FROM recipients r JOIN mailings m ON m.id = r.mailing_id WHERE r.tz != ''"
        ))
    assert len(placed) == 30 and set(placed.values()) == {1}
    assert all(rtz == mtz for rtz, mtz in pairs)
