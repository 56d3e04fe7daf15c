"""PostgreSQL change notifications for the dashboard (issue 15 item 5): LISTEN/NOTIFY, not polling.

The server side: a statement-level trigger on the tables the dashboard shows (mailings, events,
settings; never per recipient row: a sender's batch of 500 outcomes is one UPDATE of its
mailing's counters, so one notification) calls `pg_notify('mailtower', <table>)`. The server
sends notifications at COMMIT and folds identical ones of one transaction into one, so a
transaction causes at most three, and a rolled-back one none. NOTIFY_DDL is part of the schema
(core/pg_schema.py) and is idempotent, so `install_notify` adds it to a database created before.

The client side: `ChangeListener` keeps one connection of its own in LISTEN and counts what
arrives (`notified`); the dashboard compares that counter between two ticks instead of asking
the server every tick. When the connection drops it is opened again after a pause that doubles
up to MAX_BACKOFF, each attempt bounded by CONNECT_TIMEOUT; every (re)connection counts as a
change (what happened meanwhile was not heard). An idle connection is pinged every PING seconds,
so a silently dead one is noticed. While it is not listening (reconnecting, or the triggers are
missing and this login may not add them) the dashboard polls as it does on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from .db_target import PgTarget

log = logging.getLogger(__name__)

CHANNEL = "mailtower"
NOTIFY_TABLES = ("mailings", "events", "settings")
CONNECT_TIMEOUT = 5  # seconds, per attempt
FIRST_BACKOFF = 0.25  # seconds before the first reconnection; doubles up to MAX_BACKOFF
MAX_BACKOFF = 5.0
PING = 5.0  # seconds without a notification before the connection is checked
CLOSE_TIMEOUT = 5.0

_FUNCTION = f"""
CREATE OR REPLACE FUNCTION mailtower_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', TG_TABLE_NAME);
    RETURN NULL;
END $$;
"""
_TRIGGERS = "".join(
    f"""
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'mailtower_notify_{table}' AND tgrelid = '{table}'::regclass) THEN
        CREATE TRIGGER mailtower_notify_{table} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table}
            FOR EACH STATEMENT EXECUTE FUNCTION mailtower_notify();
    END IF;
END $$;
"""
    for table in NOTIFY_TABLES
)
NOTIFY_DDL = _FUNCTION + _TRIGGERS  # idempotent: run at schema creation, and by install_notify

_INSTALLED_SQL = (
    "SELECT COUNT(*) FROM pg_trigger WHERE tgname IN ("
    + ", ".join(f"'mailtower_notify_{t}'" for t in NOTIFY_TABLES) + ")"
)


async def install_notify(conn: Any) -> None:
    """Add the triggers to a database that lacks them (one created before they existed), under
    the store's write lock so two dashboards do not race; a no-op when they are there."""
    from .store_pg import WRITE_LOCK

    cur = await conn.execute(_INSTALLED_SQL)
    if (await cur.fetchone())[0] == len(NOTIFY_TABLES):
        return
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
        await conn.execute(NOTIFY_DDL.encode())


class _NoTriggers(Exception):
    """The notify triggers are missing and this login cannot add them."""


class ChangeListener:
    """One LISTEN connection; `notified` grows with every notification and every reconnection."""

    def __init__(self, target: PgTarget, on_change: Callable[[], None] | None = None) -> None:
        self.target = target
        self.on_change = on_change
        self.notified = 0
        self.connects = 0
        self.connected = False
        self.unavailable = ""  # why notifications cannot work here (the triggers could not be added)
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="mailtower-listen")

    async def close(self) -> None:
        """Stop listening: the task is cancelled and its connection closed, in bounded time."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError, Exception):
                await asyncio.wait_for(task, timeout=CLOSE_TIMEOUT)
        await self._close_conn()

    def drop_connection(self) -> None:
        """Break the connection now (tests, and a caller that knows the server went away)."""
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.pgconn.finish()

    async def _run(self) -> None:
        backoff = FIRST_BACKOFF
        while True:
            connects = self.connects
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except _NoTriggers as exc:
                self.unavailable = self.target.scrub(str(exc))  # the driver's text: never the password
                log.warning("database %s: no change notifications (%s); the dashboard polls instead", self.target,
                            self.unavailable)
                await self._close_conn()
                return
            except Exception as exc:  # noqa: BLE001 - any failure means: connect again, later
                log.info("database %s: change notifications interrupted (%s); reconnecting in %.2g s",
                         self.target, self.target.scrub(str(exc)), backoff)
            finally:
                self.connected = False
                await self._close_conn()
            if self.connects > connects:
                backoff = FIRST_BACKOFF  # it was listening: the next loss starts the pauses anew
            await asyncio.sleep(backoff)  # bounded pause between attempts (not a synchronisation)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _listen(self) -> None:
        import psycopg

        self._conn = await psycopg.AsyncConnection.connect(
            self.target.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT, application_name="mailtower-listen")
        try:
            await install_notify(self._conn)
        except psycopg.Error as exc:  # e.g. a login that may not create triggers: poll instead
            if self._conn.broken or self._conn.closed:
                raise
            raise _NoTriggers(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from None
        await self._conn.execute(f"LISTEN {CHANNEL}")
        self.connected = True
        self.connects += 1
        self._changed()  # whatever happened while we were not listening
        while True:
            async for _ in self._conn.notifies(timeout=PING):
                self._changed()
            await self._conn.execute("SELECT 1")  # quiet for PING seconds: is the connection alive?

    def _changed(self) -> None:
        self.notified += 1
        if self.on_change is not None:
            self.on_change()

    async def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=CLOSE_TIMEOUT)
