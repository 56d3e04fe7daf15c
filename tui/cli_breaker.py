"""The breaker and canary on the command line: options of `new` and `schedule`, the `breaker`
command (show or change one mailing's thresholds), and what `restart --force` needs.

Every value is checked before anything is written (core.config's bounds: NaN, infinity,
negatives and more than 100 % are refused with one line naming the flag).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from mailtower.core.breaker import Thresholds, percent
from mailtower.core.canary import MAX_SAMPLE, parse_size, plan
from mailtower.core.config import BOUNDS, Settings, parse_number, show_value
from mailtower.core.display import safe
from mailtower.core.domain import Canary, CanaryPhase, Mailing, Section
from mailtower.core.errors import UserError
from mailtower.core.store import Store


def add_guard_options(parser: argparse.ArgumentParser) -> None:
    """--breaker-hard, --breaker-soft and the canary's options (for `new` and `schedule`)."""
    group = parser.add_argument_group("breaker and canary")
    group.add_argument("--breaker-hard", metavar="P%",
                       help="stop it by itself when more than P%% of its recent outcomes failed permanently "
                            "(default: the breaker_hard setting, 5%%; 0 = off)")
    group.add_argument("--breaker-soft", metavar="P%",
                       help="stop it by itself when more than P%% of one domain's recent outcomes were deferred "
                            "(default: the breaker_soft setting, 20%%; 0 = off)")
    group.add_argument("--canary", metavar="N|P%",
                       help="send to N recipients (or P%% of them) first, spread over their domains, slowly; "
                            "then hold before the rest")
    group.add_argument("--canary-rate", metavar="N",
                       help=f"messages per second of the canary (default: canary_rate, 1; {BOUNDS['canary_rate'].describe()})")
    group.add_argument("--canary-wait", metavar="MINUTES",
                       help="minutes the canary holds before the rest goes out, fractions allowed "
                            f"(default: canary_wait, 10; {BOUNDS['canary_wait'].describe()})")


@dataclass(frozen=True, slots=True)
class GuardOptions:
    """What the options asked for, checked; None fields were not given."""

    hard: float | None
    soft: float | None
    canary: Canary | None

    @property
    def given(self) -> bool:
        return self.hard is not None or self.soft is not None or self.canary is not None


def guard_options(args: argparse.Namespace, settings: Settings) -> GuardOptions:
    """Check the options (before anything is written); UserError names the flag."""
    hard = getattr(args, "breaker_hard", None)
    soft = getattr(args, "breaker_soft", None)
    size = getattr(args, "canary", None)
    rate, wait = getattr(args, "canary_rate", None), getattr(args, "canary_wait", None)
    if size is None and (rate is not None or wait is not None):
        raise UserError(f"{'--canary-rate' if rate is not None else '--canary-wait'} needs --canary N or --canary P%")
    return GuardOptions(
        hard=None if hard is None else float(parse_number("breaker_hard", hard, "--breaker-hard")),
        soft=None if soft is None else float(parse_number("breaker_soft", soft, "--breaker-soft")),
        canary=None if size is None else plan(canary_count(size), rate, wait, settings),
    )


# Options whose value may start with "-" ("--canary -5%", "--breaker-hard -1"): argparse takes
# such a word for an option ("expected one argument") unless it looks like a negative integer, so
# the parser joins it to its option first and the value's own check names what is wrong.
SIGNED_VALUE_OPTIONS = frozenset({"--breaker-hard", "--breaker-soft", "--canary", "--canary-rate", "--canary-wait"})

_CANARY_NUMBER = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def join_signed_values(args: list[str]) -> list[str]:
    """`args` with "--canary", "-0%" as "--canary=-0%" (up to a "--"): a guard option always takes
    the next word as its value, so a value starting with "-" is read as one, never as an option."""
    joined: list[str] = []
    index = 0
    while index < len(args):
        word = args[index]
        if word == "--":
            joined.extend(args[index:])
            break
        following = args[index + 1] if index + 1 < len(args) else None
        if word in SIGNED_VALUE_OPTIONS and following is not None and following.startswith("-"):
            joined.append(f"{word}={following}")
            index += 2
            continue
        joined.append(word)
        index += 1
    return joined


def canary_count(raw: str) -> str:
    """--canary as canary.plan reads it, checked here so that every refusal is one line naming the
    option and the value as typed. A sign is read as everywhere else: "+5" is 5, "+5%" is 5 %;
    "-0", "-5" or "-5%" is a size below the least canary (it was "not a number", or for "-5%"
    a line that did not say which value). White space may surround the value, never follow the
    sign: "+ 5%" was 5 % while "+ 5" was refused, and --breaker-hard refuses both."""
    text = raw.strip()
    sign = text[:1] if text[:1] in ("+", "-") else ""
    body = text[len(sign):]
    is_percent = body.endswith("%")
    number = body[:-1].rstrip() if is_percent else body  # "5 %" is 5 %, as for --breaker-hard
    if not number.isascii() or _CANARY_NUMBER.fullmatch(number) is None or (not is_percent and not number.isdigit()):
        raise UserError(f"--canary: {show_value(raw)} is not a number of recipients (N) or a percentage (P%)")
    out_of_range = UserError(f"--canary: {show_value(raw)} " + (
        "must be more than 0 % and at most 100 %" if is_percent
        else f"must be from 1 to {MAX_SAMPLE:,} recipients (or a percentage)"))
    if sign == "-":
        raise out_of_range
    try:
        parse_size(body)
    except UserError:
        raise out_of_range from None
    return body


async def apply_guard_options(store: Store, mailing: Mailing, options: GuardOptions) -> None:
    """Store the thresholds and canary on a mailing (that is not being sent)."""
    if not options.given:
        return
    check_guard_target(mailing, options)
    if options.hard is not None or options.soft is not None:
        await store.set_breaker(
            mailing.id,
            mailing.breaker_hard if options.hard is None else options.hard,
            mailing.breaker_soft if options.soft is None else options.soft,
        )
    if options.canary is not None:
        await store.put_canary(mailing.id, options.canary, ("canary", f"planned: {describe_canary(options.canary)}"))


def check_guard_target(mailing: Mailing, options: GuardOptions) -> None:
    """Refuse, before anything changes, what cannot be set on this mailing now."""
    if not options.given:
        return
    if mailing.section is Section.CURRENT:
        raise UserError(f"mailing {mailing.id} is {mailing.state.value}: stop it before changing its breaker or canary")
    if options.canary is not None and mailing.canary is not None and mailing.canary.phase is not CanaryPhase.PLANNED:
        raise UserError(f"mailing {mailing.id} has sent its canary already ({mailing.canary.phase.value}): --canary "
                        "applies to a mailing that has not started")


def describe_canary(canary: Canary) -> str:
    """"50 recipients at 1/s, then 10 min hold"."""
    size = f"{canary.size:g}% of the recipients" if canary.percent else f"{int(canary.size):,} recipients"
    return f"{size} at {canary.rate:g}/s, then a {canary.wait / 60:g} min hold"


def describe_thresholds(hard: float, soft: float, window: int, minimum: int) -> str:
    """"more than 5% failed, or more than 20% of one domain deferred, of the last 500 outcomes
    (at least 20)"; a threshold of 0 is off, and said to be (never "more than 0%")."""
    failed, deferred = f"more than {percent(hard)} failed", f"more than {percent(soft)} of one domain deferred"
    if not hard and not soft:
        return "off (failures: off, deferrals: off)"
    if not hard:
        checks = f"{deferred} (failures: off)"
    elif not soft:
        checks = f"{failed} (deferrals: off)"
    else:
        checks = f"{failed}, or {deferred}"
    return f"{checks}, of the last {window:,} outcomes (at least {minimum:,})"


def restart_line(before: Mailing) -> str:
    """What a restart of a mailing the breaker stopped adds to its one line."""
    return f" (the {before.tripped} — restarted with --force; the breaker starts a fresh window)" if before.tripped else ""


# ---- the `breaker` command ----------------------------------------------------------------------


def add_commands(sub: Any, add_command: Callable[..., argparse.ArgumentParser]) -> None:
    cmd = add_command(
        sub, "breaker", "show or change a mailing's breaker thresholds and canary",
        "Without options it shows the thresholds in effect (the mailing's own, or the global\n"
        "settings), its canary and what tripped, if anything did. With options it changes them\n"
        "on a mailing that is not current (draft, scheduled or stopped).",
        "  mailtower breaker 4\n"
        "  mailtower breaker 4 --breaker-hard 2% --breaker-soft 30%\n"
        "  mailtower breaker 4 --canary 5% --canary-wait 30 --json\n",
    )
    cmd.add_argument("id", type=_mailing_id, help="the mailing's id")
    add_guard_options(cmd)
    cmd.add_argument("--json", action="store_true", help="one JSON document on standard output")
    from .cli import add_global_options

    add_global_options(cmd, in_command=True)


def _mailing_id(text: str) -> int:
    from .cli import mailing_id

    return mailing_id(text)


def breaker_document(mailing: Mailing, settings: Settings) -> dict[str, Any]:
    t = Thresholds.of(settings, mailing)
    return {
        "id": mailing.id,
        "hard_percent": t.hard,
        "soft_percent": t.soft,
        "own": {"hard_percent": mailing.breaker_hard, "soft_percent": mailing.breaker_soft},
        "window": t.window,
        "minimum": t.minimum,
        "tripped": mailing.tripped,
        "canary": canary_json(mailing.canary),
    }


def canary_json(canary: Canary | None) -> dict[str, Any] | None:
    """A canary as `status --json` and `breaker --json` show it (until: epoch seconds, or null)."""
    if canary is None:
        return None
    return {"size": canary.spec(), "rate": canary.rate, "wait_minutes": canary.wait / 60, "phase": canary.phase.value,
            "total": canary.total, "done": canary.done, "until": canary.until}


async def cmd_breaker(args: argparse.Namespace, store: Store) -> int:
    options = guard_options(args, args.settings)
    mailing = await store.mailing(args.id)
    if options.given:
        await apply_guard_options(store, mailing, options)
        mailing = await store.mailing(args.id)
    doc = breaker_document(mailing, args.settings)
    if args.json:
        sys.stdout.write(json.dumps(doc) + "\n")
        return 0
    own = " (its own)" if mailing.breaker_hard is not None or mailing.breaker_soft is not None else ""
    print(f"breaker: {describe_thresholds(doc['hard_percent'], doc['soft_percent'], doc['window'], doc['minimum'])}{own}")
    if mailing.canary is not None:
        c = mailing.canary
        print(f"canary: {describe_canary(c)}; {c.phase.value}" + (f", {c.done:,}/{c.total:,}" if c.total else ""))
    if mailing.tripped:
        print(safe(f"tripped: {mailing.tripped}"))
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace, Store], Awaitable[int]]] = {"breaker": cmd_breaker}
