"""The dashboard's "Retry failed" action (issue 13, item 9): offered for a finished mailing with
failures, asks first with the focus on the safe choice, and takes its own key to go ahead."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from textual.widgets import Button

from mailtower.core.domain import MailingState, RecipientState, Section
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.store import Outcome
from mailtower.tui.screens.confirm import ConfirmDialog

from .conftest import new_mailing, wait_for
from .pilot import dashboard_app, focus_row, opened, running, state_of
from .test_app import choose, confirm


async def finished_with_failures(db: Path, tmp_path: Path) -> int:
    """A completed mailing of 5: 3 sent, one refused by policy (may pass), one unknown mailbox."""
    async with opened(db) as store:
        mailing_id = await new_mailing(store, tmp_path, "Autumn news", 5)
        lifecycle = Lifecycle(store)
        await lifecycle.send_now(mailing_id)
        await lifecycle.start(mailing_id)
        claimed, _ = await store.record_and_claim(mailing_id, [], 10)
        outcomes = [Outcome(c.id, RecipientState.SENT, 250) for c in claimed[:3]]
        outcomes.append(Outcome(claimed[3].id, RecipientState.FAILED, 554, "5.7.1 rejected by policy"))
        outcomes.append(Outcome(claimed[4].id, RecipientState.FAILED, 550, "5.1.1 no such user", suppress=True))
        await store.record_and_claim(mailing_id, outcomes, 0)
        assert await lifecycle.complete_if_done(mailing_id)
    return mailing_id


def states(db: Path, mailing_id: int) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [s for (s,) in conn.execute("SELECT state FROM recipients WHERE mailing_id = ? ORDER BY id", (mailing_id,))]


async def test_retry_failed_asks_on_the_safe_choice_then_requeues_what_may_pass(tmp_path: Path) -> None:
    db = tmp_path / "retry.db"
    mailing_id = await finished_with_failures(db, tmp_path)
    app = dashboard_app(db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.INACTIVE, mailing_id)
        menu = await choose(pilot, "retry")
        assert any(o.key == "retry" and o.label == "Retry failed (2 failed)" for o in menu.offers)
        await wait_for(lambda: isinstance(app.screen, ConfirmDialog), what="the confirmation")
        dialog = app.screen
        assert isinstance(dialog, ConfirmDialog) and dialog.title_text == "Retry failed"
        assert app.focused is dialog.query_one("#cancel", Button)  # Enter alone keeps it as it is
        await pilot.press("enter")
        await wait_for(lambda: not isinstance(app.screen, ConfirmDialog), what="the dialog to close")
        assert await state_of(db, mailing_id) is MailingState.COMPLETED

        await choose(pilot, "retry")
        await wait_for(lambda: isinstance(app.screen, ConfirmDialog), what="the confirmation")
        dialog = app.screen
        assert isinstance(dialog, ConfirmDialog) and dialog.key == "r"
        await pilot.press("r")

        async def queued() -> bool:
            return await state_of(db, mailing_id) is MailingState.QUEUED

        await wait_for(queued, what="the mailing to be queued again")
    # Only the policy refusal goes out again; the unknown mailbox stays failed (it is suppressed).
    assert states(db, mailing_id) == ["sent", "sent", "sent", "pending", "failed"]


async def test_send_now_of_a_large_mailing_without_unsubscribe_warns(tmp_path: Path) -> None:
    """The dashboard says what `send-now` says on the command line (issue 13, item 7)."""
    db = tmp_path / "big.db"
    async with opened(db) as store:
        mailing_id = await new_mailing(store, tmp_path, "Big list", 5000)
    app = dashboard_app(db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.INACTIVE, mailing_id)
        await choose(pilot, "send-now")
        await confirm(pilot)
        await wait_for(lambda: any("no unsubscribe link" in str(n.message) for n in app._notifications),
                       what="the warning")
    assert await state_of(db, mailing_id) is MailingState.QUEUED


async def test_remaining_screen_says_how_many_were_skipped_as_suppressed(tmp_path: Path) -> None:
    from textual.widgets import Static

    from mailtower.tui.screens.remaining import RemainingScreen

    db = tmp_path / "sup.db"
    async with opened(db) as store:
        mailing_id = await new_mailing(store, tmp_path, "Winter news", 5)
        emails = [r.email for r in await store.recipients(mailing_id)]
        async with store.write() as tx:
            await tx.add_suppressions([(e, e) for e in emails[1:3]], "manual", "test")
        lifecycle = Lifecycle(store)
        await lifecycle.send_now(mailing_id)
        await lifecycle.start(mailing_id)
        claimed, mailing = await store.record_and_claim(mailing_id, [], 10)
        assert [c.email for c in claimed] == [emails[0], *emails[3:]] and mailing.suppressed == 2
        await store.record_and_claim(mailing_id, [Outcome(claimed[0].id, RecipientState.SENT, 250)], 0)
        await lifecycle.stop(mailing_id)
    app = dashboard_app(db)
    async with running(app) as pilot:
        await focus_row(pilot, Section.INACTIVE, mailing_id)
        await choose(pilot, "remaining")
        await wait_for(lambda: isinstance(app.screen, RemainingScreen), what="the remaining screen")
        title = app.screen.query_one("#remaining-title", Static)
        await wait_for(lambda: "not received" in str(title.render()), what="the title")
        assert "2 of 5 not received · 2 suppressed, not sent" in str(title.render())
