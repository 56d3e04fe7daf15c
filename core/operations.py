"""Operations that span several concerns: creating a mailing from its parts and a recipient
file, importing more recipients. The CLI and the
dashboard both call these; state changes still go through the lifecycle.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path


from .compose import MessageTemplate, check_header_value, check_merge_syntax, parse_sender
from .display import safe, shows_nothing, unsafe_character
from .domain import ImportedRow, Mailing, MailingState, RejectedRow
from .errors import ImportRejected, NoValidRecipient, UserError
from .files import MAX_BODY_BYTES, read_text_bounded
from .recipients_csv import (
    InvalidAddress, ReadProgress, RecipientFile, normalize_address, open_recipients, zone_column_note,
)
from .store import ImportSummary, StagedRows, Store, Tx
from .timezones import is_valid_zone
from .waves import refuse_import_into_wave

Reporter = Callable[[RejectedRow], None]
Progress = Callable[[ReadProgress], None]
PROGRESS_EVERY = 1000  # valid rows between two calls of an import's progress callback

# Columns with a meaning of their own; every other column is a merge field.
RESERVED_COLUMNS = {"email", "name", "tz"}


@dataclass(frozen=True, slots=True)
class Draft:
    """A new mailing's content as the operator gave it, before it is checked and stored."""

    name: str
    subject: str
    from_addr: str
    text: str | None
    html: str | None


def _read_body(path: Path | None, what: str) -> str | None:
    """A body file, read once and bounded (a device or an endless pipe is refused, not read)."""
    if path is None:
        return None
    text = read_text_bounded(path, limit=MAX_BODY_BYTES, what=what)
    if "\0" in text:  # PostgreSQL cannot store it, and no mail body needs it: refused on both engines
        line = text.count("\n", 0, text.index("\0")) + 1
        raise UserError(f"{what}: {path}: line {line}: contains a NUL character (not a text file?)")
    return text


def read_draft(name: str, subject: str, from_addr: str, text_file: Path | None, html_file: Path | None) -> Draft:
    if not name.strip():
        raise UserError("--name: a mailing needs a name")
    check_header_value("--subject", subject)
    check_header_value("--from", from_addr)
    if text_file is None and html_file is None:
        raise UserError("a mailing needs a body: give --text FILE, --html FILE or both")
    return Draft(name, subject, from_addr, _read_body(text_file, "--text"), _read_body(html_file, "--html"))


def merge_columns(header: list[str]) -> set[str]:
    return {h for h in header if h.lower() not in RESERVED_COLUMNS}


def template_for(mailing: Mailing, columns: Iterable[str] | None = None) -> MessageTemplate:
    """The MIME skeleton of a stored mailing (for its own merge columns unless others are given)."""
    return MessageTemplate.build(
        mailing_id=mailing.id,
        subject=mailing.subject,
        from_addr=mailing.from_addr,
        text=mailing.text_body,
        html=mailing.html_body,
        available_fields=mailing.fields if columns is None else columns,
    )


def _check_draft_text(draft: Draft) -> None:
    """Names, subjects and senders are shown on terminals and written into headers: control
    characters and direction overrides have no place in them (issue 10, item 15)."""
    for flag, value in (("--name", draft.name), ("--subject", draft.subject), ("--from", draft.from_addr)):
        where = unsafe_character(value)
        if where is not None:
            raise UserError(f"{flag} holds a control character ({where}): '{safe(value)}'")
    # A mailing is told apart by its name: one that shows as nothing, or as another's, is refused.
    where = unsafe_character(draft.name, invisible=True)
    if where is not None:
        raise UserError(f"--name holds an invisible character ({where}): '{safe(draft.name)}'")
    if shows_nothing(draft.name):
        raise UserError(f"--name: a mailing needs a name that shows: '{safe(draft.name)}' draws nothing")


def _check_sender(from_addr: str, allow_special: bool) -> None:
    """`--from` is an address or `Display Name <address>`; the address part must be valid."""
    try:
        _, address = parse_sender(from_addr)
    except UserError as exc:
        raise UserError(f"--from: {exc}") from None
    try:
        normalize_address(address, allow_special=allow_special)
    except InvalidAddress as exc:
        raise UserError(f"--from: '{safe(address)}' is not a valid address ({exc})") from None


def _check_template(draft: Draft, columns: set[str], mailing_id: int = 0, *, allow_special: bool = False) -> MessageTemplate:
    _check_draft_text(draft)
    _check_sender(draft.from_addr, allow_special)
    check_merge_syntax(draft.subject, draft.text, draft.html)
    return MessageTemplate.build(
        mailing_id=mailing_id,
        subject=draft.subject,
        from_addr=draft.from_addr,
        text=draft.text,
        html=draft.html,
        available_fields=columns,
    )


class _Counted:
    """Passes rejected rows on and counts them (for the refusal of a file with no valid row)."""

    def __init__(self, report: Reporter) -> None:
        self.report = report
        self.count = 0

    def __call__(self, row: RejectedRow) -> None:
        self.count += 1
        self.report(row)


def _reporting(rows: Iterator[ImportedRow], source: RecipientFile, counted: _Counted,
               progress: Progress | None) -> Iterator[ImportedRow]:
    """`rows` as they are, telling `progress` every PROGRESS_EVERY valid rows how far the file is read."""
    if progress is None:
        yield from rows
        return
    valid = 0
    for row in rows:
        valid += 1
        if valid % PROGRESS_EVERY == 0:
            done, size = source.bytes_read()
            progress(ReadProgress(valid + counted.count, counted.count, done, size))
        yield row


def _refuse_if_empty(label: str, summary: ImportSummary, rejected: int, what: str) -> None:
    """Raised inside the import transaction: a file that adds nobody changes nothing."""
    if summary.imported:
        return
    reasons = []
    if rejected:
        reasons.append(f"{rejected:,} rejected")
    if summary.duplicates:
        reasons.append(f"{len(summary.duplicates):,} already in the mailing")
    if summary.suppressed:
        reasons.append(f"{summary.suppressed:,} suppressed")
    detail = f" ({', '.join(reasons)})" if reasons else " (it has a header but no rows)"
    raise NoValidRecipient(f"{label}: no valid recipient{detail}; {what}", rejected)


async def create_mailing(
    store: Store, draft: Draft, recipients: Path, on_reject: Reporter, *, allow_special_domains: bool = False,
    progress: Progress | None = None,
) -> tuple[int, ImportSummary]:
    """A new draft with its recipients, all in one transaction: a structural error, or a file
    without one valid recipient, leaves nothing. `progress`, if given, hears how far the file is
    read every PROGRESS_EVERY valid rows.

    The recipient file is read exactly once (header, then rows), so a pipe works too."""
    with open_recipients(recipients) as source:
        return await _create_from(store, draft, source, on_reject, allow_special_domains, progress)


async def _create_from(
    store: Store, draft: Draft, source: RecipientFile, on_reject: Reporter, allow_special_domains: bool,
    progress: Progress | None = None,
) -> tuple[int, ImportSummary]:
    columns = merge_columns(source.header)
    template = _check_template(draft, columns, allow_special=allow_special_domains)
    counted = _Counted(on_reject)
    async with store.staged_rows(_checked_rows(source, template, counted, allow_special_domains, progress)) as staged:
        async with store.new_mailing_write() as tx:  # PostgreSQL: the write lock only for the commit
            mailing_id = await tx.insert_mailing(
                name=draft.name,
                subject=draft.subject,
                from_addr=draft.from_addr,
                text_body=draft.text,
                html_body=draft.html,
                fields=columns,
            )
            summary = await _insert(tx, mailing_id, staged, source, counted, "no mailing was created")
            await tx.add_event(mailing_id, "created", f"{summary.imported:,} recipients from {_source_name(source)}")
    return mailing_id, summary


async def import_recipients(
    store: Store, mailing_id: int, recipients: Path, on_reject: Reporter, *, allow_special_domains: bool = False,
    progress: Progress | None = None,
) -> ImportSummary:
    """Add recipients to a draft, scheduled or stopped mailing; all-or-nothing on structural errors.
    `progress` as in create_mailing."""
    mailing = await store.mailing(mailing_id)
    if mailing.state not in (MailingState.DRAFT, MailingState.SCHEDULED, MailingState.STOPPED):
        raise UserError(
            f"mailing {mailing_id} is {mailing.state.value}: recipients can be added to a draft, scheduled or stopped mailing"
        )
    refuse_import_into_wave(mailing)  # issue 14: a wave is one instant, not local time (checked again below)
    with open_recipients(recipients) as source:
        return await _import_from(store, mailing, source, on_reject, allow_special_domains, progress)


async def _import_from(
    store: Store, mailing: Mailing, source: RecipientFile, on_reject: Reporter, allow_special_domains: bool,
    progress: Progress | None = None,
) -> ImportSummary:
    mailing_id = mailing.id
    columns = merge_columns(source.header)
    try:
        template = template_for(mailing, columns)
    except UserError as exc:
        raise ImportRejected(f"{source.label}: {exc}") from None
    counted = _Counted(on_reject)
    async with store.staged_rows(_checked_rows(source, template, counted, allow_special_domains, progress)) as staged:
        async with store.write() as tx:
            current = await tx.mailing(mailing_id)
            if current.state is not mailing.state:
                raise UserError(f"mailing {mailing_id} changed state while importing; try again")
            refuse_import_into_wave(current)  # issue 14: a wave is one instant, not local time
            summary = await _insert(tx, mailing_id, staged, source, counted, "nothing was imported")
            all_columns = sorted(set(mailing.fields) | columns)
            await tx.update_mailing(mailing_id, fields=json.dumps(all_columns))
            await tx.add_event(mailing_id, "imported", f"{summary.imported:,} recipients from {_source_name(source)}")
    return summary


def _checked_rows(
    source: RecipientFile, template: MessageTemplate, counted: _Counted, allow_special_domains: bool,
    progress: Progress | None,
) -> Iterator[ImportedRow]:
    """The file's valid rows, each rejected one reported through `counted`."""
    rows = source.rows(
        header_fields=template.subject_fields,
        valid_zone=is_valid_zone,
        on_reject=counted,
        allow_special_domains=allow_special_domains,
    )
    return _reporting(rows, source, counted, progress)


async def _insert(tx: Tx, mailing_id: int, staged: StagedRows, source: RecipientFile, counted: _Counted, nothing_done: str) -> ImportSummary:
    """The staged rows into the mailing inside `tx`; refused (with `nothing_done`) when no row was valid."""
    summary = await tx.insert_staged(mailing_id, staged)
    _refuse_if_empty(source.label, summary, counted.count, nothing_done)
    note = zone_column_note(source.header)
    return summary if note is None else replace(summary, notes=(*summary.notes, f"{source.label}: {note}"))


def _source_name(source: RecipientFile) -> str:
    """How the ledger's event names where recipients came from."""
    if source.label == "standard input" or str(source.path).startswith(("/dev/", "/proc/")):
        return source.label  # a pipe's name (/dev/fd/63) says more whole than its last part
    return source.path.name


# The operator's "try the paused relay(s) again" (`mailtower resume`, the dashboard): a row in the
# meta table that the sender reads within a second. It applies to relays paused before `at`, so an
# old request never resumes a later pause.
RESUME_REQUEST_KEY = "resume_request"


async def request_resume(store: Store, relay: str | None = None, relay_names: Iterable[str] | None = None) -> None:
    """Ask the running sender to try paused relays again (all of them, or the one named).

    `relay_names` (the configured relays) lets a caller refuse an unknown name before writing."""
    if relay is not None:
        names = list(relay_names) if relay_names is not None else None
        if not relay.strip() or (names is not None and relay not in names):
            known = ", ".join(names or []) or "none"
            raise UserError(f"--relay: no relay named {relay!r} (configured: {known})")
    await store.put_meta({RESUME_REQUEST_KEY: json.dumps({"relay": relay, "at": time.time()})})


def parse_resume_request(raw: str | None) -> tuple[str | None, float] | None:
    """(relay name or None for all, wall-clock time) of a stored resume request; None if absent
    or unreadable (a hand-edited row must not stop the sender)."""
    if not raw:
        return None
    try:
        data = json.loads(raw)
        at = float(data["at"])
        relay = data.get("relay")
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if not math.isfinite(at) or (relay is not None and not isinstance(relay, str)):
        return None
    return relay, at
