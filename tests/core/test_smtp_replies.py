"""The SMTP reply table: every row exercised, precedence between rows, and the Verdict flags."""

from __future__ import annotations

from typing import NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailtower.core.smtp_replies import (
    MAX_TEXT,
    RULES,
    Outcome,
    Stage,
    Verdict,
    classify,
    classify_failure,
    find_rule,
    one_line,
    parse_enhanced,
)

S = Stage
O = Outcome


class Case(NamedTuple):
    """A reply (code + text) or, when `failure` is set, a transport failure, and what it must give."""

    code: int | None
    text: str
    stage: Stage
    outcome: Outcome
    throttle: bool = False
    new_connection: bool = False
    in_doubt: bool = False
    failure: str | None = None


def failure(kind: str, stage: Stage, outcome: Outcome, *, in_doubt: bool = False) -> Case:
    # Every transport failure needs a new connection.
    return Case(None, "detail", stage, outcome, new_connection=True, in_doubt=in_doubt, failure=kind)


# At least one example per row of RULES, keyed by the row's name.
EXAMPLES: dict[str, list[Case]] = {
    # Nothing was written, so the connection stays usable.
    "sender-needs-smtputf8": [Case(None, "detail", S.MAIL, O.PAUSE, failure="unsendable")],
    "recipient-needs-smtputf8": [Case(None, "detail", S.RCPT, O.FAIL, failure="unsendable")],
    "refused-login": [failure("refused", S.AUTH, O.PAUSE)],
    "lost-after-dot": [
        failure("disconnect", S.DOT, O.RECONNECT, in_doubt=True),
        failure("timeout", S.DOT, O.RECONNECT, in_doubt=True),
    ],
    "lost": [
        failure("refused", S.CONNECT, O.RECONNECT),
        failure("timeout", S.CONNECT, O.RECONNECT),
        failure("disconnect", S.HELO, O.RECONNECT),
        failure("disconnect", S.MAIL, O.RECONNECT),
        failure("timeout", S.RCPT, O.RECONNECT),
        failure("disconnect", S.DATA, O.RECONNECT),
    ],
    "positive": [
        Case(250, "2.0.0 Ok: queued as 4Bx", S.DOT, O.SENT),
        Case(250, "2.1.5 Ok", S.RCPT, O.SENT),
        Case(220, "mx.example.com ESMTP", S.CONNECT, O.SENT),
        Case(235, "2.7.0 Authentication successful", S.AUTH, O.SENT),
    ],
    "intermediate": [
        Case(354, "End data with <CR><LF>.<CR><LF>", S.DATA, O.SENT),
        Case(334, "VXNlcm5hbWU6", S.AUTH, O.SENT),
    ],
    "closing": [
        Case(421, "4.7.0 mx.example.com closing", S.RCPT, O.RECONNECT, throttle=True, new_connection=True),
        Case(421, "Service not available", S.CONNECT, O.RECONNECT, throttle=True, new_connection=True),
        Case(421, "4.3.2 System shutting down", S.DOT, O.RECONNECT, throttle=True, new_connection=True),
        Case(421, "4.7.0 Try again later", S.AUTH, O.RECONNECT, throttle=True, new_connection=True),
    ],
    "nonsense-after-dot": [
        Case(354, "go ahead", S.DOT, O.RECONNECT, new_connection=True, in_doubt=True),
        Case(999, "what", S.DOT, O.RECONNECT, new_connection=True, in_doubt=True),
    ],
    "nonsense": [
        Case(354, "go ahead", S.RCPT, O.RECONNECT, new_connection=True),
        Case(100, "?", S.MAIL, O.RECONNECT, new_connection=True),
        Case(0, "", S.HELO, O.RECONNECT, new_connection=True),
        Case(600, "x", S.DATA, O.RECONNECT, new_connection=True),
    ],
    "auth-refused": [
        Case(535, "5.7.8 Authentication credentials invalid", S.AUTH, O.PAUSE, new_connection=True),
        Case(530, "5.7.0 Authentication required", S.MAIL, O.PAUSE, new_connection=True),
        Case(534, "5.7.9 Authentication mechanism is too weak", S.AUTH, O.PAUSE, new_connection=True),
        Case(538, "5.7.11 Encryption required", S.AUTH, O.PAUSE, new_connection=True),
        Case(432, "4.7.12 A password transition is needed", S.AUTH, O.PAUSE, new_connection=True),
    ],
    "auth-refused-enhanced": [
        Case(550, "5.7.8 Error: authentication failed", S.MAIL, O.PAUSE, new_connection=True),
        Case(554, "5.7.9 mechanism too weak", S.AUTH, O.PAUSE, new_connection=True),
    ],
    "auth-temporary": [
        Case(454, "4.7.0 Temporary authentication failure", S.AUTH, O.RECONNECT, new_connection=True),
    ],
    "auth-other": [
        Case(504, "5.5.4 Unrecognized authentication type", S.AUTH, O.PAUSE, new_connection=True),
        Case(503, "5.5.1 Already authenticated", S.AUTH, O.PAUSE, new_connection=True),
    ],
    "session-temporary": [
        Case(450, "too many connections from your IP", S.CONNECT, O.RECONNECT, throttle=True, new_connection=True),
        Case(451, "4.3.0 temporary local problem", S.HELO, O.RECONNECT, new_connection=True),
    ],
    "session-refused": [
        Case(554, "5.7.1 no SMTP service here for you", S.CONNECT, O.PAUSE, new_connection=True),
        Case(501, "5.5.4 Invalid EHLO argument", S.HELO, O.PAUSE, new_connection=True),
    ],
    # One recipient per transaction: "too many recipients" is a session/rate limit, so it throttles.
    "too-many-recipients": [
        Case(452, "4.5.3 Too many recipients", S.RCPT, O.RETRY_LATER_FEWER, throttle=True),
        Case(552, "5.5.3 Too many recipients", S.RCPT, O.RETRY_LATER_FEWER, throttle=True),
        Case(452, "4.5.3 Error: too many recipients", S.RCPT, O.RETRY_LATER_FEWER, throttle=True),
    ],
    "too-many-recipients-wording": [
        Case(452, "Too many recipients", S.RCPT, O.RETRY_LATER_FEWER, throttle=True),
        Case(552, "too many recipients in this message", S.RCPT, O.RETRY_LATER_FEWER, throttle=True),
    ],
    "552-at-rcpt": [Case(552, "Requested mail action aborted: exceeded storage allocation", S.RCPT, O.DEFER)],
    "mailbox-full": [
        Case(552, "5.2.2 Mailbox full", S.RCPT, O.DEFER),
        Case(452, "4.2.2 Over quota", S.RCPT, O.DEFER),
        Case(550, "5.2.2 The email account that you tried to reach is over quota", S.DOT, O.DEFER),
    ],
    "sender-refused": [
        Case(553, "5.1.8 Sender address rejected: Domain not found", S.MAIL, O.PAUSE),
        Case(550, "5.7.1 Sender blocked", S.MAIL, O.PAUSE),
        Case(552, "5.3.4 Message size exceeds fixed limit", S.MAIL, O.PAUSE),
    ],
    # A relay's quota or rate limit in its own words under a 5xx: nobody failed for it.
    "over-sending-quota": [
        Case(554, "Throttling failure: Daily message quota exceeded.", S.DOT, O.PAUSE, throttle=True),
        Case(550, "5.4.5 Daily user sending quota exceeded.", S.RCPT, O.PAUSE, throttle=True),
        Case(554, "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException", S.DOT, O.PAUSE,
             throttle=True),
    ],
    "over-sending-rate": [
        Case(550, "5.7.1 Daily sending rate exceeded", S.DOT, O.DEFER, throttle=True),
        Case(500, "Too many messages on this connection", S.RCPT, O.DEFER, throttle=True),
        Case(554, "Throttling failure: Maximum sending rate exceeded.", S.DOT, O.DEFER, throttle=True),
    ],
    "throttled-454": [
        Case(454, "4.7.1 Relay access denied, slow down", S.RCPT, O.DEFER, throttle=True),
        Case(454, "4.7.0 Too many messages", S.MAIL, O.DEFER, throttle=True),
        Case(454, "TLS not available due to temporary reason", S.DOT, O.DEFER, throttle=True),
    ],
    "transient": [
        Case(450, "4.2.1 Mailbox unavailable, try again", S.RCPT, O.DEFER),
        Case(451, "4.3.0 Local error in processing", S.DOT, O.DEFER),
        Case(452, "4.3.1 Insufficient system storage", S.MAIL, O.DEFER),
        # "try again later" under X.7.x reads as a rate limit (issue 10); a greylisting server
        # that words it so is slowed down for a while, which costs little.
        Case(451, "4.7.1 Please try again later (greylisted)", S.RCPT, O.DEFER, throttle=True),
        Case(450, "4.2.0 Greylisted, see http://postgrey.example/help", S.RCPT, O.DEFER),
        Case(450, "4.7.1 Error: too much mail from 127.0.0.1", S.MAIL, O.DEFER, throttle=True),
        Case(450, "4.7.1 Error: too many recipients from 127.0.0.1", S.RCPT, O.DEFER, throttle=True),
        Case(451, "4.7.1 Service unavailable - try again later", S.RCPT, O.DEFER, throttle=True),
        Case(451, "4.7.650 The mail server has been temporarily rate limited", S.DOT, O.DEFER, throttle=True),
        Case(450, "Too many messages, slow down", S.RCPT, O.DEFER, throttle=True),
        Case(450, "4.1.1 Recipient verification temporarily unavailable", S.RCPT, O.DEFER),
        Case(451, "4.4.2 too many hops", S.DATA, O.DEFER),  # 'too many' counts only with X.7.x
    ],
    "message-refused": [
        Case(554, "5.6.0 Message rejected", S.DOT, O.FAIL),
        Case(554, "Transaction failed", S.DOT, O.FAIL),
    ],
    "message-policy": [
        Case(550, "5.7.26 Unauthenticated email is not accepted (DMARC)", S.DOT, O.FAIL),
    ],
    "recipient-refused": [
        Case(550, "5.1.1 User unknown", S.RCPT, O.FAIL),
        Case(551, "User not local; please try <x@example.org>", S.RCPT, O.FAIL),
        Case(553, "Mailbox name not allowed", S.RCPT, O.FAIL),
        Case(550, "5.7.1 Relaying denied", S.RCPT, O.FAIL),
        Case(550, "5.4.1 Recipient address rejected: Access denied", S.DOT, O.FAIL),
    ],
    "bad-address": [
        Case(501, "5.1.3 Bad recipient address syntax", S.RCPT, O.FAIL),
        Case(554, "5.1.0 Address rejected", S.RCPT, O.FAIL),
    ],
    "permanent": [
        Case(554, "5.7.1 Message refused", S.RCPT, O.FAIL),
        Case(552, "5.3.4 Message size exceeds fixed maximum message size", S.DOT, O.FAIL),
        Case(554, "5.5.1 No valid recipients", S.DATA, O.FAIL),
    ],
}

ALL_CASES = [(name, case) for name, cases in EXAMPLES.items() for case in cases]


def judge(case: Case) -> Verdict:
    if case.failure is not None:
        return classify_failure(case.failure, case.stage, case.text)  # type: ignore[arg-type]
    assert case.code is not None
    return classify(case.code, case.text, case.stage)


def test_every_row_has_examples_and_names_are_unique() -> None:
    names = [rule.name for rule in RULES]
    assert len(names) == len(set(names))
    assert set(EXAMPLES) == set(names)


@pytest.mark.parametrize(
    ("row", "case"), ALL_CASES, ids=[f"{n}:{c.code or c.failure}:{c.stage.value}" for n, c in ALL_CASES]
)
def test_row(row: str, case: Case) -> None:
    rule, _ = find_rule(case.code, case.text, case.stage, case.failure)  # type: ignore[arg-type]
    assert rule.name == row
    verdict = judge(case)
    assert (verdict.outcome, verdict.throttle, verdict.new_connection, verdict.in_doubt) == (
        case.outcome, case.throttle, case.new_connection, case.in_doubt
    )
    assert verdict.code == case.code


# --- precedence between rows ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "text", "stage", "outcome", "row"),
    [
        # 421 wins over everything, including auth wording and stage rows
        (421, "4.7.8 authentication failed, closing", S.AUTH, O.RECONNECT, "closing"),
        (421, "4.2.2 mailbox full", S.RCPT, O.RECONNECT, "closing"),
        # mailbox full is a deferral even under 5xx and even after the dot
        (554, "5.2.2 mailbox full", S.DOT, O.DEFER, "mailbox-full"),
        (550, "5.2.2 mailbox full", S.RCPT, O.DEFER, "mailbox-full"),
        # too many recipients beats the 552 and the mailbox-full rows
        (552, "5.5.3 Too many recipients", S.RCPT, O.RETRY_LATER_FEWER, "too-many-recipients"),
        (452, "4.5.3 Too many recipients", S.RCPT, O.RETRY_LATER_FEWER, "too-many-recipients"),
        # wording alone is only trusted without an enhanced code
        (452, "4.3.1 too many recipients queued, storage low", S.RCPT, O.DEFER, "transient"),
        # auth refusals pause at any stage, before sender/recipient rows
        (530, "5.7.0 Must issue a STARTTLS command first", S.RCPT, O.PAUSE, "auth-refused"),
        (535, "5.7.8 bad credentials", S.MAIL, O.PAUSE, "auth-refused"),
        # at MAIL a 5xx concerns the sender: nobody fails
        (550, "5.1.1 sender unknown", S.MAIL, O.PAUSE, "sender-refused"),
        # 4xx at MAIL is a deferred transaction, not a pause
        (451, "4.1.8 sender domain did not resolve", S.MAIL, O.DEFER, "transient"),
        # 454 at AUTH is a temporary login failure, elsewhere a throttle
        (454, "4.7.0 Temporary authentication failure", S.AUTH, O.RECONNECT, "auth-temporary"),
        (454, "4.7.0 Temporary authentication failure", S.RCPT, O.DEFER, "throttled-454"),
        # X.7.x is a message failure at DOT and a recipient failure at RCPT
        (550, "5.7.1 Message content rejected", S.DOT, O.FAIL, "message-policy"),
        (550, "5.7.1 Message content rejected", S.RCPT, O.FAIL, "recipient-refused"),
        # X.1.x under a code not in 550/551/553
        (554, "5.1.1 no such mailbox", S.RCPT, O.FAIL, "bad-address"),
        # 4.1.1 is temporary whatever the subject says
        (450, "4.1.1 user unknown (temporarily)", S.RCPT, O.DEFER, "transient"),
        # 2xx never fails, whatever the text says
        (250, "5.1.1 weird but accepted", S.DOT, O.SENT, "positive"),
    ],
)
def test_precedence(code: int, text: str, stage: Stage, outcome: Outcome, row: str) -> None:
    assert find_rule(code, text, stage)[0].name == row
    assert classify(code, text, stage).outcome is outcome


def test_failures_never_put_anyone_in_doubt_before_the_dot() -> None:
    for stage in Stage:
        for kind in ("disconnect", "timeout", "refused"):
            verdict = classify_failure(kind, stage, "x")  # type: ignore[arg-type]
            assert verdict.in_doubt is (stage is S.DOT)
            assert verdict.new_connection
            assert verdict.outcome is (O.PAUSE if (kind, stage) == ("refused", S.AUTH) else O.RECONNECT)


def test_failure_text_names_what_and_where() -> None:
    verdict = classify_failure("timeout", S.DOT, "no reply within 300 s")
    assert verdict.text == "timed out after the final dot: no reply within 300 s"
    assert verdict.code is None and verdict.enhanced is None
    assert classify_failure("refused", S.CONNECT, "[Errno 111] Connection refused").text.startswith(
        "refused while connecting: "
    )


def test_unknown_failure_kind() -> None:
    with pytest.raises(ValueError):
        classify_failure("exploded", S.RCPT, "x")  # type: ignore[arg-type]


@given(code=st.integers(min_value=-5, max_value=1200), text=st.text(max_size=400), stage=st.sampled_from(Stage))
def test_every_reply_gets_a_verdict(code: int, text: str, stage: Stage) -> None:
    verdict = classify(code, text, stage)
    assert len(verdict.text) <= MAX_TEXT
    assert "\n" not in verdict.text and "\r" not in verdict.text
    assert not verdict.in_doubt or stage is S.DOT
    if 200 <= code <= 299:
        assert verdict.outcome is O.SENT
    if 400 <= code <= 499:
        assert verdict.outcome is not O.FAIL  # a temporary reply never fails anyone
    if verdict.outcome is O.FAIL:
        assert 500 <= code <= 599


# --- enhanced codes and text -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5.1.1 User unknown", "5.1.1"),
        ("  4.7.0 try later", "4.7.0"),
        ("2.0.0 Ok", "2.0.0"),
        ("5.7.26 DMARC", "5.7.26"),
        ("5.1.10 null MX", "5.1.10"),
        ("550-5.1.1 raw line with its code", "5.1.1"),
        ("550 5.1.1 raw line with its code", "5.1.1"),
        ("5.01.001 leading zeros", "5.1.1"),
        ("4.2.2: mailbox full", "4.2.2"),
        ("4.2.2", "4.2.2"),
        ("User unknown 5.1.1", None),
        ("3.1.1 not a class", None),
        ("5.1 too short", None),
        ("5.1.1.1 too long", None),
        ("5.1234.1 subject too long", None),
        ("", None),
    ],
)
def test_parse_enhanced(text: str, expected: str | None) -> None:
    assert parse_enhanced(text) == expected


def test_multiline_reply_becomes_one_line_without_repeated_codes() -> None:
    text = ("5.1.1 The email account that you tried to reach does not exist. Please try\n"
            "5.1.1 double-checking the recipient's email address for typos.\n"
            "5.1.1  https://support.example.com/mail/?p=NoSuchUser x-123\n")
    verdict = classify(550, text, S.RCPT)
    assert verdict.enhanced == "5.1.1"
    assert verdict.text == ("5.1.1 The email account that you tried to reach does not exist. Please try "
                            "double-checking the recipient's email address for typos. "
                            "https://support.example.com/mail/?p=NoSuchUser x-123")


def test_text_is_trimmed_and_printable() -> None:
    assert one_line("a\tb\x00c\u2028d  e") == "a b?c d e"
    long = one_line("x" * 1000)
    assert len(long) == MAX_TEXT and long.endswith("…")
