from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailtower.core.sink import Sink
from tests.helpers import Cli


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as s:
        yield s


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "mailtower.db"


@pytest.fixture
def cli(db: Path, sink: Sink) -> Cli:
    return Cli(db, sink.port, MAILTOWER_SMTP_CONNECTIONS="4", MAILTOWER_RETRY_BASE="0.2", MAILTOWER_RETRY_MAX="0.5")


@pytest.fixture
def body(tmp_path: Path) -> Path:
    path = tmp_path / "body.txt"
    path.write_text("Hello {{ name }},\nyour code is {{ code }}.\n", encoding="utf-8")
    return path


# ---- both engines (issue 15): a SQLite file or a fresh database on a throw-away PostgreSQL ----------


@pytest.fixture(scope="session")
def pg_server():
    """The session's PostgreSQL server (tests/pg_server.py), started on first use. Without the
    binaries the PostgreSQL half FAILS, saying what to install, unless MAILTOWER_TESTS_NO_POSTGRES=1."""
    import os

    from tests.pg_server import NO_POSTGRES_ENV, PostgresMissing, start_server

    if os.environ.get(NO_POSTGRES_ENV) == "1":
        pytest.skip(f"{NO_POSTGRES_ENV}=1: the PostgreSQL half is not run")
    try:
        server = start_server()
    except PostgresMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server) -> Iterator[str]:
    """The URL of a fresh PostgreSQL database that already has the mailtower schema."""
    url = pg_server.new_database()
    try:
        yield url
    finally:
        pg_server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgres"])
def db_target(request: pytest.FixtureRequest, tmp_path: Path):
    """What a test opens with open_store(): a SQLite file path, or a PgTarget of a fresh database."""
    if request.param == "sqlite":
        return tmp_path / "m.db"
    from mailtower.core.db_target import parse_pg_url

    return parse_pg_url(request.getfixturevalue("pg_url"), "test database")


@pytest.fixture
def reap() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test started; any still running at the end are killed (no leftovers)."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
