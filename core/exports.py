"""Export the recipients who have not received a mailing to a CSV file.

The export streams keyset pages from the store, so a million remaining recipients cost a page
of memory, not a million rows. The file is created readable by its owner only: it holds
addresses and server replies.
"""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TextIO

from .domain import Recipient, RecipientState
from .files import atomic_output, check_output_path, database_companions
from .recipients_csv import neutralise_formula
from .store import Store

HEADER = ("email", "name", "state", "attempts", "last_code", "last_error")
PAGE_SIZE = 2000
REPLACE_HINT = "allow replacing it or choose another name"


def state_label(recipient: Recipient) -> str:
    """What the operator calls the row's state: pending, deferred, sending, or in doubt.

    "In doubt" is a pending row that was in flight when a sender died: it may have been
    delivered already, and it will be sent again.
    """
    if recipient.in_doubt and recipient.state is RecipientState.PENDING:
        return "in doubt"
    return recipient.state.value


def _row(recipient: Recipient) -> tuple[str, str, str, int, str, str]:
    # Every text cell is neutralised: names come from imported files and last_error from remote
    # servers, and a spreadsheet would run "=HYPERLINK(...)" or "+cmd|..." as a formula.
    return (
        neutralise_formula(recipient.email),
        neutralise_formula(recipient.name),
        state_label(recipient),
        recipient.attempts,
        "" if recipient.last_code is None else str(recipient.last_code),
        neutralise_formula(recipient.last_error or ""),
    )


async def export_remaining_csv(
    store: Store, mailing_id: int, path: Path, search: str = "", *, overwrite: bool = False
) -> int:
    """Write the remaining recipients of `mailing_id` (optionally filtered) to `path`; returns rows written.

    The same rules as every file mailtower writes (core/files): refused before any work if it is
    the database or one of its companion files (however named), a directory, in a missing
    directory, or an existing file without `overwrite`; written beside it and renamed into place
    at the end, so a failed export never leaves a half-written or clobbered file.
    """
    await store.mailing(mailing_id)  # NotFound before any file is touched
    protected = database_companions(store.path)
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


async def write_remaining_csv(store: Store, mailing_id: int, handle: TextIO, search: str = "") -> int:
    """CSV (header row, address first) of the remaining recipients to an open text handle; rows written."""
    writer = csv.writer(handle)
    writer.writerow(HEADER)
    written = 0
    async for page in remaining_pages(store, mailing_id, search):
        writer.writerows(_row(recipient) for recipient in page)
        written += len(page)
    return written
