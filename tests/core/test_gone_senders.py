"""A sender that ends without recording its end (kill -9, a full disk, an I/O error) is "gone" at
once, not alive for the heartbeat timeout and then `running` for ever (core/fleet.list_senders).

On SQLite the sender lease says who is there: the kernel drops its lock when the process ends,
however it ends. `status --json` lists such a sender with "state": "gone", "alive": false; the
text `status` says it is gone and that nothing sends its mailing. Real parts: the `mailtower run`
process, the aiosmtpd sink on 127.0.0.1, the SQLite file and its lease file.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from mailtower.core.fleet import list_senders, senders_document
from mailtower.core.lease import SenderLease, lease_path
from mailtower.core.sink import Sink
from mailtower.core.store import Store
from tests.helpers import Cli, recipients, wait_until, write_csv

pytestmark = pytest.mark.sqlite_only  # the lease file is SQLite's; PostgreSQL keeps the heartbeat rule

TIMEOUT = 30.0  # sender_heartbeat_timeout's default: "at once" is well within it

# What a live sender's entry in `status --json` carries (the contract, unchanged by "gone").
SENDER_KEYS = {"sender", "host", "pid", "started_at", "heartbeat_at", "heartbeat_age", "rate", "connections",
               "state", "alive"}


def new_mailing(cli: Cli, tmp_path: Path, n: int) -> None:
    body = tmp_path / "body.txt"
    body.write_text("Hello {{ name }}\n", encoding="utf-8")
    people = write_csv(tmp_path / "r.csv", recipients(n))
    cli.ok("new", "--name", "campaign", "--subject", "Hi", "--from", "news@example.org", "--text", str(body),
           "--recipients", str(people), "--now")


def status_json(cli: Cli) -> dict:
    return json.loads(cli.ok("status", "--json"))


def senders_of(doc: dict, pid: int) -> list[dict]:
    return [s for s in doc.get("senders", []) if s["pid"] == pid]


def test_a_sender_killed_mid_send_is_gone_at_once_in_status(tmp_path: Path, reap: list) -> None:
    db = tmp_path / "gone.db"
    with Sink(latency=0.02) as sink:
        cli = Cli(db, sink.port, MAILTOWER_SMTP_CONNECTIONS="4")
        new_mailing(cli, tmp_path, 1500)  # 4 connections at 20 ms each: several seconds of sending
        runner = cli.popen("run", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        reap.append(runner)
        wait_until(lambda: len(sink.deliveries) >= 50, timeout=30, what="50 messages sent")

        # Control: the sender that runs is alive, its entry as before, and nothing says it is gone.
        live = status_json(cli)
        [entry] = senders_of(live, runner.pid)
        assert entry["alive"] is True and entry["state"] == "running"
        assert set(entry) == SENDER_KEYS
        assert live["current"][0]["state"] == "sending"
        text = cli.ok("status")
        assert "is gone" not in text and "nothing is sending" not in text

        runner.kill()  # SIGKILL: it cannot record its end
        runner.wait(timeout=10)
        assert len(sink.deliveries) < 1500, "the sender finished before it was killed"

        doc = status_json(cli)
        [entry] = senders_of(doc, runner.pid)
        assert entry["state"] == "gone" and entry["alive"] is False
        assert set(entry) == SENDER_KEYS
        assert entry["heartbeat_age"] < TIMEOUT  # at once, not after the heartbeat timeout
        assert not any(s["alive"] for s in doc["senders"])
        assert doc["current"][0]["state"] == "sending"  # the ledger still says so: nothing rewrote it

        text = cli.ok("status")
        assert f"Sender pid {runner.pid} on " in text and " is gone: it ended without recording its end" in text
        assert "start `mailtower run` to go on" in text
        mailing = text.splitlines().index(next(line for line in text.splitlines() if "#1 campaign" in line))
        assert "nothing is sending it" in text.splitlines()[mailing + 1]


def test_a_sender_that_does_not_hold_the_lease_is_gone_and_its_holder_alive(tmp_path: Path) -> None:
    """The lease held by another pid (this test process): the row of a pid that is not the holder
    is gone, the holder's own row alive. The reader waits for nothing and writes nothing."""
    db = tmp_path / "held.db"
    lease = SenderLease(db)
    assert lease.acquire("test")  # makes the database file and the lease file, writes our pid

    async def scenario() -> tuple[list, list | None]:
        store = await Store.open(db)
        try:
            other = await store.register_sender("elsewhere", 2_000_000_001, 4)  # no such process holds it
            mine = await store.register_sender("here", os.getpid(), 4)
            senders = await list_senders(store, TIMEOUT)
            doc = await senders_document(store, TIMEOUT)
            return [(s.id == other, s.id == mine, s.state, s.alive) for s in senders], doc
        finally:
            await store.close()

    try:
        rows, doc = asyncio.run(scenario())
    finally:
        lease.release()
    assert (True, False, "gone", False) in rows
    assert (False, True, "running", True) in rows
    assert doc is not None and {s["pid"]: (s["state"], s["alive"]) for s in doc} == {
        2_000_000_001: ("gone", False), os.getpid(): ("running", True)}


def test_a_sender_row_with_no_lease_file_is_gone_and_nothing_is_written(tmp_path: Path) -> None:
    """No lease file means nobody holds the lease; the reader does not create one (a full or
    read-only disk must not make it fail)."""
    db = tmp_path / "nolease.db"

    async def register() -> None:
        store = await Store.open(db)
        try:
            await store.register_sender("vanished", 2_000_000_002, 4)
        finally:
            await store.close()

    async def read() -> list | None:
        store = await Store.open(db)
        try:
            return await senders_document(store, TIMEOUT)
        finally:
            await store.close()

    asyncio.run(register())
    path = lease_path(db)
    assert path is not None and not path.exists()
    before = sorted(p.name for p in tmp_path.iterdir())
    doc = asyncio.run(read())
    assert doc is not None and [(s["state"], s["alive"]) for s in doc] == [("gone", False)]
    assert not path.exists()
    # Store.open's own companions aside (-wal/-shm come and go with connections), nothing new.
    assert {n for n in (p.name for p in tmp_path.iterdir()) if not n.endswith(("-wal", "-shm"))} == {
        n for n in before if not n.endswith(("-wal", "-shm"))}


def test_a_lease_file_that_cannot_be_read_keeps_the_heartbeats_word_without_waiting(tmp_path: Path) -> None:
    """A FIFO in the lease file's place (opening it for reading would wait for a writer): the
    reader cannot tell who holds the lease, so a fresh heartbeat still says alive, and it returns
    at once. A row whose process is known not to hold the lease is gone (the control)."""
    from mailtower.core.lease import lease_pid

    db = tmp_path / "fifo.db"
    db.touch()
    path = lease_path(db)
    assert path is not None
    os.mkfifo(path)
    answer: list[int | None] = []
    reader = threading.Thread(target=lambda: answer.append(lease_pid(db)), daemon=True)
    reader.start()
    reader.join(timeout=5)
    if reader.is_alive():  # it waits on the FIFO: let it go, then fail
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        reader.join(timeout=5)
        pytest.fail("reading the lease waited on a FIFO")
    assert answer == [None]

    async def scenario() -> list[tuple[str, bool]]:
        store = await Store.open(db)
        try:
            await store.register_sender("here", 2_000_000_003, 4)
            return [(s.state, s.alive) for s in await list_senders(store, TIMEOUT)]
        finally:
            await store.close()

    assert asyncio.run(scenario()) == [("running", True)]
    os.unlink(path)

    async def again() -> list[tuple[str, bool]]:
        store = await Store.open(db)
        try:
            return [(s.state, s.alive) for s in await list_senders(store, TIMEOUT)]
        finally:
            await store.close()

    assert asyncio.run(again()) == [("gone", False)]


def test_a_sender_starting_while_a_reader_looks_at_the_lease_is_not_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`status` and the dashboard take a shared lock on the lease file for an instant to read who
    holds it; a sender starting in that instant waits it out (core/lease.READER_GRACE) instead of
    being refused as if another sender held it. A lock held longer is a holder: refused, promptly."""
    import fcntl
    import time

    from mailtower.core import lease as lease_module

    db = tmp_path / "x.db"
    first = SenderLease(db)
    assert first.acquire()
    path = lease_path(db)
    assert path is not None
    first.release()
    reader = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(reader, fcntl.LOCK_SH | fcntl.LOCK_NB)
        polls: list[float] = []

        def reader_done(seconds: float) -> None:  # the reader lets go while the sender polls
            polls.append(seconds)
            fcntl.flock(reader, fcntl.LOCK_UN)

        with monkeypatch.context() as patch:
            patch.setattr(lease_module.time, "sleep", reader_done)
            lease = SenderLease(db)
            try:
                assert lease.acquire(), "a reader's brief look refused the sender"
            finally:
                lease.release()
        assert polls == [lease_module.READER_POLL]
        fcntl.flock(reader, fcntl.LOCK_SH | fcntl.LOCK_NB)  # now held throughout: as good as a holder
        started = time.monotonic()
        assert not SenderLease(db).acquire()
        assert time.monotonic() - started < 1.0
    finally:
        os.close(reader)


def test_status_does_not_say_nothing_is_sending_while_a_sender_holds_the_lease(tmp_path: Path) -> None:
    """A live sender's heartbeat can be late on SQLite (a long write holds the lock past the
    timeout), and a starting sender holds the lease before its row is registered: the lease, not
    the heartbeat, says whether anyone is there (core/fleet.nobody_sending)."""
    import sqlite3

    from mailtower.core.lifecycle import Lifecycle

    db = tmp_path / "x.db"
    held = SenderLease(db)
    assert held.acquire("mailtower run")  # this process stands for the live sender

    async def sending_mailing_and_its_sender() -> int:
        store = await Store.open(db)
        try:
            await Lifecycle(store).start(await queued_mailing(store, tmp_path))
            return await store.register_sender("here", os.getpid(), 4)
        finally:
            await store.close()

    try:
        sender_id = asyncio.run(sending_mailing_and_its_sender())
        with sqlite3.connect(db) as conn:  # its heartbeat 45 s late: past the 30 s timeout
            conn.execute("UPDATE senders SET heartbeat_at = heartbeat_at - 45 WHERE id = ?", (sender_id,))
        code, out, _ = Cli(db)("status")
        assert code == 0 and "sending" in out and "nothing is sending" not in out, out
    finally:
        held.release()
    code, out, _ = Cli(db)("status")  # the lease let go: nobody is there
    assert code == 0 and "no sender is running: nothing is sending it" in out, out


async def queued_mailing(store: Store, tmp_path: Path) -> int:
    """A mailing of 5 recipients, queued to be sent now; its id."""
    from mailtower.core.lifecycle import Lifecycle
    from mailtower.core.operations import Draft, create_mailing

    people = write_csv(tmp_path / "r.csv", recipients(5))
    mailing_id, _ = await create_mailing(store, Draft("m", "s", "news@example.org", "Hi", None), people, lambda r: None)
    await Lifecycle(store).send_now(mailing_id)
    return mailing_id
