"""The sender's status, as one process tells the others (the meta table is the wire).

The sender writes it about once a second (`write_status`); `mailtower status --json`, `mailtower
resume` and a dashboard monitoring another process read it (`read_status`). The meta keys and
their text formats are a contract with processes of other versions: they do not change here.

One staleness rule for every reader: `SenderStatus.fresh(now)` (a heartbeat at most
HEARTBEAT_STALE seconds old, and not absurdly far ahead of the clock) and `SenderStatus.alive(now)` (fresh, and not stopped).
Whatever the meta holds, reading never fails: an unreadable heartbeat or state means no status
(None); an unreadable rate, time or waiting document reads as its default.

Several senders on one PostgreSQL database (core/fleet.py) would overwrite each other's keys, so
each writes its own status instead, one JSON document under `sender_status.<sender id>`
(SENDER_PREFIX), and `read_status` reads the FLEET's: the senders alive by the staleness rule
merged into one SenderStatus (the most active state, rates and per-group figures summed, a
relay's trouble listed once per sender, "no relay can take a message" only when that holds for
every sender). The single sender of a SQLite database writes the keys above, as before.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

from .progress import SenderState

HEARTBEAT_STALE = 5.0  # seconds: a sender that has not written for this long is silent (not alive)
# Seconds a heartbeat may lie ahead of the reader's clock (a clock stepped back since the write):
# beyond that it is garbage, and a time far ahead must not keep a dead sender "alive" for ever.
HEARTBEAT_AHEAD = 60.0

# The meta keys (a contract with other processes and versions: never renamed).
STATE, REASON, RATE, LAST_ACCEPT, HEARTBEAT, WAITING = (
    "sender_state",
    "sender_reason",
    "sender_rate",
    "sender_last_accept",
    "sender_heartbeat",
    "sender_waiting",
)
KEYS = (STATE, REASON, RATE, LAST_ACCEPT, HEARTBEAT, WAITING)
# Added later (pacing by destination): per domain group figures (core/domains.py), JSON. A reader
# of an older sender finds no such key and reads {}.
DOMAINS = "sender_domains"
ALL_KEYS = KEYS + (DOMAINS,)


class MetaStore(Protocol):
    async def meta(self, key: str) -> str | None: ...

    async def put_meta(self, values: dict[str, str]) -> None: ...


@dataclass(frozen=True, slots=True)
class SenderStatus:
    """What a sender tells other processes about itself (the meta document `status --json` reads)."""

    state: SenderState
    heartbeat: float  # wall clock (epoch seconds) of the write
    reason: str = ""
    rate: float = 0.0  # messages per second, finite and >= 0
    last_accept_at: float | None = None  # wall clock of the last accepted message (None: never)
    waiting: dict[str, object] = field(default_factory=dict)  # Sender.waiting_document()
    # Sender.domains_document(): {"mailing": head id, "groups": [{"group", "sent", "deferred",
    # "failed", "in_flight", "waiting", "rate", "state", "reason", "last_reply", ...}]}
    domains: dict[str, object] = field(default_factory=dict)

    def age(self, now: float) -> float:
        """Seconds since the heartbeat (negative if it is ahead of `now`)."""
        return now - self.heartbeat

    def fresh(self, now: float) -> bool:
        """The sender wrote within the last HEARTBEAT_STALE seconds (or a little ahead of `now`)."""
        return -HEARTBEAT_AHEAD <= self.age(now) <= HEARTBEAT_STALE

    def alive(self, now: float) -> bool:
        """A sender runs and has reported lately: the rule for every reader."""
        return self.fresh(now) and self.state is not SenderState.STOPPED

    def live_rate(self, now: float) -> float:
        """The sending rate while alive, else 0."""
        return self.rate if self.alive(now) else 0.0

    def live_waiting(self, now: float) -> dict[str, object]:
        """Why the sender is held back while alive, else nothing."""
        return self.waiting if self.alive(now) else {}

    def live_domains(self, now: float) -> dict[str, object]:
        """Per domain group figures while alive, else nothing."""
        return self.domains if self.alive(now) else {}


SENDER_PREFIX = "sender_status."  # + the sender's id (the `senders` row): one fleet sender's status, JSON
# From most to least active: the fleet's state is the most active of its live senders'.
_ACTIVITY = (SenderState.SENDING, SenderState.WAITING, SenderState.IDLE, SenderState.MONITORING, SenderState.STOPPED)
_SUMMED = ("sent", "deferred", "failed", "in_flight", "waiting", "postponed", "rate", "limit_rate", "connections", "per_hour")
_GROUP_STATES = ("paused", "throttled", "ok")  # a group's state across the fleet: the worst of its senders'


def status_meta(status: SenderStatus) -> dict[str, str]:
    """The meta values for `status`, in the formats other processes read."""
    return {
        STATE: status.state.value,
        REASON: status.reason,
        RATE: f"{_finite(status.rate):.3f}",
        LAST_ACCEPT: f"{status.last_accept_at or 0:.3f}",
        HEARTBEAT: f"{status.heartbeat:.3f}",
        WAITING: json.dumps(status.waiting),
        DOMAINS: json.dumps(status.domains),
    }


async def write_status(store: MetaStore, status: SenderStatus, sender: int | None = None) -> None:
    """The status for other processes: the shared keys, or with `sender` (one of a fleet) that
    sender's own document."""
    if sender is None:
        await store.put_meta(status_meta(status))
    else:
        await store.put_sender_status(f"{SENDER_PREFIX}{sender}", json.dumps(status_meta(status)))  # type: ignore[attr-defined]


async def read_meta(store: MetaStore) -> dict[str, str]:
    """The raw meta values of the status (missing keys left out)."""
    values = {key: await store.meta(key) for key in ALL_KEYS}
    return {key: value for key, value in values.items() if isinstance(value, str)}


async def read_status(store: MetaStore) -> SenderStatus | None:
    """What the sender last wrote (the fleet's, merged, when several senders write their own),
    or None if no sender ever wrote a readable status."""
    shared = status_from_meta(await read_meta(store))
    prefixed = getattr(store, "meta_prefixed", None)
    if prefixed is None:
        return shared
    own = [status_from_json(raw) for raw in (await prefixed(SENDER_PREFIX)).values()]
    return fleet_status([s for s in (shared, *own) if s is not None], time.time())


def status_from_json(raw: object) -> SenderStatus | None:
    """One fleet sender's document (the shared keys' values as one JSON object), or None."""
    meta = parse_waiting(raw)
    return status_from_meta({k: v for k, v in meta.items() if isinstance(v, str)})


def fleet_status(statuses: list[SenderStatus], now: float) -> SenderStatus | None:
    """The statuses of several senders as one: those alive merged; none alive, the latest."""
    alive = [s for s in statuses if s.alive(now)]
    if not alive:
        return max(statuses, key=lambda s: s.heartbeat, default=None)
    if len(alive) == 1:
        return alive[0]
    lead = min(alive, key=lambda s: (_ACTIVITY.index(s.state) if s.state in _ACTIVITY else len(_ACTIVITY), -s.heartbeat))
    accepts = [s.last_accept_at for s in alive if s.last_accept_at]
    return SenderStatus(
        state=lead.state,
        heartbeat=max(s.heartbeat for s in alive),
        reason=lead.reason,
        rate=sum(s.rate for s in alive),
        last_accept_at=max(accepts) if accepts else None,
        waiting=_fleet_waiting([s.waiting for s in alive]),
        domains=_fleet_domains([s.domains for s in alive]),
    )


def _fleet_waiting(docs: list[dict[str, object]]) -> dict[str, object]:
    """Relays in trouble, each sender's; nothing goes out only when no sender's relay can take a message."""
    relays = [e for d in docs for e in (d.get("relays") if isinstance(d.get("relays"), list) else [])]  # type: ignore[union-attr]
    return {"all_unavailable": bool(docs) and all(bool(d.get("all_unavailable")) for d in docs), "relays": relays}


def _fleet_domains(docs: list[dict[str, object]]) -> dict[str, object]:
    """Per domain group figures of the fleet: counts, rates and each sender's share of the limits
    summed; the worst state (with its reason); the head mailing most senders report."""
    mailings = [d.get("mailing") for d in docs if d.get("mailing") is not None]
    groups: dict[str, dict[str, object]] = {}
    for doc in docs:
        items = doc.get("groups")
        for group in items if isinstance(items, list) else []:
            if not isinstance(group, dict) or not isinstance(group.get("group"), str):
                continue
            merged = groups.get(group["group"])
            if merged is None:
                groups[group["group"]] = dict(group)
                continue
            for key in _SUMMED:
                a, b = merged.get(key), group.get(key)
                if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                    merged[key] = a + b
            if _group_rank(group) < _group_rank(merged):
                merged.update(state=group.get("state"), reason=group.get("reason"), since=group.get("since"))
            if not merged.get("last_reply") and group.get("last_reply"):
                merged["last_reply"] = group["last_reply"]
    if not docs or (not mailings and not groups):
        return {}
    return {"mailing": max(set(mailings), key=mailings.count) if mailings else None, "groups": list(groups.values())}


def _group_rank(group: dict[str, object]) -> int:
    state = group.get("state")
    return _GROUP_STATES.index(state) if state in _GROUP_STATES else len(_GROUP_STATES)


def status_from_meta(meta: Mapping[str, Any]) -> SenderStatus | None:
    heartbeat = _number(meta.get(HEARTBEAT))
    try:
        state = SenderState(meta.get(STATE))
    except ValueError:
        return None
    if heartbeat is None or heartbeat <= 0:
        return None
    reason = meta.get(REASON)
    last = _number(meta.get(LAST_ACCEPT))
    return SenderStatus(
        state=state,
        heartbeat=heartbeat,
        reason=reason if isinstance(reason, str) else "",
        rate=_finite(_number(meta.get(RATE)) or 0.0),
        last_accept_at=last if last is not None and last > 0 else None,
        waiting=parse_waiting(meta.get(WAITING)),
        domains=parse_waiting(meta.get(DOMAINS)),  # the same rule: a JSON object, or {} if unreadable
    )


def parse_waiting(raw: object) -> dict[str, object]:
    """The sender's `sender_waiting` document as written by Sender.waiting_document ({} if unreadable)."""
    if not isinstance(raw, str) or not raw:
        return {}
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _number(raw: object) -> float | None:
    """A finite float from meta text, or None (missing, malformed, NaN, infinite)."""
    if not isinstance(raw, str):
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _finite(rate: float) -> float:
    return rate if math.isfinite(rate) and rate > 0 else 0.0
