"""Small command-line faults: signed and odd --canary values, and the schedule `new` confirms
when the wall time asked for falls in a daylight-saving gap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import Cli, recipients, write_csv


def new_args(tmp_path: Path, *extra: str) -> list[str]:
    body = tmp_path / "body.txt"
    body.write_text("Hello\n", encoding="utf-8")
    people = write_csv(tmp_path / "people.csv", recipients(3))
    return ["new", "--name", "M", "--subject", "s", "--from", "news@example.org", "--text", str(body),
            "--recipients", str(people), *extra]


def mailing_count(cli: Cli) -> int:
    doc = json.loads(cli.ok("status", "--json"))
    return sum(len(doc[section]) for section in ("current", "scheduled", "inactive"))


@pytest.mark.parametrize("value", [
    "-0%", "-5%", "-5", "-0", "-1e3", "--5", "-x", "-inf%", "-", "-%", "+0", "+0%", "100.0001%", "-q", "--now",
])
def test_every_bad_canary_value_is_one_line_naming_option_and_value(tmp_path: Path, value: str) -> None:
    cli = Cli(tmp_path / "m.db")
    cli.ok(*new_args(tmp_path))  # the database exists, with one mailing
    for command in (new_args(tmp_path, "--canary", value), new_args(tmp_path, f"--canary={value}")):
        code, out, err = cli(*command)
        assert (code, out) == (2, ""), err
        assert err.startswith(f"mailtower: --canary: {value!r} ") and err.count("\n") == 1, err
    assert mailing_count(cli) == 1  # nothing was created


def test_a_good_signed_canary_value_is_still_taken(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "m.db")
    mailing = cli.ok(*new_args(tmp_path, "--canary", "+5%")).strip()
    assert "canary: 5% of the recipients" in cli.ok("breaker", mailing)


def test_new_in_a_spring_forward_gap_confirms_the_time_that_will_be_used(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "m.db")
    code, out, err = cli(*new_args(tmp_path, "--at", "2099-03-08 02:30", "--tz", "America/New_York"))
    assert code == 0, err
    lines = err.splitlines()
    assert lines[0].startswith("mailtower: warning: 2099-03-08 02:30 does not exist in America/New_York")
    assert lines[1].endswith('; scheduled for 2099-03-08 03:30 EDT America/New_York (2099-03-08 07:30 UTC; '
                             'asked for 2099-03-08 02:30, which the clocks skip)'), lines[1]
    # `schedule` says it alike, and a time that happens once reads as before
    mailing = out.strip()
    code, _, err = cli("schedule", mailing, "--at", "2099-03-08 02:30", "--tz", "America/New_York")
    assert code == 0 and err.splitlines()[1].endswith(
        "for 2099-03-08 03:30 EDT America/New_York (2099-03-08 07:30 UTC; asked for 2099-03-08 02:30, "
        "which the clocks skip)"), err
    code, _, err = cli("schedule", mailing, "--at", "2099-03-09 09:00", "--tz", "America/New_York")
    assert code == 0 and err.endswith("for 2099-03-09 09:00 America/New_York (2099-03-09 13:00 UTC)\n"), err
