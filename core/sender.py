"""The asyncio sender: promotes due schedules, sends the head of the queue over K persistent
SMTP connections, and records every outcome in the ledger in batches.

Shape: one feeder per head mailing claims batches of ledger rows (writing the outcomes so far
in the same transaction) and puts them on a queue; workers, each with its own connection to
one of the relays, take rows off the queue and send them. The feeder keeps the queue topped
up ahead of the workers. A connection's previous outcome must be on disk before it writes its
next final dot, so that write overlaps the next transaction and a crash leaves at most one
message per connection in doubt.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from .compose import MessageTemplate
from .config import Settings, check_smtp_security
from .domain import Mailing, MailingState, RecipientState, Section
from .lease import SenderLease
from .lifecycle import Lifecycle
from .limits import Limits, read_limits
from .operations import RESUME_REQUEST_KEY, parse_resume_request, template_for
from .ratelimit import RateLimiter
from .relays import RelayState, relays_from_settings
from .progress import RateMeter, SenderSnapshot, SenderState, bumped, progress_of, queue_estimates
from .smtp_client import ConnectFailed, SmtpConnection, scrub_secrets
from .smtp_replies import Outcome as ReplyOutcome, Stage, Verdict
from .store import Claimed, Outcome, Store

log = logging.getLogger("mailtower.sender")

CONTROL_INTERVAL = 0.5  # seconds between checks for stops, reorders and due schedules
FLUSH_INTERVAL = 0.25  # idle wake-up of the feeder when nothing happens
PUBLISH_INTERVAL = 0.2  # how often the progress snapshot is rebuilt while sending
RECONNECT_RETRIES = 3  # transaction retries on fresh connections before releasing a row


def pause_reason(verdict: Verdict, at_login: bool) -> str:
    """Why a relay is paused, in the operator's words. A reply to AUTH never keeps its text
    (classify_auth): "login refused: 535 5.7.8 (server text withheld)"."""
    if verdict.code is None:  # refused on our side: no encryption for a login, an unsendable sender
        return f"cannot log in: {verdict.text}" if at_login else f"paused: {verdict.text}"
    said = f"{verdict.code} {verdict.text}"
    return f"login refused: {said}" if at_login else f"paused, the server refuses the session: {said}"


class LeaseHeld(Exception):
    """Another process is the sender for this database."""


@dataclass(eq=False)
class HeadRun:
    """The state of sending one mailing (the head of the queue)."""

    mailing: Mailing
    template: MessageTemplate
    outcomes: list[Outcome] = field(default_factory=list)
    queued: int = 0  # rows on the work queue
    inflight: int = 0
    halt: bool = False
    halt_reason: str = ""
    exhausted: bool = False
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True, slots=True)
class Job:
    run: HeadRun
    row: Claimed


class Sender:
    """Run with `await sender.run()`; `request_stop()` ends it gracefully; `snapshot` is live."""

    def __init__(self, settings: Settings, *, what: str = "mailtower run") -> None:
        self.settings = settings
        self.relays = relays_from_settings(settings)
        self.lease = SenderLease(settings.db)
        self.what = what
        self.snapshot = SenderSnapshot()
        self.meter = RateMeter()
        self.limiter = RateLimiter(settings.rate, floor=10.0 * settings.connections)  # global, live limits
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop run() works on (may be another thread's)
        self._work: asyncio.Queue[Job | None] = asyncio.Queue()
        self._store: Store | None = None
        self._lifecycle: Lifecycle | None = None
        self._waiting_reason = ""
        self.last_accept_at: float | None = None  # wall clock of the last 250 to a final dot
        self._last_status_write = 0.0
        self._last_publish = 0.0
        # The Current section as the last control tick read it: between ticks only the head
        # mailing's counters move, and those come back from every ledger write.
        self._current: list[Mailing] = []
        self.limits: Limits | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._last_limits_read = 0.0
        self._resume_checked_at = 0.0
        self._operator_resumed = False

    # ---- public --------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the sender to finish gracefully; safe to call from any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._stopping.set)
                return
            except RuntimeError:
                pass  # its loop is closing: setting the flag directly is all that is left
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self, until_idle: bool = False) -> None:
        self._loop = asyncio.get_running_loop()
        check_smtp_security(self.settings)
        if not self.lease.acquire(self.what):
            holder = self.lease.holder()
            raise LeaseHeld(f"another sender is running on {self.settings.db}: {holder.describe() if holder else 'unknown'}")
        try:
            self._store = await Store.open(self.settings.db)
            self._lifecycle = Lifecycle(self._store)
            try:
                await self._main(until_idle)
            finally:
                await self._write_status(force=True, state=SenderState.STOPPED)
                await self._store.close()
        finally:
            self.lease.release()

    # ---- main loop -----------------------------------------------------------------------

    async def _main(self, until_idle: bool) -> None:
        store, lifecycle = self._need()
        recovered = await store.recover_in_doubt()
        if recovered:
            log.warning("%d recipients were in flight when the last sender stopped; sending them again", recovered)
        await self._sweep_stale_sending()
        await lifecycle.rederive_schedules()
        await self._apply_limits(force=True)
        try:
            while not self.stopping:
                await self._promote_due()
                head = await self._pick_head()
                await self._apply_limits()
                if head is None:
                    await self._publish_idle()
                    if until_idle and await self._nothing_left():
                        return
                    await self._sleep(CONTROL_INTERVAL)
                    continue
                await self._send_head(head)
        finally:
            for _ in self._workers:
                self._work.put_nowait(None)
            await asyncio.gather(*self._workers, return_exceptions=True)

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
            if await store.has_due_work(mailing.id):
                return await store.mailing(mailing.id)
            if mailing.remaining == 0:
                await lifecycle.complete_if_done(mailing.id)
        return None

    async def _nothing_left(self) -> bool:
        store, _ = self._need()
        if await store.mailings(Section.CURRENT):
            return False
        return not any(not m.missed for m in await store.mailings(Section.SCHEDULED))

    # ---- one head mailing ----------------------------------------------------------------

    async def _send_head(self, mailing: Mailing) -> None:
        store, lifecycle = self._need()
        template = template_for(mailing)
        if mailing.state is MailingState.QUEUED and not await lifecycle.start(mailing.id):
            return
        run = HeadRun(mailing=mailing, template=template)
        self._current = []  # read afresh for this head (the previous one may have just finished)
        connections = sum(r.connections for r in self.relays)
        batch = self.settings.batch_size or max(50, connections * 25)
        last_control = time.monotonic()
        while True:
            if run.halt and run.queued:
                self._drain_queue(run)
            want_more = not (run.exhausted or run.halt) and run.queued < batch // 2
            if run.outcomes or want_more:
                await self._flush_and_claim(run, batch if want_more else 0)
            if time.monotonic() - last_control >= CONTROL_INTERVAL:
                last_control = time.monotonic()
                await self._control(run)
            if (run.exhausted or run.halt) and run.queued == 0 and run.inflight == 0 and not run.outcomes:
                break
            if run.outcomes or (want_more and not run.exhausted and not run.halt):
                continue
            run.wake.clear()
            try:
                await asyncio.wait_for(run.wake.wait(), timeout=FLUSH_INTERVAL)
            except TimeoutError:
                pass
        await self._finish_head(run)

    async def _flush_and_claim(self, run: HeadRun, claim: int) -> None:
        """Write the outcomes so far and claim more rows in one transaction, then let the
        workers that were waiting for their outcome to be on disk go on."""
        store, _ = self._need()
        outcomes, run.outcomes = run.outcomes, []
        waiters, run.waiters = run.waiters, []
        try:
            claimed, mailing = await store.record_and_claim(run.mailing.id, outcomes, claim, rate=self.meter.rate())
        except BaseException as exc:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            raise
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        run.mailing = mailing
        if mailing.state is not MailingState.SENDING:
            self._halt(run, f"mailing {mailing.id} is now {mailing.state.value}")
        elif claim and not claimed:
            run.exhausted = True
        for row in claimed:
            run.queued += 1
            self._work.put_nowait(Job(run, row))
        if time.monotonic() - self._last_publish >= PUBLISH_INTERVAL:
            await self._publish(run, self._current_with_head(run))

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
        await self._apply_limits()
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
        mailing = await store.mailing(run.mailing.id)
        if mailing.state is MailingState.SENDING and not await lifecycle.complete_if_done(mailing.id):
            if run.halt:
                await lifecycle.yield_turn(mailing.id, run.halt_reason)
            elif not await store.has_due_work(mailing.id):
                await lifecycle.yield_turn(mailing.id, "only recipients waiting for a retry are left")
        await self._publish(run)

    def _drain_queue(self, run: HeadRun) -> None:
        """Take this run's unstarted rows off the work queue and release them back to pending."""
        kept: list[Job | None] = []
        while not self._work.empty():
            job = self._work.get_nowait()
            if job is not None and job.run is run:
                run.queued -= 1
                run.outcomes.append(Outcome(job.row.id, RecipientState.PENDING, counted_attempt=False))
            else:
                kept.append(job)
        for job in kept:
            self._work.put_nowait(job)

    # ---- live limits and relays ----------------------------------------------------------

    async def _apply_limits(self, force: bool = False) -> None:
        """Read the operator's limits (at most once a second) and apply them at once."""
        if not force and time.monotonic() - self._last_limits_read < 1.0:
            return
        self._last_limits_read = time.monotonic()
        store, _ = self._need()
        limits = await read_limits(store, self.settings)
        if limits == self.limits:
            return
        self.limits = limits
        self.limiter.configured = limits.rate
        self.limiter.set_per_hour(limits.rate_per_hour)
        if len(self.relays) == 1:
            # With one relay the live connection count is its connection count; a pool keeps
            # the per-relay counts of its configuration.
            self.relays[0].connections = limits.connections
        self._start_workers()
        if not force:
            log.info("limits changed: %s", "; ".join(limits.describe()))

    def _start_workers(self) -> None:
        self._workers = [w for w in self._workers if not w.done()]
        running = {getattr(w, "slot", None) for w in self._workers}
        for relay in self.relays:
            for index in range(relay.connections):
                if (relay.name, index) not in running:
                    task = asyncio.create_task(self._worker(relay, index))
                    task.slot = (relay.name, index)  # type: ignore[attr-defined]
                    self._workers.append(task)

    # ---- workers -------------------------------------------------------------------------

    async def _worker(self, relay: RelayState, index: int) -> None:
        """One connection to one relay: takes rows off the queue while its relay is usable."""
        conn = SmtpConnection(relay.relay)
        recorded: asyncio.Future[None] | None = None  # this connection's previous outcome on disk
        try:
            while True:
                await self._wait_for_relay(relay, conn)
                job = await self._work.get()
                if job is None:
                    return
                run = job.run
                run.queued -= 1
                if run.halt:
                    run.outcomes.append(Outcome(job.row.id, RecipientState.PENDING, counted_attempt=False))
                    run.wake.set()
                    continue
                run.inflight += 1
                try:
                    previous, recorded = recorded, None
                    if previous is not None and previous.done():
                        previous.result()  # already on disk (or raise the write's error)
                        previous = None
                    outcome = await self._deliver(conn, relay, run, job.row, previous)
                    if outcome is None:
                        if previous is not None and not previous.done():
                            recorded = previous  # still owed before this connection's next dot
                        # This relay cannot take it now: another connection (or this one, after
                        # the rest) sends it. Nothing was attempted, so nobody is in doubt.
                        self._requeue(run, job)
                        continue
                    # The outcome must be on disk before this connection's next final dot (see
                    # SmtpConnection.send), so a crash leaves at most one message per connection
                    # in doubt while the write overlaps the next transaction.
                    recorded = asyncio.get_running_loop().create_future()
                    run.outcomes.append(outcome)
                    run.waiters.append(recorded)
                    run.wake.set()
                finally:
                    run.inflight -= 1
                    run.wake.set()
                per_connection = self.limits.messages_per_connection if self.limits else self.settings.messages_per_connection
                if per_connection and conn.sent_on_connection >= per_connection:
                    await conn.close()
                if index >= relay.connections:
                    return  # fewer connections wanted now: this one retires
        finally:
            await conn.close()

    def _requeue(self, run: HeadRun, job: Job) -> None:
        if run.halt or self.stopping:
            run.outcomes.append(Outcome(job.row.id, RecipientState.PENDING, counted_attempt=False))
        else:
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
        for _ in range(100_000):  # bounded: each pass sleeps 0.05 s unless it returns
            if self._cannot_start(relay, run):
                return False
            if relay.healthy or not relay.probing:
                break
            await self._backoff_sleep(0.05)
        probe = not relay.healthy
        relay.probing = relay.probing or probe
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
        relay.sessions.add(conn)
        relay.connected()
        return True

    async def _deliver(
        self,
        conn: SmtpConnection,
        relay: RelayState,
        run: HeadRun,
        row: Claimed,
        previous: asyncio.Future[None] | None = None,
    ) -> Outcome | None:
        """Send one row; the ledger outcome, or None when this relay cannot take it now.

        `previous` (this connection's last outcome being written) must complete before this
        message's final dot."""
        retries = 0
        while True:
            if not conn.connected and not await self._connect(conn, relay, run):
                return None
            if not self.limiter.idle:
                await self.limiter.acquire()
            if not relay.limiter.idle:
                await relay.limiter.acquire()
            message = run.template.render(recipient_id=row.id, email=row.email, name=row.name, fields=row.fields)
            verdict = await conn.send(run.template.sender, row.email, message, previous)
            previous = None
            self._note_throttling(relay, run, verdict)
            if verdict.outcome is ReplyOutcome.SENT:
                await self._accepted(run, relay)
                return Outcome(row.id, RecipientState.SENT, verdict.code, None, was_in_doubt=row.in_doubt)
            if verdict.outcome is ReplyOutcome.RECONNECT:
                if verdict.in_doubt:
                    return Outcome(
                        row.id, RecipientState.PENDING, verdict.code, verdict.text, in_doubt=True, was_in_doubt=row.in_doubt
                    )
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
                return Outcome(row.id, RecipientState.FAILED, verdict.code, verdict.text, was_in_doubt=row.in_doubt)
            outcome = self._deferral(row, verdict)
            relay.deferred_until(outcome.next_attempt_at)
            return outcome

    def _note_throttling(self, relay: RelayState, run: HeadRun, verdict: Verdict) -> None:
        """Slow this relay down on a throttling reply, or on a burst of 4xx at MAIL/RCPT whatever
        its wording (a relay's own words for "too much mail" are not all in the table). Only the
        relay slows down: the narrowest scope the pushback came from (DESIGN.md, Pacing)."""
        temporary = (
            verdict.code is not None and 400 <= verdict.code < 500 and verdict.stage in (Stage.MAIL, Stage.RCPT)
        )
        burst = relay.transaction(temporary)
        if not (verdict.throttle or burst):
            return
        said = f"{verdict.code} {verdict.text}" if verdict.code is not None else verdict.text
        reason = said if verdict.throttle else f"a burst of temporary refusals (last: {said})"
        was_cooling = relay.cooling
        relay.throttle(reason, relay.meter.rate(), run.mailing.id)
        if not was_cooling:
            log.warning("relay %s is throttling us (%s); slowing down", relay.name, reason)

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
            said = f"{verdict.code} {verdict.text}" if verdict.code is not None else verdict.text
            what = "login failed for now" if at_login else "cannot reach the server"
            relay.rest(f"{what}: {said}", run.mailing.id)
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
        await store.put_meta(
            {
                "sender_state": (state or snap.state).value,
                "sender_reason": self._scrubbed(snap.reason),
                "sender_rate": f"{snap.rate:.3f}",
                "sender_last_accept": f"{snap.last_accept_at or 0:.3f}",
                "sender_heartbeat": f"{time.time():.3f}",
                "sender_waiting": json.dumps(self.waiting_document()),
            }
        )
