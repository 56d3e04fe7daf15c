"""The dashboard's refresh model (tui/refresh.py) on a real SQLite database, without Pilot."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from mailtower.core.domain import MailingState, Section
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.progress import HoldState, MailingProgress
from mailtower.core.store import Store
from mailtower.tui.refresh import holds_for, moved_mailings, next_retries, patch_live, read_changed_sections

from .conftest import build_fixed, fake_progress, new_mailing


async def test_only_the_changed_section_is_read_again(tmp_path: Path) -> None:
    fx = await build_fixed(tmp_path / "m.db", small=True)
    store = await Store.open(fx.db)
    try:
        first = await read_changed_sections(store, {}, {})
        assert first.reread == frozenset(Section)
        assert [m.id for m in first.sections[Section.CURRENT]] == [fx.ids["spring"], fx.ids["news"], fx.ids["launch"]]

        unchanged = await read_changed_sections(store, first.sections, first.signatures)
        assert unchanged.reread == frozenset()

        await fake_progress(store, fx.ids["spring"], 5)
        second = await read_changed_sections(store, first.sections, first.signatures)
        assert second.reread == {Section.CURRENT}
        assert second.sections[Section.SCHEDULED] is first.sections[Section.SCHEDULED]  # not read again
        spring = next(m for m in second.sections[Section.CURRENT] if m.id == fx.ids["spring"])
        assert spring.sent == 624 + 5
    finally:
        await store.close()


async def test_moves_between_reads_are_found_unless_expected(tmp_path: Path) -> None:
    fx = await build_fixed(tmp_path / "m.db", small=True)
    store = await Store.open(fx.db)
    try:
        first = await read_changed_sections(store, {}, {})
        assert moved_mailings({}, first.sections, {}, now=0.0) == []  # the first read announces nothing
        before = next(m for m in first.sections[Section.CURRENT] if m.id == fx.ids["launch"]).state
        await Lifecycle(store).stop(fx.ids["launch"])
        second = await read_changed_sections(store, first.sections, first.signatures)

        moves = moved_mailings(first.sections, second.sections, {}, now=100.0)
        assert [(m.id, m.state, was) for m, was in moves] == [(fx.ids["launch"], MailingState.STOPPED, before)]
        # Our own action, said already: not announced again until its time has passed.
        assert moved_mailings(first.sections, second.sections, {fx.ids["launch"]: 105.0}, now=100.0) == []
        assert len(moved_mailings(first.sections, second.sections, {fx.ids["launch"]: 105.0}, now=106.0)) == 1
    finally:
        await store.close()


async def test_a_mailing_with_only_retries_left_is_held_until_its_next_retry(tmp_path: Path) -> None:
    fx = await build_fixed(tmp_path / "m.db", small=True)
    store = await Store.open(fx.db)
    try:
        waiting = await new_mailing(store, tmp_path, "Retry only", 3)
        await Lifecycle(store).send_now(waiting)
        await fake_progress(store, waiting, 1, deferred=2)  # conftest's deferred rows retry at 4083660000
        current = (await read_changed_sections(store, {}, {})).sections[Section.CURRENT]

        retries = await next_retries(store, current)
        assert retries == {waiting: 4083660000.0}  # the others still have fresh recipients

        holds = holds_for(current, {}, retries)
        assert set(holds) == {waiting}
        assert holds[waiting].state is HoldState.RETRYING
        assert holds[waiting].next_try == 4083660000.0
        assert holds_for(current, {}, {}) == {}  # no retry time known: not shown as held
    finally:
        await store.close()


async def test_live_counters_patch_only_forwards(tmp_path: Path) -> None:
    fx = await build_fixed(tmp_path / "m.db", small=True)
    store = await Store.open(fx.db)
    try:
        current = (await read_changed_sections(store, {}, {})).sections[Section.CURRENT]
    finally:
        await store.close()
    spring = next(m for m in current if m.id == fx.ids["spring"])

    def progress(sent: int) -> MailingProgress:
        return MailingProgress(spring.id, sent, spring.failed, spring.deferred, 0, 0, spring.total, 0.0, None)

    ahead = patch_live(current, {spring.id: progress(spring.sent + 7)})
    assert next(m for m in ahead if m.id == spring.id) == replace(spring, sent=spring.sent + 7, in_doubt=0)
    behind = patch_live(current, {spring.id: progress(spring.sent - 7)})
    assert behind == current  # a snapshot behind the store never moves counters backwards
    assert patch_live(current, {}) == current
