"""The one classification of SMTP replies and transport failures (RFC 5321 codes, RFC 3463 enhanced
codes), as an ordered table: the first row whose conditions all hold decides.

Every sender decision about a reply (sent, retry later, give up, reconnect, pause the mailing,
slow down) comes from here, so the policy can be read and changed in one place: `RULES`.
"""

from __future__ import annotations

import functools
import time

import re
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

__all__ = [
    "Failure", "Outcome", "RULES", "Rule", "Stage", "Throttle", "Verdict",
    "classify", "classify_auth", "classify_failure", "find_rule", "parse_enhanced", "tls_failed",
    "RECIPIENT_STAGES", "ReplyBurst", "is_temporary_refusal", "slows_domain",
]

MAX_TEXT = 300  # enough for any useful reply, short enough for last_error and a table cell


class Stage(str, Enum):
    """The command whose reply is being judged."""

    CONNECT = "connect"  # the greeting, or the TCP/TLS connection itself
    HELO = "helo"  # EHLO/HELO and STARTTLS
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"  # the reply to the DATA command (354 expected)
    DOT = "dot"  # the reply to the final "." of the message


class Outcome(str, Enum):
    SENT = "sent"  # 2xx (3xx to DATA/AUTH): at DOT the message is delivered, earlier: go on
    DEFER = "defer"  # temporary: recipient or transaction deferred, retried later with backoff
    FAIL = "fail"  # permanent failure of the recipient / message; the reply is kept
    RECONNECT = "reconnect"  # close, reconnect with backoff, retry the transaction
    PAUSE = "pause"  # the server refuses us (login, sender, session): pause, nobody failed
    RETRY_LATER_FEWER = "retry_later_fewer"  # too many recipients: retry it in a new transaction


class Throttle(str, Enum):
    """Whether a reply asks the sender to slow down."""

    NO = "no"
    YES = "yes"
    # Only when the text speaks of rates or volume and the enhanced code (if any) is X.7.x:
    # many servers say "451 4.7.1 rate limited" but greylisting also uses 4.7.1.
    BY_WORDING = "by_wording"


# "unsendable": we did not send the command at all because the address cannot be written for this
# server (it needs SMTPUTF8, RFC 6531, and the server does not offer it).
Failure = Literal["disconnect", "timeout", "refused", "unsendable"]


@dataclass(frozen=True)
class Verdict:
    """What one server reply means for its recipient and for the connection (core/smtp_replies.py decides)."""

    outcome: Outcome
    code: int | None
    enhanced: str | None  # "5.1.1"
    text: str  # one line, trimmed to MAX_TEXT
    throttle: bool  # the sender should slow down
    new_connection: bool  # open a new connection before the next transaction
    in_doubt: bool  # the connection broke after the final dot: the server may have the message
    stage: Stage | None = None  # the command the reply (or failure) answered


@dataclass(frozen=True)
class Rule:
    """One row of the table. Empty conditions match anything; all given conditions must hold.

    `enhanced` patterns are written without the class digit: "X.5.3", or "X.7.*" for a subject.
    Rows with `failures` match only transport failures; all others only replies.
    """

    name: str
    outcome: Outcome
    why: str
    codes: frozenset[int] = frozenset()
    classes: frozenset[int] = frozenset()  # first digit of the reply code
    enhanced: frozenset[str] = frozenset()
    without_enhanced: bool = False  # only when the reply has no enhanced code
    wording: re.Pattern[str] | None = None
    stages: frozenset[Stage] = frozenset()
    failures: frozenset[str] = frozenset()
    throttle: Throttle = Throttle.NO
    new_connection: bool = False
    in_doubt: bool = False


def _codes(*codes: int) -> frozenset[int]:
    return frozenset(codes)


def _stages(*stages: Stage) -> frozenset[Stage]:
    return frozenset(stages)


def _enh(*patterns: str) -> frozenset[str]:
    return frozenset(patterns)


_ALL_FAILURES = frozenset(["disconnect", "timeout", "refused"])
_TOO_MANY_RECIPIENTS = re.compile(r"too many recipients", re.IGNORECASE)
# Rate / volume wording, checked only with an X.7.x code or none (see Throttle.BY_WORDING). Postfix's
# anvil says "450 4.7.1 Error: too much mail from 127.0.0.1" / "too many recipients from ...",
# others "rate limited", "throttled", "slow down", "try again later", "too many connections".
RATE_WORDING = re.compile(
    r"\brate\b|\brate[- ]?limit|too many|too much mail|throttl|slow down|try again later|\bbusy\b|\bvolume\b"
    r"|exceeded|too fast|\blimit(?:ed)? reached",
    re.IGNORECASE,
)

# A 5xx whose words say our account is over a sending quota (Amazon SES "554 Throttling failure:
# Daily message quota exceeded", Gmail "550 5.4.5 Daily user sending quota exceeded", Microsoft
# "554 5.2.0 ...SubmissionQuotaExceededException"): not the recipient's fault and not for good.
# Only quota words tied to sending: "mailbox over quota" is the recipient's mailbox (X.2.2).
SENDING_QUOTA_WORDING = re.compile(
    r"(?:sending|submission|message|messages|send|daily|hourly|outbound|account|user)\s*quota"
    r"|quota\s*exceeded\s*for\s*(?:sending|messages)|sending limit",
    re.IGNORECASE,
)
# A 5xx whose words say we send too fast (SES "554 Throttling failure: Maximum sending rate
# exceeded", "550 5.7.1 Rate limit exceeded, try again later"): the relay means "slow down".
SENDING_RATE_WORDING = re.compile(
    r"\brate[- ]?limit|rate exceeded|sending rate|throttl|too many messages|too much mail|slow down|try again later",
    re.IGNORECASE,
)

RULES: tuple[Rule, ...] = (
    # --- addresses we could not send at all (no command written) ---
    Rule("sender-needs-smtputf8", Outcome.PAUSE, failures=frozenset(["unsendable"]), stages=_stages(Stage.MAIL),
         why="the sender address needs SMTPUTF8 and the server does not offer it: every message alike; pause"),
    Rule("recipient-needs-smtputf8", Outcome.FAIL, failures=frozenset(["unsendable"]),
         why="the recipient address needs SMTPUTF8 and the server does not offer it: this recipient failed"),
    # --- transport failures (no reply) ---
    Rule("refused-login", Outcome.PAUSE, failures=frozenset(["refused"]), stages=_stages(Stage.AUTH),
         new_connection=True,
         why="we refused to log in (e.g. no encryption): settings must change; nobody touched"),
    Rule("lost-after-dot", Outcome.RECONNECT, failures=_ALL_FAILURES, stages=_stages(Stage.DOT),
         new_connection=True, in_doubt=True,
         why="the message was sent but no reply came: the server may have stored it"),
    Rule("lost", Outcome.RECONNECT, failures=_ALL_FAILURES, new_connection=True,
         why="connection refused, dropped or timed out before the final dot: nobody in doubt"),
    # --- positive replies ---
    Rule("positive", Outcome.SENT, classes=_codes(2),
         why="2xx: accepted (at DOT: delivered to the server)"),
    Rule("intermediate", Outcome.SENT, classes=_codes(3), stages=_stages(Stage.DATA, Stage.AUTH),
         why="3xx where one is expected (354 to DATA, 334 AUTH challenge): go on"),
    # --- the server is closing ---
    Rule("closing", Outcome.RECONNECT, codes=_codes(421), throttle=Throttle.YES, new_connection=True,
         why="421 at any stage: the server closes the channel; reconnect later and retry"),
    Rule("nonsense-after-dot", Outcome.RECONNECT, stages=_stages(Stage.DOT), classes=_codes(0, 1, 3),
         new_connection=True, in_doubt=True,
         why="a reply to the final dot that is not 2xx/4xx/5xx: the server's state is unknown"),
    Rule("nonsense", Outcome.RECONNECT, classes=_codes(0, 1, 3), new_connection=True,
         why="a reply code the protocol does not allow here: start over on a new connection"),
    # --- authentication (RFC 4954) ---
    Rule("auth-refused", Outcome.PAUSE, codes=_codes(530, 534, 535, 538, 432), new_connection=True,
         why="authentication required / refused / too weak / needs encryption: pause, nobody failed"),
    Rule("auth-refused-enhanced", Outcome.PAUSE, classes=_codes(4, 5),
         enhanced=_enh("X.7.8", "X.7.9", "X.7.11", "X.7.12"), new_connection=True,
         why="enhanced code for invalid credentials, weak or unencrypted mechanism, password change"),
    Rule("auth-temporary", Outcome.RECONNECT, classes=_codes(4), stages=_stages(Stage.AUTH), new_connection=True,
         why="temporary authentication failure (454 4.7.0): log in again later"),
    Rule("auth-other", Outcome.PAUSE, classes=_codes(5), stages=_stages(Stage.AUTH), new_connection=True,
         why="the server will not let us log in (mechanism unsupported, ...): pause"),
    # --- greeting and EHLO: no transaction yet ---
    Rule("session-temporary", Outcome.RECONNECT, classes=_codes(4), stages=_stages(Stage.CONNECT, Stage.HELO),
         throttle=Throttle.BY_WORDING, new_connection=True,
         why="temporary refusal of the session: nobody touched; reconnect with backoff"),
    Rule("session-refused", Outcome.PAUSE, classes=_codes(5), stages=_stages(Stage.CONNECT, Stage.HELO),
         throttle=Throttle.BY_WORDING, new_connection=True,
         why="the server refuses this client (554 greeting, EHLO refused): no recipient is at fault"),
    # --- too many recipients (RFC 5321 4.5.3.1.10, RFC 3463 X.5.3) ---
    # We send one recipient per transaction, so "too many recipients" is a per-session or per-time
    # limit (Postfix: smtpd_recipient_limit, anvil's recipient rate): slow down as well.
    Rule("too-many-recipients", Outcome.RETRY_LATER_FEWER, classes=_codes(4, 5), enhanced=_enh("X.5.3"),
         throttle=Throttle.YES,
         why="X.5.3 too many recipients: not a recipient failure, retry it in a new transaction, slow down"),
    Rule("too-many-recipients-wording", Outcome.RETRY_LATER_FEWER, codes=_codes(452, 552), without_enhanced=True,
         wording=_TOO_MANY_RECIPIENTS, throttle=Throttle.YES,
         why="452/552 'too many recipients' from a server without enhanced codes"),
    Rule("552-at-rcpt", Outcome.DEFER, codes=_codes(552), stages=_stages(Stage.RCPT), without_enhanced=True,
         why="RFC 5321 4.5.3.1.10: treat 552 to RCPT as temporary (it was RFC 821's 'too many recipients')"),
    # --- mailbox full ---
    Rule("mailbox-full", Outcome.DEFER, classes=_codes(4, 5), enhanced=_enh("X.2.2"),
         why="X.2.2 mailbox full: the owner may make room, so defer even under 5xx"),
    # --- the sender is refused: the same for every recipient ---
    Rule("sender-refused", Outcome.PAUSE, classes=_codes(5), stages=_stages(Stage.MAIL),
         throttle=Throttle.BY_WORDING,
         why="5xx to MAIL FROM (sender address, size, policy): would fail everyone alike; pause"),
    # --- a 5xx that is a relay's quota or rate limit in its own words: nobody failed ---
    Rule("over-sending-quota", Outcome.PAUSE, classes=_codes(5), wording=SENDING_QUOTA_WORDING,
         throttle=Throttle.YES,
         why="5xx saying our sending quota is used up: every message alike until it resets; pause, nobody failed"),
    Rule("over-sending-rate", Outcome.DEFER, classes=_codes(5), wording=SENDING_RATE_WORDING,
         throttle=Throttle.YES,
         why="5xx saying we send too fast: a rate limit despite the code; defer and slow down"),
    # --- temporary ---
    Rule("throttled-454", Outcome.DEFER, codes=_codes(454), throttle=Throttle.YES,
         why="454 outside AUTH: temporary refusal, commonly a rate limit: defer and slow down"),
    Rule("transient", Outcome.DEFER, classes=_codes(4), throttle=Throttle.BY_WORDING,
         why="450/451/452 and other 4xx: defer with backoff"),
    # --- permanent ---
    Rule("message-refused", Outcome.FAIL, codes=_codes(554), stages=_stages(Stage.DOT),
         throttle=Throttle.BY_WORDING,
         why="554 after the final dot: this message failed"),
    Rule("message-policy", Outcome.FAIL, classes=_codes(5), enhanced=_enh("X.7.*"), stages=_stages(Stage.DOT),
         throttle=Throttle.BY_WORDING,
         why="5.7.x after the final dot (policy, spam, DMARC): this message failed"),
    Rule("recipient-refused", Outcome.FAIL, codes=_codes(550, 551, 553), throttle=Throttle.BY_WORDING,
         why="550/551/553: mailbox unavailable, not local, name not allowed"),
    Rule("bad-address", Outcome.FAIL, classes=_codes(5), enhanced=_enh("X.1.*"),
         why="5.1.x: bad destination address"),
    Rule("permanent", Outcome.FAIL, classes=_codes(5), throttle=Throttle.BY_WORDING,
         why="any other 5xx: permanent failure"),
)


_ENHANCED = re.compile(r"^\s*(?:\d{3}[ -])?([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")


def parse_enhanced(text: str) -> str | None:
    """The RFC 3463 enhanced status code at the start of the reply text ("5.1.1"), or None."""
    match = _ENHANCED.match(text)
    if match is None:
        return None
    klass, subject, detail = match.groups()
    return f"{klass}.{int(subject)}.{int(detail)}"


def find_rule(
    code: int | None, text: str, stage: Stage, failure: Failure | None = None
) -> tuple[Rule, str | None]:
    """The first matching row of RULES, and the parsed enhanced code."""
    enhanced = parse_enhanced(text) if failure is None else None
    key = "X" + enhanced[1:] if enhanced else None
    for rule in RULES:
        if _matches(rule, code, text, stage, failure, key):
            return rule, enhanced
    # Only an unknown failure kind gets here: 'lost', 'positive', 'transient', 'permanent' and
    # 'nonsense' between them cover every failure and every code.
    raise ValueError(f"unknown transport failure kind {failure!r}")


def _matches(rule: Rule, code: int | None, text: str, stage: Stage, failure: str | None, key: str | None) -> bool:
    if (failure is None) == bool(rule.failures):
        return False
    if failure is not None:
        return failure in rule.failures and (not rule.stages or stage in rule.stages)
    assert code is not None
    return (
        (not rule.codes or code in rule.codes)
        and (not rule.classes or _reply_class(code) in rule.classes)
        and (not rule.stages or stage in rule.stages)
        and (not rule.enhanced or key is not None and _enhanced_matches(rule.enhanced, key))
        and (not rule.without_enhanced or key is None)
        and (rule.wording is None or rule.wording.search(text) is not None)
    )


def _reply_class(code: int) -> int:
    """The first digit of a well-formed code; 0 for anything outside 100-599."""
    return code // 100 if 100 <= code <= 599 else 0


def _enhanced_matches(patterns: frozenset[str], key: str) -> bool:
    if key in patterns:
        return True
    subject = key[: key.rindex(".") + 1] + "*"
    return subject in patterns


def classify(code: int, text: str, stage: Stage) -> Verdict:
    """Judge one SMTP reply to the command at `stage`."""
    if 200 <= code < 300:
        # Every message ends in one of these: the verdict of a positive reply does not depend
        # on its text (a queue id), so it is worked out once per code and stage.
        return _positive(code, stage)
    return _judge(code, text, stage)


@functools.lru_cache(maxsize=64)
def _positive(code: int, stage: Stage) -> Verdict:
    return _judge(code, "", stage)


def _judge(code: int, text: str, stage: Stage) -> Verdict:
    rule, enhanced = find_rule(code, text, stage)
    return Verdict(
        outcome=rule.outcome,
        code=code,
        enhanced=enhanced,
        text=one_line(text),
        throttle=_throttles(rule.throttle, text, enhanced),
        new_connection=rule.new_connection,
        in_doubt=rule.in_doubt,
        stage=stage,
    )


AUTH_TEXT_WITHHELD = "(server text withheld)"


def classify_auth(code: int, text: str) -> Verdict:
    """Judge a reply to AUTH without keeping its text: servers echo the SASL exchange (the base64
    PLAIN blob holds the password), so only the code and the enhanced code survive."""
    enhanced = parse_enhanced(text)
    kept = f"{enhanced} {AUTH_TEXT_WITHHELD}" if enhanced else AUTH_TEXT_WITHHELD
    return _judge(code, kept, Stage.AUTH)


def classify_failure(kind: Failure, stage: Stage, detail: str) -> Verdict:
    """Judge a connection that was refused, dropped or timed out while waiting at `stage`."""
    rule, _ = find_rule(None, detail, stage, kind)
    return Verdict(
        outcome=rule.outcome,
        code=None,
        enhanced=None,
        text=one_line(f"{_FAILURE_WORDS[kind]} {_STAGE_WORDS[stage]}: {detail}"),
        throttle=_throttles(rule.throttle, detail, None),
        new_connection=rule.new_connection,
        in_doubt=rule.in_doubt,
        stage=stage,
    )


def connection_lost(verdict: Verdict) -> bool:
    """The verdict is a connection the server ended (it was reached), not a reply, a refused
    connect or a timeout (classify_failure's kind "disconnect")."""
    return verdict.code is None and verdict.text.startswith(_FAILURE_WORDS["disconnect"] + " ")


# What the detail of a failure while connecting says when the server had taken the TCP connection
# and the failure came after it (no greeting in time, a hang-up during implicit TLS): it was reached.
REACHED = "took the connection"


# What the detail of a failed TLS handshake (implicit TLS or STARTTLS) starts with.
TLS_FAILED = "TLS failed with"


def server_reached(verdict: Verdict) -> bool:
    """The server was reached: it replied, ended the connection itself, had taken it when the
    failure came, or TLS with it failed. Only a connect refused or timed out (or a name that does
    not resolve) is not."""
    return (verdict.code is not None or verdict.stage is not Stage.CONNECT or connection_lost(verdict)
            or REACHED in verdict.text or tls_failed(verdict))


def tls_failed(verdict: Verdict) -> bool:
    """The TLS handshake with the server failed: its certificate was not trusted or not for
    its name, or the two sides share no protocol (TLS to a plain port). Not the network."""
    return verdict.code is None and f": {TLS_FAILED} " in verdict.text


_FAILURE_WORDS: dict[str, str] = {
    "disconnect": "connection lost",
    "timeout": "timed out",
    "refused": "refused",
    "unsendable": "not sent",
}
_STAGE_WORDS: dict[Stage, str] = {
    Stage.CONNECT: "while connecting",
    Stage.HELO: "at EHLO",
    Stage.AUTH: "at login",
    Stage.MAIL: "at MAIL FROM",
    Stage.RCPT: "at RCPT TO",
    Stage.DATA: "at DATA",
    Stage.DOT: "after the final dot",
}


def _throttles(throttle: Throttle, text: str, enhanced: str | None) -> bool:
    if throttle is Throttle.BY_WORDING:
        return (enhanced is None or enhanced[1:].startswith(".7.")) and RATE_WORDING.search(text) is not None
    return throttle is Throttle.YES


_CONTINUATION_CODE = re.compile(r"^\s*[245]\.\d{1,3}\.\d{1,3}\s+")


def one_line(text: str) -> str:
    """A reply (possibly multi-line) as one trimmed line, enhanced codes not repeated per line."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > 1:
        lines = lines[:1] + [_CONTINUATION_CODE.sub("", line) for line in lines[1:]]
    flat = " ".join(" ".join(line.split()) for line in lines)
    flat = "".join(ch if ch.isprintable() else "?" for ch in flat)
    return flat if len(flat) <= MAX_TEXT else flat[: MAX_TEXT - 1] + "…"


# ---- stored failures: suppression and retry (issue 13, items 6 and 9) ---------------------------

# The enhanced codes that say the address itself is bad for good (RFC 3463): X.1.1 bad mailbox,
# X.1.2 bad destination system, X.1.3 bad address syntax, X.1.6 mailbox moved, X.1.10 null MX
# (RFC 7505), X.2.1 mailbox disabled.
MAILBOX_GONE = frozenset({"X.1.1", "X.1.2", "X.1.3", "X.1.6", "X.1.10", "X.2.1"})
# A 550/551/553 without a specific enhanced code says so in words. "Mailbox unavailable" alone
# is RFC 5321's catch-all (policy blocks use it too), so it is not enough.
MAILBOX_GONE_WORDING = re.compile(
    r"user unknown|unknown (?:user|recipient|mailbox|address)|no such (?:user|mailbox|recipient|address|account)"
    r"|(?:user|mailbox|recipient|address|account) (?:does not|doesn't|not) exists?"
    r"|(?:user|mailbox|recipient|account) (?:not found|unknown|is disabled|disabled|is inactive)"
    r"|invalid (?:mailbox|recipient|user)",
    re.IGNORECASE,
)
# How the sender words a recipient it gave up on after the retry age (sender._deferral).
GAVE_UP = "gave up after "


def mailbox_gone(code: int | None, text: str) -> bool:
    """Whether a permanent failure (code and reply text, as the ledger keeps them) says the
    mailbox does not exist or is disabled: the address belongs on the suppression list."""
    if code is None or _reply_class(code) != 5 or text.startswith(GAVE_UP):
        return False
    enhanced = parse_enhanced(text)
    if enhanced is not None and enhanced[2:] != "0.0":
        return "X" + enhanced[1:] in MAILBOX_GONE
    return code in (550, 551, 553) and MAILBOX_GONE_WORDING.search(text) is not None


def failure_may_pass(code: int | None, text: str) -> bool:
    """Whether a recorded failure may pass when tried again: given up after the retry age, a
    policy refusal (X.7.x: reputation, DMARC, spam), a routing or mail-system failure (X.4.x,
    X.3.x but a message too big), or a 554 without an enhanced code. Unknown mailboxes, bad
    addresses, other 5xx and failures without a reply (an address the server cannot take) are
    permanent."""
    if text.startswith(GAVE_UP) or (code is not None and _reply_class(code) == 4):
        return True
    if code is None or mailbox_gone(code, text):
        return False
    enhanced = parse_enhanced(text)
    if enhanced is None:
        return code == 554
    subject = enhanced.split(".", 1)[1]
    return subject.startswith(("4.", "7.")) or (subject.startswith("3.") and subject != "3.4")

# ---- whose pushback: the relay's or one destination domain's ------------------------------------

# Replies to these commands speak of one recipient's domain (the relay took our MAIL FROM):
# a throttle here is that domain pushing back (Gmail's "421 4.7.28", "450 4.7.1 too many ...").
RECIPIENT_STAGES = frozenset({Stage.RCPT, Stage.DATA, Stage.DOT})


def is_temporary_refusal(verdict: Verdict, stages: frozenset[Stage] = frozenset({Stage.MAIL, Stage.RCPT})) -> bool:
    """A 4xx reply at one of `stages`: what a burst of "slow down, whatever the words" is made of."""
    return verdict.code is not None and 400 <= verdict.code < 500 and verdict.stage in stages


def slows_domain(verdict: Verdict) -> bool:
    """A reply to a recipient's command that asks us to slow mail to that domain: every reply
    the table marks as throttling (421, 454, rate wording), and any 4xx with an X.7.x enhanced
    code (policy: Gmail's 4.7.28 "unusual rate", Yahoo's 4.7.0 "deferred due to user complaints")."""
    if verdict.stage not in RECIPIENT_STAGES or verdict.code is None:
        return False
    return verdict.throttle or (
        400 <= verdict.code < 500 and verdict.enhanced is not None and verdict.enhanced.startswith("4.7.")
    )


BURST_COUNT = 5  # this many temporary refusals...
BURST_WINDOW = 2.0  # ...within this many seconds from one scope (a relay, a domain group)...
BURST_SHARE = 0.5  # ...when they are at least this share of its replies in that window


@dataclass(eq=False)
class ReplyBurst:
    """A burst of temporary refusals from one scope counts as throttling whatever their wording:
    at least BURST_COUNT within BURST_WINDOW seconds, and at least BURST_SHARE of that scope's
    replies in that window (a few greylisted recipients in heavy traffic are not a burst)."""

    count: int = BURST_COUNT
    window: float = BURST_WINDOW
    share: float = BURST_SHARE
    # Replies since the first recent refusal: (monotonic time, was a refusal); empty (and not
    # appended to) while no refusal is recent, so the common case costs nothing.
    recent: deque[tuple[float, bool]] = field(default_factory=deque)
    refusals: int = 0

    def note(self, temporary: bool, now: float | None = None) -> bool:
        """Note one reply; True when the recent ones make a burst (then it starts afresh)."""
        if not (temporary or self.refusals):
            return False
        now = time.monotonic() if now is None else now
        recent = self.recent
        recent.append((now, temporary))
        self.refusals += temporary
        while recent and recent[0][0] < now - self.window:
            self.refusals -= recent.popleft()[1]
        if self.refusals >= self.count and self.refusals >= self.share * len(recent):
            recent.clear()
            self.refusals = 0
            return True
        return False
