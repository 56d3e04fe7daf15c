"""The SMTP relays a sender spreads its connections over, and the health of each.

One relay is the usual case (the MAILTOWER_SMTP_* settings). A TOML config may list several
under [[relays]], each with its own host, port, TLS mode, credentials, connections and rate;
a relay that fails is rested with a growing backoff while the others carry on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .config import Settings
from .progress import RateMeter
from .ratelimit import RateLimiter
from .smtp_client import Relay


@dataclass(frozen=True, slots=True)
class RelayStatus:
    name: str
    state: str  # up | resting | idle
    reason: str
    rate: float
    connections: int


@dataclass(eq=False)
class RelayState:
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

    @property
    def resting(self) -> bool:
        return time.monotonic() < self.rested_until

    def rest(self, reason: str) -> None:
        """Hold this relay off for a while; repeated failures wait longer (up to backoff_max)."""
        self.reason = reason
        if self.resting:
            return  # its other connections already reported this failure
        self.rested_until = time.monotonic() + self.backoff
        self.backoff = min(self.backoff * 2, self.backoff_max)

    def accepted(self) -> None:
        self.used = True
        self.meter.add()
        if self.reason:
            self.reason = ""
            self.backoff = 1.0

    def status(self) -> RelayStatus:
        if self.resting or self.reason:
            state = "resting"
        else:
            state = "up" if self.used else "idle"
        return RelayStatus(self.name, state, self.reason, self.meter.rate(), self.connections)


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
