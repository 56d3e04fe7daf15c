"""`mailtower demo`: the dashboard on a throw-away database, sending to a local SMTP sink.

Everything lives in a temporary directory that is removed on exit. The sink answers with a
little latency and the occasional temporary (450) and permanent (550) refusal, so deferrals
and failures show. The sample data makes every part of the dashboard visible at once: three
mailings sending at a pace an eye can follow, schedules in several zones (one due within two
minutes, and one split by recipient zone), and inactive mailings: completed, stopped with
remaining recipients, and a draft.
"""

from __future__ import annotations

import asyncio
import csv
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

from mailtower.core.config import Settings
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.operations import Draft, create_mailing
from mailtower.core.waves import schedule_waves
from mailtower.core.sender import Sender
from mailtower.core.sink import Sink, demo_fault
from mailtower.core.store import Store, open_store
from mailtower.core.timezones import to_zone, utcnow

from . import loops
from .app import HANGUP_EXIT, DashboardApp

DEMO_RATE = 60.0  # messages per second: fast enough to move, slow enough to watch
FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Linus", "Radia", "Donald")
DOMAINS = ("example.com", "example.org", "example.net", "mail.example", "post.example")
TEXT = "Hello {{ name }},\n\nthis is a message from the mailtower demo.\n\nBest regards\n"


def demo_settings(folder: Path, port: int) -> Settings:
    return Settings(
        db=folder / "demo.db",
        smtp_host="127.0.0.1",
        smtp_port=port,
        connections=4,
        rate=DEMO_RATE,
        retry_base=20.0,  # deferred recipients come back while you watch
        retry_max=60.0,
        messages_per_connection=500,
    )


def write_csv(path: Path, n: int, tag: str, *, zones: tuple[str, ...] = (), clean: bool = False) -> Path:
    """n recipients; `clean` keeps clear of the sink's faults so a mailing can complete."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["email", "name", "tz"] if zones else ["email", "name"])
        i = written = 0
        while written < n:
            name = FIRST_NAMES[i % len(FIRST_NAMES)]
            address = f"{name.lower()}.{tag}{i}@{DOMAINS[i % len(DOMAINS)]}"
            i += 1
            if clean and (demo_fault("rcpt", address, 1) or demo_fault("data", address, 1)):
                continue
            row = [address, f"{name} {tag.title()} {i}"]
            writer.writerow(row + [zones[written % len(zones)]] if zones else row)
            written += 1
    return path


async def _mailing(store: Store, folder: Path, name: str, n: int, **kwargs: object) -> int:
    tag = "".join(ch for ch in name.lower() if ch.isalnum())[:8]
    path = write_csv(folder / f"{tag}.csv", n, tag, **kwargs)  # type: ignore[arg-type]
    draft = Draft(name, f"{name}: news for {{{{ name }}}}", "demo@mailtower.example", TEXT, None)
    mailing_id, _ = await create_mailing(store, draft, path, lambda row: None)
    return mailing_id


def _next_local(tz: str, days: int, hour: int, minute: int = 0) -> datetime:
    """A wall time `days` from today in `tz` (naive, as the schedule dialog would give it)."""
    today = to_zone(utcnow(), tz).date()
    return datetime.combine(today + timedelta(days=days), datetime.min.time()).replace(hour=hour, minute=minute)


def _setup(settings: Settings) -> Settings:
    """Preparing the inactive mailings goes at full speed, over more connections."""
    return replace(settings, rate=0.0, connections=16)


async def _send_some(settings: Settings, store: Store, mailing_id: int, at_least: int, timeout: float = 30) -> None:
    """Send part of a mailing at full speed, then stop it: a stopped mailing with remaining recipients."""
    sender = Sender(_setup(settings), what="mailtower demo setup")
    task = asyncio.create_task(sender.run())
    deadline = time.monotonic() + timeout
    while (await store.mailing(mailing_id)).sent < at_least and time.monotonic() < deadline and not task.done():
        await asyncio.sleep(0.05)
    await Lifecycle(store).stop(mailing_id)
    sender.request_stop()
    await task


async def build_demo(settings: Settings, folder: Path) -> None:
    store = await open_store(settings.db)
    lifecycle = Lifecycle(store)
    try:
        # Inactive first, sent for real so Details and Remaining have something true to show.
        done = await _mailing(store, folder, "Welcome series — March", 150, clean=True)
        await lifecycle.send_now(done)
        await Sender(_setup(settings), what="mailtower demo setup").run(until_idle=True)
        stopped = await _mailing(store, folder, "Winter clearance", 2500)
        await lifecycle.send_now(stopped)
        await _send_some(settings, store, stopped, at_least=400)
        await _mailing(store, folder, "Autumn teaser (draft)", 800)
        # Current, in queue order.
        for name, n in (("Spring sale — Europe", 12_000), ("Newsletter #42", 5_000), ("Product launch: Tower 2", 20_000)):
            await lifecycle.send_now(await _mailing(store, folder, name, n))
        # Scheduled in several zones; the first comes due in about two minutes.
        soon = to_zone(utcnow() + timedelta(seconds=150), "Asia/Tokyo").replace(second=0, microsecond=0, tzinfo=None)
        plans = [
            ("Tokyo morning brief", 400, soon, "Asia/Tokyo"),
            ("US webinar invite", 1500, _next_local("America/New_York", 1, 9), "America/New_York"),
            ("Sydney flash sale", 900, _next_local("Australia/Sydney", 2, 8, 30), "Australia/Sydney"),
            ("Berlin meetup", 300, _next_local("Europe/Berlin", 6, 18), "Europe/Berlin"),
        ]
        for name, n, local, tz in plans:
            await lifecycle.schedule(await _mailing(store, folder, name, n), local, tz)
        # Delivered at 10:00 in each recipient's own zone: one wave per instant (Paris and Berlin together).
        zones = ("Europe/Lisbon", "Europe/Paris", "Europe/Berlin", "America/Chicago", "Asia/Kolkata")
        world = await _mailing(store, folder, "Global announcement", 600, zones=zones)
        await schedule_waves(store, lifecycle, world, _next_local("UTC", 2, 10), None, utcnow())
    finally:
        await store.close()


def run_demo() -> int:
    """Prepare the demo, run the dashboard on it, and remove everything afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="mailtower-demo-"))
    sink = Sink(fault=demo_fault, latency=0.01)

    def cleanup() -> None:
        sink.stop()
        shutil.rmtree(folder, ignore_errors=True)

    try:
        sink.start()
        settings = demo_settings(folder, sink.port)
        print(f"mailtower demo: preparing sample mailings in {folder} ...", file=sys.stderr)
        loops.run(build_demo(settings, folder))
        # No hand-off: quitting the demo stops its sending, and its database goes with it.
        app = DashboardApp(settings, hand_off_on_quit=False, hangup_exit=HANGUP_EXIT, cleanup=cleanup, demo=True)
        loops.run_app(app)
        return app.return_code or 0
    finally:
        cleanup()
