"""Creating a recorded batch job at its provider, exactly once.

The job is recorded (with its requests) before anything is sent. Each attempt first marks the job
`creating` with the time it starts; a batch that the provider accepted is recorded at once as
`submitted`, with its id. So a job found `creating` by the replica that claims it next (the one
that started the attempt died, froze past its claim, or lost the provider's answer) has an
attempt whose outcome is unknown: the provider is asked for a batch of this job (`find`: OpenAI's
metadata names the job; for Anthropic, the time and size) before another attempt, and that attempt
waits until the first one can no longer land (its start plus the provider's call timeout). A
replica that had lost its claim when the provider answered cancels the batch it created.

A creation the provider refused fails the job as a whole: its items are retried in a later batch
when the refusal is retryable (429, 5xx), else FAILED with the provider's error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace

from lps_server.core.config import Settings
from lps_server.core.domain import ErrorCode, QueuedRequest
from lps_server.observability.batch_metrics import BatchMetrics
from lps_server.processing.batch_claims import JobClaim
from lps_server.processing.batch_lines import keep_only, spec_of
from lps_server.processing.batch_outcomes import JobResults
from lps_server.providers import ItemFailure, ProviderCallError
from lps_server.providers.batch_base import BatchApi, CreationUnknown
from lps_server.providers.batch_registry import BatchApis
from lps_server.queue.batch_jobs import BatchJob, JobState, JobUpdate, NewJob, encode_spec

log = logging.getLogger(__name__)


class JobCreator:
    """Creates batch jobs at their providers.

    Args:
        apis: the providers' batch APIs.
        results: stores the outcome of a job that cannot be created.
        settings: the poll interval.
        metrics: batch-job metrics.
        clock: Unix time source.
    """

    def __init__(
        self,
        *,
        apis: BatchApis,
        results: JobResults,
        settings: Settings,
        metrics: BatchMetrics,
        clock: Callable[[], float],
    ) -> None:
        self._apis = apis
        self._results = results
        self._settings = settings
        self._metrics = metrics
        self._clock = clock

    async def create(self, job: BatchJob, claim: JobClaim) -> None:
        """Bring a `recorded` or `creating` job the claim holds to `submitted` (or end it)."""
        held, unreadable = await claim.jobs.held(job.job_id, job.request_ids)
        await self._results.end_unreadable(job, unreadable)
        api = self._apis.get(job.provider)
        if api is None:
            failure = ItemFailure(
                ErrorCode.CONFIGURATION,
                f"provider {job.provider.value!r} has no batch API on this server",
            )
            await self.fail(job, held, failure, claim)
            return
        if not held:
            await claim.close("failed")
            return
        if job.state == JobState.CREATING and await self._adopted(job, held, api, claim):
            return
        lines = keep_only(job.lines, held)
        rewritten = None
        if lines != job.lines:  # what is sent is what is recorded: answers match by position
            job = replace(job, lines=lines)
            rewritten = encode_spec(
                NewJob(job.job_id, job.provider, job.model, job.group, lines, job.attempts)
            )
        update = JobUpdate(state=JobState.CREATING, attempt_at=self._clock(), spec=rewritten)
        if not await claim.update(update) or not await claim.confirm():
            log.warning("lost batch job %s before creating it; another replica goes on", job.job_id)
            return
        spec = spec_of(job, held)
        try:
            batch_id = await api.create(spec)
        except CreationUnknown as exc:
            log.warning(
                "creating the batch of job %s at %s had no clear answer (%s); it will be looked "
                "for before another attempt",
                job.job_id,
                job.provider.value,
                exc,
            )
            await claim.release(self._clock() + api.call_timeout_s)
            return
        except ProviderCallError as exc:
            log.error("%s refused batch job %s: %s", job.provider.value, job.job_id, exc)
            await self.fail(job, held, exc.failure, claim)
            return
        await self._submitted(job, batch_id, api, claim)

    async def _adopted(
        self, job: BatchJob, held: Mapping[str, QueuedRequest], api: BatchApi, claim: JobClaim
    ) -> bool:
        """Whether an earlier attempt's batch was found (then recorded), or must be waited for;
        False when another attempt may go."""
        spec = spec_of(job, held)
        found = await api.find(spec, since=job.attempt_at, claimed=claim.jobs.claimed_by)
        if found is not None:
            log.warning(
                "batch job %s: found batch %s from an attempt whose answer was lost; using it",
                job.job_id,
                found,
            )
            await self._submitted(job, found, api, claim)
            return True
        landed_by = job.attempt_at + api.call_timeout_s
        if self._clock() < landed_by:
            await claim.release(landed_by)  # the earlier attempt might still land
            return True
        return False

    async def _submitted(
        self, job: BatchJob, batch_id: str, api: BatchApi, claim: JobClaim
    ) -> None:
        now = self._clock()
        poll_s = self._settings.batch_api_poll_seconds
        recorded = await claim.release(
            now + poll_s,
            JobUpdate(
                state=JobState.SUBMITTED,
                provider_batch_id=batch_id,
                submitted_at=now,
                poll_interval_s=poll_s,
            ),
        )
        if not recorded:
            # Another replica took the job over meanwhile. Unless it found this batch and uses
            # it, it makes its own: this one is a duplicate, and cancelling it keeps the cost to
            # what it ran so far (`find` passes over cancelled batches).
            now_recorded = await claim.jobs.get(job.job_id)
            if now_recorded is not None and now_recorded.provider_batch_id == batch_id:
                return
            log.error(
                "created batch %s for job %s after losing the job to another replica; "
                "cancelling it",
                batch_id,
                job.job_id,
            )
            try:
                await api.cancel(batch_id)
            except ProviderCallError as exc:
                log.error("could not cancel duplicate batch %s: %s", batch_id, exc)
            return
        self._metrics.submitted(job.provider, lines=len(job.lines), items=len(job.request_ids))
        log.info(
            "batch job %s submitted to %s as %s: %d requests in %d lines",
            job.job_id,
            job.provider.value,
            batch_id,
            len(job.request_ids),
            len(job.lines),
            extra={"batch_job": job.job_id, "provider_batch_id": batch_id},
        )

    async def fail(
        self,
        job: BatchJob,
        held: Mapping[str, QueuedRequest],
        failure: ItemFailure,
        claim: JobClaim,
    ) -> None:
        """End a job that cannot be (or was not) run: every item fails with `failure`, retried in a
        later batch when it is retryable."""
        # Marked first, so that a replica taking over an interrupted failure finishes it rather
        # than creating the batch.
        await claim.update(
            JobUpdate(state=JobState.COLLECTING, error=f"{failure.code.value}|{failure.message}")
        )
        await self._results.settle(job, held, {}, absent=failure)
        if await claim.close("failed"):
            self._metrics.ended(job.provider, "failed", result_s=None)


def recorded_failure(job: BatchJob) -> ItemFailure | None:
    """The failure `JobCreator.fail` recorded on a job it was ending, if any."""
    code, sep, message = job.error.partition("|")
    if not sep or code not in ErrorCode.__members__.values():
        return None
    return ItemFailure(ErrorCode(code), message)
