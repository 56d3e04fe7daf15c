"""Message bytes for a mailing: the MIME skeleton is built once, render() fills in one recipient.

This is the hot path of sending (issue 6): building an `EmailMessage` per recipient caps a sender at
a few hundred messages a second, so `MessageTemplate.build` splits every template into literal text
and merge-field slots once, precomputes every constant header and body, and `render` only joins
strings, escapes, and encodes (base64 and quoted-printable through the C code in `binascii`).

Header safety (issue 5): no CR, LF or NUL from a subject, name, address or merge value ever reaches
a header; such a value raises `UserError` naming the field. Everything non-ASCII in a header is
written as RFC 2047 encoded-words, except non-ASCII addresses, which RFC 6532 puts in raw UTF-8
(the server must then offer SMTPUTF8).
"""

from __future__ import annotations

import binascii
import html
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from email.utils import format_datetime, getaddresses
from functools import lru_cache
from operator import itemgetter

from .errors import UserError

BUILTIN_FIELDS = frozenset({"email", "name"})

# `{{ field }}`: the name is anything without braces, trimmed, so CSV columns such as "first name"
# work; whitespace inside the braces is optional.
_FIELD_RE = re.compile(r"\{\{\s*([^{}\s](?:[^{}]*[^{}\s])?)\s*\}\}")

_MAX_LINE = 78  # RFC 5322 2.1.1: lines SHOULD be at most 78 characters
_EW_BYTES = 42  # UTF-8 bytes per encoded-word: 56 base64 chars + 12 = 68, fits after "Subject: "
_MAX_ADDRESS = 254  # RFC 5321 4.5.3.1.3: a path is at most 256 octets including the brackets

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"  # the hyphen escaped: classes are built from it
# A word of at most 70 characters can always be moved to a continuation line within 78 columns.
_ATOM_PHRASE = re.compile(rf"[{_ATEXT}]{{1,70}}(?: [{_ATEXT}]{{1,70}})*")
_PLAIN_SUBJECT = re.compile(r"[!-~]{1,70}(?: [!-~]{1,70})*")
# The common address, checked in one step; it cannot contain CR, LF or NUL.
_SIMPLE_ADDRESS = re.compile(
    rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?"
)
# RFC 6532 extends atext with every non-ASCII character (printability is checked separately).
# Both classes are written as "every character but" the ASCII ones left out: the same sets, and
# compiled in a fraction of the time a range up to U+10FFFF takes (~20 ms at every start).
_UTF8_ATEXT = r"[^\x00-\x20\x7f\"(),.:;<>@\[\\\]]"  # atext and every non-ASCII character
_HOST_CHAR = r"[^\x00-\x2c./:-@\[-^`{-\x7f]"  # ASCII letters, digits, "-", "_" and every non-ASCII character
_DOT_ATOM_UTF8 = re.compile(rf"{_UTF8_ATEXT}+(?:\.{_UTF8_ATEXT}+)*")
_HOST_NAME = re.compile(rf"{_HOST_CHAR}+(?:\.{_HOST_CHAR}+)*")
_DOMAIN_LITERAL = re.compile(r"\[[!-Z^-~]*\]")
_QUOTED_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_QUOTED_PAIR = re.compile(r"\\(.)")
# C0 controls but TAB, DEL and the C1 controls: invisible in a header at best and terminal escape
# sequences at worst, so header text gets a space instead (CR, LF and NUL are refused before).
_CONTROLS_TO_SPACE = dict.fromkeys(
    [*range(0x01, 0x09), *range(0x0A, 0x20), *range(0x7F, 0xA0)], " "
)
_ID_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Za-z:.]+\]")

# Each part's Content-Transfer-Encoding follows these, chosen per message (_Body.render_into).
_TEXT_HEADERS = b'Content-Type: text/plain; charset="utf-8"\r\n'
_HTML_HEADERS = b'Content-Type: text/html; charset="utf-8"\r\n'
_QUOTED_PRINTABLE = b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
_SEVEN_BIT = b"Content-Transfer-Encoding: 7bit\r\n\r\n"


def fields_used(*templates: str | None) -> set[str]:
    """The merge-field names used as `{{ field }}` in any of the templates."""
    used: set[str] = set()
    for template in templates:
        if template:
            used.update(_FIELD_RE.findall(template))
    return used


_OPEN, _CLOSE = "{{", "}}"
# CSS in an HTML body closes nested rules with "}}" (`@media ... { .a { ... }}`); only a "{{" is a
# mistake there.
_STYLE_ELEMENT = re.compile(r"<style\b.*?(?:</style\s*>|\Z)", re.IGNORECASE | re.DOTALL)


def check_merge_syntax(subject: str, text: str | None, html: str | None) -> None:
    """Refuse a "{{" that does not open a merge tag `{{ field }}` and a "}}" that closes none,
    saying in which part, on which line and in which column (1-based) it is."""
    parts = (("the subject", subject, False), ("the text body", text, False), ("the HTML body", html, True))
    for where, template, is_html in parts:
        if template and (_OPEN in template or _CLOSE in template):
            _check_braces(where, template, is_html)


def _check_braces(where: str, template: str, is_html: bool) -> None:
    tags = [match.span() for match in _FIELD_RE.finditer(template)]
    styles = [match.span() for match in _STYLE_ELEMENT.finditer(template)] if is_html else []
    for marker, problem, exempt in (
        (_OPEN, "'{{' is not closed by '}}' (a merge tag is written {{ field }})", []),
        (_CLOSE, "'}}' closes no merge tag (a merge tag is written {{ field }})", styles),
    ):
        position = template.find(marker)
        while position != -1:  # bounded: every step moves past the previous find
            inside = any(start <= position < end for start, end in (*tags, *exempt))
            if not inside:
                line = template.count("\n", 0, position) + 1
                column = position - (template.rfind("\n", 0, position) + 1) + 1
                raise UserError(f"{where}, line {line}, column {column}: {problem}")
            position = template.find(marker, position + 1)


def check_header_value(what: str, value: str) -> None:
    """Refuse a value that would end a header line early (header injection)."""
    if "\r" in value or "\n" in value or "\0" in value:
        shown = value if len(value) <= 40 else value[:37] + "..."
        raise UserError(
            f"{what} contains a line break (CR/LF) or NUL character, which cannot go into a "
            f"mail header: {shown!r}"
        )


def message_id(mailing_id: int, recipient_id: int, from_addr: str) -> str:
    """The Message-ID of one recipient's copy: the same on every attempt, so duplicates show."""
    return f"<m{mailing_id}.r{recipient_id}@{_id_domain(from_addr)}>"


@lru_cache(maxsize=1024)
def ascii_domain(domain: str) -> str | None:
    """A domain with its non-ASCII labels as A-labels (IDNA 2008 with UTS 46 mapping:
    "bücher.example" -> "xn--bcher-kva.example"), or None if it is not a valid IDN.
    Used for the SMTP envelope and for address headers, so neither needs SMTPUTF8 for a domain."""
    if domain.isascii():
        return domain
    import idna  # only for an internationalised domain: its tables cost every start ~5 ms

    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return None


@lru_cache(maxsize=64)
def _id_domain(from_addr: str) -> str:
    _, addr = _parse_from(from_addr)
    domain = addr.rpartition("@")[2]
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            message = f"sender address {from_addr!r} has a domain that cannot be encoded"
            raise UserError(message) from None
    if not _ID_DOMAIN.fullmatch(domain):
        raise UserError(f"sender address {from_addr!r} has no valid domain")
    return domain


def parse_sender(from_addr: str) -> tuple[str, str]:
    """(display name, bare address) of a sender given as `address` or `Name <address>`."""
    return _parse_from(from_addr)


def _parse_from(from_addr: str) -> tuple[str, str]:
    """(display name, address) of the sender, refusing anything but exactly one address."""
    check_header_value("sender address", from_addr)
    pairs = getaddresses([from_addr])
    # getaddresses is lenient (it drops stray spaces, for one): the address must appear as given
    if (
        len(pairs) != 1
        or pairs[0][1] not in from_addr
        or not pairs[0][1].rpartition("@")[0]
        or not pairs[0][1].rpartition("@")[2]
    ):
        raise UserError(f"sender address {from_addr!r} is not one email address")
    return pairs[0]


# --- header encoding -------------------------------------------------------------------------


def _encoded_words(text: str) -> list[str]:
    """RFC 2047 B encoded-words, each at most 68 characters, never splitting a character."""
    data = text.encode("utf-8")
    words = []
    start, size = 0, len(data)
    while start < size:
        end = min(start + _EW_BYTES, size)
        while end < size and 0x80 <= data[end] < 0xC0:  # a UTF-8 continuation byte
            end -= 1
        b64 = binascii.b2a_base64(data[start:end], newline=False).decode("ascii")
        words.append(f"=?utf-8?b?{b64}?=")
        start = end
    return words


def _fold(name: str, tokens: list[str]) -> str:
    """`Name: tok tok ...` with CRLF SP before a token that would pass 78 columns.

    Only used where the space between tokens carries no meaning or is restored by unfolding.
    """
    line = len(name) + 1
    out = [name, ":"]
    for token in tokens:
        if line + 1 + len(token) > _MAX_LINE and line > len(name) + 1:
            out.append("\r\n ")
            line = 1 + len(token)
        else:
            out.append(" ")
            line += 1 + len(token)
        out.append(token)
    out.append("\r\n")
    return "".join(out)


def _subject_line(subject: str) -> str:
    if not subject:
        return "Subject:\r\n"
    if _PLAIN_SUBJECT.fullmatch(subject) and "=?" not in subject:
        line = "Subject: " + subject
        if len(line) <= _MAX_LINE:
            return line + "\r\n"
        return _fold("Subject", subject.split(" "))
    # Encoded-words keep leading, trailing and repeated whitespace and anything non-ASCII exactly.
    return _fold("Subject", _encoded_words(subject.translate(_CONTROLS_TO_SPACE)))


def display_name(name: str) -> str:
    """The display name as it is written: control characters and whitespace runs made one space,
    ends trimmed, as mail clients show it (RFC 2047 decoders do not keep runs of spaces in a
    phrase anyway)."""
    if not name.isprintable():
        name = name.translate(_CONTROLS_TO_SPACE)
    return " ".join(name.split())


def _phrase_tokens(name: str) -> list[str]:
    """Tokens of an RFC 5322 phrase for a (normalised) display name."""
    if "=?" not in name:
        if _ATOM_PHRASE.fullmatch(name):
            return name.split(" ")
        if len(name) <= 70 and name.isascii() and name.isprintable():
            return ['"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"']
    return _encoded_words(name)


def _addr_spec(what: str, email: str) -> str:
    """The address as it goes into a header, quoting the local part where RFC 5322 needs it."""
    if len(email) <= _MAX_ADDRESS and _SIMPLE_ADDRESS.fullmatch(email) and "=?" not in email:
        return email
    check_header_value(what, email)
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain:
        raise UserError(f"{what} is not an email address: {email!r}")
    if len(email) > _MAX_ADDRESS:
        raise UserError(f"{what} is longer than {_MAX_ADDRESS} characters")
    # Tabs, controls and Unicode line/paragraph separators have no place in an address, and a
    # raw U+2028 could still split a header for a reader that decodes UTF-8 and splits lines.
    if not email.isprintable():
        raise UserError(f"{what} contains a control or separator character: {email!r}")
    if not (_HOST_NAME.fullmatch(domain) or _DOMAIN_LITERAL.fullmatch(domain)):
        raise UserError(f"{what} has an invalid domain: {email!r}")
    # An internationalised domain is written as its A-label, as in the envelope: the header then
    # stays ASCII (valid without SMTPUTF8) unless the local part itself is non-ASCII (RFC 6532).
    domain = ascii_domain(domain) or domain
    return f"{_local_part(local)}@{domain}"


def _local_part(local: str) -> str:
    if "=?" in local:
        # Some parsers (Python's among them) decode encoded-words even in addresses, where RFC
        # 2047 forbids them; a quoted "\?" keeps the same mailbox and reads as no encoded-word.
        if _QUOTED_STRING.fullmatch(local):
            local = _QUOTED_PAIR.sub(r"\1", local[1:-1])
        return '"' + local.replace("\\", "\\\\").replace('"', '\\"').replace("?", "\\?") + '"'
    # An address already in SMTP form ("john doe"@example.com) is written as it will be sent.
    if _DOT_ATOM_UTF8.fullmatch(local) or _QUOTED_STRING.fullmatch(local):
        return local
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _address_line(header: str, what: str, email: str, name: str) -> str:
    addr = _addr_spec(what, email)
    shown = display_name(name)
    if not shown:
        return f"{header}: {addr}\r\n"
    if _ATOM_PHRASE.fullmatch(shown) and "=?" not in shown:  # the common case, in one step
        line = f"{header}: {shown} <{addr}>"
        if len(line) <= _MAX_LINE:
            return line + "\r\n"
    return _fold(header, [*_phrase_tokens(shown), f"<{addr}>"])


# --- bodies ------------------------------------------------------------------------------------


def _normalise_newlines(text: str) -> str:
    if "\r" in text:
        return text.replace("\r\n", "\n").replace("\r", "\n")
    return text


# Lines quoted-printable leaves as they are: printable ASCII without "=", no tab, not starting
# with "." nor ending in a space, at most 72 characters (b2a_qp breaks lines at 76). A filled-in
# merge line usually is one; matching it is cheaper than encoding it (issue 12: rendering was a
# sixth of the sender's time).
_QP_PLAIN = re.compile(r"(?:(?:[!-\-/-<>-~](?:[ -<>-~]{0,70}[!-<>-~])?)?\n)+")


def _quoted_printable(text: str) -> bytes:
    """UTF-8, quoted-printable, CRLF line endings (text has LF endings only)."""
    if len(text) <= 74 and _QP_PLAIN.fullmatch(text):  # one short line (longer ones rarely pass)
        return text.replace("\n", "\r\n").encode("ascii")
    # With LF input b2a_qp writes LF for hard and soft line breaks and encodes every other
    # control byte, so the only LF bytes in its output are line breaks.
    return binascii.b2a_qp(text.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")


class _Slots:
    """Literal text and merge-field slots, kept as one `%` format string to fill in one step."""

    __slots__ = ("fields", "_format", "_get")

    def __init__(self, literals: list[str], fields: list[str]) -> None:
        self.fields = tuple(fields)
        self._format = "%s".join(literal.replace("%", "%%") for literal in literals)
        getter = itemgetter(*fields) if fields else None
        # itemgetter of one key returns the bare value, of several a tuple
        self._get = (lambda values, get=getter: (get(values),)) if len(fields) == 1 else getter

    @classmethod
    def parse(cls, template: str) -> _Slots:
        return cls.of_matches(template, 0, len(template), list(_FIELD_RE.finditer(template)))

    @classmethod
    def of_matches(
        cls, template: str, start: int, end: int, matches: list[re.Match[str]]
    ) -> _Slots:
        """The part template[start:end], which holds exactly the given field matches."""
        literals, fields = [], []
        for match in matches:
            literals.append(template[start : match.start()])
            fields.append(match.group(1))
            start = match.end()
        literals.append(template[start:end])
        return cls(literals, fields)

    def fill(self, values: Mapping[str, str]) -> str:
        return self._format % self._get(values)


# Fixed text this short between two lines that hold a field is encoded again with them for each
# recipient: one encoding call for a paragraph of filled lines and the blank lines between them
# is cheaper than one call per line (issue 12: a body with a field in every paragraph).
_JOIN_GAP = 80


def _field_runs(text: str, matches: list[re.Match[str]]) -> list[tuple[int, int, int, int]]:
    """(start, end, first, last): text[start:end] is whole lines holding matches[first:last],
    the lines of a field and of any field that shares them, joined across fixed text of at most
    _JOIN_GAP characters. Runs are in order and do not overlap; quoted-printable encodes each
    line on its own, so encoding a run equals encoding its lines one by one."""
    runs: list[tuple[int, int, int, int]] = []
    index = 0
    while index < len(matches):
        start = text.rfind("\n", 0, matches[index].start()) + 1
        end = text.index("\n", matches[index].end()) + 1
        first = index
        while index + 1 < len(matches) and matches[index + 1].start() < end:
            index += 1
            end = text.index("\n", matches[index].end()) + 1
        index += 1
        if runs and start - runs[-1][1] <= _JOIN_GAP:
            start, _, first, _ = runs.pop()  # this run goes on across the short fixed text
        runs.append((start, end, first, index))
    return runs


# A body goes as it is ("7bit", RFC 2045 section 2.7) when every line is printable ASCII of at
# most 980 characters without trailing white space, which some gateways strip; else
# quoted-printable. RFC 5322 section 2.1.1 allows 998, but sendmail's SMTP mailers split lines
# longer than 990 (their L=990) with "!" and a line break, which breaks the text and the DKIM body
# hash; 980 leaves room under that for SMTP's stuffing dot. Most bodies and merge values are plain ASCII, and encoding them
# was the largest part of rendering (issue 12). "=_" is left to quoted-printable too: every
# multipart boundary starts with it (_choose_boundary), and a merge value must never be able to
# end a part; quoted-printable writes "=" as "=3D".
_SEVEN_BIT_LINE = 980
_SEVEN_BIT_TEXT = re.compile(r"[ -~\n]*")


def _seven_bit_lines(text: str) -> bool:
    """Whole lines of text (LF endings) whose characters 7bit allows may go unencoded."""
    if " \n" in text or "=_" in text:
        return False
    return len(text) <= _SEVEN_BIT_LINE or max(map(len, text.split("\n"))) <= _SEVEN_BIT_LINE


def _seven_bit_value(value: str) -> bool:
    """A merge value has only characters 7bit allows (isprintable: no line break, so the
    pattern is asked only for a value with one, which is rare)."""
    return value.isascii() and (value.isprintable() or _SEVEN_BIT_TEXT.fullmatch(value) is not None)


class _Body:
    """One text/plain or text/html body, as runs of lines.

    Quoted-printable encodes each line on its own (soft breaks restart at every hard break), so
    the lines without a merge field are encoded once here and render() encodes only the lines
    that hold a field (with short fixed text between them, _field_runs): for a typical body a
    few dozen bytes per recipient instead of kilobytes. A body whose template and values allow
    it goes as 7bit instead, unencoded (the same runs, with CRLF line endings).
    """

    __slots__ = ("fields", "_segments", "_seven_bit", "_escape", "_distinct")

    def __init__(self, template: str, escape: bool) -> None:
        text = _normalise_newlines(template)
        if not text.endswith("\n"):
            text += "\n"  # every part ends with a line break, so the boundary follows cleanly
        self._escape = escape
        pieces: list[str | _Slots] = []  # fixed text and runs of lines with a field, in order
        fields: list[str] = []
        done = 0  # text[:done] is in pieces
        matches = list(_FIELD_RE.finditer(text))
        for start, end, first, last in _field_runs(text, matches):
            if start > done:
                pieces.append(text[done:start])
            slots = _Slots.of_matches(text, start, end, matches[first:last])
            pieces.append(slots)
            fields.extend(slots.fields)
            done = end
        if done < len(text):
            pieces.append(text[done:])
        self._segments = tuple(_quoted_printable(p) if isinstance(p, str) else p for p in pieces)
        # The template's characters and its lines without a field are judged here, the lines
        # with one once filled in.
        seven_bit = _SEVEN_BIT_TEXT.fullmatch(text) is not None and all(
            _seven_bit_lines(p) for p in pieces if isinstance(p, str))
        self._seven_bit = tuple(p.replace("\n", "\r\n").encode("ascii") if isinstance(p, str) else p
                                for p in pieces) if seven_bit else None
        self.fields = tuple(fields)
        self._distinct = tuple(dict.fromkeys(fields))  # each field once, for escaping

    def render_into(self, pieces: list[bytes], values: Mapping[str, str]) -> None:
        """The part's Content-Transfer-Encoding header, the blank line and the body."""
        if self._escape:
            # Each value escaped once per message, not at every place it is used (a name in
            # every paragraph was escaped once per paragraph; issue 12).
            values = {field: html.escape(values[field]) for field in self._distinct}
        if self._seven_bit is not None and self._render_seven_bit(pieces, values, self._seven_bit):
            return
        pieces.append(_QUOTED_PRINTABLE)
        for segment in self._segments:
            if isinstance(segment, bytes):
                pieces.append(segment)
            else:
                pieces.append(_quoted_printable(segment.fill(values)))

    def _render_seven_bit(
        self, pieces: list[bytes], values: Mapping[str, str], segments: tuple[bytes | _Slots, ...]
    ) -> bool:
        """Append the body as 7bit and say True, or append nothing and say False when a value or
        a filled line does not allow it (see _seven_bit_lines; the template's own characters
        were checked when it was built, so only the values' are checked here)."""
        if not all(_seven_bit_value(values[field]) for field in self._distinct):
            return False
        body: list[bytes] = []
        for segment in segments:
            if isinstance(segment, bytes):
                body.append(segment)
                continue
            filled = segment.fill(values)
            if not _seven_bit_lines(filled):
                return False
            body.append(filled.replace("\n", "\r\n").encode("ascii"))
        pieces.append(_SEVEN_BIT)
        pieces.extend(body)
        return True


def _choose_boundary(texts: Iterable[str]) -> str:
    # "=_" never occurs in quoted-printable output ("=" is always followed by hex digits or a
    # line break), so no body can contain this boundary; the random token and the check against
    # the templates are belt and braces.
    for _ in range(16):
        boundary = "=_mailtower_" + secrets.token_hex(12)
        if not any(boundary in text for text in texts):
            return boundary
    raise AssertionError("no boundary found")  # 16 collisions of 96 random bits: impossible


# --- the template ------------------------------------------------------------------------------


class MessageTemplate:
    """One mailing's message, ready to render for each recipient.

    `sender` is the bare sender address (for MAIL FROM), `fields` every merge field used,
    `subject_fields` those whose values reach the Subject header (the importer refuses CR, LF and
    NUL in them up front), `boundary` the multipart boundary or None for a single part.
    """

    __slots__ = (
        "mailing_id",
        "sender",
        "subject_fields",
        "fields",
        "boundary",
        "_from_line",
        "_columns",
        "_subject",
        "_subject_fixed",
        "_mid_prefix",
        "_mid_suffix",
        "_bodies",
        "_separators",
        "_date_second",
        "_date_line",
        "extra_headers",
    )

    @classmethod
    def build(
        cls,
        *,
        mailing_id: int,
        subject: str,
        from_addr: str,
        text: str | None,
        html: str | None,
        available_fields: Iterable[str],
    ) -> MessageTemplate:
        """Check the mailing's templates and build the skeleton; UserError says what is wrong."""
        check_header_value("subject", subject)
        sender_name, sender_addr = _parse_from(from_addr)
        if not text and not html:
            raise UserError("the mailing has no body: give a text body, an HTML body or both")
        _check_fields_available(subject, text or None, html or None, available_fields)
        return cls(mailing_id, subject, from_addr, sender_name, sender_addr, text, html)

    def __init__(
        self,
        mailing_id: int,
        subject: str,
        from_addr: str,
        sender_name: str,
        sender_addr: str,
        text: str | None,
        html: str | None,
    ) -> None:
        self.mailing_id = mailing_id
        self.sender = sender_addr
        self._from_line = _address_line("From", "sender address", sender_addr, sender_name)
        self._from_line = self._from_line.encode("utf-8")
        self._subject = _Slots.parse(subject)
        self.subject_fields = frozenset(self._subject.fields)
        self._subject_fixed = (
            None if self._subject.fields else _subject_line(subject).encode("ascii")
        )
        mid = message_id(mailing_id, 0, from_addr)
        self._mid_prefix = f"Message-ID: <m{mailing_id}.r".encode("ascii")
        self._mid_suffix = mid[mid.index("@") :].encode("ascii") + b"\r\n"

        bodies = []
        if text:
            bodies.append(_Body(text, escape=False))
        if html:
            bodies.append(_Body(html, escape=True))
        self._bodies = tuple(bodies)
        self.fields = frozenset(self._subject.fields).union(*(b.fields for b in bodies))
        self._columns = tuple(self.fields - BUILTIN_FIELDS)
        if len(bodies) == 1:
            self.boundary = None
            self._separators = (
                b"MIME-Version: 1.0\r\n" + (_TEXT_HEADERS if text else _HTML_HEADERS),
                b"",
            )
        else:
            self.boundary = _choose_boundary([subject, text or "", html or ""])
            delimiter = b"--" + self.boundary.encode("ascii")
            self._separators = (
                b"MIME-Version: 1.0\r\n"
                b'Content-Type: multipart/alternative;\r\n boundary="'
                + self.boundary.encode("ascii")
                + b'"\r\n\r\n'
                + delimiter
                + b"\r\n"
                + _TEXT_HEADERS,
                b"\r\n" + delimiter + b"\r\n" + _HTML_HEADERS,
                b"\r\n" + delimiter + b"--\r\n",
            )
        self._date_second = -1
        self._date_line = b""
        # Per-recipient header lines (recipient id, address) -> CRLF-terminated bytes, such as
        # List-Unsubscribe (core/unsubscribe); None for none.
        self.extra_headers: Callable[[int, str], bytes] | None = None

    def render(
        self,
        *,
        recipient_id: int,
        email: str,
        name: str,
        fields: Mapping[str, str],
        now: float | None = None,
    ) -> bytes:
        """The complete message for one recipient, CRLF line endings, ready for SMTP DATA.

        A field missing from `fields` renders as empty. `now` (epoch seconds) is for tests.
        """
        what = f"of recipient {recipient_id}"
        check_header_value(f"field 'name' {what}", name)
        to_line = _address_line("To", f"field 'email' {what}", email, name)
        # A value's own line breaks are normalised before it meets the template's: "x\r" and
        # the template's "\n" after it are two line breaks, not one CRLF.
        values = {column: _normalise_newlines(fields.get(column) or "") for column in self._columns}
        values["email"] = email
        values["name"] = name
        if self._subject_fixed is not None:
            subject_line = self._subject_fixed
        else:
            for field in self._subject.fields:
                where = f"merge field '{field}' {what} (used in the subject)"
                check_header_value(where, values[field])
            subject_line = _subject_line(self._subject.fill(values)).encode("ascii")

        pieces = [
            self._from_line,
            to_line.encode("utf-8"),
            subject_line,
            self._date(time.time() if now is None else now),
            self._mid_prefix,
            b"%d" % recipient_id,
            self._mid_suffix,
        ]
        if self.extra_headers is not None:
            pieces.append(self.extra_headers(recipient_id, email))
        separators = self._separators
        for index, body in enumerate(self._bodies):
            pieces.append(separators[index])
            body.render_into(pieces, values)
        pieces.append(separators[-1])
        return b"".join(pieces)

    def _date(self, now: float) -> bytes:
        # Formatting a date costs more than the rest of a header; one per second is enough.
        second = int(now)
        if second != self._date_second:
            stamp = format_datetime(datetime.fromtimestamp(second, timezone.utc))
            self._date_line = f"Date: {stamp}\r\n".encode("ascii")
            self._date_second = second
        return self._date_line


def _check_fields_available(
    subject: str, text: str | None, html: str | None, available_fields: Iterable[str]
) -> None:
    available = BUILTIN_FIELDS.union(available_fields)
    templates = (("the subject", subject), ("the text body", text), ("the HTML body", html))
    for where, template in templates:
        missing = sorted(fields_used(template) - available)
        if len(missing) == 1:
            raise UserError(
                f"merge field '{missing[0]}' is used in {where} but is not a column of the "
                "recipient file"
            )
        if missing:
            names = ", ".join(f"'{field}'" for field in missing)
            raise UserError(
                f"merge fields {names} are used in {where} but are not columns of the "
                "recipient file"
            )
