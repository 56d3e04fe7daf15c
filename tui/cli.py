"""The `mailtower` command line. Every dashboard action is also a subcommand here."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import csv
import gc
import json
import logging
import os
import re
import signal
import stat
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn, TextIO

import platformdirs

from mailtower.core.config import BOUNDS, Settings, default_db_path, files_read, load_settings, security_warnings
from mailtower.core.dkim_signing import startup_check as dkim_startup_check
from mailtower.core.display import SafeFormatter, install_safe_logging, safe
from mailtower.core.domain import Mailing, MailingState, Recipient, RejectedRow, Section
from mailtower.core.db_errors import database_errors
from mailtower.core.db_target import PgTarget, redact_url
from mailtower.core.errors import NoValidRecipient, NotFound, UserError
from mailtower.core.exports import HEADER, PAGE_SIZE, remaining_pages, state_label, write_remaining_csv
from mailtower.core.files import (
    MIB,
    atomic_output,
    check_inputs,
    check_output_path,
    database_companions,
    describe_size,
    is_stdin,
    same_file,
)
from mailtower.core.actions_registry import ACTIONS, MOVES, SIMPLE_COMMANDS, ActionEntry, carry_out, command_entry
from mailtower.core.lifecycle import Action, Direction, Lifecycle
from mailtower.core.limits import LIMITS, parse_limit, read_limits, set_limits
from mailtower.tui import cli_domains
from mailtower.core.operations import create_mailing, import_recipients, read_draft, request_resume
from mailtower.core.recipients_csv import ReadProgress, neutralise_formula
from mailtower.core.progress import queue_estimates
from mailtower.core.relays import held_back, relays_from_settings
from mailtower.core.sender import LeaseHeld, Sender, SenderFailed
from mailtower.core.waves import Passed, cancel_schedule, send_group_now
from mailtower.core.sender_status import SenderStatus, read_status
from mailtower.core.fleet import GONE, FleetLost, nobody_sending, senders_document
from mailtower.core.store import Store, iso, open_store, remove_if_unused, storage_error
from mailtower.core.timezones import (
    Shift, format_offset, load_zone, parse_wall_time, resolve, reversed_sign_note, tzdata_version, wall_clock, wall_minute,
)
from mailtower.core.unsubscribe import set_targets

from . import cli_migrate, cli_suppress, loops
from .cli_breaker import HANDLERS as BREAKER_HANDLERS, add_commands as add_breaker_commands
from .cli_breaker import add_guard_options, apply_guard_options, canary_json, check_guard_target, guard_options
from .cli_breaker import join_signed_values, restart_line
from .output import LogFileHandler, StdoutFailed, fill_closed_streams, guard_stdout

log = logging.getLogger("mailtower.tui.cli")  # not __name__: that is "__main__" under python -m

EXIT_USER_ERROR = 2
# An error mailtower did not expect (a bug): one line naming the log file with the traceback.
EXIT_INTERNAL_ERROR = 70  # EX_SOFTWARE in sysexits.h
SQLITE_MAX_ID = 2**63 - 1


def mailing_id(text: str) -> int:
    """An argparse type: a mailing id is a whole number SQLite can hold (1 to 2**63-1), written
    as `new` printed it or as `status` shows it (#12)."""
    # Only ASCII digits: int() would also take "1_0" and other scripts' digits.
    digits = text.strip().removeprefix("#")
    if re.fullmatch(r"[+-]?[0-9]+", digits) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a mailing id (a whole number)")
    value = int(digits)
    if not 1 <= value <= SQLITE_MAX_ID:
        raise argparse.ArgumentTypeError(f"{text!r} is not a mailing id (ids run from 1 to {SQLITE_MAX_ID})")
    return value


def file_path(text: str) -> Path:
    """An argparse type for a file name: Path("") is "." (the current directory), so an empty
    name was refused as "'.' is a directory" instead of for what it is."""
    if text == "":
        raise argparse.ArgumentTypeError("an empty path is not a file name")
    return Path(text)


def package_version() -> str:
    # Imported here: importlib.metadata and the lookup cost ~30 ms, at every start if done
    # while the parser is built (issue 12: a send's whole time counts from the start).
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mailtower")
    except PackageNotFoundError:
        return "0+unknown"


class VersionAction(argparse.Action):
    """--version: argparse's own action needs the text when the parser is built; this one looks
    the version up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:  # noqa: A002 - argparse's name
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> NoReturn:
        sys.stdout.write(f"mailtower {package_version()} (tzdata {tzdata_version()})\n")
        parser.exit()


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one clear line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        # "--canary -0%": the value is joined to its option, or argparse reads it as an option.
        args = join_signed_values(list(sys.argv[1:] if args is None else args))
        return super().parse_known_args(args, namespace)


# ---- the parser ------------------------------------------------------------------------------

PROG = "mailtower"

OVERVIEW = """\
Without a command, mailtower opens the dashboard (and sends while it is open).

Output: what a script reads (an id, a position, a table, JSON) goes to standard output;
one line saying what a command changed goes to standard error, so scripts are unaffected
(-q/--quiet silences it, and the progress of long imports). Errors are one line on standard
error: exit status 2 for what a person can fix (bad input, a refused action, a full disk),
70 for a bug (the line names the log file with the details).

Global options (--db, --config, --smtp-*, --connections, --rate, --quiet) may be given before
or after the command: `mailtower --db x.db status` and `mailtower status --db x.db` are the
same. Settings come from these flags, then MAILTOWER_* environment variables, then the TOML
config file, then defaults.

examples:
  mailtower                                  open the dashboard
  mailtower demo                             try it on a throw-away database and a local SMTP sink
  mailtower new --name "Spring sale" --subject "Hello {{ name }}" --from news@example.org \\
      --text body.txt --recipients people.csv --now
  mailtower status                           the three sections
  mailtower run --until-idle                 send what is due, then return
  mailtower COMMAND --help                   a command's options and examples
"""

NEW_HELP = """\
The name, subject, sender and body (text and/or HTML) come from the options; the new id is
the only thing printed on standard output. Without --now or --at the mailing is a DRAFT: nothing
is sent until you run `mailtower send-now ID` or `mailtower schedule ID ...`.

Recipient CSV: UTF-8 with a header row; an `email` column (required), optional `name` and `tz`
(an IANA zone, used by `schedule --local-time`), and any other column as a merge field
{{ column }} for the subject and bodies. Rejected rows are listed on standard error (the first
50) and, with --rejects, written to a CSV file. On a terminal, a long import shows its progress.

examples:
  mailtower new --name "Spring sale" --subject "Hello {{ name }}" --from news@example.org \\
      --text body.txt --html body.html --recipients people.csv            # a draft
  mailtower new ... --recipients people.csv --now                          # queued at once
  mailtower new ... --recipients people.csv --at "2027-03-28 09:00" --tz Europe/Berlin
  producer | mailtower new ... --recipients - --rejects rejected.csv       # CSV on stdin
"""


def add_global_options(parser: argparse.ArgumentParser, *, in_command: bool, skip: frozenset[str] = frozenset()) -> None:
    """The options every command accepts, before or after its name.

    After a command they default to SUPPRESS: given there they win, not given they leave what
    was given before the command. `skip` leaves out options a command uses for itself
    (`limits --rate` is the live limit)."""
    unset: Any = argparse.SUPPRESS if in_command else None
    group = parser.add_argument_group("global options (before or after the command)")

    def add(*flags: str, **kw: Any) -> None:
        if flags[-1] not in skip:
            group.add_argument(*flags, **{"default": unset, **kw})

    add("--db", metavar="FILE|URL",
        help="database file, or a postgresql://user@host/db URL (default: MAILTOWER_DB, the config file's db, "
             "or mailtower.db in the user data directory)")
    add("--config", type=file_path, metavar="FILE",
        help="TOML config file (default: MAILTOWER_CONFIG or config.toml in the user config directory)")
    # Numbers stay text here: core checks them (bounds, NaN, inf) like every other source does.
    add("--smtp-host", metavar="HOST", help="SMTP relay host name or address (default: 127.0.0.1)")
    add("--smtp-port", metavar="PORT", help="SMTP relay port (default: 25, or as the config file says)")
    add("--smtp-tls", choices=["none", "starttls", "tls"],
        help="encryption to the relay: none, starttls (upgrade after connecting) or tls (from the start)")
    add("--connections", metavar="N",
        help=f"parallel SMTP connections the sender starts with ({BOUNDS['connections'].describe()})")
    add("--rate", metavar="N",
        help=f"messages per second the sender starts with ({BOUNDS['rate'].describe()}); "
             "`limits --rate` changes the live limit instead")
    add("-q", "--quiet", action="store_true", default=argparse.SUPPRESS if in_command else False,
        help="no line saying what changed, no progress, no summary (data, warnings and errors still appear)")


def add_command(sub: Any, name: str, summary: str, details: str, examples: str) -> argparse.ArgumentParser:
    """A subcommand with its one-line summary (in `mailtower --help`), a description and examples."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=f"{summary[0].upper()}{summary[1:]}.\n\n{details}".rstrip(),
        epilog=f"examples:\n{examples}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def dashboard_name(entry: ActionEntry) -> str:
    """The line that names a command's action as the dashboard does (one vocabulary)."""
    return f"The dashboard's Actions menu calls it “{entry.label}”."


ID_HELP = "the mailing's id (as `new` printed it, or as `status` shows it: #ID)"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG,
        description="Send-status dashboard and sending engine for email campaigns.",
        epilog=OVERVIEW,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action=VersionAction,
                   help="print the version of mailtower and of its time-zone data, and exit")
    add_global_options(p, in_command=False)
    sub = p.add_subparsers(dest="command", parser_class=OneLineParser, metavar="COMMAND",
                           help="what to do (default: open the dashboard)")

    new = add_command(sub, "new", "create a mailing from a recipient CSV; prints its id",
                      NEW_HELP.split("\nexamples:\n")[0], NEW_HELP.split("\nexamples:\n")[1])
    new.add_argument("--name", required=True, help="the mailing's name, as the dashboard lists it")
    new.add_argument("--subject", required=True, help="the Subject line; may hold merge fields such as {{ name }}")
    new.add_argument("--from", dest="from_addr", required=True, metavar="ADDRESS",
                     help='the sender: an address or "Display Name <address>"')
    new.add_argument("--text", type=file_path, metavar="FILE", help="plain-text body (UTF-8; - reads standard input)")
    new.add_argument("--html", type=file_path, metavar="FILE", help="HTML body (UTF-8; - reads standard input); "
                     "give --text, --html or both")
    new.add_argument("--recipients", type=file_path, required=True, metavar="CSV",
                     help="recipient CSV file (- reads standard input)")
    new.add_argument("--rejects", type=file_path, metavar="FILE",
                     help="also write rejected rows to this CSV file: line, reason, then the row's own cells "
                          "under the file's column names (written once the import succeeded)")
    new.add_argument("--force", action="store_true", help="replace the --rejects file if it exists")
    when = new.add_mutually_exclusive_group()
    when.add_argument("--now", action="store_true", help="queue it for sending now (without --now or --at: a draft)")
    when.add_argument("--at", metavar='"YYYY-MM-DD HH:MM"', help="schedule it at this wall time in --tz")
    new.add_argument("--tz", metavar="ZONE", help="IANA time zone of --at, e.g. Europe/Berlin")
    cli_suppress.add_target_options(new)
    add_guard_options(new)  # breaker and canary
    add_global_options(new, in_command=True)

    imp = add_command(
        sub, "import", "add recipients to a draft, scheduled or stopped mailing",
        "The file is read like `new --recipients`: all of it is imported or, if it has a structural\n"
        "problem, nothing. Addresses already in the mailing are skipped and listed. On a terminal,\n"
        "a long import shows its progress.",
        "  mailtower import 4 more-people.csv\n"
        "  mailtower import 4 more-people.csv --rejects rejected.csv --force\n"
        "  producer | mailtower import 4 -\n",
    )
    imp.add_argument("id", type=mailing_id, help=ID_HELP)
    imp.add_argument("csv", type=file_path, metavar="CSV", help="recipient CSV file; - reads standard input")
    imp.add_argument("--rejects", type=file_path, metavar="FILE",
                     help="also write rejected rows to this CSV file: line, reason, then the row's own cells "
                          "under the file's column names (written once the import succeeded)")
    imp.add_argument("--force", action="store_true", help="replace the --rejects file if it exists")
    add_global_options(imp, in_command=True)

    st = add_command(
        sub, "status", "the three sections: current, scheduled and inactive mailings",
        "Current mailings in queue order with their progress and estimated finish; scheduled ones\n"
        "with their wall time, zone and UTC instant; inactive ones (drafts, stopped, completed).",
        "  mailtower status\n"
        "  mailtower status --json | jq '.current[0].sent'\n",
    )
    st.add_argument("--json", action="store_true",
                    help='one JSON document {"current": [...], "scheduled": [...], "inactive": [...]} on standard output')
    add_global_options(st, in_command=True)

    # The lifecycle's commands: name, summary and the dashboard's label from core/actions_registry;
    # what only the command line needs to say here.
    details_of = {
        Action.SEND_NOW: ("A stopped mailing is sent to its remaining recipients only. Prints nothing on standard\n"
                          "output; standard error says where it is in the queue.", "  mailtower send-now 4\n"),
        Action.UNSCHEDULE: ("Refused while any mailing is sending (the rule of the Scheduled section's Cancel).",
                            "  mailtower unschedule 4\n"),
        Action.STOP: ("The sender finishes the messages in flight (5 s at most) and sends nothing more of it;\n"
                      "`restart` sends to the recipients who have not received it.", "  mailtower stop 4\n"),
        Action.RESTART: ("It joins the bottom of the queue; recipients who already received it are not sent again.",
                         "  mailtower restart 4\n"),
        Action.DELETE: ("Drafts, stopped and completed mailings only; a current or scheduled one must be stopped or\n"
                        "unscheduled first. Its recipients and their results are deleted with it.",
                        "  mailtower delete 4\n"),
    }
    for action in SIMPLE_COMMANDS:
        entry = ACTIONS[action]
        details, example = details_of[action]
        name, summary, details = str(entry.command), entry.summary, f"{dashboard_name(entry)}\n{details}"
        cmd = add_command(sub, name, summary, details, example)
        cmd.add_argument("id", type=mailing_id, help=ID_HELP)
        if name == "restart":  # breaker: a mailing it stopped is sent again only when confirmed
            cmd.add_argument("--force", action="store_true", help="restart it even though the breaker stopped it")
        add_global_options(cmd, in_command=True)
    add_breaker_commands(sub, add_command)

    sch = add_command(
        sub, "schedule", ACTIONS[Action.SCHEDULE].summary,
        f"{dashboard_name(ACTIONS[Action.SCHEDULE])}\n"
        "A time that does not exist (spring forward) moves forward by the gap; an ambiguous one\n"
        "(fall back) means its first occurrence; either way a warning says so. With --local-time the\n"
        "recipients are grouped into waves: zones (the `tz` column) that reach that wall time at the\n"
        "same instant go into one scheduled mailing; standard output lists each wave: id, offset,\n"
        "UTC instant, zones, recipients. Where the time has already passed in some zones, --passed\n"
        "says what happens to them. A scheduled wave stands for its whole schedule: `schedule`,\n"
        "`unschedule` and `send-now` on it act on every wave of it.",
        '  mailtower schedule 4 --at "2027-03-28 09:00" --tz Europe/Berlin\n'
        '  mailtower schedule 4 --at "2027-03-28 09:00" --local-time --tz UTC   # zone for rows without tz\n'
        '  mailtower schedule 4 --at "2027-03-28 09:00" --local-time --passed next-day\n',
    )
    sch.add_argument("id", type=mailing_id, help=ID_HELP)
    sch.add_argument("--at", required=True, metavar='"YYYY-MM-DD HH:MM"', help="the wall time to send at")
    sch.add_argument("--tz", metavar="ZONE",
                     help="IANA time zone, e.g. Europe/Berlin (required unless --local-time and every recipient has one)")
    sch.add_argument("--local-time", action="store_true", help="deliver at that wall time in each recipient's zone")
    sch.add_argument("--passed", choices=[p.value for p in Passed], metavar="skip|now|next-day",
                     help="with --local-time, for zones where the time has already passed: skip (keep those "
                          "recipients in a draft), now (a wave due at once), next-day (that time the next day there)")
    add_guard_options(sch)  # breaker and canary
    add_global_options(sch, in_command=True)

    mv = add_command(
        sub, "move", ACTIONS[Action.MOVE].summary,
        f"The dashboard's Actions menu has it as {', '.join(label for _, label in MOVES.values())}.\n"
        "Current mailings are sent strictly in queue order; moving one changes which is sent next.",
        "  mailtower move 4 top\n  mailtower move 4 down\n",
    )
    mv.add_argument("id", type=mailing_id, help=ID_HELP)
    mv.add_argument("direction", choices=[d.value for d in Direction],
                    help="up or down one place, or to the top or bottom of the queue")
    add_global_options(mv, in_command=True)

    rem = add_command(
        sub, "remaining", "recipients who have not received a mailing",
        "Pending, deferred and in-doubt recipients: by default tab-separated address, state and the\n"
        "server's last reply; --csv a file `import` and `new --recipients` read back into the same\n"
        "recipients: email, name, state, attempts, last_code, last_error (read back as the export's\n"
        "status, not as merge fields), then tz and each merge field when the recipients have them.",
        "  mailtower remaining 4 | less\n"
        "  mailtower remaining 4 --csv -o left.csv\n",
    )
    rem.add_argument("id", type=mailing_id, help=ID_HELP)
    rem.add_argument("--csv", action="store_true",
                     help="CSV with every column `import` reads back (address first) instead of the tab-separated listing")
    rem.add_argument("-o", "--output", type=file_path, metavar="FILE",
                     help="write to this file instead of standard output (- is standard output)")
    rem.add_argument("--force", action="store_true", help="replace the --output file if it exists")
    add_global_options(rem, in_command=True)

    rcp = add_command(
        sub, "recipients", "a mailing's recipients with their state and the server's last reply",
        "By default tab-separated: address, state, attempts, last reply code, last reply.",
        "  mailtower recipients 4 --state failed,deferred\n"
        "  mailtower recipients 4 --json | jq -r 'select(.state == \"failed\") | .email'\n",
    )
    rcp.add_argument("id", type=mailing_id, help=ID_HELP)
    rcp.add_argument(
        "--state", metavar="STATES", help=f"only these states, comma-separated: {', '.join(STATE_CHOICES)} (default: all)"
    )
    fmt = rcp.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true",
                     help="CSV with a header row: email, name, state, attempts, last_code, last_error")
    fmt.add_argument("--json", action="store_true", help="JSON lines: one object per recipient")
    add_global_options(rcp, in_command=True)

    lim = add_command(
        sub, "limits", "show or change sending limits live (kept across restarts)",
        "Without options it shows the limits. A change is stored in the database and a running\n"
        "sender applies it within a second. Here --rate and --connections are these live limits;\n"
        "the global --rate and --connections (the values a sender starts with when none is stored)\n"
        "go before the command: `mailtower --rate 50 limits`.",
        "  mailtower limits\n"
        "  mailtower limits --rate 20 --rate-per-hour 50000\n"
        "  mailtower limits --rate 0          # unlimited\n",
    )
    lim.add_argument("--rate", dest="limit_rate", metavar="N", help="live limit: messages per second, 0 = unlimited")
    lim.add_argument("--rate-per-hour", metavar="N", help="live limit: messages per hour, 0 = unlimited")
    lim.add_argument("--connections", dest="limit_connections", metavar="N", help="live limit: parallel SMTP connections")
    lim.add_argument("--messages-per-connection", metavar="N", help="live limit: reconnect after this many messages, 0 = never")
    lim.add_argument("--json", action="store_true", help="the limits as one JSON document on standard output")
    cli_domains.add_limit_options(lim)
    add_global_options(lim, in_command=True, skip=frozenset({"--rate", "--connections"}))
    for parser in cli_domains.add_commands(sub, add_command):
        add_global_options(parser, in_command=True)

    res = add_command(
        sub, "resume", "try paused relays again now (after a refused login, say)",
        "A relay that refused our login or session is paused until an operator resumes it, the\n"
        "sender restarts, or a long interval passes. The running sender picks the request up\n"
        "within a second.",
        "  mailtower resume\n  mailtower resume --relay smtp.example.org:587\n",
    )
    res.add_argument("--relay", metavar="NAME", help="only this relay (its name in the config, or HOST:PORT)")
    add_global_options(res, in_command=True)

    run = add_command(
        sub, "run", "the headless sender",
        "Sends the queue in order and promotes due schedules until stopped (Ctrl-C, SIGTERM,\n"
        "SIGHUP: messages in flight get 5 s). At most one sender runs per database. It ends with a\n"
        "summary line on standard error; on a terminal it also reports as it goes (started,\n"
        "sending, finished, waiting, stopped), and --log appends those lines to a file.",
        "  mailtower run\n"
        "  mailtower run --until-idle                   # return when nothing is left\n"
        "  nohup mailtower run --log sender.log &\n",
    )
    run.add_argument("--until-idle", action="store_true", help="return once nothing is current or scheduled")
    run.add_argument("--log", type=file_path, metavar="FILE",
                     help="append the sender's log (start, each mailing sent or finished, waits, stop) to FILE")
    add_global_options(run, in_command=True)

    cli_suppress.add_commands(sub, add_command)
    cli_migrate.add_commands(sub, add_command)

    demo = add_command(
        sub, "demo", "the dashboard on a throw-away database with a local SMTP sink",
        "Sample mailings in every section; nothing leaves the machine and nothing is kept.",
        "  mailtower demo\n",
    )
    add_global_options(demo, in_command=True)
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


# ---- what a person reads on standard error ------------------------------------------------------


def say(args: argparse.Namespace, line: str) -> None:
    """The one line saying what a command did. It goes to standard error so that standard output
    stays what scripts read (an id, a position, a table); made safe, as names and paths come
    from people; nothing with --quiet."""
    if not getattr(args, "quiet", False):
        print(safe(line), file=sys.stderr)


def named(m: Mailing) -> str:
    """`4 "Spring sale"`: how a success line names a mailing."""
    return f'{m.id} "{safe(m.name)}"'


def plural(n: int, word: str) -> str:
    """"1 recipient", "8,433 recipients"."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def duration(seconds: float) -> str:
    """"4.2 s", "3 min 5 s", "2 h 10 min": a time span as a person reads it."""
    if seconds < 10:
        return f"{max(seconds, 0.0):.1f} s"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


class ImportProgress:
    """How far a long `new` or `import` has read its file, on one line of standard error that is
    rewritten in place (at most 1/INTERVAL times a second): rows read, rejected, rate, time left.

    Only on a terminal: redirected to a file or a pipe, standard error gets nothing from this, so
    logs stay clean. The first line appears after INTERVAL, so a quick import shows none."""

    INTERVAL = 0.2  # seconds

    def __init__(self, source: Path, *, enabled: bool, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and _is_terminal(self.stream)
        # The file's name: the whole path would push the numbers off a narrow terminal.
        self.label = safe("standard input" if is_stdin(source) else source.name or str(source))
        self.started = time.monotonic()
        self._last = self.started
        self._shown = False

    def __call__(self, progress: ReadProgress) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < self.INTERVAL:
            return
        self._last = now
        line = self.describe(progress, now - self.started)
        self._write("\r" + line[: self._width()] + "\x1b[K")  # erase what a longer line left
        self._shown = True

    def describe(self, p: ReadProgress, elapsed: float) -> str:
        rate = p.rows / elapsed if elapsed > 0 else 0.0
        line = f"{self.label}: {p.rows:,} rows read, {p.rejected:,} rejected, {rate:,.0f} rows/s"
        if 0 < p.bytes_read <= p.total_bytes:
            left = elapsed * (p.total_bytes - p.bytes_read) / p.bytes_read
            line += f", {100 * p.bytes_read // p.total_bytes}%, about {duration(left)} left"
        return line

    def clear(self) -> None:
        """Take the progress line away (before another line is printed, and at the end)."""
        if self._shown:
            self._shown = False
            self._write("\r\x1b[K")

    def _width(self) -> int:
        # A line longer than the terminal wraps, and \r then rewrites only its last part.
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            columns = 0
        return max(20, columns - 1) if columns > 0 else 79  # 0: the terminal does not say

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False  # the terminal went away: the import itself goes on


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError, AttributeError):
        return False


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

    The file holds `line,reason` and then the rejected row's own cells under the recipient
    file's column names (formula-protected like every CSV mailtower writes, so `import` reads
    the cells back as they were): a list read from standard input can be fixed and imported
    again once the `line` and `reason` columns are deleted. The header is written with the first
    rejected row (a file without one is `line,reason` alone).

    The handle is a temporary file (see `rejects_output`): it becomes the --rejects file only
    when the whole command succeeded, or when it failed because no row was valid."""

    def __init__(self, source: Path, handle: TextIO | None = None, limit: int = 50,
                 max_bytes: int = MAX_REJECTS_BYTES, progress: ImportProgress | None = None) -> None:
        self.source = "standard input" if is_stdin(source) else str(source)
        self.progress = progress  # its line is taken away before a rejected row is printed
        self.count = 0
        self.limit = limit
        self._writer: Any = None
        self._max_bytes = max_bytes
        self._room = max_bytes
        self._unwritten = 0
        self._columns: tuple[str, ...] | None = None  # of the header written, once it is
        if handle is not None:
            self._writer = csv.writer(handle)

    def _header(self, columns: tuple[str, ...]) -> None:
        if self._columns is None:
            self._columns = columns
            cells = ["line", "reason", *(neutralise_formula(c) for c in columns)]
            self._room -= sum(len(c.encode("utf-8")) + 3 for c in cells)
            self._writer.writerow(cells)

    def __call__(self, row: RejectedRow) -> None:
        self.count += 1
        reason = _short(row.reason)
        if self.count <= self.limit:
            if self.progress is not None:
                self.progress.clear()
            print(safe(f"{self.source}:{row.line}: {reason}"), file=sys.stderr)
        if self._writer is None:
            return
        cells: tuple[str, ...] = getattr(row, "cells", ())
        self._header(getattr(row, "columns", ()))
        # The line number, quotes and separators; a cell may be quoted, its quotes doubled.
        cost = len(reason.encode("utf-8")) + 24 + sum(len(c.encode("utf-8")) + c.count('"') + 4 for c in cells)
        if cost > self._room:
            self._unwritten += 1
            return
        self._room -= cost
        self._writer.writerow([row.line, neutralise_formula(reason), *(neutralise_formula(c) for c in cells)])

    def close(self) -> None:
        if self.progress is not None:
            self.progress.clear()
        if self.count > self.limit:
            print(safe(f"{self.source}: {self.count - self.limit:,} more rows rejected"), file=sys.stderr)
        if self._writer is None:
            return
        self._header(())
        if self._unwritten:
            note = f"{self._unwritten:,} more rows rejected; the file stops at {describe_size(self._max_bytes)}"
            self._writer.writerow(["", note])
            print(safe(f"{self.source}: {note}"), file=sys.stderr)


def own_files(settings: Settings, store: Store) -> list[Path]:
    """The database's files: never an input, never an output."""
    return database_companions(settings.db) + database_companions(store.path)


def protected_files(settings: Settings, store: Store, inputs: Iterable[Path | None]) -> list[Path]:
    """Files no output of this command may replace: the database and its companions, the files
    the settings were read from (config, passwords, keys), and the command's own input files
    (standard input as whatever it is redirected from)."""
    protected = own_files(settings, store) + files_read(settings)
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


@contextmanager
def rejects_output(target: Path | None, *, force: bool, protected: list[Path]) -> Iterator[TextIO | None]:
    """`optional_output` for --rejects: also put in place when the import was refused because no
    row was valid, since then the file is the only full account of why (stderr shows the first 50)."""
    refused: NoValidRecipient | None = None
    with optional_output(target, flag="--rejects", force=force, protected=protected) as handle:
        try:
            yield handle
        except NoValidRecipient as exc:
            if handle is None or not exc.rejected:
                raise
            refused = exc
    if refused is not None:
        raise NoValidRecipient(f"{refused}; the rejected rows are in {target}", refused.rejected) from None


async def with_store(settings: Settings, body: Callable[[Store], Awaitable[int]]) -> int:
    # A command that creates the database and then refuses its input (`new` with a bad address,
    # `suppress import` of an empty file) leaves no new empty database behind.
    created = isinstance(settings.db, Path) and not os.path.lexists(settings.db)
    store = await open_store(settings.db)
    succeeded = False
    try:
        await store.operator_lock_wait()  # a person waits: another process's lock is said well before 2 minutes
        # A tzdata upgrade moves the instants of schedules; every command sees them right. One
        # that cannot be resolved is held (status shows it; `run` warns), never a refusal here.
        await Lifecycle(store).rederive_schedules(warn=False)
        code = await body(store)
        succeeded = code == 0
        return code
    finally:
        await store.close()
        if created and not succeeded:
            assert isinstance(settings.db, Path)
            remove_if_unused(settings.db)


def warn(message: str) -> None:
    print(safe(f"mailtower: warning: {message}"), file=sys.stderr)


def print_note(message: str) -> None:
    """A fact about what was accepted that is easy to get wrong (not silenced by --quiet)."""
    print(safe(f"mailtower: note: {message}"), file=sys.stderr)


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
        raise UserError(f"--at: {wall_minute(when)} in {tz} is in the past; choose a later time")
    return when


async def discard_quietly(store: Store, lifecycle: Lifecycle, mailing_id: int) -> None:
    try:
        await discard_new_mailing(store, lifecycle, mailing_id)
    except Exception:  # noqa: BLE001 - the error that made us discard it is the one to report
        log.warning("could not delete the half-made mailing %d", mailing_id, exc_info=True)


async def cmd_new(args: argparse.Namespace, store: Store) -> int:
    check_inputs((("--text", args.text), ("--html", args.html), ("--recipients", args.recipients)), own_files(args.settings, store))
    protected = protected_files(args.settings, store, [args.recipients, args.text, args.html])
    target = checked_output(args.rejects, flag="--rejects", force=args.force, protected=protected)
    draft = read_draft(args.name, args.subject, args.from_addr, args.text, args.html)
    when = checked_schedule(args.at, args.tz)
    unsubscribe = cli_suppress.checked_targets(args)
    guards = guard_options(args, args.settings)
    lifecycle = Lifecycle(store)
    mailing_id: int | None = None
    try:
        # The rejects file is put in place when everything else succeeded (and when no row was
        # valid, where it is the only full account: rejects_output); if putting it in place
        # fails, the new mailing is taken back, so the command changed nothing.
        with rejects_output(target, force=args.force, protected=protected) as handle:
            progress = ImportProgress(args.recipients, enabled=not args.quiet)
            rejects = RejectLog(args.recipients, handle, progress=progress)
            try:
                mailing_id, summary = await create_mailing(
                    store, draft, args.recipients, rejects, allow_special_domains=args.settings.allow_special_domains,
                    progress=progress if progress.enabled else None,
                )
            finally:
                rejects.close()
            report_duplicates(rejects.source, summary.duplicates)
            report_notes(summary.notes)
            if any(unsubscribe):
                await set_targets(store, mailing_id, *unsubscribe)
            await apply_guard_options(store, await store.mailing(mailing_id), guards)
            if args.now:
                await lifecycle.send_now(mailing_id)
            elif when is not None:
                resolved = await lifecycle.schedule(mailing_id, when, args.tz)
                if resolved.warning:
                    warn(resolved.warning)
                sign = reversed_sign_note(args.tz)
                if sign:
                    print_note(sign)
    except BaseException:
        # Whatever stopped it (a refusal, a full disk, the rejects file, Ctrl-C), `new` leaves nothing.
        if mailing_id is not None:
            await discard_quietly(store, lifecycle, mailing_id)
        raise
    try:
        print(mailing_id, flush=True)
    except StdoutFailed as exc:
        # Done and committed: a script retrying a command it thinks failed would make it twice.
        queued = " and queued" if args.now else (" and scheduled" if when is not None else " (a draft)")
        raise UserError(f"mailing {mailing_id} was created{queued}, but its id could not be written to standard "
                        f"output: {exc}; see `mailtower status`, do not create it again") from None
    created = None if args.quiet else await maybe_mailing(store, mailing_id)
    if created is not None:
        say(args, created_line(created, rejects.count, len(summary.duplicates), summary.suppressed))
    if args.now or when is not None:
        await cli_suppress.warn_without_unsubscribe(store, mailing_id)
    return 0


async def maybe_mailing(store: Store, mailing_id: int) -> Mailing | None:
    """A mailing read again for the success line; None if another process deleted it meanwhile
    (the command itself succeeded: the line must not turn that into an error)."""
    try:
        return await store.mailing(mailing_id)
    except NotFound:
        return None


def report_duplicates(source: str, lines: list[int]) -> None:
    for line in lines[:50]:
        print(safe(f"{source}:{line}: duplicate address, already in the mailing"), file=sys.stderr)
    if len(lines) > 50:
        print(safe(f"{source}: {len(lines) - 50:,} more duplicate addresses skipped"), file=sys.stderr)


def report_notes(notes: Iterable[str]) -> None:
    for note in notes:
        warn(safe(note))


def skipped(rejected: int, duplicates: int, suppressed: int = 0) -> str:
    """" (3 rejected, 2 duplicates skipped, 1 suppressed address skipped)", or nothing."""
    parts = ([f"{rejected:,} rejected"] if rejected else []) + ([f"{duplicates:,} duplicates skipped"] if duplicates else [])
    parts += [f"{suppressed:,} suppressed address{'' if suppressed == 1 else 'es'} skipped"] if suppressed else []
    return f" ({', '.join(parts)})" if parts else ""


def created_line(m: Mailing, rejected: int, duplicates: int, suppressed: int = 0) -> str:
    """What `new` made, and for a draft, how to send it."""
    head = f"created {named(m)} with {plural(m.total, 'recipient')}{skipped(rejected, duplicates, suppressed)}"
    if m.state is MailingState.SCHEDULED and m.schedule is not None:
        return f"{head}; scheduled for {when_scheduled(m)}"
    if m.section is Section.CURRENT:
        return f"{head}; queued at position {m.position} of the queue"
    return (f"{head}; it is a draft: send it with `mailtower send-now {m.id}` "
            f"or `mailtower schedule {m.id} --at \"YYYY-MM-DD HH:MM\" --tz ZONE`")


def when_scheduled(m: Mailing) -> str:
    """"2027-03-28 09:00 Europe/Berlin (2027-03-28 07:00 UTC)"."""
    if m.schedule is None:
        return "no time"
    return schedule_text(m.schedule.local, m.schedule.tz, m.schedule.utc)


def schedule_text(requested: datetime, tz: str, utc: datetime) -> str:
    """A schedule as `new` and `schedule` confirm it: the wall time that will be used, as `status`
    shows it ("2027-03-14 03:30 EDT America/New_York (2027-03-14 07:30 UTC; asked for 2027-03-14
    02:30, which the clocks skip)"); plainly "2027-03-28 09:00 Europe/Berlin (... UTC)" when the
    time asked for happens once."""
    clock = wall_clock(requested, tz, utc)
    shown = clock.text() if clock is not None else wall_minute(requested)
    asked = ""
    if clock is not None and clock.shift is Shift.GAP:
        asked = f"; asked for {wall_minute(requested)}, which the clocks skip"
    elif clock is not None and clock.wall != requested:
        asked = f"; asked for {wall_minute(requested)}"
    return f"{shown} {tz} ({utc:%Y-%m-%d %H:%M} UTC{asked})"


async def discard_new_mailing(store: Store, lifecycle: Lifecycle, mailing_id: int) -> None:
    """Take back a mailing this command created (it may already be scheduled or queued)."""
    state = (await store.mailing(mailing_id)).state
    if state is MailingState.SCHEDULED:
        await lifecycle.unschedule(mailing_id)
    elif state in (MailingState.QUEUED, MailingState.SENDING):
        await lifecycle.stop(mailing_id)
    await lifecycle.delete(mailing_id)


async def cmd_import(args: argparse.Namespace, store: Store) -> int:
    check_inputs((("", args.csv),), own_files(args.settings, store))
    protected = protected_files(args.settings, store, [args.csv])
    target = checked_output(args.rejects, flag="--rejects", force=args.force, protected=protected)
    summary = None
    try:
        with rejects_output(target, force=args.force, protected=protected) as handle:
            progress = ImportProgress(args.csv, enabled=not args.quiet)
            rejects = RejectLog(args.csv, handle, progress=progress)
            try:
                summary = await import_recipients(
                    store, args.id, args.csv, rejects, allow_special_domains=args.settings.allow_special_domains,
                    progress=progress if progress.enabled else None,
                )
            finally:
                rejects.close()
    except UserError as exc:
        if summary is not None:  # the import committed; only putting the rejects file in place failed
            raise UserError(f"{exc} (the {summary.imported:,} recipients were imported)") from None
        raise
    report_duplicates(rejects.source, summary.duplicates)
    report_notes(summary.notes)
    m = await maybe_mailing(store, args.id)
    into = f"mailing {named(m)}" if m is not None else f"mailing {args.id}"
    now = f"; it has {plural(m.total, 'recipient')} now" if m is not None else ""
    say(args, f"imported {plural(summary.imported, 'recipient')} into {into}{skipped(rejects.count, len(summary.duplicates), summary.suppressed)}{now}")
    return 0


async def live_status(store: Store) -> SenderStatus | None:
    """The sender's status if one runs now (the contract's staleness rule), else None."""
    status = await read_status(store)
    now = datetime.now(timezone.utc).timestamp()
    return status if status is not None and status.alive(now) else None


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
        "suppressed": m.suppressed,  # skipped as suppressed: total = sent + failed + suppressed + remaining
        "remaining": m.remaining,
        "rate": round(rate, 3),
        "eta": iso(eta),
        "send_at_local": m.schedule.local.strftime("%Y-%m-%d %H:%M") if m.schedule else None,
        "tz": m.schedule.tz if m.schedule else None,
        "send_at_utc": iso(m.schedule.utc) if m.schedule else None,
        **schedule_json(m),
        "missed": m.missed,
        "created_at": iso(m.created_at),
        "started_at": iso(m.started_at),
        "finished_at": iso(m.finished_at),
        "last_error": m.last_error,
        # A wave of a local-time schedule: which schedule (the same number for all its waves), and its name.
        "wave_group": m.wave_group,
        "wave_of": m.wave_parent,
        "tripped": m.tripped,  # what the breaker stopped it for, or null
        "canary": canary_json(m.canary),
    }
    if m.section is Section.CURRENT:
        data["position"] = m.position
    return data


def schedule_json(m: Mailing) -> dict[str, Any]:
    """What the clocks of the schedule's zone will show when it is sent (after a spring-forward
    gap not the time asked for), and whether it can be resolved at all (an unknown zone)."""
    clock = wall_clock(m.schedule.local, m.schedule.tz, m.schedule.utc) if m.schedule else None
    return {
        "send_at_effective": wall_minute(clock.wall) if clock else None,  # wall time in "tz" at send_at_utc
        "send_at_offset": format_offset(clock.offset) if clock else None,
        "send_at_abbreviation": (clock.abbreviation or None) if clock else None,
        "send_at_shift": clock.shift.value if clock else None,  # "none", "gap" (moved forward), "fold" (first)
        "send_at_text": clock.text() if clock else None,  # as status and the dashboard show it
        "unresolvable": m.schedule is not None and clock is None,  # its zone is not in the installed tzdata
    }


def scheduled_line(m: dict[str, Any]) -> str:
    """A Scheduled entry of `status`: the wall time that will happen, the one asked for if it differs."""
    if m["unresolvable"]:
        return (f"       #{m['id']} {m['name']}  {m['send_at_local']} {m['tz']} "
                f"(unknown zone; last derived {m['send_at_utc']})  CANNOT BE RESOLVED")
    missed = "  MISSED" if m["missed"] else ""
    shown = m["send_at_text"] or m["send_at_local"]
    asked = ""
    if m["send_at_shift"] == Shift.GAP.value:
        asked = f"; asked for {m['send_at_local']}, which the clocks skip"
    elif m["send_at_effective"] not in (None, m["send_at_local"]):
        asked = f"; asked for {m['send_at_local']}"
    return f"       #{m['id']} {m['name']}  {shown} {m['tz']} ({m['send_at_utc']}{asked}){missed}"


async def status_document(store: Store) -> dict[str, list[dict[str, Any]]]:
    sections = await store.sections()
    status = await live_status(store)
    rate = status.rate if status is not None else 0.0
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
    waiting = status.waiting if status is not None else {}
    for item in doc.get(Section.CURRENT.value, []):
        item.update(held_back(waiting, item["id"], item["state"] == "sending"))
    return doc


async def cmd_status(args: argparse.Namespace, store: Store) -> int:
    doc = await status_document(store)
    senders = await senders_document(store, args.settings.sender_heartbeat_timeout)  # fleet (core/fleet.py)
    if args.json:
        if senders is not None:
            doc["senders"] = senders
        # One compact document: the C encoder keeps 10,000 mailings well under a second.
        sys.stdout.write(json.dumps(doc) + "\n")
        return 0
    # Names, errors, reasons and hosts come from people, SMTP servers and other senders: every
    # line is shown with control characters escaped, whatever field carried them (the JSON above
    # is escaped by json.dumps, which writes ASCII only).
    def show(line: str) -> None:
        print(safe(line))

    # A mailing stays `sending` when its sender ended without recording its end (a full disk, an
    # I/O error, kill -9): said under it when nobody is sending (core/fleet.py; the lease is read
    # only when a mailing is `sending`).
    sending = any(m["state"] == "sending" for m in doc["current"])
    nobody = await nobody_sending(store, senders) if sending else None
    for section, items in doc.items():
        show(f"{section.capitalize()} ({len(items)})")
        for m in items:
            if section == "current":
                eta = m["eta"] or "unknown"
                show(f"  {m['position']:>3}. #{m['id']} {m['name']}  {m['sent']}/{m['total']} sent, "
                     f"{m['failed']} failed, {m['deferred']} deferred  {m['state']}  eta {eta}")
                if m["state"] == "sending" and nobody:
                    show(f"       {nobody}")
            elif section == "scheduled":
                show(scheduled_line(m))
            else:
                show(f"       #{m['id']} {m['name']}  {m['state']}  {m['sent']}/{m['total']} sent  {m['finished_at'] or ''}")
            if m["last_error"]:
                show(f"       ! {m['last_error']}")
            canary = m.get("canary")
            if canary and canary["phase"] in ("sending", "holding") and section == "current":
                show(f"       canary {canary['done']}/{canary['total']} {canary['phase']}")  # breaker/canary
            for key in ("waiting", "throttled"):
                held = m.get(key)
                if held:
                    show(f"       {key}: {held['reason']} (since {held['since']}, next try {held['next_try'] or 'unknown'})")
    if senders is not None and len(senders) > 1:
        show(f"Senders ({sum(1 for x in senders if x['alive'])} alive)")
        for x in senders:
            show(f"       #{x['sender']} {x['host']} pid {x['pid']}  {x['rate']:.1f}/s  {x['connections']} connections"
                 f"  heartbeat {x['heartbeat_age']:.1f} s ago  {'alive' if x['alive'] else x['state']}")
    for x in senders or []:
        if x["state"] == GONE:  # its process ended, its row still says running (core/fleet.py)
            show(f"Sender pid {x['pid']} on {x['host']} is gone: it ended without recording its end (a full disk, "
                 f"an I/O error, killed?); start `mailtower run` to go on")
    return 0


async def cmd_resume(args: argparse.Namespace, store: Store) -> int:
    names = [r.name for r in relays_from_settings(args.settings)]
    await request_resume(store, args.relay, names)
    if await live_status(store) is None:
        say(args, "no sender is running, so nothing is paused (a new `mailtower run` starts with every relay unpaused)")
    else:
        say(args, f"asked the sender to try {args.relay or 'every paused relay'} again")
    return 0


async def cmd_schedule(args: argparse.Namespace, store: Store) -> int:
    when = parse_wall_time(args.at)
    before = await store.mailing(args.id)
    if not args.local_time and not args.tz:
        raise UserError("schedule needs --tz ZONE (or --local-time to use each recipient's zone)")
    if args.passed and not args.local_time:
        raise UserError("--passed applies to --local-time schedules only")
    passed = Passed(args.passed) if args.passed else None
    guards = guard_options(args, args.settings)  # checked before anything changes
    check_guard_target(before, guards)
    from mailtower.core.scheduling import schedule_mailing  # only this command needs it (issue 12: start time)

    result = await schedule_mailing(store, Lifecycle(store), args.id, when, args.tz, args.local_time, passed)
    for warning in result.warnings:
        warn(warning)
    for fact in result.notes:
        print_note(fact)
    for part in result.mailings:  # each wave of a --local-time schedule gets them
        await apply_guard_options(store, await store.mailing(part.mailing_id), guards)
    if result.local_time:
        recipients = 0
        for scheduled in result.mailings:
            wave = scheduled.wave
            assert wave is not None
            recipients += wave.recipients
            offset = "now" if wave.offset is None else f"UTC{format_offset(wave.offset)}"
            print(f"{scheduled.mailing_id}\t{offset}\t{iso(wave.utc)}\t{len(wave.zones)}\t{wave.recipients}")
        skipped = ""
        if result.skipped_id is not None:
            skipped = f"; {result.plan.passed_recipients if result.plan else 0:,} recipients where the time had " \
                      f"passed are kept in draft {result.skipped_id}"
        say(args, f"scheduled {named(before)} at {when:%Y-%m-%d %H:%M} in each recipient's zone: "
                  f"{plural(len(result.mailings), 'wave')} for {plural(recipients, 'recipient')} "
                  f"(listed on standard output){skipped}")
        return 0
    resolved = result.mailings[0].resolved
    # The wall time in effect (after a spring-forward gap, the later one the warning named).
    say(args, f"scheduled {named(before)} for {schedule_text(resolved.requested, resolved.tz, resolved.utc)}")
    await cli_suppress.warn_without_unsubscribe(store, args.id)
    return 0


async def cmd_simple(args: argparse.Namespace, store: Store) -> int:
    lifecycle = Lifecycle(store)
    before = await store.mailing(args.id)
    if args.command in ("unschedule", "send-now") and before.wave_group is not None:
        # A scheduled wave stands for its whole local-time schedule (core/waves.py).
        group_action = cancel_schedule if args.command == "unschedule" else send_group_now
        kept, waves = await group_action(store, lifecycle, args.id)
        after = await maybe_mailing(store, kept) or before
        say(args, changed_line(args.command, before, after) + (f" ({waves} waves made one again)" if waves > 1 else ""))
        return 0
    await carry_out(lifecycle, command_entry(args.command).action, args.id, despite_trip=getattr(args, "force", False))
    after = None if args.command == "delete" else (await maybe_mailing(store, args.id) or before)
    say(args, changed_line(args.command, before, after) + (restart_line(before) if args.command == "restart" else ""))
    if args.command in ("send-now", "restart"):
        await cli_suppress.warn_without_unsubscribe(store, args.id)
    return 0


def changed_line(command: str, before: Mailing, after: Mailing | None) -> str:
    """One line saying what a state change did: `stopped 4 "Spring sale": 8,433 not yet received`."""
    if after is None:
        return f"deleted {named(before)} and its {plural(before.total, 'recipient')}"
    if command == "stop":
        return f"stopped {named(after)}: {after.remaining:,} not yet received"
    if command == "unschedule":
        was = f" (it was due {before.schedule.local:%Y-%m-%d %H:%M} {before.schedule.tz})" if before.schedule else ""
        return f"unscheduled {named(after)}: it is a draft again{was}"
    verb = "restarted" if command == "restart" or before.state is MailingState.STOPPED else "queued"
    return f"{verb} {named(after)}: {plural(after.remaining, 'recipient')} to send, position {after.position} of the queue"


async def cmd_move(args: argparse.Namespace, store: Store) -> int:
    position = await Lifecycle(store).move(args.id, Direction(args.direction))
    print(position)
    moved = None if args.quiet else await maybe_mailing(store, args.id)
    if moved is not None:
        queued = len(await store.mailings(Section.CURRENT))
        say(args, f"moved {named(moved)} {args.direction}: position {position} of {queued}")
    return 0


async def cmd_remaining(args: argparse.Namespace, store: Store) -> int:
    mailing = await store.mailing(args.id)
    if args.output is None or is_stdin(args.output):
        await write_remaining(store, args.id, sys.stdout, as_csv=args.csv)
        return 0
    protected = protected_files(args.settings, store, [])
    target = check_output_path(args.output, what="--output", force=args.force, protected=protected)
    with atomic_output(target, what="--output", force=args.force, protected=protected) as handle:
        written = await write_remaining(store, args.id, handle, as_csv=args.csv)
    say(args, f"{written:,} remaining recipients of {named(mailing)} written to {target}")
    return 0


# What `recipients --state` accepts, and the state label (exports.state_label) each one means.
STATE_CHOICES: dict[str, str] = {
    "pending": "pending",
    "deferred": "deferred",
    "in-doubt": "in doubt",
    "sending": "sending",
    "failed": "failed",
    "sent": "sent",
    "suppressed": "suppressed",
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
            # Also on a row sent in the end: it may have been delivered more than once.
            "in_doubt": r.in_doubt,
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
    """The remaining recipients as CSV or as the tab-separated listing; rows written. CSV to a
    terminal is made safe, as `recipients --csv` is (a file gets the exact values)."""
    if as_csv:
        return await write_remaining_csv(store, mailing_id, handle, shown=safe if handle.isatty() else None)
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
        started = time.monotonic()
        before = await counters_if_readable(settings.db) if not args.quiet else None
        try:
            await sender.run(until_idle=args.until_idle)
        except LeaseHeld as exc:
            return fail(str(exc))
        except SenderFailed as exc:
            cause = exc.__cause__
            if cause is not None and storage_error(settings.db, cause) is None and not isinstance(cause, FleetLost):
                raise cause from None  # a bug, not the disk: main() logs its traceback (exit 70)
            return fail(str(exc))  # the ledger could not be written (full or read-only disk): exit 2
        if before is not None:
            after = await counters_if_readable(settings.db)
            if after is not None:
                summary = run_summary(before, after, time.monotonic() - started, sender.sent_while_in_doubt)
                if logs.to_file:
                    log.info("%s", summary)
                if not logs.file_is_stderr:
                    say(args, summary)
        return 0

    with sender_logging(args, settings) as logs:
        return run_async(main())


async def counters_if_readable(db: Path | PgTarget) -> dict[int, Mailing] | None:
    """Every mailing with its counters, for the summary of `run`; None when the database cannot
    be read as it is (not yet created, not a regular file, damaged): the sender itself then says
    what is wrong in its one line, and this never creates or changes anything first."""
    try:
        if not isinstance(db, PgTarget) and not stat.S_ISREG(os.stat(db).st_mode):
            return None
    except FileNotFoundError:
        return {}  # a first run on a new database: the sender creates it
    except OSError:
        return None
    try:
        store = await open_store(db)
    except (OSError, UserError, *database_errors()):
        return None
    try:
        return {m.id: m for m in await store.mailings()}
    except (OSError, UserError, *database_errors()):
        return None
    finally:
        try:
            await store.close()
        except (OSError, *database_errors()):
            pass


def run_summary(before: Mapping[int, Mailing], after: Mapping[int, Mailing], seconds: float,
                sent_while_in_doubt: int = 0) -> str:
    """`run` in one line: what it finished and sent (and how many of those may have had it
    already), what is left waiting (deferred or in doubt)."""
    finished = sent = failed = suppressed = deferred = in_doubt = 0
    for mid, now in after.items():
        then = before.get(mid)
        sent += max(0, now.sent - (then.sent if then else 0))
        failed += max(0, now.failed - (then.failed if then else 0))
        suppressed += max(0, now.suppressed - (then.suppressed if then else 0))
        if now.state is MailingState.COMPLETED and (then is None or then.state is not MailingState.COMPLETED):
            finished += 1
        touched = then is None or (now.sent, now.failed, now.deferred, now.in_doubt) != (
            then.sent, then.failed, then.deferred, then.in_doubt)
        if touched or now.section is Section.CURRENT:
            deferred += now.deferred
            in_doubt += now.in_doubt
    skipped = f", {suppressed:,} skipped as suppressed" if suppressed else ""
    twice = f" ({sent_while_in_doubt:,} of them in doubt before: possibly twice)" if sent_while_in_doubt else ""
    return (f"run ended after {duration(seconds)}: {plural(finished, 'mailing')} finished, {sent:,} sent{twice}, "
            f"{failed:,} failed{skipped}, {deferred:,} deferred, {in_doubt:,} in doubt")


LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
LOG_DATE_FORMAT = "%Y-%m-%d %H:%M:%S%z"


@dataclass(frozen=True, slots=True)
class RunLog:
    """Where `run` logs (see sender_logging)."""

    to_file: bool  # --log was given
    file_is_stderr: bool  # ... and names the file standard error goes to (the dashboard's hand-off)


@contextmanager
def sender_logging(args: argparse.Namespace, settings: Settings) -> Iterator[RunLog]:
    """What the sender says as it goes (started, sending a mailing, finished it, waiting,
    stopped; INFO lines): on standard error when it is a terminal (not with --quiet), and with
    --log appended to that file with a timestamp. Put back as it was afterwards: main() may
    run again in the same process."""
    logger = logging.getLogger("mailtower")
    stderr_handler = install_safe_logging()
    saved = (logger.level, stderr_handler.level)
    file_handler: LogFileHandler | None = None
    file_is_stderr = False
    if args.log is not None:
        stream = open_log(args.log, settings)
        file_handler = LogFileHandler(stream, args.log)
        file_handler.setFormatter(SafeFormatter(LOG_FORMAT, LOG_DATE_FORMAT))
        file_handler.setLevel(logging.INFO)
        logger.addHandler(file_handler)
        file_is_stderr = _same_open_file(stream, sys.stderr)
        if file_is_stderr:
            stderr_handler.setLevel(logging.CRITICAL + 1)  # the hand-off: the log already has every line
    if not args.quiet and _is_terminal(sys.stderr) and file_handler is None:
        stderr_handler.setLevel(logging.INFO)
    logger.setLevel(logging.INFO)
    try:
        yield RunLog(to_file=file_handler is not None, file_is_stderr=file_is_stderr)
    finally:
        logger.setLevel(saved[0])
        stderr_handler.setLevel(saved[1])
        if file_handler is not None:
            logger.removeHandler(file_handler)
            file_handler.close_file()


def open_log(path: Path, settings: Settings) -> TextIO:
    """`run --log FILE` opened for appending: a regular file (created if need be) that is not the
    database or one of its files, nor a file the settings were read from; anything else is one
    line and exit 2 before sending starts."""
    if any(same_file(path, companion) for companion in database_companions(settings.db)):
        raise UserError(f"--log: {path} is the database or one of its files; name another file")
    for read in files_read(settings):
        if same_file(path, read):
            raise UserError(f"--log: {path} is the same file as {read}, which the settings are read from; name another file")
    not_regular = f"--log: {path} is not a regular file (the sender's log is appended to a file)"
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise UserError(not_regular)  # a directory, FIFO or device: refused before it is opened
    except FileNotFoundError:
        pass  # created below
    except OSError as exc:
        raise UserError(f"--log: cannot use {path}: {exc.strerror or exc}") from None
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)  # non-blocking: a FIFO put there meanwhile is never waited on
    except OSError as exc:
        raise UserError(f"--log: cannot open {path}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UserError(not_regular)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace", buffering=1)
    except BaseException:
        os.close(fd)
        raise


def _same_open_file(a: TextIO, b: TextIO) -> bool:
    try:
        sa, sb = os.fstat(a.fileno()), os.fstat(b.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def run_async(coro: Awaitable[int]) -> int:
    return loops.run(coro)  # type: ignore[arg-type]


async def cmd_limits(args: argparse.Namespace, store: Store) -> int:
    if args.domain is not None:
        return await cli_domains.domain_limits(args, store, say)
    if args.per_hour is not None or args.reset:
        raise UserError("--per-hour: give --domain NAME too (the sender's own budget is --rate-per-hour)"
                        if args.per_hour is not None else "--reset: give --domain NAME too")
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
    if changes:
        # What was stored (a flag of this command's own process may make its table show another).
        said = ", ".join(f"{name} {limits_value(name, parse_limit(name, raw))}" for name, raw in changes.items())
        say(args, f"limits changed: {said} (a running sender applies them within a second)")
    if args.json:
        doc = {name: getattr(limits, name) for name in LIMITS}
        doc["changed_at"] = {name: iso(when) for name, when in limits.changed_at.items()}
        doc["domains"] = cli_domains.limits_json(args, limits)
        print(json.dumps(doc, indent=1))
    else:
        print("\n".join(limits.describe()))
    return 0


def limits_value(name: str, value: float) -> str:
    return "unlimited" if value == 0 and name.startswith("rate") else f"{value:g}"


STORE_COMMANDS: dict[str, Callable[[argparse.Namespace, Store], Awaitable[int]]] = {
    "new": cmd_new,
    "import": cmd_import,
    "status": cmd_status,
    "schedule": cmd_schedule,
    **{str(ACTIONS[action].command): cmd_simple for action in SIMPLE_COMMANDS},
    "move": cmd_move,
    "remaining": cmd_remaining,
    "recipients": cmd_recipients,
    "limits": cmd_limits,
    "resume": cmd_resume,
    **cli_suppress.HANDLERS,
}
STORE_COMMANDS.update(cli_domains.HANDLERS)
STORE_COMMANDS.update(BREAKER_HANDLERS)


def main(argv: Sequence[str] | None = None) -> int:
    """Every way out is an exit status and at most one line on stderr: 2 for what a person can
    fix (bad input, a refused action, a full or read-only disk), EXIT_INTERNAL_ERROR for a bug,
    whose traceback goes to a log file the line names."""
    closed: set[int] = set()
    if argv is None:
        # The process ends when this returns: nothing made so far needs the collector's last
        # passes over every module's objects at exit (40-90 ms after a send; issue 12).
        atexit.register(gc.freeze)
        closed = fill_closed_streams()  # before anything is opened (see tui/output.py)
    guard_stdout()
    argv = list(sys.argv[1:] if argv is None else argv)
    settings: Settings | None = None
    install_safe_logging()  # log lines carry server replies and names: made safe like everything shown
    try:
        refuse_undecodable(argv, os.environ)
        args = build_parser().parse_args(argv)
        if 1 in closed and args.command == "new":  # the one command whose output is needed to go on
            raise UserError("standard output is closed: `new` writes the new mailing's id there; redirect it "
                            "(> /dev/null to drop it)")
        if args.command == "demo":
            from .demo import run_demo

            return run_demo()
        settings = settings_from(args)
        if args.command in (None, "run"):  # the commands that send: a bad DKIM key is refused before anything
            for warning in dkim_startup_check(settings):
                warn(warning)
        prepare_db_location(args, settings)
        code = dispatch(args, settings)
        if sys.stdout is not None:
            sys.stdout.flush()  # a failure here is the output's, said as such below
        return code
    except UserError as exc:
        return fail(str(exc))
    except StdoutFailed as exc:
        return fail(f"cannot write to standard output: {exc} (what the command did before that stays done)")
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
    if args.command in cli_migrate.HANDLERS:  # reads its SQLite source read-only: not through with_store
        return cli_migrate.HANDLERS[args.command](args, settings)
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
    MAILTOWER_DB, the config file) must be in a directory that exists, and must exist itself
    for the commands on existing mailings (ON_EXISTING_MAILINGS): a typo in a path must not
    quietly start a new, empty database somewhere else."""
    if isinstance(settings.db, PgTarget):
        return  # a server's database: nothing to create here
    directory = settings.db.parent
    if settings.db == default_db_path():
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise UserError(f"cannot create the data directory {directory}: {exc.strerror or exc}") from None
        return
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise UserError(f"{_db_source(args, settings)}: {settings.db}: the directory {directory} {what} "
                        "(mailtower does not create it)")
    if args.command in ON_EXISTING_MAILINGS and _no_database_yet(settings.db):
        raise UserError(f"{_db_source(args, settings)}: {settings.db}: no database there (`mailtower new` "
                        "creates one); nothing was created")


def _no_database_yet(path: Path) -> bool:
    """Nothing at `path`, or an empty file (which `new` would make a database; a command about
    existing mailings would write the schema into it and show none)."""
    try:
        info = os.stat(path)
        return stat.S_ISREG(info.st_mode) and info.st_size == 0
    except FileNotFoundError:
        return not os.path.islink(path)  # a dangling link: check_database_path says so
    except OSError:
        return False  # the store's own checks say what is wrong with it


# Commands that look at or act on mailings already there: on a database named explicitly that
# does not exist (a typo), they say so instead of creating an empty one and showing it.
ON_EXISTING_MAILINGS = frozenset({
    "status", "schedule", "move", "remaining", "recipients", "resume", "retry",
    *(str(ACTIONS[action].command) for action in SIMPLE_COMMANDS),
})


def _db_source(args: argparse.Namespace, settings: Settings) -> str:
    """Where the database's name came from, for a line about it."""
    if args.db is not None:
        return "--db"
    if os.environ.get("MAILTOWER_DB"):
        return "MAILTOWER_DB"
    return f"{settings.config_path}: db"


def crash_log_candidates() -> list[Path]:
    return [Path(platformdirs.user_log_dir("mailtower")), Path(tempfile.gettempdir())]


def write_crash_log(exc: BaseException, argv: Sequence[str]) -> Path | None:
    """Append the traceback to the first log file that can be written; None if none can."""
    record = (
        f"==== {datetime.now(timezone.utc).isoformat(timespec='seconds')} mailtower {package_version()} "
        f"pid {os.getpid()}\nargv: {[redact_url(_shown(a)) for a in argv]!r}\n"
        + redact_url("".join(traceback.format_exception(exc)))  # a driver's text may quote a URL
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
