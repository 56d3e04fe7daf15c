"""The SMTP relays a sender spreads its connections over, and the health of each.

One relay is the usual case (the MAILTOWER_SMTP_* settings). A TOML config may list several
under [[relays]], each with its own host, port, TLS mode, credentials, connections and rate;
a relay that fails is rested with a growing backoff while the others carry on.

A relay is in one of these conditions (`RelayStatus.state`):
- up / idle: usable (idle: nothing accepted yet);
- resting: it could not be reached; one connection tries again after a short growing backoff
  (1 s doubling to connect_backoff_max);
- paused: it refuses us (login refused, sender refused, session refused): no connection tries
  again until an operator resumes it (`mailtower resume`), the sender restarts (with other
  settings), or a long growing interval passes (PAUSE_FIRST doubling to PAUSE_MAX);
- throttled: it asked us to slow down (a throttling reply, or a burst of 4xx at MAIL/RCPT): its
  rate is halved (core/ratelimit.py recovers it) and it is not used for a short growing cool-down
  (THROTTLE_FIRST doubling to THROTTLE_MAX); cleared by the next accepted message.

While a relay is not known to work (at start, after trouble, after a resume), only ONE of its
connections may connect and log in at a time (`probing`); the others wait for its result, so a
refusing relay sees one connection (and at most one login) per attempt, not one per connection.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .config import Settings
from .progress import RateMeter
from .ratelimit import RateLimiter
from .smtp_client import Relay, SmtpConnection
from .smtp_replies import ReplyBurst


PAUSE_FIRST = 15 * 60.0  # a refused login is tried again by itself after this long...
PAUSE_MAX = 6 * 3600.0  # ...doubling each time up to this
THROTTLE_FIRST = 1.0  # cool-down after a throttling reply...
THROTTLE_MAX = 60.0  # ...doubling while the throttling goes on, up to this


@dataclass(frozen=True, slots=True)
class RelayStatus:
    """One relay as the dashboard and `status --json` show it."""

    name: str
    state: str  # up | idle | resting | paused | throttled
    reason: str
    rate: float
    connections: int
    since: float | None = None  # wall clock: when the trouble (pause, rest, throttling) began
    next_try: float | None = None  # wall clock: when this relay is used again (None: unknown)
    mailing_id: int | None = None  # the mailing that was being sent when the trouble began


def _wall(monotonic_at: float) -> float:
    return time.time() + (monotonic_at - time.monotonic())


@dataclass(eq=False)
class RelayState:
    """One relay while the sender runs: its connections, pacing, back-off and health."""

    name: str
    relay: Relay
    connections: int
    limiter: RateLimiter
    backoff_max: float
    meter: RateMeter = field(default_factory=RateMeter)
    rested_until: float = 0.0
    backoff: float = 1.0
    reason: str = ""
    used: bool = False
    trouble_since: float = 0.0  # wall clock of the first failure since the relay last worked
    mailing_id: int | None = None
    # paused: the server refuses us
    paused_until: float = 0.0  # monotonic
    paused_at: float = 0.0  # wall clock; resume requests made after it apply
    pause_reason: str = ""
    pause_length: float = PAUSE_FIRST
    # one connection at a time finds out whether the relay works
    healthy: bool = False
    probing: bool = False
    # set when that connection has its answer: the others wait on it, not on a timer
    probe_over: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    # throttled: the server asks us to slow down
    throttled_until: float = 0.0  # monotonic end of the cool-down
    throttled_since: float = 0.0  # wall clock; 0 = not throttled
    throttle_reason: str = ""
    throttle_backoff: float = THROTTLE_FIRST
    retry_at: float = 0.0  # wall clock: the earliest retry of a recipient deferred while throttled
    burst: ReplyBurst = field(default_factory=ReplyBurst)  # 4xx at MAIL/RCPT, whatever the wording
    # Seconds a final dot typically waits for its reply here (a moving average): a relay that
    # scans content answers in seconds, and a job sent ahead waits that long before it is overdue.
    dot_wait: float = 0.0
    # The connections of this relay that have connected at least once (to count the live ones).
    sessions: weakref.WeakSet[SmtpConnection] = field(default_factory=weakref.WeakSet)

    def note_dot_wait(self, seconds: float) -> None:
        self.dot_wait = seconds if not self.dot_wait else 0.8 * self.dot_wait + 0.2 * seconds

    def live_connections(self, besides: SmtpConnection) -> int:
        """How many other connections of this relay are open and usable now."""
        # session_open, not connected: a connection reading its replies is still working.
        return sum(1 for conn in self.sessions if conn is not besides and conn.session_open)

    @property
    def resting(self) -> bool:
        return time.monotonic() < self.rested_until

    @property
    def paused(self) -> bool:
        return time.monotonic() < self.paused_until

    @property
    def cooling(self) -> bool:
        return time.monotonic() < self.throttled_until

    @property
    def unavailable(self) -> bool:
        """No connection of this relay may start a transaction now."""
        return self.paused or self.resting or self.cooling

    @property
    def available_at(self) -> float:
        """Monotonic time from which the relay may be used again."""
        return max(self.paused_until, self.rested_until, self.throttled_until)

    def rest(self, reason: str, mailing_id: int | None = None) -> None:
        """Hold this relay off for a while; repeated failures wait longer (up to backoff_max)."""
        self.reason = reason
        self.healthy = False
        self._trouble(mailing_id)
        if self.resting:
            return  # its other connections already reported this failure
        self.rested_until = time.monotonic() + self.backoff
        self.backoff = min(self.backoff * 2, self.backoff_max)

    def pause(self, reason: str, mailing_id: int | None = None) -> None:
        """The server refuses us: no connection tries again before `pause_length` has passed
        (growing each time) or an operator resumes the relay."""
        self.healthy = False
        self._trouble(mailing_id)
        if self.paused:
            if not self.pause_reason:
                self.pause_reason = self.reason = reason  # the pause must always say why
            return
        self.pause_reason = reason
        self.reason = reason
        self.paused_at = time.time()
        self.paused_until = time.monotonic() + self.pause_length
        self.pause_length = min(self.pause_length * 2, PAUSE_MAX)

    def resume(self) -> None:
        """An operator asked to try again: one connection probes at once."""
        self.paused_until = self.rested_until = self.throttled_until = 0.0
        self.backoff = 1.0
        self.healthy = False

    def throttle(self, reason: str, measured_rate: float, mailing_id: int | None = None) -> None:
        """Slow down: halve the rate (it recovers in RateLimiter) and cool down for a while;
        throttling again during or right after a cool-down doubles the next one."""
        self.limiter.throttle(measured_rate)
        self.throttle_reason = reason
        if not self.throttled_since:
            self.throttled_since = time.time()
            self.mailing_id = mailing_id
        if self.cooling:
            return  # the same burst: its other connections reported it too
        self.throttled_until = time.monotonic() + self.throttle_backoff
        self.throttle_backoff = min(self.throttle_backoff * 2, THROTTLE_MAX)

    def transaction(self, temporary: bool) -> bool:
        """Note one reply (`temporary`: a 4xx at MAIL/RCPT); True when the recent ones make a
        burst (smtp_replies.ReplyBurst: the same rule as a domain group's)."""
        return self.burst.note(temporary)

    def deferred_until(self, wall: float | None) -> None:
        """A recipient was deferred while throttled: remember the earliest retry for the status."""
        if wall and self.throttled_since and (not self.retry_at or wall < self.retry_at or self.retry_at < time.time()):
            self.retry_at = wall

    def connected(self) -> None:
        """A connection (and its login) succeeded: the relay works; others may connect too.

        Not while paused: a session that opened during a pause (its handshake began before it)
        says nothing about what paused the relay (a refused MAIL FROM, a quota), and clearing the
        reason then left the pause without one ("paused: " in the status)."""
        if self.paused:
            return
        self.healthy = True
        if self.pause_reason:
            self.pause_reason = ""
            self.pause_length = PAUSE_FIRST
        if not self.resting and not self.throttled_since:
            self.reason = ""

    def accepted(self) -> None:
        self.used = True
        self.meter.add()
        self.healthy = True
        if self.reason:
            self.reason = ""
            self.backoff = 1.0
        self.pause_reason = ""
        self.pause_length = PAUSE_FIRST
        self.trouble_since = 0.0
        if self.throttled_since:
            self.throttled_since = 0.0
            self.throttle_reason = ""
            self.throttle_backoff = THROTTLE_FIRST
            self.retry_at = 0.0

    def _trouble(self, mailing_id: int | None) -> None:
        if not self.trouble_since:
            self.trouble_since = time.time()
            self.mailing_id = mailing_id

    def status(self) -> RelayStatus:
        """What the dashboard and `status --json` show; the worst condition wins."""
        rate, conns = self.meter.rate(), self.connections
        if self.paused:
            return RelayStatus(self.name, "paused", self.pause_reason or self.reason, rate, conns,
                               self.trouble_since or self.paused_at, _wall(self.paused_until), self.mailing_id)
        if self.resting or (self.reason and not self.throttled_since):
            next_try = _wall(self.rested_until) if self.resting else time.time()
            return RelayStatus(self.name, "resting", self.reason, rate, conns,
                               self.trouble_since or None, next_try, self.mailing_id)
        if self.throttled_since:
            # Cooling: the relay is used again when the cool-down ends. After it, nothing was
            # accepted yet: what waits is the recipients deferred by the throttling.
            now = time.time()
            next_try = _wall(self.throttled_until) if self.cooling else max(self.retry_at, now)
            return RelayStatus(self.name, "throttled", self.throttle_reason, rate, conns,
                               self.throttled_since, next_try, self.mailing_id)
        return RelayStatus(self.name, "up" if self.used else "idle", "", rate, conns)


def relays_from_settings(settings: Settings) -> list[RelayState]:
    base = Relay.from_settings(settings)
    if not settings.relays:
        return [
            RelayState(
                name=f"{base.host}:{base.port}",
                relay=base,
                connections=settings.connections,
                limiter=RateLimiter(0.0, floor=10.0 * settings.connections),
                backoff_max=settings.connect_backoff_max,
            )
        ]
    pool = []
    for spec in settings.relays:
        relay = Relay(
            host=spec.host,
            port=spec.port,
            tls=spec.tls,
            user=spec.user,
            password=spec.password,
            verify=spec.verify,
            ca_file=spec.ca_file,
            timeout=base.timeout,
            data_timeout=base.data_timeout,
            helo_name=base.helo_name,
        )
        pool.append(
            RelayState(
                name=spec.name or f"{spec.host}:{spec.port}",
                relay=relay,
                connections=spec.connections,
                limiter=RateLimiter(spec.rate, floor=10.0 * spec.connections),
                backoff_max=settings.connect_backoff_max,
            )
        )
    return pool


def _iso(wall: object) -> str | None:
    """ISO 8601 UTC of a wall-clock time from the meta table; None for anything that is not one."""
    if isinstance(wall, bool) or not isinstance(wall, (int, float)) or not 0 < wall < 1e11:  # NaN fails too
        return None
    return datetime.fromtimestamp(float(wall), timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _times(entries: list[dict[str, object]], key: str) -> list[float]:
    return [float(v) for e in entries if isinstance(v := e.get(key), (int, float)) and _iso(v) is not None]


def held_back(doc: dict[str, object], mailing_id: int, sending: bool) -> dict[str, dict[str, object] | None]:
    """The `waiting` and `throttled` entries of one current mailing in `status --json`, from the
    sender's meta `sender_waiting` (Sender.waiting_document). A relay's trouble concerns the
    mailing that was sending when it began, and whichever mailing is sending now.

    waiting:   {"state": "paused"|"resting", "reason", "since", "next_try", "relays": [names]}
               when no relay can take a message now (nothing goes out until next_try or a resume);
    throttled: {"reason", "since", "next_try", "relay"} when a relay asked us to slow down;
    times are ISO 8601 UTC ("...Z"); next_try is when the sender tries again (an estimate)."""
    result: dict[str, dict[str, object] | None] = {"waiting": None, "throttled": None}
    relays = doc.get("relays")
    entries = [e for e in relays if isinstance(e, dict)] if isinstance(relays, list) else []
    mine = [e for e in entries if e.get("mailing") == mailing_id or sending]
    blocked = [e for e in mine if e.get("state") in ("paused", "resting")]
    if doc.get("all_unavailable") and blocked:
        result["waiting"] = {
            "state": "paused" if any(e.get("state") == "paused" for e in blocked) else "resting",
            "reason": "; ".join(str(e.get("reason", "")) for e in blocked),
            "since": _iso(min(_times(blocked, "since"), default=None)),
            "next_try": _iso(min(_times(blocked, "next_try"), default=None)),
            "relays": [str(e.get("relay", "")) for e in blocked],
        }
    throttled = next((e for e in mine if e.get("state") == "throttled"), None)
    if throttled is not None:
        result["throttled"] = {
            "reason": str(throttled.get("reason", "")),
            "since": _iso(throttled.get("since")),
            "next_try": _iso(throttled.get("next_try")),
            "relay": str(throttled.get("relay", "")),
        }
    return result
