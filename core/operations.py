"""Operations that span several concerns: creating a mailing from its parts and a recipient
file, importing more recipients, splitting a mailing by recipient time zone. The CLI and the
dashboard both call these; state changes still go through the lifecycle.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from email_validator import EmailNotValidError

from .compose import MessageTemplate, check_header_value
from .domain import Mailing, MailingState, RejectedRow
from .errors import ImportRejected, UserError
from .lifecycle import Action, Lifecycle, target_state
from .recipients_csv import normalize_address, read_header, read_recipients
from .store import ImportSummary, Store
from .timezones import Resolved, is_valid_zone, load_zone, resolve, utcnow

Reporter = Callable[[RejectedRow], None]

# Columns with a meaning of their own; every other column is a merge field.
RESERVED_COLUMNS = {"email", "name", "tz"}


@dataclass(frozen=True, slots=True)
class Draft:
    name: str
    subject: str
    from_addr: str
    text: str | None
    html: str | None


def _read_body(path: Path | None, what: str) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what}: {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{what}: {path} is not UTF-8 (byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{what}: cannot read {path}: {exc.strerror}") from None


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


def _check_template(draft: Draft, columns: set[str], mailing_id: int = 0) -> MessageTemplate:
    try:
        normalize_address(draft.from_addr)
    except EmailNotValidError as exc:
        raise UserError(f"--from: '{draft.from_addr}' is not a valid address ({exc})") from None
    return MessageTemplate.build(
        mailing_id=mailing_id,
        subject=draft.subject,
        from_addr=draft.from_addr,
        text=draft.text,
        html=draft.html,
        available_fields=columns,
    )


async def create_mailing(store: Store, draft: Draft, recipients: Path, on_reject: Reporter) -> tuple[int, ImportSummary]:
    """A new draft with its recipients, all in one transaction: a structural error leaves nothing."""
    header = read_header(recipients)
    columns = merge_columns(header)
    template = _check_template(draft, columns)
    async with store.write() as tx:
        mailing_id = await tx.insert_mailing(
            name=draft.name,
            subject=draft.subject,
            from_addr=draft.from_addr,
            text_body=draft.text,
            html_body=draft.html,
            fields=columns,
        )
        rows = read_recipients(
            recipients, header_fields=template.subject_fields, valid_zone=is_valid_zone, on_reject=on_reject
        )
        summary = await tx.import_rows(mailing_id, rows)
        await tx.add_event(mailing_id, "created", f"{summary.imported:,} recipients from {recipients.name}")
    return mailing_id, summary


async def import_recipients(store: Store, mailing_id: int, recipients: Path, on_reject: Reporter) -> ImportSummary:
    """Add recipients to a draft, scheduled or stopped mailing; all-or-nothing on structural errors."""
    mailing = await store.mailing(mailing_id)
    if mailing.state not in (MailingState.DRAFT, MailingState.SCHEDULED, MailingState.STOPPED):
        raise UserError(
            f"mailing {mailing_id} is {mailing.state.value}: recipients can be added to a draft, scheduled or stopped mailing"
        )
    columns = merge_columns(read_header(recipients))
    try:
        template = template_for(mailing, columns)
    except UserError as exc:
        raise ImportRejected(f"{recipients}: {exc}") from None
    async with store.write() as tx:
        current = await tx.mailing(mailing_id)
        if current.state is not mailing.state:
            raise UserError(f"mailing {mailing_id} changed state while importing; try again")
        rows = read_recipients(
            recipients, header_fields=template.subject_fields, valid_zone=is_valid_zone, on_reject=on_reject
        )
        summary = await tx.import_rows(mailing_id, rows)
        all_columns = sorted(set(mailing.fields) | columns)
        await tx.update_mailing(mailing_id, fields=json.dumps(all_columns))
        await tx.add_event(mailing_id, "imported", f"{summary.imported:,} recipients from {recipients.name}")
    return summary


async def split_by_zone(
    store: Store, lifecycle: Lifecycle, mailing_id: int, local: datetime, default_tz: str | None
) -> list[tuple[int, Resolved]]:
    """Deliver at a wall time in each recipient's own zone: one scheduled mailing per zone.

    The original keeps the recipients of the first zone; the others move to new mailings named
    after it. Every recipient ends up in exactly one of them.
    """
    mailing = await store.mailing(mailing_id)
    target_state(mailing, Action.SCHEDULE, any_sending=False)
    zones = await store.recipient_zones(mailing_id)
    if "" in zones:
        if not default_tz:
            raise UserError(
                f"mailing {mailing_id}: {zones['']:,} recipients have no tz column value; give --tz ZONE for them"
            )
        load_zone(default_tz)
    plan: dict[str, Resolved] = {}
    for zone in sorted({z or default_tz for z in zones}):  # type: ignore[misc]
        resolved = resolve(local, zone)
        if resolved.utc <= utcnow():
            raise UserError(f"{local:%Y-%m-%d %H:%M} in {zone} is in the past; choose a later time")
        plan[zone] = resolved
    results: list[tuple[int, Resolved]] = []
    async with store.write() as tx:
        target_state(await tx.mailing(mailing_id), Action.SCHEDULE, any_sending=False)
        first = True
        for zone, resolved in plan.items():
            source_zones = [z for z in zones if (z or default_tz) == zone]
            if first:
                target = mailing_id
                await tx.update_mailing(mailing_id, name=f"{mailing.name} [{zone}]")
                first = False
            else:
                target = await tx.insert_mailing(
                    name=f"{mailing.name} [{zone}]",
                    subject=mailing.subject,
                    from_addr=mailing.from_addr,
                    text_body=mailing.text_body,
                    html_body=mailing.html_body,
                    fields=mailing.fields,
                    parent_id=mailing_id,
                )
                await tx.move_recipients(mailing_id, target, source_zones)
                await tx.add_event(target, "created", f"split from mailing {mailing_id} for recipients in {zone}")
            await lifecycle.schedule_in(tx, target, resolved)
            results.append((target, resolved))
    return results



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
