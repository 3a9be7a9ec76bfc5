"""Batch jobs in the queue backend: what a provider batch holds and where it stands, recorded
before anything is uploaded, shared by every replica.

A job is opened in one step with its requests: each request, leased until then, moves under the
job's token (`BatchJob.token`) and out of the lease set, so no lease lapses and no sweep reclaims
it while the provider works on it; its result is later stored, or it is released for a retry,
under that token with the usual fenced `complete` and `release`. A job is worked on (created at
the provider, polled, collected) only by the replica that holds its claim: a token with a deadline,
kept alive while it works. A claim that lapses (its replica died or froze) lets any other replica
claim the job and go on from its recorded state. Open jobs are kept in order of when each next
needs work (its claim's deadline, or its next poll), which is how replicas share the polling.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Protocol

from lps_server.core.domain import BatchJobView, ProviderName, QueuedRequest
from lps_server.queue.unreadable import UnreadableRequest

JOB_TOKEN_PREFIX = "batchjob:"


class JobState(StrEnum):
    """Where a job stands (LPS's own states; the provider's are `BatchJob.provider_state`)."""

    # Written with its requests; nothing sent to the provider yet.
    RECORDED = "recorded"
    # A create attempt started; until it is recorded as submitted its outcome is unknown.
    CREATING = "creating"
    # The provider holds the batch; it is polled.
    SUBMITTED = "submitted"
    # The provider's batch ended; its results are being stored.
    COLLECTING = "collecting"
    ENDED = "ended"


OPEN_STATES = (JobState.RECORDED, JobState.CREATING, JobState.SUBMITTED, JobState.COLLECTING)


@dataclass(frozen=True, slots=True)
class JobLine:
    """One line of a job: the requests its provider request judges, in order."""

    custom_id: str
    request_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to open: its provider, model, compatibility group and lines, and each request's
    earlier failed attempts."""

    job_id: str
    provider: ProviderName
    model: str
    group: str
    lines: tuple[JobLine, ...]
    attempts: Mapping[str, int] = field(default_factory=dict)

    @property
    def request_ids(self) -> list[str]:
        """Every request of the job, line by line."""
        return [rid for line in self.lines for rid in line.request_ids]

    def recorded(self, *, at: float, owner: str, until: float) -> BatchJob:
        """The job as `open` records it: RECORDED at `at`, claimed by `owner` until `until`."""
        return BatchJob(
            job_id=self.job_id,
            provider=self.provider,
            model=self.model,
            group=self.group,
            state=JobState.RECORDED,
            lines=self.lines,
            attempts=dict(self.attempts),
            recorded_at=at,
            owner=owner,
            owner_until=until,
        )


@dataclass(frozen=True, slots=True)
class JobUpdate:
    """Fields of a job to change (None: unchanged)."""

    state: JobState | None = None
    attempt_at: float | None = None
    provider_batch_id: str | None = None
    submitted_at: float | None = None
    provider_state: str | None = None
    provider_counts: Mapping[str, int] | None = None
    polls: int | None = None
    poll_interval_s: float | None = None
    error: str | None = None
    # The lines and attempts (`encode_spec`), when the lines sent differ from those recorded.
    spec: str | None = None

    def encoded(self) -> dict[str, str]:
        """The changed fields as the strings a store keeps."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, float):
                out[f.name] = repr(value)
            elif isinstance(value, Mapping):
                out[f.name] = json.dumps(dict(value), sort_keys=True)
            else:
                out[f.name] = str(value)
        return out


@dataclass(frozen=True, slots=True)
class BatchJob:
    """A recorded job and where it stands."""

    job_id: str
    provider: ProviderName
    model: str
    group: str
    state: JobState
    lines: tuple[JobLine, ...]
    attempts: Mapping[str, int] = field(default_factory=dict)
    recorded_at: float = 0.0
    owner: str = ""
    owner_until: float = 0.0
    attempt_at: float = 0.0
    provider_batch_id: str = ""
    submitted_at: float = 0.0
    provider_state: str = ""
    provider_counts: Mapping[str, int] = field(default_factory=dict)
    polls: int = 0
    poll_interval_s: float = 0.0
    ended_at: float = 0.0
    outcome: str = ""
    error: str = ""

    @property
    def token(self) -> str:
        """The token its requests are held under while the job owns them."""
        return job_token(self.job_id)

    @property
    def request_ids(self) -> list[str]:
        """Every request of the job, line by line."""
        return [rid for line in self.lines for rid in line.request_ids]

    @property
    def is_open(self) -> bool:
        """True until the job has ended."""
        return self.state != JobState.ENDED

    def view(self) -> BatchJobView:
        """What a status query shows of the job."""
        return BatchJobView(
            job_id=self.job_id,
            state=self.state.value,
            provider_batch_id=self.provider_batch_id,
            provider_state=self.provider_state,
            requests=len(self.request_ids),
            lines=len(self.lines),
            recorded_at=self.recorded_at,
            submitted_at=self.submitted_at,
            provider_counts=dict(self.provider_counts),
        )


def job_token(job_id: str) -> str:
    """The lease token of a job's requests."""
    return JOB_TOKEN_PREFIX + job_id


def encode_spec(job: NewJob) -> str:
    """The lines and attempts of a job as stored (JSON)."""
    return json.dumps(
        {
            "lines": [[line.custom_id, list(line.request_ids)] for line in job.lines],
            "attempts": dict(job.attempts),
        },
        separators=(",", ":"),
    )


def decode_spec(raw: str) -> tuple[tuple[JobLine, ...], dict[str, int]]:
    """The lines and attempts `encode_spec` wrote."""
    spec = json.loads(raw)
    lines = tuple(JobLine(cid, tuple(ids)) for cid, ids in spec["lines"])
    return lines, {k: int(v) for k, v in spec.get("attempts", {}).items()}


def decode_job(job_id: str, stored: Mapping[str, str]) -> BatchJob:
    """A job from the string fields a store keeps (the inverse of `encode_spec` and
    `JobUpdate.encoded`)."""
    lines, attempts = decode_spec(stored["spec"])

    def number(name: str) -> float:
        raw = stored.get(name, "")
        return float(raw) if raw else 0.0

    def counts(name: str) -> dict[str, int]:
        raw = stored.get(name, "")
        return {k: int(v) for k, v in json.loads(raw).items()} if raw else {}

    return BatchJob(
        job_id=job_id,
        provider=ProviderName(stored["provider"]),
        model=stored.get("model", ""),
        group=stored.get("group", ""),
        state=JobState(stored["state"]),
        lines=lines,
        attempts=attempts,
        recorded_at=number("recorded_at"),
        owner=stored.get("owner", ""),
        owner_until=number("owner_until"),
        attempt_at=number("attempt_at"),
        provider_batch_id=stored.get("provider_batch_id", ""),
        submitted_at=number("submitted_at"),
        provider_state=stored.get("provider_state", ""),
        provider_counts=counts("provider_counts"),
        polls=int(number("polls")),
        poll_interval_s=number("poll_interval_s"),
        ended_at=number("ended_at"),
        outcome=stored.get("outcome", ""),
        error=stored.get("error", ""),
    )


class BatchJobStore(Protocol):
    """Batch jobs kept beside the queue, in the same backend."""

    async def open(
        self, job: NewJob, *, held: Mapping[str, str], owner: str, until: float, now: float
    ) -> list[str]:
        """Record `job` and move its requests under the job's token, in one step, claimed by
        `owner` until `until`. `held` gives the lease token each request is held under now.

        All or nothing: when any request is not held under its token, nothing changes and the
        ids not held are returned. A job recorded before (a repeat) returns [] again.

        Raises:
            QueueUnavailableError: the backend cannot be reached (ask again to find out).
        """
        ...

    async def claim(self, job_id: str, *, owner: str, until: float, now: float) -> BatchJob | None:
        """Claim an open job that nobody holds (or whose claim has lapsed) until `until`; the
        job as claimed, or None."""
        ...

    async def update(
        self,
        job_id: str,
        update: JobUpdate,
        *,
        owner: str,
        until: float | None = None,
        release_at: float | None = None,
    ) -> bool:
        """Change the fields of a job `owner` holds; keep the claim (to `until` when given), or
        with `release_at` give it up and have the job need work again then. False when `owner`
        does not hold it."""
        ...

    async def close(self, job_id: str, *, owner: str, now: float, outcome: str) -> bool:
        """End a job `owner` holds (every request stored or released): it leaves the open jobs
        and its record expires after the retention time."""
        ...

    async def due(self, *, now: float, limit: int) -> list[str]:
        """Ids of open jobs that need work by `now` (claims lapsed, polls due), soonest first."""
        ...

    async def get(self, job_id: str) -> BatchJob | None:
        """The job, or None when unknown (or past retention)."""
        ...

    async def of_request(self, request_id: str) -> BatchJob | None:
        """The job that holds (or held) `request_id`, or None."""
        ...

    async def held(
        self, job_id: str, request_ids: Sequence[str]
    ) -> tuple[dict[str, QueuedRequest], list[UnreadableRequest]]:
        """Those of `request_ids` the job still holds (neither stored nor released): their
        queued form, and apart those whose payload cannot be read (to be ended FAILED)."""
        ...

    async def claimed_by(self, provider_batch_id: str) -> str | None:
        """The job recorded with this provider batch, or None."""
        ...

    async def counts(self) -> dict[tuple[str, str], int]:
        """Open jobs by (provider, state)."""
        ...
