"""What a batch job's answers become: per item, exactly as in a serial bundle. An item that
succeeded is COMPLETED; one that failed retryably (rate limited, provider unavailable, timeout,
invalid answer, and a line its batch's window ended before) goes back to the queue for a later
batch, due after a backoff, with one more failed attempt counted; one that failed otherwise, or
for the `1 + LPS_QUEUE_MAX_RETRIES`th time, is FAILED with the provider's error.

Only requests the job still holds are stored or released, under the job's token, so a collection
repeated after a crash stores nothing twice and never touches a request another holder has.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from opentelemetry import trace

from lps_server.core.config import Settings
from lps_server.core.domain import (
    BundleFacts,
    ComparisonResult,
    ErrorCode,
    Failure,
    ProcessingMode,
    QueuedRequest,
)
from lps_server.observability.metrics import LpsMetrics
from lps_server.observability.tracing import context_from
from lps_server.processing.results import completed, failed, unreadable
from lps_server.processing.retries import retry_delay
from lps_server.providers import ItemFailure, ItemOutcome, ProviderRegistry
from lps_server.providers.base import ItemSuccess
from lps_server.queue.base import QueueBackend
from lps_server.queue.batch_jobs import BatchJob
from lps_server.queue.unreadable import UnreadableRequest

log = logging.getLogger(__name__)
MODE = ProcessingMode.BATCH_API
# A job's results are stored this many at a time: one script call each, none of them long enough
# to hold Redis up for other replicas.
STORE_CHUNK = 500


def missing_line(job: BatchJob) -> ItemFailure:
    """A line the provider's results do not answer (retried in a later batch)."""
    return ItemFailure(
        ErrorCode.INVALID_RESPONSE,
        f"{job.provider.value}: the batch's results hold no answer for this comparison",
    )


class JobResults:
    """Stores a job's outcomes, and puts its retryable failures back in the queue.

    Args:
        queue: the queue backend.
        providers: for bounded model labels.
        settings: retries and backoff.
        metrics: the request metrics.
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
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self._queue = queue
        self._providers = providers
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._rng = rng

    async def settle(
        self,
        job: BatchJob,
        held: Mapping[str, QueuedRequest],
        outcomes: Mapping[str, Sequence[ItemOutcome]],
        *,
        absent: ItemFailure,
    ) -> Counter[str]:
        """Store or retry every held request of `job` by its line's outcome (`absent` for lines
        the outcomes leave out); returns how many ended how (`completed`, `failed`, `retried`).

        Raises:
            QueueUnavailableError: storing failed; the job must be collected again (nothing is
                stored twice).
        """
        now = self._clock()
        response_time = max(0.0, now - job.submitted_at) if job.submitted_at else 0.0
        done: list[tuple[QueuedRequest, ComparisonResult]] = []
        retry: list[tuple[QueuedRequest, ItemFailure]] = []
        for line in job.lines:
            found = list(outcomes.get(line.custom_id, ()))
            if len(found) != len(line.request_ids):
                found = [absent] * len(line.request_ids)
            for index, (rid, outcome) in enumerate(zip(line.request_ids, found, strict=True)):
                queued = held.get(rid)
                if queued is None:
                    continue  # stored by an earlier collection, or not the job's any more
                facts = BundleFacts(line.custom_id, index, len(line.request_ids), MODE)
                trace_id = _trace_id(queued)
                attempt = job.attempts.get(rid, 0) + 1
                if isinstance(outcome, ItemSuccess):
                    result = completed(
                        queued,
                        outcome,
                        now=now,
                        response_time_s=response_time,
                        facts=facts,
                        trace_id=trace_id,
                    )
                    done.append((queued, result))
                elif outcome.retryable and attempt <= self._settings.queue_max_retries:
                    retry.append((queued, outcome))
                else:
                    failure = final_failure(outcome, attempt)
                    done.append((queued, failed(queued, failure, now, facts, trace_id=trace_id)))
        ended = await self._store(job, done)
        if retry:
            await self._retry(job, retry, now)
            ended["retried"] = len(retry)
        return ended

    async def end_unreadable(self, job: BatchJob, requests: Sequence[UnreadableRequest]) -> None:
        """End FAILED the requests of a job whose stored payload cannot be read."""
        if not requests:
            return
        now = self._clock()
        stored = await self._queue.complete(
            [unreadable(u, now, MODE) for u in requests], token=job.token
        )
        for request, first in zip(requests, stored, strict=True):
            if first:
                reason = "undecodable" if request.routable else "unroutable"
                self._metrics.unreadable_requests.labels(reason=reason).inc()
                log.error("ended request %s FAILED: %s", request.request_id, request.reason)

    async def _store(
        self, job: BatchJob, done: list[tuple[QueuedRequest, ComparisonResult]]
    ) -> Counter[str]:
        if not done:
            return Counter()
        firsts: list[bool] = []
        for start in range(0, len(done), STORE_CHUNK):
            firsts += await self._queue.complete(done[start : start + STORE_CHUNK], token=job.token)
        ended = [pair for pair, first in zip(done, firsts, strict=True) if first]
        labels = {
            "provider": job.provider.value,
            "model": self._providers.model_label(done[0][0].route),
        }
        by_status = Counter(result.status.value for _, result in ended)
        for status, count in by_status.items():
            self._metrics.requests.labels(status=status, **labels).inc(count)
            wait = self._metrics.queue_wait.labels(queue_processing_mode=MODE.value, result=status)
            for queued, result in ended:
                if result.status.value == status:
                    wait.observe(max(0.0, result.completed_at - queued.enqueued_at))
        usage = [result.token_usage for _, result in ended]
        # Each kind once, as for calls: `input` is the prompt less what the cache read or wrote.
        self._metrics.record_tokens(
            labels,
            input=sum(u.uncached_input_tokens for u in usage),
            output=sum(u.completion_tokens for u in usage),
            cache_read=sum(u.cache_read_tokens for u in usage),
            cache_write=sum(u.cache_write_tokens for u in usage),
        )
        self._metrics.cost.labels(**labels).inc(sum(result.cost_usd for _, result in ended))
        if ended:
            log.info(
                "stored results of batch job %s: %s",
                job.job_id,
                ", ".join(f"{n} {status}" for status, n in sorted(by_status.items())),
                extra={"batch_job": job.job_id, "statuses": dict(by_status)},
            )
        return by_status

    async def _retry(
        self, job: BatchJob, retry: list[tuple[QueuedRequest, ItemFailure]], now: float
    ) -> None:
        """Back to the queue, due after a backoff, for a later batch."""
        attempt = max(job.attempts.get(q.request_id, 0) + 1 for q, _ in retry)
        delay = retry_delay(
            attempt,
            [f.retry_after for _, f in retry if f.retry_after is not None],
            base_s=self._settings.retry_backoff_ms / 1000.0,
            hint_cap_s=self._settings.retry_after_max_seconds,
            rng=self._rng,
        )
        ids = [q.request_id for q, _ in retry]
        for start in range(0, len(ids), STORE_CHUNK):
            await self._queue.release(
                ids[start : start + STORE_CHUNK], token=job.token, retry_at=now + delay
            )
        codes = Counter(f.code.value for _, f in retry)
        model = self._providers.model_label(retry[0][0].route)
        for code, count in codes.items():
            self._metrics.provider_retries.labels(
                provider=job.provider.value, model=model, error_code=code
            ).inc(count)


def final_failure(outcome: ItemFailure, attempts: int) -> Failure:
    """The failure a request ends with after `attempts` attempts."""
    suffix = f" (after {attempts} attempt{'s' if attempts != 1 else ''})"
    return Failure(outcome.code, outcome.message + suffix, outcome.retryable, attempts)


def _trace_id(queued: QueuedRequest) -> str:
    """The trace the request was submitted in (its result opens it), or ""."""
    if not queued.trace_context:
        return ""
    ctx = trace.get_current_span(context_from(queued.trace_context)).get_span_context()
    return trace.format_trace_id(ctx.trace_id) if ctx.is_valid else ""
