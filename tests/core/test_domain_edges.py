"""Hostile edges of pacing by destination (issue 13 items 1-3, review): group tables, names and
match entries, live limits from flags and from hand-edited database rows, recipient domains and
their group, and the sender with a group that cannot send now.

Real SQLite files and a real SMTP server (core/sink.py) throughout."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import time
from pathlib import Path

import pytest

from mailtower.core.config import DomainGroupSpec, load_settings, parse_number
from mailtower.core.domains import PARK_LIMIT, POSTPONE_MAX, DomainPacer
from mailtower.core.errors import UserError
from mailtower.core.limits import read_limits
from mailtower.core.sender import Sender
from mailtower.core.sink import Sink
from mailtower.core.store import Store
from tests.core.test_domain_pacing import Arrivals, config, queued_mailing, settings_for, until
from tests.helpers import Cli

SLOW = '[domains.slow]\nmatch = ["slow.example.org"]\nrate = 5\n'


def refused(tmp_path: Path, toml_text: str) -> str:
    toml = tmp_path / "bad.toml"
    toml.write_text(toml_text, encoding="utf-8")
    with pytest.raises(UserError) as caught:
        load_settings({"db": tmp_path / "x.db"}, environ={}, config_path=toml, config_flag="--config")
    said = str(caught.value)
    assert "\n" not in said and str(toml) in said
    return said


# ---- the TOML file ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "said"),
    [
        # a wildcard on a whole top-level domain is every .com domain: that is [domains.default]
        ('[domains.a]\nmatch = ["*.com"]\n', "'*.com' takes a whole top-level domain"),
        ('[domains.a]\nmatch = ["*.COM."]\n', "takes a whole top-level domain"),
        # mail to an IP address is user@[127.0.0.1]: a bare address never matches anything
        ('[domains.a]\nmatch = ["127.0.0.1"]\n', "'127.0.0.1' is an IP address"),
        ('[domains.a]\nmatch = ["gmail.com.."]\n', "'gmail.com..' is not a domain name"),
        # names that differ only in case: `--domain google` could not say which one it means
        ('[domains.Google]\nmatch = ["a.com"]\n[domains.google]\nmatch = ["b.com"]\n',
         "[domains.google]: the group name is taken by 'Google'"),
        ('[domains.DEFAULT]\nmatch = ["a.com"]\n', "[domains.DEFAULT]: the default group is written [domains.default]"),
        ('[domains.Default]\nrate = 3\n', "[domains.Default]: the default group is written [domains.default]"),
    ],
)
def test_hostile_group_tables_are_refused(tmp_path: Path, table: str, said: str) -> None:
    assert said in refused(tmp_path, table)


def test_a_domain_in_two_groups_is_named_with_its_table(tmp_path: Path) -> None:
    said = refused(tmp_path, '[domains.a]\nmatch = ["gmail.com"]\n[domains.b]\nmatch = ["GMAIL.com."]\n')
    assert "[domains.b] match: gmail.com is already in group a" in said  # not "[domains].b"


def test_one_domain_twice_in_a_group_counts_once(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('[domains.a]\nmatch = ["x.com", "X.COM", "x.com."]\n', encoding="utf-8")
    settings = load_settings({"db": tmp_path / "x.db"}, environ={}, config_path=toml, config_flag="--config")
    assert settings.domains[0].match == ("x.com",)


def test_idn_entries_use_the_envelopes_idna_rules(tmp_path: Path) -> None:
    """"straße.de" is xn--strae-oqa.de on the envelope (IDNA 2008); IDNA 2003 made it strasse.de,
    another domain: a recipient at straße.de fell into strasse.de's group."""
    pacer: DomainPacer[object] = DomainPacer([DomainGroupSpec("sharp", ("xn--strae-oqa.de",)),
                                              DomainGroupSpec("plain", ("strasse.de",))])
    assert pacer.group_of("a@straße.de").name == "sharp"
    assert pacer.group_of("a@STRASSE.de").name == "plain"
    toml = tmp_path / "c.toml"
    toml.write_text('[domains.a]\nmatch = ["straße.de"]\n[domains.b]\nmatch = ["strasse.de"]\n', encoding="utf-8")
    settings = load_settings({"db": tmp_path / "x.db"}, environ={}, config_path=toml, config_flag="--config")
    assert [g.match for g in settings.domains] == [("xn--strae-oqa.de",), ("strasse.de",)]


def test_odd_recipient_domains_fall_in_the_right_group() -> None:
    pacer: DomainPacer[object] = DomainPacer([DomainGroupSpec("google", ("gmail.com",)),
                                              DomainGroupSpec("de", ("xn--bcher-kva.de",))])
    assert pacer.group_of("a@GMAIL.COM").name == "google"
    assert pacer.group_of("a@ｇｍａｉｌ.com").name == "google"  # full-width letters map to gmail.com
    assert pacer.group_of("a@gmail.com.").name == "google"
    assert pacer.group_of("a@gmail.com..").name == "default"  # not a domain name: never a named group
    assert pacer.group_of("a@BÜCHER.de").name == "de"
    assert pacer.group_of("a@[127.0.0.1]").name == "default"
    assert pacer.group_of("no-domain").name == "default"
    assert pacer.group_of("a@").name == "default"


def test_minus_zero_is_zero() -> None:
    """-0 passes every bound as 0 but kept its sign: stored "-0.0", shown "-0" in JSON."""
    value = parse_number("rate", "-0", "--rate")
    assert value == 0 and str(value) == "0.0"
    assert str(parse_number("rate", -0.0, "x")) == "0.0"


# ---- `mailtower limits --domain` ------------------------------------------------------------------


def test_limits_domain_flags_combined_oddly(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(SLOW, encoding="utf-8")
    cli = Cli(tmp_path / "x.db", MAILTOWER_CONFIG=str(toml))
    # --rate-per-hour with --domain is the group's budget; an error names the flag that was typed
    code, out, err = cli("limits", "--domain", "slow", "--rate-per-hour", "-5")
    assert code == 2 and out == "" and err.count("\n") == 1 and "--rate-per-hour: '-5' must be at least 0" in err, err
    # both at once: one of them would have been dropped without a word
    code, out, err = cli("limits", "--domain", "slow", "--rate-per-hour", "5", "--per-hour", "6")
    assert code == 2 and out == "" and err.count("\n") == 1 and "give one of them" in err, err
    code, out, err = cli("limits", "--domain", "\x1b[2Jslow", "--rate", "1")
    assert code == 2 and "\x1b" not in err and "'\\x1b[2Jslow'" in err, err
    doc = json.loads(cli.ok("limits", "--domain", "slow", "--rate", "-0", "--json"))
    assert doc == {"group": "slow", "connections": 0, "rate": 0, "per_hour": 0}
    assert isinstance(doc["connections"], int)
    assert '"rate": 0.0' in cli.ok("limits", "--domain", "slow", "--json")  # never -0.0


# ---- hand-edited settings rows --------------------------------------------------------------------


async def test_garbage_stored_rows_are_ignored_safely_and_said(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(SLOW, encoding="utf-8")
    db = tmp_path / "g.db"
    settings = load_settings({"db": db}, environ={}, config_path=toml, config_flag="--config")
    store = await Store.open(db)
    try:
        await store.put_settings({
            "domain.slow.rate": "NaN", "domain.slow.connections": "abc", "domain.slow.per_hour": "1e309",
            "domain.gone.rate": "3", "domain.slow.burst": "2", "domain.\x1b[31mX.rate": "1",
            "domain.slow.\x1b]0;owned\x07": "1", "domain.default.rate": "-0",
        })
        limits = await read_limits(store, settings)
    finally:
        await store.close()
    assert limits.domains == {"default": {"rate": 0.0}}
    assert str(limits.domains["default"]["rate"]) == "0.0"
    text = "\n".join(limits.describe())
    assert not any(ch in text for ch in "\x1b\x07"), text
    said = {line for line in limits.ignored}
    assert any("'domain.slow.burst'" in s and "'burst' is not a limit of a domain group" in s for s in said), said
    assert any("'domain.gone.rate'" in s and "no domain group 'gone'" in s for s in said), said
    assert any("domain.slow.rate" in s and "'NaN' is not a number" in s for s in said), said


async def test_the_sender_sends_through_garbage_rows_with_the_configured_limits(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    toml = tmp_path / "c.toml"
    toml.write_text(SLOW.replace("rate = 5", "rate = 50"), encoding="utf-8")
    await queued_mailing(db, tmp_path, [f"s{i}@slow.example.org" for i in range(20)] + ["f@fast.example.com"])
    store = await Store.open(db)
    await store.put_settings({"domain.slow.rate": "NaN", "domain.slow.connections": "-1", "domain.removed.rate": "1"})
    await store.close()
    arrivals = Arrivals()
    with Sink(fault=arrivals) as sink:
        sender = Sender(settings_for(db, sink, toml))
        await asyncio.wait_for(sender.run(until_idle=True), 30)
        assert sender.domains.groups["slow"].limiter.configured == 50
    assert len(arrivals.times("slow.example.org")) == 20


# ---- a group that cannot send for a long while ----------------------------------------------------


async def test_a_used_up_hourly_budget_does_not_hold_the_queue(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Group "slow" may send 2 an hour. Its other 28 rows used to stay parked in memory for
    hours, keeping the head's turn: the mailing queued behind it got nothing. Now they wait in
    the ledger (deferred until the budget frees, no attempt counted) and the queue goes on."""
    db = tmp_path / "q.db"
    first = await queued_mailing(db, tmp_path, [f"s{i}@slow.example.org" for i in range(30)]
                                 + [f"f{i}@fast.example.com" for i in range(10)])
    (tmp_path / "b").mkdir()
    await queued_mailing(db, tmp_path / "b", [f"b{i}@other.example.com" for i in range(5)])
    arrivals = Arrivals()
    caplog.set_level(logging.INFO, logger="mailtower")
    with Sink(fault=arrivals) as sink:
        sender = Sender(settings_for(db, sink, config(tmp_path, rate=0, per_hour=2)))
        task = asyncio.create_task(sender.run())
        try:
            await until(lambda: len(arrivals.times("other.example.com")) == 5, 20, "the next mailing's five")
            slow = next(g for g in sender.domains_document()["groups"] if g["group"] == "slow")  # type: ignore[union-attr]
            assert slow["state"] == "paused" and "hourly budget of 2" in slow["reason"]
        finally:
            sender.request_stop()
            await asyncio.wait_for(task, 15)
    assert len(arrivals.times("slow.example.org")) == 2 and len(arrivals.times("fast.example.com")) == 10
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT state, attempts, first_deferred_at, next_attempt_at, last_error FROM recipients "
                            "WHERE mailing_id = ? AND email LIKE '%@slow.example.org' AND state != 'sent'",
                            (first,)).fetchall()
    assert len(rows) == 28
    for state, attempts, first_deferred, next_at, error in rows:
        assert (state, attempts, first_deferred) == ("deferred", 0, None)  # no retry clock started
        # until the budget frees, but back within POSTPONE_MAX so a raised budget reaches them
        assert time.time() + 60 < next_at <= time.time() + POSTPONE_MAX and "domain group slow" in error
    assert "hourly budget of 2 is used up; 28 recipients wait in the ledger" in caplog.text


def test_the_park_cap_names_the_group_that_holds_it(caplog: pytest.LogCaptureFixture) -> None:
    pacer: DomainPacer[int] = DomainPacer([DomainGroupSpec("stuck", ("stuck.example.com",), rate=0.01)])
    stuck, other = pacer.group_of("a@stuck.example.com"), pacer.group_of("a@other.example.com")
    queue: list[int] = []
    caplog.set_level(logging.WARNING, logger="mailtower")
    for n in range(PARK_LIMIT + 1):
        pacer.admit(stuck, n, queue.append)
    pacer.admit(other, -1, queue.append)
    assert queue == [0, -1] and pacer.parked == PARK_LIMIT
    assert pacer.holding() == "stuck"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "most in group stuck: rate 0.01/s" in warnings[0], warnings
    # Its backlog beyond what it sends in 30 s goes to the ledger, spread at its rate: claiming goes on.
    before = time.time()
    later = pacer.postpone()
    assert len(later) == PARK_LIMIT - 1 and pacer.parked == 1 and [job for job, _, _ in later][:2] == [2, 3]
    times = [at for _, at, _ in later]
    # spread at its rate (one per 100 s), none later than POSTPONE_MAX: a live rate change reaches them
    assert times[0] >= before + 100 and abs(times[1] - times[0] - 100) < 1e-6
    assert times == sorted(times) and times[-1] <= time.time() + POSTPONE_MAX
    assert "domain group stuck: more than it sends in 30 s at 0.01/s" in later[0][2]


def test_a_group_capped_only_by_connections_keeps_its_rows_at_the_park_cap() -> None:
    pacer: DomainPacer[int] = DomainPacer([DomainGroupSpec("capped", ("c.example.com",), connections=1)])
    group = pacer.group_of("a@c.example.com")
    for n in range(PARK_LIMIT + 1):
        pacer.admit(group, n, lambda job: None)
    assert pacer.postpone() == [] and pacer.parked == PARK_LIMIT  # no rate to spread them by


@pytest.mark.parametrize("rate", [0.0, 0.01, 5.0, 1e6])
def test_throttling_keeps_the_rate_above_zero_and_never_above_the_configured(rate: float) -> None:
    pacer: DomainPacer[int] = DomainPacer([DomainGroupSpec("g", ("g.example.com",), rate=rate)])
    group = pacer.groups["g"]
    now = 1000.0
    for _ in range(40):  # far more halvings than the floor allows
        now += 3.0
        group.throttle("421 slow down", now)
        assert 0 < group.limiter.configured <= (rate or 1.0) and math.isfinite(group.limiter.configured)
    assert group.factor >= 1 / 64
    for _ in range(40):  # recovery, one step a minute, ends exactly at the configured rate
        now += 61.0
        group.recover(now)
        assert 0 < group.limiter.configured <= (rate or 1.0) or group.factor == 1.0
    assert group.factor == 1.0 and group.limiter.configured == rate and not group.throttled_since


def put_rows(db: Path, rows: dict[str, str]) -> None:
    """Settings rows as someone editing the database would leave them."""
    async def put() -> None:
        store = await Store.open(db)
        try:
            await store.put_settings(rows)
        finally:
            await store.close()

    asyncio.run(put())


def test_a_removed_groups_stored_rows_can_be_forgotten(tmp_path: Path) -> None:
    """A group taken out of the config keeps its stored rows: ignored and said at every read,
    and `limits --domain NAME` refused it, so nothing but SQL could clear them."""
    toml = tmp_path / "c.toml"
    toml.write_text(SLOW, encoding="utf-8")
    db = tmp_path / "r.db"
    cli = Cli(db, MAILTOWER_CONFIG=str(toml))
    cli.ok("limits", "--domain", "slow", "--rate", "3")
    put_rows(db, {"domain.gone.rate": "3", "domain.gone.per_hour": "7"})
    assert "limits --domain gone --reset" in cli.ok("limits")  # the warning says how to clear it
    code, out, err = cli("limits", "--domain", "gone", "--reset")
    assert code == 0 and "2 stored limits forgotten" in err, err
    assert "gone" not in cli.ok("limits")
    code, out, err = cli("limits", "--domain", "slow", "--reset", "--json")
    assert code == 0 and json.loads(out)["rate"] == 5 and "1 stored limit forgotten" in err
    for args, said in [(("--domain", "gone", "--reset"), "no domain group 'gone' and no stored limits of one"),
                       (("--reset",), "--reset: give --domain NAME too"),
                       (("--domain", "slow", "--reset", "--per-hour", "3"), "--per-hour: --reset forgets")]:
        code, out, err = cli("limits", *args)
        assert code == 2 and out == "" and err.count("\n") == 1 and said in err, (args, err)


def test_domains_refuses_an_id_sqlite_cannot_hold(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "x.db")
    for bad in ("99999999999999999999999", "-1", "1_0"):
        code, out, err = cli("domains", "--", bad)
        assert code == 2 and out == "" and err.count("\n") == 1 and "is not a mailing id" in err, (bad, err)


async def test_a_group_with_no_limits_of_its_own_never_stalls(tmp_path: Path) -> None:
    """rate = 0 and connections = 0 mean "none of its own" (not "send nothing"): run --until-idle
    ends once everything is sent."""
    db = tmp_path / "z.db"
    await queued_mailing(db, tmp_path, [f"s{i}@slow.example.org" for i in range(30)] + ["f@fast.example.com"])
    arrivals = Arrivals()
    with Sink(fault=arrivals) as sink:
        sender = Sender(settings_for(db, sink, config(tmp_path, rate=0, connections=0, per_hour=0)))
        await asyncio.wait_for(sender.run(until_idle=True), 30)
    assert len(arrivals.times("slow.example.org")) == 30


async def test_one_stuck_group_at_the_park_cap_does_not_hold_the_other_domains(tmp_path: Path) -> None:
    """24,000 rows of a group sending 0.01/s come first in the ledger, then 40 of other domains.
    The sender parked 20,000 and then claimed nothing more: the 40 waited for weeks. Now the
    stuck group's backlog waits in the ledger (deferred, spread at its rate) and the 40 go."""
    db = tmp_path / "cap.db"
    stuck = [f"s{i}@slow.example.org" for i in range(PARK_LIMIT + 4000)]  # more than the cap and two claims
    await queued_mailing(db, tmp_path, stuck + [f"f{i}@fast.example.com" for i in range(40)])
    arrivals = Arrivals()
    with Sink(fault=arrivals) as sink:
        sender = Sender(settings_for(db, sink, config(tmp_path, rate=0.01), batch_size=2000))
        task = asyncio.create_task(sender.run())
        try:
            await until(lambda: len(arrivals.times("fast.example.com")) == 40, 90, "the other domains' 40")
        finally:
            sender.request_stop()
            await asyncio.wait_for(task, 30)
    assert len(arrivals.times("slow.example.org")) <= 2
    with sqlite3.connect(db) as conn:
        (deferred, attempts), = conn.execute(
            "SELECT COUNT(*), TOTAL(attempts) FROM recipients WHERE state = 'deferred' AND email LIKE '%@slow.example.org'")
    assert deferred >= PARK_LIMIT - 10 and attempts == 0
