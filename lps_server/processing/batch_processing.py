"""The batch path of a replica: gathering batch-path requests into jobs, creating them at the
providers, and working every open job (polling, collecting) with the other replicas.

The dispatcher hands leased bundles of batch groups to `run` (the bundle runner's signature);
`start` begins working the open jobs; `stop` ends the replica's part. With a shared backend a stop
leaves every job to the next replica: what is still gathering is given back to the queue, and
recorded jobs are taken over once their claims lapse. With the in-process queue a drain submits
what is gathering, waits (within the grace period) for the open jobs to end, then cancels the
provider batches still open and ends their requests FAILED, naming the shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import uuid
from collections.abc import Callable, Mapping

from lps_server.core.config import Settings
from lps_server.core.domain import ErrorCode, QueuedRequest
from lps_server.core.errors import QueueUnavailableError
from lps_server.observability.batch_metrics import BatchMetrics
from lps_server.observability.metrics import LpsMetrics
from lps_server.processing.batch_accumulator import BatchAccumulator
from lps_server.processing.batch_claims import JobClaim
from lps_server.processing.batch_creation import JobCreator
from lps_server.processing.batch_outcomes import JobResults
from lps_server.processing.batch_poller import BatchPoller
from lps_server.processing.endings import RequestEndings
from lps_server.processing.leases import LeaseKeeper
from lps_server.processing.supervision import supervise
from lps_server.providers import ItemFailure, ProviderCallError, ProviderRegistry
from lps_server.providers.batch_registry import BatchApis
from lps_server.queue.base import QueueBackend

log = logging.getLogger(__name__)
# How often a drain looks whether the open jobs have ended.
DRAIN_LOOK_S = 0.05


class BatchProcessing:
    """One replica's batch path.

    Args:
        queue: the queue backend (its batch-job store is used).
        providers: the provider registry (for model labels).
        apis: the providers' batch APIs.
        settings: batch, retry and lease settings.
        metrics: the request metrics.
        batch_metrics: the batch-job metrics.
        endings: how expired and unreadable requests met while leasing are ended.
        clock: Unix time source.
        rng: randomness for backoff jitter.
    """

    def __init__(
        self,
        *,
        queue: QueueBackend,
        providers: ProviderRegistry,
        apis: BatchApis,
        settings: Settings,
        metrics: LpsMetrics,
        batch_metrics: BatchMetrics,
        endings: RequestEndings,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self._jobs = queue.batch_jobs()
        self._apis = apis
        self._settings = settings
        self._clock = clock
        results = JobResults(
            queue=queue,
            providers=providers,
            settings=settings,
            metrics=metrics,
            clock=clock,
            rng=rng,
        )
        self._results = results
        self._creator = JobCreator(
            apis=apis, results=results, settings=settings, metrics=batch_metrics, clock=clock
        )
        self._accumulator = BatchAccumulator(
            queue=queue,
            jobs=self._jobs,
            apis=apis,
            creator=self._creator,
            settings=settings,
            endings=endings,
            clock=clock,
        )
        self._poller = BatchPoller(
            jobs=self._jobs,
            apis=apis,
            creator=self._creator,
            results=results,
            settings=settings,
            metrics=batch_metrics,
            clock=clock,
        )
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._restarts = metrics.processor_restarts.labels(loop="batch")

    async def run(
        self, items: list[QueuedRequest], *, keeper: LeaseKeeper, attempts: Mapping[str, int]
    ) -> None:
        """Take over a leased bundle of a batch group (it joins its group's next job)."""
        await self._accumulator.run(items, keeper=keeper, attempts=attempts)

    def start(self) -> None:
        """Begin working the open jobs (restarted after any failure)."""
        if self._task is None:

            async def failed() -> None:
                self._restarts.inc()

            self._task = asyncio.create_task(
                supervise(
                    "batch",
                    lambda: self._poller.run(self._stopping),
                    stopping=self._stopping,
                    on_failure=failed,
                )
            )

    async def stop(self, *, drain: bool, grace: float) -> None:
        """End this replica's part (see the module's docstring); `drain` for the in-process
        queue, whose jobs nobody else can finish."""
        deadline = self._clock() + max(0.0, grace)
        if drain:
            self._accumulator.flush()
            await self._accumulator.wait(deadline - self._clock())
            await self._until_no_open_jobs(deadline)
        self._stopping.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        await self._accumulator.stop()
        await self._poller.stop()
        if drain:
            await self._abandon_open_jobs()

    async def _until_no_open_jobs(self, deadline: float) -> None:
        while self._clock() < deadline:
            try:
                if not await self._jobs.due(now=math.inf, limit=1):
                    return
            except QueueUnavailableError:
                return
            await asyncio.sleep(DRAIN_LOOK_S)  # the jobs end by polling; nothing to wait on

    async def _abandon_open_jobs(self) -> None:
        """Cancel the provider batches of the jobs still open and end their requests FAILED."""
        failure = ItemFailure(
            ErrorCode.INTERNAL,
            "server shut down while this request was in a provider batch job; submit it again",
        )
        for job_id in await self._jobs.due(now=math.inf, limit=10_000):
            owner = uuid.uuid4().hex
            now = self._clock()
            job = await self._jobs.claim(job_id, owner=owner, until=now + 60.0, now=math.inf)
            if job is None:
                continue
            api = self._apis.get(job.provider)
            if api is not None and job.provider_batch_id:
                try:
                    await api.cancel(job.provider_batch_id)
                except ProviderCallError as exc:
                    log.warning("could not cancel batch %s: %s", job.provider_batch_id, exc)
            claim = JobClaim(
                jobs=self._jobs,
                job_id=job_id,
                owner=owner,
                lease_s=60.0,
                clock=self._clock,
                until=now + 60.0,
            )
            held, _ = await self._jobs.held(job_id, job.request_ids)
            await self._creator.fail(job, held, failure, claim)  # INTERNAL: not retried
