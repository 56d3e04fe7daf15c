"""Export the recipients who have not received a mailing to a CSV file.

The export streams keyset pages from the store, so a million remaining recipients cost a page
of memory, not a million rows. The file is created readable by its owner only: it holds
addresses and server replies.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TextIO

from .domain import Recipient, RecipientState
from .errors import UserError
from .store import Store

HEADER = ("email", "name", "state", "attempts", "last_code", "last_error")
PAGE_SIZE = 2000


def state_label(recipient: Recipient) -> str:
    """What the operator calls the row's state: pending, deferred, sending, or in doubt.

    "In doubt" is a pending row that was in flight when a sender died: it may have been
    delivered already, and it will be sent again.
    """
    if recipient.in_doubt and recipient.state is RecipientState.PENDING:
        return "in doubt"
    return recipient.state.value


def _row(recipient: Recipient) -> tuple[str, str, str, int, str, str]:
    return (
        recipient.email,
        recipient.name,
        state_label(recipient),
        recipient.attempts,
        "" if recipient.last_code is None else str(recipient.last_code),
        recipient.last_error or "",
    )


async def export_remaining_csv(
    store: Store, mailing_id: int, path: Path, search: str = "", *, overwrite: bool = False
) -> int:
    """Write the remaining recipients of `mailing_id` (optionally filtered) to `path`; returns rows written.

    Refuses to replace an existing file unless `overwrite`. With `overwrite` the new file is
    written beside it and renamed over it at the end, so a failed export never leaves the old
    file half-replaced.
    """
    path = Path(path).expanduser()
    await store.mailing(mailing_id)  # NotFound before any file is touched
    if path.is_dir():
        raise UserError(f"{path} is a directory; give a file name such as {path / f'remaining-{mailing_id}.csv'}")
    if not path.parent.is_dir():
        raise UserError(f"{path.parent} does not exist; create the directory first or choose another path")
    target, final = _open_private(path, overwrite)
    try:
        with os.fdopen(target[0], "w", encoding="utf-8", newline="") as handle:
            written = await write_remaining_csv(store, mailing_id, handle, search)
        if final is not None:
            os.replace(target[1], final)
    except BaseException:
        _remove_quietly(target[1])
        raise
    return written


def _open_private(path: Path, overwrite: bool) -> tuple[tuple[int, str], Path | None]:
    """((fd, path written to), path to rename it to at the end, or None if written in place)."""
    if overwrite:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
        return (fd, temporary), path
    try:
        # O_EXCL claims the name atomically: no check-then-create race with another writer.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UserError(f"{path} already exists; choose another name or allow overwriting it") from None
    except PermissionError:
        raise UserError(f"cannot create {path}: permission denied") from None
    except OSError as exc:
        raise UserError(f"cannot create {path}: {exc.strerror}") from None
    return (fd, str(path)), None


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


def _remove_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass
