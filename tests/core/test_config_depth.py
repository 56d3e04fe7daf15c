"""A configuration file nested too deeply is invalid TOML to mailtower: one line naming the file,
exit 2, nothing created (it used to end in "internal error: RecursionError", exit 70)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailtower.core.config import load_settings
from mailtower.core.errors import UserError
from tests.helpers import Cli

DEPTH = 500  # far past Python's recursion limit for tomllib (about 1000 frames, two or more a level)


def nested(kind: str, depth: int) -> str:
    if kind == "array":
        return "[" * depth + "]" * depth
    return "{a=" * depth + "1" + "}" * depth


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("kind", ["array", "table"])
@pytest.mark.parametrize("named_by", ["MAILTOWER_CONFIG", "--config"])
def test_a_deeply_nested_config_is_one_line_exit_2_and_creates_nothing(tmp_path: Path, kind: str, named_by: str) -> None:
    config = tmp_path / "d.toml"
    config.write_text(f"a = {nested(kind, DEPTH)}\n", encoding="utf-8")
    db = tmp_path / "e.db"
    if named_by == "--config":
        code, out, err = Cli(db)("--config", str(config), "limits")
    else:
        code, out, err = Cli(db, MAILTOWER_CONFIG=str(config))("limits")
    line = one_line(err)
    assert code == 2 and out == ""
    assert named_by in line and str(config) in line and "not valid TOML" in line and "nested too deeply" in line
    assert not db.exists()


def test_the_command_line_case_of_the_report(tmp_path: Path) -> None:
    # As found: `mailtower --db e.db limits` in its own process (its own stack depth).
    config = tmp_path / "d.toml"
    config.write_text("a=" + nested("array", DEPTH) + "\n", encoding="utf-8")
    env = {**os.environ, "MAILTOWER_CONFIG": str(config)}
    env.pop("MAILTOWER_DB", None)
    result = subprocess.run([sys.executable, "-m", "mailtower.tui.cli", "--db", str(tmp_path / "e.db"), "limits"],
                            env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert "nested too deeply" in one_line(result.stderr) and str(config) in result.stderr
    assert not (tmp_path / "e.db").exists()


@pytest.mark.parametrize("key", ["a", "db", "dkim_headers", "domains", "relays", "smtp"])
@pytest.mark.parametrize("kind", ["array", "table"])
def test_no_depth_under_any_key_is_an_internal_error(tmp_path: Path, key: str, kind: str) -> None:
    # Depths that parse, and depths that do not: every one is a UserError naming the file.
    config = tmp_path / "c.toml"
    for depth in (2, 50, 150, 250, 350, 450, 1000):  # (`dkim_headers = []` is a valid empty list)
        config.write_text(f"{key} = {nested(kind, depth)}\n", encoding="utf-8")
        with pytest.raises(UserError) as caught:
            load_settings({}, {}, config, config_flag="--config")
        assert str(config) in str(caught.value) and "\n" not in str(caught.value), (depth, caught.value)
