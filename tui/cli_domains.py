"""`mailtower domains [ID] [--json]` and `mailtower limits --domain NAME ...`: pacing by destination.

Registered in tui/cli.py with `add_commands` and `HANDLERS`; `add_limit_options` adds the
per-group options to `limits`, whose handler calls `domain_limits` when --domain is given.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mailtower.core.display import safe
from mailtower.core.domains import GroupReport, group_reports
from mailtower.core.domain import Section
from mailtower.core.errors import UserError
from mailtower.core.limits import group_limits, group_names, read_limits, reset_domain_limits, set_domain_limits
from mailtower.core.sender_status import read_status
from mailtower.core.store import Store

ID_HELP = "the mailing's id (default: the one being sent now, else the first current one)"


def add_commands(sub: Any, add_command: Callable[..., argparse.ArgumentParser]) -> list[argparse.ArgumentParser]:
    """The `domains` subcommand; returns its parser (the caller adds the global options)."""
    dom = add_command(
        sub, "domains", "per domain group: sent, deferred, failed, in flight, rate, state, last reply",
        "Domain groups are [domains.NAME] tables in the config file (every other domain is in the\n"
        "group \"default\"). Counts come from the ledger; in flight, rate, state (ok, throttled,\n"
        "paused) and the last reply come from the running sender while it sends this mailing.",
        "  mailtower domains\n  mailtower domains 4 --json\n",
    )
    dom.add_argument("mailing_id", nargs="?", type=_mailing_id, metavar="ID", help=ID_HELP)
    dom.add_argument("--json", action="store_true", help="one JSON document on standard output")
    return [dom]


def _mailing_id(text: str) -> int:
    """The same check as every other command's ID (1 to SQLite's largest integer)."""
    from mailtower.tui.cli import mailing_id  # here, not at import: tui/cli.py imports this module

    return mailing_id(text)


def add_limit_options(lim: argparse.ArgumentParser) -> None:
    lim.add_argument("--domain", metavar="NAME",
                     help="change this domain group's limits instead (--rate, --connections, --per-hour)")
    lim.add_argument("--per-hour", metavar="N", help="with --domain: the group's hourly budget, 0 = unlimited")
    lim.add_argument("--reset", action="store_true",
                     help="with --domain: forget the group's live limits (its [domains.NAME] table applies again; "
                          "also clears those of a group no longer configured)")


async def domain_limits(args: argparse.Namespace, store: Store, say: Callable[[argparse.Namespace, str], None]) -> int:
    """`limits --domain NAME [--rate X] [--connections N] [--per-hour N]`."""
    if args.messages_per_connection is not None:
        raise UserError("--messages-per-connection: not a limit of a domain group (it belongs to the connections)")
    if args.reset:
        return await _reset(args, store, say)
    if args.per_hour is not None and args.rate_per_hour is not None:
        raise UserError("--rate-per-hour: with --domain it is the group's --per-hour; give one of them")
    per_hour_flag = "--per-hour" if args.rate_per_hour is None else "--rate-per-hour"
    given = {"rate": ("--rate", args.limit_rate), "connections": ("--connections", args.limit_connections),
             "per_hour": (per_hour_flag, args.per_hour if args.per_hour is not None else args.rate_per_hour)}
    changes = {name: raw for name, (_, raw) in given.items() if raw is not None}
    await set_domain_limits(store, args.settings, args.domain, changes,
                            flags={name: flag for name, (flag, _) in given.items()})
    limits = await read_limits(store, args.settings)
    values = group_limits(args.settings, limits, args.domain)
    if changes:
        said = ", ".join(f"{name} {_shown(name, values[name])}" for name in changes)
        say(args, f"domain group {args.domain}: {said} (a running sender applies it within a second)")
    if args.json:
        print(json.dumps({"group": args.domain, **values}, indent=1))
    else:
        print("\n".join(f"{args.domain} {name}: {_shown(name, value)}" for name, value in values.items()))
    return 0


async def _reset(args: argparse.Namespace, store: Store, say: Callable[[argparse.Namespace, str], None]) -> int:
    given = [flag for flag, value in (("--rate", args.limit_rate), ("--connections", args.limit_connections),
                                      ("--per-hour", args.per_hour), ("--rate-per-hour", args.rate_per_hour))
             if value is not None]
    if given:
        raise UserError(f"{given[0]}: --reset forgets the group's live limits; give it alone")
    forgotten = await reset_domain_limits(store, args.settings, args.domain)
    said = f"{forgotten} stored limit{'s' if forgotten != 1 else ''}" if forgotten else "no stored limits"
    say(args, f"domain group {safe(args.domain)}: {said} forgotten (a running sender applies it within a second)")
    if args.domain not in group_names(args.settings):
        return 0  # a group no longer configured: nothing else to show
    values = group_limits(args.settings, await read_limits(store, args.settings), args.domain)
    if args.json:
        print(json.dumps({"group": args.domain, **values}, indent=1))
    else:
        print("\n".join(f"{args.domain} {name}: {_shown(name, value)}" for name, value in values.items()))
    return 0


def limits_json(args: argparse.Namespace, limits: Any) -> dict[str, Any]:
    """Every group's limits now, for `limits --json`."""
    return {name: group_limits(args.settings, limits, name) for name in group_names(args.settings)}


def _shown(name: str, value: float) -> str:
    if value == 0:
        return "no limit of its own"
    return f"{value:g}"


async def cmd_domains(args: argparse.Namespace, store: Store) -> int:
    status = await read_status(store)
    live = status.live_domains(time.time()) if status is not None else {}
    mailing_id = args.mailing_id
    if mailing_id is None:
        head = live.get("mailing")
        if isinstance(head, int) and not isinstance(head, bool):
            mailing_id = head
        else:
            current = await store.mailings(Section.CURRENT)
            if not current:
                raise UserError("no mailing is current; give the mailing's ID")
            mailing_id = current[0].id
    await store.mailing(mailing_id)  # NotFound says "no mailing with id N"
    limits = await read_limits(store, args.settings)
    reports = group_reports(args.settings.domains, await store.domain_state_counts(mailing_id), live, mailing_id,
                            limits.domains)
    if args.json:
        print(json.dumps({"mailing": mailing_id, "groups": [r.as_json() for r in reports]}, indent=1))
    else:
        print(domains_table(reports))
    return 0


COLUMNS = ("GROUP", "SENT", "DEFERRED", "FAILED", "IN FLIGHT", "RATE", "STATE", "LAST REPLY")


def domains_table(reports: list[GroupReport]) -> str:
    """Tab-separated, one line per group, with a header row."""
    lines = ["\t".join(COLUMNS)]
    for r in reports:
        state = r.state if not r.reason else f"{r.state} ({r.reason})"
        lines.append("\t".join([
            r.group, f"{r.sent}", f"{r.deferred}", f"{r.failed}", f"{r.in_flight}",
            f"{r.rate:.1f}/s", safe(state), safe(r.last_reply),
        ]))
    return "\n".join(lines)


HANDLERS: dict[str, Callable[[argparse.Namespace, Store], Awaitable[int]]] = {"domains": cmd_domains}

__all__ = ["HANDLERS", "add_commands", "add_limit_options", "domain_limits", "domains_table", "limits_json"]
