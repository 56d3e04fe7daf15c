"""Hostile review of the dashboard on PostgreSQL (issue 15 item 5): the server going away."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from mailtower.core.config import Settings
from mailtower.core.db_target import parse_pg_url
from mailtower.tui.app import DashboardApp
from tests.core import test_postgres_review as review
from tests.helpers import wait_for
from tests.pg_server import sql_execute
from tests.tui.test_pg_listen import draft, inactive

own_server = review.own_server  # a fixture: a server of the test's own, stopped and started mid-test
_pg_ctl = review._pg_ctl

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(autouse=True)
def _no_inherited_db(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILTOWER_DB", raising=False)


def check(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return predicate()
    return probe


async def test_the_server_going_away_is_one_line_and_the_dashboard_carries_on(own_server, tmp_path: Path) -> None:  # noqa: ANN001
    target = parse_pg_url(own_server.new_database(), "test")
    mailing_id = await draft(target, tmp_path)
    app = DashboardApp(Settings(db=target), start_sender=False, operator_tz="UTC")  # type: ignore[arg-type]
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_for(check(lambda: inactive(app, mailing_id) is not None), timeout=20)
        _pg_ctl(own_server, "-m", "fast", "stop")
        app._force = True  # noqa: SLF001 - read at the next tick, as the safety poll would

        def warned() -> list[str]:
            return [str(n.message) for n in app._notifications if "database" in str(n.message)]  # noqa: SLF001

        await wait_for(check(lambda: bool(warned())), timeout=30)
        (message,) = warned()
        assert "\n" not in message and f"{target}" in message, message  # one line, naming the database
        # The lease probe (who sends?) asks the server every second too: it must not end the app.
        checks = app._next_lease_check  # noqa: SLF001
        await wait_for(check(lambda: app._next_lease_check >= checks + 2), timeout=30)  # noqa: SLF001
        assert app.is_running and app.return_code is None
        assert app.holder is not None and "cannot be reached" in app.holder.what  # unknown is not "free"
        _pg_ctl(own_server, "start")
        sql_execute(target, "UPDATE mailings SET name = 'after the restart' WHERE id = ?", (mailing_id,))
        app._force = True  # noqa: SLF001
        await wait_for(check(lambda: getattr(inactive(app, mailing_id), "name", "") == "after the restart"),
                       timeout=30)
        await pilot.pause()
