"""Send again to the failed recipients of a finished or stopped mailing (issue 13, item 9).

The same mailing goes back to the queue (state `queued`, through the lifecycle's RETRY, with a
`retry` event): its failed rows that are picked become `pending` again with a fresh retry age,
so the ledger stays one row per recipient and Message-IDs stay the same. Which rows:

- `temporary` (the default): failures that may pass (smtp_replies.failure_may_pass): given up
  after the retry age, policy refusals (5.7.x) and the like;
- `all`: every failed row.

Never a row whose address is on the suppression list, whatever the mode.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import UserError
from .lifecycle import Lifecycle
from .smtp_replies import failure_may_pass
from .store import Store, Tx

PAGE = 2000


class RetryMode(str, enum.Enum):
    TEMPORARY = "temporary"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class RetryPlan:
    """What a retry did: rows sent again, failed rows kept (suppressed, or permanent in
    `temporary` mode)."""

    requeued: int
    suppressed: int
    permanent: int

    def describe(self) -> str:
        kept = []
        if self.suppressed:
            kept.append(f"{self.suppressed:,} suppressed")
        if self.permanent:
            kept.append(f"{self.permanent:,} failed permanently")
        return f"{self.requeued:,} failed recipients sent again" + (f" ({', '.join(kept)} kept as failed)" if kept else "")


async def _pick(tx: Tx, mailing_id: int, mode: RetryMode) -> RetryPlan:
    chosen: list[int] = []
    suppressed = permanent = 0
    after = 0
    while True:  # bounded: every page moves `after` past the rows it returned
        page = await tx.failed_rows(mailing_id, after, PAGE)
        if not page:
            break
        after = page[-1][0]
        for row_id, code, text, _in_doubt, barred in page:
            if barred:
                suppressed += 1
            elif mode is RetryMode.ALL or failure_may_pass(code, text or ""):
                chosen.append(row_id)
            else:
                permanent += 1
    plan = RetryPlan(len(chosen), suppressed, permanent)
    if not chosen:
        hint = " (`--all` takes those too)" if permanent and mode is RetryMode.TEMPORARY else ""
        raise UserError(f"mailing {mailing_id}: no failed recipient to send again; {plan.describe()}{hint}")
    await tx.requeue_failed(mailing_id, chosen)
    return plan


async def retry_failed(store: Store, mailing_id: int, mode: RetryMode = RetryMode.TEMPORARY) -> RetryPlan:
    """Re-queue the mailing for its failed recipients that `mode` picks; UserError (nothing
    changed) when the mailing is not stopped or completed, or none is picked."""
    result: list[RetryPlan] = []

    async def requeue(tx: Tx) -> str:
        plan = await _pick(tx, mailing_id, mode)
        result.append(plan)
        return f"{mode.value}: {plan.describe()}"

    await Lifecycle(store).retry(mailing_id, requeue)
    return result[0]
