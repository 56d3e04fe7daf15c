"""Shared test helpers: recipient files, running the CLI, waiting on conditions."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailtower.tui.cli import main as cli_main

if TYPE_CHECKING:
    from textual.pilot import Pilot


def write_csv(path: Path, rows: Iterable[dict[str, str]], columns: list[str] | None = None) -> Path:
    rows = list(rows)
    columns = columns or list(rows[0].keys())
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def recipients(n: int, domain: str = "example.com", start: int = 0, **extra: str) -> list[dict[str, str]]:
    return [{"email": f"user{i}@{domain}", "name": f"User {i}", **extra} for i in range(start, start + n)]


async def sending_mailing(store: Any, csv_path: Path, n: int, claim: int) -> tuple[int, list[Any], Any]:
    """A mailing of `n` recipients (user0@example.com ...) written to `csv_path`, started, with
    `claim` rows claimed as the sender claims them: (mailing id, claimed rows, the mailing)."""
    from mailtower.core.lifecycle import Lifecycle
    from mailtower.core.operations import Draft, create_mailing

    people = write_csv(csv_path, recipients(n))
    mailing_id, _ = await create_mailing(store, Draft("m", "s", "news@example.org", "hi", None), people, lambda *a: None)
    lifecycle = Lifecycle(store)
    await lifecycle.send_now(mailing_id)
    await lifecycle.start(mailing_id)
    claimed, mailing = await store.record_and_claim(mailing_id, [], claim)
    return mailing_id, claimed, mailing


class Cli:
    """Runs `mailtower` in-process against one database and SMTP port, capturing output."""

    def __init__(self, db: Path, smtp_port: int | None = None, **env: str) -> None:
        self.db = db
        # A PgTarget (tests on PostgreSQL) gives its full URL; a path its text.
        self.env = {"MAILTOWER_DB": getattr(db, "url", str(db)), "MAILTOWER_CONFIG": os.devnull, **env}
        if smtp_port:
            self.env.update({"MAILTOWER_SMTP_HOST": "127.0.0.1", "MAILTOWER_SMTP_PORT": str(smtp_port)})

    def __call__(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            with redirect_stdout(out), redirect_stderr(err):
                try:
                    code = cli_main(list(args))
                except SystemExit as exc:
                    code = int(exc.code or 0)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return code, out.getvalue(), err.getvalue()

    def ok(self, *args: str) -> str:
        code, out, err = self(*args)
        assert code == 0, f"mailtower {' '.join(args)} exited {code}: {err}"
        return out

    def popen(self, *args: str, **kw: object) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.env}
        return subprocess.Popen([sys.executable, "-m", "mailtower.tui.cli", *args], env=env, **kw)  # type: ignore[call-overload]


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, interval: float = 0.02, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 20.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for condition")


async def until(pilot: "Pilot[Any]", condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> None:
    """Let a Textual app run until `condition` holds (the app processes messages meanwhile)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(interval)


def read_terminal(master: int, proc: "subprocess.Popen[bytes]", deadline: float) -> bytes:
    """Everything written to a pseudo-terminal (its master side) by `proc`, until end of file
    (every writer closed it), the process ended with nothing more to read, or `deadline`
    (monotonic): bounded whatever the child does."""
    import select

    seen = bytearray()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every writer of the terminal is gone
            break
        if not chunk:
            break
        seen += chunk
    return bytes(seen)
