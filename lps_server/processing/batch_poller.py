"""Working open batch jobs, on any replica: each looks at the jobs that need work now (a claim that
lapsed, a poll that is due), claims one at a time, and does what its state asks: create it (a
`recorded` or `creating` job whose replica is gone), poll it, or store its results.

Polls are shared: after a poll the job is given up until its next poll is due, so however many
replicas run, a job is polled once per interval. The interval starts at LPS_BATCH_API_POLL_SECONDS
and grows by half after every poll that saw no change, up to twenty times the setting (ten minutes
by default); any change brings it back.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

from lps_server.core.config import Settings
from lps_server.core.domain import ErrorCode
from lps_server.core.errors import QueueUnavailableError
from lps_server.observability.batch_metrics import BatchMetrics
from lps_server.processing.batch_claims import JobClaim
from lps_server.processing.batch_creation import JobCreator, recorded_failure
from lps_server.processing.batch_lines import spec_of
from lps_server.processing.batch_outcomes import JobResults, missing_line
from lps_server.providers import ItemFailure, ProviderCallError
from lps_server.providers.batch_base import BatchApi, BatchOutcome, BatchStatus
from lps_server.providers.batch_registry import BatchApis
from lps_server.queue.batch_jobs import BatchJob, BatchJobStore, JobState, JobUpdate

log = logging.getLogger(__name__)
BACKOFF_FACTOR = 1.5
BACKOFF_CAP_FACTOR = 20.0
# How many jobs one replica works on at once, and looks at per round.
MAX_WORKING = 8
DUE_PER_ROUND = 64
# The longest pause between two looks at the open jobs.
MAX_TICK_S = 1.0


class BatchPoller:
    """Claims and works the open batch jobs that need work.

    Args:
        jobs: the batch-job store.
        apis: the providers' batch APIs.
        creator: creates jobs whose creation was not finished.
        results: stores jobs' outcomes.
        settings: poll interval and lease period.
        metrics: batch-job metrics.
        clock: Unix time source.
    """

    def __init__(
        self,
        *,
        jobs: BatchJobStore,
        apis: BatchApis,
        creator: JobCreator,
        results: JobResults,
        settings: Settings,
        metrics: BatchMetrics,
        clock: Callable[[], float],
    ) -> None:
        self._jobs = jobs
        self._apis = apis
        self._creator = creator
        self._results = results
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._working: dict[str, asyncio.Task[None]] = {}
        self._tick_s = min(MAX_TICK_S, settings.batch_api_poll_seconds / 2.0)

    async def run(self, stopping: asyncio.Event) -> None:
        """Look at the open jobs every tick until `stopping` is set."""
        while not stopping.is_set():
            try:
                await self.round()
            except QueueUnavailableError as exc:
                log.warning("batch jobs not looked at this round: %s", exc)
            try:
                await asyncio.wait_for(stopping.wait(), self._tick_s)
            except TimeoutError:
                continue

    async def round(self) -> None:
        """Claim and start the jobs that need work now; publish the jobs by state."""
        now = self._clock()
        for job_id in await self._jobs.due(now=now, limit=DUE_PER_ROUND):
            if job_id in self._working or len(self._working) >= MAX_WORKING:
                continue
            owner = uuid.uuid4().hex
            until = now + self._settings.queue_lease_seconds
            job = await self._jobs.claim(job_id, owner=owner, until=until, now=now)
            if job is None:
                continue
            claim = JobClaim(
                jobs=self._jobs,
                job_id=job_id,
                owner=owner,
                lease_s=self._settings.queue_lease_seconds,
                clock=self._clock,
                until=until,
            )
            self._working[job_id] = asyncio.create_task(self._work(job, claim))
        self._metrics.set_jobs(await self._jobs.counts())

    async def stop(self) -> None:
        """Stop the work under way; its claims lapse and other replicas go on."""
        for task in list(self._working.values()):
            task.cancel()
        await asyncio.gather(*self._working.values(), return_exceptions=True)

    async def _work(self, job: BatchJob, claim: JobClaim) -> None:
        claim.start()
        try:
            await self._step(job, claim)
        finally:
            await claim.stop()
            self._working.pop(job.job_id, None)

    async def _step(self, job: BatchJob, claim: JobClaim) -> None:
        try:
            api = self._apis.get(job.provider)
            if job.state in (JobState.RECORDED, JobState.CREATING):
                await self._creator.create(job, claim)
            elif api is None:
                log.error("batch job %s: no %s batch API here", job.job_id, job.provider.value)
                await claim.release(self._clock() + self._settings.batch_api_poll_seconds)
            elif job.state == JobState.SUBMITTED:
                await self._poll(job, api, claim)
            elif job.state == JobState.COLLECTING:
                await self._collect(job, api, claim, None)
        except asyncio.CancelledError:
            raise
        except (QueueUnavailableError, ProviderCallError) as exc:
            log.warning("batch job %s: %s; trying again later", job.job_id, exc)
            await self._release_quietly(claim, job)
        except Exception:
            log.exception("batch job %s failed unexpectedly; trying again later", job.job_id)
            await self._release_quietly(claim, job)

    async def _release_quietly(self, claim: JobClaim, job: BatchJob) -> None:
        if claim.lost:
            return
        interval = job.poll_interval_s or self._settings.batch_api_poll_seconds
        try:
            await claim.release(self._clock() + interval)
        except QueueUnavailableError:
            return  # the claim lapses instead

    async def _poll(self, job: BatchJob, api: BatchApi, claim: JobClaim) -> None:
        status = await self._status(job, api, claim)
        if status is None:
            return
        if not status.ended:
            base = self._settings.batch_api_poll_seconds
            changed = (status.state, dict(status.counts)) != (
                job.provider_state,
                dict(job.provider_counts),
            )
            interval = base if changed or not job.poll_interval_s else job.poll_interval_s
            if not changed:
                interval = min(interval * BACKOFF_FACTOR, base * BACKOFF_CAP_FACTOR)
            await claim.release(
                self._clock() + interval,
                JobUpdate(
                    provider_state=status.state,
                    provider_counts=status.counts,
                    polls=job.polls + 1,
                    poll_interval_s=interval,
                ),
            )
            return
        update = JobUpdate(
            state=JobState.COLLECTING,
            provider_state=status.state,
            provider_counts=status.counts,
            polls=job.polls + 1,
        )
        if await claim.update(update):
            await self._collect(job, api, claim, status)

    async def _status(self, job: BatchJob, api: BatchApi, claim: JobClaim) -> BatchStatus | None:
        """The provider's status of the job's batch; None when the job had to be given up."""
        self._metrics.polls.labels(provider=job.provider.value).inc()
        try:
            return await api.status(job.provider_batch_id)
        except ProviderCallError as exc:
            if exc.failure.retryable:
                raise
            # The provider does not know the batch (any more): its requests are retried.
            log.error("batch job %s: %s", job.job_id, exc)
            held, _ = await self._jobs.held(job.job_id, job.request_ids)
            await self._creator.fail(job, held, exc.failure, claim)
            return None

    async def _collect(
        self, job: BatchJob, api: BatchApi, claim: JobClaim, status: BatchStatus | None
    ) -> None:
        """Store the outcome of every request the job holds, then end the job."""
        held, unreadable = await self._jobs.held(job.job_id, job.request_ids)
        await self._results.end_unreadable(job, unreadable)
        failure = recorded_failure(job)
        if failure is not None or not job.provider_batch_id:
            # A failure that was being stored when its replica stopped.
            await self._creator.fail(job, held, failure or missing_line(job), claim)
            return
        status = status or await self._status(job, api, claim)
        if status is None:
            return
        outcomes = {}
        if held:
            outcomes = await api.results(job.provider_batch_id, spec_of(job, held), status)
        absent = missing_line(job)
        if status.outcome == BatchOutcome.FAILED:
            absent = batch_failed(job, status)
        ended = await self._results.settle(job, held, outcomes, absent=absent)
        outcome = (status.outcome or BatchOutcome.COMPLETED).value
        if await claim.close(outcome):
            result_s = self._clock() - job.submitted_at if job.submitted_at else None
            self._metrics.ended(job.provider, outcome, result_s=result_s)
            log.info(
                "batch job %s ended %s: %s",
                job.job_id,
                outcome,
                ", ".join(f"{n} {s}" for s, n in sorted(ended.items())) or "nothing left to store",
                extra={"batch_job": job.job_id, "provider_batch_id": job.provider_batch_id},
            )


def batch_failed(job: BatchJob, status: BatchStatus) -> ItemFailure:
    """The failure of the lines of a batch the provider failed as a whole (validation, limits):
    retried when the provider ran into a limit, else not."""
    reason = status.error or "no reason given"
    code = ErrorCode.RATE_LIMITED if "limit" in reason.lower() else ErrorCode.PROVIDER_ERROR
    return ItemFailure(code, f"{job.provider.value}: the batch failed: {reason}"[:300])
