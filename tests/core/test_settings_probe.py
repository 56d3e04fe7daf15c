"""Settings probe: a limit given when the sender starts is never beaten silently by a faster stored
one; a TOML number too small to tell from 0 is refused like a flag's; a threshold of 0 is said to
be off; rates and timeouts have floors; a setting given twice in one file is refused; a stored
limit with a bad time does not break `limits`; `--canary -0` and two relays of one name."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailtower.core.config import Settings, load_settings
from mailtower.core.errors import UserError
from mailtower.core.limits import read_limits
from mailtower.core.sink import Sink
from mailtower.core.store import Store
from tests.helpers import Cli, recipients, write_csv

from .test_edge_settings import refusal


def load(environ: dict[str, str] | None = None, config: Path | None = None, **flags: object) -> Settings:
    return load_settings(flags, environ=environ or {}, config_path=config or Path(os.devnull))


def new_mailing(cli: Cli, tmp_path: Path, n: int, *extra: str) -> int:
    body = tmp_path / "body.txt"
    body.write_text("Hello\n", encoding="utf-8")
    people = write_csv(tmp_path / "people.csv", recipients(n))
    return int(cli.ok("new", "--name", "M", "--subject", "s", "--from", "news@example.org", "--text", str(body),
                      "--recipients", str(people), *extra).strip())


async def limits_of(db: Path, settings: Settings, stored: dict[str, str]):  # type: ignore[no-untyped-def]
    store = await Store.open(db)
    try:
        await store.put_settings(stored)
        return await read_limits(store, settings)
    finally:
        await store.close()


# ---- 1: an explicit limit and a stored one: the more careful applies, and is said ----------------


@pytest.mark.timeout(120)
def test_an_explicit_rate_and_connections_are_not_beaten_by_faster_stored_ones(tmp_path: Path) -> None:
    """`mailtower --rate 1 run` sent 8 in 0.1 s after `limits --rate 1000` (and 8 connections
    beat --connections 1), with nothing said; the log's start line said x1 then connections: 8."""
    n, rate = 6, 4.0
    with Sink() as sink:
        cli = Cli(tmp_path / "m.db", sink.port)
        cli.ok("limits", "--rate", "1000", "--connections", "8")
        new_mailing(cli, tmp_path, n, "--now")
        log = tmp_path / "run.log"
        started = time.monotonic()
        cli.ok("--rate", f"{rate:g}", "--connections", "1", "run", "--until-idle", "--log", str(log))
        took = time.monotonic() - started
        assert set(sink.received()) == {r["email"] for r in recipients(n)}
        assert {d.connection for d in sink.deliveries} == {1}  # one connection, as --connections said
    assert took >= (n - 1) / rate * 0.8, f"{n} messages in {took:.2f} s at --rate {rate:g}"
    text = log.read_text()
    assert "x1" in text and "connections: 1 (from --connections)" in text, text
    warning = next(line for line in text.splitlines() if "rate: --rate says" in line)
    assert "--rate says 4" in warning and "1000" in warning and "mailtower limits --rate 4" in warning, warning


@pytest.mark.parametrize("source", ["flag", "environment", "toml", "toml [smtp]"])
async def test_every_explicit_source_meets_the_stored_limit_with_the_more_careful_value(
    tmp_path: Path, source: str
) -> None:
    config = tmp_path / "c.toml"
    named = {"flag": ("--rate", "--connections"), "environment": ("MAILTOWER_RATE", "MAILTOWER_SMTP_CONNECTIONS"),
             "toml": (f"{config} rate", f"{config} connections"),
             "toml [smtp]": (f"{config} [smtp] rate", f"{config} [smtp] connections")}[source]

    def settings(rate: str, connections: str) -> Settings:
        if source == "flag":
            return load(rate=rate, connections=connections)
        if source == "environment":
            return load({"MAILTOWER_RATE": rate, "MAILTOWER_SMTP_CONNECTIONS": connections})
        table = "[smtp]\n" if source == "toml [smtp]" else ""
        config.write_text(f"{table}rate = {rate}\nconnections = {connections}\n", encoding="utf-8")
        return load(config=config)

    db = tmp_path / "m.db"
    slower = await limits_of(db, settings("1", "1"), {"limit.rate": "1000", "limit.connections": "8"})
    assert (slower.rate, slower.connections) == (1, 1)
    assert slower.changed_at == {}  # neither stored value is in force
    lines = slower.describe()
    assert f"rate: 1 (from {named[0]})" in lines and f"connections: 1 (from {named[1]})" in lines
    rate_line = next(line for line in lines if line.startswith("warning: rate:"))
    assert (f"{named[0]} says 1 " in rate_line and "says 1000" in rate_line and "the lower, 1, applies" in rate_line
            and rate_line.endswith("mailtower limits --rate 1")), rate_line
    connections_line = next(line for line in lines if line.startswith("warning: connections:"))
    assert "the fewer, 1, applies" in connections_line and "says 8" in connections_line, connections_line
    # The stored value is the more careful one: it applies, and the difference is said too.
    faster = await limits_of(db, settings("2000", "20"), {})
    assert (faster.rate, faster.connections) == (1000, 8) and set(faster.changed_at) == {"rate", "connections"}
    assert any("says 2000" in line and "the lower, 1000, applies" in line for line in faster.describe())
    # 0 is unlimited, the highest rate of all.
    unlimited = await limits_of(db, settings("0", "8"), {})
    assert unlimited.rate == 1000 and any("says unlimited" in line for line in unlimited.ignored)
    assert not any("connections" in line for line in unlimited.ignored)  # equal: nothing to say
    # A default yields to the stored limit without a word; so do settings built in code, which
    # name no source (as before).
    assert (await limits_of(db, load(), {"limit.rate": "1000", "limit.connections": "8"})).ignored == ()
    built = await limits_of(db, Settings(db=db, rate=1, connections=1), {})
    assert (built.rate, built.connections, built.ignored) == (1000, 8, ())


async def test_messages_per_connection_keeps_the_stored_value_and_says_so(tmp_path: Path) -> None:
    settings = load({"MAILTOWER_MESSAGES_PER_CONNECTION": "10"})
    limits = await limits_of(tmp_path / "m.db", settings, {"limit.messages_per_connection": "1000"})
    assert limits.messages_per_connection == 1000
    assert any("MAILTOWER_MESSAGES_PER_CONNECTION says 10" in line and "the stored one, 1000, applies" in line
               and "mailtower limits --messages-per-connection 10" in line for line in limits.ignored)


def test_a_background_sender_knows_what_its_parent_was_given(tmp_path: Path) -> None:
    """The hand-off passes every setting as a variable, defaults too: the child must still tell
    a --connections 1 from the default 4 (else a dashboard's sender would cap a stored 8 at 4)."""
    from mailtower.tui.handoff import settings_environment

    given = load(rate="1", db=str(tmp_path / "m.db"))
    child = load(settings_environment(given))
    assert child.rate == 1 and child.limit_sources == (("rate", "--rate"),)
    plain = load(settings_environment(load(db=str(tmp_path / "m.db"))))
    assert plain.limit_sources == ()  # MAILTOWER_SMTP_CONNECTIONS=4 there is the default, handed on
    message = refusal(load, {"MAILTOWER_GIVEN_LIMITS": "[1]"})
    assert message.startswith("MAILTOWER_GIVEN_LIMITS: ")


def test_limits_command_says_the_difference_and_keeps_its_json_keys(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "m.db", 2525)
    cli.ok("limits", "--rate", "1000", "--connections", "8")
    out = cli.ok("--rate", "1", "--connections", "1", "limits")
    assert "rate: 1 (from --rate)" in out and "connections: 1 (from --connections)" in out
    assert sum(line.startswith("warning: ") for line in out.splitlines()) == 2, out
    doc = json.loads(Cli(tmp_path / "m.db", 2525, MAILTOWER_RATE="1").ok("limits", "--json"))
    assert set(doc) == {"rate", "rate_per_hour", "connections", "messages_per_connection", "changed_at", "domains"}
    assert (doc["rate"], doc["connections"]) == (1, 8) and set(doc["changed_at"]) == {"connections"}


# ---- 2: a TOML number too small to tell from 0 --------------------------------------------------

GROUP = '[domains.g]\nmatch = ["gmail.com"]\n'


@pytest.mark.parametrize("toml, where", [
    ("breaker_hard = {}\n", "breaker_hard"),
    ("breaker_soft = {}\n", "breaker_soft"),
    ("rate = {}\n", "rate"),
    ("grace = {}\n", "grace"),
    ("canary_wait = {}\n", "canary_wait"),
    ("[smtp]\ntimeout = {}\n", "[smtp] timeout"),
    ("[smtp]\nrate = {}\n", "[smtp] rate"),
    (GROUP + "rate = {}\n", "[domains.g] rate"),
    (GROUP + "per_hour = {}\n", "[domains.g] per_hour"),
    ('[[relays]]\nhost = "a"\nrate = {}\n', "[[relays]] #1 rate"),
])
@pytest.mark.parametrize("written", ["1e-400", "1e-320", "0.5e-330"])
def test_a_toml_number_too_small_to_tell_from_0_is_refused_as_written(
    tmp_path: Path, toml: str, where: str, written: str
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(toml.format(written), encoding="utf-8")
    assert refusal(load, config=config) == f"{config} {where}: {written} is too small to tell from 0"


def test_a_toml_zero_is_zero_and_a_tiny_number_is_not(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("rate = -0.0\nbreaker_hard = 0e5\ngrace = 0.0\ncanary_wait = 1.5\n", encoding="utf-8")
    settings = load(config=config)
    assert (settings.rate, settings.breaker_hard, settings.grace, settings.canary_wait) == (0, 0, 0, 1.5)
    assert str(settings.rate) == "0.0" and type(settings.rate) is float and type(settings.canary_wait) is float
    config.write_text("breaker_soft = 1e-400\n", encoding="utf-8")
    assert "too small to tell from 0" in refusal(load, config=config)  # the old code: the check turned off


# ---- 3: a threshold of 0 is off, and said to be -------------------------------------------------


def test_breaker_says_off_for_a_threshold_of_0(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "m.db", 2525)
    mailing = str(new_mailing(cli, tmp_path, 3))
    both = Cli(tmp_path / "m.db", 2525, MAILTOWER_BREAKER_HARD="0", MAILTOWER_BREAKER_SOFT="0").ok("breaker", mailing)
    assert both.splitlines()[0] == "breaker: off (failures: off, deferrals: off)", both
    hard = Cli(tmp_path / "m.db", 2525, MAILTOWER_BREAKER_HARD="0").ok("breaker", mailing).splitlines()[0]
    assert "more than 0%" not in hard and "failures: off" in hard and "more than 20% of one domain deferred" in hard
    soft = cli.ok("breaker", mailing, "--breaker-soft", "0").splitlines()[0]
    assert "more than 0%" not in soft and "deferrals: off" in soft and "more than 5% failed" in soft
    doc = json.loads(cli.ok("breaker", mailing, "--json"))
    assert (doc["hard_percent"], doc["soft_percent"]) == (5.0, 0.0)  # the numbers stay numbers
    code, _, err = cli("breaker", mailing, "--breaker-hard", "1e-320")
    assert (code, err) == (2, "mailtower: --breaker-hard: '1e-320' is too small to tell from 0\n")


# ---- 4: floors for the canary's rate and for timeouts ------------------------------------------


@pytest.mark.parametrize("var, raw, problem", [
    ("MAILTOWER_CANARY_RATE", "1e-320", "is too small to tell from 0"),
    ("MAILTOWER_CANARY_RATE", "0.001", "must be at least 0.01"),
    ("MAILTOWER_SMTP_TIMEOUT", "1e-320", "is too small to tell from 0"),
    ("MAILTOWER_SMTP_TIMEOUT", "0.05", "must be at least 0.1"),
    ("MAILTOWER_SMTP_DATA_TIMEOUT", "0.01", "must be at least 0.1"),
    ("MAILTOWER_RETRY_BASE", "0.001", "must be at least 0.01"),
    ("MAILTOWER_RETRY_MAX", "1e-300", "must be at least 0.01"),
    ("MAILTOWER_RETRY_MAX_AGE", "0.001", "must be at least 0.01"),
])
def test_rates_and_timeouts_have_a_floor(var: str, raw: str, problem: str) -> None:
    message = refusal(load, {var: raw})
    assert message.startswith(f"{var}: ") and problem in message, message


def test_canary_rate_flag_has_the_floor_and_the_floors_are_accepted(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "m.db", 2525)
    mailing = str(new_mailing(cli, tmp_path, 3))
    for raw in ("1e-320", "0.001"):
        code, _, err = cli("breaker", mailing, "--canary", "2", "--canary-rate", raw)
        assert code == 2 and err.startswith("mailtower: --canary-rate: ") and err.count("\n") == 1, err
    assert json.loads(cli.ok("breaker", mailing, "--json"))["canary"] is None
    settings = load({"MAILTOWER_CANARY_RATE": "0.01", "MAILTOWER_SMTP_TIMEOUT": "0.1", "MAILTOWER_RETRY_BASE": "0.01",
                     "MAILTOWER_RETRY_MAX": "0.01"})
    assert (settings.canary_rate, settings.smtp_timeout, settings.retry_base) == (0.01, 0.1, 0.01)


# ---- 5: one setting twice in one file ------------------------------------------------------------


@pytest.mark.parametrize("toml, first, second", [
    ("rate = 5\n[smtp]\nrate = 7\n", "rate", "[smtp] rate"),
    ("connections = 2\n[smtp]\nconnections = 3\n", "connections", "[smtp] connections"),
    ('smtp_host = "a"\n[smtp]\nhost = "b"\n', "smtp_host", "[smtp] host"),
])
def test_a_setting_given_twice_in_the_toml_file_is_refused(tmp_path: Path, toml: str, first: str, second: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(toml, encoding="utf-8")
    assert refusal(load, config=config) == f"{config} {second}: the same setting as {config} {first}; give it once"


# ---- 6: a stored limit whose time is not a time --------------------------------------------------


def test_a_stored_limit_with_a_bad_time_is_kept_and_said(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "m.db", 2525)
    cli.ok("limits", "--rate", "5", "--connections", "3")
    with sqlite3.connect(tmp_path / "m.db") as conn:
        conn.execute("UPDATE settings SET changed_at = 'garbage' WHERE key = 'limit.rate'")
    code, out, err = cli("limits")
    assert (code, err) == (0, ""), err
    assert "rate: 5 (stored, changed at an unknown time)" in out
    assert "warning: stored limit 'limit.rate': changed_at 'garbage' is not a time" in out
    doc = json.loads(cli.ok("limits", "--json"))
    assert doc["rate"] == 5 and doc["changed_at"]["rate"] is None and doc["connections"] == 3


# ---- 7: --canary -0; two relays of one name -------------------------------------------------------


def test_canary_minus_zero_is_a_count_below_one(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "m.db", 2525)
    mailing = str(new_mailing(cli, tmp_path, 3))
    code, _, err = cli("breaker", mailing, "--canary", "-0")
    assert (code, err) == (2, "mailtower: --canary: '-0' must be from 1 to 100,000 recipients (or a percentage)\n")
    assert "canary: 2 recipients" in cli.ok("breaker", mailing, "--canary", "+2")


def test_two_relays_of_one_name_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[[relays]]\nname = "mx"\nhost = "a"\n[[relays]]\nname = "other"\nhost = "b"\n'
                      '[[relays]]\nname = "mx"\nhost = "c"\n', encoding="utf-8")
    assert refusal(load, config=config) == (f"{config} [[relays]] #3 name: 'mx' is also the name of #1; "
                                            "give each relay its own name")


def test_the_limits_line_of_a_real_process(tmp_path: Path) -> None:
    """The same rule in a separate process: `mailtower --rate 1 limits` as a person types it."""
    Cli(tmp_path / "m.db", 2525).ok("limits", "--rate", "1000")
    env = {**os.environ, "MAILTOWER_DB": str(tmp_path / "m.db"), "MAILTOWER_CONFIG": os.devnull}
    done = subprocess.run([sys.executable, "-m", "mailtower.tui.cli", "--rate", "1", "limits"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.splitlines()[0] == "rate: 1 (from --rate)"
