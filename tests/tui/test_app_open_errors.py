"""The dashboard on a database that cannot be opened: one line on stderr and exit 2, never a blank
screen or a process that does not end."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailtower.core.config import Settings
from mailtower.tui.app import DashboardApp
from mailtower.tui.cli import main

TIMEOUT = 60  # seconds; only a hang gets near it


def _not_sqlite(tmp: Path) -> Path:
    path = tmp / "notes.db"
    path.write_text("not a database\n" * 300)
    return path


def _fifo(tmp: Path) -> Path:
    path = tmp / "pipe.db"
    os.mkfifo(path)
    return path


def _directory(tmp: Path) -> Path:
    path = tmp / "folder.db"
    path.mkdir()
    return path


def _missing_directory(tmp: Path) -> Path:
    return tmp / "no-such-dir" / "m.db"


CASES = {
    "not-sqlite": (_not_sqlite, "not a SQLite database"),
    "fifo": (_fifo, "FIFO"),
    "directory": (_directory, "is a directory"),
    "dev-null": (lambda tmp: Path("/dev/null"), "character device"),
    "missing-directory": (_missing_directory, "does not exist"),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_dashboard_start_on_a_bad_database_is_one_line_and_exit_2(tmp_path: Path, kind: str) -> None:
    """`mailtower --db BAD` in a real process under a pseudo-terminal-less run: it must end by
    itself (a hang or a blank screen fails on the timeout) with one line naming the file."""
    make, reason = CASES[kind]
    db = make(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "mailtower.tui.cli", "--db", str(db)],
        env={**os.environ, "MAILTOWER_CONFIG": os.devnull, "TERM": "xterm-256color"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and str(db) in lines[0] and reason in lines[0], result.stderr
    assert result.stdout == ""  # the screen was never taken


def test_dashboard_main_in_process_reports_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _not_sqlite(tmp_path)
    code = main(["--db", str(db)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"mailtower: database {db}: it is not a SQLite database"]


def test_dashboard_app_exits_with_the_line_when_its_database_breaks_at_mount(tmp_path: Path) -> None:
    """If the file goes bad between the check and the mount, the app still leaves with exit 2
    and keeps the one line to print, instead of showing an empty dashboard."""
    db = _not_sqlite(tmp_path)

    async def scenario() -> DashboardApp:
        app = DashboardApp(Settings(db=db), start_sender=False, hand_off_on_quit=False)
        async with app.run_test() as pilot:
            for _ in range(500):  # bounded: the exit happens during mount
                if app.return_code is not None:
                    break
                await pilot.pause(0.01)
        return app

    app = asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
    assert app.return_code == 2
    assert app.open_error == f"mailtower: database {db}: it is not a SQLite database"
