"""Pacing by destination: domain groups, their live limits, throttling and figures.

A domain group ([domains.NAME] in the TOML file, core/config.py) names domains ("gmail.com",
"*.yahoo.com" for subdomains) and gives them their own limits: messages in flight at once
(`connections`), messages per second (`rate`) and a sliding hourly budget (`per_hour`). Every
other domain is in the group "default" ([domains.default] sets its limits; none by default).
Limits nest (DESIGN.md, Pacing): the sender's and the relays' limits still apply on top.

How it works in the sender: every claimed row goes through `DomainPacer.admit`. A row whose group
has room now goes on the work queue at once (the common case: one dict lookup); a row whose group
is at its limit is parked in that group's queue while rows of other domains go on, so one slow
domain never blocks the head mailing (no head-of-line blocking). Parked rows are let out when the
group's rate allows or one of its messages finishes. Queue order between mailings is untouched:
this only orders rows inside the head mailing.

A throttle reply to a recipient of a named group (smtp_replies.slows_domain: 421, rate wording,
4.7.x, or a burst of 4xx) slows that group only: its rate is halved and comes back by
RECOVERY_STEP of its configured rate per RECOVERY_SECONDS without another throttle reply. The
relay is not slowed (Sender._note_throttling is the relay-level counterpart, for replies that
are not one named domain's).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .config import DEFAULT_GROUP, DomainGroupSpec, normal_domain
from .progress import RateMeter
from .ratelimit import RateLimiter
from .smtp_replies import RECIPIENT_STAGES, Outcome as ReplyOutcome, ReplyBurst, Verdict, is_temporary_refusal, slows_domain

RECOVERY_SECONDS = 60.0  # a throttled group gains RECOVERY_STEP of its rate per minute of clean replies
RECOVERY_STEP = 0.10
LEAST_FACTOR = 1 / 64  # halving stops here (a group is slowed, never stopped, by throttling)
HALVE_SPACING = 2.0  # seconds: throttle replies closer than this are one pushback (one halving)
UNLIMITED_FLOOR = 1.0  # a throttled group without a rate of its own halves at least from this
PARK_LIMIT = 20_000  # rows parked in all groups before the sender stops claiming more
CACHE_LIMIT = 100_000  # remembered domain -> group answers (cleared when full)

POSTPONE_AFTER = 30.0  # seconds: rows of a group whose hourly budget frees later than this leave memory
# ...and come back after at most this long, so a live change of the group's limits reaches them
# within minutes, not when an hourly budget or a weeks-long backlog would have let them go.
POSTPONE_MAX = 300.0

J = TypeVar("J")
log = logging.getLogger("mailtower.sender")


class GroupMode:
    OK = "ok"
    THROTTLED = "throttled"
    PAUSED = "paused"  # its hourly budget is used up: nothing goes to it until the window frees


@dataclass(eq=False)
class DomainGroup(Generic[J]):
    """One group's live state in the sender."""

    spec: DomainGroupSpec
    limiter: RateLimiter
    connections: int = 0  # cap on messages in flight (0: none of its own)
    rate: float = 0.0  # configured messages per second (live value; 0: none of its own)
    per_hour: float = 0.0
    factor: float = 1.0  # < 1 while throttled
    base: float = 0.0  # the rate halved from (its configured rate, or its measured one)
    changed_at: float = 0.0  # monotonic: the last halving or recovery step
    throttled_since: float = 0.0  # wall clock; 0 = not throttled
    reason: str = ""  # the reply that throttled it
    last_reply: str = ""  # the last reply that was not a plain acceptance
    in_flight: int = 0  # rows on the work queue or being sent
    parked: deque[J] = field(default_factory=deque)
    sent: int = 0  # outcomes of the head mailing in this run
    deferred: int = 0
    failed: int = 0
    meter: RateMeter = field(default_factory=RateMeter)
    burst: ReplyBurst = field(default_factory=ReplyBurst)
    open: bool = True  # no limit of its own and not throttled: admit without asking the limiter
    postponed_until: float = 0.0  # wall clock: its rows wait in the ledger for its hourly budget until then
    postponed: int = 0  # rows of the head mailing put off to the ledger (DomainPacer.postpone) in this run
    backlog_until: float = 0.0  # wall clock: the last of its rows put off at the park cap is due then

    @property
    def name(self) -> str:
        return self.spec.name

    def configure(self, connections: int, rate: float, per_hour: float) -> None:
        self.connections, self.rate, self.per_hour = int(connections), float(rate), float(per_hour)
        self.limiter.set_per_hour(self.per_hour)
        self._set_rate()

    def _set_rate(self) -> None:
        if self.factor >= 1.0:
            self.factor = 1.0
            self.limiter.configured = self.rate
        else:
            self.limiter.configured = max((self.rate or self.base) * self.factor, 0.01)
        self.open = self.connections == 0 and self.limiter.idle

    def has_room(self) -> bool:
        return not self.connections or self.in_flight < self.connections

    def wait(self) -> float:
        """0.0 when a row may go now (its slot is taken), else seconds until worth asking again."""
        if not self.has_room():
            return -1.0  # waits for one of its messages to finish, not for the clock
        if self.limiter.idle:
            return 0.0
        return self.limiter.poll()

    # ---- throttling ---------------------------------------------------------------------

    def throttle(self, reason: str, now: float) -> bool:
        """Halve the rate (once per pushback); True when this reply started the throttling."""
        started = not self.throttled_since
        if started:
            self.throttled_since = time.time()
        self.reason = reason
        if self.factor < 1.0 and now - self.changed_at < HALVE_SPACING:
            return started
        if self.factor >= 1.0:
            self.base = self.rate or max(self.meter.rate(), UNLIMITED_FLOOR)
        self.factor = max(self.factor / 2, LEAST_FACTOR)
        self.changed_at = now
        self._set_rate()
        return started

    def recover(self, now: float) -> None:
        """Another RECOVERY_STEP after each RECOVERY_SECONDS without a throttle reply."""
        if self.factor >= 1.0 or now - self.changed_at < RECOVERY_SECONDS:
            return
        self.factor = min(1.0, self.factor + RECOVERY_STEP)
        self.changed_at = now
        if self.factor >= 1.0:
            self.throttled_since = 0.0
            self.reason = ""
        self._set_rate()

    def mode(self) -> str:
        if self.per_hour and (self.parked or self.postponed_until > time.time()) and self.limiter.budget_used_up():
            return GroupMode.PAUSED
        return GroupMode.THROTTLED if self.factor < 1.0 else GroupMode.OK

    def figures(self) -> dict[str, Any]:
        """The group in the sender's status document (sender_status.SenderStatus.domains)."""
        mode = self.mode()
        reason = self.reason if mode == GroupMode.THROTTLED else ""
        if mode == GroupMode.PAUSED:
            reason = f"its hourly budget of {self.per_hour:g} is used up"
        return {
            "group": self.name,
            "sent": self.sent,
            "deferred": self.deferred,
            "failed": self.failed,
            "in_flight": self.in_flight,
            "waiting": len(self.parked),
            "postponed": self.postponed,
            "rate": round(self.meter.rate(), 3),
            "limit_rate": round(self.limiter.configured, 3),
            "connections": self.connections,
            "configured_rate": self.rate,
            "per_hour": self.per_hour,
            "state": mode,
            "reason": reason,
            "since": self.throttled_since or None,
            "last_reply": self.last_reply,
        }


class DomainPacer(Generic[J]):
    """The sender's domain groups: which group a row is in, whether it may go now, and what
    each group's replies do to it. Plain state, driven by the sender's feeder and workers."""

    def __init__(self, specs: Iterable[DomainGroupSpec]) -> None:
        specs = list(specs)
        default = next((s for s in specs if s.name == DEFAULT_GROUP), DomainGroupSpec(DEFAULT_GROUP))
        self.groups: dict[str, DomainGroup[J]] = {}
        for spec in [*[s for s in specs if s.name != DEFAULT_GROUP], default]:
            group: DomainGroup[J] = DomainGroup(spec, RateLimiter(spec.rate, floor=UNLIMITED_FLOOR))
            group.configure(spec.connections, spec.rate, spec.per_hour)
            self.groups[spec.name] = group
        self.default = self.groups[DEFAULT_GROUP]
        self._exact: dict[str, DomainGroup[J]] = {}
        self._wildcards: dict[str, DomainGroup[J]] = {}
        for group in self.groups.values():
            for entry in group.spec.match:
                if entry.startswith("*."):
                    self._wildcards[entry[2:]] = group
                else:
                    self._exact[entry] = group
        self._named = bool(self._exact or self._wildcards)
        self._cache: dict[str, DomainGroup[J]] = {}
        self._waiting: set[DomainGroup[J]] = set()  # groups with parked rows
        self.parked = 0
        self.mailing_id: int | None = None

    # ---- which group --------------------------------------------------------------------

    def group_of(self, email: str) -> DomainGroup[J]:
        """The group of an address's domain (cached per domain: a dict lookup per row)."""
        if not self._named:
            return self.default
        domain = email[email.rfind("@") + 1:]
        group = self._cache.get(domain)
        if group is None:
            group = self._lookup(domain)
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            self._cache[domain] = group
        return group

    def _lookup(self, domain: str) -> DomainGroup[J]:
        name = normal_domain(domain) or domain.lower()
        group = self._exact.get(name)
        if group is not None:
            return group
        parts = name.split(".")
        for index in range(1, len(parts)):
            group = self._wildcards.get(".".join(parts[index:]))
            if group is not None:
                return group
        return self.default

    # ---- admitting rows -----------------------------------------------------------------

    def start(self, mailing_id: int) -> None:
        """A new head mailing: its figures start at zero; limits and throttling carry over."""
        self.mailing_id = mailing_id
        for group in self.groups.values():
            group.parked.clear()
            group.in_flight = group.sent = group.deferred = group.failed = group.postponed = 0
        self._waiting.clear()
        self.parked = 0

    def admit(self, group: DomainGroup[J], job: J, enqueue: Callable[[J], None]) -> None:
        """Send `job` now if its group has room, else park it with its group."""
        if group.open or (not group.parked and group.wait() == 0.0):
            group.in_flight += 1
            enqueue(job)
            return
        group.parked.append(job)
        self._waiting.add(group)
        self.parked += 1
        if self.parked == PARK_LIMIT:  # said once each time the cap is reached, not per row
            log.warning("%s rows wait for their domain group's limits (most in group %s: %s)",
                        f"{PARK_LIMIT:,}", self.holding(), self.describe_limits(self.holding()))

    def holding(self) -> str:
        """The group with the most parked rows (the one that holds the park cap)."""
        return max(self._waiting, key=lambda g: len(g.parked)).name if self._waiting else ""

    def describe_limits(self, name: str) -> str:
        group = self.groups.get(name)
        if group is None:
            return ""
        parts = [f"rate {group.limiter.configured:g}/s" if group.limiter.configured else "",
                 f"connections {group.connections}" if group.connections else "",
                 f"per hour {group.per_hour:g}" if group.per_hour else ""]
        return ", ".join(p for p in parts if p) or "no limits of its own"

    def postpone(self) -> list[tuple[J, float, str]]:
        """Parked rows that would wait long, as (job, when to try again as wall-clock time, why):
        the sender writes them back deferred to that time without counting an attempt, so a slow
        group neither holds rows in memory nor, at the park cap, the other domains' rows."""
        postponed = self._postpone_used_up_budgets()
        if self.parked >= PARK_LIMIT:
            postponed += self._postpone_backlog(max(self._waiting, key=lambda g: len(g.parked)))
        return postponed

    def _postpone_used_up_budgets(self) -> list[tuple[J, float, str]]:
        """Groups whose hourly budget frees only in more than POSTPONE_AFTER seconds: all their
        parked rows, until it frees. A used-up budget then does not keep the head mailing's turn
        either: the queue goes on to the next mailing."""
        postponed: list[tuple[J, float, str]] = []
        for group in list(self._waiting):
            frees_in = group.limiter.budget_frees_in() if group.per_hour else 0.0
            if frees_in <= POSTPONE_AFTER:
                continue
            at = time.time() + min(frees_in, POSTPONE_MAX)
            why = f"domain group {group.name}: its hourly budget of {group.per_hour:g} is used up"
            log.info("%s; %s recipients wait in the ledger until %s", why, f"{len(group.parked):,}",
                     time.strftime("%H:%M:%S", time.localtime(at)))
            self.parked -= len(group.parked)
            group.postponed += len(group.parked)
            postponed.extend((job, at, why) for job in group.parked)
            group.parked.clear()
            group.postponed_until = at
            self._waiting.discard(group)
        return postponed

    def _postpone_backlog(self, group: DomainGroup[J]) -> list[tuple[J, float, str]]:
        """The park cap is reached and `group` holds the most: the rows it cannot send within
        POSTPONE_AFTER seconds at its rate of now wait in the ledger, spread at that rate, so
        claiming goes on for the other domains. A group capped only by connections has no rate
        to spread by: its rows stay (the log named it when the cap was reached)."""
        rate = group.limiter.configured
        keep = max(1, int(rate * POSTPONE_AFTER))
        if rate <= 0 or len(group.parked) <= keep:
            return []
        later = [group.parked.pop() for _ in range(len(group.parked) - keep)][::-1]
        now = time.time()
        start = max(now + keep / rate, min(group.backlog_until, now + POSTPONE_MAX))
        last = min(start + len(later) / rate, now + POSTPONE_MAX)
        group.backlog_until = last
        self.parked -= len(later)
        group.postponed += len(later)
        why = f"domain group {group.name}: more than it sends in {POSTPONE_AFTER:g} s at {rate:g}/s"
        log.info("%s; %s recipients wait in the ledger, the last until %s", why, f"{len(later):,}",
                 time.strftime("%H:%M:%S", time.localtime(last)))
        return [(job, min(start + index / rate, last), why) for index, job in enumerate(later)]

    def release(self, enqueue: Callable[[J], None]) -> float | None:
        """Let out every parked row whose group has room now; the seconds until a parked row's
        rate allows it (None: nothing waits for the clock)."""
        soonest: float | None = None
        now = time.monotonic()
        for group in list(self._waiting):
            group.recover(now)
            while group.parked:
                wait = group.wait()
                if wait != 0.0:
                    if wait > 0 and (soonest is None or wait < soonest):
                        soonest = wait
                    break
                group.in_flight += 1
                self.parked -= 1
                enqueue(group.parked.popleft())
            if not group.parked:
                self._waiting.discard(group)
        return soonest

    def drain(self) -> list[J]:
        """The head halts: every parked row leaves (the sender lets them go back to pending)."""
        jobs = [job for group in self._waiting for job in group.parked]
        for group in self._waiting:
            group.parked.clear()
        self._waiting.clear()
        self.parked = 0
        return jobs

    def tick(self) -> None:
        """Recovery of throttled groups (about twice a second from the feeder)."""
        now = time.monotonic()
        for group in self.groups.values():
            if group.factor < 1.0:
                group.recover(now)

    # ---- outcomes -----------------------------------------------------------------------

    def done(self, group: DomainGroup[J], state: str) -> None:
        """One of the group's rows has its outcome (`state`: sent, deferred, failed, pending)."""
        group.in_flight -= 1
        if state == "sent":
            group.sent += 1
            group.meter.add()
        elif state == "deferred":
            group.deferred += 1
        elif state == "failed":
            group.failed += 1

    def note_reply(self, group: DomainGroup[J], verdict: Verdict) -> bool:
        """A reply to one of the group's recipients. True when it is the group's to judge (a named
        group, a reply to the recipient's commands): then the relay is not slowed by it."""
        if group is self.default or verdict.code is None or verdict.stage not in RECIPIENT_STAGES:
            return False
        if verdict.outcome is ReplyOutcome.SENT:
            group.burst.note(False)
            return True
        said = f"{verdict.code} {verdict.text}"[:MAX_SAID]  # kept in the status document every second
        group.last_reply = said
        burst = group.burst.note(is_temporary_refusal(verdict, RECIPIENT_STAGES))
        if slows_domain(verdict):
            group.throttle(said, time.monotonic())
        elif burst:
            group.throttle(f"a burst of temporary refusals (last: {said})", time.monotonic())
        return True

    # ---- live limits and figures --------------------------------------------------------

    def apply_limits(self, overrides: Mapping[str, Mapping[str, float]]) -> None:
        """The operator's live values (limits.read_limits: stored per group) over the configuration's."""
        for name, group in self.groups.items():
            given = overrides.get(name, {})
            spec = group.spec
            group.configure(
                int(given.get("connections", spec.connections)),
                float(given.get("rate", spec.rate)),
                float(given.get("per_hour", spec.per_hour)),
            )

    def throttled(self) -> int:
        return sum(1 for g in self.groups.values() if g.factor < 1.0)

    def document(self) -> dict[str, Any]:
        """Per group figures for the status document (the head mailing's, this run)."""
        return {
            "mailing": self.mailing_id,
            "groups": [group.figures() for group in self.groups.values()],
        }



# ---- the per-group report: `mailtower domains`, the dashboard's Details -------------------------


@dataclass(frozen=True, slots=True)
class GroupReport:
    """One domain group of one mailing: counts from the ledger (exact, every run), live figures
    from the sender when it is sending this mailing now."""

    group: str
    domains: int  # how many domain entries it matches (0: the default group, every other domain)
    sent: int
    deferred: int
    failed: int
    remaining: int  # not yet received, not failed (pending, sending, deferred)
    in_flight: int
    waiting: int  # parked: held back by the group's own limits
    rate: float  # messages per second now
    limit_rate: float  # the rate it may go at now (halved while throttled; 0 = no limit of its own)
    connections: int
    per_hour: float
    state: str  # ok | throttled | paused | idle (not sending this mailing now)
    reason: str
    last_reply: str

    def as_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]


def group_reports(
    specs: Iterable[DomainGroupSpec],
    counts: Iterable[tuple[str, str, int]],
    live: Mapping[str, Any],
    mailing_id: int,
    limits: Mapping[str, Mapping[str, float]] | None = None,
) -> list[GroupReport]:
    """The groups of one mailing: `counts` from Store.domain_state_counts, `live` the sender's
    domains document (used only when it is about this mailing), `limits` the stored live values."""
    pacer: DomainPacer[object] = DomainPacer(specs)
    pacer.apply_limits(limits or {})
    tally: dict[str, dict[str, int]] = {name: {} for name in pacer.groups}
    for domain, state, n in counts:
        states = tally[pacer.group_of("@" + domain).name]
        states[state] = states.get(state, 0) + n
    figures, this_mailing = _live_figures(live, mailing_id)
    reports = []
    for name, group in pacer.groups.items():
        states, now = tally[name], figures.get(name, {})
        if not this_mailing:
            # The sender sends another mailing: its counts are not this one's, but a group it
            # finds throttled or paused is so for every mailing (that is why this one yielded).
            now = {key: now[key] for key in ("state", "reason", "limit_rate") if key in now} \
                if _state(now.get("state")) in (GroupMode.THROTTLED, GroupMode.PAUSED) else {}
        reports.append(GroupReport(
            group=name,
            domains=len(group.spec.match),
            sent=states.get("sent", 0),
            deferred=states.get("deferred", 0),
            failed=states.get("failed", 0),
            remaining=sum(states.get(s, 0) for s in ("pending", "sending", "deferred")),
            in_flight=_count(now.get("in_flight")),
            waiting=_count(now.get("waiting")),
            rate=_amount(now.get("rate")),
            limit_rate=_amount(now.get("limit_rate", group.limiter.configured)),
            connections=group.connections,
            per_hour=group.per_hour,
            state=_state(now.get("state")) if now else "idle",
            reason=_said(now.get("reason")),
            last_reply=_said(now.get("last_reply")),
        ))
    return reports


MAX_SAID = 300  # characters of a reply or reason kept for display (a relay may say a lot)
_STATES = frozenset({GroupMode.OK, GroupMode.THROTTLED, GroupMode.PAUSED})


def _live_figures(live: Mapping[str, Any], mailing_id: int) -> tuple[dict[str, Mapping[str, Any]], bool]:
    """The sender's per-group figures by group name, and whether the document is about
    `mailing_id`. It comes from another process through the database: anything in it may be
    malformed."""
    head = live.get("mailing")
    groups = live.get("groups")
    if not isinstance(groups, list):
        return {}, False
    figures = {g["group"]: g for g in groups if isinstance(g, dict) and isinstance(g.get("group"), str)}
    return figures, not isinstance(head, bool) and head == mailing_id


def _state(raw: object) -> str:
    return raw if isinstance(raw, str) and raw in _STATES else "idle"


def _said(raw: object) -> str:
    text = raw if isinstance(raw, str) else ""
    return text if len(text) <= MAX_SAID else text[:MAX_SAID] + "..."


def throttled_groups(live: Mapping[str, Any], state: str = GroupMode.THROTTLED) -> int:
    """How many groups a sender's domains document says are throttled (or in `state`)."""
    groups = live.get("groups")
    if not isinstance(groups, list):
        return 0
    # Each name once: the document comes from another process and may repeat an entry.
    return len({g.get("group") for g in groups
                if isinstance(g, dict) and isinstance(g.get("group"), str) and g.get("state") == state})


def domain_counts(live: Mapping[str, Any]) -> dict[str, int]:
    """The header's figures (tui/header.HeaderInfo): groups throttled and groups paused."""
    return {"domains_throttled": throttled_groups(live), "domains_paused": throttled_groups(live, GroupMode.PAUSED)}


def _count(raw: object) -> int:
    return raw if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < 10**12 else 0


def _amount(raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        return 0.0
    value = float(raw)
    return value if 0 <= value < 1e12 else 0.0  # NaN fails both comparisons
