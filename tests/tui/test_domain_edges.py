"""Hostile edges of the dashboard's per-domain figures (issue 13 item 3, review): a sender status
document from another process that is malformed or says hostile things, and settings rows
edited by hand, must neither crash the Details screen nor reach the terminal raw."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from mailtower.core.domains import domain_counts, group_reports, throttled_groups
from mailtower.core.store import Store
from mailtower.tui.app import DashboardApp
from mailtower.tui.cli_domains import domains_table
from mailtower.tui.header import HeaderInfo, Mode, header_text
from mailtower.tui.screens import DetailsScreen
from tests.helpers import until

from .conftest import FIXED_NOW, OPERATOR_TZ, Clock, Fixture, HeldLease, put_sender_meta, settings_for
from .test_domains_view import GROUPS, details_with_domains
from .test_screens import Host, opened, stopped_mailing, text_of

ESCAPES = "\x1b[2J\x1b]0;owned\x07"


def hostile_doc(mailing_id: int) -> dict[str, object]:
    return {
        "mailing": mailing_id,
        "groups": [
            {"group": ["not", "a", "name"], "state": "throttled"},  # unhashable: was a TypeError
            {"group": "bigmail", "state": "throttled" + ESCAPES, "in_flight": "3", "rate": float("nan"),
             "reason": "[bold]421[/bold] " + ESCAPES + "x" * 5000, "last_reply": 7},
            {"group": "netmail", "state": "throttled", "reason": "[red]450[/red] busy", "last_reply": ESCAPES},
            {"group": "netmail", "state": "throttled"},  # the same group twice
        ],
    }


def test_a_malformed_live_document_gives_safe_reports() -> None:
    reports = {r.group: r for r in group_reports(GROUPS, [("example.org", "sent", 3)], hostile_doc(4), 4)}
    big = reports["bigmail"]
    assert big.state == "idle" and big.in_flight == 0 and big.rate == 0.0  # unknown state, wrong types
    assert len(big.reason) <= 303 and big.last_reply == ""
    assert reports["netmail"].state == "throttled"
    text = domains_table(list(reports.values()))
    assert "\x1b" not in text and "\x07" not in text
    assert throttled_groups(hostile_doc(4)) == 1  # netmail once; the list-named entry is no group
    assert group_reports(GROUPS, [], {"mailing": True, "groups": []}, 1)[0].state == "idle"


async def test_details_with_a_hostile_live_document_and_garbage_rows(tmp_path: Path) -> None:
    db, mailing_id = await stopped_mailing(tmp_path)
    store = await Store.open(db)
    try:
        await store.put_settings({"domain.bigmail.rate": "NaN", "domain.netmail.connections": "abc",
                                  "domain.gone.rate": "3", "domain.bigmail.\x1b[2J": "1"})
    finally:
        await store.close()
    settings = replace(settings_for(db), domains=GROUPS)
    app = Host(db, mailing_id, details_with_domains(settings, hostile_doc(mailing_id)))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await opened(pilot, DetailsScreen)
        await until(pilot, lambda: "bigmail" in text_of(screen.query_one("#domains")))
        shown = text_of(screen.query_one("#domains"))
        assert "\x1b" not in shown and "\x07" not in shown
        assert "[bold]421[/bold]" in shown  # markup in a reply is text, not style
        lines = {line.split()[0]: line for line in shown.splitlines()[2:] if line.strip()}
        assert "idle" in lines["bigmail"] and "throttled" in lines["netmail"]


async def test_header_counts_each_throttled_group_once_while_monitoring(
    fixed_db: Fixture, held_lease: HeldLease
) -> None:
    assert "1 domain throttled" in await monitoring_header(fixed_db, hostile_doc(1), "throttled")


async def monitoring_header(fixed_db: Fixture, doc: dict[str, object], word: str) -> str:
    """The header of a dashboard monitoring a sender whose domains document is `doc`, once it says `word`."""
    await put_sender_meta(fixed_db.db, FIXED_NOW)
    store = await Store.open(fixed_db.db)
    try:
        await store.put_meta({"sender_domains": json.dumps(doc)})
    finally:
        await store.close()
    app = DashboardApp(settings_for(fixed_db.db), start_sender=False, now=Clock(), operator_tz=OPERATOR_TZ)
    async with app.run_test(size=(160, 30)) as pilot:
        await until(pilot, lambda: app.dashboard.header.info is not None and word in app.dashboard.header.plain)
        return app.dashboard.header.plain


def test_a_paused_group_shows_paused_for_the_mailing_that_yielded_to_another() -> None:
    """The sender moved on to mailing 5 because group bigmail's hourly budget is used up: mailing
    4's Details and `mailtower domains 4` said "idle" for it, as if nothing held it back."""
    doc = {"mailing": 5, "groups": [
        {"group": "bigmail", "state": "paused", "reason": "its hourly budget of 5000 is used up", "in_flight": 2},
        {"group": "netmail", "state": "ok", "in_flight": 1, "rate": 4.0},
    ]}
    reports = {r.group: r for r in group_reports(GROUPS, [], doc, 4)}
    assert (reports["bigmail"].state, reports["bigmail"].reason) == ("paused", "its hourly budget of 5000 is used up")
    assert reports["bigmail"].in_flight == 0  # mailing 5's figures are not mailing 4's
    assert reports["netmail"].state == "idle" and reports["netmail"].rate == 0.0


def test_header_says_how_many_groups_are_paused() -> None:
    """A group whose hourly budget is used up sends nothing for up to an hour: the header said
    nothing of it (only throttled groups were counted)."""
    base = HeaderInfo(Mode.SENDING, rate=12.0, last_accept_age=1.0)
    doc = {"mailing": 1, "groups": [{"group": "bigmail", "state": "paused"}, {"group": "netmail", "state": "throttled"}]}
    text = header_text(replace(base, **domain_counts(doc))).plain
    assert "· 1 domain throttled" in text and "· 1 domain paused" in text
    assert "paused" not in header_text(replace(base, **domain_counts({}))).plain


async def test_header_of_a_monitoring_dashboard_says_paused(fixed_db: Fixture, held_lease: HeldLease) -> None:
    doc = {"mailing": 1, "groups": [{"group": "bigmail", "state": "paused"}, {"group": "netmail", "state": "paused"}]}
    assert "2 domains paused" in await monitoring_header(fixed_db, doc, "domains paused")
