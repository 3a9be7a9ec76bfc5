"""The processor: leases bundles from the queue and hands them to the bundle runner.

Loops run under supervision: the dispatcher (lease, fill, start a bundle) and the sweeper
(`processing/sweeper.py`: reclaim lapsed leases, end expired requests). Either is restarted with
backoff after any exception, logged with its cause, and health reads NOT_SERVING while the
dispatcher cannot run or the queue backend cannot be reached (a third loop pings it every second,
so that this holds while the dispatcher is not leasing). Each bundle's leases are kept alive by a
`LeaseKeeper` from the moment they are taken; each provider's room (`ProviderCapacity`) decides
what may be leased, so one provider's slowness never delays another's work. A leased bundle is
granted rate budget before it starts (`BudgetGate`): while its provider waits for budget, the
bundle is back in the queue and the provider is left out of leases. Its requests are then marked
`called` before the call; a bundle whose mark cannot be written is not sent (nothing is paid for
while the queue cannot record it): it goes back to the queue and the dispatcher backs off.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable

from opentelemetry import trace

from lps_server.budgets import BudgetStore, LocalBudgetStore
from lps_server.core.bundling import is_batch_group
from lps_server.core.config import Settings
from lps_server.core.domain import (
    ProcessingMode,
    ProviderName,
)
from lps_server.core.errors import QueueUnavailableError
from lps_server.observability.metrics import LpsMetrics
from lps_server.observability.tracing import tracer_for
from lps_server.processing.batch_processing import BatchProcessing
from lps_server.processing.budget_wait import Admission, BudgetGate
from lps_server.processing.bundle_runner import BundleRunner
from lps_server.processing.capacity import ProviderCapacity
from lps_server.processing.endings import RequestEndings, take_out_expired
from lps_server.processing.leases import LeaseKeeper
from lps_server.processing.supervision import Health, ServingListener, ping_forever, supervise
from lps_server.processing.sweeper import sweep_forever
from lps_server.providers import ProviderRegistry
from lps_server.queue.base import Lease, QueueBackend

log = logging.getLogger(__name__)
UNAVAILABLE_BACKOFF_S = (0.05, 2.0)
IDLE_WAIT_S = 1.0
# The shortest idle wait: a retry due "now" is leased at the next look, never in a busy loop.
MIN_WAIT_S = 0.005


class Processor:
    """Dispatches bundles from the queue, at most LPS_MAX_CONCURRENT_CALLS per provider in flight.

    Args:
        queue: the queue backend.
        providers: the provider registry.
        settings: processing mode, bundle size, retries, concurrency, lease period.
        metrics: where to record metrics.
        tracer_provider: where spans go (the global provider by default).
        clock: Unix time source.
        rng: randomness for backoff jitter.
        on_serving: told whether the processor can work, on every change (health).
        batches: builds the batch path, for requests that take it.
        budgets: where rate budgets are kept (in this process by default).
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
        on_serving: ServingListener | None = None,
        batches: Callable[[RequestEndings], BatchProcessing] | None = None,
        budgets: BudgetStore | None = None,
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
        self._capacity = ProviderCapacity(
            providers.names(), settings.max_concurrent_calls, on_room=self._queue_changed
        )
        self._providers = frozenset(providers.names())
        self._gate = BudgetGate(
            store=budgets or LocalBudgetStore(),
            providers=providers,
            metrics=metrics,
            on_open=self._queue_changed,
            max_block_s=settings.retry_after_max_seconds,
        )
        self._health = Health(on_serving)
        # How requests that never reach a provider end (also the shutdown's way, in app.py).
        self.endings = RequestEndings(queue=queue, metrics=metrics, clock=clock, mode=self._mode)
        # The batch path (docs/batching.md), given the ways this processor ends what leases find.
        self.batches = batches(self.endings) if batches else None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._draining = False
        self._wake = asyncio.Event()

    async def run(self) -> None:
        """Dispatch bundles until `stop()`; then wait for the bundles in flight to finish."""
        sweep = functools.partial(
            sweep_forever,
            queue=self._queue,
            endings=self.endings,
            interval_s=self._settings.queue_sweep_interval_seconds,
            clock=self._clock,
            stopping=self._stopping,
        )
        sweeper = asyncio.create_task(
            supervise("sweep", sweep, stopping=self._stopping, on_failure=self._sweep_failed)
        )
        pinger = asyncio.create_task(
            supervise(
                "ping",
                lambda: ping_forever(self._queue.ping, self._health, stopping=self._stopping),
                stopping=self._stopping,
            )
        )
        try:
            await supervise(
                "dispatch",
                self._dispatch,
                stopping=self._stopping,
                on_failure=self._dispatch_failed,
            )
        finally:
            sweeper.cancel()
            pinger.cancel()
            await asyncio.gather(sweeper, pinger, return_exceptions=True)
            while self._in_flight:
                await asyncio.gather(*self._in_flight, return_exceptions=True)

    def stop(self, *, drain: bool = False) -> None:
        """Stop leasing; with `drain`, first work the queue empty. `run()` then returns once the
        bundles in flight are done. Once stopped, nothing more is leased, not even requests a
        lease call brings back after the stop: they are given back at once."""
        if drain:
            self._draining = True
            self._queue_changed()
        else:
            self._stopping.set()

    def cancel_in_flight(self) -> None:
        """Cancel bundles in flight; their unfinished requests are released to the queue (only
        those this replica still holds)."""
        for task in self._in_flight:
            task.cancel()

    def _queue_changed(self) -> None:
        # Wake the dispatcher so it re-reads the queue (work, room, or a drain to finish).
        self._wake.set()

    async def _dispatch_failed(self) -> None:
        self._metrics.processor_restarts.labels(loop="dispatch").inc()
        await self._health.report(False)

    async def _sweep_failed(self) -> None:
        self._metrics.processor_restarts.labels(loop="sweep").inc()

    async def _dispatch(self) -> None:
        """Lease what providers with room can take, fill it, and start it; until stopped."""
        failures = 0
        while not self._stopping.is_set():
            # Cleared before the state is read: room that opens during the lease below (a call
            # ending) wakes the wait that follows it instead of being lost for IDLE_WAIT_S.
            self._wake.clear()
            exclude = self._excluded()
            if self._capacity.all_full() or exclude >= self._providers:
                await self._wait_for_work_or_stop(timeout=self._room_wait(), queue=False)
                continue
            now = self._clock()
            try:
                lease = await self._queue.lease(
                    now=now, max_items=self._settings.bundle_size, exclude=exclude
                )
            except QueueUnavailableError as exc:
                failures += 1
                await self._backoff_unavailable(exc, failures)
                continue
            await self._health.report(True)
            if self._stopping.is_set():
                # Stopped while this lease was on its way: it must not start.
                await self._give_back(lease)
                return
            if not lease.request_ids:
                failures = 0
                idle = not self._in_flight and not self._gate.paused()
                if self._draining and idle and lease.next_retry_at is None:
                    return
                await self._wait_for_work_or_stop(timeout=self._idle_wait(lease, now))
                continue
            try:
                await self._start(lease, taken_at=now)
                failures = 0
            except QueueUnavailableError as exc:
                # Its `called` mark could not be written: the bundle went back unsent.
                failures += 1
                await self._backoff_unavailable(exc, failures)

    def _idle_wait(self, lease: Lease, now: float) -> float:
        wait = self._room_wait()
        if lease.next_retry_at is None:
            return wait
        return min(wait, max(MIN_WAIT_S, lease.next_retry_at - now))

    def _excluded(self) -> frozenset[ProviderName]:
        """Providers not to lease for now: no room, or waiting for rate budget."""
        return self._capacity.full() | self._gate.paused()

    def _room_wait(self) -> float:
        """How long to wait for room at most: until a provider's budget pause ends."""
        opens_in = self._gate.next_open_in()
        return IDLE_WAIT_S if opens_in is None else min(IDLE_WAIT_S, max(MIN_WAIT_S, opens_in))

    async def _start(self, lease: Lease, *, taken_at: float) -> None:
        keeper = LeaseKeeper(
            queue=self._queue,
            token=lease.token,
            lease_s=self._settings.queue_lease_seconds,
            clock=self._clock,
            request_ids=lease.request_ids,
            taken_at=taken_at,
        )
        keeper.start()
        provider = lease.items[0].route.provider if lease.items else None
        if provider is not None:
            self._capacity.take(provider)
        try:
            await self._fill(lease, keeper)
            take_out_expired(lease, now=self._clock())
            # Batch jobs are not sent into the synchronous rate limits: they have their own.
            admission = (
                Admission(list(lease.items))
                if is_batch_group(lease.group)
                else await self._gate.admit(lease.items)
            )
            # Only the admitted items stay in the bundle; what waits goes back to the queue.
            lease.items[:] = admission.items
            await keeper.give_back([q.request_id for q in admission.put_back])
            if lease.items and not is_batch_group(lease.group):
                await self._mark_called(lease, keeper, admission)
        except BaseException:
            await keeper.give_back()
            await keeper.stop()
            if provider is not None:
                self._capacity.give_back(provider)
            raise
        task = asyncio.create_task(self._run_lease(lease, keeper, provider, admission))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _mark_called(self, lease: Lease, keeper: LeaseKeeper, admission: Admission) -> None:
        """Mark the bundle's requests `called`: here, in lease order, so that the mark lands
        before the call and calls keep the order of their leases (docs/queue.md, "Retries wait
        in the queue"). A mark that cannot be written withdraws the bundle's rate budget grant
        and raises: nothing is paid for while the queue cannot record it (the caller gives the
        requests back)."""
        ids = [q.request_id for q in lease.items]
        try:
            await keeper.mark_called(ids)
        except QueueUnavailableError as exc:
            provider = lease.items[0].route.provider.value
            log.warning(
                "not calling %s for %d request(s): their called mark could not be written, "
                "they go back to the queue: %s",
                provider,
                len(ids),
                exc,
                extra={"lease_token": lease.token},
            )
            self._metrics.requests_withheld.labels(provider=provider, reason="unmarked").inc(
                len(ids)
            )
            if admission.call is not None:
                await admission.call.withdraw()
            raise

    async def _give_back(self, lease: Lease) -> None:
        try:
            await self._queue.release(lease.request_ids, token=lease.token)
        except QueueUnavailableError as exc:
            log.warning("could not give back a lease taken while stopping; it lapses: %s", exc)

    async def _fill(self, lease: Lease, keeper: LeaseKeeper) -> None:
        """Wait up to LPS_SERIAL_BUNDLE_MAX_WAIT_MS for more compatible work to top a bundle up.

        Only while the queue is shallow: once other work that could go is waiting, the bundle
        goes as it is, so that the window never holds back older work of other groups (nor the
        dispatcher). The keeper holds the leases meanwhile, however long the window.
        """
        wait_s = self._settings.serial_bundle_max_wait_ms / 1000.0
        if self._mode != ProcessingMode.SERIAL_BUNDLE or wait_s <= 0 or not lease.items:
            return
        limit = min(self._settings.bundle_size, lease.items[0].bundle_limit)
        deadline = self._clock() + wait_s
        try:
            while len(lease.items) < limit and not (self._stopping.is_set() or self._draining):
                self._wake.clear()  # before the reads below, as in _dispatch
                more = await self._queue.lease(
                    now=self._clock(),
                    group=lease.group,
                    max_items=limit - len(lease.items),
                    token=lease.token,
                )
                keeper.hold(more.request_ids)
                lease.items.extend(more.items)
                lease.expired.extend(more.expired)
                lease.unreadable.extend(more.unreadable)
                lease.attempts.update(more.attempts)
                remaining = deadline - self._clock()
                if len(lease.items) >= limit or remaining <= 0:
                    return
                # A lease of zero items takes nothing and names the head's group: a peek.
                peek = await self._queue.lease(
                    now=self._clock(), max_items=0, exclude=self._capacity.full()
                )
                if peek.group and peek.group != lease.group:
                    return
                if not peek.group:
                    await self._wait_for_work_or_stop(timeout=remaining)
        except QueueUnavailableError as exc:
            log.warning("stopped filling a bundle, the queue is unavailable: %s", exc)

    async def _wait_for_work_or_stop(self, *, timeout: float, queue: bool = True) -> None:
        """Until work is queued (`queue`), `_wake` is set, the processor stops, or `timeout`.
        The caller clears `_wake` before it reads the state it waits on, never here: a wake set
        while it read (during an await) must end this wait."""
        futures: list[asyncio.Future[object]] = [
            asyncio.ensure_future(self._stopping.wait()),
            asyncio.ensure_future(self._wake.wait()),
        ]
        if queue:
            futures.append(asyncio.ensure_future(self._queue.wait_for_work(timeout)))
        try:
            await asyncio.wait(futures, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in futures:
                future.cancel()

    async def _backoff_unavailable(self, exc: Exception, failures: int) -> None:
        await self._health.report_queue(False)
        low, high = UNAVAILABLE_BACKOFF_S
        delay = min(high, low * 2**failures)
        log.warning("queue unavailable, retrying in %.2fs: %s", delay, exc)
        try:
            await asyncio.wait_for(self._stopping.wait(), delay)
        except TimeoutError:
            return

    async def _run_lease(
        self,
        lease: Lease,
        keeper: LeaseKeeper,
        provider: ProviderName | None,
        admission: Admission,
    ) -> None:
        try:
            await self.endings.end_unreadable(lease.unreadable, token=lease.token)
            await self.endings.expire(lease.expired, reason="ttl", token=lease.token)
            keeper.let_go(
                [u.request_id for u in lease.unreadable] + [q.request_id for q in lease.expired]
            )
            for queued, reason in admission.too_large:
                await self._runner.refuse([queued], reason, keeper=keeper)
            if lease.items:
                batch = self.batches if is_batch_group(lease.group) else None
                if batch is not None:
                    await batch.run(lease.items, keeper=keeper, attempts=lease.attempts)
                else:
                    await self._runner.run(
                        lease.items, keeper=keeper, attempts=lease.attempts, call=admission.call
                    )
        except asyncio.CancelledError:
            await keeper.give_back()  # for other replicas
            raise
        except QueueUnavailableError as exc:
            # Ending expired or unreadable requests failed: their leases lapse, and a later
            # lease or sweep finds them again.
            log.error(
                "could not end requests found while leasing; they will be found again: %s", exc
            )
        except Exception:
            log.exception("bundle failed unexpectedly")
            unfinished = [q for q in lease.items if q.request_id in set(keeper.held)]
            try:
                await self.endings.abandon(
                    unfinished, "internal error while processing the bundle", token=lease.token
                )
            except QueueUnavailableError:
                log.error("could not store failure results; leases will be reclaimed")
        finally:
            await keeper.stop()
            if provider is not None:
                self._capacity.give_back(provider)
            if self._draining:
                self._queue_changed()  # the drain ends once nothing is in flight
