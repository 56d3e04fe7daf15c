"""Settings: command-line flags, then MAILTOWER_* environment variables, then a TOML file, then defaults.

Every value is checked where it enters, whatever the source, and a refusal names that source (the
flag, the variable, or the file and key). Every numeric setting has one row in `BOUNDS` and one
function checks it, `parse_number`; the `limits` command and the dashboard's limits dialog use the
same function (through `limits.parse_limit`), so no source can smuggle in NaN, infinity, a negative
count or a value that exhausts the machine.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import math
import os
import re
import stat
import sys
import tomllib
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import platformdirs

from .compose import ascii_domain  # the same IDNA rules as the envelope (for dkim_domain)
from .display import unsafe_character
from .errors import UserError
from .db_target import PgTarget, looks_like_postgres, parse_pg_url
from .files import MAX_CONFIG_BYTES, MAX_SECRET_BYTES, read_text_bounded, stat_named

TLS_MODES = ("none", "starttls", "tls")

# `--config /dev/null` (or MAILTOWER_CONFIG=/dev/null) means "no configuration file"; it is also
# what a background sender is given when its parent read none.
NO_CONFIG = Path(os.devnull)

CONFIG_ENV = "MAILTOWER_CONFIG"
PASSWORD_ENV = "MAILTOWER_SMTP_PASSWORD"
PASSWORD_FILE_ENV = "MAILTOWER_SMTP_PASSWORD_FILE"


def default_db_path() -> Path:
    return Path(platformdirs.user_data_dir("mailtower")) / "mailtower.db"


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir("mailtower")) / "config.toml"


# ---- bounds of numeric settings ---------------------------------------------------------------

DAY = 86400.0
# Each connection is a socket, a TLS session and a task. The default soft limit of open files on
# Linux is 1024 and the sender also needs the database, its WAL, the lease and the terminal; real
# relays accept far fewer per client anyway (Postfix: 50 by default). 500 in all leaves headroom.
MAX_CONNECTIONS = 500
# Slower than one message per 100 s is a per-hour budget (rate_per_hour, from 1 a hour), which the
# pacer waits for in short steps; a per-second rate that slow only ever means a long sleep.
MIN_RATE = 0.01
# No relay answers a command sooner than this over a network; a smaller timeout (1e-320 was
# accepted) fails every connection at once and reads as the relay's fault.
MIN_TIMEOUT = 0.1
# Retry and backoff waits: anything shorter is a busy loop against the relay (tests use 0.02 s).
MIN_WAIT = 0.01


@dataclass(frozen=True, slots=True)
class Bound:
    """The values one numeric setting may take."""

    kind: type  # int or float
    low: float
    high: float
    above_low: bool = False  # the value must be greater than `low` (a timeout of 0 is no timeout)
    least_nonzero: float = 0.0  # when 0 means off/unlimited: the smallest value that is not 0
    zero_means: str = ""  # what 0 means, when it is special

    def problem(self, value: float) -> str | None:
        """What is wrong with a (finite) `value`, or None when it is allowed."""
        if self.above_low and value <= self.low:
            return f"must be greater than {_number_text(self.low)}"
        if value < self.low:
            return f"must be at least {_number_text(self.low)}"
        if value > self.high:
            return f"must be at most {_number_text(self.high)}"
        if value != 0 and value < self.least_nonzero:
            return f"must be 0 ({self.zero_means}) or at least {_number_text(self.least_nonzero)}"
        return None

    def describe(self) -> str:
        """ "a whole number from 1 to 500", for help texts and hints."""
        what = "a whole number" if self.kind is int else "a number"
        if self.above_low:
            return f"{what} greater than {_number_text(self.low)} and at most {_number_text(self.high)}"
        if self.least_nonzero:
            return (f"0 ({self.zero_means}) or {what} from {_number_text(self.least_nonzero)} "
                    f"to {_number_text(self.high)}")
        zero = f" (0 = {self.zero_means})" if self.zero_means and self.low == 0 else ""
        return f"{what} from {_number_text(self.low)} to {_number_text(self.high)}{zero}"


# Every numeric setting, whatever its source. Durations are in seconds; their upper bounds keep date
# arithmetic far from overflow while allowing any real use.
BOUNDS: dict[str, Bound] = {
    "smtp_port": Bound(int, 1, 65535),
    "smtp_timeout": Bound(float, MIN_TIMEOUT, 3600),
    "smtp_data_timeout": Bound(float, MIN_TIMEOUT, 3600),  # RFC 5321 suggests 600
    "connections": Bound(int, 1, MAX_CONNECTIONS),
    "rate": Bound(float, 0, 1e6, least_nonzero=MIN_RATE, zero_means="unlimited"),  # messages per second
    "rate_per_hour": Bound(float, 0, 1e9, least_nonzero=1, zero_means="unlimited"),  # a live limit only
    "messages_per_connection": Bound(int, 0, 1_000_000, zero_means="never reconnect"),
    # Rows claimed per transaction; the default (0) is 25 per connection, 12,500 at most.
    "batch_size": Bound(int, 0, 50_000, zero_means="from the connections"),
    "retry_base": Bound(float, MIN_WAIT, 30 * DAY),
    "retry_max": Bound(float, MIN_WAIT, 30 * DAY),
    "retry_max_age": Bound(float, MIN_WAIT, 365 * DAY),
    "connect_backoff_max": Bound(float, MIN_WAIT, DAY),
    # 0 is meaningful: a schedule missed while no sender ran is never sent late on its own.
    "grace": Bound(float, 0, 365 * DAY),
    # A domain group's own cap on messages in flight ([domains.NAME] connections; a live limit too).
    "domain_connections": Bound(int, 0, MAX_CONNECTIONS, zero_means="no cap of its own"),
    # Breaker and canary (core/breaker.py, core/canary.py). Thresholds are percentages ("5%" or 5);
    # 0 turns that check off. The window holds recent outcomes in memory: 100,000 at most.
    "breaker_window": Bound(int, 10, 100_000),
    "breaker_hard": Bound(float, 0, 100, zero_means="off"),
    "breaker_soft": Bound(float, 0, 100, zero_means="off"),
    "breaker_min": Bound(int, 1, 100_000),
    # Messages per second while sampling; below `rate`'s floor the queue waits for ever behind it.
    "canary_rate": Bound(float, MIN_RATE, 10_000),
    "canary_wait": Bound(float, 0, 7 * 24 * 60),  # minutes the canary holds before the rest goes out
    # Several senders on one database (issue 15, core/fleet.py): a sender whose heartbeat is older
    # than this is dead; its claims expire and its in-flight rows become in doubt.
    "sender_heartbeat_timeout": Bound(float, 1, DAY),
}
# Settings given in percent: "5%" and 5 are the same.
PERCENT_SETTINGS = frozenset({"breaker_hard", "breaker_soft"})
_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)
_NONZERO_DIGIT = re.compile(r"[1-9]")
_SHOWN_CHARS = 40
_MAX_DIGITS = 1000


def _number_text(value: float) -> str:
    """1000000 rather than 1e+06; 0.01 stays 0.01."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


class WrittenFloat(float):
    """A TOML float that remembers how it was written: tomllib reads `1e-400` as 0.0, which would
    turn a threshold off or make a rate unlimited; the text tells "0" from "too small"."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> "WrittenFloat":
        number = super().__new__(cls, text)
        number.text = text
        return number


def show_value(raw: object, secret: bool = False) -> str:
    """A value as an error line may quote it: one line, short, control characters escaped."""
    if secret:
        return "(the value is hidden)"
    if isinstance(raw, WrittenFloat):
        return show_value(raw.text).strip("'")  # as written in the file, unquoted like any TOML number
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if not isinstance(raw, str):
        text = str(raw)
        return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."
    text = raw if len(raw) <= _SHOWN_CHARS else raw[:_SHOWN_CHARS] + "..."
    return repr(text) if not text.isprintable() else f"'{text}'"


def _as_number(raw: object, kind: type) -> int | float | None:
    """`raw` as a number of `kind`, or None when it is not one (a boolean is not a number, nor is
    2.5 a whole number). Text must be plain ASCII decimal: no "nan", "inf", "0x10" or "1_000"."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        if kind is int:
            return raw
        try:
            return float(raw)
        except OverflowError:
            return math.inf
    if isinstance(raw, float):
        return raw if kind is float else None
    if isinstance(raw, str):
        text = raw.strip()
        if kind is int:
            if not _INTEGER.fullmatch(text):
                return None
            if len(text) > _MAX_DIGITS:  # int() refuses such text; it is out of every bound anyway
                return -(10**_MAX_DIGITS) if text.startswith("-") else 10**_MAX_DIGITS
            return int(text)
        return float(text) if _DECIMAL.fullmatch(text) else None  # 1e999 is inf, refused by the caller
    return None


def parse_number(name: str, raw: object, source: str) -> int | float:
    """The value of numeric setting `name` from `raw` (text from a flag, a variable or a dialog,
    or a TOML number); refuses anything outside BOUNDS with one line that starts with `source`."""
    bound = BOUNDS[name]
    number = raw
    if name in PERCENT_SETTINGS and isinstance(raw, str) and raw.strip().endswith("%"):
        number = raw.strip()[:-1]  # "5%" is 5 (percent); the rest is checked like any number
    value = _as_number(number, bound.kind)
    if value is None:
        what = "a whole number" if bound.kind is int else "a number"
        raise UserError(f"{source}: {show_value(raw)} is not {what}")
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{source}: {show_value(raw)} is not a finite number")
    if _too_small(value, number):
        # "1e-400" is not 0 to the person who wrote it, yet float() makes it 0, which turns a
        # threshold off or makes a timeout none: refused rather than read as something not written.
        # A subnormal (1e-320) is as meaningless and shows as 9.99989e-321.
        raise UserError(f"{source}: {show_value(raw)} is too small to tell from 0")
    problem = bound.problem(value)
    if problem is not None:
        # The value as given: "-5%", "-5" and "-0.5" all read "must be at least 0", and the
        # person must see which value was taken (a flag, a variable or the file may have set it).
        raise UserError(f"{source}: {show_value(raw)} {problem}")
    # -0.0 is 0 (float(-0.0) would keep the sign); a WrittenFloat becomes a plain float.
    return bound.kind(0) if value == 0 else bound.kind(value)


def _too_small(value: int | float, number: object) -> bool:
    """A float that is subnormal, or 0 although its text (a flag's, a variable's, a TOML
    token) has a nonzero digit before the exponent."""
    if not isinstance(value, float):
        return False
    if value != 0:
        return abs(value) < sys.float_info.min
    written = number.text if isinstance(number, WrittenFloat) else number
    if not isinstance(written, str):
        return False  # a float given in code: nothing was written
    return _NONZERO_DIGIT.search(re.split("[eE]", written.strip())[0]) is not None


# ---- the settings -----------------------------------------------------------------------------


class SecretOrigin(str, enum.Enum):
    """Where the SMTP password came from, so a background sender gets it the same way."""

    VALUE = "value"  # given as a value: MAILTOWER_SMTP_PASSWORD, or in code
    FILE = "file"  # read from a regular file (smtp_password_file) that the child can read again
    STREAM = "stream"  # read once from a pipe or FIFO; a child is handed it on its stdin
    CONFIG = "config"  # written in the TOML file, which the child reads again


@dataclass(frozen=True, slots=True)
class RelaySpec:
    """One relay of a pool, as the TOML config lists it under [[relays]]."""

    host: str
    port: int = 25
    tls: str = "starttls"
    user: str = ""
    password: str = field(default="", repr=False)
    connections: int = 4
    rate: float = 0.0
    verify: bool = True
    ca_file: str = ""
    name: str = ""
    password_file: str = ""  # where `password` was read from, if from a file (never written over)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting, after the command line, the environment and the TOML file were merged and
    checked against BOUNDS."""

    db: Path | PgTarget = field(default_factory=default_db_path)  # a SQLite file or a PostgreSQL URL
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_tls: str = "none"  # none | starttls | tls
    smtp_user: str = ""
    smtp_password: str = field(default="", repr=False)
    smtp_verify: bool = True  # verify TLS certificates
    smtp_ca_file: str = ""  # extra CA bundle (PEM) to trust, e.g. a private CA
    smtp_allow_plain: bool = False  # allow tls=none to a host that is not on a loopback address
    smtp_timeout: float = 60.0  # seconds for a command reply
    smtp_data_timeout: float = 300.0  # seconds for the reply to the final dot (RFC 5321 4.5.3.2.6)
    connections: int = 4
    rate: float = 0.0  # messages per second, 0 = unlimited
    messages_per_connection: int = 1000  # reconnect after this many (0 = never)
    helo_name: str = ""
    batch_size: int = 0  # rows claimed per transaction; 0 = derived from connections
    retry_base: float = 300.0  # first deferral wait, seconds
    retry_max: float = 3600.0  # longest deferral wait
    retry_max_age: float = 5 * 86400.0  # give up on a deferred recipient after this long
    connect_backoff_max: float = 60.0
    grace: float = 3600.0  # a schedule missed by less than this is still sent on start
    # Breaker and canary: window of recent outcomes, thresholds in percent (0 = off), the least
    # outcomes (of the window, or of one domain in it) before a threshold is judged; canary pace
    # (messages per second) and hold (minutes).
    breaker_window: int = 500
    breaker_hard: float = 5.0
    breaker_soft: float = 20.0
    breaker_min: int = 20
    canary_rate: float = 1.0
    canary_wait: float = 10.0
    sender_heartbeat_timeout: float = 30.0  # seconds (fleet, core/fleet.py)
    relays: tuple[RelaySpec, ...] = ()  # a pool of relays; empty means the one smtp_* relay
    domains: tuple["DomainGroupSpec", ...] = ()  # pacing by destination ([domains.NAME] in the TOML file)
    allow_special_domains: bool = False  # accept .local, .test, ... addresses (internal networks)
    # DKIM signing (issue 13, item 8; checked in the DKIM block below, the key read by core/dkim_signing).
    # Text, not Path/tuple: "" means "not set", also in a background sender's environment.
    dkim_domain: str = ""  # d=, as an A-label; signing is on when domain, selector and key file are set
    dkim_selector: str = ""  # s=
    dkim_key_file: str = ""  # PEM RSA or Ed25519 private key, or dknewkey's base64 Ed25519 key; mode 0600
    dkim_algorithm: str = "rsa-sha256"  # or ed25519-sha256
    dkim_headers: str = ""  # header names to sign, "from:to:subject"; "" = mailtower's default set
    config_path: Path | None = None  # the TOML file these settings were read from (for child processes)
    smtp_password_file: Path | None = None  # the file smtp_password was read from, if any
    smtp_password_origin: SecretOrigin = SecretOrigin.VALUE
    # (live limit, source) of each of LIVE_LIMITS given explicitly ("--rate", "MAILTOWER_RATE",
    # "FILE rate"), not a default: a stored live limit that differs must not silently beat it
    # (core/limits.py applies the more careful of the two and says so).
    limit_sources: tuple[tuple[str, str], ...] = ()

    def with_overrides(self, values: Mapping[str, Any]) -> "Settings":
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    @property
    def given_limits(self) -> str:
        """`limit_sources` as text, for a background sender's environment (GIVEN_LIMITS_ENV): the
        hand-off passes every setting as a variable, defaults too, so without it a child would
        take a default for a value someone gave."""
        return json.dumps(dict(self.limit_sources), sort_keys=True)


# Environment variable -> setting name.
ENV: dict[str, str] = {
    "MAILTOWER_DB": "db",
    "MAILTOWER_SMTP_HOST": "smtp_host",
    "MAILTOWER_SMTP_PORT": "smtp_port",
    "MAILTOWER_SMTP_TLS": "smtp_tls",
    "MAILTOWER_SMTP_USER": "smtp_user",
    PASSWORD_ENV: "smtp_password",
    PASSWORD_FILE_ENV: "smtp_password_file",
    "MAILTOWER_SMTP_VERIFY": "smtp_verify",
    "MAILTOWER_SMTP_CA_FILE": "smtp_ca_file",
    "MAILTOWER_SMTP_ALLOW_PLAIN": "smtp_allow_plain",
    "MAILTOWER_SMTP_TIMEOUT": "smtp_timeout",
    "MAILTOWER_SMTP_DATA_TIMEOUT": "smtp_data_timeout",
    "MAILTOWER_SMTP_CONNECTIONS": "connections",
    "MAILTOWER_RATE": "rate",
    "MAILTOWER_MESSAGES_PER_CONNECTION": "messages_per_connection",
    "MAILTOWER_RETRY_BASE": "retry_base",
    "MAILTOWER_RETRY_MAX": "retry_max",
    "MAILTOWER_RETRY_MAX_AGE": "retry_max_age",
    "MAILTOWER_GRACE": "grace",
    "MAILTOWER_BATCH_SIZE": "batch_size",
    "MAILTOWER_ALLOW_SPECIAL_DOMAINS": "allow_special_domains",
    "MAILTOWER_BREAKER_WINDOW": "breaker_window",
    "MAILTOWER_BREAKER_HARD": "breaker_hard",
    "MAILTOWER_BREAKER_SOFT": "breaker_soft",
    "MAILTOWER_BREAKER_MIN": "breaker_min",
    "MAILTOWER_CANARY_RATE": "canary_rate",
    "MAILTOWER_CANARY_WAIT": "canary_wait",
    "MAILTOWER_SENDER_HEARTBEAT_TIMEOUT": "sender_heartbeat_timeout",
}
# The limits an operator changes live (core/limits.py), in the order they are shown.
LIVE_LIMITS = ("rate", "rate_per_hour", "connections", "messages_per_connection")
# Set by mailtower for a background sender (tui/handoff.py passes every ENV entry): which of its
# MAILTOWER_* limit values its parent was given explicitly, and by what (Settings.given_limits).
GIVEN_LIMITS_ENV = "MAILTOWER_GIVEN_LIMITS"
GIVEN_LIMITS = "given_limits"
ENV[GIVEN_LIMITS_ENV] = GIVEN_LIMITS
_MAX_GIVEN_LIMITS = 64 * 1024

TEXT_SETTINGS = frozenset({"smtp_host", "smtp_user", "smtp_password", "smtp_ca_file", "helo_name"})
BOOL_SETTINGS = frozenset({"smtp_verify", "smtp_allow_plain", "allow_special_domains"})
PATH_SETTINGS = frozenset({"db", "smtp_password_file"})
SECRET_SETTINGS = frozenset({"smtp_password"})
# What a source may set (relays come only from the TOML file; the rest is derived).
SETTABLE = TEXT_SETTINGS | BOOL_SETTINGS | PATH_SETTINGS | {"smtp_tls"} | (
    BOUNDS.keys() - {"rate_per_hour", "domain_connections"})
PASSWORD_SETTINGS = ("smtp_password", "smtp_password_file")
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def _control_character(text: str) -> bool:
    """Control characters and line breaks: never part of a host, a name, a path or a password,
    and a line break in an SMTP command would be an injection."""
    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in text)


def _shown_setting_unsafe(text: str) -> bool:
    """As _control_character, and direction overrides and isolates too: a host, path or name is
    echoed in warnings and errors, where U+202E would show 'evil\u202egro.elpmaxe' as another name."""
    return _control_character(text) or unsafe_character(text) is not None


def _text(name: str, raw: object, source: str) -> str:
    if not isinstance(raw, str):
        raise UserError(f"{source}: {show_value(raw)} is not text")
    if (_control_character if name in SECRET_SETTINGS else _shown_setting_unsafe)(raw):
        what = "a control character" if name in SECRET_SETTINGS else "a control character or a direction override"
        raise UserError(f"{source}: {show_value(raw, name in SECRET_SETTINGS)} contains {what}")
    return raw


# ---- DKIM signing (issue 13, item 8) ------------------------------------------------------------
# Only the settings' text is checked here (every command loads settings); the key file itself is
# checked and parsed by core/dkim_signing when a command is about to send.

DKIM_ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
DKIM_ENV: dict[str, str] = {
    "MAILTOWER_DKIM_DOMAIN": "dkim_domain",
    "MAILTOWER_DKIM_SELECTOR": "dkim_selector",
    "MAILTOWER_DKIM_KEY_FILE": "dkim_key_file",
    "MAILTOWER_DKIM_ALGORITHM": "dkim_algorithm",
    "MAILTOWER_DKIM_HEADERS": "dkim_headers",
}
DKIM_SETTINGS = frozenset(DKIM_ENV.values())
DKIM_REQUIRED = ("dkim_domain", "dkim_selector", "dkim_key_file")  # all three, or none
# RFC 6376 5.4.1: fields a signer should not sign (relays add or remove them); dkimpy refuses them too.
DKIM_UNSIGNABLE = frozenset({"return-path", "received", "comments", "keywords", "bcc", "resent-bcc", "dkim-signature"})
MAX_DKIM_HEADERS = 64
ENV.update(DKIM_ENV)
SETTABLE = SETTABLE | DKIM_SETTINGS
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
_HEADER_FIELD_NAME = re.compile(r"[!-9;-~]+", re.ASCII)  # RFC 5322 ftext: printable ASCII but ":"


def dkim_setting(name: str, raw: object, source: str) -> str:
    """The value of DKIM setting `name` from `raw`, checked and normalised ("" = not set)."""
    if name == "dkim_headers" and isinstance(raw, (list, tuple)):  # a TOML list of names
        for item in raw:
            if not isinstance(item, str) or not _HEADER_FIELD_NAME.fullmatch(item.strip()):
                raise UserError(f"{source}: {show_value(item)} is not a header name")
        raw = ":".join(raw)
    text = _text(name, raw, source)
    if name == "dkim_key_file":
        return str(Path(text).expanduser()) if text else ""
    text = text.strip()
    if name == "dkim_algorithm":
        if text.lower() not in DKIM_ALGORITHMS:
            raise UserError(f"{source}: {show_value(raw)} must be one of {', '.join(DKIM_ALGORITHMS)}")
        return text.lower()
    if not text:
        return ""
    if name == "dkim_domain":
        return _dkim_domain(text, raw, source)
    if name == "dkim_selector":
        labels = text.lower().split(".")
        if not all(_DNS_LABEL.fullmatch(label) for label in labels):
            raise UserError(f"{source}: {show_value(raw)} is not a DKIM selector (letters, digits and '-', "
                            "labels separated by dots)")
        return text.lower()
    return _dkim_headers(text, source)


def _dkim_domain(text: str, raw: object, source: str) -> str:
    domain = ascii_domain(text[:-1] if text.endswith(".") else text)
    labels = domain.lower().split(".") if domain else []
    if not labels or len(domain or "") > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise UserError(f"{source}: {show_value(raw)} is not a domain name")
    return ".".join(labels)


def _dkim_headers(text: str, source: str) -> str:
    names = [name.lower() for name in re.split(r"[\s:,]+", text) if name]
    for name in names:
        if not _HEADER_FIELD_NAME.fullmatch(name):
            raise UserError(f"{source}: {show_value(name)} is not a header field name")
        if name in DKIM_UNSIGNABLE:
            raise UserError(f"{source}: {name} must not be signed (RFC 6376 5.4.1: relays add or change it)")
    if "from" not in names:
        raise UserError(f"{source}: the list must include from (RFC 6376 5.4: From is always signed)")
    if len(names) > MAX_DKIM_HEADERS:
        raise UserError(f"{source}: {len(names)} header names; at most {MAX_DKIM_HEADERS}")
    return ":".join(names)


def check_dkim_settings(settings: Settings, source: Callable[[str], str]) -> None:
    """The DKIM settings again (they may have been built in code): each value, and all three of
    domain, selector and key file, or none."""
    for name in sorted(DKIM_SETTINGS):
        dkim_setting(name, getattr(settings, name), source(name))
    given = [name for name in DKIM_REQUIRED if getattr(settings, name)]
    if given and len(given) < len(DKIM_REQUIRED):
        missing = next(name for name in DKIM_REQUIRED if not getattr(settings, name))
        raise UserError(f"{source(given[0])}: DKIM signing also needs {missing} "
                        "(set dkim_domain, dkim_selector and dkim_key_file together)")
    record = f"{settings.dkim_selector}._domainkey.{settings.dkim_domain}"
    if given and len(record) > 253:
        raise UserError(f"{source('dkim_selector')}: the key's DNS name {record} is longer than 253 characters")


def convert_setting(name: str, raw: object, source: str) -> Any:
    """The value of setting `name` from `raw`, checked; errors start with `source`."""
    if name in BOUNDS:
        return parse_number(name, raw, source)
    if name in BOOL_SETTINGS:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int) and raw in (0, 1):
            return bool(raw)  # a TOML integer: `= 1` was refused as not one of "... 1, 0 ..."
        text = raw.strip().lower() if isinstance(raw, str) else None
        if text in TRUE_WORDS:
            return True
        if text in FALSE_WORDS:
            return False
        raise UserError(f"{source}: {show_value(raw)} is not one of true, false, 1, 0, yes, no, on, off")
    if name == "db" and isinstance(raw, PgTarget):
        return raw
    if name == "db" and isinstance(raw, str) and looks_like_postgres(raw.strip()):
        # PostgreSQL (issue 15): checked and shown without its password (core/db_target.py).
        return parse_pg_url(raw.strip(), source)
    if name in PATH_SETTINGS:
        text = _text(name, str(raw) if isinstance(raw, Path) else raw, source)
        if not text.strip():
            raise UserError(f"{source}: an empty path is not a file name")
        return Path(text).expanduser()
    if name == "smtp_tls":
        text = _text(name, raw, source)
        if text not in TLS_MODES:
            raise UserError(f"{source}: {show_value(raw)} must be one of {', '.join(TLS_MODES)}")
        return text
    if name in TEXT_SETTINGS:
        return _text(name, raw, source)
    if name in DKIM_SETTINGS:
        return dkim_setting(name, raw, source)
    if name == GIVEN_LIMITS:
        return _given_limits(raw, source)
    raise UserError(f"{source}: unknown setting '{name}'")


def _given_limits(raw: object, source: str) -> dict[str, str]:
    """GIVEN_LIMITS_ENV's text: a JSON object of live limit -> the source it was given by."""
    what = f"{source}: {show_value(raw)} is not what mailtower hands a background sender " \
           "(a JSON object of limit names and where each was given)"
    try:
        given = json.loads(raw) if isinstance(raw, str) and len(raw) <= _MAX_GIVEN_LIMITS else None
    except ValueError:
        given = None
    if not isinstance(given, dict):
        raise UserError(what)
    for name, where in given.items():
        if name not in LIVE_LIMITS or not isinstance(where, str) or not where or _shown_setting_unsafe(where):
            raise UserError(what)
    return given


# ---- sources ----------------------------------------------------------------------------------


class Layer(enum.Enum):
    CONFIG = "config"
    ENVIRONMENT = "environment"
    FLAGS = "flags"


@dataclass(frozen=True, slots=True)
class Given:
    """One value as a source gave it, already checked."""

    value: Any
    source: str  # "--rate", "MAILTOWER_RATE", "/etc/mailtower.toml [smtp] rate"
    layer: Layer


def flag_name(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _layer(values: Iterable[tuple[str, object, str]], layer: Layer) -> dict[str, Given]:
    """Check each (setting, raw value, source) of one layer; a layer may name only one password source."""
    given: dict[str, Given] = {}
    for name, raw, source in values:
        if name in given:
            # `rate = 5` and `[smtp] rate = 7` in one file: which one was meant is not for us to guess.
            raise UserError(f"{source}: the same setting as {given[name].source}; give it once")
        if name in ("relays", "domains"):
            given[name] = Given(tuple(raw), source, layer)  # type: ignore[call-overload]
        else:
            given[name] = Given(convert_setting(name, raw, source), source, layer)
    if all(name in given for name in PASSWORD_SETTINGS):
        raise UserError(
            f"{given['smtp_password_file'].source}: give the password or a password file, not both "
            f"({given['smtp_password'].source} is also set)"
        )
    return given


def _limit_sources(merged: Mapping[str, Given]) -> tuple[tuple[str, str], ...]:
    """(name, source) of each live limit given explicitly. A background sender's variables carry
    every setting, defaults too: there GIVEN_LIMITS_ENV says which of them its parent was given
    (flags given to the child itself are always explicit)."""
    handed = merged.get(GIVEN_LIMITS)
    sources: dict[str, str] = {}
    for name in LIVE_LIMITS:
        given = merged.get(name)
        if given is None:
            continue
        if handed is None or given.layer is Layer.FLAGS:
            sources[name] = given.source
        elif name in handed.value:
            sources[name] = handed.value[name]
    return tuple(sources.items())


def _merge(layers: Iterable[dict[str, Given]]) -> dict[str, Given]:
    """Later layers win; a password given either way replaces both ways of an earlier layer."""
    merged: dict[str, Given] = {}
    for layer in layers:
        if any(name in layer for name in PASSWORD_SETTINGS):
            for name in PASSWORD_SETTINGS:
                merged.pop(name, None)
        merged.update(layer)
    return merged


# ---- the TOML file ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """The TOML file to read and who named it (a flag or variable), or None for the default."""

    path: Path
    named_by: str | None

    @property
    def what(self) -> str:
        return self.named_by or "config file"


def _choose_config(config_path: Path | None, config_flag: str | None, environ: Mapping[str, str]) -> ConfigFile:
    if config_path is not None:
        return ConfigFile(Path(config_path).expanduser(), config_flag)
    if environ.get(CONFIG_ENV, ""):
        named = environ[CONFIG_ENV]
        if _shown_setting_unsafe(named):
            raise UserError(f"{CONFIG_ENV}: {show_value(named)} contains a control character or a direction override")
        return ConfigFile(Path(named).expanduser(), CONFIG_ENV)
    return ConfigFile(default_config_path(), None)


def _read_config(config: ConfigFile) -> tuple[dict[str, Any], Path | None]:
    """The TOML document and the path a child process should read again (None: no file was read).

    A file named explicitly must exist; the default one may be absent. The file must be a regular
    file (or /dev/null for none): a background sender reads it again, which a pipe cannot give."""
    path = config.path
    if path == NO_CONFIG:
        return {}, NO_CONFIG
    if config.named_by is None and not os.path.lexists(path):
        return {}, None
    info = stat_named(path, f"{config.what}: {path}")
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"{config.what}: {path} is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{config.what}: {path} is not a regular file (a background sender must read it again)")
    text = read_text_bounded(path, limit=MAX_CONFIG_BYTES, what=config.what)
    try:
        data = tomllib.loads(text, parse_float=WrittenFloat)  # the written token: see WrittenFloat
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{config.what}: {path}: not valid TOML ({exc})") from None
    except RecursionError:  # tomllib recurses once per nested [ or {: no real setting nests that deep
        raise UserError(f"{config.what}: {path}: not valid TOML for mailtower "
                        "(arrays or tables nested too deeply)") from None
    return data, path.absolute()


# [smtp] keys that are not spelled smtp_<key> as settings.
SMTP_TABLE_NAMES = {name: name for name in ("connections", "rate", "messages_per_connection", "helo_name")}


def _config_values(data: Mapping[str, Any], path: Path) -> Iterable[tuple[str, object, str]]:
    for key, value in data.items():
        if key == "smtp":
            if not isinstance(value, dict):
                raise UserError(f"{path} smtp: [smtp] must be a table")
            for sub, v in value.items():
                name = SMTP_TABLE_NAMES.get(sub, f"smtp_{sub}")
                if name not in SETTABLE:
                    raise UserError(f"{path} [smtp] {sub}: unknown setting")
                yield name, v, f"{path} [smtp] {sub}"
        elif key == "relays":
            yield "relays", _relays_from_toml(value, path), f"{path} [[relays]]"
        elif key == "domains":
            yield "domains", domains_from_toml(value, path), f"{path} [domains]"
        elif key in SETTABLE:
            yield key, value, f"{path} {key}"
        else:
            raise UserError(f"{path} {key}: unknown setting")


RELAY_NUMBERS = {"port": "smtp_port", "connections": "connections", "rate": "rate"}
RELAY_TEXTS = ("host", "user", "password", "ca_file", "name")


def _relays_from_toml(value: Any, path: Path) -> tuple[RelaySpec, ...]:
    if not isinstance(value, list) or not value:
        raise UserError(f"{path}: relays must be a list of [[relays]] tables")
    return tuple(_relay_from_toml(table, f"{path} [[relays]] #{number}") for number, table in enumerate(value, 1))


def _relay_from_toml(table: Any, where: str) -> RelaySpec:
    if not isinstance(table, dict) or not table.get("host"):
        raise UserError(f"{where}: a relay needs a host")
    known = set(RELAY_NUMBERS) | set(RELAY_TEXTS) | {"tls", "verify", "password_file"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise UserError(f"{where}: unknown key '{unknown[0]}'")
    if "password" in table and "password_file" in table:
        raise UserError(f"{where}: give password or password_file, not both")
    data: dict[str, Any] = {}
    for key, setting in RELAY_NUMBERS.items():
        if key in table:
            data[key] = parse_number(setting, table[key], f"{where} {key}")
    for key in RELAY_TEXTS:
        if key in table:
            data[key] = _text(key, table[key], f"{where} {key}")
    if "verify" in table:
        data["verify"] = convert_setting("smtp_verify", table["verify"], f"{where} verify")
    if "tls" in table:
        tls = _text("tls", table["tls"], f"{where} tls")
        if tls not in TLS_MODES:
            raise UserError(f"{where}: tls {show_value(tls)} must be one of {', '.join(TLS_MODES)}")
        data["tls"] = tls
    if "password_file" in table:
        file = convert_setting("smtp_password_file", table["password_file"], f"{where} password_file")
        data["password"], _ = read_password_file(file, f"{where} password_file")
        data["password_file"] = str(file)
    return RelaySpec(**data)


def files_read(settings: Settings) -> list[Path]:
    """The files these settings came from or name for reading: the TOML file, password files, CA
    files and the DKIM key. No output of any command may be written over, or appended to, one of
    them (a `--log` on the password file would corrupt the password, on the TOML file every later
    command)."""
    names: list[str | Path | None] = [settings.config_path, settings.smtp_password_file, settings.smtp_ca_file,
                                       settings.dkim_key_file]
    for relay in settings.relays:
        names += [relay.password_file, relay.ca_file]
    # Regular files only: MAILTOWER_CONFIG=/dev/null reads nothing worth keeping.
    return [path for path in (Path(name).expanduser() for name in names if name) if path.is_file()]


# ---- pacing by destination: [domains.NAME] groups ---------------------------------------------

DEFAULT_GROUP = "default"  # the group of every domain no other group matches
MAX_DOMAIN_GROUPS = 1000
MAX_GROUP_DOMAINS = 100_000  # match entries over all groups
# name -> the BOUNDS row its value is checked against (the same rows as the global limits).
DOMAIN_LIMITS: dict[str, str] = {"connections": "domain_connections", "rate": "rate", "per_hour": "rate_per_hour"}
_GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)
_DOMAIN_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.ASCII)


@dataclass(frozen=True, slots=True)
class DomainGroupSpec:
    """One destination group: the domains it matches ("*.example.com" matches its subdomains)
    and its own limits (0 = none of its own: the sender's and the relays' limits still apply)."""

    name: str
    match: tuple[str, ...] = ()
    connections: int = 0  # messages to these domains in flight at once
    rate: float = 0.0  # messages per second
    per_hour: float = 0.0  # sliding hourly budget


def normal_domain(raw: str) -> str | None:
    """A domain as the sender compares it: lower case, A-labels, no trailing dot; None when it is
    not a domain name. A-labels by the envelope's rules (compose.ascii_domain: IDNA 2008 with UTS
    46), so "straße.de" is the domain mail goes to (xn--strae-oqa.de), not IDNA 2003's strasse.de."""
    text = raw.strip().lower()
    text = text[:-1] if text.endswith(".") else text
    if not text.isascii():
        text = (ascii_domain(text) or "").lower()
    labels = text.split(".")
    if not text or len(text) > 253 or not all(_DOMAIN_LABEL.fullmatch(label) for label in labels):
        return None
    return text


def domains_from_toml(value: Any, path: Path) -> tuple[DomainGroupSpec, ...]:
    """[domains.NAME] tables, checked: names, match lists, limits within BOUNDS, each domain in
    one group only; `[domains.default]` sets the limits of every other domain."""
    if not isinstance(value, dict):
        raise UserError(f"{path} domains: [domains.NAME] must be tables")
    if len(value) > MAX_DOMAIN_GROUPS:
        raise UserError(f"{path} [domains]: {len(value)} groups; at most {MAX_DOMAIN_GROUPS}")
    groups = tuple(domain_group_from_toml(name, table, path) for name, table in value.items())
    check_domain_groups(groups, f"{path} [domains]")
    return groups


def domain_group_from_toml(name: object, table: Any, path: Path) -> DomainGroupSpec:
    if not isinstance(name, str) or not _GROUP_NAME.fullmatch(name):
        raise UserError(f"{path} [domains]: {show_value(name)} is not a group name "
                        "(1 to 64 letters, digits, '.', '_' or '-')")
    where = f"{path} [domains.{name}]"
    if name.lower() == DEFAULT_GROUP and name != DEFAULT_GROUP:
        raise UserError(f"{where}: the default group is written [domains.{DEFAULT_GROUP}] (names are compared ignoring case)")
    if not isinstance(table, dict):
        raise UserError(f"{where}: must be a table")
    unknown = sorted(set(table) - set(DOMAIN_LIMITS) - {"match"})
    if unknown:
        raise UserError(f"{where}: unknown key {show_value(unknown[0])}")
    limits = {key: parse_number(bound, table[key], f"{where} {key}") for key, bound in DOMAIN_LIMITS.items() if key in table}
    match = table.get("match", [])
    if name == DEFAULT_GROUP:
        if match:
            raise UserError(f"{where} match: the default group takes every domain no other group matches")
        return DomainGroupSpec(name, (), **limits)  # type: ignore[arg-type]
    if not isinstance(match, list) or not match:
        raise UserError(f"{where} match: a list of domains is needed, e.g. match = [\"gmail.com\"]")
    if len(match) > MAX_GROUP_DOMAINS:
        raise UserError(f"{where} match: {len(match)} domains; at most {MAX_GROUP_DOMAINS}")
    entries = dict.fromkeys(_match_entry(entry, f"{where} match") for entry in match)  # "x.com" twice is once
    return DomainGroupSpec(name, tuple(entries), **limits)  # type: ignore[arg-type]


def _match_entry(entry: object, where: str) -> str:
    if not isinstance(entry, str) or _shown_setting_unsafe(entry):
        raise UserError(f"{where}: {show_value(entry)} is not a domain name")
    wildcard = entry.strip().startswith("*.")
    domain = normal_domain(entry.strip()[2:] if wildcard else entry)
    if domain is None:
        raise UserError(f"{where}: {show_value(entry)} is not a domain name (or *.domain for its subdomains)")
    if domain.rpartition(".")[2].isdigit():
        # Mail to an IP address is written user@[192.0.2.1]; such literals are never grouped.
        raise UserError(f"{where}: {show_value(entry)} is an IP address, not a domain name")
    if wildcard and "." not in domain:
        raise UserError(f"{where}: {show_value(entry)} takes a whole top-level domain; name its domains, "
                        "or give every other domain its limits in [domains.default]")
    return f"*.{domain}" if wildcard else domain


def check_domain_groups(groups: tuple[DomainGroupSpec, ...], where: str) -> None:
    """Rules between groups, and each group's limits again (settings may be built in code)."""
    owner: dict[str, str] = {}
    named: dict[str, str] = {}  # lower-case name -> name: `--domain Google` must not pick between two
    total = 0
    for group in groups:
        if not isinstance(group.name, str) or not _GROUP_NAME.fullmatch(group.name):
            raise UserError(f"{where}: {show_value(group.name)} is not a group name")
        table = f"{where.removesuffix(' [domains]')} [domains.{group.name}]"
        key = group.name.lower()
        if key in named or (key == DEFAULT_GROUP and group.name != DEFAULT_GROUP):
            taken = named.get(key, DEFAULT_GROUP)
            raise UserError(f"{table}: the group name is taken by {show_value(taken)} (names are compared "
                            "ignoring case)" if taken != group.name else f"{table}: the group name is used twice")
        named[key] = group.name
        for key, bound in DOMAIN_LIMITS.items():
            parse_number(bound, getattr(group, key), f"{table} {key}")
        total += len(group.match)
        for domain in group.match:
            if domain in owner and owner[domain] != group.name:
                raise UserError(f"{table} match: {domain} is already in group {owner[domain]}")
            owner[domain] = group.name
    if total > MAX_GROUP_DOMAINS:
        raise UserError(f"{where}: {total} domains in all; at most {MAX_GROUP_DOMAINS}")


# ---- password files ---------------------------------------------------------------------------


def read_password_file(path: Path, what: str) -> tuple[str, bool]:
    """The password in `path` (surrounding white space dropped) and whether `path` is a regular
    file that can be read again. `what` names the setting in errors; the password never appears."""
    info = stat_named(path, f"{what}: {path}")
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"{what}: {path} is a directory, not a file")
    regular = stat.S_ISREG(info.st_mode)
    if not (regular or stat.S_ISFIFO(info.st_mode)):
        raise UserError(f"{what}: {path} is not a regular file or a pipe")
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(f"{what}: {path} is readable by group or others; chmod 600 it first")
    password = read_text_bounded(path, limit=MAX_SECRET_BYTES, what=what).strip()
    if not password:
        raise UserError(f"{what}: {path} is empty")
    if _control_character(password):
        raise UserError(f"{what}: {path} holds more than one line or a control character")
    return password, regular


def _password(merged: dict[str, Given]) -> dict[str, Any]:
    """The password settings, resolved: read the file if one was named, and remember the origin."""
    if "smtp_password_file" in merged:
        given = merged["smtp_password_file"]
        password, regular = read_password_file(given.value, given.source)
        if regular:
            return {"smtp_password": password, "smtp_password_file": given.value.absolute(),
                    "smtp_password_origin": SecretOrigin.FILE}
        return {"smtp_password": password, "smtp_password_origin": SecretOrigin.STREAM}
    if "smtp_password" in merged and merged["smtp_password"].layer is Layer.CONFIG:
        return {"smtp_password": merged["smtp_password"].value, "smtp_password_origin": SecretOrigin.CONFIG}
    if "smtp_password" in merged:
        return {"smtp_password": merged["smtp_password"].value, "smtp_password_origin": SecretOrigin.VALUE}
    return {}


# ---- loading ----------------------------------------------------------------------------------


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_path: Path | None = None,
    *,
    config_flag: str | None = None,
) -> Settings:
    """Settings from `flags` (None values are not given; errors name them as flags, "--smtp-port"),
    `environ` and the TOML file.

    The file is `config_path` if given (it must exist when `config_flag` names who gave it, e.g.
    "--config"), else MAILTOWER_CONFIG (must exist), else the default path (may be absent)."""
    environ = os.environ if environ is None else environ
    config = _choose_config(config_path, config_flag, environ)
    data, read_path = _read_config(config)
    layers = [
        _layer(_config_values(data, config.path), Layer.CONFIG),
        _layer(((name, environ[var], var) for var, name in ENV.items() if environ.get(var, "") != ""),
               Layer.ENVIRONMENT),
        _layer(((name, value, flag_name(name)) for name, value in (flags or {}).items() if value is not None),
               Layer.FLAGS),
    ]
    merged = _merge(layers)
    values = {name: given.value for name, given in merged.items() if name not in (*PASSWORD_SETTINGS, GIVEN_LIMITS)}
    values.update(_password(merged))
    values["limit_sources"] = _limit_sources(merged)
    settings = Settings(config_path=read_path).with_overrides(values)
    check_settings(settings, {name: given.source for name, given in merged.items()})
    return settings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_settings(settings: Settings, sources: Mapping[str, str] | None = None) -> None:
    """Every rule again on the finished settings (they may also have been built in code), and the
    rules between settings; `sources` says where each value came from, for the error line."""
    sources = sources or {}

    def source(name: str) -> str:
        return sources.get(name, f"setting {name} (default)")

    for name in BOUNDS.keys() & SETTABLE:
        parse_number(name, getattr(settings, name), source(name))
    convert_setting("smtp_tls", settings.smtp_tls, source("smtp_tls"))
    if not settings.relays and not settings.smtp_host.strip():
        # An empty host got as far as the sender, which then waited for ever on a relay it could
        # not name (and the warning said "mail to  goes unencrypted").
        raise UserError(f"{source('smtp_host')}: the relay's host is empty; give its name or address")
    if settings.retry_base > settings.retry_max:
        raise UserError(
            f"{source('retry_base')}: the first retry wait ({_number_text(settings.retry_base)} s) is longer "
            f"than the longest, retry_max = {_number_text(settings.retry_max)} s ({sources.get('retry_max', 'default')})"
        )
    named: dict[str, int] = {}  # a relay's name -> its number: `resume --relay NAME` must pick one
    for number, relay in enumerate(settings.relays, 1):
        where = f"{source('relays')} #{number}"
        if not relay.host.strip():
            raise UserError(f"{where}: the relay's host is empty; give its name or address")
        if relay.name and relay.name in named:
            raise UserError(f"{where} name: {show_value(relay.name)} is also the name of #{named[relay.name]}; "
                            "give each relay its own name")
        named.setdefault(relay.name, number)
        parse_number("smtp_port", relay.port, f"{where} port")
        parse_number("connections", relay.connections, f"{where} connections")
        parse_number("rate", relay.rate, f"{where} rate")
        if relay.tls not in TLS_MODES:
            raise UserError(f"{where}: tls {show_value(relay.tls)} must be one of {', '.join(TLS_MODES)}")
    check_domain_groups(settings.domains, source("domains"))
    unknown = [name for name, _ in settings.limit_sources if name not in LIVE_LIMITS]
    if unknown:
        raise UserError(f"setting limit_sources: {show_value(unknown[0])} is not a live limit")
    total = sum(relay.connections for relay in settings.relays)
    if total > MAX_CONNECTIONS:
        raise UserError(f"{source('relays')}: the relays' connections add up to {total}; at most {MAX_CONNECTIONS}")
    check_dkim_settings(settings, source)


def _endpoints(settings: Settings) -> list[tuple[str, str, bool, bool]]:
    """(host, tls, has credentials, verify) of every relay the sender will use."""
    if settings.relays:
        return [(r.host, r.tls, bool(r.user or r.password), r.verify) for r in settings.relays]
    return [(settings.smtp_host, settings.smtp_tls, bool(settings.smtp_user or settings.smtp_password), settings.smtp_verify)]


def check_smtp_security(settings: Settings) -> None:
    """Refuse to send in ways that leak a password or mail; called before any connection."""
    for host, tls, has_credentials, _ in _endpoints(settings):
        if tls == "none" and has_credentials:
            raise UserError(
                f"refusing to send an SMTP password to {host} over an unencrypted connection: use starttls or tls"
            )
        if tls == "none" and not is_loopback(host) and not settings.smtp_allow_plain:
            raise UserError(
                f"MAILTOWER_SMTP_TLS is none but {host} is not a loopback address: use starttls or tls, "
                "or set MAILTOWER_SMTP_ALLOW_PLAIN=1 to send unencrypted anyway"
            )


def security_warnings(settings: Settings) -> list[str]:
    """What an operator must be told about a weakened setup (shown in the dashboard and by `run`)."""
    warnings = []
    for host, tls, _, verify in _endpoints(settings):
        if tls == "none" and not is_loopback(host) and settings.smtp_allow_plain:
            # Without ALLOW_PLAIN the sender refuses this relay (check_smtp_security): one line, no warning.
            warnings.append(f"mail to {host} goes unencrypted (MAILTOWER_SMTP_ALLOW_PLAIN)")
        if tls != "none" and not verify:
            warnings.append(f"the TLS certificate of {host} is not verified (MAILTOWER_SMTP_VERIFY=0)")
    return warnings
