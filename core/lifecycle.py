"""The one owner of mailing states and every transition between them.

The CLI, the dashboard and the sender all change a mailing's state through `Lifecycle`; the
rules themselves (`target_state`, `TRANSITIONS`) are plain data and functions so menus can show
exactly what is allowed without touching the database. What each action is called, which
command does it and which question comes first: core/actions_registry.py.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
import time
from datetime import datetime, timedelta

from .domain import Mailing, MailingState, Schedule, Section
from .errors import RefusedTransition, UserError
from .store import Store, Tx, iso
from .timezones import (
    Resolved, humanize_delta, is_valid_zone, load_zone, quoted_zone, resolve, tzdata_version, utcnow, wall_minute,
)

S = MailingState
log = logging.getLogger("mailtower.lifecycle")

# A schedule whose instant cannot be derived (its zone is not in the installed tzdata) is held
# as missed with a last_error starting with this, so it is recognised and released again.
UNRESOLVABLE = "schedule cannot be resolved: "


class Action(str, enum.Enum):
    SCHEDULE = "schedule"
    UNSCHEDULE = "unschedule"
    SEND_NOW = "send-now"
    PROMOTE = "promote"  # a due schedule joins the queue (the sender does this)
    START = "start"  # the head of the queue begins sending (the sender)
    YIELD = "yield"  # the sending mailing steps back to queued (reordered, or only retries left)
    STOP = "stop"
    RESTART = "restart"
    COMPLETE = "complete"
    DELETE = "delete"
    MOVE = "move"
    RETRY = "retry"  # failed recipients of a finished mailing go back to pending (issue 13, item 9)


# Which states each action may start from, and where it leads (None: the mailing is removed
# or keeps its state).
TRANSITIONS: dict[Action, tuple[frozenset[MailingState], MailingState | None]] = {
    Action.SCHEDULE: (frozenset({S.DRAFT, S.SCHEDULED, S.STOPPED}), S.SCHEDULED),
    Action.UNSCHEDULE: (frozenset({S.SCHEDULED}), S.DRAFT),
    Action.SEND_NOW: (frozenset({S.DRAFT, S.SCHEDULED, S.STOPPED}), S.QUEUED),
    Action.PROMOTE: (frozenset({S.SCHEDULED}), S.QUEUED),
    Action.START: (frozenset({S.QUEUED}), S.SENDING),
    Action.YIELD: (frozenset({S.SENDING}), S.QUEUED),
    Action.STOP: (frozenset({S.QUEUED, S.SENDING}), S.STOPPED),
    Action.RESTART: (frozenset({S.STOPPED}), S.QUEUED),
    Action.COMPLETE: (frozenset({S.QUEUED, S.SENDING}), S.COMPLETED),
    Action.DELETE: (frozenset({S.DRAFT, S.STOPPED, S.COMPLETED}), None),
    Action.MOVE: (frozenset({S.QUEUED, S.SENDING}), None),
    Action.RETRY: (frozenset({S.STOPPED, S.COMPLETED}), S.QUEUED),
}

REFUSALS: dict[Action, str] = {
    Action.SCHEDULE: "only a draft, scheduled or stopped mailing can be scheduled",
    Action.UNSCHEDULE: "only a scheduled mailing has a schedule to cancel",
    Action.SEND_NOW: "only a draft, scheduled or stopped mailing can be sent now",
    Action.PROMOTE: "only a scheduled mailing can come due",
    Action.START: "only a queued mailing can start sending",
    Action.YIELD: "only the sending mailing can step back in the queue",
    Action.STOP: "only a current (queued or sending) mailing can be stopped",
    Action.RESTART: "only a stopped mailing can be restarted",
    Action.COMPLETE: "only a current mailing can complete",
    Action.DELETE: "only inactive mailings (draft, stopped, completed) can be deleted; stop it first",
    Action.MOVE: "only current mailings have a place in the queue",
    Action.RETRY: "only a stopped or completed mailing can send again to its failed recipients",
}

# Actions that put a mailing on its way to the queue: refused for a mailing without recipients.
NEEDS_RECIPIENTS = frozenset({Action.SCHEDULE, Action.SEND_NOW, Action.RESTART})

# What the caller was told about a mailing before it asked for an action (a dashboard's question):
# called with the mailing as the action's own transaction reads it, it raises (a UserError saying
# what changed) when that no longer holds, and nothing is done. A compare-and-act: no other writer
# comes between the look and the change.
Expect = Callable[[Mailing], None]
# The same for a move: called with the queue's order (mailing ids) as the move's transaction reads it.
ExpectQueue = Callable[[list[int]], None]

UNSCHEDULE_WHILE_SENDING = (
    "a scheduled mailing cannot be cancelled while a mailing is being sent: stop the current "
    "mailing first, cancel this schedule, then restart the stopped mailing"
)


def target_state(mailing: Mailing, action: Action, *, any_sending: bool) -> MailingState | None:
    """Where `action` takes `mailing`, or RefusedTransition saying why it cannot."""
    sources, target = TRANSITIONS[action]
    if mailing.state not in sources:
        raise RefusedTransition(f"mailing {mailing.id} is {mailing.state.value}: {REFUSALS[action]}")
    if action is Action.UNSCHEDULE and any_sending:
        raise RefusedTransition(f"mailing {mailing.id}: {UNSCHEDULE_WHILE_SENDING}")
    if action in NEEDS_RECIPIENTS and mailing.total == 0:
        # It would "complete" 0/0 at once; nothing was ever going to be sent.
        raise RefusedTransition(
            f"mailing {mailing.id} has no recipients: add some with `mailtower import {mailing.id} FILE` first"
        )
    return target


class Direction(str, enum.Enum):
    UP = "up"
    DOWN = "down"
    TOP = "top"
    BOTTOM = "bottom"


def moved_order(order: list[int], mailing_id: int, direction: Direction) -> list[int]:
    """The queue `order` (mailing ids, head first) after moving `mailing_id` (unchanged when it
    is not in it): what Lifecycle.move stores, and what the dashboard asks about first."""
    if mailing_id not in order:
        return list(order)
    index = order.index(mailing_id)
    rest = [mid for mid in order if mid != mailing_id]
    new_index = {
        Direction.UP: max(index - 1, 0),
        Direction.DOWN: min(index + 1, len(rest)),
        Direction.TOP: 0,
        Direction.BOTTOM: len(rest),
    }[direction]
    rest.insert(new_index, mailing_id)
    return rest


TURN_EVENTS = ("started", "resumed", "paused", "queued", "stopped")  # events that say whose turn it is


# The Actions menu's vocabulary (Offer, offers, queue_offers, MOVES_UP, MOVES_DOWN) lives in
# core/actions_registry.py with every action's label, command and confirm (issue 11 item 21);
# these names are still importable from here for older callers.
_MOVED_TO_REGISTRY = frozenset({"Offer", "offers", "queue_offers", "MOVES_UP", "MOVES_DOWN"})


def __getattr__(name: str) -> object:
    if name in _MOVED_TO_REGISTRY:
        from . import actions_registry  # imported late: the registry imports this module

        return getattr(actions_registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Lifecycle:
    """Carries out transitions on a store, each in one transaction with its timeline event."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def _checked(
        self, tx: Tx, mailing_id: int, action: Action, expect: Expect | None = None
    ) -> tuple[Mailing, MailingState | None]:
        mailing = await tx.mailing(mailing_id)
        if expect is not None:
            expect(mailing)  # first: "changed while you were asked" says more than "not allowed now"
        any_sending = await tx.any_sending() if action is Action.UNSCHEDULE else False
        return mailing, target_state(mailing, action, any_sending=any_sending)

    async def schedule(self, mailing_id: int, local: datetime, tz: str) -> Resolved:
        """Schedule at a wall time in an IANA zone; refuses a time in the past."""
        load_zone(tz)
        resolved = resolve(local, tz)
        if resolved.utc <= utcnow():
            raise UserError(f"{wall_minute(local)} in {tz} is in the past; choose a later time")
        async with self.store.write() as tx:
            await self._checked(tx, mailing_id, Action.SCHEDULE)
            await self.schedule_in(tx, mailing_id, resolved)
        return resolved

    async def schedule_in(self, tx: Tx, mailing_id: int, resolved: Resolved) -> None:
        """The schedule write, inside a transaction the caller holds (also used when splitting by zone)."""
        await tx.set_state(
            mailing_id,
            S.SCHEDULED,
            position=None,
            send_at_local=resolved.requested.strftime("%Y-%m-%dT%H:%M"),
            tz=resolved.tz,
            send_at_utc=iso(resolved.utc),
            tzdata_version=tzdata_version(),
            missed=0,
            finished_at=None,
            last_error=None,  # it said why the old schedule waited (missed, an unknown zone)
        )
        # Scheduling a tripped mailing is the operator's decision to send it again (README): the
        # trip is forgotten here, or a later unschedule left a draft that send-now refused while
        # pointing at `restart --force`, which refuses a draft (no way to send it at all).
        await self._forget_trip(tx, mailing_id)
        detail = f"for {resolved.requested:%Y-%m-%d %H:%M} {resolved.tz} ({iso(resolved.utc)})"
        if resolved.warning:
            detail += f"; {resolved.warning}"
        await tx.add_event(mailing_id, "scheduled", detail)

    async def rederive_schedules(self, *, warn: bool = True) -> int:
        """Derive the UTC instant of every schedule again when the time-zone data changed.

        A schedule is what the operator asked for (wall time + zone); the instant is only
        derived from it, so a tzdata upgrade that moves a zone's rules moves the instant too.
        A schedule whose zone the data does not know (a downgrade, a dropped name, a hand-edited
        row) cannot be derived: it is held as missed, never sent at its old or a guessed
        instant, and everything else goes on; one warning line names what waits and why
        (`warn`: the sender's log; a command shows it in its own words, e.g. `status`).
        Returns how many instants moved.
        """
        version = tzdata_version()
        changed = 0
        held: list[tuple[Mailing, str]] = []
        for mailing in await self.store.mailings(Section.SCHEDULED):
            schedule = mailing.schedule
            if schedule is None:
                continue
            reason = _unresolvable_reason(schedule, version)
            if reason is not None:
                await self._hold_unresolvable(mailing, schedule, reason)
                held.append((mailing, reason))
            elif schedule.tzdata_version != version or held_unresolvable(mailing):
                changed += await self._rederive_one(mailing, schedule, version)
        if held and warn:
            log.warning("%s", _held_line(held))
        return changed

    async def _rederive_one(self, mailing: Mailing, schedule: Schedule, version: str) -> int:
        resolved = resolve(schedule.local, schedule.tz)
        async with self.store.write() as tx:
            current = await tx.mailing(mailing.id)
            if current.state is not S.SCHEDULED or current.schedule != schedule:
                return 0
            await tx.update_mailing(mailing.id, send_at_utc=iso(resolved.utc), tzdata_version=version)
            if held_unresolvable(current):
                # Its zone is known again: it goes back to waiting for its time (a time already
                # past is judged against the grace period as usual).
                await tx.update_mailing(mailing.id, missed=0, last_error=None)
                await tx.add_event(mailing.id, "schedule resolved", f"{schedule.tz} is known again (tzdata {version})")
            if resolved.utc == schedule.utc:
                return 0
            await tx.add_event(
                mailing.id,
                "rescheduled",
                f"time-zone data changed from {schedule.tzdata_version or 'unknown'} to {version}: "
                f"{schedule.local:%Y-%m-%d %H:%M} {schedule.tz} is now {iso(resolved.utc)} (was {iso(schedule.utc)})",
            )
            return 1

    async def _hold_unresolvable(self, mailing: Mailing, schedule: Schedule, reason: str) -> None:
        """Mark it missed with what to do; written once (every command looks, few write)."""
        note = unresolvable_note(mailing.id, reason)
        if mailing.missed and mailing.last_error == note:
            return
        async with self.store.write() as tx:
            current = await tx.mailing(mailing.id)
            if current.state is not S.SCHEDULED or current.schedule != schedule:
                return
            # tzdata_version is left as it was: the instant was never derived with this data.
            await tx.update_mailing(mailing.id, missed=1, last_error=note)
            await tx.add_event(mailing.id, "schedule unresolvable", reason)

    async def unschedule(self, mailing_id: int, *, expect: Expect | None = None) -> None:
        async with self.store.write() as tx:
            await self._checked(tx, mailing_id, Action.UNSCHEDULE, expect)
            await self.unschedule_in(tx, mailing_id)

    async def unschedule_in(self, tx: Tx, mailing_id: int, detail: str = "kept as a draft") -> None:
        """The unschedule write, inside a transaction the caller holds (and has checked)."""
        # last_error said why the schedule waited (missed, an unknown zone): a draft has no schedule.
        await tx.set_state(
            mailing_id, S.DRAFT, send_at_local=None, tz=None, send_at_utc=None, tzdata_version=None, missed=0,
            last_error=None,
        )
        await tx.add_event(mailing_id, "schedule cancelled", detail)

    async def send_now(self, mailing_id: int, *, despite_trip: bool = False, expect: Expect | None = None) -> None:
        async with self.store.write() as tx:
            await self.send_now_in(tx, mailing_id, despite_trip=despite_trip, expect=expect)

    async def send_now_in(
        self, tx: Tx, mailing_id: int, *, despite_trip: bool = False, expect: Expect | None = None
    ) -> None:
        mailing, _ = await self._checked(tx, mailing_id, Action.SEND_NOW, expect)
        refuse_if_tripped(mailing, despite_trip)
        await self._enqueue(tx, mailing_id, "send now" if mailing.state is not S.STOPPED else "restarted")

    async def absorb_waves_in(self, tx: Tx, wave_ids: list[int], into_id: int) -> int:
        """Scheduled waves of a local-time schedule give their recipients not yet sent to back to
        `into_id`, when the schedule is set again, cancelled or sent now as a whole (core/waves.py),
        all in one move. An emptied wave is removed (it only ever held what the split gave it);
        one with sent or failed recipients of its own keeps them as a draft. Returns how many
        recipients moved."""
        waves = [await tx.mailing(wave_id) for wave_id in wave_ids]
        for wave in waves:
            if wave.state is not S.SCHEDULED:
                raise RefusedTransition(f"mailing {wave.id} is {wave.state.value}: only a scheduled wave can be merged back")
        came = await tx.gather_waiting(wave_ids, into_id)
        for wave in waves:
            await tx.add_event(into_id, "waves merged", f"{came.get(wave.id, 0):,} recipients back from mailing {wave.id} ({wave.name})")
            if await tx.recipient_count(wave.id) == 0:
                await tx.delete_mailing(wave.id)
            else:
                await self.unschedule_in(tx, wave.id, f"its recipients not yet sent to went back to mailing {into_id}")
                await tx.update_mailing(wave.id, wave_group=None)
        return sum(came.values())

    async def promote(self, mailing_id: int, late_by_seconds: float) -> bool:
        """A due schedule joins the bottom of the queue (False if it was changed meanwhile)."""
        async with self.store.write() as tx:
            mailing = await tx.mailing(mailing_id)
            if mailing.state is not S.SCHEDULED or mailing.missed:
                return False
            target_state(mailing, Action.PROMOTE, any_sending=False)
            detail = "schedule came due" + (f" ({late_by_seconds:.0f} s late)" if late_by_seconds >= 60 else "")
            await self._enqueue(tx, mailing_id, detail)
            return True

    async def mark_missed(self, mailing_id: int, late_by_seconds: float) -> None:
        """Too late to send without asking: stays in Scheduled, marked, for the operator to decide."""
        async with self.store.write() as tx:
            mailing = await tx.mailing(mailing_id)
            if mailing.state is not S.SCHEDULED or mailing.missed:
                return
            await tx.update_mailing(
                mailing_id,
                missed=1,
                last_error=f"missed its send time by {_lateness(late_by_seconds)} while no sender was running; "
                "send now or reschedule",
            )
            await tx.add_event(mailing_id, "missed", f"sender was not running at the due time; {late_by_seconds:.0f} s late")

    async def restart(self, mailing_id: int, *, despite_trip: bool = False, expect: Expect | None = None) -> None:
        async with self.store.write() as tx:
            mailing, _ = await self._checked(tx, mailing_id, Action.RESTART, expect)
            refuse_if_tripped(mailing, despite_trip)
            await self._enqueue(tx, mailing_id, "restarted (remaining recipients only)")

    async def retry(self, mailing_id: int, requeue: Callable[[Tx], Awaitable[str]]) -> None:
        """Failed recipients go back to pending (`requeue` picks and moves them in this
        transaction and says what it did, or raises to change nothing) and the mailing joins the
        bottom of the queue."""
        async with self.store.write() as tx:
            await self._checked(tx, mailing_id, Action.RETRY)
            why = await requeue(tx)
            await tx.add_event(mailing_id, "retry", why)
            await self._enqueue(tx, mailing_id, "retrying failed recipients")

    async def _enqueue(self, tx: Tx, mailing_id: int, why: str) -> None:
        position = await tx.bottom_position()
        await tx.set_state(mailing_id, S.QUEUED, position=position, finished_at=None, missed=0, last_error=None)
        await self._forget_trip(tx, mailing_id)
        await tx.add_event(mailing_id, "queued", why)

    async def start(self, mailing_id: int) -> bool:
        async with self.store.write() as tx:
            mailing = await tx.mailing(mailing_id)
            if mailing.state is not S.QUEUED:
                return False
            # last_error describes the present (why it waits now); a new turn starts without it
            # and the sender notes it again if the reason still holds. The history is in events.
            await tx.set_state(mailing_id, S.SENDING, started_at=iso(mailing.started_at or tx.now), last_error=None)
            if mailing.started_at is None:
                await tx.add_event(mailing_id, "started")
            elif not await self._repeating(tx, mailing_id, "resumed"):
                await tx.add_event(mailing_id, "resumed")
            return True

    async def yield_turn(self, mailing_id: int, why: str) -> None:
        async with self.store.write() as tx:
            mailing = await tx.mailing(mailing_id)
            if mailing.state is S.SENDING:
                await tx.set_state(mailing_id, S.QUEUED)
                if not await self._repeating(tx, mailing_id, "paused", why):
                    await tx.add_event(mailing_id, "paused", why)

    async def _repeating(self, tx: Tx, mailing_id: int, kind: str, detail: str = "") -> bool:
        """Whether a turn event would only repeat the timeline: a mailing that waits for its
        retries (or behind one that does) takes and yields its turn every few seconds; the
        timeline says "paused (why)" and "resumed" once per change of reason, not per turn."""
        last = await tx.last_events(mailing_id, TURN_EVENTS, 2)
        if kind == "resumed":
            return bool(last) and last[0][0] in ("resumed", "started")  # its last pause was not recorded
        return bool(last) and (last[0] == ("paused", detail) or (last[0][0] == "resumed" and last[1:] == [("paused", detail)]))

    async def stop(self, mailing_id: int, *, expect: Expect | None = None) -> Mailing:
        async with self.store.write() as tx:
            await self._checked(tx, mailing_id, Action.STOP, expect)
            await tx.set_state(mailing_id, S.STOPPED, position=None, finished_at=iso(tx.now))
            await tx.add_event(mailing_id, "stopped", "by the operator")
            await self._close_gaps(tx)
        return await self.store.mailing(mailing_id)

    async def complete_in(self, tx: Tx, mailing: Mailing) -> bool:
        """Inside the sender's results transaction: complete when nobody is left to send to."""
        if mailing.state not in TRANSITIONS[Action.COMPLETE][0] or mailing.remaining > 0:
            return False
        await tx.set_state(mailing.id, S.COMPLETED, position=None, finished_at=iso(tx.now), rate=0, last_error=None)
        skipped = f", {mailing.suppressed:,} suppressed" if mailing.suppressed else ""  # or the counts miss some
        await tx.add_event(mailing.id, "completed", f"{mailing.sent:,} sent, {mailing.failed:,} failed{skipped}")
        await self._close_gaps(tx)
        return True

    async def complete_if_done(self, mailing_id: int) -> bool:
        async with self.store.write() as tx:
            return await self.complete_in(tx, await tx.mailing(mailing_id))

    async def delete(self, mailing_id: int, *, expect: Expect | None = None) -> None:
        async with self.store.write() as tx:
            await self._checked(tx, mailing_id, Action.DELETE, expect)
            await tx.delete_mailing(mailing_id)

    async def move(self, mailing_id: int, direction: Direction, *, expect: ExpectQueue | None = None) -> int:
        """Reorder the queue; returns the mailing's new 1-based position."""
        async with self.store.write() as tx:
            await self._checked(tx, mailing_id, Action.MOVE)
            before = [mid for mid, _ in await tx.queue()]
            if expect is not None:
                expect(list(before))
            order = moved_order(before, mailing_id, direction)
            await tx.set_positions(order)
            index, new_index = before.index(mailing_id), order.index(mailing_id)
            if new_index != index:
                await tx.add_event(mailing_id, "moved", f"to position {new_index + 1} of {len(order)}")
            return new_index + 1

    async def _close_gaps(self, tx: Tx) -> None:
        await tx.set_positions([mid for mid, _ in await tx.queue()])

    async def note_error(self, mailing_id: int, error: str | None, *, event: str | None = None) -> None:
        """Record why a mailing is waiting (SMTP down, login refused) without changing its state."""
        async with self.store.write() as tx:
            await tx.update_mailing(mailing_id, last_error=error)
            if event:
                await tx.add_event(mailing_id, event, error or "")

    # ---- breaker (core/breaker.py judges; the transition is here) -------------------------

    async def trip(self, mailing_id: int, reason: str) -> bool:
        """The breaker stops a current mailing: stopped, with the reason as its error and in its
        timeline. False when it is no longer current (an operator was quicker) or it is done."""
        async with self.store.write() as tx:
            mailing = await tx.mailing(mailing_id)
            if mailing.state not in TRANSITIONS[Action.STOP][0]:
                return False
            if await self.complete_in(tx, mailing):
                return False
            await tx.set_state(mailing_id, S.STOPPED, position=None, finished_at=iso(tx.now), rate=0,
                               last_error=reason, tripped=reason)
            await tx.add_event(mailing_id, "stopped", reason)
            await self._close_gaps(tx)
            return True

    async def _forget_trip(self, tx: Tx, mailing_id: int) -> None:
        """A tripped mailing that is sent again starts a fresh breaker window: its old outcomes
        would trip it again at once (the operator has decided to go on)."""
        mailing = await tx.mailing(mailing_id)
        if mailing.tripped is not None:
            await tx.update_mailing(mailing_id, tripped=None, breaker_since=time.time())


def _lateness(seconds: float) -> str:
    """"under 1 s", "42 s", "3 min", "2 h 05 min": a tiny grace must not read "by 0 min"."""
    if seconds < 60:
        return f"{int(seconds)} s" if seconds >= 1 else "under 1 s"
    return humanize_delta(timedelta(seconds=seconds)).removeprefix("in ")


def _unresolvable_reason(schedule: Schedule, version: str) -> str | None:
    """Why the instant of `schedule` cannot be derived with the installed data, or None."""
    if not is_valid_zone(schedule.tz):
        return f"time zone {quoted_zone(schedule.tz)} is not in the installed time-zone data (tzdata {version})"
    if schedule.tzdata_version == version:
        return None  # derived with this very data: nothing to check again
    try:
        resolve(schedule.local, schedule.tz)
    except UserError as exc:  # out of the schedulable range under the new rules
        return str(exc)
    return None


def unresolvable_note(mailing_id: int, reason: str) -> str:
    """The last_error of a held schedule: why, and the two ways out."""
    return (f"{UNRESOLVABLE}{reason}; it will not be sent until you reschedule it with a known zone "
            f"(`mailtower schedule {mailing_id} --at \"YYYY-MM-DD HH:MM\" --tz ZONE`) "
            f"or unschedule it (`mailtower unschedule {mailing_id}`)")


def held_unresolvable(mailing: Mailing) -> bool:
    """Whether `mailing` waits because its schedule could not be resolved (rederive_schedules)."""
    return mailing.missed and (mailing.last_error or "").startswith(UNRESOLVABLE)


def _held_line(held: list[tuple[Mailing, str]]) -> str:
    """One warning line for every held schedule (the first three named in full)."""
    shown = "; ".join(f'mailing {m.id} "{m.name}": {reason}' for m, reason in held[:3])
    more = f"; and {len(held) - 3} more" if len(held) > 3 else ""
    who = "a scheduled mailing waits" if len(held) == 1 else f"{len(held)} scheduled mailings wait"
    return (f"{who} and will not be sent, its schedule cannot be resolved: {shown}{more}; "
            "reschedule with a known zone (`mailtower schedule ID --at ... --tz ZONE`) or unschedule (`mailtower unschedule ID`)")


def refuse_if_tripped(mailing: Mailing, despite_trip: bool) -> None:
    """Sending a mailing the breaker stopped is a decision an operator confirms (the dashboard's
    dialog, the CLI's --force), having been told what tripped."""
    # Only a stopped mailing: `restart --force`, which the refusal names, takes only a stopped one.
    if mailing.tripped is not None and not despite_trip and mailing.state is S.STOPPED:
        raise RefusedTransition(
            f"mailing {mailing.id} was stopped by the {mailing.tripped}; confirm to send it again "
            f"(`mailtower restart {mailing.id} --force`, or Restart in the dashboard)"
        )
