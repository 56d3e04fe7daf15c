"""Scale figures (issue 6, item 3): 10,000 mailings plus one of 1,000,000 recipients in one database.

    .venv/bin/python tests/bench/bench_scale.py [--dir DIR] [--reuse] [--send-seconds 40] [--only a,b,c,d,e]

Builds the database (in DIR, default a temporary directory; with --reuse an existing one in DIR
is used as it is), then prints each figure with its bound and PASS/FAIL:

  a. the dashboard's first complete frame (all three panels filled), in a fresh process;
  b. the remaining-recipients screen of the million: opening it, and PageDown x 50 (each key until
     the frame with its rows is displayed), in a fresh process with the dashboard behind it;
  c. `mailtower status --json`, wall time of the command;
  d. resident memory of `mailtower run` while it sends the million to Postfix's smtp-sink;
  e. `mailtower new --recipients` of a 1,000,000-row CSV (validated), time and peak memory, next to
     a 200,000-row file to show the memory is flat.

a-c read the built database without changing it; d and e work on a copy (deleted afterwards), so
--reuse always starts from the same state.

How the database is built: the schema is the project's own (`Store.open` creates and migrates
it); mailings are created with `Tx.insert_mailing` and every state is reached through the
project's `Lifecycle` transitions (send_now, schedule, start, stop, complete_if_done), so states,
queue positions and timeline events are what the real code writes. Only the bulk rows are
written with plain `executemany` inside a `Store.write()` transaction: the 1.8 million ledger rows
and the counters that summarise them, plus a back-dating of created/started/finished times so
the Inactive panel spans months like a real one. That shortcut is for the build step only; no
figure is measured through it.

Not a test: it prints figures for the note. Needs /usr/sbin/smtp-sink (installs Debian's postfix
package, tools only, if it is missing).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

PY = sys.executable
MAILTOWER = [PY, "-m", "mailtower.tui.cli"]

N_CURRENT = 300
N_SCHEDULED = 3_000
N_COMPLETED = 4_700
N_STOPPED = 1_000
N_DRAFT = 1_000
MILLION = 1_000_000
SIZE = (120, 40)

BOUND_FRAME = 1.5
BOUND_OPEN = 0.5
BOUND_KEY = 0.100  # a key answered within 100 ms feels immediate; more is a visible hitch
BOUND_STATUS = 2.0
BOUND_RSS_MB = 250.0
BOUND_IMPORT = 60.0
BOUND_FLAT = 1.5  # the 1,000,000-row import may use at most this times the 200,000-row import's peak

ZONES = [
    "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Sydney", "America/Los_Angeles",
    "Europe/London", "Asia/Kolkata", "America/Sao_Paulo", "Africa/Lagos", "Pacific/Auckland",
    "Asia/Kathmandu", "America/St_Johns", "Europe/Helsinki", "America/Chicago", "Asia/Singapore",
]
DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "web.de", "orange.fr", "gmx.net", "icloud.com", "proton.me"]
TOPICS = ["Spring sale", "Newsletter", "Product update", "Webinar invite", "Order reminder", "Survey",
          "Welcome series", "Price change", "Event recap", "Holiday hours"]
CITIES = ["Paris", "Lyon", "Zürich", "São Paulo", "Kraków", "Tokyo", "Berlin", "Austin"]
PARA = "Our spring collection is here, {{ name }}. Use code {{ code }} at checkout for ten percent off. "
TEXT = "Hello {{ name }},\n\n" + (PARA + "\n") * 7
HTML = "<html><body><p>Hello {{ name }},</p>" + ("<p>" + PARA + "</p>") * 7 + "</body></html>"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def line(label: str, value: str, bound: str = "", ok: bool | None = None) -> None:
    tail = f"   bound {bound:<10} {verdict(ok)}" if ok is not None else ""
    print(f"   {label:<58}{value:>12}{tail}", flush=True)


# ---- building the database -----------------------------------------------------------------


@dataclass
class Plan:
    """What the database holds, as the figures need it (saved next to the database)."""

    million_id: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # section -> mailings
    ledger_rows: int = 0


def _address(i: int, mailing_id: int) -> str:
    return f"reader.{i}.m{mailing_id}@{DOMAINS[i % len(DOMAINS)]}"


def _million_address(i: int) -> str:
    return f"person.{i}@{DOMAINS[i % len(DOMAINS)]}"


def _fields(i: int) -> str:
    return f'{{"city": "{CITIES[i % len(CITIES)]}", "code": "SPRING{i:07d}"}}'


async def build(db: Path) -> Plan:
    from mailtower.core.lifecycle import Lifecycle
    from mailtower.core.store import Store, iso
    from mailtower.core.timezones import utcnow

    rng = random.Random(6)
    kinds = (["queued"] * N_CURRENT + ["scheduled"] * N_SCHEDULED + ["completed"] * N_COMPLETED
             + ["stopped"] * N_STOPPED + ["draft"] * N_DRAFT)
    rng.shuffle(kinds)  # ids of every kind interleave, as they do when mailings come and go
    store = await Store.open(db)
    await store.db.execute("PRAGMA cache_size = -262144")  # 256 MiB for the bulk insert (this connection only)
    lc = Lifecycle(store)
    started = time.perf_counter()
    try:
        ids: list[tuple[int, str, int]] = []  # (id, kind, recipients)
        async with store.write() as tx:
            for i, kind in enumerate(kinds):
                n = rng.randint(10, 150)
                mid = await tx.insert_mailing(
                    name=f"{TOPICS[i % len(TOPICS)]} {2024 + i % 2}-{1 + i % 12:02d} #{i}",
                    subject="{{ name }}, " + TOPICS[i % len(TOPICS)].lower(),
                    from_addr="news@shop.example.org",
                    text_body=TEXT,
                    html_body=HTML,
                    fields=("city", "code"),
                )
                await tx.add_event(mid, "created", f"{n:,} recipients from list-{i}.csv")
                ids.append((mid, kind, n))
            million = await tx.insert_mailing(
                name="Spring sale: everyone (1M)", subject="{{ name }}, our spring sale",
                from_addr="news@shop.example.org", text_body=TEXT, html_body=HTML, fields=("city", "code"),
            )
            await tx.add_event(million, "created", f"{MILLION:,} recipients from everyone.csv")
        print(f"   build: {len(ids) + 1:,} mailings inserted in {time.perf_counter() - started:.1f} s", flush=True)

        # Bulk rows (build step only): ledger rows whose states match each mailing's kind, and the
        # counters that summarise them, in one transaction.
        started = time.perf_counter()
        counters: list[tuple[int, int, int, int, int]] = []

        def small_rows() -> Any:
            now = time.time()
            for mid, kind, n in ids:
                sent = failed = deferred = 0
                for i in range(n):
                    state, code, error, attempts, next_at = "pending", None, None, 0, None
                    if kind == "completed" or (kind == "stopped" and i < n * 0.6):
                        if i % 23 == 7:
                            state, code, error, attempts = "failed", 550, "550 5.1.1 mailbox unavailable", 1
                            failed += 1
                        else:
                            state, code, attempts = "sent", 250, 1
                            sent += 1
                    elif kind == "stopped" and i % 9 == 4:
                        state, code, error, attempts = "deferred", 451, "451 4.7.1 try again later", 1
                        next_at = now + 3600
                        deferred += 1
                    email = _address(i, mid)
                    yield (mid, email, email, f"Reader {i}", "", _fields(i), state, attempts, code, error, next_at, now)
                counters.append((n, sent, failed, deferred, mid))

        def million_rows() -> Any:
            for i in range(MILLION):
                email = _million_address(i)
                yield (million, email, email, f"Person {i}", "", _fields(i), "pending", 0, None, None, None, None)

        insert = ("INSERT INTO recipients (mailing_id, email, email_key, name, tz, fields, state, attempts, "
                  "last_code, last_error, next_attempt_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        async with store.write() as tx:
            await tx.db.executemany(insert, small_rows())
            await tx.db.executemany(insert, million_rows())
            await tx.db.executemany(
                "UPDATE mailings SET total = ?, sent = ?, failed = ?, deferred = ? WHERE id = ?", counters
            )
            await tx.db.execute("UPDATE mailings SET total = ? WHERE id = ?", (MILLION, million))
        ledger = sum(n for _, _, n in ids) + MILLION
        print(f"   build: {ledger:,} ledger rows in {time.perf_counter() - started:.1f} s", flush=True)

        # States through the lifecycle, each transition in its own transaction as in real use.
        started = time.perf_counter()
        now = utcnow()
        base = now.replace(tzinfo=None, second=0, microsecond=0)
        for mid, kind, _ in ids:
            if kind == "queued":
                await lc.send_now(mid)
            elif kind == "scheduled":
                local = base + timedelta(days=rng.randint(1, 90), hours=rng.randint(0, 23))
                await lc.schedule(mid, local.replace(minute=15 * rng.randint(0, 3)), rng.choice(ZONES))
            elif kind == "completed":
                await lc.send_now(mid)
                await lc.start(mid)
                await lc.complete_if_done(mid)
            elif kind == "stopped":
                await lc.send_now(mid)
                await lc.start(mid)
                await lc.stop(mid)
        await lc.send_now(million)
        await lc.stop(million)  # stopped before anything went out: a million remaining rows
        print(f"   build: lifecycle transitions in {time.perf_counter() - started:.1f} s", flush=True)

        # History (build step only): the lifecycle stamped everything "now"; spread it over months.
        history = []
        for mid, kind, _ in ids:
            created = now - timedelta(days=rng.uniform(1, 180))
            begun = finished = None
            if kind in ("completed", "stopped"):
                begun = created + timedelta(minutes=rng.randint(5, 600))
                finished = begun + timedelta(minutes=rng.randint(1, 240))
            history.append((iso(created), iso(begun), iso(finished), iso(finished or created), mid))
        async with store.write() as tx:
            await tx.db.executemany(
                "UPDATE mailings SET created_at = ?, started_at = COALESCE(?, started_at), "
                "finished_at = COALESCE(?, finished_at), updated_at = ? WHERE id = ?",
                history,
            )
        sections = await store.sections()
        return Plan(
            million_id=million,
            counts={section.value: len(mailings) for section, mailings in sections.items()},
            ledger_rows=ledger,
        )
    finally:
        await store.close()


def ensure_database(folder: Path, reuse: bool) -> tuple[Path, Plan]:
    db = folder / "scale.db"
    plan_file = folder / "scale.json"
    if reuse and db.exists() and plan_file.exists():
        plan = Plan(**json.loads(plan_file.read_text()))
        print(f"   reusing {db} ({db.stat().st_size / 2**20:,.0f} MiB)", flush=True)
        return db, plan
    for path in (db, plan_file, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        path.unlink(missing_ok=True)
    started = time.perf_counter()
    # Built in a child process, so the build's memory is gone before anything is measured.
    plan = Plan(**run_child(["--child", "build", "--db", str(db)], timeout=1800, echo=True))
    plan_file.write_text(json.dumps(plan.__dict__))
    print(f"   built {db} in {time.perf_counter() - started:.1f} s ({db.stat().st_size / 2**20:,.0f} MiB)", flush=True)
    return db, plan


def checkpoint(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def copy_database(db: Path, target: Path) -> Path:
    checkpoint(db)
    for suffix in ("", "-wal", "-shm"):
        Path(str(target) + suffix).unlink(missing_ok=True)
    shutil.copyfile(db, target)
    os.chmod(target, 0o600)
    return target


# ---- memory sampling -------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a live process in KiB (empty once it has exited)."""
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for text in f:
                if text.startswith(("VmRSS:", "VmHWM:")):
                    key, amount = text.split(":", 1)
                    values[key] = int(amount.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return values


class Sampler(threading.Thread):
    """Reads a process's VmRSS and VmHWM every `interval` seconds until it exits or is stopped."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []  # (seconds since start, VmRSS KiB, VmHWM KiB)
        self._halt = threading.Event()
        self._start = time.monotonic()

    def run(self) -> None:
        while not self._halt.is_set():
            status = proc_status(self.pid)
            if "VmRSS" in status:
                self.samples.append((time.monotonic() - self._start, status["VmRSS"], status.get("VmHWM", 0)))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


class GcWatch:
    """Notes every garbage collection (generation, start, end) while installed, to tell a slow
    frame caused by a full collection from one caused by our code."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float, float]] = []
        self._began = 0.0

    def __enter__(self) -> "GcWatch":
        gc.callbacks.append(self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._note)

    def _note(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.pauses.append((info["generation"], self._began, time.perf_counter()))

    def within(self, start: float, end: float, generation: int | None = None) -> float:
        """Seconds spent collecting between `start` and `end` (perf_counter times)."""
        return sum(
            max(0.0, min(end, stop) - max(start, begin))
            for gen, begin, stop in self.pauses
            if generation is None or gen == generation
        )


# ---- a. first complete frame (child process) ---------------------------------------------------


def hermetic_settings(db: Path) -> Any:
    """Defaults and this database: no config file or MAILTOWER_* variable of the machine applies."""
    from mailtower.core.config import load_settings

    return load_settings({"db": db}, environ={}, config_path=db.with_name("no-config.toml"))


def dashboard_class() -> Any:
    """DashboardApp that notes when the first frame showing every panel filled is displayed."""
    import mailtower.tui.app as app_module
    from mailtower.core.domain import Section
    from mailtower.tui.app import DashboardApp

    class Probe(DashboardApp):
        CSS_PATH = Path(app_module.__file__).with_name("app.tcss")

        def __init__(self, *args: Any, expect: dict[str, int], **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.expect = expect
            self.filled_at: float | None = None
            self.frame_probe: Callable[[], bool] | None = None
            self.probe_at: float | None = None
            self.read_seconds = 0.0
            self.render_seconds = 0.0
            self.output_seconds = 0.0
            self.frames = 0

        async def _read(self, store: Any) -> None:
            start = time.perf_counter()
            await super()._read(store)
            self.read_seconds += time.perf_counter() - start

        def _render(self) -> None:
            start = time.perf_counter()
            super()._render()
            self.render_seconds += time.perf_counter() - start

        def panels_filled(self) -> bool:
            if self._dashboard is None or not self._dashboard.is_mounted:
                return False
            return all(
                self.dashboard.table(Section(name)).row_count == count and count == len(self.sections[Section(name)])
                for name, count in self.expect.items()
            )

        def _display(self, screen: Any, renderable: Any) -> None:
            super()._display(screen, renderable)
            if renderable is None or self._batch_count:
                return
            self.frames += 1
            if self.is_headless and hasattr(renderable, "render_segments"):
                # The headless driver skips building the terminal's bytes; build them as a terminal would.
                start = time.perf_counter()
                renderable.render_segments(self.console)
                self.output_seconds += time.perf_counter() - start
            if self.filled_at is None and screen is self._dashboard and self.panels_filled():
                self.filled_at = time.perf_counter()
            if self.frame_probe is not None and self.probe_at is None and self.frame_probe():
                self.probe_at = time.perf_counter()

    return Probe


def child_dashboard(db: Path, t0: float, expect: dict[str, int]) -> None:
    """Run in a fresh process: time to the first frame with all three panels filled."""
    import_start = time.time()
    from mailtower.core.domain import Section

    Probe = dashboard_class()
    settings = hermetic_settings(db)
    constructed = time.time()
    app = Probe(settings, start_sender=False, hand_off_on_quit=False, expect=expect)
    constructed_perf = time.perf_counter()
    original = app._display

    def display_then_leave(screen: Any, renderable: Any) -> None:
        original(screen, renderable)
        if app.filled_at is not None and not app._exit:
            app.exit(0)

    app._display = display_then_leave  # type: ignore[method-assign]
    with GcWatch() as watch:
        app.run(headless=True, size=SIZE)
    if app.filled_at is None:
        print(json.dumps({"error": "the panels never filled"}))
        return
    frame_wall = constructed + (app.filled_at - constructed_perf)
    print(json.dumps({
        "from_start": frame_wall - t0,
        "interpreter_and_imports": constructed - t0,
        "imports_in_child": constructed - import_start,
        "from_app": app.filled_at - constructed_perf,
        "read": app.read_seconds,
        "render": app.render_seconds,
        "output": app.output_seconds,
        "frames": app.frames,
        "gc": watch.within(constructed_perf, app.filled_at),
        "gc_full": watch.within(constructed_perf, app.filled_at, 2),
        "gc_full_count": sum(1 for gen, _, stop in watch.pauses if gen == 2 and stop <= app.filled_at),
        "rows": {name: app.dashboard.table(Section(name)).row_count for name in expect},
    }))


# ---- b. remaining screen of the million (child process) -----------------------------------------


async def remaining_run(db: Path, million_id: int, expect: dict[str, int], presses: int) -> dict[str, Any]:
    from mailtower.tui.screens.remaining import PAGE_SIZE, RecipientList, RemainingScreen

    Probe = dashboard_class()
    app = Probe(hermetic_settings(db), start_sender=False, hand_off_on_quit=False, expect=expect)
    result: dict[str, Any] = {}

    async def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not met in time")
            await asyncio.sleep(0.0005)

    watch = GcWatch().__enter__()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(lambda: app.filled_at is not None)
        await pilot.pause()
        store = app.store
        assert store is not None
        mailing = await store.mailing(million_id)

        def listing() -> RecipientList | None:
            screen = app.screen
            if not isinstance(screen, RemainingScreen):
                return None
            found = screen.query(RecipientList)
            return found.first() if found else None

        def window_drawn(cursor: int | None = None) -> Callable[[], bool]:
            """The frame shows real rows (no loading lines) and, if given, the cursor there."""

            def check() -> bool:
                view = listing()
                if view is None or view.region.height == 0 or view.pages.count == 0:
                    return False
                if cursor is not None and view.cursor != cursor:
                    return False
                top = int(view.scroll_y)
                if cursor is not None and not top <= cursor < top + view.region.height:
                    return False
                last = min(top + view.region.height, view.row_count)
                return all(view.pages.row(i) is not None for i in range(top, last))

            return check

        app.probe_at, app.frame_probe = None, window_drawn()
        start = time.perf_counter()
        app.push_screen(RemainingScreen(store, mailing))
        await wait_for(lambda: app.probe_at is not None)
        result["open"] = app.probe_at - start  # type: ignore[operator]
        view = listing()
        assert view is not None
        result["rows_shown"] = view.pages.count
        result["first_line"] = view.render_line(0).text.strip()[:60]
        await pilot.pause()

        gc_in_key: list[float] = []

        async def timed_key(key: str, expected: Callable[[], int]) -> float:
            app.probe_at = None
            target = expected()
            app.frame_probe = window_drawn(target)
            begin = time.perf_counter()
            await pilot.press(key)
            await wait_for(lambda: app.probe_at is not None)
            gc_in_key.append(watch.within(begin, app.probe_at))  # type: ignore[arg-type]
            return app.probe_at - begin  # type: ignore[operator]

        page = max(view.scrollable_content_region.height - 1, 1)
        baseline = []
        for _ in range(10):
            begin = time.perf_counter()
            await pilot.press("x")  # bound to nothing: what Pilot itself costs per key
            baseline.append(time.perf_counter() - begin)
        result["pilot_key"] = statistics.median(baseline)
        downs = []
        for _ in range(presses):
            downs.append(await timed_key("pagedown", lambda: min(view.cursor + page, view.row_count - 1)))
        result["pagedown"] = downs
        result["pagedown_gc"] = list(gc_in_key)
        result["cursor_after"] = view.cursor
        result["pages_fetched_for"] = (view.cursor // PAGE_SIZE) + 1
        result["end"] = await timed_key("end", lambda: view.row_count - 1)
        ups = []
        for _ in range(10):
            ups.append(await timed_key("pageup", lambda: max(view.cursor - page, 0)))
        result["pageup_at_end"] = ups
        result["home"] = await timed_key("home", lambda: 0)
        app.exit(0)
    watch.__exit__()
    return result


def child_remaining(db: Path, million_id: int, expect: dict[str, int], presses: int) -> None:
    print(json.dumps(asyncio.run(remaining_run(db, million_id, expect, presses))))


# ---- the parent: running each figure ---------------------------------------------------------


def run_child(args: list[str], timeout: float = 300, echo: bool = False) -> dict[str, Any]:
    """Run this script as a child; its last JSON line is the result (other lines shown if `echo`)."""
    proc = subprocess.Popen([PY, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results: list[str] = []
    shown: list[str] = []
    assert proc.stdout is not None
    watchdog = threading.Timer(timeout, proc.kill)  # a hung child ends its output, and this loop
    watchdog.start()
    try:
        for text in proc.stdout:
            if text.startswith("{"):
                results.append(text)
            elif echo:
                print(text, end="", flush=True)
            else:
                shown.append(text)
        err = proc.communicate()[1]
    finally:
        watchdog.cancel()
    if proc.returncode != 0 or not results:
        raise RuntimeError(f"child {args[:2]} failed ({proc.returncode}):\n{''.join(shown)[-2000:]}\n{err[-4000:]}")
    return json.loads(results[-1])


def figure_a(db: Path, plan: Plan, runs: int = 3) -> bool:
    print(f"a. dashboard: first complete frame, {sum(plan.counts.values()):,} mailings "
          f"({plan.counts['current']:,} current, {plan.counts['scheduled']:,} scheduled, "
          f"{plan.counts['inactive']:,} inactive), headless {SIZE[0]}x{SIZE[1]}, start_sender=False", flush=True)
    expect = json.dumps(plan.counts)
    results = []
    for _ in range(runs):
        t0 = time.time()
        results.append(run_child(["--child", "dashboard", "--db", str(db), "--t0", repr(t0), "--expect", expect]))
    for r in results:
        if "error" in r:
            print(f"   {r['error']}")
            return False
    starts = sorted(r["from_start"] for r in results)
    median = statistics.median(starts)
    best = min(results, key=lambda r: abs(r["from_start"] - median))
    ok = median < BOUND_FRAME
    line(f"from process start (median of {runs}: {', '.join(f'{s:.2f}' for s in starts)})", f"{median:.3f} s",
         f"{BOUND_FRAME} s", ok)
    line("  interpreter start + imports, until App() is built", f"{best['interpreter_and_imports']:.3f} s")
    line("  from App() to the first complete frame", f"{best['from_app']:.3f} s")
    line("    of which: store reads (sections)", f"{best['read']:.3f} s")
    line("    of which: filling the three tables (_render)", f"{best['render']:.3f} s")
    line("    of which: building terminal output for all frames", f"{best['output']:.3f} s")
    line("    of which: garbage collection (all generations)", f"{best['gc']:.3f} s")
    line(f"      full (gen 2) collections: {best['gc_full_count']}, taking", f"{best['gc_full']:.3f} s")
    line("  frames displayed up to then", f"{best['frames']}")
    return ok


def figure_b(db: Path, plan: Plan, presses: int = 50) -> bool:
    print(f"b. remaining-recipients screen of the {MILLION:,} (stopped, nothing sent), over the dashboard, "
          f"{SIZE[0]}x{SIZE[1]}", flush=True)
    r = run_child(["--child", "remaining", "--db", str(db), "--million", str(plan.million_id),
                   "--expect", json.dumps(plan.counts), "--presses", str(presses)])
    ok_open = r["open"] < BOUND_OPEN
    line("push_screen -> first frame with rows", f"{r['open'] * 1000:.0f} ms", f"{BOUND_OPEN * 1000:.0f} ms", ok_open)
    line(f"  rows in the list ({r['first_line'][:28]}...)", f"{r['rows_shown']:,}")
    downs = r["pagedown"]
    worst, median = max(downs), statistics.median(downs)
    ok_scroll = worst < BOUND_KEY
    line(f"PageDown x {presses}: key -> frame with its rows, worst", f"{worst * 1000:.0f} ms",
         f"{BOUND_KEY * 1000:.0f} ms", ok_scroll)
    line("  median", f"{median * 1000:.1f} ms")
    line("  (for reference: Pilot's press() round trip, unbound key)", f"{r['pilot_key'] * 1000:.1f} ms")
    slow = [
        f"#{i + 1}: {t * 1000:.0f}" + (f" (gc {g * 1000:.0f})" if g >= 0.001 else "")
        for i, (t, g) in enumerate(zip(downs, r["pagedown_gc"]))
        if t > 2 * median
    ]
    line("  keys slower than twice the median, ms (of which garbage collection)", "")
    print(f"      {', '.join(slow) or 'none'}")
    worst_gc = r["pagedown_gc"][downs.index(worst)]
    line("  worst key without its garbage-collection pause", f"{(worst - worst_gc) * 1000:.0f} ms")
    line("End (row 1,000,000) -> frame with its rows (informative)", f"{r['end'] * 1000:.0f} ms")
    line("PageUp x 10 at the end, worst (informative)", f"{max(r['pageup_at_end']) * 1000:.0f} ms")
    line("Home -> frame with its rows (informative)", f"{r['home'] * 1000:.0f} ms")
    return ok_open and ok_scroll


def env_for(db: Path, folder: Path, port: int | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "MAILTOWER_DB": str(db),
        "MAILTOWER_CONFIG": os.devnull,  # no configuration file
        "MAILTOWER_SMTP_CONNECTIONS": "8",
        "MAILTOWER_MESSAGES_PER_CONNECTION": "0",
    }
    if port is not None:
        env.update({"MAILTOWER_SMTP_HOST": "127.0.0.1", "MAILTOWER_SMTP_PORT": str(port)})
    return env


def figure_c(db: Path, folder: Path, runs: int = 3) -> bool:
    print("c. `mailtower status --json` (a fresh process each run)", flush=True)
    times = []
    size = 0
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run([*MAILTOWER, "status", "--json"], env=env_for(db, folder), capture_output=True, check=True)
        times.append(time.perf_counter() - start)
        size = len(done.stdout)
    doc = json.loads(done.stdout)
    median = statistics.median(times)
    ok = median < BOUND_STATUS
    line(f"wall time (median of {runs}: {', '.join(f'{t:.2f}' for t in times)})", f"{median:.3f} s",
         f"{BOUND_STATUS} s", ok)
    line("  output", f"{size / 1024:,.0f} KiB")
    line("  mailings listed", f"{sum(len(v) for v in doc.values()):,}")
    start = time.perf_counter()
    subprocess.run([*MAILTOWER, "--version"], env=env_for(db, folder), capture_output=True, check=True)
    line("  (`mailtower --version`, interpreter + imports only)", f"{time.perf_counter() - start:.3f} s")
    return ok


# ---- d. sending the million ---------------------------------------------------------------------


def ensure_smtp_sink() -> str:
    found = shutil.which("smtp-sink") or ("/usr/sbin/smtp-sink" if Path("/usr/sbin/smtp-sink").exists() else None)
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "postfix"], check=True, env=env)
    subprocess.run(["postfix", "stop"], env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sink() -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([ensure_smtp_sink(), "-u", "nobody", f"127.0.0.1:{port}", "2048"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("smtp-sink did not start")


def mailing_counts(db: Path, mailing_id: int) -> tuple[str, int, int]:
    with sqlite3.connect(db) as conn:
        state, sent, failed = conn.execute("SELECT state, sent, failed FROM mailings WHERE id = ?", (mailing_id,)).fetchone()
    conn.close()
    return state, sent, failed


def figure_d(work: Path, folder: Path, plan: Plan, seconds: float) -> bool:
    print(f"d. `mailtower run` sending the {MILLION:,} to smtp-sink (8 connections, no rate limit), "
          f"RSS sampled every 0.5 s for {seconds:.0f} s", flush=True)
    sink, port = start_sink()
    env = env_for(work, folder, port)
    try:
        for command in (["send-now", str(plan.million_id)], ["move", str(plan.million_id), "top"]):
            subprocess.run([*MAILTOWER, *command], env=env, check=True, capture_output=True)
        proc = subprocess.Popen([*MAILTOWER, "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        sampler = Sampler(proc.pid)
        sampler.start()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.25)
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        sampler.stop()
    finally:
        sink.terminate()
        sink.wait(timeout=10)
    state, sent, failed = mailing_counts(work, plan.million_id)
    samples = sampler.samples
    if not samples:
        print(f"   no samples: the sender exited at once ({err.decode()[-500:]})")
        return False
    peak = max(hwm for _, _, hwm in samples) / 1024
    ok = peak < BOUND_RSS_MB and sent > 0
    line("peak resident memory (VmHWM)", f"{peak:,.0f} MB", f"{BOUND_RSS_MB:.0f} MB", ok)
    marks = [samples[min(len(samples) - 1, int(len(samples) * q))] for q in (0.1, 0.25, 0.5, 0.75, 1.0)]
    line("  VmRSS over time", "  ".join(f"{t:.0f}s:{rss / 1024:.0f}" for t, rss, _ in marks) + " MB")
    line(f"  sent while sampled (state now {state}), failed", f"{sent:,}, {failed}")
    line("  rate over the window", f"{sent / seconds:,.0f} msg/s")
    if proc.returncode not in (0, -signal.SIGTERM):
        print(f"   sender exit status {proc.returncode}: {err.decode()[-500:]}")
    return ok


# ---- e. importing a million-row CSV ---------------------------------------------------------------


def write_csv(path: Path, rows: int, tag: str) -> Path:
    rng = random.Random(rows)
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("email,name,city,code\r\n")
        for i in range(rows):
            if rng.random() < 0.6:
                domain = DOMAINS[i % len(DOMAINS)]
            else:
                n = rng.randrange(5000)
                domain = f"mail{n}.example-{n % 97}.com"
            out.write(f"{tag}.{i}+news@{domain},Person {i},{CITIES[i % len(CITIES)]},SPRING{i:07d}\r\n")
    return path


def timed_import(work: Path, folder: Path, csv_path: Path, name: str) -> tuple[float, float, Sampler]:
    """Wall seconds and peak RSS in MiB of one `mailtower new`, and the sampler that followed it.

    The peak is the process's VmHWM (high-water mark of its address space since exec), read every
    0.1 s. Not ru_maxrss: Linux carries that across exec, so it would include this benchmark
    process's own size, which the child shares between fork and exec.
    """
    text, html = folder / "body.txt", folder / "body.html"
    text.write_text(TEXT, encoding="utf-8")
    html.write_text(HTML, encoding="utf-8")
    out_path = folder / f"import-{name.split()[-1]}.out"
    with out_path.open("wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [*MAILTOWER, "new", "--name", name, "--subject", "{{ name }}, our spring sale", "--from",
             "news@shop.example.org", "--text", str(text), "--html", str(html), "--recipients", str(csv_path)],
            env=env_for(work, folder), stdout=out, stderr=subprocess.STDOUT,
        )
        sampler = Sampler(proc.pid, interval=0.1)
        sampler.start()
        proc.wait()
        elapsed = time.perf_counter() - start
        sampler.stop()
    output = out_path.read_text().strip()
    if proc.returncode != 0:
        raise RuntimeError(f"mailtower new failed ({proc.returncode}): {output[-1000:]}")
    return elapsed, max((hwm for _, _, hwm in sampler.samples), default=0) / 1024, sampler


def figure_e(work: Path, folder: Path) -> bool:
    print("e. `mailtower new --recipients FILE` (email,name + 2 merge columns, validated) into the scale database",
          flush=True)
    small_rows = 200_000
    started = time.perf_counter()
    small = write_csv(folder / "import-200k.csv", small_rows, "small")
    big = write_csv(folder / "import-1m.csv", MILLION, "big")
    line(f"  (generated both files in {time.perf_counter() - started:.1f} s, "
         f"{big.stat().st_size / 2**20:.0f} MiB for the million)", "")
    t_small, peak_small, _ = timed_import(work, folder, small, "import 200k")
    t_big, peak_big, sampler = timed_import(work, folder, big, "import 1M")
    state = sqlite3.connect(work)
    imported = {
        name: state.execute("SELECT total FROM mailings WHERE name = ?", (name,)).fetchone()[0]
        for name in ("import 200k", "import 1M")
    }
    state.close()
    ok_time = t_big < BOUND_IMPORT and imported["import 1M"] == MILLION
    ratio = peak_big / peak_small
    ok_flat = ratio <= BOUND_FLAT
    line(f"1,000,000 rows: wall time ({imported['import 1M']:,} imported)", f"{t_big:.1f} s",
         f"{BOUND_IMPORT:.0f} s", ok_time)
    line("  rows per second", f"{MILLION / t_big:,.0f}")
    line("  peak resident memory (VmHWM)", f"{peak_big:,.0f} MB")
    marks = [sampler.samples[min(len(sampler.samples) - 1, int(len(sampler.samples) * q))] for q in (0.1, 0.5, 0.9)]
    line("  VmRSS while importing", "  ".join(f"{t:.0f}s:{rss / 1024:.0f}" for t, rss, _ in marks) + " MB")
    line(f"200,000 rows: wall time ({imported['import 200k']:,} imported)", f"{t_small:.1f} s")
    line("  peak resident memory (VmHWM)", f"{peak_small:,.0f} MB")
    line("memory flat: peak(1M) / peak(200k)", f"{ratio:.2f}", f"<= {BOUND_FLAT}", ok_flat)
    return ok_time and ok_flat


# ---- main ---------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, help="where the database goes (default: a temporary directory, removed after)")
    ap.add_argument("--reuse", action="store_true", help="use the database already in --dir instead of building it")
    ap.add_argument("--send-seconds", type=float, default=40.0)
    ap.add_argument("--presses", type=int, default=50)
    ap.add_argument("--only", default="a,b,c,d,e", help="which figures, e.g. a,c")
    ap.add_argument("--child", choices=["build", "dashboard", "remaining"], help=argparse.SUPPRESS)
    ap.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--expect", help=argparse.SUPPRESS)
    ap.add_argument("--million", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "dashboard":
        child_dashboard(args.db, args.t0, json.loads(args.expect))
        return 0
    if args.child == "build":
        plan = asyncio.run(build(args.db))
        checkpoint(args.db)
        print(json.dumps(plan.__dict__))
        return 0
    if args.child == "remaining":
        child_remaining(args.db, args.million, json.loads(args.expect), args.presses)
        return 0

    folder = args.dir or Path(tempfile.mkdtemp(prefix="mailtower-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(","))
    began = time.perf_counter()
    results: dict[str, bool] = {}
    try:
        print(f"scale database: {N_CURRENT} queued + {N_SCHEDULED:,} scheduled + {N_COMPLETED:,} completed + "
              f"{N_STOPPED:,} stopped + {N_DRAFT:,} drafts, and one stopped mailing of {MILLION:,} recipients; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (other work on this machine slows every figure)",
              flush=True)
        db, plan = ensure_database(folder, args.reuse)
        print(f"   {plan.ledger_rows:,} ledger rows; sections {plan.counts}", flush=True)
        if "a" in only:
            results["a"] = figure_a(db, plan)
        if "b" in only:
            results["b"] = figure_b(db, plan, args.presses)
        if "c" in only:
            results["c"] = figure_c(db, folder)
        if only & {"d", "e"}:
            work = copy_database(db, folder / "work.db")
            try:
                if "d" in only:
                    results["d"] = figure_d(work, folder, plan, args.send_seconds)
                if "e" in only:
                    results["e"] = figure_e(work, folder)
            finally:
                for suffix in ("", "-wal", "-shm", ".lease", ".run.log"):
                    Path(str(work) + suffix).unlink(missing_ok=True)
                for leftover in [*folder.glob("import-*.csv"), *folder.glob("import-*.out")]:
                    leftover.unlink()
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    summary = "  ".join(f"{key}:{verdict(ok)}" for key, ok in results.items())
    print(f"summary: {summary}   ({time.perf_counter() - began:.0f} s in all; load average now {os.getloadavg()[0]:.2f})")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
