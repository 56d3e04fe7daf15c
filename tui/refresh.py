"""The dashboard's refresh model, with no Textual in it (testable without Pilot).

What lives here: re-reading only the sections whose signature changed (`read_changed_sections`),
when each current mailing with nothing left but retries tries next (`next_retries`), which
mailings moved between two reads and are worth announcing (`moved_mailings`), the current
mailings patched with the in-process sender's newer counters (`patch_live`), and why each current
mailing is held back (`holds_for`). The app (tui/app.py) decides when to call them and owns the
state they return; rendering lives in tui/rows.py, tui/panels.py and tui/header.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from mailtower.core.db_target import is_postgres
from mailtower.core.domain import Mailing, MailingState, Section
from mailtower.core.progress import Hold, MailingProgress, hold_of
from mailtower.core.store import Store

Sections = dict[Section, list[Mailing]]
Signatures = dict[Section, tuple[int, int, int]]


@dataclass(frozen=True, slots=True)
class SectionsRead:
    """The sections after a read, and the signatures they were read at."""

    sections: Sections
    signatures: Signatures
    reread: frozenset[Section]  # the sections that were read again (the others are the old lists)


async def read_changed_sections(store: Store, sections: Mapping[Section, list[Mailing]], signatures: Mapping[Section, tuple[int, int, int]]) -> SectionsRead:
    """Only sections whose mailings changed are read again: while sending, that is Current."""
    now_signatures = await store.section_signatures()
    result = dict(sections)
    reread: set[Section] = set()
    for section in Section:
        if now_signatures[section] != signatures.get(section):
            result[section] = await store.mailings(section)
            reread.add(section)
    return SectionsRead(result, now_signatures, frozenset(reread))


async def next_retries(store: Store, current: list[Mailing]) -> dict[int, float]:
    """When each current mailing left with deferred recipients only tries next."""
    result: dict[int, float] = {}
    for mailing in current:
        if 0 < mailing.remaining <= mailing.deferred:  # nothing left but retries
            at = await store.next_retry(mailing.id)
            if at is not None:
                result[mailing.id] = at
    return result


def moved_mailings(
    old: Mapping[Section, list[Mailing]],
    new: Mapping[Section, list[Mailing]],
    expected: Mapping[int, float],
    now: float,
) -> list[tuple[Mailing, MailingState]]:
    """Mailings whose state (or missed flag) changed between two reads, each with its state before.

    `expected` maps a mailing id to the monotonic time until which its move was caused by an
    action of ours (already said, so not announced again); `now` is that clock's value."""
    before = {m.id: m for ms in old.values() for m in ms}
    if not before:
        return []  # the first read: nothing moved, it was all there already
    moves = []
    for mailing in (m for ms in new.values() for m in ms):
        was = before.get(mailing.id)
        if was is None or expected.get(mailing.id, 0.0) > now:
            continue
        if was.state is not mailing.state or was.missed != mailing.missed:
            moves.append((mailing, was.state))
    return moves


def patch_live(current: list[Mailing], live: Mapping[int, MailingProgress]) -> list[Mailing]:
    """Current mailings with the sender's newest counters (the store's may be a beat behind).

    A snapshot behind the store (fewer finished) is ignored, so counters never go backwards."""
    patched = []
    for mailing in current:
        p = live.get(mailing.id)
        if (
            p is not None
            and (p.sent, p.failed, p.deferred) != (mailing.sent, mailing.failed, mailing.deferred)
            and p.sent + p.failed >= mailing.sent + mailing.failed
        ):
            mailing = replace(mailing, sent=p.sent, failed=p.failed, deferred=p.deferred, in_doubt=p.in_doubt)
        patched.append(mailing)
    return patched


TROUBLE = ("paused", "resting", "throttled")  # the relay states that can hold a mailing back


def holds_for(current: list[Mailing], waiting: dict[str, object], next_retry: Mapping[int, float]) -> dict[int, Hold]:
    """Why each current mailing is held back now (paused, waiting, throttled, retrying), from the
    sender's waiting document and the next retry times.

    Only the mailings something can hold are asked (`hold_of` per mailing is the rule): one a
    relay in trouble names, the sending one while any relay is in trouble, one with a retry
    time. The rest cannot be held, and there may be thousands of them at every refresh."""
    relays = waiting.get("relays")
    troubled = [e for e in relays if isinstance(e, dict) and e.get("state") in TROUBLE] if isinstance(relays, list) else []
    named = {e.get("mailing") for e in troubled}
    result: dict[int, Hold] = {}
    for mailing in current:
        if not (mailing.id in next_retry or mailing.id in named or (troubled and mailing.state is MailingState.SENDING)):
            continue
        hold = hold_of(waiting, mailing, next_retry.get(mailing.id))
        if hold is not None:
            result[mailing.id] = hold
    return result


@dataclass(slots=True)
class KeysFirst:
    """When the periodic refresh may run: not while the operator's keys are being answered.

    A refresh (store read, rows rebuilt, three panels and the header repainted) holds the event
    loop for 10-25 ms; a key whose handling and frame fall behind it waits that long on top of
    its own work (issue 11 item 16). So a refresh tick that comes within `quiet` seconds of a
    key is owed instead of run, and the app runs it right after the key's frame is drawn, in the
    gap before the next key. Figures never get older than `late` seconds: past that a tick runs
    whatever the keys do (a held-down key does not freeze the screen)."""

    quiet: float = 0.3
    late: float = 1.0
    key_at: float = float("-inf")
    refreshed_at: float = float("-inf")
    owed: bool = False

    def key(self, now: float) -> None:
        self.key_at = now

    def may_refresh(self, now: float) -> bool:
        """True: refresh now. False: a key came just now; the refresh is owed (see `take_owed`)."""
        if now - self.key_at >= self.quiet or now - self.refreshed_at >= self.late:
            return True
        self.owed = True
        return False

    def take_owed(self) -> bool:
        """After a key's frame: whether a refresh was put off for it (and is now to be run)."""
        owed, self.owed = self.owed, False
        return owed

    def refreshed(self, now: float) -> None:
        self.refreshed_at = now
        self.owed = False


# ---- PostgreSQL: LISTEN/NOTIFY instead of polling (issue 15 item 5) ----------------------------
SAFETY_POLL = 5.0  # seconds: the store is asked directly this often, in case a notification was lost


class ChangeWatch:
    """The dashboard's "did anything change?" probe: `await version(store)` changes when the
    database changed. On SQLite it is `PRAGMA data_version` (a local read, no server to spare).
    On PostgreSQL it is a counter of the notifications a LISTEN connection heard
    (core/pg_listen.py), so an idle tick asks the server nothing; the server's snapshot is read
    only every SAFETY_POLL seconds in case a notification was lost, and at every call while the
    listener is not connected (it reconnects by itself). A burst of notifications between two
    ticks is one change: one read."""

    def __init__(self, safety_poll: float = SAFETY_POLL, clock: Callable[[], float] = time.monotonic) -> None:
        self.safety_poll = safety_poll
        self.clock = clock
        self.listener: Any = None  # core.pg_listen.ChangeListener, on PostgreSQL only
        self.polls = 0  # how often the server was asked (tests: no polling storm)
        self._polled = 0
        self._next_poll = 0.0

    async def version(self, store: Store) -> int:
        if not is_postgres(store.target):
            return await store.data_version()
        if self.listener is None:
            from mailtower.core.pg_listen import ChangeListener

            self.listener = ChangeListener(store.target)
            self.listener.start()
        now = self.clock()
        if now >= self._next_poll or not self.listener.connected:  # not listening: poll as on SQLite
            self._next_poll = now + self.safety_poll
            self.polls += 1
            self._polled = await store.data_version()
        return self.heard

    @property
    def heard(self) -> int:
        """The PostgreSQL version as last heard, without asking anything."""
        return hash((getattr(self.listener, "notified", 0), self._polled))

    async def close(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            await listener.close()
