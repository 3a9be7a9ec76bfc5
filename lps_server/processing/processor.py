"""The processor: leases bundles from the queue and hands them to the bundle runner."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence

from opentelemetry import trace

from lps_server.core.config import Settings
from lps_server.core.domain import (
    BundleFacts,
    ErrorCode,
    Failure,
    ProcessingMode,
    QueuedRequest,
)
from lps_server.core.errors import QueueUnavailableError
from lps_server.observability.metrics import LpsMetrics
from lps_server.observability.tracing import tracer_for
from lps_server.processing.bundle_runner import BundleRunner
from lps_server.processing.results import expired, failed
from lps_server.providers import ProviderRegistry
from lps_server.queue.base import Lease, QueueBackend

log = logging.getLogger(__name__)
UNAVAILABLE_BACKOFF_S = (0.05, 2.0)
IDLE_WAIT_S = 1.0


class Processor:
    """Dispatches bundles from the queue, at most LPS_MAX_CONCURRENT_CALLS in flight.

    Args:
        queue: the queue backend.
        providers: the provider registry.
        settings: processing mode, bundle size, retries, concurrency.
        metrics: where to record metrics.
        tracer_provider: where spans go (the global provider by default).
        clock: Unix time source.
        rng: randomness for backoff jitter.
    """

    def __init__(
        self,
        *,
        queue: QueueBackend,
        providers: ProviderRegistry,
        settings: Settings,
        metrics: LpsMetrics,
        tracer_provider: trace.TracerProvider | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._queue = queue
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._mode = settings.queue_processing_mode
        self._runner = BundleRunner(
            queue=queue,
            providers=providers,
            settings=settings,
            metrics=metrics,
            tracer=tracer_for(tracer_provider),
            clock=clock,
            rng=rng or random.Random(),
        )
        # Bundles in flight: LPS_MAX_CONCURRENT_CALLS per configured provider. The runner holds
        # each provider to its own limit, so a slow provider cannot take another's share of calls.
        self._slots = asyncio.Semaphore(settings.max_concurrent_calls * len(providers.names()))
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._draining = False
        self._wake = asyncio.Event()

    async def run(self) -> None:
        """Dispatch bundles until `stop()`; then wait for the bundles in flight to finish."""
        sweeper = asyncio.create_task(self._sweep_forever())
        failures = 0
        try:
            while not self._stopping.is_set():
                await self._slots.acquire()
                try:
                    lease = await self._queue.lease(
                        now=self._clock(), max_items=self._settings.bundle_size
                    )
                    failures = 0
                    if lease.items or lease.expired:
                        await self._fill(lease)
                except QueueUnavailableError as exc:
                    self._slots.release()
                    failures += 1
                    await self._backoff_unavailable(exc, failures)
                    continue
                if not lease.items and not lease.expired:
                    self._slots.release()
                    if self._draining:
                        break
                    await self._wait_for_work_or_stop(timeout=IDLE_WAIT_S)
                    continue
                task = asyncio.create_task(self._run_lease(lease))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
        finally:
            sweeper.cancel()
            while self._in_flight:
                await asyncio.gather(*self._in_flight, return_exceptions=True)

    def stop(self, *, drain: bool = False) -> None:
        """Stop leasing; with `drain`, first work the queue empty. `run()` then returns once the
        bundles in flight are done."""
        if drain:
            self._draining = True
            self._queue_changed()
        else:
            self._stopping.set()

    def _queue_changed(self) -> None:
        # Wake the dispatcher so it re-reads the queue (and sees that it should drain).
        self._wake.set()

    def cancel_in_flight(self) -> None:
        """Cancel bundles in flight; their unfinished requests are released to the queue."""
        for task in self._in_flight:
            task.cancel()

    async def _fill(self, lease: Lease) -> None:
        """Wait up to LPS_SERIAL_BUNDLE_MAX_WAIT_MS for more compatible work to top a bundle up.

        Only while the queue is shallow: once work of another group is waiting, the bundle goes as
        it is, so that the window never holds back older work of other groups (nor the dispatcher).
        """
        wait_s = self._settings.serial_bundle_max_wait_ms / 1000.0
        if self._mode != ProcessingMode.SERIAL_BUNDLE or wait_s <= 0 or not lease.items:
            return
        limit = min(self._settings.bundle_size, lease.items[0].bundle_limit)
        deadline = self._clock() + wait_s
        while len(lease.items) < limit and not (self._stopping.is_set() or self._draining):
            more = await self._queue.lease(
                now=self._clock(), group=lease.group, max_items=limit - len(lease.items)
            )
            lease.items.extend(more.items)
            lease.expired.extend(more.expired)
            remaining = deadline - self._clock()
            if len(lease.items) >= limit or remaining <= 0:
                return
            # A lease of zero items takes nothing and names the head's group: a peek.
            head = (await self._queue.lease(now=self._clock(), max_items=0)).group
            if head and head != lease.group:
                return
            if not head:
                await self._wait_for_work_or_stop(timeout=remaining)

    async def _wait_for_work_or_stop(self, *, timeout: float) -> None:
        self._wake.clear()
        stop = asyncio.ensure_future(self._stopping.wait())
        wake = asyncio.ensure_future(self._wake.wait())
        work = asyncio.ensure_future(self._queue.wait_for_work(timeout))
        try:
            await asyncio.wait({stop, wake, work}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in (stop, wake, work):
                future.cancel()

    async def _backoff_unavailable(self, exc: Exception, failures: int) -> None:
        low, high = UNAVAILABLE_BACKOFF_S
        delay = min(high, low * 2**failures)
        log.warning("queue unavailable, retrying in %.2fs: %s", delay, exc)
        try:
            await asyncio.wait_for(self._stopping.wait(), delay)
        except TimeoutError:
            return

    async def _sweep_forever(self) -> None:
        while True:
            try:
                found = await self._queue.sweep(now=self._clock())
                if found.reclaimed:
                    log.warning("reclaimed %d requests whose lease lapsed", found.reclaimed)
                await self.expire(found.expired, reason="cleanup")
            except QueueUnavailableError as exc:
                log.warning("sweep skipped: %s", exc)
            await asyncio.sleep(self._settings.queue_sweep_interval_seconds)

    async def expire(self, requests: Sequence[QueuedRequest], *, reason: str) -> None:
        """End requests found past their deadline as EXPIRED and record why (`ttl`, `cleanup`)."""
        if not requests:
            return
        now = self._clock()
        stored = await self._queue.complete([(q, expired(q, now, self._mode)) for q in requests])
        for queued, first in zip(requests, stored, strict=True):
            if first:
                self._metrics.record_expiry(
                    provider=queued.route.provider.value,
                    mode=self._mode,
                    reason=reason,
                    age_s=now - queued.enqueued_at,
                )

    async def abandon(self, requests: Sequence[QueuedRequest], reason: str) -> None:
        """End requests that will never be processed (shutdown of an in-process queue) as FAILED."""
        now = self._clock()
        failure = Failure(ErrorCode.INTERNAL, reason, retryable=True)
        facts = BundleFacts(mode=self._mode)
        await self._queue.complete([(q, failed(q, failure, now, facts)) for q in requests])

    async def _release_unfinished(self, items: Sequence[QueuedRequest]) -> None:
        """Give leased requests back to the queue; those already ended are left as they are."""
        try:
            await self._queue.release([q.request_id for q in items])
        except QueueUnavailableError:
            log.error("could not release leases; they will lapse and be reclaimed")

    async def _run_lease(self, lease: Lease) -> None:
        try:
            await self.expire(lease.expired, reason="ttl")
            if lease.items:
                await self._runner.run(lease.items)
        except asyncio.CancelledError:
            await self._release_unfinished(lease.items)
            raise
        except QueueUnavailableError as exc:
            # Results could not be stored: the leases lapse and another attempt redoes the work.
            log.error("could not store results, leases will be reclaimed: %s", exc)
        except Exception:
            log.exception("bundle failed unexpectedly")
            try:
                await self.abandon(lease.items, "internal error while processing the bundle")
            except QueueUnavailableError:
                log.error("could not store failure results; leases will be reclaimed")
        finally:
            self._slots.release()
