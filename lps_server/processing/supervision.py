"""Supervised loops, and the health they report.

A loop that raises is logged with its cause and started again after a backoff, so one bad payload
or one bug can stop a loop only for a moment, never for good. Whether the processor can work is
reported to a listener (the gRPC health service) on every change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)
RESTART_BACKOFF_S = (0.1, 5.0)
# A loop that ran this long before it failed starts its backoff afresh.
HEALTHY_RUN_S = 30.0


async def supervise(
    name: str,
    loop: Callable[[], Awaitable[None]],
    *,
    stopping: asyncio.Event,
    on_failure: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run `loop` until it returns. After any exception: log it, call `on_failure`, wait (0.1 s
    doubling to 5 s) and run it again; return instead when `stopping` is set meanwhile."""
    low, high = RESTART_BACKOFF_S
    failures = 0
    while True:
        started = time.monotonic()
        try:
            await loop()
            return
        except Exception as exc:
            if time.monotonic() - started >= HEALTHY_RUN_S:
                failures = 0
            failures += 1
            delay = min(high, low * 2 ** (failures - 1))
            log.error(
                "%s loop failed, restarting it in %.2fs: %s: %s",
                name,
                delay,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
            if on_failure is not None:
                await on_failure()
        try:
            await asyncio.wait_for(stopping.wait(), delay)
            return
        except TimeoutError:
            continue


#: Told True when the processor can work, False when it cannot.
ServingListener = Callable[[bool], Awaitable[None]]


class Health:
    """Whether the processor can work (its dispatcher runs and reaches the queue), told to a
    listener on every change. It starts as serving: the application reports SERVING at start.

    Args:
        listener: told the new state on every change (None: nobody listens).
    """

    def __init__(self, listener: ServingListener | None) -> None:
        self._listener = listener
        self._serving = True

    @property
    def serving(self) -> bool:
        """The state last reported."""
        return self._serving

    async def report(self, serving: bool) -> None:
        """Note the current state; tell the listener when it changed."""
        if serving == self._serving:
            return
        self._serving = serving
        if serving:
            log.info("processing recovered: serving again")
        else:
            log.warning("processing cannot run: reporting NOT_SERVING until it can")
        if self._listener is None:
            return
        try:
            await self._listener(serving)
        except Exception:  # health reporting must never stop the loop that reports
            log.exception("could not report health %s", "SERVING" if serving else "NOT_SERVING")
