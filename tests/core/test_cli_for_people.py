"""Issue 11, "The command line, for people": help for every option, an example per command, global
options after the command, one line saying what changed (none with --quiet), a summary after
`run`, a log the background sender writes in, and progress only on a terminal.

Real CLI (in-process via `main`, or as a process), real SQLite, a real SMTP sink."""

from __future__ import annotations

import argparse
import fcntl
import importlib.metadata
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from mailtower.core.config import Settings
from mailtower.core.sink import Sink
from mailtower.tui.cli import build_parser
from tests.helpers import Cli, read_terminal, recipients, wait_until, write_csv

GLOBAL_FLAGS = ["--db", "--config", "--smtp-host", "--smtp-port", "--smtp-tls", "--connections", "--rate", "--quiet"]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def option_flags(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def new_args(tmp_path: Path, n: int, *extra: str, name: str = "Spring sale") -> list[str]:
    body = tmp_path / "body.txt"
    body.write_text("Hello {{ name }}\n", encoding="utf-8")
    people = write_csv(tmp_path / f"people-{n}.csv", recipients(n))
    return ["new", "--name", name, "--subject", "Hi", "--from", "news@example.org", "--text", str(body),
            "--recipients", str(people), *extra]


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    return lines[0]


# ---- item 17: help, examples, global options anywhere ------------------------------------------


def test_every_option_of_every_command_has_help_and_every_command_an_example() -> None:
    parser = build_parser()
    commands = subcommands(parser)
    assert {"new", "import", "status", "send-now", "unschedule", "stop", "restart", "delete", "schedule", "move",
            "remaining", "recipients", "limits", "resume", "run", "demo"} <= commands.keys()
    for name, sub in [("mailtower", parser), *commands.items()]:
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            what = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help is not argparse.SUPPRESS, f"{what} has no help text"
    for name, sub in commands.items():
        assert sub.description and len(sub.description) > 40, f"{name} has no description"
        assert sub.epilog and "examples:" in sub.epilog and f"mailtower {name}" in sub.epilog, f"{name}: no example"
        assert sub.formatter_class is argparse.RawDescriptionHelpFormatter  # examples keep their lines


def test_help_says_that_new_without_now_or_at_makes_a_draft(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["new", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "Without --now or --at the mailing is a DRAFT" in text
    assert "mailtower send-now ID" in text and "examples:" in text


def test_global_options_are_accepted_after_every_command() -> None:
    commands = subcommands(build_parser())
    for name, sub in commands.items():
        expected = set(GLOBAL_FLAGS) - ({"--rate", "--connections"} if name == "limits" else set())
        assert expected <= option_flags(sub), f"{name} lacks {expected - option_flags(sub)}"


def test_status_db_after_the_command_is_the_same_as_before(tmp_path: Path) -> None:
    db = tmp_path / "here.db"
    other = tmp_path / "elsewhere.db"  # what the environment names: the flag must win in both places
    cli = Cli(other)
    made = Cli(db)
    mid = made.ok(*new_args(tmp_path, 3)).strip()
    before = cli("--db", str(db), "status", "--json")
    after = cli("status", "--json", "--db", str(db))
    assert before[0] == after[0] == 0, (before, after)
    assert before[1] == after[1]
    assert json.loads(after[1])["inactive"][0]["id"] == int(mid)
    # Given in both places, the one after the command wins.
    both = cli("--db", str(other), "status", "--json", "--db", str(db))
    assert both[1] == before[1]
    # Every other global option too: --quiet after the command silences it.
    assert cli("send-now", mid, "--db", str(db), "--quiet") == (0, "", "")


def test_limits_rate_after_the_command_is_the_live_limit(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "m.db")
    code, out, err = cli("--rate", "50", "--connections", "3", "limits", "--rate", "7", "--connections", "2", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["rate"] == 7 and doc["connections"] == 2  # the live limits, stored
    assert "rate" in doc["changed_at"] and "connections" in doc["changed_at"]
    assert one_line(err).startswith("limits changed: rate 7, connections 2")
    help_text = subcommands(build_parser())["limits"].format_help()
    assert "Here --rate and --connections are these live limits" in help_text


# ---- item 18: one line saying what changed -------------------------------------------------------


def test_each_state_changing_command_says_what_changed_on_stderr(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "m.db")
    code, out, err = cli(*new_args(tmp_path, 120))
    assert code == 0 and out == "1\n"  # stdout stays the id a script reads
    line = one_line(err)
    assert line.startswith('created 1 "Spring sale" with 120 recipients; it is a draft')
    assert "mailtower send-now 1" in line

    def says(args: list[str], expected: str, out_expected: str = "") -> None:
        code, out, err = cli(*args)
        assert code == 0, err
        assert out == out_expected
        assert one_line(err) == expected

    says(["send-now", "1"], 'queued 1 "Spring sale": 120 recipients to send, position 1 of the queue')
    cli.ok(*new_args(tmp_path, 80, "--now", name="Autumn"))
    says(["move", "2", "up"], 'moved 2 "Autumn" up: position 1 of 2', out_expected="1\n")
    says(["stop", "1"], 'stopped 1 "Spring sale": 120 not yet received')
    says(["restart", "1"], 'restarted 1 "Spring sale": 120 recipients to send, position 2 of the queue')
    says(["stop", "1"], 'stopped 1 "Spring sale": 120 not yet received')
    says(["schedule", "1", "--at", "2031-01-02 09:30", "--tz", "Europe/Berlin"],
         'scheduled 1 "Spring sale" for 2031-01-02 09:30 Europe/Berlin (2031-01-02 08:30 UTC)')
    says(["unschedule", "1"], 'unscheduled 1 "Spring sale": it is a draft again (it was due 2031-01-02 09:30 Europe/Berlin)')
    more = write_csv(tmp_path / "more.csv", recipients(5, start=1000) + [{"email": "not-an-address"}])
    code, out, err = cli("import", "1", str(more))
    assert code == 0 and out == ""
    assert err.splitlines()[-1] == 'imported 5 recipients into mailing 1 "Spring sale" (1 rejected); it has 125 recipients now'
    says(["delete", "1"], 'deleted 1 "Spring sale" and its 125 recipients')


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_silences_the_line_and_leaves_the_data(tmp_path: Path, where: str) -> None:
    cli = Cli(tmp_path / "m.db")

    def quiet(*args: str) -> tuple[int, str, str]:
        return cli("--quiet", *args) if where == "before" else cli(*args, "--quiet")

    code, out, err = quiet(*new_args(tmp_path, 10, "--now"))
    assert (code, out, err) == (0, "1\n", "")
    cli.ok(*new_args(tmp_path, 10, "--now", name="Second"))
    assert quiet("move", "2", "top") == (0, "1\n", "")
    for args in (["stop", "1"], ["restart", "1"], ["stop", "1"],
                 ["schedule", "1", "--at", "2031-01-02 09:30", "--tz", "UTC"], ["unschedule", "1"], ["delete", "1"]):
        assert quiet(*args) == (0, "", ""), args


def test_success_lines_are_made_safe(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "m.db")
    cli.ok(*new_args(tmp_path, 3))
    target = tmp_path / "left\x1b]0;owned\x07.txt"
    code, out, err = cli("remaining", "1", "-o", str(target))
    assert code == 0 and target.exists()
    line = one_line(err)
    assert "\x1b" not in err and "\x07" not in err and "\\x1b]0;owned\\x07" in line


# ---- item 18: run --until-idle summary, the sender's log -----------------------------------------


def test_run_until_idle_ends_with_a_summary_line(tmp_path: Path, sink: Sink) -> None:
    cli = Cli(tmp_path / "m.db", sink.port, MAILTOWER_SMTP_CONNECTIONS="4")
    cli.ok(*new_args(tmp_path, 120, "--now"))
    cli.ok(*new_args(tmp_path, 80, "--now", name="Autumn"))
    code, out, err = cli("run", "--until-idle")
    assert code == 0 and out == ""
    line = one_line(err)
    assert re.fullmatch(r"run ended after [0-9.]+ s: 2 mailings finished, 200 sent, 0 failed, 0 deferred, 0 in doubt",
                        line), line
    assert len(sink.deliveries) == 200
    # Nothing new to send: the summary says so, and --quiet silences it.
    assert one_line(cli("run", "--until-idle")[2]).endswith(": 0 mailings finished, 0 sent, 0 failed, 0 deferred, 0 in doubt")
    assert cli("run", "--until-idle", "--quiet") == (0, "", "")
    # A first run on a database that does not exist yet has its summary too.
    fresh = Cli(tmp_path / "fresh.db", sink.port)
    assert one_line(fresh("run", "--until-idle")[2]).endswith(": 0 mailings finished, 0 sent, 0 failed, 0 deferred, 0 in doubt")


def test_background_sender_log_has_start_finish_and_stop(tmp_path: Path, sink: Sink) -> None:
    from mailtower.tui.app import handoff_log_path, launch_background_sender

    db = tmp_path / "handoff.db"
    cli = Cli(db)
    cli.ok(*new_args(tmp_path, 150, "--now"))
    settings = Settings(db=db, smtp_host="127.0.0.1", smtp_port=sink.port, config_path=None)  # type: ignore[call-arg]
    env = {"MAILTOWER_CONFIG": os.devnull}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        proc = launch_background_sender(settings)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        wait_until(lambda: proc.poll() is not None, timeout=60, what="the background sender to finish")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    log = handoff_log_path(settings).read_text()
    assert proc.returncode == 0, log
    assert len(sink.deliveries) == 150
    lines = log.splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d{4} INFO "

    def line(pattern: str) -> str:
        found = [x for x in lines if re.fullmatch(stamp + pattern, x)]
        assert len(found) == 1, f"{pattern!r} not once in:\n{log}"
        return found[0]

    line(f"sender started on {re.escape(str(db))} \\(pid {proc.pid}; relays .*\\)")
    line("limits: rate: .*")
    line('sending mailing 1 "Spring sale": 150 recipients left')
    line('mailing 1 "Spring sale" finished: 150 sent, 0 failed')
    line("sender stopped: nothing left to send")
    line(r"run ended after [0-9.]+ s: 1 mailing finished, 150 sent, 0 failed, 0 deferred, 0 in doubt")
    assert lines.index(next(x for x in lines if "sender started" in x)) < lines.index(
        next(x for x in lines if "sender stopped" in x))


def test_run_summary_says_who_was_sent_while_in_doubt(tmp_path: Path, sink: Sink) -> None:
    """Recipients a killed sender left `sending` may have had the message; this run sends them
    again. Its summary said only "10 sent, 0 in doubt", as if nothing could have gone twice."""
    import sqlite3

    db = tmp_path / "m.db"
    cli = Cli(db, sink.port)
    cli.ok(*new_args(tmp_path, 10, "--now"))
    with sqlite3.connect(db) as conn:  # what kill -9 leaves: rows marked before their final dot
        conn.execute("UPDATE recipients SET state = 'sending' WHERE id IN (SELECT id FROM recipients ORDER BY id LIMIT 3)")
    code, _, err = cli("run", "--until-idle")
    assert code == 0, err
    assert re.fullmatch(r"run ended after [0-9.]+ s: 1 mailing finished, 10 sent \(3 of them in doubt before: possibly "
                        r"twice\), 0 failed, 0 deferred, 0 in doubt", err.strip().splitlines()[-1]), err
    assert len(sink.deliveries) == 10


def test_run_log_says_when_it_waits_and_when_it_is_stopped(tmp_path: Path, sink: Sink) -> None:
    db = tmp_path / "m.db"
    cli = Cli(db, sink.port)
    cli.ok(*new_args(tmp_path, 5, "--at", "2031-01-02 09:30", "--tz", "Europe/Berlin"))
    log = tmp_path / "sender.log"
    runner = cli.popen("run", "--log", str(log), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: log.exists() and "waiting for" in log.read_text(), timeout=30, what="the waiting line")
        runner.send_signal(signal.SIGTERM)
        runner.wait(timeout=30)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait(5)
    text = log.read_text()
    assert runner.returncode == 0, text
    assert ('nothing to send now; waiting for mailing 1 "Spring sale" scheduled for 2031-01-02 08:30 UTC' in text)
    assert text.rstrip().splitlines()[-2].endswith("INFO sender stopped: asked to stop")
    assert "run ended after" in text.splitlines()[-1]
    # Not a terminal and a --log elsewhere: standard error has only the summary.
    err = runner.stderr.read().decode() if runner.stderr else ""
    assert one_line(err).startswith("run ended after")


@pytest.mark.parametrize("kind", ["database", "wal", "symlink", "hardlink", "directory", "fifo", "device"])
def test_run_log_must_be_a_regular_file_that_is_not_the_database(tmp_path: Path, kind: str) -> None:
    db = tmp_path / "m.db"
    cli = Cli(db)
    cli.ok(*new_args(tmp_path, 3, "--now"))
    size = db.stat().st_size
    target = {"database": db, "wal": Path(f"{db}-wal"), "symlink": tmp_path / "sym.log", "hardlink": tmp_path / "hard.log",
              "directory": tmp_path, "fifo": tmp_path / "fifo", "device": Path("/dev/null")}[kind]
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink":
        target.symlink_to(db)
    elif kind == "hardlink":
        os.link(db, target)
    code, out, err = cli("run", "--until-idle", "--log", str(target))
    reason = {"database": "is the database", "wal": "is the database", "symlink": "is the database",
              "hardlink": "is the database", "directory": "not a regular file",
              "fifo": "not a regular file", "device": "not a regular file"}[kind]
    assert code == 2 and one_line(err).startswith("mailtower: --log: ") and reason in err, err
    assert db.stat().st_size == size
    if kind == "hardlink":
        target.unlink()  # with two hard links the database itself is refused by every command
    assert json.loads(cli.ok("status", "--json"))["current"][0]["sent"] == 0  # nothing was sent


# ---- item 18: progress of long imports, on a terminal only ---------------------------------------


def big_list(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8") as f:
        f.write("email,name\n")
        for i in range(n):
            f.write(f"person{i}@example.com,Person {i}\n")
        f.write("broken,Nobody\n")
    return path


def run_with_stderr_on(tmp_path: Path, args: list[str], *, tty: bool, timeout: float = 180) -> tuple[int, str, str]:
    """Run mailtower as a process whose stderr is a pseudo-terminal (or a pipe); its exit status,
    stdout and everything written to stderr."""
    env = {**os.environ, "MAILTOWER_DB": str(tmp_path / "m.db"), "MAILTOWER_CONFIG": os.devnull}
    command = [sys.executable, "-m", "mailtower.tui.cli", *args]
    if not tty:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        return done.returncode, done.stdout, done.stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))  # 200 columns
    try:
        proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    finally:
        os.close(slave)
    deadline = time.monotonic() + timeout
    try:
        seen = read_terminal(master, proc, deadline)
        out = proc.stdout.read().decode() if proc.stdout else ""
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(master)
    return proc.returncode, out, seen.decode("utf-8", "replace")


@pytest.mark.timeout(240)
def test_import_progress_appears_on_a_terminal_only(tmp_path: Path) -> None:
    people = big_list(tmp_path, 80_000)
    body = tmp_path / "body.txt"
    body.write_text("Hi\n", encoding="utf-8")
    args = ["new", "--name", "Big", "--subject", "s", "--from", "news@example.org", "--text", str(body),
            "--recipients", str(people)]
    code, out, err = run_with_stderr_on(tmp_path, args, tty=True)
    assert code == 0 and out.strip() == "1", err
    updates = re.findall(r"\r([^\r\n]*?rows read[^\r\n]*?)\x1b\[K", err)
    assert updates, f"no progress line in {err!r}"
    assert re.search(r"big\.csv: [\d,]+ rows read, \d+ rejected, [\d,]+ rows/s, \d+%, about .* left", updates[0])
    # Rewritten in place (no new lines between updates), taken away at the end, then the success line.
    assert "created 1 \"Big\" with 80,000 recipients (1 rejected)" in err.splitlines()[-1]
    assert err.count("\n") <= 3, err  # the rejected row, the success line (a pty writes \r\n)
    # The same import with stderr redirected: no progress, no \r, no escape sequence.
    code, out, err = run_with_stderr_on(tmp_path, [*args, "--name", "Big 2"], tty=False)
    assert code == 0 and out.strip() == "2", err
    assert "\r" not in err and "\x1b" not in err and "rows read" not in err
    assert len(err.splitlines()) == 2  # the rejected row and the success line
    # --quiet on a terminal: no progress either.
    code, out, err = run_with_stderr_on(tmp_path, [*args, "--name", "Big 3", "--quiet"], tty=True)
    assert code == 0 and "rows read" not in err and "\x1b" not in err


@pytest.mark.parametrize("column", ["timezone", "Time_Zone", "zone"])
def test_a_time_zone_column_not_named_tz_is_named_in_a_warning(tmp_path: Path, column: str) -> None:
    """A file whose zone column is called "timezone" imports it as a merge field: every recipient
    keeps the mailing's zone, and a local-time schedule would be wrong without a word. `new` and
    `import` say so, once, and import as before."""
    cli = Cli(tmp_path / "m.db")
    first = write_csv(tmp_path / "zones.csv", recipients(3, **{column: "Asia/Tokyo"}))
    more = write_csv(tmp_path / "more.csv", recipients(3, start=100, **{column: "Asia/Tokyo"}))
    args = new_args(tmp_path, 3)
    args[args.index("--recipients") + 1] = str(first)
    for people, command in ((first, args), (more, ["import", "1", str(more)])):
        code, _, err = cli(*command)
        assert code == 0, err
        warnings = [line for line in err.splitlines() if line.startswith("mailtower: warning:")]
        assert warnings == [f"mailtower: warning: {people}: column {column!r} was imported as a merge field: recipients' "
                            "time zones are read only from a column named 'tz' (local-time schedules use them); "
                            "name the column 'tz' to set them"]
    with_tz = write_csv(tmp_path / "tz.csv", recipients(2, start=200, tz="Asia/Tokyo", **{column: "x"}))
    code, _, err = cli("import", "1", str(with_tz))
    assert code == 0 and "warning" not in err  # a `tz` column is there: the other is a field on purpose


def test_version_names_mailtower_and_its_zone_data(tmp_path: Path) -> None:
    """--version is looked up only when asked (not while the parser is built, at every start),
    and still says which mailtower and which IANA release, on standard output, exit 0."""
    from importlib.metadata import version

    from mailtower.core.timezones import tzdata_version

    code, out, err = Cli(tmp_path / "v.db")("--version")
    assert (code, err) == (0, "")
    assert out == f"mailtower {version('mailtower')} (tzdata {tzdata_version()})\n"
    assert not (tmp_path / "v.db").exists()  # nothing opened, nothing created


def test_the_command_line_starts_without_what_only_rare_paths_need() -> None:
    """A send's whole time counts from the process's start (issue 12): building the parser and
    loading the sender do not import package metadata (only --version needs it), the IDNA
    tables (only an internationalised domain does), nor what only `migrate` and `schedule` use."""
    probe = (
        "import sys\n"
        "from mailtower.tui import cli\n"
        "import mailtower.core.sender, mailtower.core.unsubscribe\n"
        "cli.build_parser()\n"
        "rare = ('importlib.metadata', 'idna', 'mailtower.core.migrate', 'mailtower.core.scheduling')\n"
        "print(sorted(m for m in rare if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "[]\n"


def test_the_mailtower_command_imports_with_the_collector_paused_then_resumes_it() -> None:
    """The installed `mailtower` script runs tui/launch.py (issue 12: the collector's passes over
    the start's imports were a tenth of them): it works like the command line, the imports run
    without the collector's passes, and afterwards collection is on again, with what they made
    frozen out of it."""
    scripts = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "mailtower"]
    assert [e.value for e in scripts] == ["mailtower.tui.launch:main"]

    def collections_during(start: str) -> tuple[int, str]:
        probe = (
            "import gc, sys\n"
            "passes = []\n"
            "gc.callbacks.append(lambda phase, info: phase == 'start' and passes.append(1))\n"
            "sys.argv = ['mailtower', '--version']\n"
            f"{start}\n"
            "print(len(passes), gc.isenabled(), gc.get_freeze_count() > 10000)\n"
        )
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stderr) == (0, "")
        *_, last = done.stdout.splitlines()
        count, rest = last.split(" ", 1)
        return int(count), rest

    launched, state = collections_during(
        "from mailtower.tui import launch\ntry:\n    launch.main()\nexcept SystemExit:\n    pass")
    plain, _ = collections_during("import mailtower.tui.cli")
    assert state == "True True"  # collecting again afterwards; the imports' objects frozen
    # Imported alone, the command line sees the collector start some 50 times; launched, only
    # the few passes after its imports (for --version) remain.
    assert launched * 3 < plain, (launched, plain)
    version = subprocess.run([sys.executable, "-m", "mailtower.tui.launch", "--version"], capture_output=True,
                             text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("mailtower ")
