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
    """`settle` stopped asking: the leases lapsed before the queue answered."""


BACKOFF_CAP_S = 30.0
# How long to wait before asking Redis again about an operation that had no answer.
SETTLE_RETRY_S = (0.05, 1.0)


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

    When Redis does not answer (a timeout, a connection lost mid-call), the operation may or may
    not have run. The scripts are fenced and idempotent, so asking again is how to find out: a
    completion that did run answers "stored by you" again, and its results are delivered then.
    The keeper keeps the leases alive meanwhile; once they lapse, another replica may take the
    requests over at any moment, so the caller gives up (at the latest two lease periods on).

    Raises:
        GaveUp: the leases lapsed (or two lease periods passed) without an answer; logged.
    """
    delay, cap = SETTLE_RETRY_S
    clock = keeper.clock
    give_up_at = clock() + 2 * keeper.lease_s
    while True:
        try:
            return await operation()
        except QueueUnavailableError as exc:
            if keeper.lapsed() or clock() >= give_up_at:
                log.error(
                    "could not %s before the leases lapsed; another replica will take them over "
                    "and redo the work: %s",
                    what,
                    exc,
                )
                raise GaveUp(what) from exc
            log.warning(
                "could not %s, the outcome is unknown; asking again in %.2fs: %s",
                what,
                delay,
                exc,
            )
        await asyncio.sleep(delay)
        delay = min(cap, delay * 2)
