"""The `mailtower` command line. Every dashboard action is also a subcommand here."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import os
import re
import signal
import sys
import tempfile
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn, TextIO

import platformdirs

from mailtower.core.config import BOUNDS, Settings, default_db_path, load_settings, security_warnings
from mailtower.core.display import install_safe_logging, safe
from mailtower.core.domain import Mailing, MailingState, Recipient, RejectedRow, Section
from mailtower.core.errors import UserError
from mailtower.core.exports import HEADER, PAGE_SIZE, remaining_pages, state_label, write_remaining_csv
from mailtower.core.files import (
    MIB,
    atomic_output,
    check_output_path,
    database_companions,
    describe_size,
    is_stdin,
)
from mailtower.core.lifecycle import Direction, Lifecycle
from mailtower.core.limits import LIMITS, read_limits, set_limits
from mailtower.core.operations import create_mailing, import_recipients, read_draft, request_resume, split_by_zone
from mailtower.core.recipients_csv import neutralise_formula
from mailtower.core.progress import queue_estimates
from mailtower.core.relays import held_back, parse_waiting, relays_from_settings
from mailtower.core.sender import LeaseHeld, Sender, SenderFailed
from mailtower.core.store import Store, iso, storage_error
from mailtower.core.timezones import load_zone, parse_wall_time, resolve, tzdata_version

from . import loops

log = logging.getLogger(__name__)

EXIT_USER_ERROR = 2
# An error mailtower did not expect (a bug): one line naming the log file with the traceback.
EXIT_INTERNAL_ERROR = 70  # EX_SOFTWARE in sysexits.h
SQLITE_MAX_ID = 2**63 - 1


def mailing_id(text: str) -> int:
    """An argparse type: a mailing id is a whole number SQLite can hold (1 to 2**63-1)."""
    # Only ASCII digits: int() would also take "1_0" and other scripts' digits.
    if re.fullmatch(r"[+-]?[0-9]+", text.strip()) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a mailing id (a whole number)")
    value = int(text.strip())
    if not 1 <= value <= SQLITE_MAX_ID:
        raise argparse.ArgumentTypeError(f"{text!r} is not a mailing id (ids run from 1 to {SQLITE_MAX_ID})")
    return value


def package_version() -> str:
    try:
        return version("mailtower")
    except PackageNotFoundError:
        return "0+unknown"


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one clear line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="mailtower", description="Send-status dashboard and sending engine for email campaigns.")
    p.add_argument("--version", action="version", version=f"mailtower {package_version()} (tzdata {tzdata_version()})")
    p.add_argument("--db", type=Path, help="database file (default: MAILTOWER_DB or the user data directory)")
    p.add_argument("--config", type=Path, help="TOML config file (default: MAILTOWER_CONFIG or the user config dir)")
    # Numbers stay text here: core checks them (bounds, NaN, inf) like every other source does.
    p.add_argument("--smtp-host")
    p.add_argument("--smtp-port", metavar="PORT")
    p.add_argument("--smtp-tls", choices=["none", "starttls", "tls"])
    p.add_argument("--connections", metavar="N", help=f"parallel SMTP connections ({BOUNDS['connections'].describe()})")
    p.add_argument("--rate", metavar="N", help=f"messages per second ({BOUNDS['rate'].describe()})")
    sub = p.add_subparsers(dest="command", parser_class=OneLineParser)

    new = sub.add_parser("new", help="create a mailing from a recipient CSV; prints its id")
    new.add_argument("--name", required=True)
    new.add_argument("--subject", required=True)
    new.add_argument("--from", dest="from_addr", required=True)
    new.add_argument("--text", type=Path)
    new.add_argument("--html", type=Path)
    new.add_argument("--recipients", type=Path, required=True)
    new.add_argument("--rejects", type=Path, help="also write rejected rows to this CSV file (written once the import succeeded)")
    new.add_argument("--force", action="store_true", help="replace the --rejects file if it exists")
    when = new.add_mutually_exclusive_group()
    when.add_argument("--now", action="store_true", help="queue it for sending now")
    when.add_argument("--at", help='"YYYY-MM-DD HH:MM" wall time in --tz')
    new.add_argument("--tz", help="IANA time zone of --at, e.g. Europe/Berlin")

    imp = sub.add_parser("import", help="add recipients to a draft, scheduled or stopped mailing")
    imp.add_argument("id", type=mailing_id)
    imp.add_argument("csv", type=Path, help="recipient CSV file; - reads standard input")
    imp.add_argument("--rejects", type=Path, help="also write rejected rows to this CSV file (written once the import succeeded)")
    imp.add_argument("--force", action="store_true", help="replace the --rejects file if it exists")

    st = sub.add_parser("status", help="the three sections")
    st.add_argument("--json", action="store_true")

    for name, helptext in [
        ("send-now", "queue a draft, scheduled or stopped mailing at the bottom of the queue"),
        ("unschedule", "cancel a schedule; the mailing stays as a draft"),
        ("stop", "stop a current mailing; its remaining recipients are kept"),
        ("restart", "send a stopped mailing to its remaining recipients"),
        ("delete", "delete an inactive mailing"),
    ]:
        cmd = sub.add_parser(name, help=helptext)
        cmd.add_argument("id", type=mailing_id)

    sch = sub.add_parser("schedule", help="schedule a mailing at a wall time in a time zone")
    sch.add_argument("id", type=mailing_id)
    sch.add_argument("--at", required=True, help='"YYYY-MM-DD HH:MM"')
    sch.add_argument("--tz", help="IANA time zone (required unless --local-time and every recipient has one)")
    sch.add_argument("--local-time", action="store_true", help="deliver at that wall time in each recipient's zone")

    mv = sub.add_parser("move", help="reorder the queue")
    mv.add_argument("id", type=mailing_id)
    mv.add_argument("direction", choices=[d.value for d in Direction])

    rem = sub.add_parser("remaining", help="recipients who have not received a mailing")
    rem.add_argument("id", type=mailing_id)
    rem.add_argument("--csv", action="store_true", help="CSV (address first) instead of the tab-separated listing")
    rem.add_argument("-o", "--output", type=Path, help="write to this file instead of standard output (- is standard output)")
    rem.add_argument("--force", action="store_true", help="replace the --output file if it exists")

    rcp = sub.add_parser(
        "recipients", help="a mailing's recipients with their state and the server's last reply"
    )
    rcp.add_argument("id", type=mailing_id)
    rcp.add_argument(
        "--state", help=f"only these states, comma-separated: {', '.join(STATE_CHOICES)} (default: all)"
    )
    fmt = rcp.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV with a header row")
    fmt.add_argument("--json", action="store_true", help="JSON lines: one object per recipient")

    lim = sub.add_parser("limits", help="show or change sending limits live (kept across restarts)")
    lim.add_argument("--rate", dest="limit_rate", help="messages per second, 0 = unlimited")
    lim.add_argument("--rate-per-hour", help="messages per hour, 0 = unlimited")
    lim.add_argument("--connections", dest="limit_connections", help="parallel SMTP connections")
    lim.add_argument("--messages-per-connection", help="reconnect after this many messages, 0 = never")
    lim.add_argument("--json", action="store_true")

    res = sub.add_parser("resume", help="try paused relays again now (after a refused login, say)")
    res.add_argument("--relay", help="only this relay (its name in the config, or HOST:PORT)")

    run = sub.add_parser("run", help="the headless sender")
    run.add_argument("--until-idle", action="store_true", help="return once nothing is current or scheduled")

    sub.add_parser("demo", help="the dashboard on a throw-away database with a local SMTP sink")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    flags = {
        "db": args.db,
        "smtp_host": args.smtp_host,
        "smtp_port": args.smtp_port,
        "smtp_tls": args.smtp_tls,
        "connections": args.connections,
        "rate": args.rate,
    }
    # An explicit --config must exist (MAILTOWER_CONFIG likewise); only the default may be absent.
    return load_settings(flags, config_path=args.config, config_flag="--config" if args.config is not None else None)


# A rejects file is bounded like everything else mailtower writes from untrusted input: a hostile
# list could otherwise reject ten million rows with a megabyte of reason each.
MAX_REJECTS_BYTES = 64 * MIB
MAX_REASON_CHARS = 500


def _short(reason: str) -> str:
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    return reason[:MAX_REASON_CHARS] + f"... ({len(reason) - MAX_REASON_CHARS:,} more characters)"


class RejectLog:
    """Reports rejected rows on stderr (the first `limit`) and into an open CSV handle when given.

    The handle is a temporary file (see `optional_output`): it becomes the --rejects file only
    when the whole command succeeded."""

    def __init__(self, source: Path, handle: TextIO | None = None, limit: int = 50,
                 max_bytes: int = MAX_REJECTS_BYTES) -> None:
        self.source = "standard input" if is_stdin(source) else str(source)
        self.count = 0
        self.limit = limit
        self._writer: Any = None
        self._max_bytes = max_bytes
        self._room = max_bytes
        self._unwritten = 0
        if handle is not None:
            self._writer = csv.writer(handle)
            self._writer.writerow(["line", "reason"])

    def __call__(self, row: RejectedRow) -> None:
        self.count += 1
        reason = _short(row.reason)
        if self.count <= self.limit:
            print(safe(f"{self.source}:{row.line}: {reason}"), file=sys.stderr)
        if self._writer is None:
            return
        cost = len(reason.encode("utf-8")) + 24  # the line number, quotes and separators
        if cost > self._room:
            self._unwritten += 1
            return
        self._room -= cost
        self._writer.writerow([row.line, neutralise_formula(reason)])

    def close(self) -> None:
        if self.count > self.limit:
            print(f"{self.source}: {self.count - self.limit} more rows rejected", file=sys.stderr)
        if self._writer is not None and self._unwritten:
            note = f"{self._unwritten:,} more rows rejected; the file stops at {describe_size(self._max_bytes)}"
            self._writer.writerow(["", note])
            print(f"{self.source}: {note}", file=sys.stderr)


def protected_files(settings: Settings, store: Store, inputs: Iterable[Path | None]) -> list[Path]:
    """Files no output of this command may replace: the database and its companions, and the
    command's own input files (standard input as whatever it is redirected from)."""
    protected = database_companions(Path(settings.db)) + database_companions(Path(store.path))
    for source in inputs:
        if source is not None:
            protected.append(Path("/dev/stdin") if is_stdin(source) else source)
    return protected


def checked_output(path: Path | None, *, flag: str, force: bool, protected: list[Path]) -> Path | None:
    """`path` after every check has passed (before anything is read or changed), or None."""
    if path is None:
        return None
    return check_output_path(path, what=flag, force=force, protected=protected)


@contextmanager
def optional_output(
    target: Path | None, *, flag: str, force: bool, protected: list[Path]
) -> Iterator[TextIO | None]:
    """A temporary file beside `target` that is renamed into place when the block succeeds."""
    if target is None:
        yield None
        return
    with atomic_output(target, what=flag, force=force, protected=protected) as handle:
        yield handle


async def with_store(settings: Settings, body: Callable[[Store], Awaitable[int]]) -> int:
    store = await Store.open(settings.db)
    try:
        # A tzdata upgrade moves the instants of schedules; every command sees them right.
        await Lifecycle(store).rederive_schedules()
        return await body(store)
    finally:
        await store.close()


def warn(message: str) -> None:
    print(f"mailtower: warning: {message}", file=sys.stderr)


def checked_schedule(at: str | None, tz: str | None) -> datetime | None:
    """The wall time of `new --at/--tz`, refused before anything is created if it cannot be
    scheduled (unknown zone, no such time, out of range, in the past)."""
    if not at:
        if tz:
            raise UserError("--tz goes with --at")
        return None
    if not tz:
        raise UserError("--at needs --tz ZONE (an IANA name such as Europe/Berlin)")
    load_zone(tz)
    when = parse_wall_time(at)
    if resolve(when, tz).utc <= datetime.now(timezone.utc):
        raise UserError(f"--at: {when:%Y-%m-%d %H:%M} in {tz} is in the past; choose a later time")
    return when


async def discard_quietly(store: Store, lifecycle: Lifecycle, mailing_id: int) -> None:
    try:
        await discard_new_mailing(store, lifecycle, mailing_id)
    except Exception:  # noqa: BLE001 - the error that made us discard it is the one to report
        log.warning("could not delete the half-made mailing %d", mailing_id, exc_info=True)


async def cmd_new(args: argparse.Namespace, store: Store) -> int:
    from_stdin = [flag for flag, path in (("--text", args.text), ("--html", args.html), ("--recipients", args.recipients))
                  if path is not None and is_stdin(path)]
    if len(from_stdin) > 1:
        raise UserError(f"{' and '.join(from_stdin)} both read standard input (-); give a file for all but one")
    protected = protected_files(args.settings, store, [args.recipients, args.text, args.html])
    target = checked_output(args.rejects, flag="--rejects", force=args.force, protected=protected)
    draft = read_draft(args.name, args.subject, args.from_addr, args.text, args.html)
    when = checked_schedule(args.at, args.tz)
    lifecycle = Lifecycle(store)
    mailing_id: int | None = None
    try:
        # The rejects file is put in place only when everything else succeeded; if that last
        # step fails, the new mailing is taken back, so the command changed nothing.
        with optional_output(target, flag="--rejects", force=args.force, protected=protected) as handle:
            rejects = RejectLog(args.recipients, handle)
            try:
                mailing_id, summary = await create_mailing(
                    store, draft, args.recipients, rejects, allow_special_domains=args.settings.allow_special_domains
                )
            finally:
                rejects.close()
            for line in summary.duplicates[:50]:
                print(f"{rejects.source}:{line}: duplicate address, already in the mailing", file=sys.stderr)
            if args.now:
                await lifecycle.send_now(mailing_id)
            elif when is not None:
                resolved = await lifecycle.schedule(mailing_id, when, args.tz)
                if resolved.warning:
                    warn(resolved.warning)
    except BaseException:
        # Whatever stopped it (a refusal, a full disk, the rejects file, Ctrl-C), `new` leaves nothing.
        if mailing_id is not None:
            await discard_quietly(store, lifecycle, mailing_id)
        raise
    print(mailing_id)
    return 0


async def discard_new_mailing(store: Store, lifecycle: Lifecycle, mailing_id: int) -> None:
    """Take back a mailing this command created (it may already be scheduled or queued)."""
    state = (await store.mailing(mailing_id)).state
    if state is MailingState.SCHEDULED:
        await lifecycle.unschedule(mailing_id)
    elif state in (MailingState.QUEUED, MailingState.SENDING):
        await lifecycle.stop(mailing_id)
    await lifecycle.delete(mailing_id)


async def cmd_import(args: argparse.Namespace, store: Store) -> int:
    protected = protected_files(args.settings, store, [args.csv])
    target = checked_output(args.rejects, flag="--rejects", force=args.force, protected=protected)
    summary = None
    try:
        with optional_output(target, flag="--rejects", force=args.force, protected=protected) as handle:
            rejects = RejectLog(args.csv, handle)
            try:
                summary = await import_recipients(
                    store, args.id, args.csv, rejects, allow_special_domains=args.settings.allow_special_domains
                )
            finally:
                rejects.close()
    except UserError as exc:
        if summary is not None:  # the import committed; only putting the rejects file in place failed
            raise UserError(f"{exc} (the {summary.imported:,} recipients were imported)") from None
        raise
    for line in summary.duplicates[:50]:
        print(f"{rejects.source}:{line}: duplicate address, already in the mailing", file=sys.stderr)
    print(f"imported {summary.imported} recipients into mailing {args.id}", file=sys.stderr)
    return 0


async def sender_alive(store: Store) -> bool:
    """A sender runs and has reported within the last few seconds."""
    try:
        heartbeat = float(await store.meta("sender_heartbeat") or 0)
    except ValueError:
        return False
    state = await store.meta("sender_state")
    return state not in (None, "stopped") and datetime.now(timezone.utc).timestamp() - heartbeat <= 5


async def sender_rate(store: Store) -> float:
    """The live sending rate if a sender has reported within the last few seconds."""
    if not await sender_alive(store):
        return 0.0
    return float(await store.meta("sender_rate") or 0)


def mailing_json(m: Mailing, eta: datetime | None, rate: float) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": m.id,
        "name": m.name,
        "subject": m.subject,
        "state": m.state.value,
        "total": m.total,
        "sent": m.sent,
        "failed": m.failed,
        "deferred": m.deferred,
        "in_doubt": m.in_doubt,
        "remaining": m.remaining,
        "rate": round(rate, 3),
        "eta": iso(eta),
        "send_at_local": m.schedule.local.strftime("%Y-%m-%d %H:%M") if m.schedule else None,
        "tz": m.schedule.tz if m.schedule else None,
        "send_at_utc": iso(m.schedule.utc) if m.schedule else None,
        "missed": m.missed,
        "created_at": iso(m.created_at),
        "started_at": iso(m.started_at),
        "finished_at": iso(m.finished_at),
        "last_error": m.last_error,
    }
    if m.section is Section.CURRENT:
        data["position"] = m.position
    return data


async def status_document(store: Store) -> dict[str, list[dict[str, Any]]]:
    sections = await store.sections()
    rate = await sender_rate(store)
    current = sections[Section.CURRENT]
    estimates = queue_estimates(current, rate) if rate > 0 else {}
    doc: dict[str, list[dict[str, Any]]] = {}
    for section, mailings in sections.items():
        doc[section.value] = [
            mailing_json(m, estimates.get(m.id), rate if m.state.value == "sending" else 0.0) for m in mailings
        ]
    # Current mailings say whether the sender is held back for them: "waiting" (no relay can take
    # a message: paused after a refused login, or resting) and "throttled" (a relay asked us to
    # slow down); each null or {"reason", "since", "next_try", ...} (see relays.held_back).
    waiting = parse_waiting(await store.meta("sender_waiting") if await sender_alive(store) else None)
    for item in doc.get(Section.CURRENT.value, []):
        item.update(held_back(waiting, item["id"], item["state"] == "sending"))
    return doc


async def cmd_status(args: argparse.Namespace, store: Store) -> int:
    doc = await status_document(store)
    if args.json:
        # One compact document: the C encoder keeps 10,000 mailings well under a second.
        sys.stdout.write(json.dumps(doc) + "\n")
        return 0
    for section, items in doc.items():
        print(f"{section.capitalize()} ({len(items)})")
        # Names and errors come from people and SMTP servers: shown with control characters
        # escaped (the JSON above is escaped by json.dumps, which writes ASCII only).
        for m in ({key: safe(value) if isinstance(value, str) else value for key, value in m.items()} for m in items):
            if section == "current":
                eta = m["eta"] or "unknown"
                print(f"  {m['position']:>3}. #{m['id']} {m['name']}  {m['sent']}/{m['total']} sent, "
                      f"{m['failed']} failed, {m['deferred']} deferred  {m['state']}  eta {eta}")
            elif section == "scheduled":
                missed = "  MISSED" if m["missed"] else ""
                print(f"       #{m['id']} {m['name']}  {m['send_at_local']} {m['tz']} ({m['send_at_utc']}){missed}")
            else:
                print(f"       #{m['id']} {m['name']}  {m['state']}  {m['sent']}/{m['total']} sent  {m['finished_at'] or ''}")
            if m["last_error"]:
                print(f"       ! {m['last_error']}")
            for key in ("waiting", "throttled"):
                held = m.get(key)
                if held:
                    print(f"       {key}: {held['reason']} (since {held['since']}, next try {held['next_try'] or 'unknown'})")
    return 0


async def cmd_resume(args: argparse.Namespace, store: Store) -> int:
    names = [r.name for r in relays_from_settings(args.settings)]
    await request_resume(store, args.relay, names)
    print(f"asked the sender to try {args.relay or 'every paused relay'} again", file=sys.stderr)
    if not await sender_alive(store):
        print("no sender is running, so nothing is paused (a new `mailtower run` starts with every relay unpaused)", file=sys.stderr)
    return 0


async def cmd_schedule(args: argparse.Namespace, store: Store) -> int:
    when = parse_wall_time(args.at)
    lifecycle = Lifecycle(store)
    if args.local_time:
        results = await split_by_zone(store, lifecycle, args.id, when, args.tz)
        for mailing_id, resolved in results:
            if resolved.warning:
                warn(f"mailing {mailing_id}: {resolved.warning}")
            print(f"{mailing_id}\t{resolved.tz}\t{iso(resolved.utc)}")
        return 0
    if not args.tz:
        raise UserError("schedule needs --tz ZONE (or --local-time to use each recipient's zone)")
    resolved = await lifecycle.schedule(args.id, when, args.tz)
    if resolved.warning:
        warn(resolved.warning)
    return 0


async def cmd_simple(args: argparse.Namespace, store: Store) -> int:
    lifecycle = Lifecycle(store)
    action = {
        "send-now": lifecycle.send_now,
        "unschedule": lifecycle.unschedule,
        "stop": lifecycle.stop,
        "restart": lifecycle.restart,
        "delete": lifecycle.delete,
    }[args.command]
    await action(args.id)
    return 0


async def cmd_move(args: argparse.Namespace, store: Store) -> int:
    position = await Lifecycle(store).move(args.id, Direction(args.direction))
    print(position)
    return 0


async def cmd_remaining(args: argparse.Namespace, store: Store) -> int:
    await store.mailing(args.id)
    if args.output is None or is_stdin(args.output):
        await write_remaining(store, args.id, sys.stdout, as_csv=args.csv)
        return 0
    protected = protected_files(args.settings, store, [])
    target = check_output_path(args.output, what="--output", force=args.force, protected=protected)
    with atomic_output(target, what="--output", force=args.force, protected=protected) as handle:
        written = await write_remaining(store, args.id, handle, as_csv=args.csv)
    print(f"{written:,} remaining recipients written to {target}", file=sys.stderr)
    return 0


# What `recipients --state` accepts, and the state label (exports.state_label) each one means.
STATE_CHOICES: dict[str, str] = {
    "pending": "pending",
    "deferred": "deferred",
    "in-doubt": "in doubt",
    "sending": "sending",
    "failed": "failed",
    "sent": "sent",
}


def parse_states(text: str | None) -> set[str]:
    """The state labels named by `--state a,b`; empty for all."""
    if text is None:
        return set()
    labels = set()
    for name in (part.strip().lower().replace(" ", "-") for part in text.split(",")):
        if name not in STATE_CHOICES:
            raise UserError(f"--state: unknown state '{safe(name)}'; choose from {', '.join(STATE_CHOICES)}")
        labels.add(STATE_CHOICES[name])
    return labels


async def recipient_pages(store: Store, mailing_id: int, labels: set[str]) -> AsyncIterator[list[Recipient]]:
    """The ledger in keyset pages: a million recipients cost a page of memory."""
    after_id = 0
    while True:  # bounded: every page moves after_id past the rows already returned
        page = await store.recipients_page(mailing_id, labels, after_id=after_id, limit=PAGE_SIZE)
        if not page:
            return
        yield page
        after_id = page[-1].id


def recipient_json(r: Recipient) -> str:
    # ensure_ascii (the default): control characters and direction overrides arrive escaped.
    return json.dumps(
        {
            "email": r.email,
            "name": r.name,
            "state": state_label(r),
            "attempts": r.attempts,
            "last_code": r.last_code,
            "last_error": r.last_error,
            "next_attempt_at": iso(r.next_attempt_at),
        }
    )


async def cmd_recipients(args: argparse.Namespace, store: Store) -> int:
    """Tab-separated lines by default (email, state, attempts, last code, last reply), made safe
    for the terminal; --csv the exact values (made safe too when stdout is a terminal); --json
    JSON lines, which stream as the pages do."""
    labels = parse_states(args.state)
    await store.mailing(args.id)  # NotFound before any output
    out = sys.stdout
    writer = csv.writer(out) if args.csv else None
    if writer is not None:
        writer.writerow(HEADER)
    shown = safe if out.isatty() else str
    async for page in recipient_pages(store, args.id, labels):
        for r in page:
            code = "" if r.last_code is None else str(r.last_code)
            if writer is not None:
                cells = (r.email, r.name, state_label(r), r.attempts, code, r.last_error or "")
                writer.writerow([neutralise_formula(shown(str(v))) for v in cells])
            elif args.json:
                out.write(recipient_json(r) + "\n")
            else:
                out.write(f"{safe(r.email)}\t{state_label(r)}\t{r.attempts}\t{code}\t{safe(r.last_error or '')}\n")
    return 0


async def write_remaining(store: Store, mailing_id: int, handle: TextIO, *, as_csv: bool) -> int:
    """The remaining recipients as CSV or as the tab-separated listing; rows written."""
    if as_csv:
        return await write_remaining_csv(store, mailing_id, handle)
    written = 0
    async for page in remaining_pages(store, mailing_id):
        for r in page:
            handle.write(f"{neutralise_formula(safe(r.email))}\t{state_label(r)}\t{_one_line(r.last_error or '')}\n")
        written += len(page)
    return written


def _one_line(text: str) -> str:
    """A remote server's words on one line of the tab-separated listing, safe in a spreadsheet."""
    return neutralise_formula(safe(text))


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    for warning in security_warnings(settings):
        warn(warning)

    async def main() -> int:
        sender = Sender(settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, sender.request_stop)
        try:
            await sender.run(until_idle=args.until_idle)
        except LeaseHeld as exc:
            return fail(str(exc))
        except SenderFailed as exc:
            cause = exc.__cause__
            if cause is not None and storage_error(settings.db, cause) is None:
                raise cause from None  # a bug, not the disk: main() logs its traceback (exit 70)
            return fail(str(exc))  # the ledger could not be written (full or read-only disk): exit 2
        return 0

    return run_async(main())


def run_async(coro: Awaitable[int]) -> int:
    return loops.run(coro)  # type: ignore[arg-type]


async def cmd_limits(args: argparse.Namespace, store: Store) -> int:
    changes = {
        name: value
        for name, value in {
            "rate": args.limit_rate,
            "rate_per_hour": args.rate_per_hour,
            "connections": args.limit_connections,
            "messages_per_connection": args.messages_per_connection,
        }.items()
        if value is not None
    }
    await set_limits(store, changes)
    limits = await read_limits(store, args.settings)
    if args.json:
        doc = {name: getattr(limits, name) for name in LIMITS}
        doc["changed_at"] = {name: iso(when) for name, when in limits.changed_at.items()}
        print(json.dumps(doc, indent=1))
    else:
        print("\n".join(limits.describe()))
    return 0


STORE_COMMANDS: dict[str, Callable[[argparse.Namespace, Store], Awaitable[int]]] = {
    "new": cmd_new,
    "import": cmd_import,
    "status": cmd_status,
    "schedule": cmd_schedule,
    "send-now": cmd_simple,
    "unschedule": cmd_simple,
    "stop": cmd_simple,
    "restart": cmd_simple,
    "delete": cmd_simple,
    "move": cmd_move,
    "remaining": cmd_remaining,
    "recipients": cmd_recipients,
    "limits": cmd_limits,
    "resume": cmd_resume,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Every way out is an exit status and at most one line on stderr: 2 for what a person can
    fix (bad input, a refused action, a full or read-only disk), EXIT_INTERNAL_ERROR for a bug,
    whose traceback goes to a log file the line names."""
    argv = list(sys.argv[1:] if argv is None else argv)
    settings: Settings | None = None
    install_safe_logging()  # log lines carry server replies and names: made safe like everything shown
    try:
        refuse_undecodable(argv, os.environ)
        args = build_parser().parse_args(argv)
        if args.command == "demo":
            from .demo import run_demo

            return run_demo()
        settings = settings_from(args)
        prepare_db_location(args, settings)
        return dispatch(args, settings)
    except UserError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - the one place that turns any error into one line
        fault = storage_error(settings.db if settings else Path("?"), exc)
        if fault is not None:
            return fail(str(fault))
        return report_unexpected(exc, argv)


def dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command is None:
        from .app import run_dashboard

        return run_dashboard(settings)
    if args.command == "run":
        return cmd_run(args, settings)
    args.settings = settings
    command = STORE_COMMANDS[args.command]
    return run_async(with_store(settings, lambda store: command(args, store)))


def fail(message: str) -> int:
    # Messages quote file names and values a person typed: one safe line whatever they hold.
    print(f"mailtower: {safe(message)}", file=sys.stderr)
    return EXIT_USER_ERROR


def _shown(text: str) -> str:
    """`text` as a terminal can show it: undecodable bytes as \\xNN."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _has_undecodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def refuse_undecodable(argv: Sequence[str], environ: Mapping[str, str]) -> None:
    """Arguments and MAILTOWER_* variables must be UTF-8: a name or path that is not could be
    neither stored, printed nor matched again, so it is refused before anything happens."""
    for index, arg in enumerate(argv):
        if not _has_undecodable(arg):
            continue
        if arg.startswith("--") and "=" in arg:
            where, arg = arg.split("=", 1)
        elif index > 0 and argv[index - 1].startswith("-") and not _has_undecodable(argv[index - 1]):
            where = argv[index - 1]
        else:
            where = f"argument {index + 1}"
        raise UserError(f"{where}: '{_shown(arg)}' is not valid UTF-8")
    for name, value in environ.items():
        if name.startswith("MAILTOWER_") and _has_undecodable(value):
            raise UserError(f"{name}: '{_shown(value)}' is not valid UTF-8")


def prepare_db_location(args: argparse.Namespace, settings: Settings) -> None:
    """Only the default data directory is created; a database named explicitly (--db,
    MAILTOWER_DB, the config file) must be in a directory that exists: a typo in a path
    must not quietly start a new, empty database somewhere else."""
    directory = settings.db.parent
    if settings.db == default_db_path():
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise UserError(f"cannot create the data directory {directory}: {exc.strerror or exc}") from None
        return
    if directory.is_dir():
        return
    if args.db is not None:
        source = "--db"
    elif os.environ.get("MAILTOWER_DB"):
        source = "MAILTOWER_DB"
    else:
        source = f"{settings.config_path}: db"
    what = "is not a directory" if directory.exists() else "does not exist"
    raise UserError(f"{source}: {settings.db}: the directory {directory} {what} (mailtower does not create it)")


def crash_log_candidates() -> list[Path]:
    return [Path(platformdirs.user_log_dir("mailtower")), Path(tempfile.gettempdir())]


def write_crash_log(exc: BaseException, argv: Sequence[str]) -> Path | None:
    """Append the traceback to the first log file that can be written; None if none can."""
    record = (
        f"==== {datetime.now(timezone.utc).isoformat(timespec='seconds')} mailtower {package_version()} "
        f"pid {os.getpid()}\nargv: {[_shown(a) for a in argv]!r}\n"
        + "".join(traceback.format_exception(exc))
    )
    for directory in crash_log_candidates():
        path = directory / "mailtower-errors.log"
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace") as handle:
                handle.write(record)
        except OSError:
            continue
        return path
    return None


def report_unexpected(exc: BaseException, argv: Sequence[str]) -> int:
    path = write_crash_log(exc, argv)
    summary = _shown(f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__)
    if path is None:
        traceback.print_exception(exc, file=sys.stderr)
        print(f"mailtower: internal error: {summary} (no log file could be written)", file=sys.stderr)
    else:
        print(f"mailtower: internal error: {summary}; the details are in {path}", file=sys.stderr)
    return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
