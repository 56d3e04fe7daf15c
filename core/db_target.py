"""Which database a command works on: a SQLite file (a Path, the default) or a PostgreSQL URL.

`--db`, MAILTOWER_DB and the config file's `db` all go through `parse_target`: a value that starts
with `postgresql://` or `postgres://` is a `PgTarget`, anything else stays a SQLite path. A
PgTarget prints as its display form, which never holds the password (nor a `password=` query
parameter), so an f-string, a log line, the dashboard or `status --json` cannot leak it; only
`PgTarget.url` (given to the driver, and to a handed-off sender through its environment) has it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from .errors import UserError

PG_SCHEMES = ("postgresql", "postgres")
_SECRET_PARAMS = frozenset({"password", "passfile", "sslpassword"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
INSTALL_HINT = "PostgreSQL support is not installed; pip install 'mailtower[postgres]'"


@dataclass(frozen=True, slots=True)
class PgTarget:
    """A PostgreSQL database named by URL. `str()` is the redacted display form."""

    url: str = field(repr=False)  # the full URL, password included: for the driver only
    display: str  # the URL without any password
    secrets: tuple[str, ...] = field(default=(), repr=False, compare=False)  # every form of the password

    def __str__(self) -> str:
        return self.display

    def scrub(self, text: str) -> str:
        """`text` (a driver's message, say) without this target's password in any form it may hold."""
        text = redact_url(text)
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def __repr__(self) -> str:
        return f"PgTarget({self.display!r})"


DbTarget = Path | PgTarget


def looks_like_postgres(text: str) -> bool:
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.lower() in PG_SCHEMES


def is_postgres(target: object) -> bool:
    return isinstance(target, PgTarget)


def display(target: object) -> str:
    """How a target is shown to a person: a path as typed, a URL without its password."""
    return str(target)


# To the next white space: a password may hold quotes (a trailing quote only lands in the path).
_URL_IN_TEXT = re.compile(r"postgres(?:ql)?://\S*", re.IGNORECASE)
_KEYWORD_SECRET = re.compile(r"\b(password|passfile|sslpassword)\s*=\s*('(?:[^'\\]|\\.)*'|\S*)", re.IGNORECASE)


def redact_url(text: str) -> str:
    """`text` with the password of any PostgreSQL URL in it removed (for error texts from the driver,
    argv in the crash log): the userinfo's password (up to the LAST '@' of the host part, as
    urllib reads it), `password=`-like query parameters, and libpq's key=value form."""
    return _KEYWORD_SECRET.sub(r"\1=***", _URL_IN_TEXT.sub(lambda m: _redact_one_url(m.group(0)), text))


def _redact_one_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    userinfo, at, hosts = netloc.rpartition("@")
    if at:
        netloc = userinfo.partition(":")[0] + "@" + hosts
    path, q, query = tail.partition("?")
    if q:
        kept = [pair for pair in query.split("&") if pair.partition("=")[0].lower() not in _SECRET_PARAMS]
        tail = path + ("?" + "&".join(kept) if kept else "")
    return f"{scheme}://{netloc}{tail}"


def parse_target(value: str | Path, source: str) -> DbTarget:
    """A SQLite path or a PgTarget; a bad URL is one UserError that starts with `source`."""
    if isinstance(value, (Path, PgTarget)):
        return value
    if looks_like_postgres(value):
        return parse_pg_url(value, source)
    return Path(value).expanduser()


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})|%00")


def parse_pg_url(text: str, source: str) -> PgTarget:
    shown = redact_url(text)
    scheme, _, rest = text.partition("://")
    text = f"{scheme.lower()}://{rest}"  # libpq knows the scheme in lower case only
    if _CONTROL.search(text):
        raise UserError(f"{source}: {_CONTROL.sub('?', shown)!r}: the URL contains a control character")
    if any(c.isspace() for c in text):
        raise UserError(f"{source}: {shown}: a URL cannot contain spaces (write them as %20)")
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise UserError(f"{source}: {shown}: not a PostgreSQL URL ({redact_url(str(exc))})") from None
    if parts.netloc.count("@") > 1:
        # urllib splits at the last '@', libpq at the first: they would disagree on the host.
        raise UserError(f"{source}: {shown}: the user or password contains '@' (write it as %40)")
    if _BAD_ESCAPE.search(text):
        raise UserError(f"{source}: {shown}: the URL has a '%' not followed by two hex digits, or %00")
    port = _port_text(parts.netloc)
    if port and not (port.isascii() and port.isdigit()):
        raise UserError(f"{source}: {shown}: the port {port!r} is not a number")
    if port and not 1 <= int(port) <= 65535:
        raise UserError(f"{source}: {shown}: port {int(port)} is not a number from 1 to 65535")
    if parts.fragment:
        raise UserError(f"{source}: {shown}: a PostgreSQL URL has no #fragment")
    database = unquote(parts.path[1:]) if parts.path.startswith("/") else unquote(parts.path)
    if "/" in database:
        raise UserError(f"{source}: {shown}: the database name {database!r} contains '/'")
    try:
        params = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise UserError(f"{source}: {shown}: the query {redact_query(parts.query)!r} is not name=value pairs") from None
    _check_with_driver(text, source, shown)
    return PgTarget(url=text, display=_display(parts, params), secrets=_secrets(parts, params))


def _check_with_driver(url: str, source: str, shown: str) -> None:
    """libpq's own parse of the URL (unknown parameters, bad values), when the driver is there;
    its message may quote the password, so only a scrubbed form of it is shown."""
    try:
        from psycopg import ProgrammingError
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return  # the store says which extra to install when it opens
    try:
        conninfo_to_dict(url)
    except ProgrammingError as exc:
        secrets = _secrets(urlsplit(url), parse_qsl(urlsplit(url).query, keep_blank_values=True))
        reason = PgTarget(url="", display="", secrets=secrets).scrub(str(exc).strip().splitlines()[0])
        raise UserError(f"{source}: {shown}: {_CONTROL.sub('?', reason)}") from None


def _secrets(parts, params: list[tuple[str, str]]) -> tuple[str, ...]:  # noqa: ANN001 - a SplitResult
    found = [parts.password or ""] + [v for k, v in params if k.lower() in _SECRET_PARAMS]
    forms = {form for secret in found for form in (secret, unquote(secret), quote(unquote(secret), safe=""))}
    return tuple(form for form in forms if len(form) >= 3)  # a 1-2 character "password" would scrub every word


def _port_text(netloc: str) -> str:
    """The port as written ('' when none): after the last ':' of the host part, outside [IPv6]."""
    host = netloc.rpartition("@")[2]
    if host.startswith("["):
        host = host.partition("]")[2]
    return host.rpartition(":")[2] if ":" in host else ""


def redact_query(query: str) -> str:
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k.lower() not in _SECRET_PARAMS]
    return urlencode(pairs)


def _display(parts, params: list[tuple[str, str]]) -> str:  # noqa: ANN001 - a urllib SplitResult
    user = parts.username
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    hosts = parts.netloc.rpartition("@")[2]  # as written (several hosts, IPv6): it holds no password
    netloc = (quote(unquote(user), safe="") + "@" if user else "") + (hosts if "," in hosts else host)
    port = _port_text(parts.netloc)
    if port and "," not in hosts:
        netloc += f":{int(port)}"
    shown = [(k, v) for k, v in params if k.lower() not in _SECRET_PARAMS]
    query = f"?{urlencode(shown, safe='/:,')}" if shown else ""
    return f"postgresql://{netloc}{parts.path}{query}"
