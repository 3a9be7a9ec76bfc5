"""Supervised loops, and the health they report.

A loop that raises is logged with its cause and started again after a backoff, so one bad payload
or one bug can stop a loop only for a moment, never for good. Whether the processor can work is
reported to a listener (the gRPC health service) on every change; a ping of the queue every
second keeps that true while the dispatcher has no reason to reach the queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from lps_server.core.errors import QueueBusyError, QueueUnavailableError

log = logging.getLogger(__name__)
RESTART_BACKOFF_S = (0.1, 5.0)
# The queue is pinged this often; a ping unanswered after PING_TIMEOUT_S counts as unreachable.
PING_INTERVAL_S = 1.0
PING_TIMEOUT_S = 2.5
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


async def ping_forever(
    ping: Callable[[], Awaitable[None]], health: Health, *, stopping: asyncio.Event
) -> None:
    """Tell `health` whether the queue answers `ping`, every PING_INTERVAL_S until `stopping`,
    whatever the dispatcher is doing: while every provider is busy it does not lease, and only
    this notices that the queue went away."""
    while not stopping.is_set():
        try:
            await asyncio.wait_for(ping(), PING_TIMEOUT_S)
            reachable = True
        except QueueBusyError:
            reachable = True  # this replica's pool is full: Redis answers others, not an outage
        except (QueueUnavailableError, TimeoutError) as exc:
            if health.serving:
                log.warning("the queue does not answer a ping: %s", str(exc) or "timed out")
            reachable = False
        await health.report_queue(reachable)
        try:
            await asyncio.wait_for(stopping.wait(), PING_INTERVAL_S)
        except TimeoutError:
            continue


#: Told True when the processor can work, False when it cannot.
ServingListener = Callable[[bool], Awaitable[None]]


class Health:
    """Whether the processor can work, told to a listener on every change. Two things must hold:
    its dispatcher runs (`report`) and the queue backend answers (`report_queue`: the dispatcher's
    leases and a periodic ping say so, the ping also while the dispatcher has no reason to lease).
    It starts as serving: the application reports SERVING at start.

    Args:
        listener: told the new state on every change (None: nobody listens).
    """

    def __init__(self, listener: ServingListener | None) -> None:
        self._listener = listener
        self._dispatching = True
        self._reachable = True
        self._serving = True

    @property
    def serving(self) -> bool:
        """The state last reported."""
        return self._serving

    async def report(self, serving: bool) -> None:
        """Note whether the dispatcher can work (True also means it just reached the queue)."""
        self._dispatching = serving
        if serving:
            self._reachable = True
        await self._changed()

    async def report_queue(self, reachable: bool) -> None:
        """Note whether the queue backend answered."""
        self._reachable = reachable
        await self._changed()

    async def _changed(self) -> None:
        serving = self._dispatching and self._reachable
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
