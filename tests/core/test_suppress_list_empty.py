"""`mailtower suppress list` on an empty list: nothing on standard output, one line saying so."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import Cli


def test_an_empty_suppression_list_says_so_and_prints_nothing(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "t.db")
    for extra in ((), ("--json",)):
        code, out, err = cli("suppress", "list", *extra)
        assert (code, out, err) == (0, "", "the suppression list is empty\n")
    code, out, err = cli("suppress", "list", "--quiet")
    assert code == 0 and out == "" and err == ""
    cli.ok("suppress", "add", "a@example.com")
    code, out, err = cli("suppress", "list")
    assert code == 0 and out.startswith("a@example.com\t") and "empty" not in err
