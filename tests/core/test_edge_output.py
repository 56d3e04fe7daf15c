"""What a command writes to: standard output that cannot be written or is closed, and a --log
file whose disk is full (tui/output.py). Through the real `mailtower` command."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mailtower.core.sink import Sink
from tests.helpers import Cli, recipients, write_csv

pytestmark = pytest.mark.sqlite_only  # about this process's files and streams, not the engine


def new_args(tmp_path: Path, n: int = 3) -> list[str]:
    body = tmp_path / "body.txt"
    body.write_text("Hello\n", encoding="utf-8")
    people = write_csv(tmp_path / "people.csv", recipients(n))
    return ["new", "--name", "Dup", "--subject", "s", "--from", "news@example.org", "--text", str(body),
            "--recipients", str(people)]


def mailtower(db: Path, *args: str, port: int | None = None, **kw: object) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "MAILTOWER_DB": str(db), "MAILTOWER_CONFIG": os.devnull}
    if port is not None:
        env.update(MAILTOWER_SMTP_HOST="127.0.0.1", MAILTOWER_SMTP_PORT=str(port))
    return subprocess.run([sys.executable, "-m", "mailtower.tui.cli", *args], env=env, stderr=subprocess.PIPE,
                          timeout=60, **kw)  # type: ignore[call-overload]


def mailings(db: Path) -> list[dict[str, object]]:
    doc = json.loads(Cli(db).ok("status", "--json"))
    return [m for section in ("current", "scheduled", "inactive") for m in doc[section]]


def test_new_whose_id_cannot_be_printed_says_it_was_created(tmp_path: Path) -> None:
    """`new --now > /dev/full` said "No space left on device (database m.db)" with exit 2 after
    the mailing was queued: a script retrying it sent everyone the mail twice."""
    db = tmp_path / "m.db"
    with open("/dev/full", "w") as full:
        done = mailtower(db, *new_args(tmp_path), "--now", stdout=full)
    err = done.stderr.decode().strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1, err
    created = mailings(db)
    assert len(created) == 1 and created[0]["state"] == "queued"
    assert err == (f"mailtower: mailing {created[0]['id']} was created and queued, but its id could not be written to "
                   "standard output: No space left on device; see `mailtower status`, do not create it again")


def test_a_change_whose_output_cannot_be_written_is_not_blamed_on_the_database(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    Cli(db).ok(*new_args(tmp_path))
    with open("/dev/full", "w") as full:
        done = mailtower(db, "limits", "--rate", "7", stdout=full)
    lines = done.stderr.decode().strip().splitlines()
    assert done.returncode == 2 and lines[0].startswith("limits changed: rate 7"), lines
    assert lines[1:] == ["mailtower: cannot write to standard output: No space left on device (what the command did "
                         "before that stays done)"]


def test_a_closed_standard_output_is_refused_before_anything_is_done(tmp_path: Path) -> None:
    """`new ... >&-`: the mailing was queued, then uvloop aborted the process on a file that had
    taken the closed number (exit 134)."""
    db = tmp_path / "m.db"
    Cli(db).ok("limits")
    done = mailtower(db, *new_args(tmp_path), "--now", preexec_fn=lambda: os.close(1))
    err = done.stderr.decode().strip()
    assert done.returncode == 2, err
    assert err == ("mailtower: standard output is closed: `new` writes the new mailing's id there; redirect it "
                   "(> /dev/null to drop it)")
    assert mailings(db) == []


def test_other_commands_work_with_a_closed_standard_output_or_error(tmp_path: Path) -> None:
    """`stop` writes nothing a script reads: it was refused as if it did. With standard error
    closed, messages went to standard output (print to a closed stream falls back to it), where
    `id=$(mailtower new ...)` read two lines."""
    db = tmp_path / "m.db"
    Cli(db).ok(*new_args(tmp_path), "--now")
    done = mailtower(db, "stop", "1", preexec_fn=lambda: os.close(1))
    assert done.returncode == 0, done.stderr
    assert mailings(db)[0]["state"] == "stopped"
    done = mailtower(db, *new_args(tmp_path), stdout=subprocess.PIPE, preexec_fn=lambda: os.close(2))
    assert done.returncode == 0 and done.stdout.decode().split() == ["2"], done.stdout
    done = mailtower(db, "stop", "99", stdout=subprocess.PIPE, preexec_fn=lambda: os.close(2))
    assert done.returncode == 2 and done.stdout == b""


def test_run_with_a_closed_standard_output_sends(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    Cli(db).ok(*new_args(tmp_path), "--now")
    with Sink() as sink:
        done = mailtower(db, "run", "--until-idle", port=sink.port, preexec_fn=lambda: os.close(1))
        assert done.returncode == 0, done.stderr
        assert len(sink.deliveries) == 3


def test_a_log_that_cannot_be_written_is_one_warning_and_sending_goes_on(tmp_path: Path) -> None:
    """`run --log FILE` on a full disk: a traceback of ~40 lines for each line it tried to write,
    then exit 2 blaming the database after all mail had gone. The file here has passed the size
    this process may write (RLIMIT_FSIZE: every append fails with EFBIG, as on a full disk)."""
    db = tmp_path / "m.db"
    Cli(db).ok(*new_args(tmp_path, 20), "--now")
    log = tmp_path / "run.log"
    limit = 64 << 20
    with open(log, "wb") as handle:
        handle.truncate(limit + 1)  # sparse: no disk used

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    with Sink() as sink:
        done = mailtower(db, "run", "--until-idle", "--log", str(log), port=sink.port, stdout=subprocess.DEVNULL,
                         preexec_fn=small_files)
        delivered = len(sink.deliveries)
    lines = done.stderr.decode().strip().splitlines()
    assert done.returncode == 0 and delivered == 20, lines
    assert lines[0] == f"mailtower: warning: cannot write the log {log}: File too large; the sender goes on without it"
    assert len(lines) == 2 and lines[1].startswith("run ended after"), lines
