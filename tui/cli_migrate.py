"""`mailtower migrate --to postgresql://...`: the command line of core/migrate.py.

The source is the SQLite database the usual way names it (--db, MAILTOWER_DB, the config file,
the default); it is opened read-only and never through the store (whose open would upgrade it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from mailtower.core.display import safe

from . import loops


def add_commands(sub: Any, add_command: Callable[..., argparse.ArgumentParser]) -> None:
    from .cli import add_global_options

    parser = add_command(
        sub, "migrate", "copy this SQLite database into an empty PostgreSQL database",
        "Copies mailings, the recipients ledger, events, settings, suppression, wave groups, the\n"
        "canary samples and the database's secrets, keeping every id, in one transaction; the\n"
        "counts per table and per mailing are verified before it commits. The SQLite file is\n"
        "opened read-only and left as it was. Refused while a sender is sending from it, and when\n"
        "the PostgreSQL database already holds mailtower data. Needs mailtower[postgres].",
        "  mailtower migrate --db ~/mailtower.db --to postgresql://mailtower@db.example:5432/mailtower\n",
    )
    parser.add_argument("--to", required=True, metavar="URL", help="the PostgreSQL database (postgresql://...)")
    add_global_options(parser, in_command=True)


def cmd_migrate(args: argparse.Namespace, settings: Any) -> int:
    # Imported here: every other command (`run` above all, whose start counts, issue 12) does without it.
    from mailtower.core.migrate import migrate, parse_to

    target = parse_to(args.to)
    result = loops.run(migrate(settings.db, target, lambda line: print(safe(line), flush=True)))
    for line in result.disagreements:
        print(f"mailtower: warning: {safe(line)}", file=sys.stderr)
    print(safe(f"migrated {settings.db} to {target}: {result.rows:,} rows in {len(result.tables)} tables, "
               f"{result.seconds:.1f} s; verified"), flush=True)
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace, Any], int]] = {"migrate": cmd_migrate}
