"""Streaming reader of recipient CSV files.

The file is read one physical line at a time, so memory stays flat whatever its size. Structural
problems (the file as a whole cannot be trusted) raise ImportRejected; the caller imports inside one
transaction and rolls back, so a file is imported entirely or not at all. Problems with one row are
reported through `on_reject` and the row is skipped. Duplicate addresses are left to the store.
"""

from __future__ import annotations

import csv
import functools
import os
import re
import stat
import tempfile
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from .display import safe, unsafe_character
from .domain import ImportedRow, RejectedRow
from .errors import ImportRejected
from .files import IDLE_TIMEOUT, MIB, is_stdin, open_stream
from .timezones import case_hint, quoted_zone


class InvalidAddress(ValueError):
    """An address that is not valid; its text says why (email_validator's words, or ours)."""


def _validator():  # noqa: ANN202 - the email_validator module
    """email_validator, imported at its first use: its import compiles its grammar (20-30 ms),
    which every start of `mailtower run` paid though a running sender never checks an address."""
    import email_validator

    return email_validator


def _validate(address: str, **options: bool) -> Any:  # email_validator's ValidatedEmail
    validator = _validator()
    try:
        return validator.validate_email(address, check_deliverability=False, **options)
    except validator.EmailNotValidError as exc:
        raise InvalidAddress(str(exc)) from None

__all__ = [
    "EXPORT_STATUS_COLUMNS",
    "export_column_name",
    "RecipientFile",
    "RejectedCells",
    "open_recipients",
    "read_header",
    "read_recipients",
    "normalize_address",
    "neutralise_formula",
    "restore_formula",
]

_BOM = b"\xef\xbb\xbf"
# A physical line longer than this is not a recipient list; bounding it keeps memory flat even
# for a file without newlines.
MAX_LINE_BYTES = 1 << 20
# Bounds on a whole file, so an endless source (`yes`, a device, a pipe that never closes) ends
# with one clear line instead of filling the disk or running for ever. Ten times the largest
# lists we have been asked for; split a bigger list into several imports.
MAX_FILE_BYTES = 4096 * MIB
MAX_FILE_LINES = 10_000_000
# Blank lines tolerated before the header row.
MAX_LINES_BEFORE_HEADER = 10_000

# Spreadsheets run a cell that starts with one of these as a formula. Our exports write such a
# cell with a leading apostrophe (the usual neutralisation) and the reader removes it again, so
# export -> import gives back the original values.
FORMULA_LEADS = frozenset("=+-@\t\r")
# Python's email package treats every str.splitlines() boundary as a line break, so all of them
# (not only CR and LF) could split a header; NUL is refused by SMTP servers.
_HEADER_BREAKERS = re.compile("[\r\n\x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_RESERVED = ("email", "name", "tz")
# The status columns `remaining --csv` (core/exports) writes after `email` and `name`. A file whose
# header holds all four, spelled so, is such an export: they are read as the export's, not as
# merge fields, so the file imports into an equivalent mailing. One or two of them alone (a
# "state" column of a mailing list) are merge fields as ever.
EXPORT_STATUS_COLUMNS = ("state", "attempts", "last_code", "last_error")
# In such an export a merge field named like a status column (a list's "state" column) is written
# as "field:state", and read back as "state".
EXPORT_FIELD_PREFIX = "field:"
# Column names an operator may use for a recipient's time zone, meaning the `tz` column.
_ZONE_LOOKALIKES = ("timezone", "time_zone", "time-zone", "time zone", "zone", "tzid", "tz_name", "iana_tz", "olson")
_BODY_WHITESPACE = "\t\n\r"  # allowed in merge-field values (not in names)
_ZONE_CACHE_MAX = 4096

# The common ASCII dot-atom local part (RFC 5322 3.2.3), exactly what email_validator accepts
# without further work. Anything else takes the full validation path.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")
# RFC 2142 role mailboxes, which email_validator lowercases; they take the full path.
_ROLE_MAILBOXES = frozenset(
    ["info", "marketing", "sales", "support", "abuse", "noc", "security", "postmaster",
     "hostmaster", "usenet", "news", "webmaster", "www", "uucp", "ftp"]
)
_MAX_ADDRESS_BYTES = 254  # RFC 5321 4.5.3.1.3 path limit minus the angle brackets


class _Reader(Protocol):
    """What we use of a csv.reader (its class is not importable)."""

    line_num: int

    def __next__(self) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class _Domain:
    """A recipient domain as the importer keeps it: its normalised form and the longest of its encodings."""

    normalized: str
    longest_bytes: int  # longest UTF-8 length among the raw, normalized and ASCII forms


# A plain ASCII host name (RFC 1123 labels, TLD ending in a letter) without "--" anywhere, so
# neither Punycode nor RFC 5890's reserved "ab--" labels need the IDNA library.
_PLAIN_DOMAIN = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+(?:[a-z0-9][a-z0-9-]{0,61})?[a-z]\Z", re.IGNORECASE
)
_MAX_DOMAIN = 253


@functools.lru_cache(maxsize=16384)
def _check_domain(domain: str, allow_special: bool = False) -> _Domain | None:
    """Validate a domain once for every address that uses it; None if it is not valid."""
    if len(domain) <= _MAX_DOMAIN and "--" not in domain and _PLAIN_DOMAIN.match(domain):
        # What email_validator would conclude for such a name: valid unless special-use, lowercased.
        lowered = domain.lower()
        if not allow_special and _special_use_suffix(lowered) is not None:
            return None
        return _Domain(lowered, len(domain))
    try:
        result = _validate("x@" + domain)
    except InvalidAddress:
        return None
    forms = (domain, result.domain, result.ascii_domain or result.domain)
    return _Domain(result.domain, max(len(form.encode("utf-8")) for form in forms))


# How to allow special-use domains, named in every refusal of one (issue 10, item 23).
SPECIAL_DOMAINS_HINT = (
    "refused unless MAILTOWER_ALLOW_SPECIAL_DOMAINS=1 (or allow_special_domains = true in the config file)"
)


@functools.lru_cache(maxsize=1)
def _special_use_names() -> tuple[str, ...]:
    return tuple(_validator().SPECIAL_USE_DOMAIN_NAMES)


def _special_use_suffix(domain: str) -> str | None:
    """The special-use name (RFC 6761 and friends, as email_validator lists them) that a lowercased
    ASCII domain is or ends in, or None."""
    for name in _special_use_names():
        if domain == name or domain.endswith("." + name):
            return name
    return None


def normalize_address(address: str, *, allow_special: bool = False) -> str:
    """The normalized form of an address (as email_validator gives it); InvalidAddress if invalid.

    A plain ASCII local part at a plain host name costs two regex matches (the domain's verdict is
    also cached); every other address goes through the full email_validator check. Special-use
    domains (corp.local, x.test) are refused, naming the setting that allows them, unless
    `allow_special`.
    """
    local, at, domain = address.rpartition("@")
    if at and _DOT_ATOM.match(local) and local.lower() not in _ROLE_MAILBOXES:
        checked = _check_domain(domain, allow_special)
        if checked is not None and len(local) + 1 + checked.longest_bytes <= _MAX_ADDRESS_BYTES:
            return local + "@" + checked.normalized
    special = _special_use_suffix(domain.lower()) if at else None
    if special is None:
        return _validate(address).normalized
    if not allow_special:
        raise InvalidAddress(f"{domain} is a special-use domain (like .local and .test), {SPECIAL_DOMAINS_HINT}")
    return _normalize_special(local, domain, special)


def _normalize_special(local: str, domain: str, special: str) -> str:
    """Validate an address at a special-use domain with everything else checked as usual.

    email_validator has no option to allow them (its list is module-global), but it lets `.test`
    through in a test environment: the special-use suffix is swapped for `test` for the check,
    and put back afterwards.
    """
    stem = domain[: len(domain) - len(special)]  # "corp." of "corp.local", "" of "localhost"
    result = _validate(f"{local}@{stem}test", test_environment=True)
    normalized_stem = result.domain[: len(result.domain) - len("test")]
    return f"{result.local_part}@{normalized_stem}{special}"


@dataclass(frozen=True, slots=True, eq=False)
class RejectedCells(RejectedRow):
    """A rejected row with its own cells (the export's apostrophe removed, as for a valid row) and
    the file's column names, so a --rejects file can give the row back (standard input has no
    other copy). It is the same rejection as RejectedRow(line, reason): the cells are context."""

    cells: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RejectedRow):
            return (self.line, self.reason) == (other.line, other.reason)
        return NotImplemented

    __hash__ = RejectedRow.__hash__


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where each column of a parsed header goes."""

    names: list[str]
    email: int
    name: int | None
    tz: int | None
    fields: list[tuple[int, str]]
    status: tuple[int, ...] = ()  # the columns of an export's status (EXPORT_STATUS_COLUMNS), not data


@dataclass(frozen=True, slots=True)
class ReadProgress:
    """How far an import has read its recipient file (for a progress line; see operations)."""

    rows: int  # data rows read so far, valid and rejected
    rejected: int
    bytes_read: int
    total_bytes: int  # of the file, or of the local copy of a pipe


class RecipientFile:
    """A recipient CSV opened once: the header is parsed on opening, the rows stream once after it.

    Reading once is what makes pipes work (`<(cat list.csv)`, `-` for standard input): there is
    no second pass that would find them empty."""

    def __init__(self, path: Path | str, *, max_bytes: int = MAX_FILE_BYTES, max_lines: int = MAX_FILE_LINES) -> None:
        self.path = Path(path)
        self.label = "standard input" if is_stdin(path) else str(path)
        self._source = _open(path, self.label, max_bytes, max_lines)
        self._reader = csv.reader(_lines(self._source, self.label, max_lines), strict=True)
        self._rows_taken = False
        try:
            self._layout = _parse_header(self._reader, self.label)
        except BaseException:
            self.close()
            raise

    @property
    def header(self) -> list[str]:
        """Names of the columns that hold recipient data (BOM removed, stripped, an export's
        apostrophe removed): every column but the status columns of a `remaining --csv` export."""
        if not self._layout.status:
            return self._layout.names
        return [n for i, n in enumerate(self._layout.names) if i not in self._layout.status]

    def rows(
        self,
        *,
        header_fields: Collection[str] = (),
        valid_zone: Callable[[str], bool] = lambda z: True,
        on_reject: Callable[[RejectedRow], None],
        allow_special_domains: bool = False,
    ) -> Iterator[ImportedRow]:
        """Yield each valid recipient row; report each invalid one to `on_reject` (see read_recipients)."""
        if self._rows_taken:
            raise RuntimeError(f"{self.label}: the rows of a recipient file can be read only once")
        self._rows_taken = True
        return _valid_rows(
            self._reader, self._layout, self.label, frozenset(header_fields), valid_zone, on_reject, allow_special_domains
        )

    def bytes_read(self) -> tuple[int, int]:
        """(bytes read so far, size) of what the rows come from (a pipe's local copy after
        spooling); (0, 0) if the system cannot say. Two system calls: for a progress line."""
        try:
            fd = self._source.fileno()
            return os.lseek(fd, 0, os.SEEK_CUR), os.fstat(fd).st_size
        except (OSError, ValueError):
            return 0, 0

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> "RecipientFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_recipients(path: Path | str, **bounds: int) -> RecipientFile:
    """Open a recipient file (a path, a pipe, a FIFO, or `-` for standard input) and parse its header."""
    return RecipientFile(path, **bounds)


def zone_column_note(header: list[str]) -> str | None:
    """A line for a file whose time-zone column has another name than `tz` ("timezone"): it is
    imported as a merge field and every recipient keeps the mailing's zone, which a local-time
    (wave) schedule would then get wrong without a word."""
    names = [cell.strip() for cell in header]
    if any(name.lower() == "tz" for name in names):
        return None
    for name in names:
        if name.lower() in _ZONE_LOOKALIKES:
            return (f"column {name!r} was imported as a merge field: recipients' time zones are read only "
                    "from a column named 'tz' (local-time schedules use them); name the column 'tz' to set them")
    return None


def read_header(path: Path) -> list[str]:
    """Column names (BOM removed, stripped), for checking merge fields before an import."""
    with open_recipients(path) as source:
        return source.header


def read_recipients(
    path: Path,
    *,
    header_fields: Collection[str] = (),
    valid_zone: Callable[[str], bool] = lambda z: True,
    on_reject: Callable[[RejectedRow], None],
    allow_special_domains: bool = False,
) -> Iterator[ImportedRow]:
    """Yield each valid recipient row; report each invalid one to `on_reject`.

    `header_fields` names merge fields whose values reach a mail header (the subject): a line break
    or NUL in them rejects the row, as it does in `name`. Raises ImportRejected (while iterating) on
    a structural problem, naming the file and line.
    """
    with open_recipients(path) as source:
        yield from source.rows(
            header_fields=header_fields,
            valid_zone=valid_zone,
            on_reject=on_reject,
            allow_special_domains=allow_special_domains,
        )


def _valid_rows(
    reader: _Reader,
    layout: _Layout,
    label: str,
    guarded: frozenset[str],
    valid_zone: Callable[[str], bool],
    on_reject: Callable[[RejectedRow], None],
    allow_special_domains: bool = False,
) -> Iterator[ImportedRow]:
    zone_ok = _bounded_memo(valid_zone)
    guarded_columns = [(i, f) for i, f in layout.fields if f in guarded]
    width = len(layout.names)
    columns = tuple(layout.names)
    for line, cells in _rows(reader, label):
        if not cells:
            continue
        if len(cells) != width:
            if len(cells) > width:
                raise ImportRejected(f"{label}: line {line}: {len(cells)} cells but the header has {width} columns")
            cells += [""] * (width - len(cells))  # spreadsheets drop trailing empty cells
        # restore_formula, inlined and skipped for rows without an apostrophe (most of them):
        # this runs for every row of a million-row file.
        if "'" in "".join(cells):
            cells = [c[1:] if c[:1] == "'" and c[1:2] in FORMULA_LEADS else c for c in cells]
        outcome = _check_row(line, cells, layout, guarded_columns, zone_ok, allow_special_domains)
        if isinstance(outcome, ImportedRow):
            yield outcome
        elif outcome is not None:
            on_reject(RejectedCells(outcome.line, outcome.reason, tuple(cells), columns))


def neutralise_formula(cell: str) -> str:
    """The cell as a spreadsheet shows it as text: a leading apostrophe before a formula start.

    A value that already looks neutralised ("'=x") gets one more, so `restore_formula` gives
    back exactly the value that was written."""
    if cell[:1] in FORMULA_LEADS or (cell[:1] == "'" and cell[1:2] in FORMULA_LEADS):
        return "'" + cell
    return cell


def restore_formula(cell: str) -> str:
    """Undo `neutralise_formula` (an apostrophe followed by a formula start loses the apostrophe)."""
    return cell[1:] if cell[:1] == "'" and cell[1:2] in FORMULA_LEADS else cell


def _check_row(
    line: int,
    cells: list[str],
    layout: _Layout,
    guarded_columns: list[tuple[int, str]],
    zone_ok: Callable[[str], bool],
    allow_special: bool = False,
) -> ImportedRow | RejectedRow | None:
    """The row as a recipient, the reason it is refused, or None for a row of blank cells."""
    raw_email = cells[layout.email].strip()
    if not raw_email:
        if not any(cell.strip() for cell in cells):
            return None
        return RejectedRow(line, "empty email")
    try:
        email = normalize_address(raw_email, allow_special=allow_special)
    except InvalidAddress as exc:
        return RejectedRow(line, f"invalid email address '{safe(raw_email)}': {exc}")
    name = cells[layout.name].strip() if layout.name is not None else ""
    if _HEADER_BREAKERS.search(name):
        return RejectedRow(line, "name contains a line break or NUL (not allowed in a mail header)")
    where = unsafe_character(name)
    if where is not None:
        return RejectedRow(line, f"name holds a control character ({where})")
    for index, field in guarded_columns:
        if _HEADER_BREAKERS.search(cells[index]):
            return RejectedRow(
                line, f"field {field!r} contains a line break or NUL (it is used in the subject)"
            )
    for index, field in layout.fields:
        # Bodies are text: tabs and line breaks belong there; escapes and direction overrides do not.
        where = unsafe_character(cells[index], allow=_BODY_WHITESPACE)
        if where is not None:
            return RejectedRow(line, f"field '{safe(field)}' holds a control character ({where})")
    tz = cells[layout.tz].strip() if layout.tz is not None else ""
    if tz and not zone_ok(tz):
        return RejectedRow(line, f"unknown time zone {quoted_zone(tz)}{case_hint(tz)}")  # a long value cut short
    fields = {field: cells[index] for index, field in layout.fields}
    return ImportedRow(line=line, email=email, name=name, tz=tz, fields=fields)


def _bounded_memo(check: Callable[[str], bool]) -> Callable[[str], bool]:
    """Remember answers for a bounded number of distinct zones (a file has few, a hostile one many)."""
    seen: dict[str, bool] = {}

    def memo(zone: str) -> bool:
        answer = seen.get(zone)
        if answer is None:
            answer = bool(check(zone))
            if len(seen) < _ZONE_CACHE_MAX:
                seen[zone] = answer
        return answer

    return memo


def _open(path: Path | str, label: str, max_bytes: int, max_lines: int) -> BinaryIO:
    try:
        source = open_stream(path, what=label, limit=max_bytes, idle_timeout=IDLE_TIMEOUT, error=ImportRejected)
    except OSError as exc:
        raise ImportRejected(f"{label}: cannot read the file: {exc.strerror or exc}") from exc
    try:
        if stat.S_ISREG(os.fstat(source.fileno()).st_mode):
            return source
        return _spool(source, label, max_lines)
    except BaseException:
        source.close()
        raise


def _spool(source: BinaryIO, label: str, max_lines: int) -> BinaryIO:
    """Copy a pipe, FIFO or device, each line checked as it arrives, into an unlinked temporary file.

    The import's write transaction then reads a local file and never waits on whoever writes
    into the pipe (the sender needs that lock). The source is still read exactly once, a bad
    line still stops it at once, and memory stays flat."""
    spool = tempfile.TemporaryFile()

    def kept(lines: Iterator[str]) -> Iterator[str]:
        for line in lines:
            try:
                spool.write(line.encode("utf-8"))
            except OSError as exc:
                raise ImportRejected(f"{label}: cannot keep a copy while importing: {exc.strerror or exc}") from exc
            yield line

    try:
        lines = kept(_lines(source, label, max_lines))
        # The header is judged as soon as it has arrived: a stream without an email column is
        # refused then, not after millions of lines copied (the copy is read again for the rows).
        _parse_header(csv.reader(lines, strict=True), label)
        for _ in lines:
            pass
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    finally:
        source.close()
    return spool  # type: ignore[return-value]


def _lines(source: BinaryIO, label: str, max_lines: int) -> Iterator[str]:
    """Decoded physical lines, endings kept (the csv module needs them inside quoted fields)."""
    number = 0
    while True:
        try:
            raw = source.readline(MAX_LINE_BYTES + 1)
        except OSError as exc:
            raise ImportRejected(f"{label}: line {number + 1}: read error: {exc.strerror or exc}") from exc
        if not raw:
            return
        number += 1
        if number > max_lines:
            raise ImportRejected(f"{label}: more than {max_lines:,} lines; split the list into several imports")
        if number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM):]
        if len(raw) > MAX_LINE_BYTES:
            raise ImportRejected(f"{label}: line {number}: longer than {MAX_LINE_BYTES} bytes")
        if b"\x00" in raw:
            raise ImportRejected(f"{label}: line {number}: contains a NUL byte (not a text file?)")
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ImportRejected(
                f"{label}: line {number}: invalid UTF-8 (byte 0x{raw[exc.start]:02x} at column "
                f"{exc.start + 1}); save the file as UTF-8"
            ) from exc


def _rows(reader: _Reader, path: str) -> Iterator[tuple[int, list[str]]]:
    """(physical line where the row starts, cells); CSV syntax errors become ImportRejected."""
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ImportRejected(f"{path}: line {line}: malformed CSV: {_csv_reason(exc)}") from exc
        yield line, row


def _csv_reason(exc: csv.Error) -> str:
    text = str(exc)
    if "new-line character" in text:
        return "a carriage return inside an unquoted field (save the file with LF or CRLF line endings)"
    if "unexpected end of data" in text:
        return "a quoted field is not closed before the end of the file"
    if "field larger than field limit" in text:
        return "a field is too large"
    return text


def export_column_name(field: str) -> str:
    """The header an export writes for merge field `field` (see EXPORT_FIELD_PREFIX)."""
    return EXPORT_FIELD_PREFIX + field if field in EXPORT_STATUS_COLUMNS else field


def _export_field_name(column: str) -> str:
    """The merge field an export's column `column` holds: export_column_name undone."""
    bare = column.removeprefix(EXPORT_FIELD_PREFIX)
    return bare if bare != column and bare in EXPORT_STATUS_COLUMNS else column


def _parse_header(reader: _Reader, path: str) -> _Layout:
    header: list[str] | None = None
    line = 0
    for line, row in _rows(reader, path):
        if any(cell.strip() for cell in row):
            header = row
            break
        if line > MAX_LINES_BEFORE_HEADER:
            raise ImportRejected(f"{path}: no header row in the first {MAX_LINES_BEFORE_HEADER:,} lines")
    if header is None:
        raise ImportRejected(f"{path}: the file is empty (a header row with an 'email' column is required)")
    # A header cell is neutralised like any other when an export writes it (a merge field "=x").
    names = [restore_formula(cell.strip()) for cell in header]
    seen: dict[str, int] = {}
    for column, name in enumerate(names, 1):
        if not name:
            raise ImportRejected(f"{path}: line {line}: column {column} of the header has no name")
        bad = unsafe_character(name)
        if bad is not None:  # a column name becomes a merge field, shown in the dashboard and logs
            raise ImportRejected(f"{path}: line {line}: column {column} of the header holds a control character ({bad})")
        key = name.lower() if name.lower() in _RESERVED else name
        if key in seen:
            raise ImportRejected(
                f"{path}: line {line}: duplicate column {name!r} (columns {seen[key]} and {column})"
            )
        seen[key] = column
    reserved = {key: seen[key] - 1 for key in _RESERVED if key in seen}
    if "email" not in reserved:
        raise ImportRejected(f"{path}: line {line}: the header has no 'email' column")
    status = tuple(seen[name] - 1 for name in EXPORT_STATUS_COLUMNS) if all(
        name in seen for name in EXPORT_STATUS_COLUMNS) else ()
    if status:
        names = [_export_field_name(name) for name in names]
    fields = [(i, name) for i, name in enumerate(names) if name.lower() not in _RESERVED and i not in status]
    return _Layout(names, reserved["email"], reserved.get("name"), reserved.get("tz"), fields, status)
