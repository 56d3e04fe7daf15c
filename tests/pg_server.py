"""A throw-away PostgreSQL server for the tests (Debian's postgresql package: initdb, pg_ctl).

One server per test session: a temporary directory, 127.0.0.1 on a free port, its unix socket in
that directory, fsync off, trust authentication for 127.0.0.1 only. Each test gets a fresh
database copied from a template that already holds the mailtower schema (CREATE DATABASE ...
TEMPLATE is a file copy: milliseconds). initdb refuses to run as root, so as root the server runs
as the `postgres` user on a directory chowned to it. `stop()` ends it with `pg_ctl stop -m
immediate`, bounded, and kills the postmaster if that fails: no process outlives the session.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mailtower.core.sink import free_port

NO_POSTGRES_ENV = "MAILTOWER_TESTS_NO_POSTGRES"
USER = "mailtower"
TEMPLATE = "mailtower_template"
PASSWORD_USER, PASSWORD = "mailtower_pw", "right-horse-battery"
START_TIMEOUT = 60  # seconds
STOP_TIMEOUT = 20


class PostgresMissing(RuntimeError):
    pass


def find_bindir() -> Path:
    """The directory with initdb and pg_ctl: PG_BINDIR, else Debian's newest /usr/lib/postgresql/N/bin."""
    given = os.environ.get("PG_BINDIR")
    candidates = [Path(given)] if given else sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    found = None if given else shutil.which("pg_ctl")  # PG_BINDIR, when set, is the only place looked at
    if found and (Path(found).parent / "initdb").is_file():
        return Path(found).parent
    raise PostgresMissing(
        "PostgreSQL binaries (initdb, pg_ctl) not found: install Debian's postgresql package "
        f"(apt-get install postgresql), set PG_BINDIR, or set {NO_POSTGRES_ENV}=1 to run the SQLite half only"
    )


@dataclass
class PgServer:
    bindir: Path
    root: Path
    port: int = 0
    _as_postgres: bool = False
    _counter: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def _cmd(self, *args: str) -> list[str]:
        if self._as_postgres:
            return ["runuser", "-u", "postgres", "--", *args]
        return list(args)

    def _run(self, *args: str, timeout: float = START_TIMEOUT) -> None:
        proc = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr.strip()}\n{tail}")

    def start(self) -> None:
        self._as_postgres = os.getuid() == 0
        if self._as_postgres:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresMissing("initdb refuses to run as root and there is no `postgres` user to run it as: "
                                      "install Debian's postgresql package (it creates the user)") from None
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.socket_dir.mkdir()
        if self._as_postgres:
            os.chown(self.socket_dir, entry.pw_uid, entry.pw_gid)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        with open(self.data / "pg_hba.conf", "w", encoding="utf-8") as hba:  # only the socket and 127.0.0.1
            # PASSWORD_USER must give its password (the tests of a refused login); everyone else is trusted.
            hba.write(f"local all all trust\nhost all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256\n"
                      "host all all 127.0.0.1/32 trust\n")
        for attempt in range(5):
            self.port = free_port()
            options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.socket_dir} -c fsync=off "
                       "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
                       "-c shared_buffers=32MB")
            try:
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                          "-o", options, "-w", "-t", str(START_TIMEOUT), "start", timeout=START_TIMEOUT + 10)
                return
            except RuntimeError:
                if attempt == 4:
                    raise  # the port was taken between the probe and the start, five times

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-t", str(STOP_TIMEOUT),
                      "-w", "stop", timeout=STOP_TIMEOUT + 10)
        except (RuntimeError, subprocess.TimeoutExpired):
            self._kill_postmaster()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except OSError:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                return
            time.sleep(0.05)

    # ---- databases ---------------------------------------------------------------------------

    def admin(self) -> "object":
        import psycopg

        return psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=10)

    def prepare_template(self) -> None:
        """A database holding the mailtower schema, copied for each test."""
        import asyncio

        from mailtower.core.db_target import parse_pg_url
        from mailtower.core.store import open_store

        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {TEMPLATE}")
            conn.execute(f"CREATE ROLE {PASSWORD_USER} LOGIN SUPERUSER PASSWORD '{PASSWORD}'")

        async def migrate() -> None:
            store = await open_store(parse_pg_url(self.url(TEMPLATE), "test template"))
            await store.close()

        asyncio.run(migrate())
        with self.admin() as conn:
            conn.execute(f"ALTER DATABASE {TEMPLATE} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false")

    def new_database(self, *, empty: bool = False) -> str:
        """A fresh database (with the schema, from the template; or `empty`); returns its URL."""
        name = f"t{os.getpid()}_{next(self._counter)}"
        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE {'template0' if empty else TEMPLATE}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with self.admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def start_server() -> PgServer:
    bindir = find_bindir()
    server = PgServer(bindir, Path(tempfile.mkdtemp(prefix="mailtower-pg-")))
    try:
        server.start()
        server.prepare_template()
    except BaseException:
        server.stop()
        raise
    return server


# ---- reading and writing either engine directly (tests that look under the store) --------------


def sql_rows(db: object, sql: str, params: tuple = ()) -> list[tuple]:
    """Rows of `sql` (SQLite's `?` placeholders) on a SQLite path or a PgTarget, in its own
    connection and transaction, as another process would see them."""
    url = getattr(db, "url", None)
    if url is None:
        import sqlite3

        with sqlite3.connect(db) as conn:  # type: ignore[arg-type]
            return conn.execute(sql, params).fetchall()
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        cur = conn.execute(sql.replace("%", "%%").replace("?", "%s"), params)
        return cur.fetchall() if cur.description is not None else []


def sql_execute(db: object, sql: str, params: tuple = ()) -> None:
    """Run one statement (SQLite's `?` placeholders) on either engine and commit it."""
    url = getattr(db, "url", None)
    if url is None:
        import sqlite3

        conn = sqlite3.connect(db)  # type: ignore[arg-type]
        try:
            with conn:
                conn.execute(sql, params)
        finally:
            conn.close()
        return
    sql_rows(db, sql, params)


class _PgTestConnection:
    """What tests use of a sqlite3 connection (execute with `?`, fetch, iterate), over psycopg."""

    def __init__(self, url: str, rows_as_dicts: bool = False) -> None:
        import psycopg
        from psycopg.rows import dict_row

        self._conn = psycopg.connect(url, autocommit=True, connect_timeout=10,
                                     **({"row_factory": dict_row} if rows_as_dicts else {}))

    def execute(self, sql: str, params: tuple = ()):  # noqa: ANN201 - a psycopg cursor
        return self._conn.execute(sql.replace("%", "%%").replace("?", "%s"), params)

    def __enter__(self) -> "_PgTestConnection":
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.close()


def connect(db: object, *, rows_as_dicts: bool = False):  # noqa: ANN201
    """sqlite3.connect(db) for a path; for a PgTarget a connection that takes the same SQL."""
    url = getattr(db, "url", None)
    if url is None:
        import sqlite3

        conn = sqlite3.connect(db)  # type: ignore[arg-type]
        if rows_as_dicts:
            conn.row_factory = sqlite3.Row
        return conn
    return _PgTestConnection(url, rows_as_dicts)
