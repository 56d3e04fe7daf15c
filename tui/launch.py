"""The `mailtower` command's entry point: imports the command line (tui/cli.py) with the
garbage collector paused, then runs it.

Importing what `mailtower run` needs makes some 45,000 objects the collector tracks (classes,
functions, compiled patterns), none of them garbage, and its passes over them while they are
made were about a tenth of the import time (~35 ms of ~330 ms on the project's machine, issue
12: a whole `run` of 4,000 messages takes ~7 s, so this is half a percent of its rate). After
the imports they are frozen (`gc.freeze`: kept out of every later collection, which then has
less to look at while sending) and collection resumes as it was.

`python -m mailtower.tui.cli` still works (the tests use it); it only misses the pause.
"""

from __future__ import annotations

import gc
import sys


def main() -> int:
    collecting = gc.isenabled()
    gc.disable()
    try:
        from mailtower.tui import cli
    finally:
        gc.freeze()
        if collecting:
            gc.enable()
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
