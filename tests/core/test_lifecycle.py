"""Every transition of the mailing state machine, allowed and refused, applied to a real store."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from mailtower.core.domain import MailingState, Section
from mailtower.core.errors import RefusedTransition, UserError
from mailtower.core.lifecycle import TRANSITIONS, Action, Direction, Lifecycle, offers, target_state
from mailtower.core.operations import Draft, create_mailing
from mailtower.core.store import Store, open_store
from tests.helpers import recipients, write_csv

S = MailingState
FUTURE = datetime(2031, 6, 1, 9, 0)


@pytest.fixture
async def store(db_target):
    s = await open_store(db_target)  # both engines (issue 15)
    yield s
    await s.close()


async def make(store: Store, tmp_path: Path, name: str = "m", n: int = 3) -> int:
    csv_path = write_csv(tmp_path / f"{name}.csv", recipients(n))
    mailing_id, _ = await create_mailing(
        store, Draft(name, "Subject", "news@example.org", "Hello {{ name }}", None), csv_path, lambda r: None
    )
    return mailing_id


async def put_in_state(store: Store, tmp_path: Path, state: MailingState, name: str = "m") -> int:
    """Drive a new mailing into `state` through legal transitions only."""
    lc = Lifecycle(store)
    mailing_id = await make(store, tmp_path, name)
    if state is S.DRAFT:
        return mailing_id
    if state is S.SCHEDULED:
        await lc.schedule(mailing_id, FUTURE, "Europe/Berlin")
        return mailing_id
    await lc.send_now(mailing_id)
    if state is S.QUEUED:
        return mailing_id
    await lc.start(mailing_id)
    if state is S.SENDING:
        return mailing_id
    if state is S.STOPPED:
        await lc.stop(mailing_id)
        return mailing_id
    # completed: record every recipient sent through the ledger path the sender uses
    from mailtower.core.domain import RecipientState
    from mailtower.core.store import Outcome

    claimed, _ = await store.record_and_claim(mailing_id, [], 100)
    await store.record_and_claim(mailing_id, [Outcome(c.id, RecipientState.SENT, 250) for c in claimed], 0)
    assert await lc.complete_if_done(mailing_id)
    return mailing_id


async def apply(lc: Lifecycle, action: Action, mailing_id: int) -> None:
    calls = {
        Action.SCHEDULE: lambda: lc.schedule(mailing_id, FUTURE, "UTC"),
        Action.UNSCHEDULE: lambda: lc.unschedule(mailing_id),
        Action.SEND_NOW: lambda: lc.send_now(mailing_id),
        Action.STOP: lambda: lc.stop(mailing_id),
        Action.RESTART: lambda: lc.restart(mailing_id),
        Action.DELETE: lambda: lc.delete(mailing_id),
        Action.MOVE: lambda: lc.move(mailing_id, Direction.TOP),
    }
    await calls[action]()


OPERATOR_ACTIONS = [Action.SCHEDULE, Action.UNSCHEDULE, Action.SEND_NOW, Action.STOP, Action.RESTART, Action.DELETE, Action.MOVE]


@pytest.mark.parametrize("state", list(MailingState), ids=lambda s: s.value)
@pytest.mark.parametrize("action", OPERATOR_ACTIONS, ids=lambda a: a.value)
async def test_every_operator_transition(store: Store, tmp_path: Path, state: MailingState, action: Action) -> None:
    mailing_id = await put_in_state(store, tmp_path, state)
    sources, target = TRANSITIONS[action]
    lc = Lifecycle(store)
    before = await store.mailing(mailing_id)
    if state in sources:
        await apply(lc, action, mailing_id)
        if action is Action.DELETE:
            with pytest.raises(UserError):
                await store.mailing(mailing_id)
            return
        after = await store.mailing(mailing_id)
        assert after.state is (target or state)
        if after.section is Section.CURRENT:
            assert after.position is not None
        else:
            assert after.position is None
    else:
        with pytest.raises(RefusedTransition) as info:
            await apply(lc, action, mailing_id)
        assert str(mailing_id) in str(info.value) and state.value in str(info.value)
        after = await store.mailing(mailing_id)
        assert (after.state, after.position, after.schedule) == (before.state, before.position, before.schedule)


@pytest.mark.parametrize("state", list(MailingState), ids=lambda s: s.value)
@pytest.mark.parametrize("action", [Action.PROMOTE, Action.START, Action.YIELD, Action.COMPLETE], ids=lambda a: a.value)
async def test_sender_transition_rules(store: Store, tmp_path: Path, state: MailingState, action: Action) -> None:
    mailing = await store.mailing(await put_in_state(store, tmp_path, state))
    sources, target = TRANSITIONS[action]
    if state in sources:
        assert target_state(mailing, action, any_sending=False) is target
    else:
        with pytest.raises(RefusedTransition):
            target_state(mailing, action, any_sending=False)


async def test_unschedule_refused_while_any_mailing_sends(store: Store, tmp_path: Path) -> None:
    sending = await put_in_state(store, tmp_path, S.SENDING, "a")
    scheduled = await put_in_state(store, tmp_path, S.SCHEDULED, "b")
    lc = Lifecycle(store)
    with pytest.raises(RefusedTransition, match="stop the current mailing first"):
        await lc.unschedule(scheduled)
    menu = {o.key: o for o in offers(await store.mailing(scheduled), any_sending=True)}
    assert not menu["unschedule"].enabled and "stop the current mailing" in menu["unschedule"].reason
    await lc.stop(sending)
    await lc.unschedule(scheduled)
    assert (await store.mailing(scheduled)).state is S.DRAFT
    assert (await store.mailing(scheduled)).schedule is None


async def test_send_now_and_due_schedules_join_the_bottom(store: Store, tmp_path: Path) -> None:
    lc = Lifecycle(store)
    a = await put_in_state(store, tmp_path, S.QUEUED, "a")
    b = await put_in_state(store, tmp_path, S.SCHEDULED, "b")
    c = await put_in_state(store, tmp_path, S.STOPPED, "c")
    assert await lc.promote(b, late_by_seconds=0)
    await lc.restart(c)
    assert [m.id for m in await store.mailings(Section.CURRENT)] == [a, b, c]
    assert [m.position for m in await store.mailings(Section.CURRENT)] == [1, 2, 3]
    assert await lc.move(c, Direction.UP) == 2
    assert await lc.move(a, Direction.BOTTOM) == 3
    assert [m.id for m in await store.mailings(Section.CURRENT)] == [c, b, a]
    await lc.stop(b)
    assert [(m.id, m.position) for m in await store.mailings(Section.CURRENT)] == [(c, 1), (a, 2)]


async def test_schedule_in_the_past_is_refused(store: Store, tmp_path: Path) -> None:
    mailing_id = await make(store, tmp_path)
    with pytest.raises(UserError, match="in the past"):
        await Lifecycle(store).schedule(mailing_id, datetime.now() - timedelta(days=2), "UTC")
    assert (await store.mailing(mailing_id)).state is S.DRAFT


async def test_timeline_records_each_step(store: Store, tmp_path: Path) -> None:
    mailing_id = await put_in_state(store, tmp_path, S.STOPPED)
    await Lifecycle(store).restart(mailing_id)
    kinds = [kind for _, kind, _ in await store.events(mailing_id)]
    assert kinds == ["created", "queued", "started", "stopped", "queued"]


def test_menus_follow_the_seed() -> None:
    from mailtower.core.domain import Mailing
    from datetime import timezone

    def mailing(state: MailingState) -> Mailing:
        return Mailing(1, "n", "s", "f@example.org", "t", None, state, None, None, False, 10, 4, 1, 0, 0,
                       datetime.now(timezone.utc), None, None, None)

    keys = lambda state, sending=False: [o.key for o in offers(mailing(state), any_sending=sending)]  # noqa: E731
    assert keys(S.SENDING) == ["stop", "move-up", "move-down", "details"]
    assert keys(S.QUEUED) == ["stop", "move-up", "move-down", "details"]
    assert keys(S.SCHEDULED) == ["schedule", "send-now", "unschedule", "details"]
    # (Retry failed: the mailing has 1 failed recipient, issue 13)
    assert keys(S.STOPPED) == ["restart", "remaining", "retry", "schedule", "send-now", "details", "delete"]
    assert keys(S.DRAFT) == ["schedule", "send-now", "details", "delete"]
    assert keys(S.COMPLETED) == ["remaining", "retry", "details", "delete"]
    stop = offers(mailing(S.SENDING), any_sending=True)[0]
    assert stop.label == "Cancel sending" and stop.destructive


async def test_section_signatures_change_only_where_mailings_changed(store: Store, tmp_path: Path) -> None:
    from mailtower.core.domain import RecipientState
    from mailtower.core.store import Outcome

    sending = await put_in_state(store, tmp_path, S.SENDING, "a")
    await put_in_state(store, tmp_path, S.SCHEDULED, "b")
    await put_in_state(store, tmp_path, S.DRAFT, "c")
    before = await store.section_signatures()
    claimed, _ = await store.record_and_claim(sending, [], 2)
    await store.record_and_claim(sending, [Outcome(c.id, RecipientState.SENT, 250) for c in claimed], 0)
    after = await store.section_signatures()
    assert after[Section.CURRENT] != before[Section.CURRENT]  # progress counters moved
    assert after[Section.SCHEDULED] == before[Section.SCHEDULED]
    assert after[Section.INACTIVE] == before[Section.INACTIVE]
    await Lifecycle(store).stop(sending)
    moved = await store.section_signatures()
    assert moved[Section.CURRENT][0] == 0 and moved[Section.INACTIVE][0] == 2
