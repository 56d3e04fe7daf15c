"""Export the recipients who have not received a mailing to a CSV file.

The export streams keyset pages from the store, so a million remaining recipients cost a page
of memory, not a million rows. The file is created readable by its owner only: it holds
addresses and server replies.

The file is one `import` (and `new --recipients`) reads back into an equivalent mailing: after
`email` and `name` come the status columns (`state`, `attempts`, `last_code`, `last_error`), which
the importer recognises as the export's and does not take as merge fields (see
recipients_csv.EXPORT_STATUS_COLUMNS), then `tz` when a listed recipient has a time zone, then every
merge field any listed recipient carries, in sorted order (one named like a status column, such as
a list's `state`, as `field:state`, which the importer reads back as `state`). Finding those
columns takes one pass over the listed rows before the file is written.
"""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

from .display import safe
from .domain import Recipient, RecipientState
from .errors import UserError
from .files import atomic_output, check_output_path, database_companions
from .recipients_csv import EXPORT_STATUS_COLUMNS, export_column_name, neutralise_formula
from .store import Store

HEADER = ("email", "name", *EXPORT_STATUS_COLUMNS)
PAGE_SIZE = 2000
REPLACE_HINT = "allow replacing it or choose another name"
# Columns the importer reads as the recipient's own (any case): a merge field cannot take their name.
_RECIPIENT_COLUMNS = ("email", "name", "tz")


@dataclass(frozen=True, slots=True)
class Columns:
    """The columns of an export beyond HEADER: `tz` if any listed recipient has a zone, and the
    merge fields of the listed recipients (sorted, so the same rows always give the same file)."""

    tz: bool = False
    fields: tuple[str, ...] = ()

    @property
    def header(self) -> tuple[str, ...]:
        return (*HEADER, *(("tz",) if self.tz else ()), *(export_column_name(name) for name in self.fields))


def columns_of(tz: bool, names: set[str], mailing_id: int) -> Columns:
    """The columns that hold every value of the listed recipients (`tz`: any has a zone; `names`:
    their merge fields); UserError if a merge field's name is the name of a column the export
    writes itself (the file could not be read back)."""
    for name in sorted(names):
        renamed = export_column_name(name)
        if name.lower() in _RECIPIENT_COLUMNS:
            raise UserError(
                f"mailing {mailing_id}: merge field '{safe(name)}' has the name of a column the export writes itself "
                f"({', '.join(_RECIPIENT_COLUMNS)}), so the file could not be read back; nothing was written"
            )
        if renamed != name and renamed in names:
            raise UserError(
                f"mailing {mailing_id}: merge field '{safe(name)}' would be written as '{safe(renamed)}', the name of "
                "another merge field, so the file could not be read back; nothing was written"
            )
    return Columns(tz, tuple(sorted(names)))


def state_label(recipient: Recipient) -> str:
    """What the operator calls the row's state: pending, deferred, sending, or in doubt.

    "In doubt" is a row that was in flight when a sender died or its connection broke after
    the final dot: it may have been delivered already, and it will be sent again (at once, or
    when its retry comes).
    """
    if recipient.in_doubt and recipient.state in (RecipientState.PENDING, RecipientState.DEFERRED):
        return "in doubt"
    return recipient.state.value


class _ShownWriter:
    """A csv writer whose cells pass through `shown` first (the row's own line ending does not)."""

    def __init__(self, writer: Any, shown: Callable[[str], str]) -> None:
        self._writer, self._shown = writer, shown

    def writerow(self, row: Iterable[object]) -> None:
        self._writer.writerow([self._shown(str(cell)) for cell in row])

    def writerows(self, rows: Iterable[Iterable[object]]) -> None:
        for row in rows:
            self.writerow(row)


def _row(recipient: Recipient, columns: Columns = Columns()) -> list[str | int]:
    # Every text cell is neutralised: names and merge fields come from imported files and
    # last_error from remote servers, and a spreadsheet would run "=HYPERLINK(...)" or "+cmd|..."
    # as a formula. The importer removes the apostrophe again (recipients_csv.restore_formula).
    row: list[str | int] = [
        neutralise_formula(recipient.email),
        neutralise_formula(recipient.name),
        state_label(recipient),
        recipient.attempts,
        "" if recipient.last_code is None else str(recipient.last_code),
        neutralise_formula(recipient.last_error or ""),
    ]
    if columns.tz:
        row.append(neutralise_formula(recipient.tz))
    if columns.fields:
        values = recipient.fields
        row.extend(neutralise_formula(str(values.get(name, ""))) for name in columns.fields)
    return row


async def export_remaining_csv(
    store: Store, mailing_id: int, path: Path, search: str = "", *, overwrite: bool = False,
    protected: Iterable[Path] = (),
) -> int:
    """Write the remaining recipients of `mailing_id` (optionally filtered) to `path`; returns rows written.

    The same rules as every file mailtower writes (core/files): refused before any work if it is
    the database or one of its companion files (however named), a directory, in a missing
    directory, or an existing file without `overwrite`, or one of `protected` (the files the
    settings were read from); written beside it and renamed into place at the end, so a failed
    export never leaves a half-written or clobbered file.
    """
    await store.mailing(mailing_id)  # NotFound before any file is touched
    protected = [*database_companions(store.path), *protected]
    target = check_output_path(
        path, what="export", force=overwrite, protected=protected, replace_hint=REPLACE_HINT
    )
    with atomic_output(
        target, what="export", force=overwrite, protected=protected, replace_hint=REPLACE_HINT
    ) as handle:
        return await write_remaining_csv(store, mailing_id, handle, search)


async def remaining_pages(store: Store, mailing_id: int, search: str = "") -> AsyncIterator[list[Recipient]]:
    """The remaining recipients in ledger order, a keyset page at a time."""
    after_id = 0
    while True:  # bounded: every page advances after_id past rows already returned
        page = await store.remaining(mailing_id, after_id=after_id, limit=PAGE_SIZE, search=search)
        if not page:
            return
        yield page
        after_id = page[-1].id


async def remaining_columns(store: Store, mailing_id: int, search: str = "") -> Columns:
    """The columns an export of the remaining recipients (so filtered) needs: one pass over them."""
    tz = False
    names: set[str] = set()
    async for page in remaining_pages(store, mailing_id, search):
        for recipient in page:
            tz = tz or bool(recipient.tz)
            names.update(recipient.fields)
    return columns_of(tz, names, mailing_id)


async def write_remaining_csv(store: Store, mailing_id: int, handle: TextIO, search: str = "",
                              shown: Callable[[str], str] | None = None) -> int:
    """CSV (header row, address first) of the remaining recipients to an open text handle; rows
    written. `shown` (display.safe for a terminal) is applied to every cell.

    A pass over the rows finds their columns before anything is written, so a refusal (a merge
    field named like a column of the export) leaves the handle untouched."""
    columns = await remaining_columns(store, mailing_id, search)
    writer = csv.writer(handle) if shown is None else _ShownWriter(csv.writer(handle), shown)
    writer.writerow([neutralise_formula(name) for name in columns.header])  # a merge field "=x" too
    known = frozenset(columns.fields)
    written = 0
    async for page in remaining_pages(store, mailing_id, search):
        for recipient in page:
            if (recipient.tz and not columns.tz) or not recipient.fields.keys() <= known:
                # Recipients with other columns were imported between the two passes: writing
                # on would lose their values.
                raise UserError(
                    f"mailing {mailing_id}: recipients with other columns were imported during the export, "
                    "so it is incomplete; export again"
                )
        writer.writerows(_row(recipient, columns) for recipient in page)
        written += len(page)
    return written
