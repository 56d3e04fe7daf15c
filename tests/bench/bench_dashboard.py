"""What the dashboard costs while the sender runs at full speed with 1,000 mailings on screen.

    .venv/bin/python tests/bench/bench_dashboard.py [--seconds 15] [--mailings 1000]

Three runs on the same kind of database (a fresh copy each time), all sending to a local sink
with no rate limit:
  1. the sender alone (no UI): messages sent and process CPU per message;
  2. the dashboard (headless, 120x40) with its sender in-process: the same figures; the
     difference in CPU beyond what the messages themselves cost is the dashboard's own share;
     and time spent inside the dashboard's refresh (store reads + cell updates) measured directly;
  3. key-press latency during run 2, for every key the dashboard has: time from the key's
     arrival until its effect is on screen (the cursor moved, the menu or the Keys screen open,
     the dashboard back) AND the screen has been painted after it: the compositor's update and
     the text a terminal would be sent for it (headless Textual skips making that text; this
     benchmark makes it and drops it, so its cost counts). n, median, p95 and max per key, and
     a PASS/FAIL line: the max of every key against 50 ms. The same presses are also given in
     CPU time of the event loop's thread, and the load average of the machine is printed,
     since other processes lengthen every stall. `--stalls MS` also lists every callback that
     held the event loop longer than MS during the dashboard run, with where it was.
Not a test: prints figures for the note.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from mailtower.core.config import Settings
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.operations import Draft, create_mailing
from mailtower.core.sender import Sender
from mailtower.core.sink import Sink
from mailtower.core.store import Store
from mailtower.core.timezones import utcnow
from mailtower.tui.actions import ActionsMenu
from mailtower.tui.app import DashboardApp
from mailtower.tui.help import HelpScreen
from textual._compositor import CompositorUpdate
from textual.screen import Screen


def write_csv(path: Path, n: int, tag: str) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["email", "name"])
        for i in range(n):
            writer.writerow([f"{tag}{i}@example.com", f"R {i}"])
    return path


async def build(db: Path, folder: Path, mailings: int, big: int) -> None:
    """One big mailing at the head of the queue, then small ones: 30% current, 30% scheduled, 40% drafts."""
    store = await Store.open(db)
    lc = Lifecycle(store)
    small = write_csv(folder / "small.csv", 20, "s")
    draft = Draft("x", "Subject {{ name }}", "bench@example.com", "Hello {{ name }}", None)
    try:
        head, _ = await create_mailing(store, replace(draft, name="Big one"), write_csv(folder / "big.csv", big, "b"), print)
        await lc.send_now(head)
        when = utcnow().replace(tzinfo=None, microsecond=0, second=0)
        for i in range(mailings - 1):
            mid, _ = await create_mailing(store, replace(draft, name=f"Mailing {i:04d}"), small, print)
            kind = i % 10
            if kind < 3:
                await lc.send_now(mid)
            elif kind < 6:
                await lc.schedule(mid, when.replace(year=when.year + 1, minute=i % 60), "Europe/Berlin")
    finally:
        await store.close()


def settings_for(db: Path, port: int) -> Settings:
    return Settings(db=db, smtp_host="127.0.0.1", smtp_port=port, connections=4, rate=0.0)


async def sent_count(db: Path) -> int:
    store = await Store.open(db)
    try:
        return sum(m.sent for m in await store.mailings())
    finally:
        await store.close()


async def run_sender_alone(settings: Settings, seconds: float) -> tuple[int, float]:
    sender = Sender(settings)
    task = asyncio.create_task(sender.run())
    await asyncio.sleep(2.0)  # warm up: connections open, first batches claimed
    before_sent, before_cpu = await sent_count(settings.db), time.process_time()
    await asyncio.sleep(seconds)
    sent, cpu = await sent_count(settings.db) - before_sent, time.process_time() - before_cpu
    sender.request_stop()
    await task
    return sent, cpu


class Meter:
    """Main-thread CPU seconds spent inside the dashboard's own synchronous work."""

    def __init__(self) -> None:
        self.screen = 0.0  # Textual: layout, compositing and rendering widgets (the panels)
        self.render = 0.0  # ours: rows diffed and cells written into the tables
        self.read = 0.0  # ours: wall time of re-reading the store (an upper bound on its CPU)
        self.reads = 0

    def wrap_screen(self) -> None:
        original = Screen._on_timer_update
        meter = self

        def timed(screen: Screen) -> None:
            start = time.thread_time()
            try:
                original(screen)
            finally:
                meter.screen += time.thread_time() - start

        Screen._on_timer_update = timed  # type: ignore[method-assign]


METER = Meter()


class StallWatch:
    """Which callbacks hold the event loop longer than `threshold` seconds, and where they were.

    Every callback the loop runs (a task's step, a timer, a message) goes through `Handle._run`;
    a thread samples the loop thread's stack while one runs past half the threshold, so a stall
    is reported with the code it was in, not only the task's name."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.running: asyncio.Handle | None = None
        self.started = 0.0
        self.samples: list[tuple[str, ...]] = []
        self.stalls: list[tuple[float, str, tuple[str, ...]]] = []
        self.loop_thread = threading.get_ident()
        self.collections: list[tuple[int, float]] = []
        self._gc_start = 0.0
        self._stop = threading.Event()

    def install(self) -> None:
        original = asyncio.Handle._run
        watch = self

        def timed_run(handle: asyncio.Handle) -> None:
            if threading.get_ident() != watch.loop_thread:  # the SMTP sink's own loop
                original(handle)
                return
            watch.samples = []
            watch.started = time.perf_counter()
            watch.running = handle
            try:
                original(handle)
            finally:
                watch.running = None
                took = time.perf_counter() - watch.started
                if took > watch.threshold:
                    middle = watch.samples[len(watch.samples) // 2] if watch.samples else ()
                    watch.stalls.append((took, describe_handle(handle), middle))

        asyncio.Handle._run = timed_run  # type: ignore[method-assign]
        threading.Thread(target=self._sample, daemon=True).start()
        gc.callbacks.append(self._collected)

    def _collected(self, phase: str, info: dict[str, int]) -> None:
        """The collector's pauses (they stop the loop too): generation and length."""
        if phase == "start":
            self._gc_start = time.perf_counter()
        elif threading.get_ident() == self.loop_thread:
            self.collections.append((info["generation"], time.perf_counter() - self._gc_start))

    def _sample(self) -> None:
        while not self._stop.wait(0.002):  # bounded by the process: a daemon thread
            running, started = self.running, self.started
            if running is None or time.perf_counter() - started < self.threshold / 2:
                continue
            frame = sys._current_frames().get(self.loop_thread)
            if frame is not None and self.running is running:
                self.samples.append(tuple(
                    f"{Path(f.filename).parent.name}/{Path(f.filename).name}:{f.lineno} {f.name}"
                    for f in traceback.extract_stack(frame)[-14:]
                ))

    def report(self) -> None:
        print(f"callbacks holding the loop > {self.threshold * 1000:.0f} ms (during the dashboard run):")
        groups: dict[str, list[tuple[float, tuple[str, ...]]]] = {}
        for took, what, stack in self.stalls:
            groups.setdefault(what, []).append((took, stack))
        for what, stalls in sorted(groups.items(), key=lambda kv: -max(t for t, _ in kv[1])):
            values = [t for t, _ in stalls]
            print(f"  {len(values):4d}x max {max(values) * 1000:5.1f} ms total {sum(values) * 1000:7.1f} ms  {what}")
            for took, stack in sorted(stalls, reverse=True)[:3]:  # where the three longest were
                print(f"      {took * 1000:5.1f} ms in:")
                for line in stack:
                    print(f"        {line}")
        for generation in range(3):
            pauses = [t for g, t in self.collections if g == generation]
            if pauses:
                print(f"  garbage collections of generation {generation}: {len(pauses)}x, max {max(pauses) * 1000:.1f} ms")


def describe_handle(handle: asyncio.Handle) -> str:
    callback = getattr(handle, "_callback", None)
    task = getattr(callback, "__self__", None)
    if isinstance(task, asyncio.Task):
        coro = task.get_coro()
        return f"task {getattr(coro, '__qualname__', coro)}"
    return f"callback {getattr(callback, '__qualname__', callback)}"




class TimedApp(DashboardApp):
    painted_at = 0.0  # perf_counter of the last screen update the compositor produced

    def _display(self, screen: Screen, renderable: object) -> None:  # type: ignore[override]
        super()._display(screen, renderable)  # type: ignore[arg-type]
        if renderable is not None and not self._batch_count:
            if isinstance(renderable, CompositorUpdate):
                # The text a terminal would be sent: headless Textual skips making it, a real
                # terminal does not, so it is made here (and dropped) and its cost counts.
                renderable.render_segments(self.console)
            self.painted_at = time.perf_counter()

    def _render(self) -> None:
        start = time.thread_time()
        try:
            super()._render()
        finally:
            METER.render += time.thread_time() - start

    async def _read(self, store: Store) -> None:
        start = time.perf_counter()
        try:
            await super()._read(store)
        finally:
            METER.read += time.perf_counter() - start
            METER.reads += 1


async def run_dashboard(settings: Settings, seconds: float, presses: int) -> dict[str, object]:
    app = TimedApp(settings, hand_off_on_quit=False)
    result: dict[str, object] = {}
    async with app.run_test(size=(120, 40)):
        deadline = time.monotonic() + 30
        while (app.sender is None or app.sender.snapshot.rate == 0) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.0)
        before_sent, before_cpu = await sent_count(settings.db), time.process_time()
        before = (METER.screen, METER.render, METER.read, METER.reads)
        before_cells, before_renders = app.cells_written, app.renders
        await asyncio.sleep(seconds)
        result["sent"] = await sent_count(settings.db) - before_sent
        result["cpu"] = time.process_time() - before_cpu
        result["screen"], result["render"], result["read"], result["reads"] = (
            now - then for now, then in zip((METER.screen, METER.render, METER.read, METER.reads), before)
        )
        result["cells"] = app.cells_written - before_cells
        result["renders"] = app.renders - before_renders
        # Key presses while sending, injected as the terminal would deliver them (Pilot.press
        # itself waits for the whole app to go idle, which never happens at full speed).
        result["keys"] = await press_keys(app, presses)
        await app.leave(ask=False, hand_off=False).wait()
    return result


# CPU seconds of this (the event loop's) thread during each timed press: what the process itself
# spent while the key waited, whatever the rest of the machine did. Wall time far above it means
# the process was waiting for a CPU (other processes), not working.
ON_CPU: dict[str, list[float]] = {}


async def timed_press(app: TimedApp, key: str, done: Callable[[], bool]) -> float:
    """Seconds from the key's arrival until `done()` holds and the screen was painted after that."""
    start, cpu = time.perf_counter(), time.thread_time()
    app.simulate_key(key)
    for _ in range(1_000_000):  # bounded: ~10 s of event-loop turns at most
        if done():
            break
        await asyncio.sleep(0)
    seen = time.perf_counter()
    deadline = seen + 10.0
    while app.painted_at < seen and time.perf_counter() < deadline:
        await asyncio.sleep(0)
    ON_CPU.setdefault(key, []).append(time.thread_time() - cpu)
    return app.painted_at - start


async def press_keys(app: TimedApp, presses: int) -> dict[str, list[float]]:
    """Every key of the dashboard, `presses` times each (the menu and Keys screens a third as
    often), 0.1 s apart."""
    dashboard = app.dashboard
    times: dict[str, list[float]] = {}

    def record(name: str, seconds: float) -> None:
        times.setdefault(name, []).append(seconds)

    for i in range(presses):
        table = dashboard.active_table()
        key = "j" if i % 20 < 10 else "k"
        row = table.cursor_row
        record("j/k", await timed_press(app, key, lambda: table.cursor_row != row))
        await asyncio.sleep(0.1)
    for i in range(presses // 2):
        table = dashboard.active_table()
        key, row = ("G", len(table.keys) - 1) if i % 2 == 0 else ("g", 0)
        record("g/G", await timed_press(app, key, lambda: table.cursor_row == row))
        await asyncio.sleep(0.1)
    for _ in range(presses // 2):
        before = dashboard.focused
        record("Tab", await timed_press(app, "tab", lambda: dashboard.focused is not before))
        await asyncio.sleep(0.1)
    for _ in range(max(presses // 3, 1)):
        record("a (menu open)", await timed_press(app, "a", lambda: isinstance(app.screen, ActionsMenu) and app.screen.is_mounted))
        await asyncio.sleep(0.1)
        record("Esc (menu closed)", await timed_press(app, "escape", lambda: app.screen is dashboard))
        await asyncio.sleep(0.1)
    for _ in range(max(presses // 6, 1)):
        record("? (keys open)", await timed_press(app, "question_mark", lambda: isinstance(app.screen, HelpScreen) and app.screen.is_mounted))
        await asyncio.sleep(0.1)
        record("Esc (keys closed)", await timed_press(app, "escape", lambda: app.screen is dashboard))
        await asyncio.sleep(0.1)
    return times


LIMIT = 0.050  # issue 11 item 16: every key, worst case, at most 50 ms


def verdict(keys: dict[str, list[float]]) -> str:
    """PASS when the slowest press of every key took at most LIMIT, else FAIL naming the keys over it."""
    over = [f"{name} {max(values) * 1000:.1f} ms" for name, values in keys.items() if max(values) > LIMIT]
    if not over:
        return f"PASS: every key's max is at most {LIMIT * 1000:.0f} ms"
    return f"FAIL: max over {LIMIT * 1000:.0f} ms for " + ", ".join(over)


def ms(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
    return f"median {statistics.median(values) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, max {values[-1] * 1000:.1f} ms"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--mailings", type=int, default=1000)
    parser.add_argument("--presses", type=int, default=60)
    parser.add_argument("--stalls", type=float, default=0.0, metavar="MS",
                        help="also list the callbacks that held the event loop longer than MS during the dashboard run")
    args = parser.parse_args()
    METER.wrap_screen()
    print(f"load average (1, 5, 15 min) at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    folder = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    sink = Sink().start()
    try:
        template = folder / "template.db"
        big = 200_000
        await build(template, folder, args.mailings, big)
        runs = {}
        for name in ("alone", "dashboard"):
            db = folder / f"{name}.db"
            shutil.copy(template, db)
            settings = settings_for(db, sink.port)
            if name == "alone":
                runs[name] = await run_sender_alone(settings, args.seconds)
            else:
                watch = StallWatch(args.stalls / 1000) if args.stalls > 0 else None
                if watch is not None:
                    watch.install()
                runs[name] = await run_dashboard(settings, args.seconds, args.presses)
        sent0, cpu0 = runs["alone"]  # type: ignore[misc]
        dash = runs["dashboard"]
        sent1, cpu1 = dash["sent"], dash["cpu"]  # type: ignore[index]
        per_msg = cpu0 / max(sent0, 1)
        ui_cpu = cpu1 - sent1 * per_msg  # type: ignore[operator]
        t = args.seconds
        print(f"{args.mailings} mailings on screen (Current {int(args.mailings * 0.3)}+, Scheduled, Inactive), 120x40, {t:.0f} s each")
        print(f"sender alone:    {sent0 / t:7.0f} msg/s, process CPU {cpu0 / t * 100:5.1f}% of a core, {per_msg * 1e6:.0f} µs CPU/msg")
        print(f"with dashboard:  {sent1 / t:7.0f} msg/s, process CPU {cpu1 / t * 100:5.1f}% of a core")  # type: ignore[operator]
        print(f"  throughput difference as CPU (noisy on a shared machine): {ui_cpu / t * 100:.1f}% of a core")
        own = dash["screen"] + dash["render"] + dash["read"]  # type: ignore[operator]
        print(
            f"dashboard's own main-thread time: {own / t * 100:.1f}% of a core = "
            f"Textual layout+paint {dash['screen'] / t * 100:.1f}% + row diff/cell writes {dash['render'] / t * 100:.1f}% "  # type: ignore[operator]
            f"+ store re-reads {dash['read'] / t * 100:.1f}% ({dash['reads'] / t:.1f}/s, wall time)"  # type: ignore[operator]
        )
        print(f"  {dash['renders'] / t:.1f} renders/s, {dash['cells'] / t:.0f} cells written/s")  # type: ignore[operator]
        print("key press -> its effect painted (while sending):")
        for name, values in dash["keys"].items():  # type: ignore[attr-defined]
            print(f"  {name:18s} {len(values):3d}x  {ms(values)}")
        print(verdict(dash["keys"]))  # type: ignore[arg-type]
        print("the same presses, CPU time of the event loop's thread only (the machine's load left out):")
        for key, values in ON_CPU.items():
            print(f"  {key:18s} {len(values):3d}x  {ms(values)}")
        if watch is not None:
            watch.report()
        print(f"load average (1, 5, 15 min) at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    finally:
        sink.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
