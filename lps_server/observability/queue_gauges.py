"""Queue depth and oldest age, read from the queue when Prometheus scrapes (at most ~1 s old).

A gauge set by a periodic sweep reads 0 through a whole burst that comes and goes between two
sweeps. This collector asks the queue for its stats at scrape time instead, but never makes a scrape
wait long on a slow backend: it reuses a reading younger than `max_age_s`, and otherwise waits at
most `wait_s` for a fresh one before answering with the last reading it has. How old the figures
are is published too (`llm_provider_queue_stats_age_seconds`).

Scrapes run on the metrics server's thread; the queue lives on the event loop. Readings are
taken on the loop (`asyncio.run_coroutine_threadsafe`) and concurrent scrapes share one reading.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)
MAX_AGE_S = 1.0
SCRAPE_WAIT_S = 0.5


@dataclass(frozen=True, slots=True)
class QueueReading:
    """What the queue reported: requests waiting and leased, and the oldest waiting one's age."""

    queued: int
    processing: int
    oldest_queued_age_s: float


ReadQueue = Callable[[], Awaitable[QueueReading]]


class QueueGauges(Collector):
    """`llm_provider_queue_depth{status}`, `llm_provider_queue_oldest_age_seconds` and
    `llm_provider_queue_stats_age_seconds`, from readings at most `max_age_s` old when possible.

    Args:
        read: takes one reading from the queue (runs on the event loop given to `attach`).
        max_age_s: a reading younger than this is served as it is.
        wait_s: the longest a scrape waits for a fresh reading.
        clock: monotonic time source.
    """

    def __init__(
        self,
        read: ReadQueue,
        *,
        max_age_s: float = MAX_AGE_S,
        wait_s: float = SCRAPE_WAIT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._max_age_s = max_age_s
        self._wait_s = wait_s
        self._clock = clock
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading: QueueReading | None = None
        self._read_at = 0.0
        self._pending: concurrent.futures.Future[None] | None = None

    def register(self, registry: CollectorRegistry) -> None:
        """Add these gauges to `registry`."""
        registry.register(self)

    async def attach(self) -> None:
        """Take readings on the running loop from now on, starting with one now."""
        self._loop = asyncio.get_running_loop()
        await self.refresh()

    def detach(self) -> None:
        """Stop taking readings (the loop is going away); scrapes serve the last one."""
        self._loop = None

    async def refresh(self) -> None:
        """Take one reading now; a backend that fails leaves the previous reading in place."""
        try:
            reading = await self._read()
        except Exception as exc:  # a down backend must not break the scrape
            log.warning("queue stats unavailable for the depth gauges: %s", exc)
            return
        with self._lock:
            self._reading, self._read_at = reading, self._clock()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The gauges, after a fresh reading when the last one is older than `max_age_s`."""
        self._freshen()
        with self._lock:
            reading, read_at = self._reading, self._read_at
        if reading is None:
            return
        depth = GaugeMetricFamily(
            "llm_provider_queue_depth", "Requests in the queue by status", labels=["status"]
        )
        depth.add_metric(["queued"], reading.queued)
        depth.add_metric(["processing"], reading.processing)
        yield depth
        yield GaugeMetricFamily(
            "llm_provider_queue_oldest_age_seconds",
            "Age of the oldest queued request (0 when none is queued)",
            value=reading.oldest_queued_age_s,
        )
        yield GaugeMetricFamily(
            "llm_provider_queue_stats_age_seconds",
            "How old the queue depth and oldest-age figures are",
            value=max(0.0, self._clock() - read_at),
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """Nothing: describing must not read the queue (registration calls it)."""
        return iter(())

    def _freshen(self) -> None:
        loop = self._loop
        if loop is None or self._clock() - self._read_at < self._max_age_s:
            return
        with self._lock:
            if self._pending is None or self._pending.done():
                reading = self.refresh()
                try:
                    self._pending = asyncio.run_coroutine_threadsafe(reading, loop)
                except RuntimeError:  # the loop has closed: serve the last reading
                    reading.close()
                    return
            pending = self._pending
        if _on_loop(loop):
            return  # waiting here would block the very loop that takes the reading
        try:
            pending.result(timeout=self._wait_s)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            return  # serve the last reading; its age says how stale it is


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
