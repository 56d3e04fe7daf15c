"""The sender's status contract (core/sender_status.py): written by the sender, read by
`mailtower status --json`, `mailtower resume` and a dashboard monitoring another process, with
one staleness rule for all of them."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from mailtower.core.domain import Section
from mailtower.core.progress import SenderState
from mailtower.core.sender_status import (
    HEARTBEAT_AHEAD,
    HEARTBEAT_STALE,
    KEYS,
    SenderStatus,
    read_status,
    status_from_meta,
    write_status,
)
from mailtower.core.store import Store, open_store
from mailtower.tui.header import HeaderLine
from tests.helpers import Cli
from tests.tui.conftest import Clock, HeldLease, build_fixed, wait_for
from tests.tui.pilot import dashboard_app, running

WAITING = {
    "all_unavailable": True,
    "relays": [{"relay": "r1", "state": "paused", "reason": "535 no", "since": 1.0, "next_try": 2.0, "mailing": 1}],
}


async def test_round_trip_through_the_meta_table(db_target: Path) -> None:
    status = SenderStatus(
        state=SenderState.WAITING,
        heartbeat=1_900_000_000.125,
        reason="relay r1 refused the login",
        rate=12.5,
        last_accept_at=1_899_999_990.5,
        waiting=WAITING,
    )
    store = await open_store(db_target)
    try:
        await write_status(store, status)
        assert await read_status(store) == status
        # The meta keys and formats are a contract with other processes: unchanged.
        raw = {key: await store.meta(key) for key in KEYS}
    finally:
        await store.close()
    assert raw == {
        "sender_state": "waiting",
        "sender_reason": "relay r1 refused the login",
        "sender_rate": "12.500",
        "sender_last_accept": "1899999990.500",
        "sender_heartbeat": "1900000000.125",
        "sender_waiting": json.dumps(WAITING),
    }


async def test_nothing_written_reads_as_no_status(db_target: Path) -> None:
    store = await open_store(db_target)
    try:
        assert await read_status(store) is None
    finally:
        await store.close()


GOOD = {"sender_state": "sending", "sender_heartbeat": "100.000", "sender_rate": "3.000"}


@pytest.mark.parametrize(
    "key, raw",
    [("sender_heartbeat", v) for v in ["", "x", "nan", "inf", "-inf", "0", "-5", "1e400", "\x00"]]
    + [("sender_state", v) for v in ["", "bogus", "SENDING", "\x1b[31m"]],
)
def test_an_unreadable_heartbeat_or_state_is_no_status(key: str, raw: str) -> None:
    assert status_from_meta({**GOOD, key: raw}) is None
    assert status_from_meta({k: v for k, v in GOOD.items() if k != key}) is None


@pytest.mark.parametrize(
    "key, raw, field, default",
    [("sender_rate", v, "rate", 0.0) for v in ["", "x", "nan", "inf", "-3", "-inf"]]
    + [("sender_last_accept", v, "last_accept_at", None) for v in ["", "x", "nan", "inf", "0", "-1"]]
    + [("sender_waiting", v, "waiting", {}) for v in ["", "{", "[]", "5", "null", '"text"', "[" * 100_000]],
)
def test_other_unreadable_values_read_as_their_defaults(key: str, raw: str, field: str, default: object) -> None:
    status = status_from_meta({**GOOD, key: raw})
    assert status is not None and getattr(status, field) == default


def test_one_staleness_rule() -> None:
    now = 1_000.0
    status = SenderStatus(SenderState.SENDING, heartbeat=now - HEARTBEAT_STALE, rate=4.0, waiting=WAITING)
    assert status.alive(now) and status.live_rate(now) == 4.0 and status.live_waiting(now) == WAITING
    assert SenderStatus(SenderState.SENDING, heartbeat=now + HEARTBEAT_AHEAD).alive(now)  # a clock stepped back
    for heartbeat in (now - 6, now - 1e9, now + HEARTBEAT_AHEAD + 1, now + 1e9):
        late = SenderStatus(SenderState.SENDING, heartbeat=heartbeat, rate=4.0, waiting=WAITING)
        assert not late.alive(now) and late.live_rate(now) == 0.0 and late.live_waiting(now) == {}
    stopped = SenderStatus(SenderState.STOPPED, heartbeat=now, rate=4.0)
    assert stopped.fresh(now) and not stopped.alive(now)


async def _cli(cli: Cli, *args: str) -> tuple[int, str, str]:
    """The CLI runs its own event loop: off this one."""
    return await asyncio.to_thread(cli, *args)


async def _status(cli: Cli) -> dict[str, list[dict[str, object]]]:
    code, out, err = await _cli(cli, "status", "--json")
    assert code == 0, err
    doc: dict[str, list[dict[str, object]]] = json.loads(out)
    return doc


def _sending_rates(doc: dict[str, list[dict[str, object]]]) -> list[object]:
    return [m["rate"] for m in doc["current"] if m["state"] == "sending"]


# Heartbeats the CLI and the dashboard once judged differently (or both wrongly): 6 s old,
# NaN (the dashboard took it as alive), infinite or far ahead (alive for ever, for both).
@pytest.mark.parametrize("heartbeat", ["ago6", "nan", "inf", "ahead"])
async def test_cli_and_dashboard_share_the_staleness_rule(tmp_path: Path, heartbeat: str) -> None:
    fx = await build_fixed(tmp_path / "fixed.db", small=True)
    now = time.time()
    written = {"ago6": f"{now - 6:.3f}", "nan": "nan", "inf": "inf", "ahead": f"{now + 1e6:.3f}"}[heartbeat]
    store = await Store.open(fx.db)
    try:
        await store.put_meta(
            {
                "sender_state": "sending",
                "sender_reason": "",
                "sender_rate": "42.500",
                "sender_last_accept": f"{now - 3:.3f}",
                "sender_heartbeat": written,
                "sender_waiting": json.dumps(WAITING),
            }
        )
    finally:
        await store.close()
    cli = Cli(fx.db)
    doc = await _status(cli)
    rates = _sending_rates(doc)
    assert rates and all(rate == 0 for rate in rates)  # status --json: no live rate
    assert all(m["waiting"] is None for m in doc["current"])
    code, _, err = await _cli(cli, "resume")
    assert code == 0 and "no sender is running" in err

    lease = HeldLease(fx.db)
    try:
        app = dashboard_app(fx.db, Clock(datetime.fromtimestamp(now, timezone.utc)))
        async with running(app, size=(120, 30)):
            header = app.dashboard.query_one(HeaderLine)
            await wait_for(lambda: "monitoring" in header.plain, what="monitor mode")
            await wait_for(lambda: app._remote is not None or heartbeat in ("nan", "inf"), what="status read")
            assert app.current_rate() == 0.0 and app.waiting_document() == {}
            assert "42.5" not in header.plain and "sending" not in header.plain.split("monitoring")[0]
    finally:
        lease.release()


async def test_cli_and_dashboard_see_a_fresh_sender_alike(tmp_path: Path) -> None:
    """The other side of the rule: a heartbeat 2 s old is alive for both readers."""
    fx = await build_fixed(tmp_path / "fixed.db", small=True)
    now = time.time()
    store = await Store.open(fx.db)
    try:
        await write_status(store, SenderStatus(SenderState.SENDING, heartbeat=now - 2, rate=42.5, last_accept_at=now - 3))
    finally:
        await store.close()
    assert 42.5 in _sending_rates(await _status(Cli(fx.db)))
    lease = HeldLease(fx.db)
    try:
        app = dashboard_app(fx.db, Clock(datetime.fromtimestamp(now, timezone.utc)))
        async with running(app, size=(120, 30)):
            header = app.dashboard.query_one(HeaderLine)
            await wait_for(lambda: "sending 42.5 msg/s" in header.plain, what="the live rate")
            assert app.current_rate() == 42.5
    finally:
        lease.release()


async def test_status_text_escapes_what_a_sender_wrote(tmp_path: Path) -> None:
    """The waiting and throttled reasons are a relay's words, written by a sender in another
    process (an older version, another host of the fleet): `status` printed them raw, the
    other fields escaped; every line of it is escaped now, as `status --json` is."""
    fx = await build_fixed(tmp_path / "fixed.db", small=True)
    hostile = "450 \x1b]0;pwned\x07E\x1b[2J\u202etxt"
    store = await Store.open(fx.db)
    try:
        current = [m.id for m in await store.mailings(Section.CURRENT)]
        waiting = {"all_unavailable": True, "relays": [
            {"relay": "r1", "state": state, "reason": hostile, "since": time.time() - 5, "next_try": None,
             "mailing": mailing_id} for state, mailing_id in zip(("paused", "throttled"), current)]}
        await store.put_meta({"sender_state": "sending", "sender_heartbeat": f"{time.time():.3f}",
                              "sender_waiting": json.dumps(waiting)})
    finally:
        await store.close()
    code, out, err = await _cli(Cli(fx.db), "status")
    assert code == 0, err
    assert "450 \\x1b]0;pwned\\x07E\\x1b[2J\\u202etxt" in out, out
    assert not any(c in out for c in "\x1b\x07\u202e")
