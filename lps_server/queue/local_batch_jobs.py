"""Batch jobs of the in-process queue: the same rules as in Redis, in memory.

Nothing survives the process: a job open when the server stops is cancelled at the provider and
its requests end FAILED (docs/batching.md); for jobs that outlive a replica use Redis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from lps_server.core.domain import QueuedRequest
from lps_server.queue.batch_jobs import (
    BatchJob,
    JobState,
    JobUpdate,
    NewJob,
    decode_spec,
    job_token,
)
from lps_server.queue.unreadable import UnreadableRequest

#: How many ended jobs the in-process store remembers (for status queries and diagnostics).
KEEP_ENDED = 1000


class HeldRequests(Protocol):
    """What the job store needs of the in-process queue."""

    def hand_over(self, held: Mapping[str, str], to: str) -> list[str]:
        """Move requests held under their tokens under `to`, all or nothing; the ids not held."""
        ...

    def held_by(self, request_ids: Sequence[str], token: str) -> dict[str, QueuedRequest]:
        """The queued form of those requests held under `token`."""
        ...


class LocalBatchJobs:
    """A BatchJobStore beside a LocalQueue."""

    def __init__(self, requests: HeldRequests) -> None:
        self._requests = requests
        self._jobs: dict[str, BatchJob] = {}
        self._next: dict[str, float] = {}  # open job -> when it next needs work
        self._of_request: dict[str, str] = {}
        self._by_batch: dict[str, str] = {}
        self._ended: list[str] = []

    async def open(
        self, job: NewJob, *, held: Mapping[str, str], owner: str, until: float, now: float
    ) -> list[str]:
        """Record the job and move its requests under its token, all or nothing."""
        if job.job_id in self._jobs:
            return []
        missing = self._requests.hand_over(
            {rid: held[rid] for rid in job.request_ids}, job_token(job.job_id)
        )
        if missing:
            return missing
        self._jobs[job.job_id] = job.recorded(at=now, owner=owner, until=until)
        self._next[job.job_id] = until
        for rid in job.request_ids:
            self._of_request[rid] = job.job_id
        return []

    def _open_job(self, job_id: str) -> BatchJob | None:
        job = self._jobs.get(job_id)
        return job if job is not None and job.state != JobState.ENDED else None

    async def claim(self, job_id: str, *, owner: str, until: float, now: float) -> BatchJob | None:
        """Claim the job if nobody holds it."""
        job = self._open_job(job_id)
        if job is None or (job.owner not in ("", owner) and job.owner_until > now):
            return None
        job = self._jobs[job_id] = replace(job, owner=owner, owner_until=until)
        self._next[job_id] = until
        return job

    async def update(
        self,
        job_id: str,
        update: JobUpdate,
        *,
        owner: str,
        until: float | None = None,
        release_at: float | None = None,
    ) -> bool:
        """Change a held job's fields; keep (or extend) or give up the claim."""
        job = self._open_job(job_id)
        if job is None or job.owner != owner:
            return False
        changes = {k: v for k, v in _fields(update).items() if v is not None}
        if update.spec is not None:
            changes["lines"], changes["attempts"] = decode_spec(update.spec)
        if release_at is not None:
            changes |= {"owner": "", "owner_until": 0.0}
            self._next[job_id] = release_at
        elif until is not None:
            changes["owner_until"] = until
            self._next[job_id] = until
        if update.provider_batch_id:
            self._by_batch[update.provider_batch_id] = job_id
        self._jobs[job_id] = replace(job, **changes)
        return True

    async def close(self, job_id: str, *, owner: str, now: float, outcome: str) -> bool:
        """End a held job."""
        job = self._jobs.get(job_id)
        if job is not None and job.state == JobState.ENDED:
            return True
        if job is None or job.owner != owner:
            return False
        self._jobs[job_id] = replace(
            job, state=JobState.ENDED, outcome=outcome, ended_at=now, owner="", owner_until=0.0
        )
        self._next.pop(job_id, None)
        self._ended.append(job_id)
        while len(self._ended) > KEEP_ENDED:  # the in-process record of ended jobs is bounded
            self._forget(self._ended.pop(0))
        return True

    def _forget(self, job_id: str) -> None:
        job = self._jobs.pop(job_id)
        for rid in job.request_ids:
            if self._of_request.get(rid) == job_id:
                del self._of_request[rid]
        self._by_batch.pop(job.provider_batch_id, None)

    async def due(self, *, now: float, limit: int) -> list[str]:
        """Open jobs that need work by `now`, soonest first."""
        ready = sorted((at, job_id) for job_id, at in self._next.items() if at <= now)
        return [job_id for _, job_id in ready[:limit]]

    async def get(self, job_id: str) -> BatchJob | None:
        """The job's record."""
        return self._jobs.get(job_id)

    async def of_request(self, request_id: str) -> BatchJob | None:
        """The job that holds (or held) the request."""
        job_id = self._of_request.get(request_id)
        return self._jobs.get(job_id) if job_id is not None else None

    async def held(
        self, job_id: str, request_ids: Sequence[str]
    ) -> tuple[dict[str, QueuedRequest], list[UnreadableRequest]]:
        """The requests still held under the job's token (in-process, all are readable)."""
        return self._requests.held_by(request_ids, job_token(job_id)), []

    async def claimed_by(self, provider_batch_id: str) -> str | None:
        """The job of a provider batch."""
        return self._by_batch.get(provider_batch_id)

    async def counts(self) -> dict[tuple[str, str], int]:
        """Open jobs by (provider, state)."""
        found: dict[tuple[str, str], int] = {}
        for job in self._jobs.values():
            if job.state != JobState.ENDED:
                key = (job.provider.value, job.state.value)
                found[key] = found.get(key, 0) + 1
        return found

    async def requests_held(self) -> int:
        """How many requests open jobs hold."""
        return sum(len(j.request_ids) for j in self._jobs.values() if j.state != JobState.ENDED)


def _fields(update: JobUpdate) -> dict[str, Any]:
    return {
        "state": update.state,
        "attempt_at": update.attempt_at,
        "provider_batch_id": update.provider_batch_id,
        "submitted_at": update.submitted_at,
        "provider_state": update.provider_state,
        "provider_counts": dict(update.provider_counts)
        if update.provider_counts is not None
        else None,
        "polls": update.polls,
        "poll_interval_s": update.poll_interval_s,
        "error": update.error,
    }
