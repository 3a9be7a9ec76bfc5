"""Batch jobs in Redis, beside the queue and under its hash tag (docs/queue.md, "Batch jobs").

Keys under `{p}`: `{p}:bjob:<job id>` (hash: state, provider, model, group, spec (lines and
attempts), times, claim owner and deadline, provider batch id, state and counts, outcome),
`{p}:bjobs:open` (zset: open job ids by when each next needs work), `{p}:bjobs:counts` (hash:
open jobs per `provider:state`), `{p}:bjobs:meta` (hash: `requests`, the requests open jobs hold,
which queue stats count as processing) and `{p}:bjobs:pid:<provider batch id>` (the job of a
provider batch). Every change of a job is one script (`redis_batch_scripts`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from redis.asyncio import Redis

from lps_server.core.domain import QueuedRequest, RequestStatus
from lps_server.queue.batch_jobs import (
    BatchJob,
    JobUpdate,
    NewJob,
    decode_job,
    encode_spec,
    job_token,
)
from lps_server.queue.codec import decode_queued
from lps_server.queue.codec import unreadable as unreadable_request
from lps_server.queue.redis_batch_scripts import BatchJobScripts
from lps_server.queue.redis_keys import QueueKeys
from lps_server.queue.unreadable import UnreadableRequest

log = logging.getLogger(__name__)
PROCESSING = RequestStatus.PROCESSING.value.encode()
T = TypeVar("T")
#: Runs one Redis operation, translating failures (`RedisCalls.call`).
Call = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


class BatchJobKeys:
    """The batch-job keys of one queue prefix."""

    def __init__(self, keys: QueueKeys) -> None:
        self._queue = keys
        tag = keys.tag
        self.open = f"{tag}:bjobs:open"
        self.counts = f"{tag}:bjobs:counts"
        self.meta = f"{tag}:bjobs:meta"
        self.job_prefix = f"{tag}:bjob:"
        self.pid_prefix = f"{tag}:bjobs:pid:"

    def job(self, job_id: str) -> str:
        """The hash of one job."""
        return self.job_prefix + job_id

    def script_keys(self) -> list[str]:
        """The KEYS every batch-job script receives."""
        return [self.open, self.counts, self.meta, self._queue.leases]

    def script_prefixes(self) -> list[str]:
        """ARGV[1..3] of every batch-job script."""
        return [self._queue.request_prefix, self.job_prefix, self.pid_prefix]


class RedisBatchJobs:
    """A BatchJobStore in the Redis of a RedisQueue.

    Args:
        client: the queue's client.
        keys: the queue's keys.
        call: the queue's way to run an operation (error translation, one retry on a dead
            connection).
        retention_s: how long an ended job's record is kept.
    """

    def __init__(self, *, client: Redis, keys: QueueKeys, call: Call, retention_s: float) -> None:
        self._client = client
        self._queue_keys = keys
        self.keys = BatchJobKeys(keys)
        self._call = call
        self._scripts = BatchJobScripts.register(client)
        self._retention_ms = max(1, round(retention_s * 1000))

    async def _run(self, script: Any, args: Sequence[Any]) -> Any:
        argv = [*self.keys.script_prefixes(), *args]
        return await self._call(lambda: script(keys=self.keys.script_keys(), args=argv))

    async def open(
        self, job: NewJob, *, held: Mapping[str, str], owner: str, until: float, now: float
    ) -> list[str]:
        """Record the job and move its requests under its token, all or nothing."""
        args: list[Any] = [
            job.job_id,
            job_token(job.job_id),
            owner,
            repr(until),
            repr(now),
            job.provider.value,
            job.model,
            job.group,
            encode_spec(job),
            len(job.lines),
        ]
        for rid in job.request_ids:
            args += [rid, held[rid]]
        missing = await self._run(self._scripts.open, args)
        return [m.decode() for m in missing]

    async def claim(self, job_id: str, *, owner: str, until: float, now: float) -> BatchJob | None:
        """Claim the job if nobody holds it; the job as claimed, or None."""
        reply = await self._run(self._scripts.claim, [job_id, owner, repr(until), repr(now)])
        if not reply:
            return None
        return decode_job(job_id, _pairs(reply))

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
        score = release_at if release_at is not None else until
        args: list[Any] = [
            job_id,
            owner,
            "1" if release_at is not None else "0",
            "" if score is None else repr(score),
        ]
        for name, value in update.encoded().items():
            args += [name, value]
        return int(await self._run(self._scripts.update, args)) == 1

    async def close(self, job_id: str, *, owner: str, now: float, outcome: str) -> bool:
        """End a held job; True when it is ended (now, or by an earlier call)."""
        args = [job_id, owner, repr(now), self._retention_ms, outcome]
        return int(await self._run(self._scripts.close, args)) > 0

    async def due(self, *, now: float, limit: int) -> list[str]:
        """Open jobs that need work by `now`, soonest first."""
        found = await self._call(
            lambda: self._client.zrangebyscore(self.keys.open, "-inf", repr(now), 0, limit)
        )
        return [j.decode() for j in found]

    async def get(self, job_id: str) -> BatchJob | None:
        """The job's record."""
        stored = await self._call(lambda: self._client.hgetall(self.keys.job(job_id)))
        if not stored or b"spec" not in stored:
            return None
        return decode_job(job_id, {k.decode(): v.decode() for k, v in stored.items()})

    async def of_request(self, request_id: str) -> BatchJob | None:
        """The job recorded on the request's hash."""
        key = self._queue_keys.request(request_id)
        job_id = await self._call(lambda: self._client.hget(key, "batch_job"))
        return await self.get(job_id.decode()) if job_id else None

    async def held(
        self, job_id: str, request_ids: Sequence[str]
    ) -> tuple[dict[str, QueuedRequest], list[UnreadableRequest]]:
        """The requests still held under the job's token, read in one round trip."""
        if not request_ids:
            return {}, []

        async def read() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                for rid in request_ids:
                    pipe.hmget(self._queue_keys.request(rid), ["status", "lease", "payload"])
                replies: list[Any] = await pipe.execute()
                return replies

        token = job_token(job_id).encode()
        found: dict[str, QueuedRequest] = {}
        unreadable: list[UnreadableRequest] = []
        for rid, (status, lease, payload) in zip(request_ids, await self._call(read), strict=True):
            if status != PROCESSING or lease != token or payload is None:
                continue  # stored, or released for a retry: no longer the job's
            try:
                queued = decode_queued(payload)
            except Exception as exc:  # one bad payload ends one request, never the job
                unreadable.append(unreadable_request(rid, payload, exc))
                continue
            found[rid] = queued
        return found, unreadable

    async def claimed_by(self, provider_batch_id: str) -> str | None:
        """The job of a provider batch."""
        job_id = await self._call(
            lambda: self._client.get(self.keys.pid_prefix + provider_batch_id)
        )
        return job_id.decode() if job_id else None

    async def counts(self) -> dict[tuple[str, str], int]:
        """Open jobs by (provider, state)."""
        raw = await self._call(lambda: self._client.hgetall(self.keys.counts))
        found: dict[tuple[str, str], int] = {}
        for key, value in raw.items():
            provider, _, state = key.decode().partition(":")
            found[(provider, state)] = int(value)
        return found

    async def requests_held(self) -> int:
        """How many requests open jobs hold."""
        raw = await self._call(lambda: self._client.hget(self.keys.meta, "requests"))
        return int(raw or 0)


def _pairs(reply: Sequence[bytes]) -> dict[str, str]:
    items = [v.decode() for v in reply]
    return dict(zip(items[::2], items[1::2], strict=True))
