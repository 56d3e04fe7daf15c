"""The fleet's hourly budget shared out among senders that count at different moments
(core/fleet.budget_allowance). Before, each sender took 1/N of what the ledger said was left,
which counted another sender's unused share as left over: a sender that had sent little
since the other's count handed half of the other's share out again, and the fleet went over
its budget (test_fleet2: 43 sent where 40 were left, 2 in flight allowed)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from mailtower.core.fleet import budget_allowance


@pytest.mark.parametrize("allowed, fleet, others, mine, expected", [
    (100, 60, [], 0, 40),  # alone: what gone senders (and sends before the fleet) left
    (100, 60, [0], 0, 20),  # two senders, nothing sent by either yet: half each
    (100, 70, [10], 0, 20),  # the other sent 10 of its 20 (it may send 10 more): this one its 20
    (100, 90, [30], 0, 10),  # the other sent 30, more than a share: it keeps them; the 10 left are this one's
    (100, 90, [0], 30, 30),  # this sender sent more than a share: it keeps what it sent, no more
    (40, 30, [25, 5], 0, 7),  # three: one keeps its 25; the two others share 15 (rounded down)
    (100, 120, [10], 5, 5),  # the window holds more than the budget: nothing more for anyone
    (1, 0, [0, 0], 0, 0),  # rounded down: a share below one message is none
])
def test_each_running_sender_may_reach_an_equal_share_of_what_gone_senders_left(
        allowed: int, fleet: int, others: list[int], mine: int, expected: int) -> None:
    assert budget_allowance(allowed, fleet, others, mine) == expected


@dataclass
class _Sender:
    sent: int = 0  # what it sent (recorded in the ledger at once here)
    said: int = 0  # what its last heartbeat said it sent
    may: int = 0  # its allowance at its last count (nothing before its first)
    running: bool = True


@pytest.mark.parametrize("seed", range(40))
def test_shares_counted_at_different_moments_never_add_up_to_more_than_the_budget(seed: int) -> None:
    """Senders send, beat and count in a random order (a count reads the others' heartbeats,
    however old); some join late (the others count again before the newcomer takes a share, as
    JOIN_SETTLE waits for) and some stop. The ledger never holds more than the budget."""
    rng = random.Random(seed)
    allowed, before = rng.randint(20, 400), rng.randint(0, 100)
    allowed = max(allowed, before)
    senders = [_Sender() for _ in range(rng.randint(1, 3))]
    waiting = rng.randint(0, 2)  # senders that join later

    def count(me: _Sender) -> None:
        fleet = before + sum(s.sent for s in senders)
        others = [s.said for s in senders if s.running and s is not me]
        me.may = budget_allowance(allowed, fleet, others, me.sent)

    for _ in range(5000):
        running = [s for s in senders if s.running]
        roll = rng.random()
        if waiting and roll < 0.002:
            waiting -= 1
            newcomer = _Sender()
            senders.append(newcomer)  # registered: the others see it at their next count ...
            for other in running:
                count(other)  # ... and count again before it takes a share (JOIN_SETTLE)
            count(newcomer)
        elif running and roll < 0.003:
            rng.choice(running).running = False  # ended: its sends are the gone senders'
        elif running:
            me = rng.choice(running)
            action = rng.random()
            if action < 0.7:
                if me.sent < me.may:
                    me.sent += 1
            elif action < 0.85:
                me.said = me.sent
            else:
                count(me)
        assert before + sum(s.sent for s in senders) <= allowed, (seed, senders)
    # With every count fresh, the budget is handed out but for rounding (under one per sender).
    running = [s for s in senders if s.running]
    if not running:
        return
    for s in running:
        s.said = s.sent
    for s in running:
        count(s)
    handed_out = before + sum(s.sent for s in senders if not s.running) + sum(max(s.sent, s.may) for s in running)
    assert allowed - (len(running) - 1) <= handed_out <= allowed, (seed, allowed, handed_out, senders)
