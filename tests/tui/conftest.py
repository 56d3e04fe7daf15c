"""Fixtures for the dashboard tests: a database with fixed contents, a settable clock, helpers."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from mailtower.core.config import Settings
from mailtower.tui.screens import confirm
from mailtower.core.lease import SenderLease
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.operations import Draft, create_mailing
from mailtower.core.store import Store

# Every fixed database lives in 2099, so the real clock never makes a schedule "past" while
# the injected clock keeps every relative time in the pictures the same.
FIXED_NOW = datetime(2099, 5, 31, 10, 0, tzinfo=timezone.utc)
OPERATOR_TZ = "Europe/Berlin"


class Clock:
    """An injectable `now()` that tests move by hand."""

    def __init__(self, start: datetime = FIXED_NOW) -> None:
        self.value = start

    def __call__(self) -> datetime:
        return self.value

    def advance(self, seconds: float) -> None:
        self.value += timedelta(seconds=seconds)


def write_recipients(path: Path, n: int, domain: str = "example.com", prefix: str = "user") -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["email", "name"])
        for i in range(n):
            writer.writerow([f"{prefix}{i}@{domain}", f"{prefix.title()} {i}"])
    return path


async def new_mailing(store: Store, folder: Path, name: str, n: int, *, domain: str = "example.com") -> int:
    csv_path = write_recipients(folder / f"r{abs(hash(name))}.csv", n, domain, prefix=re.sub(r"[^a-z0-9]", "", name.split()[0].lower()))
    draft = Draft(name, f"{name} subject", "news@example.com", "Hello {{ name }}", None)
    mailing_id, _ = await create_mailing(store, draft, csv_path, lambda row: None)
    return mailing_id


async def fake_progress(store: Store, mailing_id: int, sent: int, failed: int = 0, deferred: int = 0) -> None:
    """Mark ledger rows and counters as if a sender had got this far (rows in id order)."""
    db = store.db
    for state, n in (("sent", sent), ("failed", failed), ("deferred", deferred)):
        if not n:
            continue
        extra = ", last_code = 550, last_error = '550 5.1.1 mailbox unavailable'" if state == "failed" else ""
        if state == "deferred":
            extra = ", last_code = 450, last_error = '450 4.2.1 try later', next_attempt_at = 4083660000"
        await db.execute(
            f"UPDATE recipients SET state = ?, attempts = 1{extra} WHERE id IN "
            "(SELECT id FROM recipients WHERE mailing_id = ? AND state = 'pending' ORDER BY id LIMIT ?)",
            (state, mailing_id, n),
        )
    await db.execute(
        "UPDATE mailings SET sent = sent + ?, failed = failed + ?, deferred = deferred + ? WHERE id = ?",
        (sent, failed, deferred, mailing_id),
    )


def iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class Fixture:
    db: Path
    ids: dict[str, int] = field(default_factory=dict)


async def build_fixed(db: Path, *, sending: bool = True, small: bool = False) -> Fixture:
    """Three current, four scheduled (one missed), three inactive mailings with fixed numbers and times."""
    folder = db.parent
    store = await Store.open(db)
    lc = Lifecycle(store)
    fx = Fixture(db)
    scale = 1 if small else 10
    try:
        # Current, in queue order.
        for key, name, n, (sent, failed, deferred) in [
            ("spring", "Spring sale — Europe", 1200 * scale, (624 * scale, 3, 12)),
            ("news", "Newsletter #42 [weekly]", 500 * scale, (0, 0, 0)),
            ("launch", "Product launch: Tower 2", 300 * scale, (0, 0, 0)),
        ]:
            mid = await new_mailing(store, folder, name, n)
            await lc.send_now(mid)
            await fake_progress(store, mid, sent, failed, deferred)
            fx.ids[key] = mid
        if sending:
            await lc.start(fx.ids["spring"])
        # Scheduled, in several zones.
        for key, name, local, tz in [
            ("tokyo", "Tokyo morning brief", datetime(2099, 5, 31, 21, 30), "Asia/Tokyo"),
            ("ny", "US webinar invite", datetime(2099, 6, 1, 9, 0), "America/New_York"),
            ("berlin", "Berlin meetup", datetime(2099, 6, 7, 18, 0), "Europe/Berlin"),
            ("missed", "Flash sale (missed)", datetime(2099, 5, 31, 8, 0), "Australia/Sydney"),
        ]:
            mid = await new_mailing(store, folder, name, 40 * scale)
            await lc.schedule(mid, local, tz)
            fx.ids[key] = mid
        await lc.mark_missed(fx.ids["missed"], 7200)
        # Inactive: completed, stopped with remaining recipients, a draft.
        done = await new_mailing(store, folder, "March digest", 80 * scale)
        await lc.send_now(done)
        await fake_progress(store, done, 79 * scale, failed=scale)
        assert await lc.complete_if_done(done)
        stopped = await new_mailing(store, folder, "Winter clearance", 200 * scale)
        await lc.send_now(stopped)
        await fake_progress(store, stopped, 50 * scale, failed=2, deferred=5)
        await lc.stop(stopped)
        draft = await new_mailing(store, folder, "Draft: autumn teaser", 25 * scale)
        fx.ids.update(done=done, stopped=stopped, draft=draft)
        # Fixed times, newest-first order of Inactive: stopped, done, draft.
        times = {
            done: (FIXED_NOW - timedelta(days=2, hours=3), FIXED_NOW - timedelta(days=1)),
            stopped: (FIXED_NOW - timedelta(days=1), FIXED_NOW - timedelta(hours=2, minutes=10)),
            draft: (FIXED_NOW - timedelta(days=3), None),
        }
        await store.db.execute(
            "UPDATE mailings SET created_at = ?, updated_at = ?, started_at = NULL", (iso(FIXED_NOW), iso(FIXED_NOW))
        )
        for mid, (created, finished) in times.items():
            await store.db.execute(
                "UPDATE mailings SET created_at = ?, updated_at = ?, finished_at = ? WHERE id = ?",
                (iso(created), iso(finished or created), iso(finished) if finished else None, mid),
            )
    finally:
        await store.close()
    return fx


def settings_for(db: Path, port: int = 2525, **overrides: object) -> Settings:
    return Settings(db=db, smtp_host="127.0.0.1", smtp_port=port, **overrides)  # type: ignore[arg-type]


class HeldLease:
    """Another 'process' holding the sender lease, described with fixed words for the pictures."""

    def __init__(self, db: Path) -> None:
        self.lease = SenderLease(db)
        assert self.lease.acquire("mailtower run")
        info = {"pid": 4242, "host": "ops-1", "since": 0.0, "what": "mailtower run"}
        fd = os.open(self.lease.path, os.O_WRONLY)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        finally:
            os.close(fd)

    def release(self) -> None:
        self.lease.release()


async def put_sender_meta(db: Path, now: datetime, *, state: str = "sending", rate: float = 42.5, accepted_ago: float = 3.0) -> None:
    """What a sending process writes once a second, as of `now`."""
    store = await Store.open(db)
    try:
        await store.put_meta(
            {
                "sender_state": state,
                "sender_reason": "",
                "sender_rate": f"{rate:.3f}",
                "sender_last_accept": f"{now.timestamp() - accepted_ago:.3f}",
                "sender_heartbeat": f"{now.timestamp():.3f}",
            }
        )
    finally:
        await store.close()


async def wait_for(condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, what: str = "") -> None:
    """Poll a condition (sync or async) until true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        await asyncio.sleep(0.02)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fixed_db(tmp_path: Path) -> Fixture:
    return asyncio.run(build_fixed(tmp_path / "fixed.db", small=True))


@pytest.fixture
def held_lease(fixed_db: Fixture) -> Iterator[HeldLease]:
    lease = HeldLease(fixed_db.db)
    yield lease
    lease.release()


@pytest.fixture(autouse=True)
def keys_count_at_once(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A destructive dialog's key counts at once here, except in tests marked `armed`, which test
    that wait itself (tests/tui/test_reflex_keys.py): it is there for a person typing ahead, and
    every other test would only wait it out at each confirmation."""
    if request.node.get_closest_marker("armed") is None:
        monkeypatch.setattr(confirm, "ARM_SECONDS", 0.0, raising=False)
