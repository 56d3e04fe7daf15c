"""The live dashboard: three panels, the Actions menu, and the sender beside it in one process.

Refresh model: the sender never touches a widget. A timer a few times a second looks at the
sender's in-memory snapshot (a version counter says whether anything moved) and, at most once or
twice a second and only when `PRAGMA data_version` says another connection committed, re-reads
the sections from the store. Whatever changed is copied into the panels inside one batched
update, cell by cell. When another process holds the sender lease, the same loop runs from the
database alone (monitor mode) and takes the lease over when it becomes free.

Where things live: the refresh model's decisions without Textual (which sections to read again,
what moved, holds, live counters) in tui/refresh.py; starting, owning and stopping the in-process
sender in tui/sender_host.py; the hand-off to a background `mailtower run` in tui/handoff.py;
the rows, panels and header in tui/rows.py, tui/panels.py and tui/header.py. This module keeps
the timer that drives them, the mode the header shows, and the key actions.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from textual import events, work
from textual.app import App, ComposeResult
from textual.notifications import SeverityLevel
from textual.binding import Binding
from textual.containers import Horizontal
from textual.reactive import Reactive
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Input
from textual.worker import Worker

from mailtower.core.display import one_line, safe
from mailtower.core.config import Settings, files_read, security_warnings
from mailtower.core.domain import Mailing, MailingState, Schedule, Section
from mailtower.core.db_errors import database_errors
from mailtower.core.db_target import PgTarget
from mailtower.core.errors import NotFound, UserError
from mailtower.core.lease import Holder
from mailtower.core.actions_registry import (
    ACTIONS, MOVE_HEAD_CONFIRM, MOVE_KEYS, RESUME_CONFIRM, Confirm, Offer, changes_head, entry_for, resume_offer,
)
from mailtower.core.lifecycle import Action, Direction, Expect, Lifecycle, held_unresolvable, moved_order
from mailtower.core.limits import read_limits
from mailtower.core.operations import request_resume
from mailtower.core.progress import (
    Hold,
    HoldState,
    SenderState,
    blended_rate,
    expected_rate,
    hold_of,
    paused_relays,
    queue_estimates,
)
from mailtower.core.scheduling import schedule_mailing
from mailtower.core.waves import cancel_schedule, current_send_times, grouped_with, preview_for, send_group_now
from mailtower.core.sender_status import SenderStatus, read_status
from mailtower.core.domains import domain_counts
from mailtower.core.sender import Sender
from mailtower.core.store import Store, open_store, storage_error
from mailtower.core.timezones import operator_zone, to_zone, tzdata_version, utcnow

from .actions import ActionsMenu
from .footer import SteadyFooter
from . import loops
from .header import HeaderInfo, HeaderLine, Mode, NoticeLine, notice_text
from .handoff import (  # re-exported: the CLI's tests and older imports name them from here
    child_environment,
    handoff_command,
    handoff_log_path,
    launch_background_sender,
    settings_environment,
)
from .help import HelpScreen
from .sender_host import STOP_TIMEOUT, SenderHost
from .messages import MailingMoved, SenderModeChanged
from .palette import Command, DashboardCommands, MailingCommand, mailing_offers
from .sparkline import RateHistory, RateSparklines
from .collector import Collector
from .refresh import ChangeWatch, KeysFirst, holds_for, moved_mailings, next_retries, patch_live, read_changed_sections
from .panels import CellsOf, FilterBar, MailingTable, PanelStack, matches_filter
from .rows import (
    Cells, View, WaveGroup, current_cells, group_waves, grouped_count, inactive_cells, scheduled_cells,
)

log = logging.getLogger("mailtower.dashboard")

# What `from mailtower.tui.app import ...` offers, including the hand-off names that moved to .handoff.
__all__ = [
    "DashboardApp",
    "HANGUP_EXIT",
    "child_environment",
    "handoff_command",
    "handoff_log_path",
    "launch_background_sender",
    "run_dashboard",
    "settings_environment",
]

Clock = Callable[[], datetime]
HandOff = Callable[[Settings], object]

SECTION_IDS = {Section.CURRENT: "current", Section.SCHEDULED: "scheduled", Section.INACTIVE: "inactive"}
TABLE_CHROME = 3  # border left and right, and the vertical scrollbar's gutter
EXPECT_FOR = 5.0  # seconds after an action of ours during which its mailing's move is not announced again
HANGUP_EXIT = 3.0  # seconds after a lost terminal's hand-off before the process leaves regardless
QUIT_HELP = "leave the dashboard (sending continues in the background)"
QUIT_DEMO = "end the demo: its SMTP sink and database are throw-away, so nothing is handed off"


# ---- screens we push (written alongside this app; imported when needed) ----------------------


def _confirm(title: str, message: str, confirm_label: str, destructive: bool, keep_label: str = "Cancel") -> "ConfirmDialog":
    from .screens.confirm import ConfirmDialog

    return ConfirmDialog(title, message, confirm_label=confirm_label, destructive=destructive, keep_label=keep_label)


def stop_question(mailing: Mailing, name: str) -> str:
    """The Stop dialog's question, with the mailing's remaining count as it is now (the dialog
    says it again as the mailing goes on sending behind it)."""
    return (
        f"Stop sending “{name}”? {plural(mailing.remaining, 'recipient')} "
        f"{'has' if mailing.remaining == 1 else 'have'} not received it yet; "
        "they are kept, and Restart sends to them only."
    )


def describe_schedule(mailing: Mailing) -> str:
    """"scheduled for 2099-07-01 18:00 Europe/Berlin", "a draft", "queued"."""
    if mailing.state is MailingState.SCHEDULED and mailing.schedule is not None:
        return f"scheduled for {mailing.schedule.local:%Y-%m-%d %H:%M} {mailing.schedule.tz}"
    return "a draft" if mailing.state is MailingState.DRAFT else mailing.state.value


def send_now_question(mailing: Mailing, name: str) -> str:
    """What Send now is about to do to this mailing, in the words of its state."""
    if mailing.state is MailingState.SCHEDULED and mailing.schedule is not None:
        return f"Send “{name}” now? It is {describe_schedule(mailing)}; now it joins the bottom of the queue (Current)."
    if mailing.state is MailingState.STOPPED:
        return (f"Send “{name}” again now to its {plural(mailing.remaining, 'remaining recipient')}? "
                "It joins the bottom of the queue (Current).")
    return f"Send “{name}” now to its {plural(mailing.total, 'recipient')}? It joins the bottom of the queue (Current)."


def plural(n: int, word: str) -> str:
    """"1 recipient", "1,200 recipients"."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


# ---- what a question told the operator -------------------------------------------------------

# A question shows the mailing as it was when it opened. What it states must still hold when it
# is answered, or the answer is to another question: every question says what the mailing is (its
# state, its schedule, whether it is a local-time schedule's wave) and how many recipients it has;
# Restart (and Send now of a stopped mailing) how many remain, Retry how many failed. The Stop
# question's count follows the sending while it is open (_follow_stop_dialog): it only states that
# the mailing is current, so counters that move behind it never refuse it.
ASKED = ("state", "schedule", "waves", "recipients")
ASKED_REMAINING = (*ASKED, "remaining")
ASKED_FAILED = (*ASKED, "failed")
ASKED_STOP = ("section",)

_FACTS: dict[str, Callable[[Mailing], object]] = {
    "section": lambda m: m.section,
    "state": lambda m: m.state,
    "schedule": lambda m: (m.schedule.local, m.schedule.tz) if m.schedule is not None else None,
    "waves": lambda m: m.wave_group,
    "recipients": lambda m: m.total,
    "remaining": lambda m: m.remaining,
    "failed": lambda m: m.failed,
}


# Counts a question states that results still coming in make smaller (a Restart just after Stop:
# the messages in flight at the stop are counted as they land): fewer is within what was asked,
# more is not (recipients imported meanwhile).
_ONLY_MORE = frozenset({"remaining", "failed"})


def _no_longer_holds(fact: str, asked: Any, now: Any) -> bool:
    return bool(now > asked) if fact in _ONLY_MORE else asked != now


def what_changed(asked: Mailing, now: Mailing, facts: tuple[str, ...]) -> str | None:
    """What `now` is, in the words of the facts of `asked` a question stated that no longer hold
    ("scheduled for 2099-08-01 09:00 Europe/Berlin", "525 recipients"); None when they all do."""
    changed = {fact for fact in facts if _no_longer_holds(fact, _FACTS[fact](asked), _FACTS[fact](now))}
    if not changed:
        return None
    parts = []
    if changed & {"section", "state", "schedule"}:
        parts.append(describe_schedule(now))
    if "waves" in changed:
        parts.append("a local-time schedule's wave" if now.wave_group is not None else "no longer a local-time schedule")
    if "recipients" in changed:
        parts.append(plural(now.total, "recipient"))
    if "remaining" in changed:
        parts.append(f"{now.remaining:,} remaining")
    if "failed" in changed:
        parts.append(f"{now.failed:,} failed")
    return ", ".join(parts)


def changed_elsewhere(name: str, now: str) -> UserError:
    return UserError(
        f"“{name}” was changed elsewhere while the question was open (now {now}); nothing was done: open the menu again"
    )


T = TypeVar("T")


# ---- the dashboard screen ------------------------------------------------------------------


class Dashboard(Screen[None]):
    """Header, the three panels and the footer. The app owns the data; this owns the keys."""

    BINDINGS = [
        Binding("a", "app.actions", "Actions", id="actions"),
        Binding("question_mark", "app.help", "Keys", id="help"),
        Binding("l", "app.limits", "Limits", id="limits"),
        # Priority: it runs as the key arrives, before the keys typed after it are handed on, so
        # "/sale" typed in one burst over SSH goes into the filter, not to the panels' keys.
        Binding("slash", "app.filter", "Filter", id="filter", priority=True),
        Binding("escape", "app.clear_filter", "Clear filter", id="clear-filter", show=False),
        Binding("q", "app.leave", "Quit", id="quit"),
        Binding("tab", "app.focus_next", "Next panel", id="next-panel"),
        Binding("shift+tab", "app.focus_previous", "Previous panel", id="previous-panel", show=False),
    ]

    # Textual repaints the whole screen when the focus moves; the panels that gain and lose it
    # repaint themselves (their :focus styles change), so Tab costs two panels, not the screen
    # (issue 11 item 16).
    focused: Reactive[Widget | None] = Reactive(None, repaint=False)

    def __init__(self) -> None:
        super().__init__()
        # Kept, not queried: the refresh loop uses them several times a second.
        self.header = HeaderLine()
        self.notice = NoticeLine()
        self.rate = RateSparklines()
        self._tables = {section: MailingTable(section, id=key) for section, key in SECTION_IDS.items()}
        self.filter_bar = FilterBar()
        self._last_table: MailingTable | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="top"):
            yield self.header
            yield self.rate
        yield self.notice
        with PanelStack(id="panels"):
            yield from self._tables.values()
        yield self.filter_bar
        yield SteadyFooter()

    def on_mount(self) -> None:
        self.table(Section.CURRENT).focus()

    def table(self, section: Section) -> MailingTable:
        return self._tables[section]

    def tables(self) -> list[MailingTable]:
        return list(self._tables.values())

    def active_table(self) -> MailingTable:
        focused = self.focused
        if isinstance(focused, MailingTable):
            self._last_table = focused
            return focused
        return self._last_table or self.table(Section.CURRENT)

    def on_descendant_focus(self, event: object) -> None:
        if isinstance(self.focused, MailingTable):
            self._last_table = self.focused

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            event.stop()
            app = self.app
            if isinstance(app, DashboardApp):
                app.filter_changed()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            event.stop()
            self.active_table().focus()

    def on_screen_resume(self) -> None:
        app = self.app
        if isinstance(app, DashboardApp):
            app.mark_dirty()

    def on_resize(self) -> None:
        app = self.app
        if isinstance(app, DashboardApp):
            app.relayout()

    def on_mailing_table_row_selected(self, event: MailingTable.RowSelected) -> None:
        event.stop()
        app = self.app
        if isinstance(app, DashboardApp):
            app.open_actions(int(event.key))


# ---- the app ---------------------------------------------------------------------------------


if TYPE_CHECKING:
    from .screens.confirm import ConfirmDialog  # imported when first used (_confirm)
    from .screens.schedule import ScheduleRequest  # the screen module is imported when first used


def _same_schedule(mailing: Mailing, request: "ScheduleRequest", wall: tuple[datetime, str] | None) -> bool:
    """The dialog was submitted with the schedule the mailing (or its waves) already has, and no
    question about passed zones was answered: there is nothing to save."""
    if mailing.state is not MailingState.SCHEDULED or mailing.missed or request.passed is not None:
        return False
    if mailing.wave_group is not None:
        return request.local_time and wall is not None and (request.local, request.tz) == wall
    schedule = mailing.schedule
    return schedule is not None and not request.local_time and (request.local, request.tz) == (schedule.local, schedule.tz)


class DashboardApp(App[int]):
    """`DashboardApp(settings).run()`; the keyword arguments exist for tests and the demo."""

    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses live elsewhere
    TITLE = "mailtower"
    COMMANDS = App.COMMANDS | {DashboardCommands}
    BINDINGS = [Binding("ctrl+q", "leave", "Quit", show=False, priority=True, id="quit-now")]

    def __init__(
        self,
        settings: Settings,
        *,
        start_sender: bool = True,
        now: Clock = utcnow,
        operator_tz: str | None = None,
        stall_after: float = 30.0,
        handoff: HandOff = launch_background_sender,
        hand_off_on_quit: bool = True,
        refresh_interval: float = 0.5,
        stop_timeout: float = STOP_TIMEOUT,
        hangup_exit: float | None = None,
        cleanup: Callable[[], None] | None = None,
        demo: bool = False,
    ) -> None:
        super().__init__()
        self.demo = demo  # a throw-away database and sink: quitting ends it, nothing is handed off
        self.settings = settings
        self.warnings = security_warnings(settings)
        self.start_sender = start_sender
        self.now = now
        self.operator_tz = operator_tz or operator_zone()
        self.stall_after = stall_after
        self.handoff = handoff
        self.hand_off_on_quit = hand_off_on_quit
        self.refresh_interval = refresh_interval
        self.stop_timeout = stop_timeout
        self.sender_host = SenderHost(settings, stop_timeout=stop_timeout)  # our sender, when we send
        self.opened_at = utcnow()  # a live limit stored after this is the operator's latest word
        self.hangup_exit = hangup_exit
        self.cleanup = cleanup
        self.store: Store | None = None
        self.lifecycle: Lifecycle | None = None
        self.mode = Mode.OFF
        self.holder: Holder | None = None
        self.handed_off: object | None = None  # what the hand-off launcher returned
        self.sections: dict[Section, list[Mailing]] = {section: [] for section in Section}
        self.cells_written = 0  # for tests and the benchmark: how much the panels were touched
        self.renders = 0
        self._dashboard: Dashboard | None = None
        self._tick_lock = asyncio.Lock()
        self.keys_first = KeysFirst()  # the refresh waits while a key is being answered
        self.collector = Collector()  # the garbage collector runs at the refresh, not during keys
        self._key_frame_hook = False  # a call after the next frame is asked for (see on_event)
        self._preparing = False  # the Keys screen and the Actions menu are being composed
        self._force = True
        self._dirty = True
        self._data_version = -1
        self.change_watch = ChangeWatch()  # PostgreSQL: LISTEN/NOTIFY, not a query every tick
        self._signatures: dict[Section, tuple[int, int, int]] = {}
        self._last_read = 0.0
        self._snap_version = -1
        self._last_second = -1
        self.rate_history = RateHistory()  # the header's sparkline: one sample a second
        self._sampled_at = -1
        self._next_lease_check = 0.0
        self._remote: SenderStatus | None = None  # what another process's sender last wrote
        self._active_since: float | None = None
        self._leaving = False
        # Mailings our own actions changed, until when (monotonic): their own toast says what
        # happened, so no second "moved" notice (with a count a beat later) for them.
        self._expected: dict[int, float] = {}
        self._scheduled_before: dict[int, Schedule] = {}  # mailings that left Scheduled: their schedule then
        self._keys_cache: dict[Section, tuple[list[Mailing], str, list[int], list[str]]] = {}
        self.filter_text = ""
        self._menu: ActionsMenu | None = None  # the open Actions menu, kept up to date by each read
        self._stop_dialog: tuple[ConfirmDialog, int, str] | None = None  # the open Stop dialog, its mailing, its name
        self._actions_menu: ActionsMenu | None = None  # the one Actions menu, composed on first use
        self._help_screen: HelpScreen | None = None  # the `?` screen, composed on first use
        self._read_failed = False
        self.open_error: str | None = None  # the one line to print when the database would not open
        self._next_retry: dict[int, float] = {}  # current mailings left with deferred recipients only
        self._prior_accept: float | None = None  # the last accept before this dashboard started
        self._limit_rates = (0.0, 0.0)  # configured rate and hourly limit: the first ETA's basis
        self._rate_from: tuple[int | None, float] = (None, 0.0)  # (head, monotonic) sending began

    # ---- setup -----------------------------------------------------------------------------

    def get_default_screen(self) -> Screen:
        self._dashboard = Dashboard()
        return self._dashboard

    @property
    def dashboard(self) -> Dashboard:
        assert self._dashboard is not None
        return self._dashboard

    async def on_mount(self) -> None:
        try:
            self.store = await open_store(self.settings.db)
        except (UserError, OSError, *database_errors()) as exc:
            fault = storage_error(self.settings.db, exc) or exc
            self.open_error = f"mailtower: {fault}"
            self.exit(return_code=2)
            return
        self.lifecycle = Lifecycle(self.store)
        self._install_signal_handlers()
        await self._read_history()
        await self._check_lease()
        self.relayout()
        await self.refresh_now()
        # What exists now (modules, widgets, the first sections read) lives as long as the app:
        # keeping it out of the collector's full passes removes their pauses from scrolling.
        gc.freeze()
        self.collector.take_over(time.monotonic())
        self.set_interval(self.refresh_interval, self._tick, name="refresh")
        self.call_after_refresh(self._prepare_screens)

    async def _read_history(self) -> None:
        """What earlier runs knew, read before our sender starts (it overwrites sender_last_accept):
        when a message was last accepted, and the configured pace for the first estimates."""
        store = self.store
        assert store is not None
        try:
            earlier = await read_status(store)
            last = [(earlier.last_accept_at or 0.0) if earlier is not None else 0.0]
            sent_at = await store.last_sent_at()
            if sent_at is not None:
                last.append(sent_at.timestamp())
            self._prior_accept = max(last) or None
            limits = await read_limits(store, self.settings)
            self._limit_rates = (limits.rate, limits.rate_per_hour)
        except (*database_errors(), OSError, UserError) as exc:
            log.warning("could not read the sending history: %s", exc)

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        handlers = {signal.SIGHUP: self._on_hangup, signal.SIGTERM: self._on_terminate}
        for sig, handler in handlers.items():
            try:
                loop.add_signal_handler(sig, handler)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread, or no signals on this platform

    def _remove_signal_handlers(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        for sig in (signal.SIGHUP, signal.SIGTERM):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass

    def _on_hangup(self) -> None:
        # The terminal is gone: nobody can answer a question, so hand off without asking.
        self.leave(ask=False, hung_up=True)

    def _on_terminate(self) -> None:
        self.leave(ask=False, hand_off=False)

    async def on_unmount(self) -> None:
        self._remove_signal_handlers()
        self.collector.give_back()
        if self.sender is not None:
            # Leaving by any other path than `leave` still stops the sender gracefully.
            await self._stop_sender()
        await self.change_watch.close()
        if self.store is not None:
            store, self.store = self.store, None
            await store.close()

    # ---- the sender and the lease ------------------------------------------------------------

    @property
    def sender(self) -> Sender | None:
        """Our own sender while this dashboard sends (tui/sender_host.py owns it)."""
        return self.sender_host.sender

    @property
    def sender_worker(self) -> Worker[None] | None:
        return self.sender_host.worker

    @property
    def sender_failure(self) -> str:
        """Why our sender stopped, shown in the header until one runs again."""
        return self.sender_host.failure

    @property
    def sending_here(self) -> bool:
        return self.sender is not None

    async def _check_lease(self) -> None:
        """Monitor whoever holds the lease; take it when it is free (if we may send)."""
        if self.sender is not None or self._leaving:
            return
        # In a thread: on PostgreSQL it may connect to the server, which must not freeze the screen.
        holder = await asyncio.to_thread(self.sender_host.holder)
        if holder is not None:
            if self.mode is not Mode.MONITORING or self.holder != holder:
                self.mode, self.holder = Mode.MONITORING, holder
                self._force = True
            return
        if self.start_sender and self.sender_host.may_start():
            self._start_sender()
        elif self.mode is not Mode.OFF:
            self.mode, self.holder = Mode.OFF, None
            self._force = True

    def _start_sender(self) -> None:
        try:
            sender = self.sender_host.create()
        except Exception as exc:  # a bad relay setting: show it, keep the dashboard, try later
            log.exception("cannot start the sender")
            self.mode, self.holder = Mode.OFF, None
            self.notify(f"Cannot start the sender: {exc}", title="Sender", severity="error", timeout=10)
            return
        if self.mode is Mode.MONITORING and self.holder is not None:
            self.post_message(SenderModeChanged("sending", f"{self.holder.describe()} has stopped"))
        self.mode, self.holder = Mode.IDLE, None
        self._snap_version = -1
        self._force = True
        self.sender_host.run(sender, self._start_sender_worker, self._sender_failed, self._sender_ended)

    def _start_sender_worker(self, run: Coroutine[Any, Any, None]) -> Worker[None]:
        # An App-level worker: it lives as long as the app, whatever screen is on top.
        return self.run_worker(run, name="sender", group="sender", exclusive=True, exit_on_error=False)

    def _sender_failed(self, why: str) -> None:
        self.notify(why[:1].upper() + why[1:], title="Sender", severity="error", timeout=30)

    def _sender_ended(self) -> None:
        self.mode = Mode.OFF
        self._force = True
        self._next_lease_check = 0.0

    async def _handoff_settings(self) -> Settings:
        """The settings the background sender starts with. A limit given at our start (`--rate 2`)
        and handed on as given would meet a live limit the operator stored in this dashboard as
        one stored before the child's start, and win again: only limits still in force as given
        here are handed on as given (core/limits.read_limits)."""
        if not self.settings.limit_sources or self.store is None:
            return self.settings
        try:
            limits = await read_limits(self.store, self.settings, since=self.opened_at)
        except (*database_errors(), OSError):
            return self.settings  # the child reads them itself and says what is wrong
        kept = tuple((name, source) for name, source in self.settings.limit_sources if name in limits.given)
        return replace(self.settings, limit_sources=kept)

    async def _stop_sender(self) -> None:
        """Graceful: in-flight messages finish and are recorded, unstarted rows go back to pending."""
        await self.sender_host.stop(self._render)

    # ---- refresh -----------------------------------------------------------------------------

    async def refresh_now(self) -> None:
        """Re-read the store and redraw at once (after an action of ours)."""
        self._force = True
        await self._tick()

    async def _tick(self) -> None:
        if self.store is None or self._leaving or self._exit:
            return
        if not self._force and not self.keys_first.may_refresh(time.monotonic()):
            return  # owed: it runs right after the key's frame (_after_key_frame)
        await self._tick_now()

    async def _tick_now(self) -> None:
        if self.store is None or self._leaving or self._exit:
            return
        async with self._tick_lock:
            self.keys_first.refreshed(time.monotonic())
            self._collect_garbage()
            try:
                await self._update()
            except (*database_errors(), OSError) as exc:
                # A busy or briefly unreadable database must not end the dashboard: try again
                # at the next tick, and say so once.
                # One line naming the database (a driver's text is several lines, may quote a URL).
                said = str(storage_error(self.settings.db, exc) or exc).strip().splitlines() or [type(exc).__name__]
                log.warning("refresh failed: %s", said[0])
                if not self._read_failed:
                    self.notify(f"Could not read the database: {said[0]}; retrying", severity="warning", timeout=5)
                self._read_failed = True
                self._force = True
            else:
                self._read_failed = False

    async def _update(self) -> None:
        store = self.store
        assert store is not None
        mono = time.monotonic()
        if mono >= self._next_lease_check:
            self._next_lease_check = mono + 1.0
            await self._check_lease()
        read = self._force
        if not read and mono - self._last_read >= (1.0 if self.sending_here else 0.5):
            read = await self.change_watch.version(store) != self._data_version
        snapshot = self.sender.snapshot if self.sender is not None else None
        moved = snapshot is not None and snapshot.version != self._snap_version
        if moved and not read and snapshot is not None and mono - self._last_read >= self.refresh_interval:
            # A mailing joined or left the queue: the store knows which, the snapshot only ids.
            read = set(snapshot.mailings) != {m.id for m in self.sections[Section.CURRENT]}
        if read:
            await self._read(store)
            self._follow_menu()
        if read or moved:
            self._follow_stop_dialog()
        if snapshot is not None:
            self._snap_version = snapshot.version
        second = int(self.now().timestamp())
        self._sample_rate(second)
        if read or moved or self._dirty or second != self._last_second:
            self._last_second = second
            self._render()

    def _collect_garbage(self) -> None:
        """The collector's turn (tui/collector.py): at a refresh, when no key is being answered."""
        self.collector.collect(time.monotonic())

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key):
            # Keys first: a refresh tick that comes now waits for this key's frame (refresh.KeysFirst).
            now = time.monotonic()
            self.keys_first.key(now)
            self.collector.key(now)
            if not self._key_frame_hook:
                self._key_frame_hook = True
                self.call_after_refresh(self._after_key_frame)
        await super().on_event(event)

    def _after_key_frame(self) -> None:
        """The key's frame is drawn: the refresh it put off runs now, in the gap before the next key."""
        self._key_frame_hook = False
        if self.keys_first.take_owed():
            self.run_worker(self._tick_now(), name="refresh", group="refresh", exit_on_error=False)

    def _prepare_screens(self) -> None:
        """Compose the Keys screen and the Actions menu before their first key: composing them on
        the key cost it 50-150 ms while sending (issue 11 item 16); the key then only shows them."""
        if self._preparing or self._exit or self._leaving:
            return
        self._preparing = True
        self.run_worker(self._compose_hidden(), name="prepare screens", group="prepare", exit_on_error=False)

    async def _compose_hidden(self) -> None:
        try:
            screens: list[Screen[Any]] = [self._help_for(self.where_text())]
            mailing = next((m for ms in self.sections.values() for m in ms), None)
            if mailing is not None and self._actions_menu is None:
                screens.append(self._menu_for(mailing))
            composed = False
            for screen in screens:
                if not screen.is_running:
                    # Textual's own first step of showing a screen (register, compose, mount),
                    # without showing it.
                    _, mounted = self._get_screen(screen)
                    self._load_screen_css(screen)
                    await mounted
                    composed = True
            if composed:
                # They live as long as the app, as what on_mount froze. Only when something was
                # composed: a freeze also keeps whatever cyclic garbage exists at that moment.
                gc.freeze()
        finally:
            self._preparing = False

    def _sample_rate(self, second: int) -> None:
        """Once a second of the dashboard's clock: the rate the header shows, and each relay's,
        into the sparkline's history. A clock set back samples again at once (`!=`, not `>`)."""
        if second == self._sampled_at:
            return
        self._sampled_at = second
        relays = self.sender.snapshot.relays if self.sender is not None else ()
        self.rate_history.sample(self.current_rate(), [(r.name, r.rate) for r in relays])
        self._dirty = True

    async def _read(self, store: Store) -> None:
        self._force = False
        self._last_read = time.monotonic()
        # The version first: a commit landing during the read changes it again, so it is re-read.
        self._data_version = await self.change_watch.version(store)
        read = await read_changed_sections(store, self.sections, self._signatures)
        sections = read.sections
        self._signatures = read.signatures
        if self.mode is Mode.MONITORING:
            self._remote = await read_status(store)
        self._announce_moves(self.sections, sections)
        self.sections = sections
        if Section.CURRENT in read.reread:  # retry times move only with a Current mailing's row
            self._next_retry = await next_retries(store, sections[Section.CURRENT])
        if self._actions_menu is None and any(sections.values()):
            self._prepare_screens()  # the first mailings appeared: the menu can be composed now

    def _announce_moves(self, old: dict[Section, list[Mailing]], new: dict[Section, list[Mailing]]) -> None:
        for mailing, before in moved_mailings(old, new, self._expected, time.monotonic()):
            if before is MailingState.SCHEDULED and mailing.section is Section.CURRENT:
                # When it was to be sent: came due, or sent now before its time (on_mailing_moved).
                was = next((m for m in old.get(Section.SCHEDULED, []) if m.id == mailing.id), None)
                if was is not None and was.schedule is not None:
                    self._scheduled_before[mailing.id] = was.schedule
            self.post_message(MailingMoved(mailing, before))
        self._expected = {k: t for k, t in self._expected.items() if t > time.monotonic()}

    def on_mailing_moved(self, message: MailingMoved) -> None:
        mailing, name = message.mailing, one_line(message.mailing.name)
        if mailing.state is MailingState.COMPLETED:
            skipped = f", {mailing.suppressed:,} suppressed" if mailing.suppressed else ""
            self.notify(f"{name}: {mailing.sent:,} sent, {mailing.failed:,} failed{skipped}", title="Completed", timeout=6)
        elif held_unresolvable(mailing):
            self.notify(f"{name}: its time zone is not in the installed time-zone data: set a new schedule with a "
                        "known zone, or cancel it", severity="warning")
        elif mailing.missed:
            self.notify(f"{name} missed its send time: send it now or set a new schedule", severity="warning")
        elif message.before is MailingState.SCHEDULED and mailing.section is Section.CURRENT:
            schedule = self._scheduled_before.pop(mailing.id, None) or mailing.schedule
            if schedule is not None and schedule.utc > self.now():
                # Send now elsewhere, before its time: it did not come due.
                self.notify(f"{name} was queued (sent now, before its send time)", title="Scheduled", timeout=5)
            else:
                self.notify(f"{name} came due and joined the queue", title="Scheduled", timeout=5)
        elif mailing.state is MailingState.STOPPED and message.before is not MailingState.STOPPED:
            self.notify(f"{name} was stopped ({mailing.counts_text()})", timeout=5)

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """Every toast carries names, paths and server replies: shown as plain, terminal-safe text."""
        super().notify(safe(message), title=safe(title), severity=severity, timeout=timeout, markup=False)

    def mark_dirty(self) -> None:
        self._dirty = True

    def on_sender_mode_changed(self, message: SenderModeChanged) -> None:
        self.notify(f"{message.detail}; this dashboard sends now", title="Sender", timeout=6)

    def relayout(self) -> None:
        """Fit the columns to the terminal's width."""
        if self._dashboard is None or not self._dashboard.is_mounted:
            return
        width = max(self.size.width - TABLE_CHROME, 20)
        for table in self.dashboard.tables():
            if table.set_layout(table.layout_for_width(width)):
                self._dirty = True
        if self._dirty and self.store is not None:
            self._render()

    def _dashboard_visible(self) -> bool:
        """The dashboard is on screen, possibly under a dialog."""
        for screen in reversed(self.screen_stack):
            if screen is self._dashboard:
                return True
            if not screen.is_modal:
                return False
        return False

    def live_current(self) -> list[Mailing]:
        """Current mailings with the sender's newest counters (the store's may be a beat behind)."""
        current = self.sections[Section.CURRENT]
        if self.sender is None:
            return current
        return patch_live(current, self.sender.snapshot.mailings)

    def current_rate(self) -> float:
        if self.sender is not None:
            return self.sender.snapshot.rate
        remote = self._live_remote()
        if remote is not None and remote.state is SenderState.SENDING:
            return remote.rate
        return 0.0

    def estimate_rate(self, current: list[Mailing]) -> float:
        """The rate behind the ETAs: the measured one, blended in over the first seconds of a
        head's sending from what its last run and the limits say (core.progress.blended_rate)."""
        measured = self.current_rate()
        head = next((m for m in current if m.state is MailingState.SENDING), None)
        if head is None or (self.sender is None and self.mode is not Mode.MONITORING):
            self._rate_from = (None, 0.0)
            return measured
        expected = expected_rate(head.rate, *self._limit_rates)
        if self.sender is None:
            # Another process: how long it has measured is unknown; its rate, once it has one.
            return measured if measured > 0 else expected
        if self._rate_from[0] != head.id:
            self._rate_from = (head.id, time.monotonic())
        return blended_rate(measured, expected, time.monotonic() - self._rate_from[1])

    def waiting_document(self) -> dict[str, object]:
        """Why the sender is held back: our sender's own document, or what another process wrote
        (the meta `status --json` reads, parsed by core.sender_status.parse_waiting)."""
        if self.sender is not None:
            return self.sender.waiting_document()
        remote = self._live_remote()
        return remote.waiting if remote is not None else {}

    def domains_document(self) -> dict[str, object]:
        """Per domain group live figures: our sender's, or what another process wrote (alive only)."""
        if self.sender is not None:
            return self.sender.domains_document()
        remote = self._live_remote()
        return remote.domains if remote is not None else {}

    def holds(self, current: list[Mailing] | None = None) -> dict[int, Hold]:
        """Why each current mailing is held back now (paused, waiting, throttled, retrying)."""
        mailings = self.sections[Section.CURRENT] if current is None else current
        return holds_for(mailings, self.waiting_document(), self._next_retry)

    def _live_remote(self) -> SenderStatus | None:
        """Another process's sender, while we monitor it and it is alive (the contract's rule,
        the same one `mailtower status` uses)."""
        remote = self._remote
        if self.mode is not Mode.MONITORING or remote is None or not remote.alive(self.now().timestamp()):
            return None
        return remote

    def _remote_state(self) -> str:
        remote = self._remote
        if remote is None or not remote.fresh(self.now().timestamp()):
            return "silent"
        return remote.state.value

    def _render(self) -> None:
        if self._exit or self._dashboard is None or not self._dashboard.is_mounted or not self._dashboard_visible():
            return
        self._dirty = False
        self.renders += 1
        now = self.now()
        dashboard = self.dashboard
        with self.batch_update():
            info = self.header_info(now)
            dashboard.header.show(info)
            relays = self.sender.snapshot.relays if self.sender is not None else ()
            dashboard.notice.show(notice_text(self.warnings, relays))
            dashboard.rate.show(self.rate_history, self.size.width, info)
            written = 0
            for table in dashboard.tables():
                if table.layout_spec is None:
                    continue
                view = View(now=now, operator_tz=self.operator_tz, compact=table.layout_spec.compact)
                keys, cells_of = self._rows(table, view)
                mailings = self.sections[table.section]
                total = grouped_count(mailings) if table.section is Section.SCHEDULED else len(mailings)
                written += table.show(keys, cells_of, total=total)
            self.cells_written += written

    def _rows(self, table: MailingTable, view: View) -> tuple[list[str], CellsOf]:
        """The panel's row keys, and how to make row i: computed lazily, for the rows on screen."""
        section = table.section
        if section is Section.CURRENT:
            current = self.live_current()
            rate = self.estimate_rate(current)
            estimates = queue_estimates(current, rate, view.now) if rate > 0 else {}
            holds = self.holds(current)
            assert table.layout_spec is not None
            bar = table.layout_spec.width_of("progress") - 6

            indexes, keys = self._shown(section)

            def current_row(i: int) -> Cells:
                index = indexes[i]
                m = current[index]
                # The place in the whole queue, whatever the filter hides.
                return current_cells(m, index + 1, estimates.get(m.id), rate, view, bar, holds.get(m.id))

            return keys, current_row
        mailings = self.sections[section]
        indexes, keys = self._shown(section)
        if section is Section.SCHEDULED:
            groups = self._keys_cache[section][4]  # the waves of a local-time schedule: one row
            return keys, lambda i: scheduled_cells(mailings[indexes[i]], view, groups.get(mailings[indexes[i]].id))
        return keys, lambda i: inactive_cells(mailings[indexes[i]], view)

    def _shown(self, section: Section) -> tuple[list[int], list[str]]:
        """Which of the section's mailings the panel shows (the filter's matches), and their row keys."""
        mailings = self.sections[section]
        cached = self._keys_cache.get(section)
        if cached is None or cached[0] is not mailings or cached[1] != self.filter_text:
            query = self.filter_text
            indexes = [i for i, m in enumerate(mailings) if matches_filter(m, query)]
            groups: dict[int, WaveGroup] = {}
            if section is Section.SCHEDULED:
                indexes, groups = group_waves(mailings, indexes)
            cached = (mailings, query, indexes, [str(mailings[i].id) for i in indexes], groups)
            self._keys_cache[section] = cached
        return cached[2], cached[3]

    # ---- the filter ------------------------------------------------------------------------------

    def action_filter(self) -> None:
        bar = self.dashboard.filter_bar
        if self.dashboard.focused is bar.input:
            # The binding takes "/" first: typed in the filter it is text, over a selection as any key.
            start, end = sorted(bar.input.selection)
            bar.input.replace("/", start, end)
            return
        bar.open()

    def action_clear_filter(self) -> None:
        bar = self.dashboard.filter_bar
        if not bar.has_class("-active"):
            return
        focus_back = self.dashboard.focused is bar.input
        bar.clear()
        self.filter_changed()
        if focus_back:
            self.dashboard.active_table().focus()

    def filter_changed(self) -> None:
        self.filter_text = self.dashboard.filter_bar.query_text
        self._dirty = True
        self._render()

    def header_info(self, now: datetime) -> HeaderInfo:
        where = f"{self.operator_tz} · tzdata {tzdata_version()}"
        if self.sender_host.stopping:
            return HeaderInfo(Mode.STOPPING, where=where)
        now_epoch = now.timestamp()
        if self.sender is not None:
            snap = self.sender.snapshot
            mode = {
                SenderState.SENDING: Mode.SENDING,
                SenderState.WAITING: Mode.WAITING,
            }.get(snap.state, Mode.IDLE)
            state, rate, reason, last = mode.value, snap.rate, snap.reason, snap.last_accept_at
        elif self.mode is Mode.MONITORING:
            mode = Mode.MONITORING
            state = self._remote_state()
            remote = self._remote
            rate, reason = self.current_rate(), remote.reason if remote is not None else ""
            if state == "silent":
                reason = silence_reason(remote, now_epoch)
            last = remote.last_accept_at if remote is not None else None
        else:
            return HeaderInfo(Mode.OFF, reason=self.sender_failure, where=where)
        prior = self._prior_accept
        if not last and prior is not None and prior <= now_epoch:
            last = prior  # accepted in an earlier run: not "never" (a time ahead of the clock is ignored)
        current = self.sections[Section.CURRENT]
        holds = self.holds(current)
        # The header speaks of the first mailing in the queue that is held back by the server.
        hold = next((holds[m.id] for m in current if m.id in holds and holds[m.id].state is not HoldState.RETRYING), None)
        held_since = to_zone(datetime.fromtimestamp(hold.since, now.tzinfo), self.operator_tz) if hold and hold.since else None
        active = state in ("sending", "waiting") and bool(self.sections[Section.CURRENT])
        if active and self._active_since is None:
            self._active_since = now_epoch
        elif not active:
            self._active_since = None
        stalled_for = None
        if active and self._active_since is not None:
            since = max(last or 0.0, self._active_since)
            if now_epoch - since > self.stall_after:
                stalled_for = now_epoch - since
        return HeaderInfo(
            mode=mode,
            rate=rate,
            reason=reason,
            holder=holder_forms(self.holder),
            remote_state=state,
            last_accept_age=None if last is None else now_epoch - last,
            stalled_for=stalled_for,
            where=where,
            hold=hold,
            hold_since=f"{held_since:%H:%M}" if held_since is not None else "",
            next_try_in=hold.next_try - now_epoch if hold is not None and hold.next_try else None,
            in_doubt=sum(m.in_doubt for m in current),
            **domain_counts(self.domains_document() if active else {}),
        )

    # ---- what the highlighted row is --------------------------------------------------------

    def find(self, mailing_id: int) -> Mailing | None:
        for mailings in self.sections.values():
            for mailing in mailings:
                if mailing.id == mailing_id:
                    return mailing
        return None

    def highlighted(self) -> Mailing | None:
        if self._dashboard is None:
            return None
        key = self.dashboard.active_table().highlighted_key()
        return self.find(int(key)) if key is not None else None

    def any_sending(self) -> bool:
        return any(m.state is MailingState.SENDING for m in self.sections[Section.CURRENT])

    def offers_for(self, mailing: Mailing) -> list[Offer]:
        queue = [m.id for m in self.sections[Section.CURRENT]]
        index = queue.index(mailing.id) if mailing.id in queue else None
        found = mailing_offers(mailing, index, len(queue), any_sending=self.any_sending())
        return [*self.situational_offers(mailing), *found] if index is not None else found

    def situational_offers(self, mailing: Mailing) -> list[Offer]:
        """Offers that depend on the sender, not on the mailing: Resume only while a relay is paused."""
        return self.situational_offers_now()(mailing)

    def situational_offers_now(self) -> Callable[[Mailing], list[Offer]]:
        """`situational_offers` for many mailings against one reading of why the sender is held
        back (the palette asks for every current mailing: the document is built once)."""
        doc = self.waiting_document()
        any_paused = bool(paused_relays(doc))

        def offers_of(mailing: Mailing) -> list[Offer]:
            # Paused and it concerns this mailing: it holds it back, or (a pool carrying on
            # without the paused relay) this is the mailing being sent.
            hold = hold_of(doc, mailing, self._next_retry.get(mailing.id))
            held = hold is not None and hold.state is HoldState.PAUSED
            sending_past_a_pause = mailing.state is MailingState.SENDING and any_paused
            return [resume_offer()] if held or sending_past_a_pause else []

        return offers_of

    def _follow_stop_dialog(self) -> None:
        """The open Stop dialog says how many have not received it yet now, not when it opened:
        the mailing goes on sending behind it (the sender's newest counters, else the store's)."""
        if self._stop_dialog is None:
            return
        dialog, mailing_id, name = self._stop_dialog
        if not dialog.is_mounted:
            return
        mailing = next((m for m in self.live_current() if m.id == mailing_id), None) or self.find(mailing_id)
        if mailing is not None:
            dialog.show_message(stop_question(mailing, name))

    def _follow_menu(self) -> None:
        """The open Actions menu shows what can be done now, not what could when it opened."""
        menu = self._menu
        if menu is None or not menu.is_mounted:
            return
        mailing = self.find(menu.mailing.id)
        menu.follow(mailing, self.offers_for(mailing) if mailing is not None else [])

    # ---- key actions -------------------------------------------------------------------------

    def action_actions(self) -> None:
        mailing = self.highlighted()
        if mailing is None:
            table = self.dashboard.active_table()
            hidden = bool(self.sections[table.section]) and bool(self.filter_text)
            what = "nothing in this panel matches the filter" if hidden else "this panel is empty"
            self.notify(f"Nothing to act on: {what}", severity="warning", timeout=3)
            return
        self.open_actions(mailing.id)

    def action_help(self) -> None:
        self.push_screen(self._help_for(self.where_text()))

    def _help_for(self, where: str) -> HelpScreen:
        """The Keys screen, composed once (at start, see _prepare_screens) and shown again: a
        Rich table of every key takes a while to lay out."""
        screen = self._help_screen
        if screen is None or screen.where != where:
            screen = HelpScreen(where, demo=self.demo)
            if self._help_screen is None:
                self._help_screen = screen
                self.install_screen(screen, "help")
        return screen

    def action_limits(self) -> None:
        if self.store is None:
            return
        from .screens.limits import LimitsScreen

        self.push_screen(LimitsScreen(self.store, self.settings))

    def where_text(self) -> str:
        return (
            f"shown in {self.operator_tz} (your zone; set TZ to change it), "
            f"zone data tzdata {tzdata_version()}"
        )

    def action_leave(self) -> None:
        self.leave(ask=True)

    async def action_quit(self) -> None:
        self.leave(ask=True)

    def action_focus_section(self, section: str) -> None:
        self.dashboard.table(Section(section)).focus()

    def open_actions(self, mailing_id: int) -> None:
        if any(w.group == "flow" and not w.is_finished for w in self.workers):
            # Enter pressed again before the menu appeared: one menu, not a stack of them.
            return
        self._actions_flow(mailing_id)

    @work(group="flow", exit_on_error=False)
    async def _actions_flow(self, mailing_id: int) -> None:
        # The menu opens from the last refresh (under a second old) without waiting for the
        # store, so it appears at once even while the sender keeps the loop busy. If the
        # mailing moved on meanwhile, the lifecycle refuses and says why.
        mailing = self.find(mailing_id)
        if mailing is None:
            self.notify("That mailing is gone", severity="warning", timeout=3)
            return
        menu = self._menu_for(mailing)
        self._menu = menu
        try:
            choice = await self.push_screen_wait(menu)
        finally:
            self._menu = None
        if choice:
            # The menu followed the mailing while open: act on it as it is now.
            await self.perform(choice, self.find(mailing_id) or menu.mailing)

    def _menu_for(self, mailing: Mailing) -> ActionsMenu:
        """The Actions menu, composed once and shown again for each mailing (see tui/actions.py)."""
        offers = self.offers_for(mailing)
        menu = self._actions_menu
        if menu is None:
            menu = self._actions_menu = ActionsMenu(mailing, offers)
            self.install_screen(menu, "actions")
        else:
            menu.open_for(mailing, offers)
        return menu

    @work(group="flow", exit_on_error=False)
    async def _palette_flow(self, key: str, mailing_id: int) -> None:
        store = self.store
        if store is None:
            return
        try:
            mailing = await store.mailing(mailing_id)
        except NotFound:
            self.notify("That mailing is gone", severity="warning", timeout=3)
            return
        await self.perform(key, mailing)

    def _expect(self, *mailing_ids: int) -> None:
        until = time.monotonic() + EXPECT_FOR
        self._expected.update((mailing_id, until) for mailing_id in mailing_ids)

    async def perform(self, key: str, mailing: Mailing) -> None:
        """Carry out one Actions-menu entry; refused actions and bad input become one notice."""
        try:
            done = await self._perform(key, mailing)
        except UserError as exc:
            self.notify(str(exc), title="Not done", severity="error", timeout=8)
            done = None
        # Counted from when it was done, not when its dialog opened: one toast per action.
        self._expect(mailing.id, *(k for k, t in self._expected.items() if t > time.monotonic()))
        if done:
            self.notify(done, timeout=4)
        await self.refresh_now()
        self._follow(mailing.id)

    def _follow(self, mailing_id: int) -> None:
        """Keep the cursor on the mailing if it is still in the focused panel."""
        if self._dashboard is not None:
            self.dashboard.active_table().select_key(str(mailing_id))

    async def _perform(self, key: str, mailing: Mailing) -> str | None:
        lifecycle = self.lifecycle
        store = self.store
        assert lifecycle is not None and store is not None
        name = one_line(mailing.name)
        self._expect(mailing.id)
        if key == "resume":
            return await self._resume(mailing)
        if key == "details":
            self.push_screen(self._details_screen(store, mailing))
            return None
        if key == "remaining":
            self.push_screen(self._remaining_screen(store, mailing))
            return None
        entry = entry_for(key)  # every other key is a lifecycle action (core/actions_registry)
        if entry is None:
            raise UserError(f"unknown action {key!r}")
        action = entry.action
        if action is Action.STOP:
            confirm = entry.confirm
            assert confirm is not None
            dialog = _confirm(confirm.title, stop_question(mailing, name), confirm.confirm, True, confirm.keep)
            self._stop_dialog = (dialog, mailing.id, name)  # its count follows each read (_follow_stop_dialog)
            try:
                if not await self.push_screen_wait(dialog):
                    return None
            finally:
                self._stop_dialog = None
            stopped = await self._as_asked(mailing, ASKED_STOP, lambda expect: lifecycle.stop(mailing.id, expect=expect))
            return f"Stopped “{name}”: {stopped.counts_text()} (Inactive; messages already in flight are still counted)"
        if action is Action.MOVE:
            return await self._move(mailing, MOVE_KEYS[key])
        if action is Action.SCHEDULE:
            return await self._schedule(mailing)
        if action in (Action.SEND_NOW, Action.UNSCHEDULE) and mailing.wave_group is not None:
            return await self._wave_group_action(key, mailing)
        if action is Action.SEND_NOW and mailing.tripped:
            action = Action.RESTART  # sending a mailing the breaker stopped: the same confirmation as Restart
        if action is Action.SEND_NOW:
            if not await self._ask(entry.confirm, send_now_question(mailing, name)):
                return None
            facts = ASKED_REMAINING if mailing.state is MailingState.STOPPED else ASKED
            await self._as_asked(mailing, facts, lambda expect: lifecycle.send_now(mailing.id, expect=expect))
            await self._warn_without_unsubscribe(mailing.id)
            return f"“{name}” joined the queue (Current)"
        if action is Action.UNSCHEDULE:
            message = f"Cancel the schedule of “{name}”? The mailing is kept as a draft (Inactive)."
            if not await self._ask(entry.confirm, message):
                return None
            await self._as_asked(mailing, ASKED, lambda expect: lifecycle.unschedule(mailing.id, expect=expect))
            return f"“{name}” is a draft again (Inactive)"
        if action is Action.RESTART:
            from .screens.restart import restart_question

            title, message = restart_question(mailing, name)
            restart = ACTIONS[Action.RESTART].confirm
            assert restart is not None
            if not await self._ask(Confirm(title, restart.confirm, restart.keep), message):
                return None
            # Despite a trip only when the dialog said what tripped: one that happened while it was
            # open (restarted elsewhere, stopped again) is refused, and Restart asks again, saying it.
            despite_trip = mailing.tripped is not None
            await self._as_asked(
                mailing, ASKED_REMAINING,
                lambda expect: lifecycle.restart(mailing.id, despite_trip=despite_trip, expect=expect),
            )
            return f"“{name}” restarted for its {plural(mailing.remaining, 'remaining recipient')} (Current; {mailing.failed:,} failed are not sent again)"
        if action is Action.RETRY:
            return await self._retry(mailing)
        if action is Action.DELETE:
            message = (
                f"Delete “{name}” and its recipient list ({plural(mailing.total, 'recipient')})? "
                "This cannot be undone."
            )
            if not await self._ask(entry.confirm, message):
                return None
            await self._as_asked(mailing, ASKED, lambda expect: lifecycle.delete(mailing.id, expect=expect))
            return f"Deleted “{name}”"
        raise UserError(f"unknown action {key!r}")

    async def _warn_without_unsubscribe(self, mailing_id: int) -> None:
        """A large mailing on its way without one-click unsubscribe: said as the CLI says it."""
        from mailtower.core.unsubscribe import missing_warning

        assert self.store is not None
        try:
            warning = missing_warning(await self.store.mailing(mailing_id))
        except NotFound:
            return
        if warning:
            self.notify(warning, severity="warning", timeout=10)

    async def _retry(self, mailing: Mailing) -> str | None:
        """Retry failed (issue 13): a risky action, so its dialog opens on "Keep as it is"."""
        from mailtower.core.retry import retry_failed

        assert self.store is not None
        name = one_line(mailing.name)
        message = (
            f"Send “{name}” again to its failed recipients whose failure may pass (given up after the "
            f"retry time, refused by policy)? It joins the bottom of the queue. Of its {mailing.failed:,} "
            "failed, unknown mailboxes and suppressed addresses are not sent again."
        )
        if not await self._ask(ACTIONS[Action.RETRY].confirm, message):
            return None
        store = self.store
        plan = await self._as_asked(mailing, ASKED_FAILED, lambda expect: retry_failed(store, mailing.id), read_first=True)
        return f"“{name}” queued again: {plan.describe()} (Current)"

    async def _resume(self, mailing: Mailing) -> str | None:  # noqa: ARG002 - every paused relay, whatever the mailing
        """Ask the sender (ours or another process's) to try the paused relays again now."""
        store = self.store
        assert store is not None
        names = paused_relays(self.waiting_document())
        relays = ", ".join(names) if names else "the paused relays"
        message = (
            f"Try {relays} again now? One connection logs in first; if the relay refuses it again, "
            "sending stays paused (a relay may lock an account after repeated refused logins)."
        )
        if not await self._ask(RESUME_CONFIRM, message):
            return None
        await request_resume(store)
        return f"Asked the sender to try {relays} again now (one connection logs in first)"

    async def _ask(self, confirm: Confirm | None, message: str) -> bool:
        """An action's question (core/actions_registry): it opens on the keep button; only the
        confirm button's own key (or Tab) confirms."""
        assert confirm is not None
        return bool(await self.push_screen_wait(_confirm(confirm.title, message, confirm.confirm, True, confirm.keep)))

    async def _as_asked(
        self,
        mailing: Mailing,
        facts: tuple[str, ...],
        act: Callable[[Expect], Awaitable[T]],
        *,
        name: str | None = None,
        read_first: bool = False,
        waves: int | None = None,
    ) -> T:
        """Carry out a confirmed action on `mailing` only if what its question stated (`facts`
        of the mailing as the question showed it) still holds; else refuse in one line, nothing done.

        `act` gets the check as the lifecycle's `expect`: it runs inside the action's own
        transaction (a compare-and-act). Actions whose core takes no check (a local-time
        schedule's waves, Retry) read the mailing again first (`read_first`); `waves`: how many
        waves the question counted, counted again."""
        store = self.store
        assert store is not None
        shown = name or one_line(mailing.name)

        def expect(now: Mailing) -> None:
            changed = what_changed(mailing, now, facts)
            if changed is not None:
                raise changed_elsewhere(shown, changed)

        try:
            if read_first:
                now = await store.mailing(mailing.id)
                expect(now)
                if waves is not None and (counted := len(await grouped_with(store, now))) != waves:
                    raise changed_elsewhere(shown, plural(counted, "wave"))
            return await act(expect)
        except NotFound:
            raise UserError(f"“{shown}” was deleted while the question was open; nothing was done") from None

    async def _move(self, mailing: Mailing, direction: Direction) -> str | None:
        """Move a current mailing. A move that changes which mailing is at the head of the queue
        (the one being sent, or sent next) asks first, on the safe choice; the others are done at once.
        In the move's transaction the queue must still be as judged: a move judged harmless that
        would now change the head, or an asked one whose head or new head changed, is refused."""
        lifecycle = self.lifecycle
        assert lifecycle is not None
        name = one_line(mailing.name)
        order = [m.id for m in self.sections[Section.CURRENT]]
        sending = next((m.id for m in self.sections[Section.CURRENT] if m.state is MailingState.SENDING), None)
        asked = changes_head(order, mailing.id, direction, sending)
        if asked and not await self._ask(MOVE_HEAD_CONFIRM, self._move_question(order, mailing, direction, sending)):
            return None
        heads = (order[0], moved_order(order, mailing.id, direction)[0]) if asked else None

        def expect(now: list[int]) -> None:
            if asked and now and (now[0], moved_order(now, mailing.id, direction)[0]) != heads:
                raise UserError(f"The queue changed elsewhere while the question was open; “{name}” was not moved: "
                                "open the menu again")
            if not asked and changes_head(now, mailing.id, direction, sending):
                raise UserError(f"The queue changed meanwhile: moving “{name}” now would change which mailing is "
                                "sent first; nothing was moved: open the menu again")

        position = await lifecycle.move(mailing.id, direction, expect=expect)
        return f"“{name}” is now number {position} in the queue"

    def _move_question(self, order: list[int], mailing: Mailing, direction: Direction, sending: int | None) -> str:
        """"Move “Beta” up (to number 1 of 3)? “Beta” starts sending now, and “Alpha”, which is being sent, ..."."""
        after = moved_order(order, mailing.id, direction)

        def named(mailing_id: int) -> str:
            found = self.find(mailing_id)
            return f"“{one_line(found.name)}”" if found is not None else f"mailing {mailing_id}"

        head, new_head = self.find(order[0]), after[0]
        where = {Direction.UP: "up", Direction.DOWN: "down", Direction.TOP: "to the top",
                 Direction.BOTTOM: "to the bottom"}[direction]
        question = f"Move “{one_line(mailing.name)}” {where} (to number {after.index(mailing.id) + 1} of {len(after)})? "
        back = f"number {after.index(order[0]) + 1}"
        if sending is not None and sending != order[0] and sending in after:
            # The head waits for its retries while the one behind it is sent.
            at = f"number {after.index(sending) + 1}"
            if sending == mailing.id:
                return question + (f"It is being sent: it pauses and waits at {at}, and the first mailing ahead of "
                                   "it with mail due is sent instead (it goes on where it was when its turn comes again).")
            return question + (
                f"It goes ahead of {named(sending)}, which is being sent: {named(mailing.id)} is sent now and "
                f"{named(sending)} pauses and waits at {at} (it goes on where it was when its turn comes again)."
            )
        if head is not None and head.state is MailingState.SENDING:
            return question + (
                f"{named(new_head)} starts sending now, and {named(order[0])}, which is being sent, pauses and "
                f"waits at {back} (it goes on where it was when its turn comes again)."
            )
        return question + f"{named(new_head)} is then sent first, before {named(order[0])} (now at {back})."

    async def _schedule(self, mailing: Mailing) -> str | None:
        from .screens.schedule import ScheduleDialog, schedule_done_text

        store, lifecycle = self.store, self.lifecycle
        assert store is not None and lifecycle is not None
        # A wave stands for its whole local-time schedule: the dialog plans with all its waves.
        zones = await preview_for(store, mailing)
        members = await grouped_with(store, mailing)
        waves = len(members)
        asked = await store.wave_request(mailing.wave_group) if mailing.wave_group is not None else None
        wall = (asked[0], asked[1] or self.operator_tz) if asked is not None else None
        current = await current_send_times(store, members)
        request = await self.push_screen_wait(
            ScheduleDialog(mailing, self.operator_tz, now=self.now, zones=zones, waves=waves, wall=wall, current=current)
        )
        if request is None:
            return None
        await self._refuse_if_rescheduled(mailing)
        if _same_schedule(mailing, request, wall):
            # Enter on the row, on Set Schedule and in the dialog: saving it again would plan the
            # waves anew (new mailing ids for the same send times) for nothing asked.
            return f"“{one_line(mailing.wave_parent or mailing.name)}”: the schedule is unchanged; nothing was saved"
        result = await schedule_mailing(
            store, lifecycle, mailing.id, request.local, request.tz, request.local_time, request.passed, now=self.now()
        )
        self._expect(*result.mailing_ids, *([result.skipped_id] if result.skipped_id else []))
        for warning in result.warnings:
            self.notify(warning, severity="warning", timeout=8)
        await self._warn_without_unsubscribe(mailing.id)
        return schedule_done_text(one_line(mailing.wave_parent or mailing.name), request, result)

    async def _refuse_if_rescheduled(self, mailing: Mailing) -> None:
        """The schedule dialog shows the mailing as it was when it opened: if it was scheduled,
        sent or cancelled elsewhere meanwhile, saving would undo that unseen (issue 11)."""
        assert self.store is not None
        try:
            now = await self.store.mailing(mailing.id)
        except NotFound:
            raise UserError(f"“{one_line(mailing.name)}” was deleted while the dialog was open") from None
        before = (mailing.state, mailing.schedule and (mailing.schedule.local, mailing.schedule.tz), mailing.wave_group)
        after = (now.state, now.schedule and (now.schedule.local, now.schedule.tz), now.wave_group)
        if before != after:
            raise UserError(
                f"“{one_line(mailing.name)}” was changed elsewhere while the dialog was open "
                f"(now {describe_schedule(now)}); nothing was saved: open Set Schedule again"
            )

    async def _wave_group_action(self, key: str, mailing: Mailing) -> str | None:
        """Cancel or Send now on a local-time schedule's row: every scheduled wave of it, as one mailing again."""
        store, lifecycle = self.store, self.lifecycle
        assert store is not None and lifecycle is not None
        name = one_line(mailing.wave_parent or mailing.name)
        waves = len(await grouped_with(store, mailing))
        if key == "unschedule":
            message = (
                f"Cancel the schedule of “{name}” ({plural(waves, 'wave')})? Its waves become one draft again (Inactive)."
            )
            if not await self._ask(ACTIONS[Action.UNSCHEDULE].confirm, message):
                return None
            kept, count = await self._as_asked(
                mailing, ASKED, lambda expect: cancel_schedule(store, lifecycle, mailing.id), name=name,
                read_first=True, waves=waves,
            )
            self._expect(kept)
            return f"“{name}” is one draft again (Inactive; {plural(count, 'wave')} cancelled)"
        message = (
            f"Send “{name}” now to every recipient of its {plural(waves, 'wave')}, instead of at their local times? "
            "It joins the bottom of the queue as one mailing (Current)."
        )
        send_now = ACTIONS[Action.SEND_NOW].confirm
        assert send_now is not None
        if not await self._ask(Confirm("Send all waves now", send_now.confirm, send_now.keep), message):
            return None
        kept, count = await self._as_asked(
            mailing, ASKED, lambda expect: send_group_now(store, lifecycle, mailing.id), name=name,
            read_first=True, waves=waves,
        )
        self._expect(kept)
        return f"“{name}” joined the queue as one mailing (Current; {plural(count, 'wave')})"

    def _details_screen(self, store: Store, mailing: Mailing) -> Screen[None]:
        from .screens.details import DetailsScreen

        return DetailsScreen(
            store, mailing, operator_tz=self.operator_tz, hold=lambda mailing_id: self.holds().get(mailing_id),
            domains=(self.settings, self.domains_document),
        )

    def _remaining_screen(self, store: Store, mailing: Mailing) -> Screen[None]:
        from .screens.remaining import RemainingScreen

        return RemainingScreen(store, mailing, files_read(self.settings))

    # ---- command palette ---------------------------------------------------------------------

    def palette_commands(self) -> list[Command]:
        """The dashboard's own commands; each mailing's actions come from the palette's provider."""
        commands: list[Command] = []
        for section in Section:
            commands.append(
                Command(
                    f"Go to {section.value.capitalize()}",
                    f"focus the {section.value} panel",
                    _bind(self.action_focus_section, section.value),
                )
            )
        commands.append(Command("Actions menu", "open the Actions menu of the highlighted mailing", self.action_actions))
        commands.append(Command("Filter", "show only mailings whose name, subject or id match (Escape clears)", self.action_filter))
        commands.append(Command("Keys", "show every key", self.action_help))
        commands.append(
            Command("Sending limits", "change rate, hourly limit and connections while sending", self.action_limits)
        )
        commands.append(Command("Refresh", "re-read the database now", lambda: self.run_worker(self.refresh_now())))
        commands.append(Command("Quit", QUIT_DEMO if self.demo else QUIT_HELP, self.action_leave))
        return commands

    def palette_run(self, entry: MailingCommand) -> None:
        """A mailing's action chosen in the palette: the Actions menu's path, confirmations included."""
        if entry.enabled:
            self._palette_flow(entry.key, entry.mailing_id)
        else:
            self.notify(entry.reason, severity="warning", timeout=8)

    def get_system_commands(self, screen: Screen):  # type: ignore[no-untyped-def]
        # Quit and Keys are ours (Quit hands the sending off; Keys shows this dashboard's keys,
        # where Textual's Keys panel would show a second, different list): one entry each.
        for command in super().get_system_commands(screen):
            if command.title not in ("Quit", "Keys"):
                yield command

    # ---- leaving -----------------------------------------------------------------------------

    @work(group="leave", exit_on_error=False)
    async def leave(self, ask: bool = True, hand_off: bool = True, hung_up: bool = False) -> None:
        """Quit; while work is current or scheduled, hand the sending to a background `mailtower run`."""
        if self._leaving:
            return
        store = self.store
        sections = self.sections
        if store is not None:
            try:
                sections = await store.sections()
            except (*database_errors(), OSError):
                pass  # decide from the last refresh rather than not being able to quit
        current = len(sections[Section.CURRENT])
        scheduled = sum(1 for m in sections[Section.SCHEDULED] if not m.missed)
        work_left = bool(current or scheduled)
        someone_else_sends = self.mode is Mode.MONITORING
        handing_off = hand_off and self.hand_off_on_quit and work_left and not someone_else_sends
        if handing_off and ask:
            parts = [f"{current} current" if current else "", f"{scheduled} scheduled" if scheduled else ""]
            what = " and ".join(p for p in parts if p)
            message = (
                f"{what.capitalize()} mailing{'s' if current + scheduled > 1 else ''} left. "
                "Sending continues in the background (a detached `mailtower run`) after you quit; "
                "reopen the dashboard at any time to see it."
            )
            if not await self.push_screen_wait(_confirm("Quit the dashboard?", message, "Quit", False)):
                return
        self._leaving = True
        await self._stop_sender()
        exit_message = None
        if handing_off:
            try:
                self.handed_off = self.handoff(await self._handoff_settings())
            except OSError as exc:
                exit_message = (
                    f"mailtower: could not start the background sender ({exc}); run `mailtower run` to keep sending"
                )
            else:
                pid = getattr(self.handed_off, "pid", None)
                exit_message = (
                    f"mailtower: sending continues in the background{f' (pid {pid})' if pid else ''}; "
                    f"log: {handoff_log_path(self.settings)}"
                )
        if store is not None:
            self.store = None
            await store.close()
        if self.demo and exit_message is None:
            exit_message = "mailtower demo: ended; its SMTP sink and database were throw-away and are removed"
        self.exit(0, message=exit_message)
        if hung_up and self.hangup_exit is not None:
            # Restoring a terminal that is gone can block forever in Textual's writer; the
            # sending is handed off and the store closed, so nothing is lost by leaving hard.
            watchdog = threading.Timer(self.hangup_exit, self._hard_exit)
            watchdog.daemon = True
            watchdog.start()

    def _hard_exit(self) -> None:
        try:
            if self.cleanup is not None:
                self.cleanup()
        finally:
            os._exit(0)


def holder_forms(holder: Holder | None) -> tuple[str, ...]:
    """Who holds the sender lease, from the full description down to what fits a narrow header."""
    if holder is None:
        return ()
    return (holder.describe(), f"{holder.what} pid {holder.pid}@{holder.host}", f"pid {holder.pid}@{holder.host}")


def silence_reason(remote: SenderStatus | None, now: float) -> str:
    """Why another process's sender counts as silent (its heartbeat is not fresh)."""
    if remote is None:
        return "no heartbeat yet"
    age = remote.age(now)
    return f"no heartbeat for {int(age)} s" if age >= 0 else f"its heartbeat is {int(-age)} s ahead of this clock"


def _bind(function: Callable[..., object], *args: object, **kwargs: object) -> Callable[[], object]:
    def run() -> object:
        return function(*args, **kwargs)

    return run


def run_dashboard(settings: Settings) -> int:
    """`mailtower`: the dashboard on the configured database, sending from this process if it may."""
    # Opened once before the screen is taken: a database that cannot be opened is one line on
    # stderr and exit 2 (UserError), not a blank screen.
    loops.run(check_database_opens(settings.db))
    app = DashboardApp(settings, hangup_exit=HANGUP_EXIT)
    loops.run_app(app)
    if app.return_code and app.open_error:
        print(app.open_error, file=sys.stderr)
    return app.return_code or 0


async def check_database_opens(path: Path | PgTarget) -> None:
    store = await open_store(path)
    await store.close()
