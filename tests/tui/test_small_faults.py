"""Small dashboard faults: the Stop dialog's count follows the sending; the Set Schedule dialog
explains the Etc/GMT sign; names with CR or LF are told apart in the rows."""

from __future__ import annotations

from pathlib import Path

from mailtower.core.domain import MailingState
from mailtower.core.lifecycle import Lifecycle

from .conftest import fake_progress, new_mailing, wait_for
from .pilot import dashboard_app as dashboard, opened, running, state_of
from .test_safe_dashboard import choose, question


async def test_the_stop_dialog_follows_the_remaining_count_while_it_sends(tmp_path: Path) -> None:
    db = tmp_path / "stop.db"
    async with opened(db) as store:
        mailing_id = await new_mailing(store, tmp_path, "Going out", 20)
        await Lifecycle(store).send_now(mailing_id)
    app = dashboard(db)
    async with running(app) as pilot:
        await choose(pilot, "stop")
        dialog = await question(pilot)
        assert "20 recipients have not received it yet" in dialog.message
        async with opened(db) as store:  # the sender goes on behind the dialog
            await fake_progress(store, mailing_id, 7, failed=1)
        await wait_for(lambda: "12 recipients have not received it yet" in dialog.message, what=dialog.message)
        shown = str(dialog.query_one("#confirm-message").render())
        assert "12 recipients have not received it yet" in shown, shown
        assert app.screen is dialog and app.screen.focused is not None and app.screen.focused.id == "cancel"
        await pilot.press("escape")
        await wait_for(lambda: app.screen is app.dashboard)
    assert await state_of(db, mailing_id) is MailingState.QUEUED  # kept as it was (no sender in this test)


async def test_the_schedule_dialog_explains_the_etc_gmt_sign_as_the_cli_does(tmp_path: Path) -> None:
    from textual.widgets import Checkbox, Input

    from mailtower.core.domain import Section
    from mailtower.core.timezones import reversed_sign_note
    from mailtower.tui.screens.schedule import ScheduleDialog

    from .pilot import focus_row

    db = tmp_path / "etc.db"
    async with opened(db) as store:
        draft = await new_mailing(store, tmp_path, "Plain draft", 3)
    note = reversed_sign_note("Etc/GMT+5")
    assert note == "Etc/GMT+5 is UTC-05:00 (the POSIX sign is reversed)"  # the CLI's `note:` line
    app = dashboard(db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.INACTIVE, draft)
        await choose(pilot, "schedule")
        await wait_for(lambda: isinstance(app.screen, ScheduleDialog) and app.screen.is_mounted, what="the dialog")
        dialog = app.screen
        assert isinstance(dialog, ScheduleDialog)
        dialog.query_one("#date", Input).value = "2099-06-01"
        dialog.query_one("#zone", Input).value = "Etc/GMT+5"
        await pilot.pause()

        def problem() -> str:
            return str(dialog.query_one("#problem").render())

        await wait_for(lambda: note in problem(), what=problem())
        assert dialog.query_one("#problem").display and not dialog.query_one("#submit").disabled
        dialog.query_one("#local-time", Checkbox).value = True  # the zone of recipients without one
        await pilot.pause()
        await wait_for(lambda: note in problem(), what=problem())
        dialog.query_one("#zone", Input).value = "America/Chicago"  # no note for another zone
        await pilot.pause()
        await wait_for(lambda: "POSIX" not in problem(), what=problem())


async def test_names_with_cr_or_lf_are_told_apart_from_a_space_in_the_rows(tmp_path: Path) -> None:
    import sqlite3

    from rich.text import Text

    from mailtower.core.domain import Section

    from .pilot import table

    db = tmp_path / "names.db"
    names = {"cr": "Spring\rsale", "lf": "Spring\nsale", "crlf": "Spring\r\nsale", "space": "Spring sale"}
    ids: dict[str, int] = {}
    async with opened(db) as store:
        for key in names:
            ids[key] = await new_mailing(store, tmp_path, f"placeholder {key}", 2)
        await Lifecycle(store).send_now(ids["lf"])  # one in Current too
    with sqlite3.connect(db) as conn:  # as an older version could have stored them (input refuses them now)
        for key, name in names.items():
            conn.execute("UPDATE mailings SET name = ? WHERE id = ?", (name, ids[key]))
    app = dashboard(db)
    async with running(app, size=(120, 30)) as pilot:
        await wait_for(lambda: len(table(app, Section.INACTIVE).keys) == 3, what="the inactive rows")
        await pilot.pause()

        def cell(key: str) -> str:
            section = Section.CURRENT if key == "lf" else Section.INACTIVE
            value = table(app, section).get_cell(str(ids[key]), "name")
            assert isinstance(value, Text)
            return value.plain.strip()

        shown = {key: cell(key) for key in names}
        assert shown == {"cr": "Spring\\rsale", "lf": "Spring\\nsale", "crlf": "Spring\\r\\nsale", "space": "Spring sale"}
