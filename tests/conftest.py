from __future__ import annotations

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
