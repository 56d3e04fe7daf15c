"""A pool of relays: the head mailing is spread over them, and one going down loses nobody."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mailtower.core.config import load_settings
from mailtower.core.errors import UserError
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.operations import Draft, create_mailing
from mailtower.core.sender import Sender
from mailtower.core.sink import Sink
from mailtower.core.store import open_store
from tests.helpers import recipients, wait_for, write_csv
from tests.pg_server import connect

@pytest.fixture
def db(db_target):
    """Runs on SQLite and on PostgreSQL (issue 15)."""
    return db_target


N = 600


def pool_config(path: Path, *ports: int, extra: str = "") -> Path:
    tables = "".join(
        f'[[relays]]\nname = "relay{i}"\nhost = "127.0.0.1"\nport = {port}\ntls = "none"\nconnections = 2\n{extra}\n'
        for i, port in enumerate(ports)
    )
    path.write_text(f'connect_backoff_max = 0.5\n{tables}', encoding="utf-8")
    return path


async def test_one_relay_down_mid_send_the_other_completes(tmp_path: Path, db: Path) -> None:
    store = await open_store(db)
    people = write_csv(tmp_path / "p.csv", recipients(N))
    mailing_id, _ = await create_mailing(store, Draft("pool", "Hi", "news@example.org", "Body", None), people, lambda r: None)
    await Lifecycle(store).send_now(mailing_id)
    await store.close()
    first, second = Sink(latency=0.003).start(), Sink(latency=0.003).start()
    try:
        config = pool_config(tmp_path / "pool.toml", first.port, second.port)
        settings = load_settings({"db": db}, environ={}, config_path=config)
        assert [r.name for r in settings.relays] == ["relay0", "relay1"]
        sender = Sender(settings)
        task = asyncio.create_task(sender.run(until_idle=True))

        async def both_used() -> bool:
            return len(first.deliveries) >= 50 and len(second.deliveries) >= 50

        await wait_for(both_used)
        first.stop()  # relay0 goes down mid-send

        async def rested() -> bool:
            return any(r.name == "relay0" and r.state == "resting" for r in sender.snapshot.relays)

        await wait_for(rested)
        await asyncio.wait_for(task, 60)
    finally:
        first.stop()
        second.stop()
    received = first.received() + second.received()
    everyone = {r["email"] for r in recipients(N)}
    assert set(received) == everyone  # nobody lost
    # Copies beyond one only for transactions in flight on relay0 when it went down.
    assert sum(received.values()) - N <= 2
    assert len(second.received()) > len(first.received())
    with connect(db) as conn:
        assert conn.execute("SELECT state, sent FROM mailings").fetchone() == ("completed", N)
    statuses = {r.name: r for r in sender.snapshot.relays}
    assert statuses["relay0"].state == "resting" and statuses["relay0"].reason
    assert statuses["relay1"].state == "up"


def test_relay_table_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[relays]]\nport = 25\n')
    with pytest.raises(UserError, match="needs a host"):
        load_settings(environ={}, config_path=bad)
    bad.write_text('[[relays]]\nhost = "a"\ntls = "ssl"\n')
    with pytest.raises(UserError, match="tls 'ssl'"):
        load_settings(environ={}, config_path=bad)
    bad.write_text('[[relays]]\nhost = "a"\ncolour = "red"\n')
    with pytest.raises(UserError, match="unknown key 'colour'"):
        load_settings(environ={}, config_path=bad)
