"""DKIM signatures (RFC 6376) on every message a sender sends, when configured (issue 13, item 8).

What lives here: reading the private key file with every check a secret needs (`load_key`: a
regular file of this user's, mode 0600 or stricter, small, a key of the configured type), the
signer a sender keeps for its whole run (`DkimSigner`: the key parsed once; `sign` puts a
DKIM-Signature in front of one message's bytes), `load_signer` (None when signing is off) and
`startup_check`, which the commands that send call before anything else.

Why not `dkim.sign()` per message: it parses the PEM key again for every message and does the RSA
operation in pure Python, about 20 ms a message on these machines (a sender that signs that way
sends some 50 messages a second). So dkimpy does the DKIM part (parsing the header block,
relaxed canonicalisation, the header hash with b= emptied, folding), exactly as its own `sign`,
and the private-key operation is OpenSSL's through `cryptography` on a key parsed once per run:
RSASSA-PKCS1-v1_5 over the SHA-256 digest for rsa-sha256, Ed25519 over the SHA-256 digest for
ed25519-sha256 (RFC 8463). The tests verify every signature with dkimpy's own `verify`.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import logging
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .compose import ascii_domain
from .config import Settings
from .errors import UserError
from .files import KIB, describe_size, read_bytes_bounded, stat_named

log = logging.getLogger("mailtower.dkim")

MAX_KEY_BYTES = 16 * KIB  # a 4096-bit RSA key in PEM is about 3.3 KiB
MIN_RSA_BITS = 1024  # RFC 8301 3.2: signers MUST use at least 1024 bits ...
ADVISED_RSA_BITS = 2048  # ... and SHOULD use at least 2048
MAX_RSA_BITS = 4096  # RFC 8301 3.2: verifiers need only handle keys up to 4096 bits

# Relaxed for headers (relays refold them), simple for the body (dkimpy's default): compose writes
# bodies relays have no reason to touch (7bit or quoted-printable: 7-bit, lines of at most 980
# characters, no trailing white space), and simple costs nothing per message where relaxed runs
# regular expressions over every byte.
CANONICALIZATION = b"relaxed/simple"
HEADER_NAME = b"DKIM-Signature"
# RFC 6376 5.4.1's recommended fields (dkimpy's DKIM.SHOULD), plus List-Unsubscribe-Post: RFC 8058
# section 4 requires List-Unsubscribe and List-Unsubscribe-Post to be covered when present.
DEFAULT_SIGNED = frozenset({
    b"from", b"sender", b"reply-to", b"subject", b"date", b"message-id", b"to", b"cc",
    b"mime-version", b"content-type", b"content-transfer-encoding", b"content-id",
    b"content-description", b"resent-date", b"resent-from", b"resent-sender", b"resent-to",
    b"resent-cc", b"resent-message-id", b"in-reply-to", b"references", b"list-id", b"list-help",
    b"list-unsubscribe", b"list-unsubscribe-post", b"list-subscribe", b"list-post", b"list-owner",
    b"list-archive", b"feedback-id",
})
# Signed once more than they occur, so a copy added in transit breaks the signature (over-signing).
OVERSIGNED = frozenset({
    b"from", b"to", b"subject", b"date", b"message-id", b"reply-to", b"list-unsubscribe",
    b"list-unsubscribe-post",
})
ALWAYS_SIGNED = (b"list-unsubscribe", b"list-unsubscribe-post")  # RFC 8058 section 4, even with dkim_headers

_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,40})-----")


class Algorithm(str, enum.Enum):
    RSA_SHA256 = "rsa-sha256"
    ED25519_SHA256 = "ed25519-sha256"


@dataclass(frozen=True, slots=True)
class DkimKey:
    """A private key, parsed and checked, with the operation that signs a SHA-256 digest."""

    algorithm: Algorithm
    bits: int  # the RSA modulus size; 256 for Ed25519
    sign_digest: Callable[[bytes], bytes]
    public_der: bytes  # SubjectPublicKeyInfo (RSA) or the raw 32 bytes (Ed25519): the DNS record's p=

    def dns_record(self) -> str:
        """The TXT record to publish at SELECTOR._domainkey.DOMAIN."""
        kind = "rsa" if self.algorithm is Algorithm.RSA_SHA256 else "ed25519"
        return f"v=DKIM1; k={kind}; p={base64.b64encode(self.public_der).decode('ascii')}"

    def describe(self) -> str:
        return f"{self.bits}-bit RSA" if self.algorithm is Algorithm.RSA_SHA256 else "Ed25519"


# ---- the key file -------------------------------------------------------------------------------


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def check_key_file(path: Path, where: str) -> None:
    """Refuse a key file that is not a regular file of this user's with mode 0600 or stricter.

    A symbolic link is followed: what is checked (and read) is the file it names, so a link to a
    file that another user owns, or that others may read, is refused like that file itself."""
    info = stat_named(path, where)
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"{where}: is a directory, not a key file")
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{where}: is {_file_kind(info.st_mode)}, not a regular file")
    if info.st_uid != os.geteuid():
        raise UserError(f"{where}: is owned by uid {info.st_uid}, not by this user (uid {os.geteuid()})")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise UserError(f"{where}: group or others may access it (mode {mode:04o}); chmod 600 it")
    if mode & ~0o600:
        raise UserError(f"{where}: has mode {mode:04o}; a key file must be mode 0600 or stricter")
    if info.st_size == 0:
        raise UserError(f"{where}: is empty")
    if info.st_size > MAX_KEY_BYTES:
        raise UserError(f"{where}: is {describe_size(info.st_size)}; a DKIM private key file is at most "
                        f"{describe_size(MAX_KEY_BYTES)}")


def load_key(path: Path, algorithm: Algorithm) -> DkimKey:
    """The private key in `path` for `algorithm`; UserError (one line naming the file) otherwise."""
    where = f"DKIM key file {path}"
    check_key_file(path, where)
    # Absolute: a key file named "-" is that file, never standard input.
    data = read_bytes_bounded(path.absolute(), limit=MAX_KEY_BYTES, what="DKIM key file")
    if not data.strip():
        raise UserError(f"{where}: is empty")
    return parse_key(data, algorithm, where)


def parse_key(data: bytes, algorithm: Algorithm, where: str) -> DkimKey:
    """A PEM private key (PKCS#1 or PKCS#8, RSA or Ed25519), or an Ed25519 key as dkimpy's
    dknewkey writes it (the base64 of the 32-byte seed), checked against `algorithm`."""
    # cryptography is imported only when a key is loaded: commands that never sign start faster.
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

    private = _private_key(data, where)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if isinstance(private, rsa.RSAPrivateKey):
        if algorithm is not Algorithm.RSA_SHA256:
            raise UserError(f"{where}: holds an RSA key but dkim_algorithm is {algorithm.value}")
        bits = private.key_size
        if bits < MIN_RSA_BITS:
            raise UserError(f"{where}: holds a {bits}-bit RSA key; DKIM needs at least {MIN_RSA_BITS} bits "
                            f"(RFC 8301), {ADVISED_RSA_BITS} advised")
        if bits > MAX_RSA_BITS:
            raise UserError(f"{where}: holds a {bits}-bit RSA key; receivers need verify only up to "
                            f"{MAX_RSA_BITS} bits (RFC 8301)")
        pkcs1, prehashed = padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())
        return DkimKey(algorithm, bits, lambda digest: private.sign(digest, pkcs1, prehashed),
                       private.public_key().public_bytes(*spki))
    if isinstance(private, ed25519.Ed25519PrivateKey):
        if algorithm is not Algorithm.ED25519_SHA256:
            raise UserError(f"{where}: holds an Ed25519 key but dkim_algorithm is {algorithm.value}")
        raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return DkimKey(algorithm, 256, private.sign, raw)
    raise UserError(f"{where}: holds {_key_kind(private)} key; DKIM signs with RSA (rsa-sha256) or Ed25519 "
                    "(ed25519-sha256)")


def _key_kind(private: object) -> str:
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, x448, x25519

    for kind, name in ((ec.EllipticCurvePrivateKey, "an elliptic-curve (EC)"), (dsa.DSAPrivateKey, "a DSA"),
                       (ed448.Ed448PrivateKey, "an Ed448"), (x25519.X25519PrivateKey, "an X25519"),
                       (x448.X448PrivateKey, "an X448")):
        if isinstance(private, kind):
            return name
    return "an unsupported"


def _private_key(data: bytes, where: str) -> object:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    match = _PEM_LABEL.search(data)
    if match is None:
        seed = _base64_seed(data)
        if seed is None:
            raise UserError(f"{where}: is not a private key (expected a PEM key, or a base64 Ed25519 key "
                            "as dkimpy's dknewkey writes it)")
        return ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    label = match.group(1).decode("ascii")
    if "ENCRYPTED" in label or b"Proc-Type: 4,ENCRYPTED" in data:
        raise UserError(f"{where}: the key is encrypted with a passphrase; give it unencrypted "
                        "(the file's mode 0600 protects it)")
    if not label.endswith("PRIVATE KEY"):
        raise UserError(f"{where}: holds a PEM {label.lower()}, not a private key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise UserError(f"{where}: its PEM {label.lower()} cannot be read (damaged or not a key)") from None


def _base64_seed(data: bytes) -> bytes | None:
    try:
        seed = base64.b64decode(data.strip(), validate=True)
    except ValueError:  # binascii.Error is a ValueError
        return None
    return seed if len(seed) == 32 else None


# ---- signing ------------------------------------------------------------------------------------


class DkimSigner:
    """Signs every message of a run with one key, parsed once; `sign` is the per-message step."""

    def __init__(self, *, domain: str, selector: str, key: DkimKey, headers: tuple[str, ...] = ()) -> None:
        # dkimpy pulls in dnspython (tens of milliseconds): imported only when signing is on.
        import dkim
        from dkim.canonicalization import CanonicalizationPolicy

        self.domain = domain
        self.selector = selector
        self.key = key
        self._parse = dkim.rfc822_parse
        self._fold = dkim.fold
        self._hash_headers = dkim.hash_headers
        self._without_b = dkim.RE_BTAG
        self._policy = CanonicalizationPolicy.from_c_value(CANONICALIZATION)
        self._fields = [
            (b"v", b"1"),
            (b"a", key.algorithm.value.encode("ascii")),
            (b"c", CANONICALIZATION),
            (b"d", domain.encode("ascii")),
            (b"s", selector.encode("ascii")),
        ]
        self._configured = tuple(name.lower().encode("ascii") for name in headers)
        self._checked_senders: set[str] = set()  # From addresses whose alignment was checked

    def describe(self) -> str:
        return f"d={self.domain} s={self.selector} ({self.key.algorithm.value}, {self.key.describe()} key)"

    def sign(self, message: bytes, sender: str, now: float | None = None) -> bytes:
        """`message` (CRLF line endings, as compose renders it) with its DKIM-Signature in front.
        `sender` is the From address: the first message of each sender warns once if the From
        domain and d= are unrelated (DMARC would not count the signature)."""
        if sender not in self._checked_senders:
            self._check_alignment(sender)
        return self.signature(message, now) + message

    def signature(self, message: bytes, now: float | None = None) -> bytes:
        """The DKIM-Signature header line (with its CRLF) for `message`; as dkimpy's DKIM.sign."""
        # Only the header block goes through dkimpy's parser (it splits every line of what it is
        # given); compose writes CRLF throughout, so the body is the bytes after the blank line.
        head, blank, body = message.partition(b"\r\n\r\n")
        if blank:
            headers, _ = self._parse(head + b"\r\n")
        else:
            headers, body = self._parse(message)
        include = self._signed_names(headers)
        policy = self._policy
        body_hash = base64.b64encode(hashlib.sha256(policy.canonicalize_body(body)).digest())
        fields = [
            *self._fields,
            (b"t", b"%d" % int(time.time() if now is None else now)),
            (b"h", b" : ".join(include)),  # spaces: folding may only break a line between names
            (b"bh", body_hash),
            (b"b", b"0" * 60),  # a placeholder that puts b= on its own line, as dkimpy does
        ]
        # What is hashed is the header as it will be sent, folded, with b= empty (RFC 6376 3.7).
        unsigned = self._fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(HEADER_NAME))
        unsigned = self._without_b.sub(b"\\1", unsigned)
        hasher = hashlib.sha256()
        self._hash_headers(hasher, policy, policy.canonicalize_headers(headers), include,
                           (HEADER_NAME, b" " + unsigned), None)
        fields[-1] = (b"b", base64.b64encode(self.key.sign_digest(hasher.digest())))
        signed = self._fold(b"; ".join(b"=".join(f) for f in fields) + b"\r\n", namelen=len(HEADER_NAME))
        return HEADER_NAME + b": " + signed

    def _signed_names(self, headers: list[list[bytes]]) -> list[bytes]:
        """h=: the configured names (plus the unsubscribe fields when present, over-signed), or
        the present fields of DEFAULT_SIGNED with those of OVERSIGNED named once more."""
        present = [name.lower() for name, _ in headers]
        if self._configured:
            extra = [name for name in ALWAYS_SIGNED if name in present and name not in self._configured]
            return [*self._configured, *extra, *extra]  # named twice: signed, and over-signed
        signed = [name for name in present if name in DEFAULT_SIGNED]
        return signed + [name for name in signed if name in OVERSIGNED]

    def _check_alignment(self, sender: str) -> None:
        self._checked_senders.add(sender)
        domain = sender.rpartition("@")[2].rstrip(".")
        domain = (ascii_domain(domain) or domain).lower()
        d = self.domain
        if domain == d or domain.endswith("." + d) or d.endswith("." + domain):
            return
        log.warning("DKIM: the From domain %s is not dkim_domain %s nor related to it; receivers will not "
                    "count this signature for DMARC", domain, d)


# ---- from the settings --------------------------------------------------------------------------


def load_signer(settings: Settings) -> DkimSigner | None:
    """The signer for a run, its key read and parsed now; None when DKIM signing is not configured."""
    if not (settings.dkim_domain or settings.dkim_selector or settings.dkim_key_file):
        return None
    if not (settings.dkim_domain and settings.dkim_selector and settings.dkim_key_file):
        raise UserError("DKIM signing needs dkim_domain, dkim_selector and dkim_key_file together")
    key = load_key(Path(settings.dkim_key_file), Algorithm(settings.dkim_algorithm))
    headers = tuple(settings.dkim_headers.split(":")) if settings.dkim_headers else ()
    return DkimSigner(domain=settings.dkim_domain, selector=settings.dkim_selector, key=key, headers=headers)


def startup_check(settings: Settings) -> list[str]:
    """For a command that sends, before it starts: refuse a bad key file (UserError), and return
    what the operator should be told (a key shorter than advised)."""
    signer = load_signer(settings)
    if signer is None or signer.key.algorithm is not Algorithm.RSA_SHA256 or signer.key.bits >= ADVISED_RSA_BITS:
        return []
    return [f"DKIM key file {settings.dkim_key_file}: a {signer.key.bits}-bit RSA key; "
            f"{ADVISED_RSA_BITS} bits are advised (RFC 8301)"]
