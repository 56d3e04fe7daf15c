"""What counts as "a database error", for either engine, and one line for a PostgreSQL failure.

Catch sites write `except (*database_errors(), OSError)`: the tuple holds sqlite3.Error, and
psycopg.Error once psycopg has been imported (only core/store_pg and the PostgreSQL lease import
it, so a SQLite-only process never pays for loading the driver).
"""

from __future__ import annotations

import sqlite3
import sys

from .db_target import redact_url
from .errors import UserError


def database_errors() -> tuple[type[BaseException], ...]:
    psycopg = sys.modules.get("psycopg")
    if psycopg is None:
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


def is_database_error(exc: BaseException) -> bool:
    return isinstance(exc, database_errors())


def is_pg_error(exc: BaseException) -> bool:
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(exc, (psycopg.Error, getattr(sys.modules.get("psycopg_pool"), "PoolTimeout", ())))


# libpq's words for the usual reasons a connection fails, and what they mean to an operator.
_CONNECTION_FAULTS: tuple[tuple[str, str], ...] = (
    ("lock timeout", "another session held a lock too long (the database stayed busy); try again"),
    ("connection refused", "the server is not running or does not accept connections there"),
    ("no such file or directory", "the server is not running (no socket there)"),
    ("could not translate host name", "the host name is not known"),
    ("name or service not known", "the host name is not known"),
    ("timeout expired", "the server did not answer in time"),
    ("password authentication failed", "authentication failed (wrong user or password)"),
    ("no password supplied", "the server wants a password and none was given"),
    ("no pg_hba.conf entry", "the server does not let this user connect from here (pg_hba.conf)"),
    ("does not exist", "the database does not exist (create it first: createdb)"),
    ("too many connections", "the server has no connection left (max_connections)"),
    ("the database system is starting up", "the server is starting up; try again"),
    ("the database system is shutting down", "the server is shutting down"),
    ("terminating connection", "the server ended the connection (shut down or restarted)"),
    ("server closed the connection", "the server closed the connection"),
    ("connection is closed", "the connection to the server was lost"),
    ("consuming input failed", "the connection to the server was lost"),
    ("permission denied", "permission denied"),
    ("read-only transaction", "the server is read-only (a standby)"),
    ("could not extend file", "the server's disk is full"),
    ("no space left", "the server's disk is full"),
)


def pg_failure(target: object, exc: BaseException) -> UserError | None:
    """One line naming the database (its URL without the password) for a PostgreSQL error that
    is the server's or the connection's fault; None for one that is a bug (bad SQL, a constraint)."""
    if not is_pg_error(exc):
        return None
    scrub = getattr(target, "scrub", redact_url)  # a PgTarget knows every form of its password
    text = scrub(str(exc)).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    lower = text.lower()
    psycopg = sys.modules["psycopg"]
    connection_trouble = isinstance(exc, psycopg.OperationalError) or type(exc).__name__ == "PoolTimeout"
    if isinstance(exc, psycopg.errors.InsufficientPrivilege) or isinstance(exc, psycopg.errors.DiskFull):
        connection_trouble = True
    if not connection_trouble:
        return None
    if "role" in lower and "does not exist" in lower:
        return UserError(f"database {target}: the user does not exist on the server ({first})")
    for phrase, meaning in _CONNECTION_FAULTS:
        if phrase in lower:
            return UserError(f"database {target}: {meaning} ({first})")
    return UserError(f"database {target}: {first}")
