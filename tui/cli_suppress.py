"""`mailtower suppress`, `unsubscribe` and `retry` (issue 13, items 6, 7 and 9).

Registered by tui/cli.py: `add_commands(sub, add_command)` builds the parsers, HANDLERS maps each
command to its handler. The shared helpers of the command line (say, plural, the global options)
are imported from tui/cli when the parsers are built or a command runs, as cli imports this module.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

from mailtower.core.actions_registry import ACTIONS
from mailtower.core.lifecycle import Action
from mailtower.core.display import safe
from mailtower.core.errors import UserError
from mailtower.core.files import check_inputs
from mailtower.core.recipients_csv import neutralise_formula, normalize_address
from mailtower.core.retry import RetryMode, retry_failed
from mailtower.core.store import Store
from mailtower.core.suppression import add_addresses, clean_reason, import_file, remove_addresses
from mailtower.core.unsubscribe import (
    check_mailto,
    check_token,
    check_url,
    describe_targets,
    issued_secret,
    missing_warning,
    set_targets,
)

PAGE = 2000


def addresses(n: int) -> str:
    """"1 address", "8,433 addresses"."""
    return f"{n:,} address{'' if n == 1 else 'es'}"


SHOWN_ABSENT = 10  # addresses named in the line of `suppress remove` about those not on the list


def removed_line(removed: int, absent: list[str]) -> str:
    """The one line of a `suppress remove` that found some addresses not on the list."""
    if len(absent) == 1:
        note = f"{absent[0]}: not on the suppression list"
    else:
        more = f" and {len(absent) - SHOWN_ABSENT:,} more" if len(absent) > SHOWN_ABSENT else ""
        note = f"{len(absent):,} addresses not on the suppression list: {', '.join(absent[:SHOWN_ABSENT])}{more}"
    if not removed:
        return f"{note}; nothing removed"
    return f"removed {addresses(removed)} from the suppression list; {note}"


def add_commands(sub: Any, add_command: Callable[..., argparse.ArgumentParser]) -> None:
    from .cli import ID_HELP, OneLineParser, add_global_options, mailing_id

    sup = add_command(
        sub, "suppress", "the suppression list: addresses never sent to again",
        "One list per database. Addresses whose server said the mailbox does not exist or is\n"
        "disabled (5.1.1, 5.1.2, 5.1.10, 5.2.1, ...) are added by the sender; `new` and `import`\n"
        "skip suppressed addresses, and a queued mailing skips them when it comes to them.",
        "  mailtower suppress add bob@example.com --reason 'asked by phone'\n"
        "  mailtower suppress import unsubscribes.txt      # addresses and/or unsubscribe tokens\n"
        "  mailtower suppress list --json\n"
        "  mailtower suppress remove bob@example.com\n",
    )
    actions = sup.add_subparsers(dest="suppress_command", parser_class=OneLineParser, metavar="ACTION", required=True,
                                help="add, import, list or remove")
    add = actions.add_parser("add", help="suppress addresses", description="Suppress addresses (all or none).")
    add.add_argument("addresses", nargs="+", metavar="ADDRESS", help="the addresses to suppress")
    add.add_argument("--reason", metavar="TEXT", help="why (shown by `suppress list`)")
    imp = actions.add_parser(
        "import", help="suppress the addresses and unsubscribe tokens of a file",
        description="One address or one-click unsubscribe token a line (# starts a comment), or a CSV file\n"
                    "with an `email` column. Tokens (as your unsubscribe endpoint collected them) are verified\n"
                    "against this database's secret; lines that are neither are listed and skipped.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    imp.add_argument("file", type=_file_path, metavar="FILE", help="the file; - reads standard input")
    imp.add_argument("--reason", metavar="TEXT", help="why, for the addresses (default: imported from FILE)")
    lst = actions.add_parser("list", help="the suppressed addresses",
                             description="Tab-separated: address, source, date, mailing, reason.")
    lst.add_argument("--json", action="store_true", help="JSON lines: one object per address")
    rem = actions.add_parser("remove", help="take addresses off the list",
                             description="Mailings created or imported later may send to them again. All or nothing:\n"
                                         "a value that is not an address (and not on the list) changes nothing (exit 2);\n"
                                         "addresses not on the list are named in one line (exit 0).",
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    rem.add_argument("addresses", nargs="+", metavar="ADDRESS", help="the addresses to take off the list")
    for parser in (sup, add, imp, lst, rem):
        add_global_options(parser, in_command=True)

    uns = add_command(
        sub, "unsubscribe", "one-click unsubscribe: set a mailing's link, check a token",
        "`set` stores an https URL template holding {{ unsubscribe_token }} and/or a mailto address\n"
        "on a draft, scheduled or stopped mailing: each message gets List-Unsubscribe and, with the\n"
        "URL, List-Unsubscribe-Post: List-Unsubscribe=One-Click (RFC 8058). `verify` prints the\n"
        "mailing id and address a token was made for (exit 2 if it is not valid).",
        "  mailtower unsubscribe set 4 --url 'https://example.org/u/{{ unsubscribe_token }}'\n"
        "  mailtower unsubscribe verify AQAAAAAAAAAE...\n",
    )
    uactions = uns.add_subparsers(dest="unsubscribe_command", parser_class=OneLineParser, metavar="ACTION", required=True,
                                   help="set or verify")
    uset = uactions.add_parser("set", help="set or clear a mailing's unsubscribe targets")
    uset.add_argument("id", type=mailing_id, help=ID_HELP)
    add_target_options(uset, prefix="")
    uset.add_argument("--none", action="store_true", help="remove both")
    ver = uactions.add_parser("verify", help="check a token; prints mailing id and address")
    ver.add_argument("token", metavar="TOKEN", help="the token from an unsubscribe URL or mail subject")
    for parser in (uns, uset, ver):
        add_global_options(parser, in_command=True)

    rty = add_command(
        sub, "retry", ACTIONS[Action.RETRY].summary,
        f"The dashboard's Actions menu calls it “{ACTIONS[Action.RETRY].label}”.\n"
        "The mailing joins the bottom of the queue; its failed recipients that are picked are sent\n"
        "again (the others keep their failure). By default (--temporary) those that failed for a\n"
        "reason that may pass: given up after the retry age, a policy refusal (5.7.x), ...; --all\n"
        "every failed one. Suppressed addresses never.",
        "  mailtower retry 4\n  mailtower retry 4 --all\n",
    )
    rty.add_argument("id", type=mailing_id, help=ID_HELP)
    mode = rty.add_mutually_exclusive_group()
    mode.add_argument("--temporary", dest="retry_mode", action="store_const", const=RetryMode.TEMPORARY,
                      help="failures that may pass (the default)")
    mode.add_argument("--all", dest="retry_mode", action="store_const", const=RetryMode.ALL,
                      help="every failed recipient but the suppressed")
    add_global_options(rty, in_command=True)


def add_target_options(parser: argparse.ArgumentParser, prefix: str = "unsubscribe-") -> None:
    """--unsubscribe-url / --unsubscribe-mailto on `new` (--url / --mailto on `unsubscribe set`)."""
    parser.add_argument(f"--{prefix}url", dest="unsubscribe_url", metavar="URL",
                        help="one-click unsubscribe: https URL holding {{ unsubscribe_token }}")
    parser.add_argument(f"--{prefix}mailto", dest="unsubscribe_mailto", metavar="ADDRESS",
                        help="unsubscribe by mail to this address (the token goes in the subject)")


def checked_targets(args: argparse.Namespace, flags: tuple[str, str] = ("--unsubscribe-url", "--unsubscribe-mailto")) -> tuple[str | None, str | None]:
    """The unsubscribe targets given on the command line, checked (UserError naming the flag)."""
    url = check_url(args.unsubscribe_url, flags[0]) if args.unsubscribe_url is not None else None
    allow = args.settings.allow_special_domains
    mailto = (
        check_mailto(args.unsubscribe_mailto, lambda a: normalize_address(a, allow_special=allow), flags[1])
        if args.unsubscribe_mailto is not None
        else None
    )
    return url, mailto


async def warn_without_unsubscribe(store: Store, mailing_id: int) -> None:
    """One line on standard error when a large mailing goes on its way without unsubscribe."""
    from .cli import warn

    try:
        warning = missing_warning(await store.mailing(mailing_id))
    except UserError:
        return  # deleted meanwhile: the command itself succeeded
    if warning:
        warn(warning)


# ---- handlers ---------------------------------------------------------------------------------


async def cmd_suppress(args: argparse.Namespace, store: Store) -> int:
    from .cli import own_files, say

    allow = args.settings.allow_special_domains
    if args.suppress_command == "add":
        added, already = await add_addresses(store, args.addresses, clean_reason(args.reason), allow_special=allow)
        say(args, f"suppressed {addresses(added)}" + (f" ({already:,} already were)" if already else ""))
        return 0
    if args.suppress_command == "import":
        check_inputs((("", args.file),), own_files(args.settings, store))
        label = "standard input" if str(args.file) == "-" else str(args.file)
        invalid = 0

        def report(line: int, why: str) -> None:
            nonlocal invalid
            invalid += 1
            if invalid <= 50:
                print(safe(f"{label}:{line}: {why}; skipped"), file=sys.stderr)

        result = await import_file(store, args.file, args.reason, allow_special=allow, report=report)
        if invalid > 50:
            print(safe(f"{label}: {invalid - 50:,} more lines skipped"), file=sys.stderr)
        notes = [f"{result.unsubscribes:,} from unsubscribe tokens"] if result.unsubscribes else []
        notes += [f"{result.already:,} already were"] if result.already else []
        invalid = len(result.invalid)
        notes += [f"{invalid:,} line{'s' if invalid != 1 else ''} not valid, skipped"] if invalid else []
        say(args, f"suppressed {addresses(result.added)}" + (f" ({', '.join(notes)})" if notes else ""))
        return 0
    if args.suppress_command == "remove":
        removed, absent = await remove_addresses(store, args.addresses, allow_special=allow)
        if not absent:
            say(args, f"removed {addresses(removed)} from the suppression list")
        else:  # one line, shown even with --quiet: what was asked did not all happen (like before)
            print(safe(removed_line(removed, absent)), file=sys.stderr)
        return 0  # like `suppress add` of an address already on it: nothing left to do is no error
    return await _list(args, store)


async def _list(args: argparse.Namespace, store: Store) -> int:
    from .cli import say

    out = sys.stdout
    after = ""
    while True:  # bounded: every page moves `after` past the keys it returned
        page = await store.suppression_page(after, PAGE)
        if not page:
            if not after:  # standard output stays empty (a list of nothing); a person is told why
                say(args, "the suppression list is empty")
            return 0
        after = page[-1][0]
        for _key, email, source, reason, mailing, added in page:
            if args.json:
                out.write(json.dumps({"email": email, "source": source, "added_at": added,
                                      "mailing_id": mailing, "reason": reason}) + "\n")
            else:
                cells = (email, source, added, "" if mailing is None else str(mailing), reason)
                # Reasons are servers' and people's words: one safe cell each, no formula (a listing
                # redirected to a file may be opened in a spreadsheet); `suppress remove` takes the
                # address as shown here too (remove_addresses).
                out.write("\t".join(neutralise_formula(safe(c)) for c in cells) + "\n")


async def cmd_unsubscribe(args: argparse.Namespace, store: Store) -> int:
    from .cli import named, say

    if args.unsubscribe_command == "verify":
        found = check_token(await issued_secret(store), args.token)
        print(f"{found.mailing_id}\t{safe(found.address)}")
        return 0
    if args.none and (args.unsubscribe_url or args.unsubscribe_mailto):
        raise UserError("--none removes both targets: give it alone")
    if not args.none and args.unsubscribe_url is None and args.unsubscribe_mailto is None:
        raise UserError("unsubscribe set needs --url, --mailto or --none")
    url, mailto = checked_targets(args, ("--url", "--mailto"))
    mailing = await set_targets(store, args.id, url, mailto)
    say(args, f"{named(mailing)}: {describe_targets(url, mailto)}")
    return 0


async def cmd_retry(args: argparse.Namespace, store: Store) -> int:
    from .cli import named, say

    plan = await retry_failed(store, args.id, args.retry_mode or RetryMode.TEMPORARY)
    mailing = await store.mailing(args.id)
    say(args, f"retrying {named(mailing)}: {plan.describe()}; position {mailing.position} of the queue")
    await warn_without_unsubscribe(store, args.id)
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace, Store], Awaitable[int]]] = {
    "suppress": cmd_suppress,
    "unsubscribe": cmd_unsubscribe,
    "retry": cmd_retry,
}


def _file_path(text: str) -> Path:
    from .cli import file_path  # here, not at import: tui/cli.py imports this module

    return file_path(text)
