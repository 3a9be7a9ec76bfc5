"""Trying again: when a failed item is due for its retry, and how to ask the queue again when its
answer was lost.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from lps_server.core.errors import QueueUnavailableError
from lps_server.processing.leases import LeaseKeeper

log = logging.getLogger(__name__)
T = TypeVar("T")


class GaveUp(Exception):
    """`settle` stopped asking: the queue did not answer within its patience."""


BACKOFF_CAP_S = 30.0
# How long to wait before asking Redis again about an operation that had no answer.
SETTLE_RETRY_S = (0.05, 1.0)
# How long `settle` keeps asking (at least two lease periods): the provider's answers are kept
# in memory meanwhile, to be stored when Redis is back if the leases were not taken over.
SETTLE_PATIENCE_S = 120.0


def retry_delay(
    attempt: int,
    hints: Sequence[float],
    *,
    base_s: float,
    hint_cap_s: float,
    rng: random.Random,
) -> float:
    """Seconds before retry number `attempt`: exponential backoff with full jitter, capped at
    BACKOFF_CAP_S, but never shorter than the longest provider hint (Retry-After), which counts
    up to `hint_cap_s` (LPS_RETRY_AFTER_MAX_SECONDS): a provider asking for a day must not hold
    a request for a day."""
    delay = rng.uniform(0, min(BACKOFF_CAP_S, base_s * 2 ** (attempt - 1)))
    return max([delay, *(min(h, hint_cap_s) for h in hints)])


async def settle(operation: Callable[[], Awaitable[T]], keeper: LeaseKeeper, what: str) -> T:
    """Run a fenced queue operation until it answers.

    When Redis does not answer (a timeout, a connection lost mid-call, Redis down), the
    operation may or may not have run. The scripts are fenced and idempotent, so asking again is
    how to find out: a completion that did run (a script sent into a frozen Redis runs when it
    resumes) answers "stored by you" again, and its results are counted and delivered then. The
    keeper keeps the leases alive meanwhile. Once they lapse another replica may take the
    requests over, but asking stays safe: the fence then refuses, and the caller learns that
    these requests are another holder's. So it asks for SETTLE_PATIENCE_S (at least two lease
    periods), whether or not the leases lapsed meanwhile.

    Raises:
        GaveUp: the queue did not answer within that time; logged.
    """
    delay, cap = SETTLE_RETRY_S
    clock = keeper.clock
    give_up_at = clock() + max(SETTLE_PATIENCE_S, 2 * keeper.lease_s)
    told_lapsed = False
    while True:
        try:
            return await operation()
        except QueueUnavailableError as exc:
            if clock() >= give_up_at:
                log.error(
                    "could not %s: the queue did not answer for %.0fs, giving up: %s",
                    what,
                    max(SETTLE_PATIENCE_S, 2 * keeper.lease_s),
                    exc,
                )
                raise GaveUp(what) from exc
            log.warning(
                "could not %s, the outcome is unknown; asking again in %.2fs: %s",
                what,
                delay,
                exc,
            )
            if keeper.lapsed() and not told_lapsed:
                told_lapsed = True
                log.warning(
                    "the leases lapsed while trying to %s; still asking: unless another replica "
                    "took the requests over meanwhile, this holder's answer is the one kept",
                    what,
                )
        await asyncio.sleep(delay)
        delay = min(cap, delay * 2)
