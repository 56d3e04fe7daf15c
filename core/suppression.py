"""The suppression list: addresses this database never sends to again (issue 13, item 6).

One list per database, keyed like the ledger's `email_key` (the address as the recipient
importer normalises it, lower-cased). Entries come from four sources: `bounce` (the sender adds
an address whose server said the mailbox does not exist or is disabled, in the transaction that
records the failure), `unsubscribe` (a verified one-click unsubscribe token, see
core/unsubscribe), `manual` (`suppress add`) and `import` (`suppress import`).

Imports of recipients skip suppressed addresses and say how many; a row of a queued mailing whose
address is suppressed later is skipped when the sender claims it (state `suppressed`).
"""

from __future__ import annotations

import contextlib
import csv
import enum
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path


from .display import safe
from .errors import UserError
from .files import MIB, database_companions, is_stdin, read_text_bounded, same_file
from .recipients_csv import InvalidAddress, normalize_address, restore_formula
from .store import Store
from .unsubscribe import check_token, issued_secret

MAX_IMPORT_BYTES = 256 * MIB  # about five million addresses
MAX_REASON = 300  # characters kept of a reason
SHOWN = 80  # characters of a refused value repeated in its message (a line may hold megabytes)


class Source(str, enum.Enum):
    BOUNCE = "bounce"
    UNSUBSCRIBE = "unsubscribe"
    MANUAL = "manual"
    IMPORT = "import"


@dataclass(frozen=True, slots=True)
class Entry:
    """One address on the suppression list, with where it came from and why."""

    key: str
    email: str
    source: Source
    reason: str


@dataclass(slots=True)
class ParsedFile:
    """What a suppression file holds: valid entries, and (line, why) for each line that is not."""

    entries: list[Entry] = field(default_factory=list)
    invalid: list[tuple[int, str]] = field(default_factory=list)


def address_key(address: str, *, allow_special: bool = False) -> tuple[str, str]:
    """(key, normalised address) of an address, as the ledger keys recipients; UserError if invalid."""
    text = address.strip()
    if not text:
        raise UserError("an empty address")
    try:
        normalized = normalize_address(text, allow_special=allow_special)
    except InvalidAddress as exc:
        raise UserError(f"'{shown(text)}' is not a valid address ({shown(str(exc))})") from None
    return normalized.lower(), normalized


def shown(value: str) -> str:
    """A value for a message: made safe, and cut short (with its length) when it is long."""
    if len(value) <= SHOWN:
        return safe(value)
    return f"{safe(value[:SHOWN])}... ({len(value):,} characters)"


def clean_reason(reason: str | None, what: str = "--reason") -> str:
    text = (reason or "").strip()
    if not text.isprintable():
        raise UserError(f"{what}: a control character has no place in a reason: '{shown(text)}'")
    return text[:MAX_REASON]


async def add_addresses(store: Store, addresses: Iterable[str], reason: str, *, allow_special: bool = False) -> tuple[int, int]:
    """Suppress addresses by hand; all or nothing (one bad address changes nothing).
    Returns (newly suppressed, already suppressed)."""
    entries: dict[str, str] = {}
    for address in addresses:
        try:
            key, normalized = address_key(address, allow_special=allow_special)
        except UserError as exc:
            raise UserError(f"suppress add: {exc}") from None
        entries.setdefault(key, normalized)
    return await _store_entries(store, [Entry(k, e, Source.MANUAL, reason) for k, e in entries.items()])


async def _store_entries(store: Store, entries: list[Entry]) -> tuple[int, int]:
    added = 0
    async with store.write() as tx:
        by_kind: dict[tuple[Source, str], list[tuple[str, str]]] = {}
        for entry in entries:
            by_kind.setdefault((entry.source, entry.reason), []).append((entry.key, entry.email))
        for (source, reason), pairs in by_kind.items():
            added += await tx.add_suppressions(pairs, source.value, reason)
    return added, len(entries) - added


async def remove_addresses(store: Store, addresses: Iterable[str], *, allow_special: bool = False) -> tuple[int, list[str]]:
    """Take addresses off the list (mailings created later may send to them again); all or nothing.

    Each address is looked up by its key, as `suppress add` made it. One that is not a valid
    address is still taken off if an entry has exactly that key (an entry added while special-use
    domains were allowed); otherwise it is refused (UserError, one line) and nothing is removed.
    One pasted from a listing (`suppress list`, `remaining` show "'=x@example.org" for
    "=x@example.org": a listing may end up in a spreadsheet) is looked up without that
    apostrophe too, as `import` reads such a cell.
    Returns (removed, the valid addresses that were not on the list)."""
    keys: dict[str, str] = {}
    invalid: dict[str, str] = {}  # key -> why the address is not valid
    listed: dict[str, str] = {}  # key as given -> key without a listing's formula apostrophe
    for address in addresses:
        text = address.strip()
        if not text:
            raise UserError("suppress remove: an empty address; nothing was removed")
        try:
            key, _ = address_key(text, allow_special=allow_special)
        except UserError as exc:
            key = text.lower()
            invalid.setdefault(key, str(exc))
        keys.setdefault(key, text)
        plain = restore_formula(text)
        if plain != text:
            with contextlib.suppress(UserError):
                listed[key] = address_key(plain, allow_special=allow_special)[0]
    present = await store.suppressed_keys([*keys, *listed.values()])
    for given, plain in listed.items():
        if given not in present and plain in present:
            keys[plain] = keys.pop(given)
    for key, why in invalid.items():
        if key in keys and key not in present:
            raise UserError(f"suppress remove: {why}; nothing was removed")
    targets = {key for key in keys if key in present}
    removed = 0
    if targets:
        async with store.write() as tx:
            removed = await tx.remove_suppressions(targets)
    return removed, [keys[k] for k in keys if k not in present]


# ---- suppress import ---------------------------------------------------------------------------


def _values(text: str) -> Iterable[tuple[int, str]]:
    """(line number, value) of a file: one value a line, or a CSV file's `email` column.

    Lines end at LF (CRLF too), as editors and `csv` number them: str.splitlines() would also
    break at VT, FF, U+2028 and others, splitting one line's junk into two "addresses" and
    numbering every later line wrong. Comment lines before a CSV header are not the header."""
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    first = next((i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")), None)
    if first is None:
        return []
    if "," in lines[first] or lines[first].strip().strip('"').lower() == "email":
        try:
            columns = [h.strip().lower() for h in next(csv.reader([lines[first]]))]
        except csv.Error as exc:
            raise ValueError(f"line {first + 1}: {exc}") from None
        if "email" not in columns:
            found = shown(", ".join(columns))
            raise ValueError(f"line {first + 1}: a CSV file needs an 'email' column (found: {found})")
        return _csv_values(text, first, columns.index("email"))
    return ((n + 1, line.strip()) for n, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#"))


def _csv_values(text: str, first: int, column: int) -> Iterable[tuple[int, str]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            if reader.line_num <= first + 1 or not any(cell.strip() for cell in row):
                continue  # the header (and blank lines before it), blank rows
            # An export's cell (`remaining --csv`) has an apostrophe before "=", "+", "-" or "@":
            # the address is what follows it, as `import` reads it.
            yield reader.line_num, (restore_formula(row[column].strip()) if column < len(row) else "")
    except csv.Error as exc:
        raise ValueError(f"line {reader.line_num}: {exc}") from None


def parse_file(text: str, secret: bytes | None, reason: str, label: str, *, allow_special: bool = False) -> ParsedFile:
    """Entries of a suppression file: addresses (source `import`) and unsubscribe tokens
    (source `unsubscribe`, verified against this database's secret)."""
    parsed = ParsedFile()
    try:
        values = list(_values(text))
    except (ValueError, csv.Error) as exc:
        raise UserError(f"{label}: {exc}") from None
    for line, value in values:
        try:
            parsed.entries.append(_entry(value, secret, reason, allow_special))
        except UserError as exc:
            parsed.invalid.append((line, str(exc)))
    return parsed


def _entry(value: str, secret: bytes | None, reason: str, allow_special: bool) -> Entry:
    if not value:
        raise UserError("no address")
    if "@" in value:
        key, normalized = address_key(value, allow_special=allow_special)
        return Entry(key, normalized, Source.IMPORT, reason)
    unsubscribe = check_token(secret, value)
    why = f"unsubscribed (one-click) from mailing {unsubscribe.mailing_id}"
    return Entry(unsubscribe.address, unsubscribe.address, Source.UNSUBSCRIBE, why)


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import into the suppression list did."""

    added: int
    already: int
    invalid: list[tuple[int, str]]
    unsubscribes: int  # entries that came from tokens


async def import_file(
    store: Store, path: Path, reason: str | None, *, allow_special: bool = False,
    report: Callable[[int, str], None] | None = None,
) -> ImportResult:
    """Suppress every valid address and token of a file (read once, bounded: pipes and `-` work).

    Lines that are neither a valid address nor a valid token are reported and skipped: a file of
    tokens collected by a web endpoint may hold anyone's junk, and the real unsubscribes in it
    must still be honoured. A file without one valid entry changes nothing and is an error."""
    label = "standard input" if is_stdin(path) else str(path)
    if not is_stdin(path) and any(same_file(Path(path), companion) for companion in database_companions(store.path)):
        raise UserError(f"suppress import: {safe(label)} is the database or one of its files; name the list to import")
    reason = clean_reason(reason)  # before the file is read: a bad --reason is one line, whatever the file
    text = read_text_bounded(path, limit=MAX_IMPORT_BYTES, what="suppress import")
    secret = await issued_secret(store)  # a token import makes no secret: none was issued
    parsed = parse_file(text, secret, reason or f"imported from {shown(Path(label).name)}", safe(label),
                        allow_special=allow_special)
    if report is not None:
        for line, why in parsed.invalid:
            report(line, why)
    if not parsed.entries:
        count = len(parsed.invalid)
        found = f"{count:,} line{'s' if count != 1 else ''} not valid" if count else "it holds no address or token"
        raise UserError(f"{label}: nothing to suppress ({found}); nothing was changed")
    unique = list({e.key: e for e in parsed.entries}.values())
    added, already = await _store_entries(store, unique)
    return ImportResult(added, already, parsed.invalid, sum(1 for e in unique if e.source is Source.UNSUBSCRIBE))


# ---- while a mailing is sending --------------------------------------------------------------


class SuppressedMeanwhile(Exception):
    """A row's address was suppressed after the sender claimed it: its `sending` mark found it
    on the list (Store.record_and_claim's `barred`), so the final dot must not be sent."""
