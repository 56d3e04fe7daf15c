"""The sender's ledger write before each final dot, made cheaper (issue 12, round 2).

Against a real relay at one connection the time from the dot's reply to the next dot is spent
mostly in this write (about 150 us of CPU on main), on the critical path of every message. It
now fences outcomes inside their UPDATE (no separate query for the rows this sender still
holds), checks marks again only when one changed nothing, and bumps the mailing's version itself
so the mailings_version trigger does not run a second UPDATE. These tests pin what must not
change (fences, counters, the version a dashboard polls) and the statements saved.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from mailtower.core.domain import RecipientState
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.store import Outcome, Store, _record_and_claim
from tests.core.test_edge_sender import new_mailing
from tests.helpers import Cli


async def _sending_with_claims(db: Path, mailing_id: int, n: int) -> tuple[int, list[int]]:
    """Start the mailing as a registered sender (a fleet member, as `mailtower run` is) and claim
    `n` rows; returns the sender's id and the claimed row ids."""
    store = await Store.open(db)
    try:
        store.claim_owner = await store.register_sender("test", 1, 1)
        await Lifecycle(store).start(mailing_id)
        claimed, _ = await store.record_and_claim(mailing_id, [], n)
        return store.claim_owner, [c.id for c in claimed]
    finally:
        await store.close()


def _row(db: Path, table: str, row_id: int, columns: str) -> tuple:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT {columns} FROM {table} WHERE id = ?", (row_id,)).fetchone()


def _traced_write(db: Path, mailing_id: int, outcomes: list[Outcome], marks: list[int], owner: int,
                  barred: set[int]) -> list[str]:
    """One sender write (as record_now does it) with every statement SQLite runs, triggers'
    statements included, recorded."""
    conn = sqlite3.connect(db, isolation_level=None)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        _record_and_claim(conn, mailing_id, outcomes, 0, None, marks, (), barred, owner)
    finally:
        conn.close()
    return statements


def test_the_write_before_a_dot_runs_no_fence_query_and_no_trigger_update(tmp_path: Path) -> None:
    """One outcome and one mark (the write before every dot at one connection): on main it ran
    a fence query for the outcome, one for the mark and the trigger's second UPDATE of the
    mailing (10 statements, 3 of them avoidable); now 7, and the trigger does nothing."""
    db = tmp_path / "steps.db"
    mailing_id = new_mailing(Cli(db, 2525), tmp_path, 4)
    owner, ids = asyncio.run(_sending_with_claims(db, mailing_id, 4))
    first = _traced_write(db, mailing_id, [], [ids[0]], owner, set())
    assert first  # the mark alone
    statements = _traced_write(db, mailing_id, [Outcome(ids[0], RecipientState.SENT, 250)], [ids[1]], owner, set())
    assert not any("json_each" in s for s in statements), statements
    assert not any(s.startswith("-- TRIGGER") for s in statements), statements
    assert len(statements) <= 8, statements
    assert _row(db, "recipients", ids[0], "state, claimed_by") == ("sent", None)
    assert _row(db, "recipients", ids[1], "state") == ("sending",)


def test_every_write_bumps_the_version_a_dashboard_polls_once_and_counts_once(tmp_path: Path) -> None:
    """The dashboard notices progress by the mailing's version: each write that records
    outcomes moves it by exactly one (as the trigger did), and the counters by what was sent."""
    db = tmp_path / "version.db"
    mailing_id = new_mailing(Cli(db, 2525), tmp_path, 5)
    owner, ids = asyncio.run(_sending_with_claims(db, mailing_id, 5))
    _traced_write(db, mailing_id, [], [ids[0]], owner, set())
    before = _row(db, "mailings", mailing_id, "version, sent")
    for previous, row_id in zip(ids, ids[1:]):
        _traced_write(db, mailing_id, [Outcome(previous, RecipientState.SENT, 250)], [row_id], owner, set())
    _traced_write(db, mailing_id, [Outcome(ids[-1], RecipientState.SENT, 250)], [], owner, set())
    version, sent = _row(db, "mailings", mailing_id, "version, sent")
    assert sent - before[1] == 5
    assert version - before[0] == 5  # one per write that recorded outcomes, never two


def test_outcomes_and_marks_of_rows_another_sender_took_over_are_not_written(tmp_path: Path) -> None:
    """The fence now lives in the UPDATE: a row another sender holds by now is neither recorded
    nor counted (its outcome is that sender's to write), and a mark of it is barred (no dot)."""
    db = tmp_path / "fence.db"
    mailing_id = new_mailing(Cli(db, 2525), tmp_path, 4)
    owner, ids = asyncio.run(_sending_with_claims(db, mailing_id, 4))
    _traced_write(db, mailing_id, [], [ids[0], ids[1]], owner, set())
    with sqlite3.connect(db) as conn:  # another sender took over rows 0 and 2 (this one was declared dead)
        conn.execute("UPDATE recipients SET claimed_by = ? WHERE id IN (?, ?)", (owner + 100, ids[0], ids[2]))
    sent_before = _row(db, "mailings", mailing_id, "sent")[0]
    barred: set[int] = set()
    outcomes = [Outcome(ids[0], RecipientState.SENT, 250), Outcome(ids[1], RecipientState.SENT, 250)]
    _traced_write(db, mailing_id, outcomes, [ids[2], ids[3]], owner, barred)
    assert _row(db, "recipients", ids[0], "state, claimed_by") == ("sending", owner + 100)
    assert _row(db, "recipients", ids[1], "state, claimed_by") == ("sent", None)
    assert _row(db, "mailings", mailing_id, "sent")[0] == sent_before + 1
    assert barred == {ids[2]}
    assert _row(db, "recipients", ids[2], "state") == ("pending",)
    assert _row(db, "recipients", ids[3], "state") == ("sending",)


# ---- one TLS context per relay, not one per connection -----------------------------------------

import ssl  # noqa: E402

import pytest  # noqa: E402
import trustme  # noqa: E402

from mailtower.core.sink import Sink  # noqa: E402
from mailtower.core.smtp_client import ConnectFailed, Relay, SmtpConnection  # noqa: E402
from mailtower.core.smtp_replies import Outcome as ReplyOutcome  # noqa: E402

from tests.core import test_tls  # noqa: E402

USER, PASSWORD = test_tls.USER, test_tls.PASSWORD
ca, server_context = test_tls.ca, test_tls.server_context  # the same CA and server fixtures


def _counting_contexts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the client TLS contexts made (the standard library's, not ours)."""
    made: list[int] = []
    real = ssl.create_default_context

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        if args[:1] == (ssl.Purpose.SERVER_AUTH,) or kwargs.get("purpose") == ssl.Purpose.SERVER_AUTH:
            made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counting)
    return made


@pytest.mark.parametrize("mode", ["starttls", "tls"])
async def test_connections_to_a_relay_share_one_tls_context(
    mode: str, tmp_path: Path, ca: trustme.CA, server_context: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading the system's CA store for a client context costs about 37 ms of CPU: aiosmtplib
    did it at every connection (K at start, again at every reconnect). Now once per relay, and
    every connection still verifies the server and sends."""
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    made = _counting_contexts(monkeypatch)
    implicit = mode == "tls"
    with Sink(tls_context=server_context, credentials=None if implicit else (USER, PASSWORD), implicit_tls=implicit) as sink:
        relay = Relay("127.0.0.1", sink.port, mode, user="" if implicit else USER, password=PASSWORD,
                      ca_file=str(ca_file), timeout=10, data_timeout=10)
        made.clear()  # aiosmtpd's controller makes one of its own to see that the sink is up
        for i in range(4):  # four connections, one after another (reconnects)
            conn = SmtpConnection(relay)
            await asyncio.wait_for(conn.connect(), 10)
            try:
                verdict = await asyncio.wait_for(conn.send("news@example.org", f"p{i}@example.com", b"Subject: x\r\n\r\nhi\r\n"), 10)
                assert verdict.outcome is ReplyOutcome.SENT
            finally:
                await conn.close()
        assert len(sink.received()) == 4
    assert len(made) == 1


async def test_a_replaced_ca_file_is_read_again_and_a_wrong_one_still_refuses(
    tmp_path: Path, ca: trustme.CA, server_context: ssl.SSLContext
) -> None:
    """The shared context is keyed on the CA file as it is on disk: replacing the file with one
    of another CA makes the next connection fail verification (nothing stale is trusted), and
    a missing file is a connect failure that names the relay, as before."""
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with Sink(tls_context=server_context, credentials=(USER, PASSWORD)) as sink:
        relay = Relay("127.0.0.1", sink.port, "starttls", user=USER, password=PASSWORD, ca_file=str(ca_file), timeout=10)
        conn = SmtpConnection(relay)
        await asyncio.wait_for(conn.connect(), 10)
        await conn.close()
        other = tmp_path / "other.pem"
        trustme.CA().cert_pem.write_to_path(str(other))
        other.replace(ca_file)
        with pytest.raises(ConnectFailed) as refused:
            await asyncio.wait_for(SmtpConnection(relay).connect(), 10)
        assert "TLS" in refused.value.verdict.text or "certificate" in refused.value.verdict.text.lower()
        ca_file.unlink()
        with pytest.raises(ConnectFailed) as missing:
            await asyncio.wait_for(SmtpConnection(relay).connect(), 10)
        assert f"127.0.0.1:{sink.port}" in missing.value.verdict.text


# ---- composing: each value escaped once per message ----------------------------------------------


def test_an_html_body_escapes_each_value_once_however_often_it_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name in every paragraph of the HTML body was escaped at each use (15 calls for the
    benchmark's message); now once per field, and the message is the same: escaped everywhere."""
    import html

    from mailtower.core.compose import MessageTemplate

    para = "<p>Dear {{ name }}, code {{ code }}.</p>"
    template = MessageTemplate.build(mailing_id=1, subject="Hi", from_addr="news@example.org", text=None,
                                     html=para * 7, available_fields={"code"})
    calls: list[str] = []
    real = html.escape

    def counting(value: str, quote: bool = True) -> str:
        calls.append(value)
        return real(value, quote)

    monkeypatch.setattr(html, "escape", counting)
    message = template.render(recipient_id=1, email="a@example.org", name="Tom & <Jerry>", fields={"code": 'X"1'})
    assert sorted(calls) == sorted(["Tom & <Jerry>", 'X"1'])
    body = message.split(b"\r\n\r\n", 1)[1].replace(b"=\r\n", b"")
    assert body.count(b"Dear Tom &amp; &lt;Jerry&gt;, code X&quot;1.") == 7
    assert b"<Jerry>" not in body


def test_a_row_twice_in_one_batch_is_written_as_before(tmp_path: Path) -> None:
    """Two outcomes of one row in one write (given back, then sent): both belong to this sender,
    as the separate fence query judged them before the first UPDATE gave the claim up."""
    db = tmp_path / "twice.db"
    mailing_id = new_mailing(Cli(db, 2525), tmp_path, 2)
    owner, ids = asyncio.run(_sending_with_claims(db, mailing_id, 2))
    _traced_write(db, mailing_id, [], [ids[0]], owner, set())
    sent_before = _row(db, "mailings", mailing_id, "sent")[0]
    outcomes = [Outcome(ids[0], RecipientState.PENDING, counted_attempt=False), Outcome(ids[0], RecipientState.SENT, 250)]
    _traced_write(db, mailing_id, outcomes, [], owner, set())
    assert _row(db, "recipients", ids[0], "state") == ("sent",)
    assert _row(db, "mailings", mailing_id, "sent")[0] == sent_before + 1


# ---- round 3: no SELECT in the common write, and the mailing a write returns (issue 12) ---------


def test_the_write_before_a_dot_reads_nothing_back_with_a_select(tmp_path: Path) -> None:
    """The common write (an outcome, a mark that takes): the mark's UPDATE probes the suppression
    list itself and the mailing's row comes back from its UPDATE (RETURNING), so no SELECT runs;
    before, one looked for suppressed marks and one read the mailing afterwards."""
    db = tmp_path / "selects.db"
    mailing_id = new_mailing(Cli(db, 2525), tmp_path, 3)
    owner, ids = asyncio.run(_sending_with_claims(db, mailing_id, 3))
    _traced_write(db, mailing_id, [], [ids[0]], owner, set())
    statements = _traced_write(db, mailing_id, [Outcome(ids[0], RecipientState.SENT, 250)], [ids[1]], owner, set())
    assert not [s for s in statements if s.lstrip().upper().startswith("SELECT")], statements
    assert _row(db, "recipients", ids[1], "state") == ("sending",)


async def test_a_write_told_its_mailing_returns_what_reading_the_mailing_returns(tmp_path: Path, db_target: Path) -> None:
    """record_and_claim(known=...) reads back only the state and counters and takes the rest from
    `known`: what it returns must equal the mailing read afresh, after plain writes and after
    one whose mark met a suppressed address (its counters change in a later statement)."""
    from mailtower.core.domain import Section
    from mailtower.core.store import open_store
    from tests.helpers import sending_mailing

    store = await open_store(db_target)  # both engines (issue 15)

    async def fresh() -> object:
        return next(m for m in await store.mailings(Section.CURRENT) if m.id == mailing_id)

    try:
        mailing_id, claimed, known = await sending_mailing(store, tmp_path / "p.csv", 5, 10)
        ids = [c.id for c in claimed]
        async with store.write() as tx:
            await tx.add_suppressions([("user3@example.com", "user3@example.com")], "manual", "")
        steps = [
            ([], [ids[0]], 2.5),
            ([Outcome(ids[0], RecipientState.SENT, 250)], [ids[1], ids[2]], None),
            ([Outcome(ids[1], RecipientState.FAILED, 550, "no such user")], [ids[3]], 4.0),  # ids[3] is suppressed
            ([Outcome(ids[2], RecipientState.DEFERRED, 451, "later", next_attempt_at=9e9)], [], None),
        ]
        for outcomes, marks, rate in steps:
            barred: set[int] = set()
            _, known = await store.record_and_claim(mailing_id, outcomes, 0, rate=rate, marks=marks, barred=barred,
                                                    known=known)
            assert known == await fresh()
        assert barred == set()  # the last step marked nothing
        assert (known.sent, known.failed, known.deferred, known.suppressed, known.rate) == (1, 1, 1, 1, 4.0)
    finally:
        await store.close()
