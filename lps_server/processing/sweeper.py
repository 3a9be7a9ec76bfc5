"""The sweeper: one loop per replica that reclaims lapsed leases and ends what waits in vain.

Every `LPS_QUEUE_SWEEP_INTERVAL_SECONDS` it asks the queue to put lapsed leases back in their
place (a holder died, stalled, or could not give its requests back while Redis was unreachable)
and ends the queued requests past their TTL (EXPIRED, `cleanup`) and those whose payload cannot be
read. A sweep that cannot reach the queue is skipped, never fatal: the next one does its work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from lps_server.core.errors import QueueUnavailableError
from lps_server.processing.endings import RequestEndings
from lps_server.queue.base import QueueBackend

log = logging.getLogger(__name__)


async def sweep_forever(
    *,
    queue: QueueBackend,
    endings: RequestEndings,
    interval_s: float,
    clock: Callable[[], float],
    stopping: asyncio.Event,
) -> None:
    """Sweep every `interval_s` seconds (`clock`: Unix time) until `stopping` is set."""
    while not stopping.is_set():
        try:
            found = await queue.sweep(now=clock())
            if found.reclaimed:
                log.warning("reclaimed %d requests whose lease lapsed", found.reclaimed)
            await endings.end_unreadable(found.unreadable, token=found.token)
            await endings.expire(found.expired, reason="cleanup", token=found.token)
        except QueueUnavailableError as exc:
            log.warning("sweep skipped: %s", exc)
        try:
            await asyncio.wait_for(stopping.wait(), interval_s)
        except TimeoutError:
            continue
