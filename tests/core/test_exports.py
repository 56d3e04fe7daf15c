"""CSV export of a mailing's remaining recipients: streamed pages, private file, no silent overwrite."""

from __future__ import annotations

import csv
import stat
from pathlib import Path

import pytest

from mailtower.core import exports
from mailtower.core.domain import RecipientState
from mailtower.core.errors import NotFound, UserError
from mailtower.core.exports import HEADER, export_remaining_csv
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.operations import Draft, create_mailing
from mailtower.core.store import Outcome, Store, open_store


@pytest.fixture
def db(db_target):
    """Every test here runs on SQLite and on PostgreSQL (issue 15)."""
    return db_target

FAR_FUTURE = 4102444800.0  # 2100-01-01: a deferral that never comes due during a test


async def make_store(db: Path, tmp_path: Path, count: int) -> tuple[Store, int]:
    source = tmp_path / "list.csv"
    lines = ["email,name"] + [f"user{i:05d}@{('a.example', 'b.example')[i % 2]},\"Name, {i}\"" for i in range(count)]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    store = await open_store(db)
    draft = Draft("Export me", "Hello", "from@example.com", "Hi {{name}}", None)
    mailing_id, summary = await create_mailing(store, draft, source, on_reject=lambda row: None)
    assert summary.imported == count
    return store, mailing_id


async def settle_some(store: Store, mailing_id: int, sent: int, failed: int, deferred: int, doubt: int) -> None:
    """Send, fail and defer the first rows; leave `doubt` rows in doubt, the rest pending."""
    lifecycle = Lifecycle(store)
    await lifecycle.send_now(mailing_id)
    assert await lifecycle.start(mailing_id)
    claimed, _ = await store.record_and_claim(mailing_id, [], sent + failed + deferred + doubt)
    outcomes = [Outcome(c.id, RecipientState.SENT, 250, "ok") for c in claimed[:sent]]
    outcomes += [
        Outcome(c.id, RecipientState.FAILED, 550, "5.1.1 no such user") for c in claimed[sent : sent + failed]
    ]
    outcomes += [
        Outcome(c.id, RecipientState.DEFERRED, 451, "4.3.0 try\nlater", next_attempt_at=FAR_FUTURE)
        for c in claimed[sent + failed : sent + failed + deferred]
    ]
    # The rest were being sent (marked `sending`) when the sender died: in doubt at the next start.
    await store.record_and_claim(mailing_id, outcomes, 0, marks=[c.id for c in claimed[len(outcomes):]])
    await store.recover_in_doubt()
    await lifecycle.stop(mailing_id)


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


async def test_exports_every_remaining_row_with_state_and_error(tmp_path: Path, db: Path) -> None:
    store, mailing_id = await make_store(db, tmp_path, 50)
    try:
        await settle_some(store, mailing_id, sent=10, failed=5, deferred=4, doubt=3)
        target = tmp_path / "out.csv"
        written = await export_remaining_csv(store, mailing_id, target)
        mailing = await store.mailing(mailing_id)
    finally:
        await store.close()
    rows = read_csv(target)
    assert rows[0] == list(HEADER) == ["email", "name", "state", "attempts", "last_code", "last_error"]
    assert written == len(rows) - 1 == mailing.remaining == 35
    by_email = {row[0]: row for row in rows[1:]}
    assert by_email["user00015@b.example"] == ["user00015@b.example", "Name, 15", "deferred", "1", "451", "4.3.0 try\nlater"]
    assert by_email["user00019@b.example"][2] == "in doubt"
    assert by_email["user00049@b.example"] == ["user00049@b.example", "Name, 49", "pending", "0", "", ""]
    assert "user00000@a.example" not in by_email  # sent
    assert "user00010@a.example" not in by_email  # failed
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


async def test_streams_in_pages_and_filters(tmp_path: Path, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exports, "PAGE_SIZE", 7)  # many pages from a small list: paging must not drop or repeat rows
    store, mailing_id = await make_store(db, tmp_path, 100)
    try:
        everyone = await export_remaining_csv(store, mailing_id, tmp_path / "all.csv")
        only_b = await export_remaining_csv(store, mailing_id, tmp_path / "b.csv", search="b.example")
    finally:
        await store.close()
    assert everyone == 100
    emails = [row[0] for row in read_csv(tmp_path / "all.csv")[1:]]
    assert emails == [f"user{i:05d}@{('a.example', 'b.example')[i % 2]}" for i in range(100)]
    assert only_b == 50
    assert all(row[0].endswith("@b.example") for row in read_csv(tmp_path / "b.csv")[1:])


async def test_refuses_to_overwrite_unless_asked(tmp_path: Path, db: Path) -> None:
    store, mailing_id = await make_store(db, tmp_path, 5)
    target = tmp_path / "out.csv"
    target.write_text("precious\n")
    try:
        with pytest.raises(UserError, match="already exists"):
            await export_remaining_csv(store, mailing_id, target)
        assert target.read_text() == "precious\n"
        assert await export_remaining_csv(store, mailing_id, target, overwrite=True) == 5
    finally:
        await store.close()
    assert len(read_csv(target)) == 6
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


async def test_clear_errors_for_bad_targets(tmp_path: Path, db: Path) -> None:
    store, mailing_id = await make_store(db, tmp_path, 5)
    try:
        with pytest.raises(UserError, match="does not exist"):
            await export_remaining_csv(store, mailing_id, tmp_path / "missing" / "out.csv")
        with pytest.raises(UserError, match="is a directory"):
            await export_remaining_csv(store, mailing_id, tmp_path)
        with pytest.raises(NotFound):
            await export_remaining_csv(store, mailing_id + 1, tmp_path / "nobody.csv")
    finally:
        await store.close()
    assert not (tmp_path / "nobody.csv").exists()


async def test_empty_remaining_writes_header_only(tmp_path: Path, db: Path) -> None:
    store, mailing_id = await make_store(db, tmp_path, 4)
    try:
        await settle_some(store, mailing_id, sent=4, failed=0, deferred=0, doubt=0)
        assert await export_remaining_csv(store, mailing_id, tmp_path / "none.csv") == 0
    finally:
        await store.close()
    assert read_csv(tmp_path / "none.csv") == [list(HEADER)]
