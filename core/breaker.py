"""The breaker: a mailing stops by itself when its recent outcomes say it is doing damage.

Over a sliding window of the mailing's last `breaker_window` outcomes (sent, failed, deferred;
the latest of each recipient, so a recipient retried many times counts once),
it trips when permanent failures are more than `breaker_hard` percent of the window, or when
one recipient domain's deferrals are more than `breaker_soft` percent of that domain's outcomes
in the window. Neither is judged on fewer than `breaker_min` outcomes (of the window, or of
that domain), so 1 failure of the first 2 does not stop a mailing. During a canary the window
is the canary's outcomes and the minimum is small (see core/canary.py).

Each outcome costs O(1): a deque append/pop and a few counters. The window survives a sender
restart: it is rebuilt from the ledger's most recent outcomes of the mailing (only those after
`Mailing.breaker_since`, so a restart after a trip starts afresh). Stopping the mailing is a
lifecycle transition (`Lifecycle.trip`); this module only judges.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from dataclasses import dataclass

from .config import Settings
from .display import safe
from .domain import Mailing, RecipientState
from .smtp_replies import Stage, classify
from .store import Store

_SENT, _FAILED, _DEFERRED = RecipientState.SENT, RecipientState.FAILED, RecipientState.DEFERRED
REPLY_SHOWN = 120  # characters of the last reply kept in the trip reason
KEPT_BREAKERS = 64  # mailings whose window a sender keeps in memory (others are read again when sent)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """What trips a breaker: percentages (0 = that check is off) and the least outcomes judged."""

    window: int
    hard: float
    soft: float
    minimum: int

    @classmethod
    def of(cls, settings: Settings, mailing: Mailing) -> "Thresholds":
        """The global settings, with the mailing's own thresholds where it has them."""
        return cls(
            window=settings.breaker_window,
            hard=settings.breaker_hard if mailing.breaker_hard is None else mailing.breaker_hard,
            soft=settings.breaker_soft if mailing.breaker_soft is None else mailing.breaker_soft,
            minimum=settings.breaker_min,
        )


def asks_to_slow_down(code: int | None, text: str | None) -> bool:
    """A deferral that is a throttle (421, or a 4.7.x with rate wording such as Postfix's anvil
    "too much mail from ..."): the server asks for a slower pace, which pacing gives it. It
    counts as an outcome of the window but not as the domain's deferral: the breaker is for
    recipients a domain will not take, not for a pace it wants slower."""
    if code is None or not 400 <= code < 500:
        return False
    return classify(code, text or "", Stage.RCPT).throttle


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def percent(value: float) -> str:
    """5 -> "5%", 2.5 -> "2.5%"."""
    return f"{value:g}%"


def _reply(code: int | None, text: str | None) -> str:
    # A relay's words are made safe here, once, so the stored reason (shown in the row, Details,
    # `breaker`, `status`, the logs and the Restart dialog) never carries an escape sequence.
    said = safe(" ".join(f"{code or ''} {text or ''}".split()))
    return said if len(said) <= REPLY_SHOWN else said[: REPLY_SHOWN - 1] + "…"


class Breaker:
    """The sliding window of one mailing's outcomes; `add` says why it trips, once it does."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        # [failed permanently, deferred, domain, recipient, live] of each outcome, oldest first.
        # The window counts each recipient's LATEST outcome only: a recipient retried (deferred
        # again and again, then perhaps sent) is one recipient, as in the window rebuilt from the
        # ledger, not one deferral per attempt (one greylisted address retried at the tail of a
        # mailing would otherwise trip its domain alone). An earlier outcome of a recipient that
        # answers again is marked dead and skipped; the deque is compacted when half of it is dead.
        self._window: deque[list] = deque()  # type: ignore[type-arg]
        self._latest: dict[str, list] = {}  # type: ignore[type-arg]  # recipient -> its live entry
        self._hard = 0
        self._domains: dict[str, list[int]] = {}  # domain -> [outcomes, deferrals] in the window
        self.tripped: str | None = None
        self._size = thresholds.window

    def __len__(self) -> int:
        return len(self._latest)

    @property
    def failed(self) -> int:
        return self._hard

    def domain_counts(self, domain: str) -> tuple[int, int]:
        """(outcomes, deferrals) of one domain in the window."""
        counts = self._domains.get(domain)
        return (counts[0], counts[1]) if counts else (0, 0)

    def add(self, state: RecipientState | str, code: int | None, text: str | None, address: str) -> str | None:
        """Count one outcome; the trip reason when this outcome trips the breaker (once), else None.

        Outcomes that are not answers (a row released unsent, in doubt) do not count."""
        if type(state) is not RecipientState:
            state = RecipientState(state)
        hard = state is _FAILED
        deferred = state is _DEFERRED and not asks_to_slow_down(code, text)
        if not (hard or deferred or state is _SENT or state is _DEFERRED):
            return None
        domain = address[address.rfind("@") + 1:].lower()
        self._push(hard, deferred, domain, address.lower())
        if self.tripped is not None or not (hard or deferred):
            return None  # a message sent never trips it
        if hard:
            self.tripped = self._hard_trip(code, text)
        else:
            self.tripped = self._soft_trip(domain, code, text)
        return self.tripped

    def _push(self, hard: bool, deferred: bool, domain: str, recipient: str) -> None:
        earlier = self._latest.pop(recipient, None)
        if earlier is not None:
            self._drop(earlier)
        entry = [hard, deferred, domain, recipient, True]
        self._window.append(entry)
        self._latest[recipient] = entry
        self._hard += hard
        counts = self._domains.get(domain)
        if counts is None:
            self._domains[domain] = [1, int(deferred)]
        else:
            counts[0] += 1
            counts[1] += deferred
        while len(self._latest) > self._size:
            oldest = self._window.popleft()
            if oldest[4]:
                del self._latest[oldest[3]]
                self._drop(oldest)
        if len(self._window) > 2 * self._size:  # dead entries of retried recipients: O(1) amortised
            self._window = deque(entry for entry in self._window if entry[4])

    def _drop(self, entry: list) -> None:  # type: ignore[type-arg]
        """Take one outcome out of the counts (it left the window, or its recipient answered again)."""
        entry[4] = False
        self._hard -= entry[0]
        counts = self._domains[entry[2]]
        counts[0] -= 1
        counts[1] -= entry[1]
        if counts[0] == 0:
            del self._domains[entry[2]]  # the dict never holds more domains than the window

    def _hard_trip(self, code: int | None, text: str | None) -> str | None:
        t = self.thresholds
        n = len(self._latest)
        if t.hard <= 0 or n < t.minimum or self._hard * 100 <= t.hard * n:
            return None
        return (f"breaker: {self._hard:,} of the last {n:,} outcomes failed permanently "
                f"({self._hard * 100 / n:.1f}%, more than {percent(t.hard)}); last: {_reply(code, text)}")

    def _soft_trip(self, domain: str, code: int | None, text: str | None) -> str | None:
        t = self.thresholds
        outcomes, deferrals = self._domains[domain]
        if t.soft <= 0 or outcomes < t.minimum or deferrals * 100 <= t.soft * outcomes:
            return None
        return (f"breaker: {deferrals:,} of the last {outcomes:,} outcomes for {domain} were deferred "
                f"({deferrals * 100 / outcomes:.1f}%, more than {percent(t.soft)}); last: {_reply(code, text)}")

    def judge(self) -> str | None:
        """The window as it stands (rebuilt from the ledger when a sender starts a turn): the
        reason when it is over a threshold already, else None. A sender killed between deciding
        a trip and writing it leaves the mailing current with such a window: the next sender
        stops it before sending anything more (waiting for a next failure could be never, as a
        message sent never trips it)."""
        before = "(outcomes recorded before this sender started)"
        reason = self._hard_trip(None, before) if self._hard else None
        for domain, (_outcomes, deferrals) in list(self._domains.items()):
            if reason is not None:
                break
            reason = self._soft_trip(domain, None, before) if deferrals else None
        self.tripped = reason
        return reason

    def replay(self, outcomes: list[tuple[str, int | None, str, str | None]]) -> None:
        """Fill the window from the ledger (oldest first) without tripping: a window that is
        already over a threshold trips on the next outcome of this run."""
        for state, _code, address, _text in outcomes[-self.thresholds.window:]:
            kind = RecipientState(state)
            if kind is RecipientState.DEFERRED and _code is None:
                continue  # no server answered it (pacing put it back, or no connection): not the domain's word
            deferred = kind is RecipientState.DEFERRED and not asks_to_slow_down(_code, _text)
            self._push(kind is RecipientState.FAILED, deferred, domain_of(address), address.lower())


class Breakers:
    """The sender's breakers, one per mailing it sends, kept across its turns (a mailing waiting
    for retries takes and yields its turn every few seconds; the window is read from the ledger
    once per sender, not per turn)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._kept: OrderedDict[int, tuple[tuple[object, ...], Breaker]] = OrderedDict()

    async def for_mailing(self, store: Store, mailing: Mailing, *, canary_minimum: int | None = None) -> Breaker:
        """The mailing's breaker: the one kept, or one rebuilt from the ledger when the mailing
        (its thresholds, its fresh start after a trip, its canary) changed or none is kept.

        With `canary_minimum`, the window is the canary sample's outcomes, judged from that many."""
        thresholds = Thresholds.of(self.settings, mailing)
        if canary_minimum is not None:
            thresholds = Thresholds(thresholds.window, thresholds.hard, thresholds.soft, canary_minimum)
        key = (thresholds, mailing.breaker_since, canary_minimum is not None)
        kept = self._kept.get(mailing.id)
        if kept is not None and kept[0] == key:
            self._kept.move_to_end(mailing.id)
            return kept[1]
        breaker = Breaker(thresholds)
        breaker.replay(await store.recent_outcomes(
            mailing.id, since=mailing.breaker_since, limit=thresholds.window, canary_only=canary_minimum is not None
        ))
        self._kept[mailing.id] = (key, breaker)
        if len(self._kept) > KEPT_BREAKERS:
            self._kept.popitem(last=False)  # memory stays bounded however many mailings a sender sends
        return breaker

    def forget(self, mailing_id: int) -> None:
        self._kept.pop(mailing_id, None)



_SHORT = re.compile(r"\(([0-9.]+%), more than")
_DOMAIN = re.compile(r"outcomes for (\S+) were deferred")


def short_reason(reason: str) -> str:
    """What tripped, in a few words for a table row: "6.2% failed", "slow.example 30.0% deferred"."""
    share = _SHORT.search(reason)
    if share is None:
        return "breaker"
    domain = _DOMAIN.search(reason)
    # safe(): a reason stored by an older version (or edited by hand) may still hold anything.
    return safe(f"{domain.group(1)} {share.group(1)} deferred" if domain else f"{share.group(1)} failed")
