"""The breaker's and the canary's values, refused as the project refuses bad input: one line naming
the option (or variable, or file and key) and the value as given, exit status 2, nothing changed.
Run as a person runs it: `python -m mailtower.tui.cli` in a child process, on a temporary database."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.core.test_edge_cli_small_faults import new_args

Snapshot = dict[str, list[tuple[object, ...]]]


def run_cli(db: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`mailtower ARGS` in a child process, with no configuration file unless `args` names one."""
    full_env = {**os.environ, "MAILTOWER_DB": str(db), "MAILTOWER_CONFIG": os.devnull, **env}
    return subprocess.run([sys.executable, "-m", "mailtower.tui.cli", *args], env=full_env,
                          capture_output=True, text=True, timeout=60)


def snapshot(db: Path) -> Snapshot:
    """Every row of every table: what "the database is unchanged" compares."""
    with sqlite3.connect(db) as conn:
        tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {table: conn.execute(f'SELECT * FROM "{table}"').fetchall() for table in tables}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A database holding one draft mailing, id 1, with its own thresholds and a canary."""
    path = tmp_path / "m.db"
    made = run_cli(path, *new_args(tmp_path, "--breaker-hard", "3%", "--breaker-soft", "30", "--canary", "2"))
    assert (made.returncode, made.stdout.strip()) == (0, "1"), made.stderr
    return path


def assert_refused(db: Path, result: subprocess.CompletedProcess[str], line: str, before: Snapshot) -> None:
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"mailtower: {line}\n")
    assert snapshot(db) == before


# ---- 1: out of range, from each source ------------------------------------------------------------

# (extra arguments, the line after "mailtower: "); the canary's pace and hold need --canary.
OUT_OF_RANGE_FLAGS = [
    (("--breaker-hard", "-5%"), "--breaker-hard: '-5%' must be at least 0"),
    (("--breaker-hard=-0.5",), "--breaker-hard: '-0.5' must be at least 0"),
    (("--breaker-soft", "101"), "--breaker-soft: '101' must be at most 100"),
    (("--breaker-soft", "100.5%"), "--breaker-soft: '100.5%' must be at most 100"),
    (("--canary", "2", "--canary-rate", "0"), "--canary-rate: '0' must be at least 0.01"),
    (("--canary", "2", "--canary-rate", "1e9"), "--canary-rate: '1e9' must be at most 10000"),
    (("--canary", "2", "--canary-wait", "-1"), "--canary-wait: '-1' must be at least 0"),
    (("--canary", "2", "--canary-wait", "20000"), "--canary-wait: '20000' must be at most 10080"),
]


@pytest.mark.parametrize("command", ["new", "breaker"])
def test_out_of_range_guard_options_quote_the_value_as_typed(tmp_path: Path, db: Path, command: str) -> None:
    before = snapshot(db)
    for extra, line in OUT_OF_RANGE_FLAGS:
        args = new_args(tmp_path, *extra) if command == "new" else ["breaker", "1", *extra]
        assert_refused(db, run_cli(db, *args), line, before)


def test_out_of_range_guard_variables_quote_the_value_as_set(db: Path) -> None:
    before = snapshot(db)
    for var, value, problem in [
        ("MAILTOWER_BREAKER_HARD", "-5%", "must be at least 0"),
        ("MAILTOWER_BREAKER_SOFT", "101", "must be at most 100"),
        ("MAILTOWER_BREAKER_WINDOW", "5", "must be at least 10"),
        ("MAILTOWER_BREAKER_MIN", "0", "must be at least 1"),
        ("MAILTOWER_CANARY_RATE", "0.001", "must be at least 0.01"),
        ("MAILTOWER_CANARY_WAIT", "-1", "must be at least 0"),
    ]:
        result = run_cli(db, "breaker", "1", "--breaker-hard", "2%", **{var: value})
        assert_refused(db, result, f"{var}: '{value}' {problem}", before)


def test_out_of_range_guard_keys_in_the_config_file_quote_the_value_as_written(tmp_path: Path, db: Path) -> None:
    before = snapshot(db)
    config = tmp_path / "mailtower.toml"
    # A TOML string is quoted, a TOML number is shown as written (as "nan is not a finite number" is).
    for key, written, problem in [
        ("breaker_hard", '"-5%"', "'-5%' must be at least 0"),
        ("breaker_soft", "101", "101 must be at most 100"),
        ("breaker_window", "5", "5 must be at least 10"),
        ("breaker_min", "0", "0 must be at least 1"),
        ("canary_rate", "1e-3", "1e-3 must be at least 0.01"),
        ("canary_wait", "-1.5", "-1.5 must be at least 0"),
    ]:
        text = f"{key} = {written}\n"
        config.write_text(text, encoding="utf-8")
        result = run_cli(db, "--config", str(config), "breaker", "1", "--breaker-hard", "2%")
        assert_refused(db, result, f"{config} {key}: {problem}", before)
        assert config.read_text(encoding="utf-8") == text


# ---- 2: white space after the sign ------------------------------------------------------------------

NOT_A_CANARY = "is not a number of recipients (N) or a percentage (P%)"


@pytest.mark.parametrize("command", ["new", "breaker"])
def test_white_space_after_the_sign_is_refused_by_every_guard_option(tmp_path: Path, db: Path, command: str) -> None:
    before = snapshot(db)
    for extra, line in [
        (("--canary", "+ 5%"), f"--canary: '+ 5%' {NOT_A_CANARY}"),
        (("--canary=+ 5%",), f"--canary: '+ 5%' {NOT_A_CANARY}"),
        (("--canary", "- 5%"), f"--canary: '- 5%' {NOT_A_CANARY}"),
        (("--canary", "+\t5%"), f"--canary: '+\\t5%' {NOT_A_CANARY}"),
        (("--canary", "+ 5"), f"--canary: '+ 5' {NOT_A_CANARY}"),
        (("--breaker-hard", "+ 5%"), "--breaker-hard: '+ 5%' is not a number"),
        (("--breaker-soft", "- 5"), "--breaker-soft: '- 5' is not a number"),
        (("--canary", "2", "--canary-rate", "+ 5"), "--canary-rate: '+ 5' is not a number"),
        (("--canary", "2", "--canary-wait", "+ 5"), "--canary-wait: '+ 5' is not a number"),
    ]:
        args = new_args(tmp_path, *extra) if command == "new" else ["breaker", "1", *extra]
        assert_refused(db, run_cli(db, *args), line, before)


def test_canary_takes_white_space_where_a_threshold_does(db: Path) -> None:
    """Never after the sign; around the whole value, or before "%", white space stays allowed, for
    --canary as for --breaker-hard ("5 %" is how the refusals themselves write a percentage)."""
    refused = run_cli(db, "breaker", "1", "--canary", "+ 5%")
    assert (refused.returncode, refused.stderr) == (2, f"mailtower: --canary: '+ 5%' {NOT_A_CANARY}\n")
    for canary, hard in [(" 5% ", " 5% "), ("5 %", "5 %"), ("+5 %", "+5 %")]:
        result = run_cli(db, "breaker", "1", "--canary", canary, "--breaker-hard", hard)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[0].startswith("breaker: more than 5% failed"), result.stdout
        assert "canary: 5% of the recipients" in result.stdout, result.stdout
