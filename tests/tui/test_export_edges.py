"""The dashboard's export dialog applies the rules of every file mailtower writes (issue 10).

It refuses the database and its companion files however they are named, even with Replace
ticked, and neutralises spreadsheet formulas; the database is unchanged afterwards.
"""

from __future__ import annotations

import csv
import hashlib
import sqlite3
from pathlib import Path

import pytest
from textual.widgets import Button, Checkbox, Input

from mailtower.tui.screens import RemainingScreen
from mailtower.tui.screens.remaining import ExportDialog
from tests.helpers import until
from tests.tui.test_screens import Host, opened, stopped_mailing, text_of


def fingerprint(db: Path) -> tuple[int, str]:
    with sqlite3.connect(db) as conn:
        count = conn.execute("SELECT count(*) FROM recipients").fetchone()[0]
        dump = hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
    return count, dump


@pytest.mark.parametrize("alias", ["db", "db-wal", "symlink", "relative"])
async def test_export_dialog_refuses_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alias: str) -> None:
    db, mailing_id = await stopped_mailing(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link.csv").symlink_to(db)
    target = {"db": str(db), "db-wal": f"{db}-wal", "symlink": "link.csv", "relative": f"./{db.name}"}[alias]
    before = fingerprint(db)
    app = Host(db, mailing_id, RemainingScreen)
    async with app.run_test(size=(100, 30)) as pilot:
        await opened(pilot, RemainingScreen)
        await pilot.press("e")
        dialog = await opened(pilot, ExportDialog)
        dialog.query_one("#export-path", Input).value = target
        dialog.query_one("#export-overwrite", Checkbox).value = True
        await until(pilot, lambda: "will not write over" in text_of(dialog.query_one("#export-note")))
        assert dialog.query_one("#export-ok", Button).disabled
        await pilot.press("enter")  # refused: the dialog stays open
        assert isinstance(app.screen, ExportDialog)
        await pilot.press("escape")
    assert fingerprint(db) == before


async def test_export_neutralises_formulas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, mailing_id = await stopped_mailing(tmp_path)
    with sqlite3.connect(db) as conn:  # names as a hostile import or a relay's reply would leave them
        conn.execute("UPDATE recipients SET name = '=HYPERLINK(\"http://evil.example\")', "
                     "last_error = '@SUM(1) -2+3' WHERE mailing_id = ?", (mailing_id,))
    monkeypatch.chdir(tmp_path)
    app = Host(db, mailing_id, RemainingScreen)
    async with app.run_test(size=(100, 30)) as pilot:
        await opened(pilot, RemainingScreen)
        await pilot.press("e")
        await opened(pilot, ExportDialog)
        await pilot.press("enter")
        await until(pilot, lambda: any("recipients written" in str(n.message) for n in app._notifications))
    with (tmp_path / f"remaining-{mailing_id}.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[1:]
    assert rows and all(r[1] == "'=HYPERLINK(\"http://evil.example\")" and r[5] == "'@SUM(1) -2+3" for r in rows)


async def test_export_dialog_says_when_a_name_is_too_long(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, mailing_id = await stopped_mailing(tmp_path)
    monkeypatch.chdir(tmp_path)
    app = Host(db, mailing_id, RemainingScreen)
    async with app.run_test(size=(100, 30)) as pilot:
        await opened(pilot, RemainingScreen)
        await pilot.press("e")
        dialog = await opened(pilot, ExportDialog)
        dialog.query_one("#export-path", Input).value = "x" * 300 + ".csv"
        await until(pilot, lambda: "too long" in text_of(dialog.query_one("#export-note")))
        assert dialog.query_one("#export-ok", Button).disabled
        await pilot.press("escape")
