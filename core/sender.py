"""The asyncio sender: promotes due schedules, sends the head of the queue over K persistent
SMTP connections, and records every outcome in the ledger in batches.

Shape: one feeder per head mailing claims batches of ledger rows (writing the outcomes so far
in the same transaction) and puts them on a queue; workers, each with its own connection to
one of the relays, take rows off the queue and send them. The feeder keeps the queue topped
up ahead of the workers. Claimed rows stay `pending` on disk: a connection marks the row it is
about to send `sending` in the same transaction that records its previous outcome, and waits
for that commit before the row's final dot (it does the write itself on the loop's thread when
the store is free: OnDisk), so a crash leaves at most one message per connection in doubt. With
PIPELINING the next row's envelope goes out with the final dot (Carry, _look_ahead).

Stopping is bounded: a stop ends the sender within STOP_GRACE seconds plus one final ledger
write; messages still in flight then are cut off and left in doubt. A failure of the sender
itself (a ledger write that fails, a worker that raises) stops it the same way and `run()`
raises SenderFailed naming the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field, replace
from pathlib import Path
from datetime import datetime, timezone

from . import canary as canaries
from .breaker import Breaker, Breakers
from .canary import CanaryRun
from .compose import MessageTemplate
from .config import Settings, check_smtp_security
from .dkim_signing import load_signer
from .domains import PARK_LIMIT, DomainGroup, DomainPacer
from .domain import Mailing, MailingState, RecipientState, Section
from .errors import NotFound
from .fleet import FleetMember
from .lease import sender_lease
from .lifecycle import Lifecycle
from .limits import Limits, read_limits
from .operations import RESUME_REQUEST_KEY, parse_resume_request, template_for
from .ratelimit import RateLimiter
from .relays import RelayState, relays_from_settings
from .progress import RateMeter, SenderSnapshot, SenderState, bumped, progress_of, queue_estimates
from .sender_status import SenderStatus, write_status
from .smtp_client import ConnectFailed, SmtpConnection, scrub_secrets
from .smtp_replies import (
    Outcome as ReplyOutcome, Verdict, connection_lost, is_temporary_refusal, mailbox_gone, server_reached, tls_failed,
)
from .db_errors import database_errors, is_database_error
from .store import Claimed, Outcome, Store, open_store, storage_error
from .suppression import SuppressedMeanwhile
from .timezones import utcnow
from .unsubscribe import headers_for as unsubscribe_headers

log = logging.getLogger("mailtower.sender")

CONTROL_INTERVAL = 0.5  # seconds between checks for stops, reorders and due schedules
FLUSH_INTERVAL = 0.25  # idle wake-up of the feeder when nothing happens
PUBLISH_INTERVAL = 0.2  # how often the progress snapshot is rebuilt while sending
RECONNECT_RETRIES = 3  # transaction retries on fresh connections before releasing a row
LIMITS_INTERVAL = 0.5  # how often the operator's limits are read: a change applies within a second
STOP_GRACE = 5.0  # seconds a stop waits for messages in flight before cutting them off (left in doubt)
# How long a connection waiting for the probing one's answer goes before it looks again (a stop).
PROBE_LOOK_AGAIN = 0.05
# A job taken ahead at a final dot whose reply is this late goes to another connection (checked
# with the control tick, so it waits at most this plus CONTROL_INTERVAL), or AHEAD_SLOWER times
# the relay's usual wait for a dot's reply when that is longer: a relay that scans content
# answers in seconds, and giving its jobs away cost a new connection (and login) per message.
AHEAD_PATIENCE = 1.0
AHEAD_SLOWER = 4.0


def pause_reason(verdict: Verdict, at_login: bool) -> str:
    """Why a relay is paused, in the operator's words. A reply to AUTH never keeps its text
    (classify_auth): "login refused: 535 5.7.8 (server text withheld)"."""
    if verdict.code is None:  # refused on our side: no encryption for a login, an unsendable sender
        return f"cannot log in: {verdict.text}" if at_login else f"paused: {verdict.text}"
    said = f"{verdict.code} {verdict.text}"
    return f"login refused: {said}" if at_login else f"paused, the server refuses the session: {said}"


def rest_reason(verdict: Verdict, at_login: bool) -> str:
    """Why a relay rests (tried again by itself), in the operator's words; the dashboard's header
    shows the words before the colon alone. A relay that answered (a 4xx greeting, a refused
    STARTTLS), or took the connection and then closed it or went quiet, was reached: only a
    connect refused or timed out "cannot reach"."""
    said = f"{verdict.code} {verdict.text}" if verdict.code is not None else verdict.text
    if at_login:
        what = "login failed for now"
    elif verdict.code is not None:
        what = "the server turned us away for now"
    elif tls_failed(verdict):
        what = "TLS with the server failed"
    elif not server_reached(verdict):
        what = "cannot reach the server"
    elif connection_lost(verdict):
        what = "the server broke off the session"
    else:
        what = "the server took the connection but did not answer in time"
    return f"{what}: {said}"


class LeaseHeld(Exception):
    """Another process is the sender for this database."""


class SenderFailed(Exception):
    """The sender could not go on (its ledger could not be written, a worker broke); the
    message is one line naming the cause. Nothing was marked sent that was not."""


def describe_failure(exc: BaseException, db: Path) -> str:
    fault = storage_error(db, exc)
    if fault is not None:
        return f"the sender stopped: {fault}"
    if is_database_error(exc):
        return f"the sender stopped: cannot write the ledger {db}: {exc}"
    if isinstance(exc, OSError):
        return f"the sender stopped: {db}: {exc.strerror or exc}"
    return f"the sender stopped: {type(exc).__name__}: {exc}"


@dataclass(eq=False)
class HeadRun:
    """The state of sending one mailing (the head of the queue)."""

    mailing: Mailing
    template: MessageTemplate
    outcomes: list[Outcome] = field(default_factory=list)
    marks: list[int] = field(default_factory=list)  # rows connections are about to send
    held: set[int] = field(default_factory=set)  # claimed rows in memory (queued or in flight)
    marked: set[int] = field(default_factory=set)  # held rows whose `sending` mark was asked for
    barred: set[int] = field(default_factory=set)  # marked rows found suppressed: suppressed on disk, never sent
    queued: int = 0  # rows on the work queue
    inflight: int = 0
    halt: bool = False
    halt_reason: str = ""
    exhausted: bool = False
    last_flush: float = field(default_factory=time.monotonic)  # monotonic time of the last ledger write
    refill_at: int = 1 << 30  # the feeder claims more when fewer rows than this are queued
    rows_wait: bool = False  # rows wait in domain groups: every outcome may let one go (feeder)
    # Resolved by the next commit: "everything asked for so far is on disk".
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    breaker: Breaker | None = None  # judges this mailing's outcomes (core/breaker.py)
    canary: CanaryRun | None = None  # while its canary sample goes out (core/canary.py)
    trip: str = ""  # why the breaker tripped, once it did
    trip_recorded: bool = False  # the mailing is stopped for it (the lifecycle was told)
    # The running loop, looked up once: asyncio.get_running_loop() makes a getpid(2) system call
    # on Python 3.11, and on_disk runs once per message (2 % of the sender's time, issue 12).
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)

    def let_go(self, row_id: int) -> None:
        """A held row leaves memory unsent: plain pending on disk again, its claim released."""
        self.held.discard(row_id)
        if not self._forget_barred(row_id):
            self.marked.discard(row_id)
            if row_id in self.marks:
                self.marks.remove(row_id)  # not written yet (a short list, one per connection)
            # One outcome undoes a written mark and releases the claim on disk (fleet, core/fleet.py).
            self.outcomes.append(Outcome(row_id, RecipientState.PENDING, counted_attempt=False))
        self.wake.set()

    def unmark(self, row_id: int) -> None:
        """A marked row was not sent after all: pending on disk until it is taken again."""
        if self._forget_barred(row_id) or row_id not in self.marked:
            return
        self.marked.discard(row_id)
        if row_id in self.marks:
            self.marks.remove(row_id)  # not written yet: nothing to undo (a short list, one per connection)
        else:  # back on this sender's queue: it keeps its claim (fleet, core/fleet.py)
            self.outcomes.append(Outcome(row_id, RecipientState.PENDING, counted_attempt=False, keep_claim=True))

    def settle(self, outcome: Outcome) -> None:
        """A held row has its outcome: written with the next batch, then out of memory."""
        row_id = outcome.recipient_id
        self.held.discard(row_id)
        if self._forget_barred(row_id):
            return  # its mark's commit made it `suppressed`: that says it all (no dot was sent)
        if row_id in self.marked:
            self.marked.discard(row_id)
            if row_id in self.marks:
                self.marks.remove(row_id)  # the outcome says it all (only without a dot: a refusal)
        self.outcomes.append(outcome)
        self.nudge()

    def nudge(self) -> None:
        """Wake the feeder when it has something to do besides writing outcomes (connections
        write those with their next mark): refill the queue, let parked rows go, or finish.
        Waking it for every message cost a loop turn, a task and a timer each (issue 12)."""
        if self.queued < self.refill_at or self.rows_wait or (self.inflight <= 1 and self.queued == 0) or self.halt:
            self.wake.set()

    def bar(self, row_ids: set[int]) -> None:
        """Marked rows the last commit found suppressed (and made `suppressed` on disk). One
        whose connection gave its outcome while that commit was under way (a refusal before the
        dot) is forgotten with it: written too, it would count the row twice."""
        self.barred |= row_ids
        settled = [o.recipient_id for o in self.outcomes if o.recipient_id in row_ids]
        if settled:
            self.outcomes = [o for o in self.outcomes if o.recipient_id not in row_ids]
            for row_id in settled:
                self._forget_barred(row_id)

    def _forget_barred(self, row_id: int) -> bool:
        """Out of memory if the row was found suppressed when marked (True), without an outcome."""
        if row_id not in self.barred:
            return False
        self.barred.discard(row_id)
        self.held.discard(row_id)
        self.marked.discard(row_id)
        self.wake.set()
        return True

    def on_disk(self) -> asyncio.Future[None]:
        """A future resolved when everything asked for so far has been committed. The feeder is
        woken only if the waiting connection cannot write it itself (OnDisk)."""
        waiter = self.loop.create_future()
        self.waiters.append(waiter)
        return waiter

    def fail_waiters(self, exc: BaseException) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(exc)
                waiter.exception()  # retrieved here: nobody may be left to await it


class OnDisk:
    """Awaited before a row's final dot: the row's `sending` mark and the connection's previous
    outcome are committed, and the mark did not find the address suppressed meanwhile (else
    SuppressedMeanwhile: no dot). The worker writes them itself, at once, on the event loop's
    thread when the store can (Store.record_now: no hop to the database thread, no wake-up of
    the feeder); else the feeder writes them. Awaitable again on a retry (instant then).

    The mark is asked for at the first await, when the server has taken the envelope and the
    body is next: a row whose connection is still opening, or was refused at MAIL or RCPT, is
    never `sending` on disk, so a stop does not leave it "in doubt" for a message the server
    never had (a mark asked for when the job started was written by the next commit, whatever
    the connection was doing)."""

    __slots__ = ("sender", "run", "waiter", "row_id")

    def __init__(self, sender: Sender, run: HeadRun, row_id: int) -> None:
        self.sender, self.run, self.row_id = sender, run, row_id
        self.waiter: asyncio.Future[None] | None = None

    def _mark(self) -> asyncio.Future[None]:
        """Ask for the row's mark in the next commit; the future that commit resolves."""
        self.run.marks.append(self.row_id)
        self.run.marked.add(self.row_id)
        self.waiter = self.run.on_disk()
        return self.waiter

    def __await__(self) -> Generator[object, None, None]:
        waiter = self.waiter or self._mark()
        if not waiter.done():
            if len(self.sender._busy) > 1:  # noqa: SLF001
                # One turn of the loop first: other connections whose replies came in the same
                # wake-up add their outcomes and marks, and one write serves them all.
                yield
            if not waiter.done():
                self.sender._flush_inline(self.run)  # noqa: SLF001 - the sender's own helper
                if not waiter.done():
                    self.run.wake.set()  # the store was busy: the feeder writes it
        yield from waiter.__await__()
        if self.row_id in self.run.barred:
            raise SuppressedMeanwhile(f"recipient {self.row_id} was suppressed before it was sent")


@dataclass(frozen=True, slots=True)
class Job:
    """One claimed row on the work queue, with the run and the destination group it belongs to."""

    run: HeadRun
    row: Claimed
    group: DomainGroup[Job]  # its destination group (core/domains.py), found once when claimed


@dataclass(eq=False, slots=True)
class Carry:
    """A worker's next job, taken off the queue at the previous final dot so that its MAIL,
    RCPT and DATA went out in the same write (SmtpConnection.send's `then`). Until the worker
    starts it, it still counts in its run's `queued` (the feeder waits for it like for a queued
    one); `retire` is set when the look-ahead took the queue's end-of-work marker instead. The
    job went through its domain group's admission like every job on the queue."""

    job: Job | None = None
    retire: bool = False
    since: float = 0.0  # monotonic time the job was taken
    patience: float = AHEAD_PATIENCE  # how long it may wait behind the dot's reply
    orphaned: bool = False  # the job was given to another connection; its envelope was sent ahead
    # The job's message, rendered (and signed) while the connection waited for the dot's reply:
    # off the critical path of a connection, which only waits for the server then (issue 12).
    made: tuple[int, bytes] | None = None

    def hold(self, job: Job, patience: float = AHEAD_PATIENCE) -> None:
        self.job, self.since, self.made, self.patience = job, time.monotonic(), None, patience

    def premade(self, row_id: int) -> bytes | None:
        """The message rendered ahead for this row, if any (once)."""
        made, self.made = self.made, None
        return made[1] if made is not None and made[0] == row_id else None

    def take(self) -> Job | None:
        job, self.job = self.job, None
        return job

    def overdue(self, now: float) -> Job | None:
        """The job, if it waited longer than its patience behind a slow final-dot reply:
        taken back (another connection sends it) and this connection drops its envelope."""
        if self.job is None or now - self.since < self.patience:
            return None
        self.orphaned = True
        return self.take()

    def give_back(self) -> None:
        """The worker ends (cut off, retired) with a job in hand: it goes back to pending."""
        job = self.take()
        if job is not None:
            job.run.queued -= 1
            job.run.let_go(job.row.id)


class Sender:
    """Run with `await sender.run()`; `request_stop()` ends it gracefully; `snapshot` is live."""

    def __init__(self, settings: Settings, *, what: str = "mailtower run") -> None:
        self.settings = settings
        self.relays = relays_from_settings(settings)
        self.dkim = load_signer(settings)  # DKIM (issue 13 item 8): the key read and parsed once per run
        self.lease = sender_lease(settings.db)
        self.what = what
        self.snapshot = SenderSnapshot()
        self.meter = RateMeter()
        self.limiter = RateLimiter(settings.rate, floor=10.0 * settings.connections)  # global, live limits
        self.domains: DomainPacer[Job] = DomainPacer(settings.domains)  # pacing by destination
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop run() works on (may be another thread's)
        self._work: asyncio.Queue[Job | None] = asyncio.Queue()
        self._store: Store | None = None
        self._lifecycle: Lifecycle | None = None
        self._waiting_reason = ""
        self.last_accept_at: float | None = None  # wall clock of the last 250 to a final dot
        self.sent_while_in_doubt = 0  # recipients sent in this run who may have had the message already
        self._started_at: datetime | None = None  # when run() began (see _apply_limits)
        self._last_status_write = 0.0
        self._last_publish = 0.0
        # The Current section as the last control tick read it: between ticks only the head
        # mailing's counters move, and those come back from every ledger write.
        self._current: list[Mailing] = []
        self.limits: Limits | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._busy: set[asyncio.Task[None]] = set()  # workers sending a message (the rest wait for work)
        self._carries: set[Carry] = set()  # each worker's job taken ahead, if any
        # The ledger writes done on the event loop's own thread (Store.record_now), the feeder's
        # batches and claims included: fastest for `mailtower run`; a front end that answers keys
        # on the same loop (the dashboard) turns it off, so the writes run on the database's
        # thread instead.
        self.inline_writes = True
        self._last_limits_read = 0.0
        self._stop_at: float | None = None  # monotonic time of the stop request
        self._failure: BaseException | None = None  # what stopped the sender, if anything did
        self._run: HeadRun | None = None  # the head being sent, to wake on a stop or a failure
        self._resume_checked_at = 0.0
        self._operator_resumed = False
        self._idle_exit = False  # run(until_idle=True) returned because nothing was left (for the log)
        self._idle_logged = False  # "waiting" is logged once each time the sender runs out of due work
        self.breakers = Breakers(settings)  # per mailing, kept across turns (core/breaker.py)
        # One sender of the fleet (core/fleet.py): heartbeat, claims on disk, shared limits.
        self.fleet = FleetMember(settings, self._fail, lambda: (self.meter.rate(), sum(r.connections for r in self.relays)),
                                 self.limiter)

    # ---- public --------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the sender to finish: unstarted rows go back to pending, messages in flight get
        STOP_GRACE seconds; safe to call from any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._begin_stop)
                return
            except RuntimeError:
                pass  # its loop is closing: setting the flag directly is all that is left
        self._begin_stop()

    def _begin_stop(self) -> None:
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        self._stopping.set()
        if self._run is not None:
            self._halt(self._run, "the sender is shutting down")

    def _fail(self, exc: BaseException) -> None:
        """Something the sender cannot go on without broke: stop everything, unblock everyone."""
        if self._failure is None:
            self._failure = exc
            # Said once, by whoever runs the sender (the CLI's one line, the dashboard's header).
            log.info("%s", describe_failure(exc, self.settings.db))
        run = self._run
        if run is not None:
            run.fail_waiters(exc)
        self._begin_stop()

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        self._busy.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._fail(task.exception())  # type: ignore[arg-type]

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self, until_idle: bool = False) -> None:
        self._loop = asyncio.get_running_loop()
        self._started_at = utcnow()
        check_smtp_security(self.settings)
        if not self.lease.acquire(self.what):
            holder = self.lease.holder()
            raise LeaseHeld(f"another sender is running on {self.settings.db}: {holder.describe() if holder else 'unknown'}")
        opened = False
        try:
            try:
                self._store = await open_store(self.settings.db)
            except (*database_errors(), OSError) as exc:
                raise SenderFailed(describe_failure(exc, self.settings.db)) from exc
            opened = True
            self._lifecycle = Lifecycle(self._store)
            log.info("sender started on %s (pid %d; %s)", self.settings.db, os.getpid(), self._describe_relays())
            try:
                await self._main(until_idle)
            except (SenderFailed, asyncio.CancelledError):
                raise
            except Exception as exc:
                self._fail(exc)
            finally:
                await self.fleet.leave()
                await self._final_status()
                await self._store.close()
                log.info("sender stopped: %s", self._why_stopped(until_idle))
            if self._failure is not None:
                raise SenderFailed(describe_failure(self._failure, self.settings.db)) from self._failure
        finally:
            self.lease.release(discard=not opened)  # no lease file left beside a file that is not ours

    def _describe_relays(self) -> str:
        """For the start line of the log: where mail goes (the limits follow once read)."""
        return "relays " + ", ".join(f"{r.name} x{r.connections}" for r in self.relays)

    def _why_stopped(self, until_idle: bool) -> str:
        if self._failure is not None:
            return describe_failure(self._failure, self.settings.db)
        return "nothing left to send" if until_idle and self._idle_exit else "asked to stop"

    async def _final_status(self) -> None:
        """Say "stopped" (and why, after a failure) to other processes; the database may be
        what failed, so this may fail too."""
        if self._failure is not None:
            self.snapshot = bumped(self.snapshot, state=SenderState.STOPPED, reason=describe_failure(self._failure, self.settings.db))
        try:
            await self._write_status(force=True, state=SenderState.STOPPED)
        except (*database_errors(), OSError) as exc:
            log.info("could not record that the sender stopped: %s", exc)

    # ---- main loop -----------------------------------------------------------------------

    async def _main(self, until_idle: bool) -> None:
        store, lifecycle = self._need()
        recovered = await self.fleet.join(store, self.settings.connections)  # only dead senders' rows
        if recovered:
            log.warning("%d recipients were in flight when the last sender stopped; sending them again", recovered)
        if self.fleet.alone:
            await self._sweep_stale_sending()
        await lifecycle.rederive_schedules()
        await self._apply_limits(force=True)
        if self.limits is not None:
            log.info("limits: %s", "; ".join(self.limits.describe()))
        try:
            while not self.stopping:
                await self._promote_due()
                head = await self._pick_head()
                await self._apply_limits()
                if head is None:
                    await self._publish_idle()
                    if until_idle and await self._nothing_left():
                        self._idle_exit = True
                        return
                    await self._log_waiting()
                    await self._sleep(CONTROL_INTERVAL)
                    continue
                self._idle_logged = False
                await self._send_head(head)
        finally:
            await self._retire_workers()

    async def _retire_workers(self) -> None:
        """End every worker: idle ones at once, busy ones when their message is done or, at
        the latest, STOP_GRACE after the stop (then cut off, their row left in doubt)."""
        self._begin_stop()
        for _ in self._workers:
            self._work.put_nowait(None)
        pending = [w for w in self._workers if not w.done()]
        if pending:
            grace = max(0.0, (self._stop_at or time.monotonic()) + STOP_GRACE - time.monotonic())
            _, late = await asyncio.wait(pending, timeout=grace)
            for worker in late:
                worker.cancel()
            if late:
                busy = len(self._busy & late)
                if busy and self._failure is None:
                    log.warning("cut off %d message(s) still in flight %g s after the stop; they are in doubt", busy, STOP_GRACE)
                await asyncio.wait(late)  # a cancelled worker drops its socket at once
        self._workers = []

    def _need(self) -> tuple[Store, Lifecycle]:
        assert self._store is not None and self._lifecycle is not None
        return self._store, self._lifecycle

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def _sweep_stale_sending(self) -> None:
        """A mailing left `sending` by a dead sender steps back to queued until it is picked again."""
        store, lifecycle = self._need()
        for mailing in await store.mailings(Section.CURRENT):
            if mailing.state is MailingState.SENDING:
                await lifecycle.yield_turn(mailing.id, "the sender restarted")

    async def _promote_due(self) -> None:
        store, lifecycle = self._need()
        now = datetime.now(timezone.utc)
        for mailing in await store.due_schedules(now):
            if mailing.missed or mailing.schedule is None or mailing.schedule.utc > now:
                continue
            late = (now - mailing.schedule.utc).total_seconds()
            if late <= self.settings.grace:
                await lifecycle.promote(mailing.id, late)
            else:
                await lifecycle.mark_missed(mailing.id, late)

    async def _pick_head(self) -> Mailing | None:
        """The first current mailing in queue order that has something due to send now."""
        store, lifecycle = self._need()
        for mailing in await store.mailings(Section.CURRENT):
            if await canaries.holds(store, mailing):
                return None  # the head holds after its canary: strict queue order, the rest wait
            if await store.has_due_work(mailing.id):
                return await store.mailing(mailing.id)
            if await self.fleet.others_hold(mailing.id):
                return None  # another sender sends its last rows: strict queue order waits for them
            if mailing.remaining == 0:
                await lifecycle.complete_if_done(mailing.id)
        return None

    async def _log_waiting(self) -> None:
        """Once each time the sender runs out of due work: what it waits for (a log line only)."""
        if self._idle_logged:
            return
        self._idle_logged = True
        store, _ = self._need()
        retrying = sum(m.deferred for m in await store.mailings(Section.CURRENT))
        upcoming = [m for m in await store.mailings(Section.SCHEDULED) if not m.missed and m.schedule is not None]
        waits = await canaries.holding_notes(store)  # canary holds first: they decide what goes next
        if retrying:
            waits.append(f"{retrying:,} deferred recipients to retry")
        if upcoming:
            first = min(upcoming, key=lambda m: m.schedule.utc if m.schedule else datetime.max.replace(tzinfo=timezone.utc))
            assert first.schedule is not None
            waits.append(f'mailing {first.id} "{first.name}" scheduled for {first.schedule.utc:%Y-%m-%d %H:%M} UTC')
        log.info("nothing to send now; waiting for %s", " and ".join(waits) if waits else "new work")

    async def _nothing_left(self) -> bool:
        store, _ = self._need()
        if await store.mailings(Section.CURRENT):
            return False
        return not any(not m.missed for m in await store.mailings(Section.SCHEDULED))

    # ---- one head mailing ----------------------------------------------------------------

    async def _send_head(self, mailing: Mailing) -> None:
        store, lifecycle = self._need()
        template = template_for(mailing)
        template.extra_headers = await unsubscribe_headers(store, mailing)  # List-Unsubscribe, if any
        if mailing.state is MailingState.QUEUED and not await lifecycle.start(mailing.id):
            return
        log.info('sending mailing %d "%s": %s recipients left', mailing.id, mailing.name, f"{mailing.remaining:,}")
        run = HeadRun(mailing=mailing, template=template)
        await self._guard(run)
        self._run = run
        self.domains.start(mailing.id)
        self._waiting_reason = ""  # a new head: why it waits is noted for it afresh
        try:
            await self._feed(run)
        except Exception as exc:
            self._fail(exc)
            raise
        finally:
            self._run = None
        await self._finish_head(run)

    async def _feed(self, run: HeadRun) -> None:
        """Keep the queue topped up and write outcomes until this head is done or halted."""
        self._current = []  # read afresh for this head (the previous one may have just finished)
        last_control = time.monotonic()
        while True:
            if self._failure is not None:
                raise self._failure
            if self.stopping:
                self._halt(run, "the sender is shutting down")
                if run.inflight and time.monotonic() >= (self._stop_at or 0.0) + STOP_GRACE:
                    await self._retire_workers()  # cuts off what is still in flight
                    self._forget_inflight(run)
                    run.marks = []  # the cut-off rows' marks, if not yet written: never dotted
            if run.halt and (run.queued or self.domains.parked):
                self._drain_queue(run)
            # Rows of domain groups at their limit wait parked; the others go on (core/domains.py).
            soonest = self.domains.release(self._enqueue) if self.domains.parked else None
            if self.domains.parked:
                self._postpone(run)
            batch = self._batch_size()
            run.refill_at = batch // 2
            run.rows_wait = bool(self.domains.parked)
            want_more = not (run.exhausted or run.halt) and run.queued < batch // 2 and self.domains.parked < PARK_LIMIT
            if self._flush_due(run) or want_more:
                await self._flush_and_claim(run, batch if want_more else 0)
            if time.monotonic() - last_control >= CONTROL_INTERVAL:
                last_control = time.monotonic()
                await self._control(run)
            if (run.exhausted or run.halt) and run.queued == 0 and run.inflight == 0 and not (
                run.outcomes or run.marks or self.domains.parked
            ):
                break
            if time.monotonic() - self._last_publish >= PUBLISH_INTERVAL:
                await self._publish(run, self._current_with_head(run))  # connections write most outcomes now
            if self._flush_due(run) or (want_more and not run.exhausted and not run.halt):
                await asyncio.sleep(0)  # the write may have been done inline: let the workers run
                continue
            run.wake.clear()
            try:
                await asyncio.wait_for(run.wake.wait(), timeout=min(FLUSH_INTERVAL, soonest or FLUSH_INTERVAL))
            except TimeoutError:
                pass

    def _flush_due(self, run: HeadRun) -> bool:
        """The feeder writes now when a connection waits for a write (its own inline write could
        not be done), or outcomes have waited FLUSH_INTERVAL, or nothing is in flight to write
        them with. Otherwise each connection writes the outcomes so far with its next mark just
        before its next final dot (OnDisk), so there is one write per dot at most, not two."""
        if run.waiters or run.marks:
            return True
        if not run.outcomes:
            return False
        idle = run.inflight == 0 and run.queued == 0  # nobody is about to write them
        return idle or run.halt or self.stopping or time.monotonic() - run.last_flush >= FLUSH_INTERVAL

    def _flush_inline(self, run: HeadRun) -> None:
        """Write the outcomes and marks so far right now on this thread (see OnDisk), if the
        store can without waiting; a failure stops the sender like a failed batch write."""
        store = self._store
        # A store without the inline path (one that cannot write without waiting) leaves every
        # write to the feeder: the awaitable record_and_claim, same guarantees.
        record_now = getattr(store, "record_now", None) if self.inline_writes else None
        if record_now is None or self._failure is not None:
            return
        barred: set[int] = set()
        try:
            done = record_now(run.mailing.id, run.outcomes, marks=run.marks, barred=barred, known=run.mailing)
        except Exception as exc:
            self._fail(exc)  # every worker waiting for this write hears of it
            return
        if done is None:
            return  # busy: the feeder writes it (OnDisk wakes it)
        waiters = run.waiters
        run.outcomes, run.marks, run.waiters = [], [], []
        self._committed(run, waiters, barred, done[1])

    def _committed(self, run: HeadRun, waiters: list[asyncio.Future[None]], barred: set[int], mailing: Mailing) -> None:
        """A ledger write is on disk: rows it found suppressed are barred, then the connections
        waiting for it go on, and the mailing's row as written is taken."""
        run.last_flush = time.monotonic()
        if barred:
            run.bar(barred)  # before the waiters hear of the commit (OnDisk reads it)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._took_mailing(run, mailing)

    def _took_mailing(self, run: HeadRun, mailing: Mailing) -> None:
        run.mailing = mailing
        if mailing.state is not MailingState.SENDING:
            self._halt(run, f"mailing {mailing.id} is now {mailing.state.value}")

    def _batch_size(self) -> int:
        connections = sum(r.connections for r in self.relays)
        return self.settings.batch_size or max(50, connections * 25)

    def _forget_inflight(self, run: HeadRun) -> None:
        """After cutting off the workers: their rows stay as they are on disk (`sending` ones
        are in doubt at the next start, unmarked ones plainly pending)."""
        run.held.clear()
        run.marked.clear()
        run.barred.clear()
        run.inflight = 0

    async def _flush_and_claim(self, run: HeadRun, claim: int) -> None:
        """Write the outcomes so far and claim more rows in one transaction, then let the
        workers that were waiting for their outcome to be on disk go on."""
        store, _ = self._need()
        outcomes, run.outcomes = run.outcomes, []
        marks, run.marks = run.marks, []
        waiters, run.waiters = run.waiters, []
        barred: set[int] = set()
        try:
            self.fleet.check()  # a sender that may have been declared dead claims and marks nothing
            claimed, mailing = await store.record_and_claim(
                run.mailing.id, outcomes, 0 if run.canary else claim, rate=self.meter.rate(), marks=marks, held=run.held,
                barred=barred, inline=self.inline_writes, known=run.mailing,
            )
            if run.canary is not None and mailing.state is MailingState.SENDING:
                claimed = await run.canary.claim(store, run.held, claim)  # only the canary's sample
        except BaseException as exc:
            run.waiters = waiters + run.waiters
            self._fail(exc)  # every worker waiting for this write (or a later one) hears of it
            raise
        self._committed(run, waiters, barred, mailing)
        if mailing.state is MailingState.SENDING and claim and not claimed:
            run.exhausted = True
        for row in claimed:
            run.held.add(row.id)
            group = self.domains.group_of(row.email)
            self.domains.admit(group, Job(run, row, group), self._enqueue)
        if run.trip and not run.trip_recorded:
            await self._record_trip(run)  # stopped now, like an operator's stop; in flight lands after
        if time.monotonic() - self._last_publish >= PUBLISH_INTERVAL:
            await self._publish(run, self._current_with_head(run))

    def _postpone(self, run: HeadRun) -> None:
        """Rows of a domain group whose hourly budget is used up wait in the ledger, not in memory,
        and so does a group's backlog at the park cap (core/domains.py, postpone): no attempt is counted."""
        for job, at, why in self.domains.postpone():
            run.settle(Outcome(job.row.id, RecipientState.DEFERRED, None, why, next_attempt_at=at, counted_attempt=False))

    def _enqueue(self, job: Job) -> None:
        """A row its domain group lets go now: onto the work queue."""
        job.run.queued += 1
        self._work.put_nowait(job)

    async def _control(self, run: HeadRun) -> None:
        """Notice a stop, a reorder or a due schedule made by anyone, within a second."""
        store, _ = self._need()
        await self._promote_due()
        current = self._current = await store.mailings(Section.CURRENT)
        if not any(m.id == run.mailing.id and m.state is MailingState.SENDING for m in current):
            self._halt(run, "stopped")
        else:
            for mailing in current:
                if mailing.id == run.mailing.id:
                    break
                if await store.has_due_work(mailing.id):
                    self._halt(run, f"mailing {mailing.id} is ahead in the queue")
                    break
        if self.stopping:
            self._halt(run, "the sender is shutting down")
        self._release_overdue_carries()
        await self._apply_limits()
        self.domains.tick()
        await self._publish(run, current)
        await self._write_status()

    def _halt(self, run: HeadRun, why: str) -> None:
        if not run.halt:
            run.halt = True
            run.halt_reason = why
        run.wake.set()

    async def _finish_head(self, run: HeadRun) -> None:
        """Settle the mailing's state once nothing of it is queued or in flight."""
        store, lifecycle = self._need()
        await self._settle_guards(run)
        mailing = await store.mailing(run.mailing.id)
        if mailing.state is MailingState.SENDING and not await lifecycle.complete_if_done(mailing.id):
            if (run.halt and self.stopping or not run.halt) and await self.fleet.others_hold(mailing.id):
                run.halt_reason = "other senders go on with it"  # fleet: it stays theirs (said in the log)
                run.halt = True
            elif run.halt:
                await lifecycle.yield_turn(mailing.id, run.halt_reason)
            elif not await store.has_due_work(mailing.id):
                await lifecycle.yield_turn(mailing.id, "only recipients waiting for a retry are left")
        await self._log_head_end(mailing.id, run.halt_reason if run.halt else "")
        await self._publish(run)

    async def _log_head_end(self, mailing_id: int, why: str) -> None:
        """One log line for how the head's turn ended: finished, stopped, or waiting for its next turn."""
        store, _ = self._need()
        try:
            m = await store.mailing(mailing_id)
        except NotFound:
            return  # deleted meanwhile (a stopped mailing may be): nothing to say about it
        counts = f"{m.sent:,} sent, {m.failed:,} failed" + (f", {m.suppressed:,} suppressed" if m.suppressed else "")
        if m.state is MailingState.COMPLETED:
            log.info('mailing %d "%s" finished: %s', m.id, m.name, counts)
        elif m.state is MailingState.STOPPED:
            log.info('mailing %d "%s" stopped: %s, %s not yet received', m.id, m.name, counts, f"{m.remaining:,}")
        else:
            log.info('mailing %d "%s" paused (%s): %s, %s left', m.id, m.name,
                     why or "only recipients waiting for a retry are left", counts, f"{m.remaining:,}")

    def _drain_queue(self, run: HeadRun) -> None:
        """Take this run's unstarted rows off the work queue and release them back to pending."""
        kept: list[Job | None] = []
        while not self._work.empty():
            job = self._work.get_nowait()
            if job is not None and job.run is run:
                run.queued -= 1
                run.let_go(job.row.id)
            else:
                kept.append(job)
        for job in kept:
            self._work.put_nowait(job)
        for job in self.domains.drain():
            run.let_go(job.row.id)

    # ---- live limits and relays ----------------------------------------------------------

    async def _apply_limits(self, force: bool = False) -> None:
        """Read the operator's limits (every LIMITS_INTERVAL) and apply them at once: pacing
        waits look at the limiter again within PACING_STEP, and the worker count follows."""
        if not force and time.monotonic() - self._last_limits_read < LIMITS_INTERVAL:
            return
        self._last_limits_read = time.monotonic()
        store, _ = self._need()
        store.check_still_there()
        # A limit stored since this sender started is the operator's latest word and holds over a
        # flag; one stored before meets the flag with the more careful value (core/limits.py).
        limits = await self.fleet.shared(await read_limits(store, self.settings, since=self._started_at))
        pool_shared = len(self.relays) > 1 and self.fleet.share_pool(self.relays)  # fleet: 1/N of each relay's too
        if limits == self.limits:
            if pool_shared:
                self._start_workers()
            return
        self.limits = limits
        for problem in limits.ignored:  # said once per change, not once a second
            log.warning("%s", problem)
        self.limiter.configured = limits.rate
        self.limiter.set_per_hour(limits.rate_per_hour)
        self.domains.apply_limits(limits.domains)
        if len(self.relays) == 1:
            # With one relay the live connection count is its connection count; a pool keeps
            # the per-relay counts of its configuration.
            self.relays[0].connections = limits.connections
        self._start_workers()
        if not force:
            log.info("limits changed: %s", "; ".join(limits.describe()))

    def _start_workers(self) -> None:
        """As many workers as connections wanted: new ones start, surplus idle ones end now,
        surplus busy ones after their message."""
        if self.stopping:
            return
        self._workers = [w for w in self._workers if not w.done()]
        wanted = {relay.name: relay.connections for relay in self.relays}
        running = set()
        for worker in self._workers:
            if worker.cancelling():
                continue  # already told to end: its slot gets a new worker if it is wanted again
            name, index = worker.slot  # type: ignore[attr-defined]
            if index >= wanted.get(name, 0) and worker not in self._busy:
                worker.cancel()  # waiting for work: nothing is in flight on it
            else:
                running.add((name, index))
        for relay in self.relays:
            for index in range(relay.connections):
                if (relay.name, index) not in running:
                    task = asyncio.create_task(self._worker(relay, index))
                    task.slot = (relay.name, index)  # type: ignore[attr-defined]
                    task.add_done_callback(self._worker_done)
                    self._workers.append(task)

    # ---- workers -------------------------------------------------------------------------

    async def _worker(self, relay: RelayState, index: int) -> None:
        """One connection to one relay: takes rows off the queue while its relay is usable."""
        conn = SmtpConnection(relay.relay)
        task = asyncio.current_task()
        carry = Carry()
        self._carries.add(carry)
        try:
            while True:
                job = self._carried(carry, conn, relay)
                if job is None:
                    if carry.retire:
                        return
                    await self._wait_for_relay(relay, conn)
                    job = await self._work.get()
                    if job is None:
                        return
                run = job.run
                run.queued -= 1
                if run.halt or self.stopping:
                    # Stopping or halted: nothing new is started, no connection is opened.
                    conn.withdraw()
                    run.let_go(job.row.id)
                    continue
                assert task is not None
                self._busy.add(task)
                run.inflight += 1
                try:
                    await self._send_job(conn, relay, run, job, carry, index)
                finally:
                    run.inflight -= 1
                    self._busy.discard(task)
                    run.nudge()
                per_connection = self.limits.messages_per_connection if self.limits else self.settings.messages_per_connection
                if per_connection and conn.sent_on_connection >= per_connection:
                    await conn.close()
                if index >= relay.connections:
                    return  # fewer connections wanted now: this one retires
        except asyncio.CancelledError:
            conn.abort()  # cut off (a stop's grace is over, or a surplus idle worker): no QUIT dance
            raise
        finally:
            self._carries.discard(carry)
            carry.give_back()
            await conn.close()

    def _carried(self, carry: Carry, conn: SmtpConnection, relay: RelayState) -> Job | None:
        """The job whose envelope went out with the last dot, unless the relay must be waited
        for first: then it goes back on the queue (another connection may send it) and the
        envelope sent ahead is dropped with the connection."""
        job = carry.take()
        if carry.orphaned:
            carry.orphaned = False
            conn.withdraw()  # its job went to another connection
        if job is None:
            conn.withdraw()  # nothing to follow an envelope sent ahead (a stale one: never dotted)
            return None
        if relay.unavailable:
            conn.withdraw()
            self._work.put_nowait(job)  # still counted in run.queued
            return None
        return job

    def _release_overdue_carries(self) -> None:
        """Jobs taken ahead by connections stuck on a slow final-dot reply go back on the queue."""
        now = time.monotonic()
        for carry in self._carries:
            job = carry.overdue(now)
            if job is not None:
                self._work.put_nowait(job)  # still counted in run.queued

    def _look_ahead(self, carry: Carry, conn: SmtpConnection, relay: RelayState, run: HeadRun, index: int) -> str | None:
        """At a final dot: take this connection's next job off the queue now, so its MAIL, RCPT
        and DATA share the dot's write (one write per message instead of three). Only when
        nothing would hold that job back: no pacing (global, relay, a canary's pace), no
        reconnect due after this message. Jobs on the queue were admitted by their domain group
        (DomainPacer.admit) like any other, so a domain's limits hold."""
        if carry.job is not None or carry.retire or run.halt or self.stopping or self._work.empty():
            return None
        if run.canary is not None or not (self.limiter.idle and relay.limiter.idle):
            return None
        if relay.unavailable or index >= relay.connections:
            return None
        per_connection = self.limits.messages_per_connection if self.limits else self.settings.messages_per_connection
        if per_connection and conn.sent_on_connection + 1 >= per_connection:
            return None
        job = self._work.get_nowait()
        if job is None:
            carry.retire = True  # the end-of-work marker: this worker ends after its message
            return None
        carry.hold(job, max(AHEAD_PATIENCE, AHEAD_SLOWER * relay.dot_wait))
        if job.run is not run:
            return None
        # Rendered once this dot's write is out, while the connection waits for its reply.
        run.loop.call_soon(self._render_ahead, carry, job)
        return job.row.email

    def _render_ahead(self, carry: Carry, job: Job) -> None:
        if carry.job is not job or self.stopping:
            return
        try:
            carry.made = (job.row.id, self._message(job.run, job.row))
        except Exception:  # noqa: BLE001 - rendered again when sent, which reports it as always
            carry.made = None

    def _message(self, run: HeadRun, row: Claimed) -> bytes:
        """One recipient's message, personalised and (with DKIM) signed."""
        message = run.template.render(recipient_id=row.id, email=row.email, name=row.name, fields=row.fields)
        if self.dkim is not None:
            message = self.dkim.sign(message, run.template.sender)
        return message

    async def _send_job(
        self, conn: SmtpConnection, relay: RelayState, run: HeadRun, job: Job, carry: Carry | None = None, index: int = 0
    ) -> None:
        row_id = job.row.id
        # Send, marking the row `sending` in the next commit (with this connection's previous
        # outcome) once the server took its envelope (OnDisk); its final dot waits for that
        # commit, so only a row that may have reached the server is ever `sending` on disk, one
        # per connection.
        on_disk = OnDisk(self, run, row_id)
        then = None if carry is None else (lambda: self._look_ahead(carry, conn, relay, run, index))
        premade = None if carry is None else carry.premade(row_id)
        try:
            outcome = await self._deliver(conn, relay, run, job.row, job.group, on_disk, then, premade)
        except SuppressedMeanwhile:
            # Suppressed after it was claimed: the connection was dropped before the dot (the
            # server discards the message) and the row is `suppressed` on disk.
            run.unmark(row_id)
            return
        if outcome is None:
            # This relay cannot take it now: another connection (or this one, after the
            # rest) sends it. Nothing went past the dot, so nobody is in doubt.
            self._requeue(run, job)
            return
        run.settle(outcome)
        if outcome.was_in_doubt and outcome.state is RecipientState.SENT:
            self.sent_while_in_doubt += 1
        self.domains.done(job.group, outcome.state.value)
        self._judge(run, job.row, outcome)
        if self._waiting_reason and not outcome.in_doubt:
            # The server answered a whole transaction (accepted, refused or deferred it): the
            # mailing no longer waits for it, so its last error no longer describes the present.
            await self._resume(run)

    def _requeue(self, run: HeadRun, job: Job) -> None:
        if run.halt or self.stopping or job.row.id in run.barred:
            run.let_go(job.row.id)
        else:
            run.unmark(job.row.id)
            run.queued += 1
            self._work.put_nowait(job)

    async def _wait_for_relay(self, relay: RelayState, conn: SmtpConnection | None = None) -> None:
        """Wait while the relay is resting, paused or cooling down after throttling, or while this
        connection (`conn`) was refused as one too many; a paused relay is resumed here when an
        operator asks (`request_resume`), within a second."""
        while conn is not None and not conn.connected and not self.stopping:
            left = conn.held_until - time.monotonic()
            if left <= 0:
                break
            await self._backoff_sleep(min(left, 0.5))
        while relay.unavailable and not self.stopping:
            if relay.paused:
                await self._check_resume_request()
                if not relay.unavailable:
                    break
            await self._backoff_sleep(min(relay.available_at - time.monotonic(), 0.5))

    async def _check_resume_request(self) -> None:
        """Apply an operator's resume request (meta `resume_request`, see operations.request_resume)
        to the paused relays it names; read at most twice a second however many workers wait."""
        now = time.monotonic()
        if now - self._resume_checked_at < 0.5:
            return
        self._resume_checked_at = now
        store, _ = self._need()
        request = parse_resume_request(await store.meta(RESUME_REQUEST_KEY))
        if request is None:
            return
        name, at = request
        for relay in self.relays:
            if relay.paused and relay.paused_at <= at and name in (None, relay.name):
                log.warning("relay %s resumed by the operator; one connection tries again", relay.name)
                relay.resume()
                self._operator_resumed = True  # a new refusal is a new event, even in the same words

    def _cannot_start(self, relay: RelayState, run: HeadRun) -> bool:
        """No new connection now: the run is halted, the sender stops, or the relay is held off."""
        return run.halt or self.stopping or relay.unavailable

    async def _connect(self, conn: SmtpConnection, relay: RelayState, run: HeadRun) -> bool:
        """Connect (and log in) unless the relay must not be tried; False when not connected.

        Until a connection of this relay has worked (at start, after trouble, after a resume),
        only one connection at a time tries: the others wait for its result, so a refusing relay
        sees one connection and at most one login per attempt, never one per connection."""
        for _ in range(100_000):  # bounded: each pass waits at most PROBE_LOOK_AGAIN unless it returns
            if self._cannot_start(relay, run):
                return False
            if relay.healthy or not relay.probing:
                break
            # Woken as soon as the probing connection has its answer: polling every 0.05 s
            # held the other connections back that long at every start (issue 12).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(relay.probe_over.wait(), timeout=PROBE_LOOK_AGAIN)
        probe = not relay.healthy
        relay.probing = relay.probing or probe
        if probe:
            relay.probe_over.clear()
        try:
            await conn.connect()
        except ConnectFailed as exc:
            verdict = exc.verdict
            if verdict.throttle and verdict.outcome is ReplyOutcome.RECONNECT and relay.live_connections(conn):
                # One connection too many (Postfix: "421 4.7.0 Error: too many connections from
                # ..."): the relay works on its other connections, so only this one waits.
                # The row goes back on the queue at once (another connection sends it) and this
                # worker waits in _wait_for_relay before taking another.
                wait = conn.held_off(self.settings.connect_backoff_max)
                log.info("relay %s refused one more connection (%s); it waits %.0f s", relay.name, verdict.text, wait)
                return False
            await self._relay_trouble(run, relay, verdict, paused=verdict.outcome is ReplyOutcome.PAUSE,
                                      at_login=exc.at_login)
            return False
        finally:
            if probe:
                relay.probing = False
                relay.probe_over.set()
        relay.sessions.add(conn)
        relay.connected()
        return True

    async def _deliver(
        self,
        conn: SmtpConnection,
        relay: RelayState,
        run: HeadRun,
        row: Claimed,
        group: DomainGroup[Job],
        previous: Awaitable[object] | None = None,
        then: Callable[[], str | None] | None = None,
        premade: bytes | None = None,
    ) -> Outcome | None:
        """Send one row; the ledger outcome, or None when this relay cannot take it now.

        `previous` (this connection's last outcome being written) must complete before this
        message's final dot. `premade`: the message rendered ahead (Carry.made), for the first try."""
        retries = 0
        while True:
            if not conn.connected:
                if run.halt or self.stopping:
                    return None  # stopping or halted: no new connection (the row goes back to pending)
                if not await self._connect(conn, relay, run):
                    return None
                if relay.unavailable:
                    return None  # paused or held off while this connection was opening: no MAIL
            if not self.limiter.idle and not await self.limiter.acquire(self._interrupted(run)):
                return None
            if not relay.limiter.idle and not await relay.limiter.acquire(self._interrupted(run)):
                return None
            if run.canary is not None and not await run.canary.pacer.acquire(self._interrupted(run)):
                return None  # the canary's slow pace
            message, premade = premade or self._message(run, row), None  # a retry renders afresh
            # `previous` stays: a retry's final dot waits for the same commit (instant once done).
            verdict = await conn.send(run.template.sender, row.email, message, previous, then)
            # A named domain group's reply slows that group only; any other slows the relay.
            domain_reply = self.domains.note_reply(group, verdict)
            if not domain_reply:
                self._note_throttling(relay, run, verdict)
            if verdict.outcome is ReplyOutcome.SENT:
                relay.note_dot_wait(conn.dot_wait)
                await self._accepted(run, relay)
                return Outcome(row.id, RecipientState.SENT, verdict.code, None, was_in_doubt=row.in_doubt)
            if verdict.outcome is ReplyOutcome.RECONNECT:
                if verdict.in_doubt:
                    return await self._in_doubt(run, relay, row, verdict)
                if domain_reply:
                    return self._deferral(row, verdict)  # the domain said 421: its recipient waits, not the relay
                if run.halt or self.stopping:
                    return None  # nobody in doubt; no new connection while stopping (issue 10, 11)
                retries += 1
                if retries > RECONNECT_RETRIES:
                    await self._relay_trouble(run, relay, verdict)
                    return None
                await self._backoff_sleep(min(2.0**retries * 0.1, self.settings.connect_backoff_max))
                if relay.unavailable:
                    return None  # another connection found the relay held off meanwhile
                continue
            if verdict.outcome is ReplyOutcome.PAUSE:
                await conn.close()
                await self._relay_trouble(run, relay, verdict, paused=True)
                return None
            if verdict.outcome is ReplyOutcome.FAIL:
                # An unknown or disabled mailbox joins the suppression list in the same commit.
                return Outcome(row.id, RecipientState.FAILED, verdict.code, verdict.text, was_in_doubt=row.in_doubt,
                               suppress=mailbox_gone(verdict.code, verdict.text))
            outcome = self._deferral(row, verdict)
            relay.deferred_until(outcome.next_attempt_at)
            return outcome

    def _note_throttling(self, relay: RelayState, run: HeadRun, verdict: Verdict) -> None:
        """Slow this relay down on a throttling reply, or on a burst of 4xx at MAIL/RCPT whatever
        its wording (a relay's own words for "too much mail" are not all in the table). Only the
        relay slows down: the narrowest scope the pushback came from (DESIGN.md, Pacing)."""
        burst = relay.transaction(is_temporary_refusal(verdict))
        if not (verdict.throttle or burst):
            return
        said = f"{verdict.code} {verdict.text}" if verdict.code is not None else verdict.text
        reason = said if verdict.throttle else f"a burst of temporary refusals (last: {said})"
        was_cooling = relay.cooling
        relay.throttle(reason, relay.meter.rate(), run.mailing.id)
        if not was_cooling:
            log.warning("relay %s is throttling us (%s); slowing down", relay.name, reason)

    def _interrupted(self, run: HeadRun):  # type: ignore[no-untyped-def]
        """For pacing waits: give up the slot when the sender stops or this head halts."""
        return lambda: self.stopping or run.halt

    async def _in_doubt(self, run: HeadRun, relay: RelayState, row: Claimed, verdict: Verdict) -> Outcome:
        """The connection broke (or the reply made no sense) after the final dot: the message may
        have been delivered. The relay rests, and the recipient is flagged in doubt and sent
        again: at once the first time (by another relay, or this one after its rest), after a
        growing retry wait like a deferral when it was in doubt already. Sent again at once each
        time, a relay that drops every session after the dot got the same message hundreds of
        times a second."""
        await self._relay_trouble(run, relay, verdict)
        if not row.in_doubt:
            log.warning("%s may have received mailing %d already (%s); it is sent again, in doubt",
                        row.email, run.mailing.id, verdict.text)
            return Outcome(row.id, RecipientState.PENDING, verdict.code, verdict.text, in_doubt=True)
        outcome = self._deferral(row, verdict)
        if outcome.state is RecipientState.DEFERRED:
            outcome = replace(outcome, in_doubt=True, was_in_doubt=row.in_doubt)
            log.warning("%s may have received mailing %d already (%s); it is sent again in %.0f s, in doubt",
                        row.email, run.mailing.id, verdict.text, (outcome.next_attempt_at or 0.0) - time.time())
        else:
            # Given up at the retry age, still in doubt: no answer of the server's, so neither the
            # breaker nor the end of a wait may take it for one (_judge, _send_job).
            outcome = replace(outcome, in_doubt=True, text=f"{outcome.text} (it may have been delivered)")
        return outcome

    def _deferral(self, row: Claimed, verdict: Verdict) -> Outcome:
        now = time.time()
        first = row.first_deferred_at or now
        if now - first >= self.settings.retry_max_age:
            return Outcome(
                row.id,
                RecipientState.FAILED,
                verdict.code,
                f"gave up after {(now - first) / 3600:.1f} h of temporary failures; last: {verdict.text}",
                was_in_doubt=row.in_doubt,
            )
        wait = min(self.settings.retry_base * (2 ** min(row.attempts, 20)), self.settings.retry_max)
        return Outcome(row.id, RecipientState.DEFERRED, verdict.code, verdict.text, next_attempt_at=now + wait)

    async def _accepted(self, run: HeadRun, relay: RelayState) -> None:
        self.meter.add()
        relay.accepted()
        self.last_accept_at = time.time()  # copied into the snapshot when it is next published
        if self._waiting_reason:
            await self._resume(run)

    async def _relay_trouble(
        self, run: HeadRun, relay: RelayState, verdict: Verdict, paused: bool = False, at_login: bool = False
    ) -> None:
        """Hold off a relay that cannot be used; when none is left, the mailing waits and says why.

        A relay that cannot be reached rests briefly (growing backoff). One that refuses us
        (login, sender address, session) is paused: nobody is marked failed, and it is not tried
        again until an operator resumes it, the sender restarts, or a long interval passes.
        """
        if paused:
            relay.pause(pause_reason(verdict, at_login), run.mailing.id)
            log.warning("relay %s paused: %s", relay.name, relay.reason)
        else:
            relay.rest(rest_reason(verdict, at_login), run.mailing.id)
        if all(r.paused or r.resting for r in self.relays):
            if len(self.relays) == 1:
                reason = relay.reason
            else:
                reason = "; ".join(f"{r.name}: {r.reason}" for r in self.relays)
            self.snapshot = bumped(self.snapshot, state=SenderState.WAITING, reason=reason)
            await self._note_waiting(run, event="auto-paused" if paused else "waiting")

    async def _resume(self, run: HeadRun) -> None:
        self._waiting_reason = ""
        self.snapshot = bumped(self.snapshot, state=SenderState.SENDING, reason="")
        _, lifecycle = self._need()
        await lifecycle.note_error(run.mailing.id, None, event="resumed")

    async def _backoff_sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def _note_waiting(self, run: HeadRun, event: str = "waiting") -> None:
        reason = self._scrubbed(self.snapshot.reason)
        if reason and (reason != self._waiting_reason or self._operator_resumed):
            self._operator_resumed = False
            self._waiting_reason = reason
            log.info("mailing %d waits for the SMTP server: %s", run.mailing.id, reason)
            _, lifecycle = self._need()
            await lifecycle.note_error(run.mailing.id, f"waiting for the SMTP server: {reason}", event=event)

    def _scrubbed(self, text: str) -> str:
        """Belt and braces: no relay's password (or its base64 forms) in anything stored."""
        for relay in self.relays:
            text = scrub_secrets(text, relay.relay.user, relay.relay.password)
        return text

    def waiting_document(self) -> dict[str, object]:
        """Why the sender is held back, for `status --json` (meta `sender_waiting`): each relay
        that is paused, resting or throttled, with the mailing that was sending when it began."""
        troubled = [s for s in (r.status() for r in self.relays) if s.state in ("paused", "resting", "throttled")]
        return {
            "all_unavailable": all(r.unavailable for r in self.relays),
            "relays": [
                {"relay": s.name, "state": s.state, "reason": self._scrubbed(s.reason), "since": s.since,
                 "next_try": s.next_try, "mailing": s.mailing_id}
                for s in troubled
            ],
        }

    def domains_document(self) -> dict[str, object]:
        """Per domain group: sent, deferred, failed, in flight, rate, state and last reply."""
        return self.domains.document()

    # ---- progress ------------------------------------------------------------------------

    def _current_with_head(self, run: HeadRun) -> list[Mailing] | None:
        """The last Current section read, with the head mailing as the ledger just returned it;
        None before the first control tick of this head (then it is read)."""
        if not any(m.id == run.mailing.id for m in self._current):
            return None
        return [run.mailing if m.id == run.mailing.id else m for m in self._current]

    async def _publish(self, run: HeadRun, current: list[Mailing] | None = None) -> None:
        store, _ = self._need()
        self._last_publish = time.monotonic()
        rate = self.meter.rate()
        if current is None:
            current = await store.mailings(Section.CURRENT)
        estimates = queue_estimates(current, rate)
        progress = {
            m.id: replace(progress_of(m, rate if m.id == run.mailing.id else 0.0), eta=estimates.get(m.id))
            for m in current
        }
        state = SenderState.WAITING if self._waiting_reason else SenderState.SENDING
        self.snapshot = bumped(
            self.snapshot,
            state=state,
            reason=self._waiting_reason,
            rate=rate,
            head_id=run.mailing.id,
            last_accept_at=self.last_accept_at,
            mailings=progress,
            relays=tuple(r.status() for r in self.relays),
        )

    async def _publish_idle(self) -> None:
        if self.snapshot.state is not SenderState.IDLE or self.snapshot.head_id is not None:
            self.snapshot = bumped(
                self.snapshot,
                state=SenderState.IDLE,
                reason="",
                rate=0.0,
                head_id=None,
                mailings={},
                last_accept_at=self.last_accept_at,
            )
        await self._write_status()

    async def _write_status(self, force: bool = False, state: SenderState | None = None) -> None:
        """Once a second, tell other processes (monitoring dashboards, status) how sending goes."""
        now = time.monotonic()
        if not force and now - self._last_status_write < 1.0:
            return
        self._last_status_write = now
        store = self._store
        if store is None:
            return
        snap = self.snapshot
        status = SenderStatus(
            state=state or snap.state,
            heartbeat=time.time(),
            reason=self._scrubbed(snap.reason),
            rate=snap.rate,
            last_accept_at=snap.last_accept_at,
            waiting=self.waiting_document(),
            domains=self.domains_document(),
        )
        await write_status(store, status, self.fleet.status_key)  # fleet: each sender its own (core/fleet.py)

    # ---- breaker and canary (core/breaker.py, core/canary.py) ----------------------------

    async def _guard(self, run: HeadRun) -> None:
        """Give a new head run its canary (if its sample is to be sent) and its breaker."""
        store, _ = self._need()
        run.canary = await canaries.begin(store, run.mailing, self.settings)
        minimum = canaries.canary_minimum(self.settings, run.canary.canary.total) if run.canary else None
        run.breaker = await self.breakers.for_mailing(store, run.mailing, canary_minimum=minimum)
        if reason := run.breaker.judge():  # a trip decided but not written (a kill -9): now
            run.trip = reason
            log.warning("mailing %d: %s; stopping it", run.mailing.id, reason)
            self._halt(run, reason)

    def _judge(self, run: HeadRun, row: Claimed, outcome: Outcome) -> None:
        """One answer for the breaker (O(1)); a trip halts the run at once and the mailing is
        stopped when what is in flight has landed (_settle_guards)."""
        if run.breaker is None or outcome.state is RecipientState.PENDING or outcome.in_doubt:
            return  # in doubt (even deferred for its retry) is no answer of the recipient's domain
        if run.canary is not None:
            run.canary.answer()
        reason = run.breaker.add(outcome.state, outcome.code, outcome.text, row.email)
        if reason and not run.trip:
            run.trip = reason
            log.warning("mailing %d: %s; stopping it", run.mailing.id, reason)
            self._halt(run, reason)

    async def _settle_guards(self, run: HeadRun) -> None:
        """At the end of a head's turn: a tripped breaker stops the mailing; a canary whose whole
        sample has answered starts its hold (the turn then yields, saying until when)."""
        store, _ = self._need()
        if run.trip:
            if not run.trip_recorded:
                await self._record_trip(run)
            return
        canary = run.canary
        if canary is None:
            return
        await canary.save_progress(store, force=True)
        if run.halt or not await canaries.sample_finished(store, run.mailing.id):
            return
        held = await canary.hold(store)
        until = datetime.fromtimestamp(held.until or time.time(), timezone.utc)
        self._halt(run, f"canary: holding until {until:%H:%M:%S} UTC")

    async def _record_trip(self, run: HeadRun) -> None:
        store, lifecycle = self._need()
        run.trip_recorded = True
        if run.canary is not None:
            await run.canary.save_progress(store, force=True)
        if await lifecycle.trip(run.mailing.id, run.trip):
            self.breakers.forget(run.mailing.id)
