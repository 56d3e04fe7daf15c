"""Several senders on one database (issue 15 items 3-4): registration, heartbeat, claims, expiry.

Every sender (on SQLite the only one, under the lease; on PostgreSQL any number, on any hosts)
registers a row in `senders` and beats its heartbeat there every `interval` seconds, in the
DATABASE's clock (hosts' clocks differ). A sender is alive while its row is `running` and its
heartbeat is younger than `sender_heartbeat_timeout`. Shown to people (list_senders), on SQLite
a `running` row whose process no longer holds the sender lease is `gone` at once: it ended
without recording its end (a full disk, an I/O error, kill -9); nothing is written for that.

The rules (the store's SQL implements them, core/store.py "fleet"):

- Claim: a claimed ledger row carries its sender's id on disk (recipients.claimed_by). The claim
  query takes only rows nobody holds (claimed_by NULL) or this sender's own (minus those it has
  in memory), `FOR UPDATE SKIP LOCKED` on PostgreSQL, so live senders' batches are disjoint.
- Fence: a row becomes `sending` (the commit before its final dot) only if it is still claimed
  by this sender; a mark that finds it otherwise reports the row "barred" and its connection
  does not send the final dot. An outcome (or a release) is written only for a row still claimed
  by this sender, and clears the claim.
- Expiry: every heartbeat, each sender declares dead the running senders whose heartbeat is
  older than the timeout; a dead sender's `sending` rows become pending and in doubt (counted,
  with an event) and its other claims are released. At start-up only rows of senders that are
  not alive (or without an owner) are recovered; on SQLite the lease says every other sender is
  dead. A sender that ends releases its own claims (rows cut off in flight are in doubt).
- Self-fencing: a sender that cannot write its heartbeat for longer than the timeout, or finds
  itself declared dead, stops (SenderFailed): no further claims and no further final dots. On
  SQLite the lease already makes it the only sender: nobody can take its rows, so it does not
  fence itself when a long write of another process delays its heartbeat.
- The heartbeat never waits for the write lock (PostgreSQL: a connection of its own, see
  core/store_pg.py "fleet heartbeat"), and the expiry runs beside it, not before the next beat:
  a write that holds the lock longer than the timeout (a wave schedule, a big import into a
  draft) delays sending, never the heartbeats, so nobody alive is declared dead.
- Limits hold for the fleet: each sender applies 1/N of rate, connections (the relay pool's
  per-relay connections and rates too) and the domain groups' limits, N = live senders,
  recomputed with every heartbeat. The hourly budget is counted in the shared ledger (messages
  recorded sent in the window by anyone) and in each sender's own count of its sends, written
  with its heartbeat: the budget less what gone senders sent is shared out equally among the
  running ones (budget_allowance), counted again every BUDGET_INTERVAL, so the fleet stays
  within it (over by at most what was in flight, not yet recorded, when a count was read). A
  sender that joins takes its share after JOIN_SETTLE, once the others have counted theirs again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .config import Settings
from .db_errors import database_errors
from .lease import lease_pid
from .limits import Limits
from .ratelimit import HOUR, RateLimiter
from .sender_status import SENDER_PREFIX
from .store import Store

log = logging.getLogger("mailtower.sender")

MAX_INTERVAL = 5.0  # seconds between heartbeats at most ("every few seconds")
BUDGET_INTERVAL = 2.0  # seconds between two counts of the fleet's hourly budget in the ledger
# A sender joining a fleet takes no part of the hourly budget for this long: the others count
# their shares again when they see the number of live senders change (their limits check, every
# half second or so) and anyway every BUDGET_INTERVAL; before that each may still send the larger
# share it counted without the newcomer. Twice the interval: a busy send loop checks late.
JOIN_SETTLE = 2 * BUDGET_INTERVAL


class FleetLost(Exception):
    """This sender may have been declared dead by the others: it must not send further."""


@dataclass(frozen=True, slots=True)
class SenderInfo:
    """One registered sender, as `status --json` and the dashboard show it."""

    id: int
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    rate: float
    connections: int
    state: str
    alive: bool
    age: float  # seconds since its last heartbeat, in the database's clock

    def document(self) -> dict[str, Any]:
        return {"sender": self.id, "host": self.host, "pid": self.pid, "started_at": self.started_at,
                "heartbeat_at": self.heartbeat_at, "heartbeat_age": round(self.age, 3), "rate": self.rate,
                "connections": self.connections, "state": self.state, "alive": self.alive}


# The state shown for a sender whose row still says `running` but whose process is no more: it
# ended without recording its end (a full disk, an I/O error, kill -9). Shown only, never written.
GONE = "gone"


async def list_senders(store: Store, timeout: float) -> list[SenderInfo]:
    """Senders running, or ended within the hour, oldest first.

    On SQLite the sender lease says who is really there: the kernel drops its lock when the
    process ends, however it ends, so a `running` row whose process does not hold the lease is
    shown `gone` (not alive, its real heartbeat age kept), at once rather than after the heartbeat
    timeout. A sender that could not write its end (full disk, I/O error, kill -9) otherwise looked
    alive for that long, then stayed `running` for ever. Display only: nothing is written, and
    expiry and recovery keep their own rules. On PostgreSQL senders on several hosts (which may
    share a host name) have no lease file: the heartbeat alone decides, as before."""
    rows = await store.sender_rows(timeout)
    senders = [
        SenderInfo(int(r[0]), str(r[1]), int(r[2]), float(r[3]), float(r[4]), float(r[5]), int(r[6]), str(r[7]),
                   bool(r[8]), max(0.0, float(r[9]) - float(r[4])))
        for r in rows
    ]
    if store.is_file and any(s.state == "running" for s in senders):
        holder = await asyncio.to_thread(lease_pid, Path(store.path))
        if holder is not None:
            senders = [replace(s, state=GONE, alive=False) if s.state == "running" and s.pid != holder else s
                       for s in senders]
    return senders


async def nobody_sending(store: Store, senders: list[dict[str, Any]] | None) -> str | None:
    """What `status` says under a mailing that is `sending` when no sender is alive (None: say
    nothing). A `sending` mailing stays so when its sender ended without recording its end. On
    SQLite the lease decides: a sender holding it is there, even with its heartbeat late behind a
    long write or before its row is registered, and a lease that cannot be read says nothing. On
    PostgreSQL only the heartbeats can tell, and a late one is not proof of a dead sender."""
    if senders is not None and any(s["alive"] for s in senders):
        return None
    if store.is_file:
        holder = await asyncio.to_thread(lease_pid, Path(store.path))
        if holder != 0:
            return None
        return "no sender is running: nothing is sending it; start `mailtower run` to go on"
    return "no sender's heartbeat is fresh: it may not be sent; check the senders, or start `mailtower run`"


def heartbeat_interval(timeout: float) -> float:
    """A quarter of the timeout (three beats may be missed before the others give up), at most 5 s."""
    return min(MAX_INTERVAL, timeout / 4)


class FleetMember:
    """This process as one sender of the fleet: join, beat, share the limits, leave."""

    def __init__(
        self, settings: Settings, on_lost: Callable[[BaseException], None], figures: Callable[[], tuple[float, int]],
        limiter: RateLimiter | None = None,
    ) -> None:
        self.settings = settings
        self.figures = figures  # (rate, connections) of this sender now, for its heartbeat row
        self.timeout = settings.sender_heartbeat_timeout
        self.interval = heartbeat_interval(self.timeout)
        self.on_lost = on_lost
        self.store: Store | None = None
        self.sender_id: int | None = None
        self.live = 1  # live senders, this one included, as of the last heartbeat
        self.alone = True  # no other sender was alive when this one joined
        self._last_beat = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._expiry: asyncio.Task[None] | None = None
        self._expiry_failed = 0  # expiries in a row that failed
        self.limiter = limiter  # the sender's own limiter: the hourly budget counts the fleet's sends in it
        self._budget_read = 0.0  # monotonic time the fleet's hourly budget was last counted
        self._joined_at = 0.0  # monotonic time this sender joined the fleet
        self._budget_live = 0  # live senders when it was
        self._pool: dict[str, tuple[int, float]] = {}  # relay name -> its configured (connections, rate)

    @property
    def status_key(self) -> int | None:
        """Whose status document the sender writes (sender_status.write_status): its own on
        PostgreSQL, where several senders would overwrite the shared one; None on SQLite."""
        return None if self.store is None or self.exclusive else self.sender_id

    @property
    def exclusive(self) -> bool:
        """SQLite: the lease makes this the only sender, so any other registered one is dead."""
        return self.store is not None and self.store.is_file

    async def join(self, store: Store, connections: int) -> int:
        """Register, recover what dead senders left in flight, start the heartbeat. Returns how
        many rows became in doubt."""
        self.store = store
        self.sender_id = await store.register_sender(socket.gethostname(), os.getpid(), connections)
        # Claims carry their sender's id on disk only where another sender could take them over.
        # Under SQLite's lease nobody can: no fence to check, and no claimed_by (and its index)
        # to write at every claim and clear at every outcome (issue 12: the ledger's writes).
        store.claim_owner = None if self.exclusive else self.sender_id
        self._last_beat = self._joined_at = time.monotonic()
        if not self.exclusive:
            await store.forget_sender_statuses(SENDER_PREFIX)  # of senders forgotten (ended a day ago)
        recovered = await store.recover_in_doubt(None if self.exclusive else self.timeout, me=self.sender_id)
        self.live = max(1, await store.live_senders(self.timeout))
        self.alone = self.live <= 1
        if not self.alone:
            log.info("sender %d joins %d other live sender(s); limits are shared", self.sender_id, self.live - 1)
        self._task = asyncio.create_task(self._beat_forever())
        return recovered

    def check(self) -> None:
        """Raise FleetLost when the heartbeat has not been written for longer than the timeout
        (never on SQLite: under the lease nobody else can have taken this sender's rows)."""
        if self.exclusive:
            return
        if self.sender_id is not None and time.monotonic() - self._last_beat > self.timeout:
            raise FleetLost(
                f"sender {self.sender_id}: its heartbeat could not be written for {self.timeout:g} s; "
                "other senders may have taken its recipients over, so it stops"
            )

    async def others_hold(self, mailing_id: int) -> bool:
        """Whether another live sender holds rows of this mailing (never on SQLite: one sender)."""
        if self.store is None or self.exclusive:
            return False
        return await self.store.held_by_others(mailing_id, self.timeout)

    async def shared(self, limits: Limits) -> Limits:
        """`share` with the number of live senders read again (a tiny read, at most twice a second
        from the sender's limits check): a sender joining or leaving moves everyone's share
        within a second, not only at the next heartbeat."""
        if self.store is not None and not self.exclusive:
            try:
                self.live = max(1, await self.store.live_senders(self.timeout))
                await self._count_budget(limits.rate_per_hour)
            except (*database_errors(), OSError):
                pass  # the heartbeat says what is wrong; the last count stands
        return self.share(limits)

    async def _count_budget(self, per_hour: float) -> None:
        """The fleet's hourly budget for this sender's limiter (budget_allowance): the ledger's
        count of what was sent in the window, and each running sender's own sends in it as its
        last heartbeat said."""
        limiter = self.limiter
        if limiter is None or per_hour <= 0 or not math.isfinite(per_hour) or self.store is None:
            if limiter is not None:
                limiter.set_elsewhere(0)
            return
        if (time.monotonic() - self._budget_read < BUDGET_INTERVAL and limiter.per_hour == per_hour
                and self._budget_live == self.live):
            return  # a sender joining or leaving changes everyone's share at once
        window, allowed = budget_window(per_hour)
        if not self.alone and time.monotonic() - self._joined_at < JOIN_SETTLE:
            limiter.set_elsewhere(allowed)  # nothing yet: the others have not all counted again
            self._budget_read = 0.0  # counted at the next check, not BUDGET_INTERVAL later
            return
        fleet = await self.store.sent_within(window)
        others = await self.store.budget_counts(self.sender_id)
        mine = limiter.sent_in_window()
        limiter.set_elsewhere(allowed - budget_allowance(allowed, fleet, others, mine))
        self._budget_read, self._budget_live = time.monotonic(), self.live

    def share_pool(self, relays: Sequence[Any]) -> bool:
        """A relay pool's per-relay connections and rates, 1/N of each as configured (at least
        one connection). One relay follows the live `connections` limit instead (see share).
        Returns whether any changed (the sender then starts or ends workers)."""
        n = max(1, self.live)
        changed = False
        for relay in relays:
            connections, rate = self._pool.setdefault(relay.name, (relay.connections, relay.limiter.configured))
            mine = max(1, connections // n) if connections else connections
            changed = changed or mine != relay.connections or rate / n != relay.limiter.configured
            relay.connections, relay.limiter.configured = mine, rate / n
        return changed

    def share(self, limits: Limits) -> Limits:
        """This sender's part of the fleet's limits: 1/N of each (N live senders)."""
        n = self.live
        if n <= 1:
            return limits
        domains: dict[str, dict[str, float]] = {}
        for spec in self.settings.domains:
            given = limits.domains.get(spec.name, {})
            cap = int(given.get("connections", spec.connections))
            domains[spec.name] = {
                "connections": max(1, cap // n) if cap else 0,  # 0: no cap of its own
                "rate": float(given.get("rate", spec.rate)) / n,
                "per_hour": float(given.get("per_hour", spec.per_hour)) / n,
            }
        # The hourly budget is not divided: it is counted in the ledger for the fleet (_count_budget).
        return replace(limits, rate=limits.rate / n, connections=max(1, limits.connections // n), domains=domains)

    async def beat(self) -> None:
        """One heartbeat, then expire senders that stopped beating. Raises FleetLost when this
        sender was declared dead."""
        store = self.store
        assert store is not None and self.sender_id is not None
        rate, connections = self.figures()
        sent = self.limiter.sent_in_window() if self.limiter is not None else 0
        live = await store.sender_heartbeat(self.sender_id, rate, connections, self.timeout, sent)
        if live is None:
            raise FleetLost(f"sender {self.sender_id} was declared dead by another sender (no heartbeat for "
                            f"{self.timeout:g} s); its recipients went to the others, so it stops")
        self._last_beat = time.monotonic()
        if live != self.live:
            log.info("%d sender(s) alive; each applies 1/%d of the limits", live, live)
        self.live = max(1, live)
        if self._expiry is None or self._expiry.done():
            # Beside the heartbeat, not before the next one: releasing a dead sender's rows takes
            # the write lock, which a long write may hold for longer than the timeout.
            self._expiry = asyncio.create_task(self._expire())

    async def _expire(self) -> None:
        """Expire senders that stopped beating; a failure is said and tried again next beat."""
        store = self.store
        assert store is not None
        try:
            recovered = await store.expire_senders(self.timeout, me=self.sender_id)
        except (*database_errors(), OSError) as exc:
            self._expiry_failed += 1
            self._say_failure("could not expire senders that stopped beating", self._expiry_failed, exc)
            return
        except Exception as exc:  # a bug: the sender stops saying so
            self.on_lost(exc)
            return
        self._expiry_failed = 0
        if recovered:
            log.warning("a sender stopped beating: %d of its recipients in flight are in doubt and sent again", recovered)

    async def _beat_forever(self) -> None:
        failed = 0  # heartbeats in a row that could not be written
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.beat()
            except FleetLost as exc:
                self.on_lost(exc)
                return
            except (*database_errors(), OSError) as exc:
                failed += 1
                self._say_failure("heartbeat not written", failed, exc)
                try:
                    self.check()
                except FleetLost as lost:
                    self.on_lost(lost)
                    return
            except Exception as exc:  # a bug: the sender stops saying so rather than beating no more
                self.on_lost(exc)
                return
            else:
                if failed > 1:
                    log.warning("sender %s: heartbeat written again after %d failures", self.sender_id, failed)
                failed = 0

    def _say_failure(self, what: str, in_a_row: int, exc: BaseException) -> None:
        """A failed heartbeat or expiry, said from the second in a row on: a database that went
        away fails the send loop as well, which ends the sender with one line; a first failure
        said at once raced that line onto standard error as a second one."""
        level = logging.WARNING if in_a_row > 1 else logging.DEBUG
        log.log(level, "sender %s: %s (%d in a row): %s", self.sender_id, what, in_a_row, exc)

    async def leave(self) -> None:
        """Stop beating and release this sender's claims (rows cut off in flight become in doubt)."""
        for task in (self._task, self._expiry):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._expiry = None
        if self.store is None or self.sender_id is None:
            return
        try:
            in_doubt = await self.store.retire_sender(self.sender_id, unowned=self.exclusive)
        except (*database_errors(), OSError) as exc:
            log.info("sender %d: could not release its claims (they expire with its heartbeat): %s", self.sender_id, exc)
            return
        if in_doubt:
            log.warning("%d recipients were cut off in flight; they are in doubt and will be sent again", in_doubt)


def budget_allowance(allowed: int, fleet: int, others: Sequence[int], mine: int) -> int:
    """How many messages in the budget's window this sender may have sent in all, of `allowed`
    for the fleet: `fleet` were recorded sent in the window by anyone, `others` are what each
    other running sender said it sent in it, `mine` this sender's own count.

    Sends in the window by senders that are gone (and before the fleet) are the ledger's count
    less the running senders' own; the rest of the budget is split so that each running sender
    may reach an equal share Q, and one that already sent more than Q keeps what it sent and
    sends no more: sum(max(count, Q)) over the running senders is what is left. Each sender
    counts at its own time, but Q only falls while the same senders run (counts grow; an old
    count of another sender only makes the gone senders' part look larger), so shares counted
    earlier never add up to more than the budget. Over by at most what was in flight (counted by
    its sender, not yet in the ledger). Rounded down: up to N-1 messages an hour unused."""
    counts = [*others, mine]
    gone = max(0, fleet - sum(counts))
    left, senders = allowed - gone, len(counts)
    for count in sorted(counts, reverse=True):  # those above the share keep their count
        if count * senders <= left:
            break
        left, senders = left - count, senders - 1
    share = left // senders if senders and left > 0 else 0
    return max(mine, share)


def budget_window(per_hour: float) -> tuple[float, int]:
    """(seconds, messages allowed in them) of an hourly budget, as ratelimit.RateLimiter counts it:
    per_hour an hour, or below one an hour one message per 3600/per_hour seconds."""
    if per_hour >= 1:
        return HOUR, int(per_hour)
    return HOUR / per_hour, 1


async def senders_document(store: Store, timeout: float) -> list[dict[str, Any]] | None:
    """The senders for `status --json` (key `senders`): those running or ended within the hour,
    each with host, pid, rate, connections, last heartbeat and whether it is alive. None while no
    sender is alive and none is gone (the document then has its three sections only, as before
    the fleet): a sender that ended without recording its end (state "gone", see list_senders)
    is listed, so that a failed stop never looks like a clean one."""
    senders = await list_senders(store, timeout)
    if not any(s.alive or s.state == GONE for s in senders):
        return None
    return [s.document() for s in senders]
