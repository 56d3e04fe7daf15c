"""Benchmarks start `mailtower` as a new process for every round, the way an operator's shell
does: through the `mailtower` command's entry point (`MAILTOWER`, pyproject's [project.scripts]:
tui/launch.py, which imports with the garbage collector paused), and its modules should be in
bytecode, as installing the package leaves them. With PYTHONDONTWRITEBYTECODE set (as in this
project's shells) an editable checkout otherwise compiles every module from source at each
start: about 0.1 s of CPU per `mailtower run`, counted against mailtower's rate and not against
the tool it is compared with (whose code is compiled already)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAILTOWER = [sys.executable, "-m", "mailtower.tui.launch"]  # what the installed `mailtower` script runs


def precompile(timeout: float = 600.0) -> None:
    """Compile mailtower's own modules to bytecode once, before the rounds."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "core"), str(ROOT / "tui")],
                   check=True, stdout=subprocess.DEVNULL, timeout=timeout)
