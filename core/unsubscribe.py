"""One-click unsubscribe (RFC 2369 List-Unsubscribe, RFC 8058 List-Unsubscribe-Post).

A mailing may carry an https URL template holding `{{ unsubscribe_token }}` and/or a mailto
address. Every message then gets

    List-Unsubscribe: <https://.../TOKEN>,
     <mailto:unsub@example.org?subject=unsubscribe%20TOKEN>
    List-Unsubscribe-Post: List-Unsubscribe=One-Click      (only with the https URL)

The token is self-contained, so an unsubscribe is honoured even after its mailing is deleted:
base64url (no padding) of

    version (1 byte) | mailing id (8 bytes, big-endian) | MAC (16 bytes) | address key (UTF-8)

where MAC = HMAC-SHA256(secret, "mailtower unsubscribe v1" NUL | mailing id | address key),
truncated to 128 bits. The secret is 32 random bytes made once per database (meta table). The
MAC covers the id and the address, so neither can be altered and no token can be made without
the secret; `read_token` compares with `hmac.compare_digest`.

RFC 8058 also asks that a DKIM signature cover both headers (the DKIM signer lists them).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from .display import safe
from .domain import Mailing
from .errors import UserError
from .store import Store

SECRET_KEY = "unsubscribe_secret"  # meta table
TOKEN_FIELD = "unsubscribe_token"
_TOKEN_SLOT = re.compile(r"\{\{\s*unsubscribe_token\s*\}\}")
_VERSION = 1
_DOMAIN = b"mailtower unsubscribe v1\0"
_ID_BYTES = 8
MAC_BYTES = 16
_MIN_RAW = 1 + _ID_BYTES + MAC_BYTES + 3  # "a@b" is the shortest address
MAX_TOKEN = 1024  # characters: a 254-character address makes about 380
MAX_URL = 1000  # characters of the URL template (a header line must stay under 998 octets)
MAX_LINE = 998  # octets of a header line, CRLF excluded (RFC 5322 2.1.1)
# The longest token: an address is at most 254 octets (recipients_csv's path limit) and its key,
# lower-cased, at most half as long again ("\u0130" is 2 octets, its lower case "i\u0307" 3).
LONGEST_KEY = 254 * 3 // 2
LONGEST_TOKEN = len(base64.urlsafe_b64encode(bytes(1 + _ID_BYTES + MAC_BYTES + LONGEST_KEY)).rstrip(b"="))
_URL_LINE = len("List-Unsubscribe: <>,")  # what surrounds the URL on its header line
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")
# The characters RFC 3986 allows in a URI, less the comma (RFC 2369 separates targets with it,
# and parsers split on it without regard to the brackets): no space, quote, angle bracket or
# control character to end or confuse <...> in a header, no backslash (WHATWG parsers read it
# as "/", RFC 3986 ones as part of the user or host: two readers, two hosts), no { } | ^ `.
_URL_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+;=%]+")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
LARGE_MAILING = 5000  # Gmail and Yahoo require one-click unsubscribe from senders of this many a day
ONE_CLICK = b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """What a valid token says: this address asked to leave (it came with this mailing)."""

    mailing_id: int
    address: str


# ---- tokens -------------------------------------------------------------------------------------


def _mac(secret: bytes, mailing_id: int, key: bytes) -> bytes:
    message = _DOMAIN + mailing_id.to_bytes(_ID_BYTES, "big") + key
    return hmac.new(secret, message, hashlib.sha256).digest()[:MAC_BYTES]


def make_token(secret: bytes, mailing_id: int, address_key: str) -> str:
    """The token of one recipient of one mailing (`address_key` as recipients.email_key)."""
    key = address_key.encode("utf-8")
    raw = bytes([_VERSION]) + mailing_id.to_bytes(_ID_BYTES, "big") + _mac(secret, mailing_id, key) + key
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def read_token(secret: bytes, token: str) -> Unsubscribe:
    """The mailing and address a token was made for; UserError saying why it is not valid."""
    mailing_id, mac, key = _token_parts(token)
    if not hmac.compare_digest(mac, _mac(secret, mailing_id, key)):
        raise UserError("unsubscribe token is not valid: its signature does not match (altered, or from another database)")
    return Unsubscribe(mailing_id, key.decode("utf-8", "replace"))  # signed by us: UTF-8 as we wrote it


def _token_parts(token: str) -> tuple[int, bytes, bytes]:
    """A token's mailing id, signature and address key, if it is shaped as this module writes them."""
    text = token.strip()
    if not text:
        raise UserError("unsubscribe token is empty")
    if len(text) > MAX_TOKEN:
        raise UserError(f"unsubscribe token is not valid: longer than {MAX_TOKEN} characters")
    if not _TOKEN_CHARS.fullmatch(text):
        raise UserError("unsubscribe token is not valid: it holds characters base64url does not use")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise UserError("unsubscribe token is not valid: not base64url") from None
    # Only the one spelling this module writes: other encodings of the same bytes are not ours.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != text:
        raise UserError("unsubscribe token is not valid: not base64url as mailtower writes it")
    if len(raw) < _MIN_RAW or raw[0] != _VERSION:
        raise UserError("unsubscribe token is not valid: not a mailtower unsubscribe token")
    mailing_id = int.from_bytes(raw[1 : 1 + _ID_BYTES], "big")
    return mailing_id, raw[1 + _ID_BYTES : 1 + _ID_BYTES + MAC_BYTES], raw[1 + _ID_BYTES + MAC_BYTES :]


async def database_secret(store: Store) -> bytes:
    """The database's token secret, made on first use (the same for every process)."""
    return _checked_secret(store, await store.meta_once(SECRET_KEY, secrets.token_hex(32)))


async def issued_secret(store: Store) -> bytes | None:
    """The secret tokens were signed with, or None if this database never issued one. Checking a
    token must not make a secret: that is a write, and a check changes nothing."""
    stored = await store.meta(SECRET_KEY)
    return None if stored is None else _checked_secret(store, stored)


def check_token(secret: bytes | None, token: str) -> Unsubscribe:
    """read_token, for a database that may never have issued a token."""
    if secret is None:
        _token_parts(token)  # a malformed token is named as such
        raise UserError("unsubscribe token is not valid: this database has issued no unsubscribe tokens")
    return read_token(secret, token)


def _checked_secret(store: Store, stored: str) -> bytes:
    try:
        secret = bytes.fromhex(stored)
    except ValueError:
        secret = b""
    if len(secret) < 16:
        raise UserError(f"database {store.path}: the unsubscribe secret (meta {SECRET_KEY}) is damaged")
    return secret


# ---- what the operator gives ---------------------------------------------------------------------


def check_url(url: str, flag: str = "--unsubscribe-url") -> str:
    """An https URL template with `{{ unsubscribe_token }}`, safe inside <...> of a header."""
    if not url.isascii():
        raise UserError(f"{flag}: only ASCII characters (percent-encode the others): '{safe(url)}'")
    if len(url) > MAX_URL:
        raise UserError(f"{flag}: longer than {MAX_URL} characters")
    if not _TOKEN_SLOT.search(url):
        raise UserError(f"{flag}: the URL must hold {{{{ {TOKEN_FIELD} }}}} where each recipient's token goes")
    filled = _TOKEN_SLOT.sub("TOKEN", url)
    if "{{" in filled or "}}" in filled:
        raise UserError(f"{flag}: only {{{{ {TOKEN_FIELD} }}}} can be filled in here: '{safe(url)}'")
    if not _URL_CHARS.fullmatch(filled) or _BAD_PERCENT.search(filled):
        raise UserError(
            f"{flag}: a space, quote, comma, angle bracket, backslash, control character or a % not followed by "
            f"two hex digits has no place in the URL (percent-encode it): '{safe(url)}'"
        )
    slots = len(_TOKEN_SLOT.findall(url))
    longest = _URL_LINE + len(_TOKEN_SLOT.sub("", url)) + slots * LONGEST_TOKEN
    if longest > MAX_LINE:
        raise UserError(
            f"{flag}: too long: with a token of up to {LONGEST_TOKEN} characters in each of its {slots} "
            f"{{{{ {TOKEN_FIELD} }}}} the header line could reach {longest} characters (at most {MAX_LINE})"
        )
    _check_url_parts(_TOKEN_SLOT.sub("{{}}", url), url, flag)
    return url


def _check_url_parts(marked: str, url: str, flag: str) -> None:
    """An https URL with a host (and a valid port), the token (`{{}}` in `marked`) in its path or
    query: in the host it would be lower-cased, cut at 63 characters and refused for its `_`;
    in the user part it is a login; a fragment is never sent with the one-click POST."""
    try:
        parts = urlsplit(marked)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError as exc:
        raise UserError(f"{flag}: not a URL ({exc}): '{safe(url)}'") from None
    if parts.scheme.lower() != "https" or not host or "{{}}" in parts.scheme:
        raise UserError(f"{flag}: RFC 8058 one-click unsubscribe needs an https:// URL with a host: '{safe(url)}'")
    if "{{}}" in parts.netloc or "{{}}" in parts.fragment:
        where = "after #, which is never sent to the server" if "{{}}" in parts.fragment else "in the host or user part"
        raise UserError(
            f"{flag}: {{{{ {TOKEN_FIELD} }}}} must be in the URL's path or query, not {where}: '{safe(url)}'"
        )


def check_mailto(address: str, normalize: Callable[[str], str], flag: str = "--unsubscribe-mailto") -> str:
    """The address unsubscribe mails go to, as `normalize` (the recipients' validator) gives it."""
    bare = address.strip()
    if bare.lower().startswith("mailto:"):
        bare = bare[len("mailto:") :]
    try:
        normalized = normalize(bare)
    except (ValueError, UserError) as exc:
        raise UserError(f"{flag}: '{safe(bare)}' is not a valid address ({exc})") from None
    if not normalized.isascii():
        # An internationalised domain has an ASCII form (xn--...) that a mailto URL can carry;
        # a local part does not. (The validator gives the domain back in Unicode.)
        local, _, domain = normalized.rpartition("@")
        import idna  # only for an internationalised domain: its tables cost every start ~5 ms

        try:
            # IDNA 2008 as the validator uses it (Python's "idna" codec is IDNA 2003: faß -> fass)
            ascii_domain = idna.encode(domain).decode("ascii") if local.isascii() else ""
        except (idna.IDNAError, UnicodeError):
            ascii_domain = ""
        if not ascii_domain:
            raise UserError(f"{flag}: '{safe(bare)}' must have an ASCII part before the @-sign")
        normalized = f"{local}@{ascii_domain}"
    return normalized


def missing_warning(mailing: Mailing) -> str | None:
    """The warning for sending a large mailing without one-click unsubscribe, or None."""
    if mailing.total < LARGE_MAILING or mailing.unsubscribe_url or mailing.unsubscribe_mailto:
        return None
    return (
        f"mailing {mailing.id} has {mailing.total:,} recipients and no unsubscribe link: Gmail and Yahoo require "
        "one-click unsubscribe from senders of 5,000 or more messages a day (give --unsubscribe-url and/or "
        f"--unsubscribe-mailto: `mailtower unsubscribe set {mailing.id} ...`)"
    )


# ---- the headers ---------------------------------------------------------------------------------

HeaderHook = Callable[[int, str], bytes]


def header_hook(secret: bytes, mailing_id: int, url: str | None, mailto: str | None) -> HeaderHook | None:
    """The per-recipient List-Unsubscribe lines of a mailing (see compose.MessageTemplate's
    `extra_headers`), or None when it has neither a URL nor a mailto address."""
    if not url and not mailto:
        return None
    url_parts = _TOKEN_SLOT.split(url) if url else None
    mailto_prefix = f"<mailto:{quote(mailto, safe='@.-_+')}?subject=unsubscribe%20" if mailto else ""

    def lines(recipient_id: int, email: str) -> bytes:
        token = make_token(secret, mailing_id, email.lower())
        targets = []
        if url_parts is not None:
            targets.append(f"<{token.join(url_parts)}>")
        if mailto:
            targets.append(f"{mailto_prefix}{token}>")
        # One target per line: a URL is never folded inside its brackets.
        header = "List-Unsubscribe: " + ",\r\n ".join(targets) + "\r\n"
        return header.encode("ascii") + (ONE_CLICK if url_parts is not None else b"")

    return lines


async def headers_for(store: Store, mailing: Mailing) -> HeaderHook | None:
    """The sender's hook: the mailing's List-Unsubscribe lines, with the database's secret."""
    if not mailing.unsubscribe_url and not mailing.unsubscribe_mailto:
        return None
    return header_hook(await database_secret(store), mailing.id, mailing.unsubscribe_url, mailing.unsubscribe_mailto)


# ---- storing it on a mailing ----------------------------------------------------------------------

# A mailing's message is fixed once it starts going out: targets change only before or between runs.
EDITABLE = frozenset({"draft", "scheduled", "stopped"})


async def set_targets(store: Store, mailing_id: int, url: str | None, mailto: str | None) -> Mailing:
    """Store checked targets (see check_url, check_mailto) on a draft, scheduled or stopped
    mailing; None clears one."""
    async with store.write() as tx:
        mailing = await tx.mailing(mailing_id)
        if mailing.state.value not in EDITABLE:
            raise UserError(
                f"mailing {mailing_id} is {mailing.state.value}: unsubscribe targets can be set on a draft, "
                "scheduled or stopped mailing (stop it first)"
            )
        await tx.update_mailing(mailing_id, unsubscribe_url=url, unsubscribe_mailto=mailto)
        await tx.add_event(mailing_id, "unsubscribe", describe_targets(url, mailto))
    return await store.mailing(mailing_id)


def describe_targets(url: str | None, mailto: str | None) -> str:
    parts = ([f"url {url}"] if url else []) + ([f"mailto {mailto}"] if mailto else [])
    return "one-click unsubscribe: " + ", ".join(parts) if parts else "no unsubscribe link"
