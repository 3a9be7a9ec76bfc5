"""Runs one bundle: one provider call, per-item outcomes, results, and retries put back in the
queue.

A bundle makes one attempt. Items that failed retryably go back to the queue with a not-before
time (backoff with jitter, at least the provider's Retry-After capped by
LPS_RETRY_AFTER_MAX_SECONDS) and one more failed attempt counted, so an item waiting for its retry
holds no lease, no call slot and no task; it leads or joins a later bundle when due. Results are
stored under the bundle's lease token: answers for requests whose lease was lost meanwhile are
dropped and counted (`llm_provider_lease_lost_total`), never stored.

Tokens and cost are counted per provider call, from what the provider billed (`CallReport.bill`),
whatever becomes of the answers: an answer unusable as a whole or for one item, or dropped because
its lease was lost, was paid for all the same.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from opentelemetry import trace

from lps_server.core.config import Settings
from lps_server.core.domain import (
    BundleFacts,
    ComparisonResult,
    ErrorCode,
    Failure,
    ProcessingMode,
    ProviderName,
    QueuedRequest,
    TokenUsage,
)
from lps_server.observability.metrics import LpsMetrics
from lps_server.observability.spans import BundleSpans, provider_call_span
from lps_server.observability.tracing import context_from
from lps_server.processing.leases import LeaseKeeper
from lps_server.processing.results import completed, failed
from lps_server.processing.retries import GaveUp, retry_delay, settle
from lps_server.providers import (
    ItemFailure,
    ItemOutcome,
    Provider,
    ProviderRegistry,
)
from lps_server.providers.base import (
    ItemSuccess,
    ProviderCallError,
    ReportingProvider,
    comparison_items,
)
from lps_server.providers.call_report import CallReport
from lps_server.providers.registry import UnknownProviderError
from lps_server.queue.base import QueueBackend

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Call:
    """What one provider call returned for its items, and what the provider billed for it."""

    outcomes: list[ItemOutcome]
    duration_s: float
    answered: bool
    billed: TokenUsage
    cost_usd: float


class BundleRunner:
    """Processes leased bundles; several may run at once (the dispatcher bounds how many per
    provider, `ProviderCapacity`)."""

    def __init__(
        self,
        *,
        queue: QueueBackend,
        providers: ProviderRegistry,
        settings: Settings,
        metrics: LpsMetrics,
        tracer: trace.Tracer,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self._queue = queue
        self._providers = providers
        self._settings = settings
        self._metrics = metrics
        self._tracer = tracer
        self._clock = clock
        self._rng = rng
        self._mode = settings.queue_processing_mode
        if self._mode == ProcessingMode.BATCH_API:
            # In batch_api mode only requests that cannot wait for a batch come here, one a call.
            self._mode = ProcessingMode.PER_REQUEST

    async def run(
        self,
        items: list[QueuedRequest],
        *,
        keeper: LeaseKeeper,
        attempts: Mapping[str, int],
        call: Provider | None = None,
    ) -> None:
        """Make one attempt at a bundle of compatible, unexpired requests held by `keeper`:
        results for what ended, the queue again for what will be retried.

        `attempts` counts each item's earlier failed attempts (absent: none). `call` is the
        provider to call when it is not the registry's own (a call granted rate budget).
        """
        route = items[0].route
        model_label = self._providers.model_label(route)
        labels = {"provider": route.provider.value, "model": model_label}
        if not await keeper.confirm():
            log.error(
                "the leases of %d request(s) may have lapsed and cannot be confirmed; not calling "
                "the provider for them, they will be reclaimed",
                len(items),
            )
            withheld = self._metrics.requests_withheld
            withheld.labels(provider=route.provider.value, reason="unconfirmed").inc(len(items))
            return
        items = self._still_held(items, keeper, route.provider, stage="before_call")
        if not items:
            return
        bundle_id = uuid.uuid4().hex if self._mode == ProcessingMode.SERIAL_BUNDLE else ""
        facts = {
            q.request_id: BundleFacts(bundle_id, i, len(items), self._mode)
            for i, q in enumerate(items)
        }
        try:
            provider = call or self._providers.get(route.provider)
        except UnknownProviderError as exc:
            failure = Failure(ErrorCode.CONFIGURATION, str(exc))
            now = self._clock()
            done = [(q, failed(q, failure, now, facts[q.request_id])) for q in items]
            await self._store(done, labels, keeper, called=False)
            return
        spans = BundleSpans(
            self._tracer,
            items,
            facts,
            now=self._clock(),
            contexts={q.request_id: context_from(q.trace_context) for q in items},
        )
        try:
            with spans.bundle(bundle_id):
                await self._attempt(items, provider, facts, spans, keeper, attempts, labels)
        finally:
            spans.close()
            await _settle_grant(provider)

    async def refuse(self, items: list[QueuedRequest], reason: str, *, keeper: LeaseKeeper) -> None:
        """End requests that no provider call could carry FAILED, without calling: splitting
        cannot make one comparison smaller (`reason` says what it exceeds)."""
        route = items[0].route
        labels = {"provider": route.provider.value, "model": self._providers.model_label(route)}
        failure = Failure(ErrorCode.PROVIDER_ERROR, f"comparison not sent: {reason}")
        now = self._clock()
        done = [(q, failed(q, failure, now, BundleFacts(mode=self._mode))) for q in items]
        await self._store(done, labels, keeper, called=False)

    async def _attempt(
        self,
        items: list[QueuedRequest],
        provider: Provider,
        facts: dict[str, BundleFacts],
        spans: BundleSpans,
        keeper: LeaseKeeper,
        attempts: Mapping[str, int],
        labels: dict[str, str],
    ) -> None:
        number = {q.request_id: attempts.get(q.request_id, 0) + 1 for q in items}
        call = await self._call(provider, items, max(number.values()))
        self._metrics.response_duration.labels(**labels).observe(call.duration_s)
        self._record_billed(labels, call)
        if call.answered and self._mode == ProcessingMode.SERIAL_BUNDLE:
            self._metrics.record_bundle_call(size=len(items), **labels)
        # Answers for requests another holder took over meanwhile are dropped here.
        answered = self._still_held(items, keeper, items[0].route.provider, stage="after_call")
        outcomes = dict(zip([q.request_id for q in items], call.outcomes, strict=True))
        now = self._clock()
        done = []
        retry: list[tuple[QueuedRequest, ItemFailure]] = []
        for queued in answered:
            rid = queued.request_id
            outcome = outcomes[rid]
            trace_id = spans.trace_id(rid)
            if isinstance(outcome, ItemSuccess):
                result = completed(
                    queued,
                    outcome,
                    now=now,
                    response_time_s=call.duration_s,
                    facts=facts[rid],
                    trace_id=trace_id,
                )
                done.append((queued, result))
            elif outcome.retryable and number[rid] <= self._settings.queue_max_retries:
                retry.append((queued, outcome))
                self._metrics.provider_retries.labels(error_code=outcome.code.value, **labels).inc()
            else:
                failure = _final_failure(outcome, number[rid])
                result = failed(queued, failure, now, facts[rid], trace_id=trace_id)
                done.append((queued, result))
        await self._store(done, labels, keeper)
        spans.finish(done)
        await _settle_grant(provider)  # after the results: they must not wait for it
        if retry:
            attempt = max(number[q.request_id] for q, _ in retry)
            retry_at = now + self._backoff(attempt, [f for _, f in retry])
            await self._retry_later([q for q, _ in retry], retry_at, keeper)

    def _still_held(
        self,
        items: Sequence[QueuedRequest],
        keeper: LeaseKeeper,
        provider: ProviderName,
        *,
        stage: str,
    ) -> list[QueuedRequest]:
        """The items whose lease the keeper still holds; the others are counted as lost."""
        held = [q for q in items if not keeper.is_lost(q.request_id)]
        # Requests the queue lost with its data were taken over by nobody: not lost leases.
        if lost := sum(
            1 for q in items if keeper.is_lost(q.request_id) and not keeper.is_gone(q.request_id)
        ):
            self._metrics.lease_lost.labels(provider=provider.value, stage=stage).inc(lost)
        return held

    async def _retry_later(
        self, items: Sequence[QueuedRequest], retry_at: float, keeper: LeaseKeeper
    ) -> None:
        """Put items back in the queue, due at `retry_at`, holding nothing meanwhile."""
        ids = [q.request_id for q in items]
        what = f"put {len(ids)} request(s) back for a retry"
        try:
            await settle(
                lambda: self._queue.release(ids, token=keeper.token, retry_at=retry_at),
                keeper,
                what,
            )
        except GaveUp:
            return
        keeper.let_go(ids)

    async def _call(
        self, provider: Provider, pending: Sequence[QueuedRequest], attempt: int
    ) -> _Call:
        route = pending[0].route
        items = comparison_items(pending)
        with provider_call_span(
            self._tracer,
            route=route,
            overrides=pending[0].request.overrides,
            attempt=attempt,
            items=len(items),
        ) as span:
            started = time.monotonic()
            overrides = pending[0].request.overrides
            report = CallReport()
            try:
                if isinstance(provider, ReportingProvider):
                    outcomes = await provider.compare(
                        items, model=route.model, overrides=overrides, report=report
                    )
                else:
                    outcomes = await provider.compare(items, model=route.model, overrides=overrides)
                    # Such a provider bills exactly what its answers carry (the mock).
                    for outcome in outcomes:
                        if isinstance(outcome, ItemSuccess):
                            report.bill(outcome.usage, outcome.cost_usd)
                answered = True
            except ProviderCallError as exc:
                outcomes, answered = [exc.failure] * len(items), False
            except Exception as exc:  # a provider bug must fail its items, not the server
                log.exception("provider %s raised unexpectedly", route.provider.value)
                message = f"provider {route.provider.value} failed: {type(exc).__name__}"
                outcomes = [ItemFailure(ErrorCode.INTERNAL, message)] * len(items)
                answered = False
            duration = time.monotonic() - started
            whole_call_failed = not answered
            if len(outcomes) != len(items):
                message = (
                    f"provider {route.provider.value} answered {len(outcomes)} of "
                    f"{len(items)} items"
                )
                outcomes = [ItemFailure(ErrorCode.INVALID_RESPONSE, message)] * len(items)
                whole_call_failed = True
            first = outcomes[0]
            span.record(
                usages=[o.usage for o in outcomes if isinstance(o, ItemSuccess)],
                failure=(first.code, first.message)
                if whole_call_failed and isinstance(first, ItemFailure)
                else None,
            )
        return _Call(outcomes, duration, answered, report.billed, report.cost_usd)

    def _record_billed(self, labels: dict[str, str], call: _Call) -> None:
        """Count the tokens and cost of one provider call, stored or not."""
        usage = call.billed
        # Each kind once: `input` is the prompt less what the cache read or wrote.
        self._metrics.record_tokens(
            labels,
            input=usage.uncached_input_tokens,
            output=usage.completion_tokens,
            cache_read=usage.cache_read_tokens,
            cache_write=usage.cache_write_tokens,
        )
        self._metrics.cost.labels(**labels).inc(call.cost_usd)

    async def _store(
        self,
        done: list[tuple[QueuedRequest, ComparisonResult]],
        labels: dict[str, str],
        keeper: LeaseKeeper,
        *,
        called: bool = True,
    ) -> None:
        """Store results under the bundle's token, then count and log the ones stored
        (`called`: the results hold a provider's answers)."""
        if not done:
            return
        what = f"store {len(done)} result(s)"
        try:
            firsts = await settle(
                lambda: self._queue.complete(done, token=keeper.token), keeper, what
            )
        except GaveUp:
            if not called:
                return  # nothing was paid for: they are reclaimed and ended again
            # The answers are dropped; once Redis is back the requests are reclaimed and the
            # provider is asked again: paid for twice, so counted as such.
            provider = done[0][0].route.provider.value
            self._metrics.lease_lost.labels(provider=provider, stage="after_call").inc(len(done))
            log.error(
                "dropped the answers for %d request(s) that could not be stored; they will be "
                "reclaimed and the provider asked again",
                len(done),
            )
            return
        refused = [q.request_id for (q, _), ok in zip(done, firsts, strict=True) if not ok]
        # Another holder took these over after the call (the keeper had not noticed yet), or the
        # queue lost them with its data (not paid again: not counted as lost leases).
        if refused and (taken := await keeper.lose(refused)):
            provider = done[0][0].route.provider.value
            self._metrics.lease_lost.labels(provider=provider, stage="after_call").inc(len(taken))
        keeper.let_go(q.request_id for q, _ in done)
        ended = [pair for pair, first in zip(done, firsts, strict=True) if first]
        # Metrics are summed per bundle: one labelled child per status rather than per request.
        by_status = Counter(result.status.value for _, result in ended)
        for status, count in by_status.items():
            self._metrics.requests.labels(status=status, **labels).inc(count)
        waits = {
            status: self._metrics.queue_wait.labels(
                queue_processing_mode=self._mode.value, result=status
            )
            for status in by_status
        }
        for queued, result in ended:
            waits[result.status.value].observe(max(0.0, result.completed_at - queued.enqueued_at))
        if ended:
            _log_stored(ended, by_status)

    def _backoff(self, attempt: int, failures: Sequence[ItemFailure]) -> float:
        """Exponential backoff with full jitter, never shorter than a provider's Retry-After,
        which is honoured up to LPS_RETRY_AFTER_MAX_SECONDS."""
        return retry_delay(
            attempt,
            [f.retry_after for f in failures if f.retry_after is not None],
            base_s=self._settings.retry_backoff_ms / 1000.0,
            hint_cap_s=self._settings.retry_after_max_seconds,
            rng=self._rng,
        )


@runtime_checkable
class _Granted(Protocol):
    """A provider call granted rate budget, settled once its results are stored."""

    async def settle_grant(self) -> None: ...


async def _settle_grant(provider: Provider) -> None:
    if isinstance(provider, _Granted):
        await provider.settle_grant()


def _final_failure(outcome: ItemFailure, attempts: int) -> Failure:
    suffix = f" (after {attempts} attempt{'s' if attempts != 1 else ''})"
    return Failure(outcome.code, outcome.message + suffix, outcome.retryable, attempts)


def _log_stored(
    ended: Sequence[tuple[QueuedRequest, ComparisonResult]], by_status: Counter[str]
) -> None:
    """One structured line for the results of one provider call, with each request's facts.

    One line per call rather than per request: at thousands of comparisons a second the logging
    machinery was a tenth of LPS's CPU, and a line per request is more than anyone reads.
    """
    bundle = ended[0][1].bundle
    bundle_id = bundle.bundle_id if bundle else ""
    log.info(
        "stored results: %s (bundle %s)",
        ", ".join(f"{n} {status}" for status, n in sorted(by_status.items())),
        bundle_id or "-",
        extra={
            "bundle_id": bundle_id,
            "bundle_size": bundle.size if bundle else 1,
            "statuses": dict(by_status),
            "requests": [
                {
                    "request_id": queued.request_id,
                    "correlation_id": result.correlation_id,
                    "status": result.status.value,
                    "metadata": dict(result.metadata),
                    "error": result.failure.message if result.failure else "",
                }
                for queued, result in ended
            ],
        },
    )
