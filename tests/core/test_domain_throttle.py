"""A domain that pushes back slows down alone (issue 13, item 2): against a real SMTP server that
throttles one destination, the other keeps its rate, and the relay is not slowed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mailtower.core.config import DomainGroupSpec
from mailtower.core.domains import RECOVERY_SECONDS, DomainPacer, GroupMode
from mailtower.core.sender import Sender
from mailtower.core.sink import Sink, per_domain
from mailtower.core.smtp_replies import Stage, classify, slows_domain
from tests.core.test_domain_pacing import Arrivals, queued_mailing, settings_for, until

A, B = "fast.example.com", "slow.example.org"
TWO_GROUPS = f"""
[domains.a]
match = ["{A}"]
rate = 20
[domains.b]
match = ["{B}"]
rate = 20
"""


def rate_of(times: list[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0])


async def send_a_while_b(tmp_path: Path, name: str, b_reply: str | None) -> tuple[float, Sender, Arrivals]:
    """Send 80 recipients of A and 40 of B (interleaved), B's first attempts answered
    `b_reply`; return A's rate as the server saw it, once all of A arrived."""
    folder = tmp_path / name
    folder.mkdir()
    db = folder / "t.db"
    emails = []
    for i in range(80):
        emails.append(f"a{i}@{A}")
        if i % 2 == 0:
            emails.append(f"b{i}@{B}")
    await queued_mailing(db, folder, emails)
    arrivals = Arrivals()
    throttle = (lambda stage, address, attempt: b_reply if stage == "rcpt" and attempt == 1 else arrivals(stage, address, attempt))
    fault = per_domain({B: throttle}, other=arrivals) if b_reply else arrivals
    toml = folder / "c.toml"
    toml.write_text(TWO_GROUPS, encoding="utf-8")
    with Sink(fault=fault) as sink:
        # The breaker is off: these tests are about pacing (B's deferrals would trip it, core/breaker.py).
        sender = Sender(settings_for(db, sink, toml, retry_base=0.3, retry_max=0.5, breaker_soft=0.0))
        task = asyncio.create_task(sender.run())
        try:
            await until(lambda: len(arrivals.times(A)) == 80, 30, "all of A")
            return rate_of(arrivals.times(A)), sender, arrivals
        finally:
            sender.request_stop()
            await asyncio.wait_for(task, 15)


@pytest.mark.parametrize(
    "reply",
    [
        "421 4.7.0 Try again later, closing connection.",
        "450 4.7.1 Too many messages for this domain, slow down",
        "451 4.7.28 Our system has detected an unusual rate of unsolicited mail",
    ],
)
async def test_a_throttled_domain_slows_alone(tmp_path: Path, reply: str) -> None:
    unthrottled, _, _ = await send_a_while_b(tmp_path, "calm", None)
    throttled, sender, arrivals = await send_a_while_b(tmp_path, "pushback", reply)
    assert abs(throttled - unthrottled) <= 0.10 * unthrottled, (throttled, unthrottled)
    groups = {g["group"]: g for g in sender.domains_document()["groups"]}  # type: ignore[union-attr]
    assert groups["b"]["state"] == GroupMode.THROTTLED, groups["b"]
    assert groups["b"]["reason"] == groups["b"]["last_reply"] == reply
    assert groups["b"]["limit_rate"] <= 10  # halved at least once
    assert groups["a"]["state"] == GroupMode.OK and groups["a"]["limit_rate"] == 20
    assert groups["b"]["deferred"] >= 1
    # Only the domain slowed: the relay neither halved its rate nor cooled down.
    relay = sender.relays[0]
    assert relay.status().state != "throttled" and relay.limiter.factor == 1.0


async def test_a_burst_of_plain_4xx_from_one_domain_throttles_it(tmp_path: Path) -> None:
    """No rate wording, no 4.7.x: a burst of temporary refusals from B's recipients is B's."""
    _, sender, _ = await send_a_while_b(tmp_path, "burst", "450 4.2.0 mailbox busy")
    b = next(g for g in sender.domains_document()["groups"] if g["group"] == "b")  # type: ignore[union-attr]
    assert b["state"] == GroupMode.THROTTLED and b["reason"].startswith("a burst of temporary refusals")
    assert sender.relays[0].status().state != "throttled"


def test_halved_then_recovers_ten_percent_a_minute_of_clean_replies() -> None:
    pacer: DomainPacer[str] = DomainPacer([DomainGroupSpec("b", (B,), rate=20)])
    group = pacer.groups["b"]
    t = 1000.0
    group.throttle("421 4.7.0 slow down", t)
    assert group.limiter.configured == 10 and group.mode() == GroupMode.THROTTLED
    group.throttle("421 4.7.0 slow down", t + 0.5)  # the same pushback: halved once
    assert group.limiter.configured == 10
    group.throttle("421 4.7.0 slow down", t + 3)
    assert group.limiter.configured == 5
    group.recover(t + 3 + RECOVERY_SECONDS - 1)
    assert group.limiter.configured == 5  # not a clean minute yet
    rates = []
    for minute in range(1, 10):
        group.recover(t + 3 + minute * RECOVERY_SECONDS)
        rates.append(round(group.limiter.configured, 3))
    assert rates == [7.0, 9.0, 11.0, 13.0, 15.0, 17.0, 19.0, 20.0, 20.0]
    assert group.mode() == GroupMode.OK and group.reason == "" and group.throttled_since == 0.0


def test_an_unlimited_group_is_halved_from_its_measured_rate() -> None:
    pacer: DomainPacer[str] = DomainPacer([DomainGroupSpec("b", (B,))])
    group = pacer.groups["b"]
    assert group.open
    group.throttle("421 busy", 50.0)
    assert not group.open and group.limiter.configured >= 0.5


@pytest.mark.parametrize(
    ("code", "text", "stage", "slows"),
    [
        (421, "4.7.0 Try again later", Stage.RCPT, True),
        (421, "Service not available", Stage.DOT, True),
        (450, "4.7.1 Service unavailable", Stage.RCPT, True),  # 4.7.x: policy
        (451, "Rate limit exceeded", Stage.RCPT, True),
        (452, "Too many messages, try again later", Stage.DOT, True),
        (452, "4.2.2 Mailbox full: too many messages", Stage.DOT, False),  # the mailbox, not the domain
        (450, "4.2.0 mailbox busy", Stage.RCPT, False),
        (421, "4.7.0 Too many connections", Stage.MAIL, False),  # before any recipient: the relay's
        (250, "2.0.0 OK", Stage.DOT, False),
    ],
)
def test_which_replies_slow_a_domain(code: int, text: str, stage: Stage, slows: bool) -> None:
    assert slows_domain(classify(code, text, stage)) is slows


async def test_unthrottled_rates_are_measured_not_assumed(tmp_path: Path) -> None:
    """The calm run really goes at the configured rate (so "within 10 %" compares like with like)."""
    rate, _, _ = await send_a_while_b(tmp_path, "calm", None)
    assert 20 * 0.85 <= rate <= 20 * 1.15, rate

