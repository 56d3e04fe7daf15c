"""The `mailtower` command line. Every dashboard action is also a subcommand here."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn, TextIO

from mailtower.core.config import Settings, load_settings, security_warnings
from mailtower.core.domain import Mailing, RejectedRow, Section
from mailtower.core.errors import UserError
from mailtower.core.exports import remaining_pages, state_label, write_remaining_csv
from mailtower.core.lifecycle import Direction, Lifecycle
from mailtower.core.limits import LIMITS, read_limits, set_limits
from mailtower.core.operations import create_mailing, import_recipients, read_draft, request_resume, split_by_zone
from mailtower.core.progress import queue_estimates
from mailtower.core.relays import held_back, parse_waiting, relays_from_settings
from mailtower.core.sender import LeaseHeld, Sender
from mailtower.core.store import Store, iso
from mailtower.core.timezones import load_zone, parse_wall_time, tzdata_version

from . import loops

EXIT_USER_ERROR = 2


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
    p.add_argument("--smtp-host")
    p.add_argument("--smtp-port", type=int)
    p.add_argument("--smtp-tls", choices=["none", "starttls", "tls"])
    p.add_argument("--connections", type=int, help="parallel SMTP connections")
    p.add_argument("--rate", type=float, help="messages per second, 0 = unlimited")
    sub = p.add_subparsers(dest="command", parser_class=OneLineParser)

    new = sub.add_parser("new", help="create a mailing from a recipient CSV; prints its id")
    new.add_argument("--name", required=True)
    new.add_argument("--subject", required=True)
    new.add_argument("--from", dest="from_addr", required=True)
    new.add_argument("--text", type=Path)
    new.add_argument("--html", type=Path)
    new.add_argument("--recipients", type=Path, required=True)
    new.add_argument("--rejects", type=Path, help="also write rejected rows to this CSV file")
    when = new.add_mutually_exclusive_group()
    when.add_argument("--now", action="store_true", help="queue it for sending now")
    when.add_argument("--at", help='"YYYY-MM-DD HH:MM" wall time in --tz')
    new.add_argument("--tz", help="IANA time zone of --at, e.g. Europe/Berlin")

    imp = sub.add_parser("import", help="add recipients to a draft, scheduled or stopped mailing")
    imp.add_argument("id", type=int)
    imp.add_argument("csv", type=Path)
    imp.add_argument("--rejects", type=Path)

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
        cmd.add_argument("id", type=int)

    sch = sub.add_parser("schedule", help="schedule a mailing at a wall time in a time zone")
    sch.add_argument("id", type=int)
    sch.add_argument("--at", required=True, help='"YYYY-MM-DD HH:MM"')
    sch.add_argument("--tz", help="IANA time zone (required unless --local-time and every recipient has one)")
    sch.add_argument("--local-time", action="store_true", help="deliver at that wall time in each recipient's zone")

    mv = sub.add_parser("move", help="reorder the queue")
    mv.add_argument("id", type=int)
    mv.add_argument("direction", choices=[d.value for d in Direction])

    rem = sub.add_parser("remaining", help="recipients who have not received a mailing")
    rem.add_argument("id", type=int)
    rem.add_argument("--csv", action="store_true", help="CSV on stdout, address first")

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
    return load_settings(flags, config_path=args.config)


class RejectLog:
    """Reports rejected rows on stderr (and into a CSV file when asked)."""

    def __init__(self, source: Path, path: Path | None, limit: int = 50) -> None:
        self.source = source
        self.count = 0
        self.limit = limit
        self._file: TextIO | None = None
        self._writer: Any = None
        if path is not None:
            self._file = path.open("w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._file)
            self._writer.writerow(["line", "reason"])

    def __call__(self, row: RejectedRow) -> None:
        self.count += 1
        if self.count <= self.limit:
            print(f"{self.source}:{row.line}: {row.reason}", file=sys.stderr)
        if self._writer is not None:
            self._writer.writerow([row.line, row.reason])

    def close(self) -> None:
        if self.count > self.limit:
            print(f"{self.source}: {self.count - self.limit} more rows rejected", file=sys.stderr)
        if self._file is not None:
            self._file.close()


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


async def cmd_new(args: argparse.Namespace, store: Store) -> int:
    draft = read_draft(args.name, args.subject, args.from_addr, args.text, args.html)
    when = None
    if args.at:
        if not args.tz:
            raise UserError("--at needs --tz ZONE (an IANA name such as Europe/Berlin)")
        load_zone(args.tz)
        when = parse_wall_time(args.at)
    elif args.tz:
        raise UserError("--tz goes with --at")
    rejects = RejectLog(args.recipients, args.rejects)
    try:
        mailing_id, summary = await create_mailing(store, draft, args.recipients, rejects)
    finally:
        rejects.close()
    for line in summary.duplicates[:50]:
        print(f"{args.recipients}:{line}: duplicate address, already in the mailing", file=sys.stderr)
    lifecycle = Lifecycle(store)
    try:
        if args.now:
            await lifecycle.send_now(mailing_id)
        elif when is not None:
            resolved = await lifecycle.schedule(mailing_id, when, args.tz)
            if resolved.warning:
                warn(resolved.warning)
    except UserError:
        await lifecycle.delete(mailing_id)
        raise
    print(mailing_id)
    return 0


async def cmd_import(args: argparse.Namespace, store: Store) -> int:
    rejects = RejectLog(args.csv, args.rejects)
    try:
        summary = await import_recipients(store, args.id, args.csv, rejects)
    finally:
        rejects.close()
    for line in summary.duplicates[:50]:
        print(f"{args.csv}:{line}: duplicate address, already in the mailing", file=sys.stderr)
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
        for m in items:
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
    if args.csv:
        await write_remaining_csv(store, args.id, sys.stdout)
        return 0
    async for page in remaining_pages(store, args.id):
        for r in page:
            sys.stdout.write(f"{r.email}\t{state_label(r)}\t{r.last_error or ''}\n")
    return 0


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
            print(f"mailtower: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
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
    "limits": cmd_limits,
    "resume": cmd_resume,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run_demo

            return run_demo()
        settings = settings_from(args)
        if args.command is None:
            from .app import run_dashboard

            return run_dashboard(settings)
        if args.command == "run":
            return cmd_run(args, settings)
        args.settings = settings
        command = STORE_COMMANDS[args.command]
        return run_async(with_store(settings, lambda store: command(args, store)))
    except UserError as exc:
        print(f"mailtower: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
