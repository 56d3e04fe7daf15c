"""The breaker's window rebuilt from the ledger counts only what servers answered."""

from __future__ import annotations

from mailtower.core.breaker import Breaker, Thresholds


def test_rows_put_back_without_a_reply_do_not_count_after_a_restart() -> None:
    """Pacing by destination puts rows of a group at its budget back as deferred with no reply
    code (core/domains.py); a restarted sender must not read them as that domain deferring."""
    breaker = Breaker(Thresholds(window=500, hard=5, soft=20, minimum=20))
    postponed = [("deferred", None, f"u{i}@slow.example", "domain group slow: hourly budget used up") for i in range(40)]
    answered = [("sent", 250, f"v{i}@slow.example", None) for i in range(30)]
    breaker.replay(answered + postponed)
    assert breaker.domain_counts("slow.example") == (30, 0)
    assert breaker.add("sent", 250, None, "w@slow.example") is None
    refused = [("deferred", 450, f"x{i}@slow.example", "4.2.0 mailbox busy") for i in range(40)]
    other = Breaker(Thresholds(window=500, hard=5, soft=20, minimum=20))
    other.replay(answered + refused)
    assert other.domain_counts("slow.example") == (70, 40)  # a server's deferrals still count
