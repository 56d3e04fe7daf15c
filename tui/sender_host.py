"""The dashboard's own sender: the in-process `Sender` the app starts when the lease is free.

What lives here: `SenderHost`, which asks the lease who sends (`holder`), says when a failed
sender may be started again (`may_start`), creates the `Sender` and runs it in a worker the app
starts (`create`, `run`), keeps the one line saying why it stopped (`failure`, shown in the
header until a sender runs again), and stops it gracefully within `stop_timeout` (`stop`). The
app (tui/app.py) decides the mode it shows (sending here, monitoring another process, off) from
these, and says what happened in its toasts; the hand-off to a background `mailtower run` when
the dashboard leaves is in tui/handoff.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from textual.worker import Worker, WorkerCancelled, WorkerFailed

from mailtower.core.config import Settings
from mailtower.core.lease import Holder, sender_lease
from mailtower.core.sender import LeaseHeld, Sender, SenderFailed

log = logging.getLogger("mailtower.dashboard")

SENDER_RETRY = 10.0  # seconds before starting our sender again after it failed
STOP_TIMEOUT = 60.0  # seconds to wait for in-flight messages when handing off

StartWorker = Callable[[Coroutine[Any, Any, None]], "Worker[None]"]


class SenderHost:
    """Starts, owns and stops the dashboard's in-process sender; one at a time."""

    def __init__(self, settings: Settings, *, stop_timeout: float = STOP_TIMEOUT) -> None:
        self.settings = settings
        self.stop_timeout = stop_timeout
        self.sender: Sender | None = None
        self.worker: Worker[None] | None = None
        self.failure = ""  # why our sender stopped, shown in the header until one runs again
        self.stopping = False  # a graceful stop is waiting for in-flight messages
        self.retry_at = 0.0  # monotonic time before which a failed sender is not started again
        self._probe = sender_lease(settings.db)

    def holder(self) -> Holder | None:
        """Who holds the sender lease now (None: it is free)."""
        return self._probe.holder()

    def may_start(self) -> bool:
        return time.monotonic() >= self.retry_at

    def create(self) -> Sender:
        """A new sender for this dashboard. A bad relay setting raises; the next try then waits."""
        try:
            sender = Sender(self.settings, what="dashboard")
        except Exception:
            self.retry_at = time.monotonic() + SENDER_RETRY
            raise
        # Keys first (issue 11 item 16): the ledger writes leave the event loop the keys share.
        sender.inline_writes = False
        return sender

    def run(
        self,
        sender: Sender,
        start_worker: StartWorker,
        on_failure: Callable[[str], None],
        on_end: Callable[[], None],
    ) -> None:
        """Own `sender` and run it in a worker from `start_worker` (an App-level worker lives as
        long as the app). `on_failure(why)` when it breaks, `on_end()` once it is gone."""
        self.sender = sender
        self.failure = ""
        self.worker = start_worker(self._run(sender, on_failure, on_end))

    async def _run(self, sender: Sender, on_failure: Callable[[str], None], on_end: Callable[[], None]) -> None:
        try:
            await sender.run()
        except LeaseHeld:
            pass  # another process took the lease first: the next check monitors it
        except Exception as exc:  # the dashboard must outlive a broken sender
            log.exception("sender stopped")
            self.retry_at = time.monotonic() + SENDER_RETRY
            # One line naming the cause, kept in the header (a toast alone is easy to miss).
            why = str(exc) if isinstance(exc, SenderFailed) else f"the sender stopped: {exc}"
            self.failure = why
            on_failure(why)
        finally:
            if self.sender is sender:
                self.sender = None
                on_end()

    async def stop(self, on_stopping: Callable[[], None]) -> None:
        """Graceful: in-flight messages finish and are recorded, unstarted rows go back to pending.
        `on_stopping()` runs once `stopping` is set, before the wait (the header says so)."""
        sender, worker = self.sender, self.worker
        if sender is None or worker is None:
            return
        self.stopping = True
        on_stopping()
        sender.request_stop()
        try:
            await asyncio.wait_for(worker.wait(), timeout=self.stop_timeout)
        except (TimeoutError, WorkerFailed, WorkerCancelled):
            worker.cancel()
        self.sender = None
        self.stopping = False
