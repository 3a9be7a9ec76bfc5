"""The Redis queue backend: durable, prioritised, expiring, shared by many replicas.

The data model is in `redis_keys`, every state change is one Lua script in `redis_scripts`; this
module encodes arguments, decodes replies, turns every Redis failure into `QueueUnavailableError` in
one place and tries a call once more after a dead connection (both in `redis_calls`). See
docs/queue.md.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from typing import Any

from redis.asyncio import Redis

from lps_server.core.config import Settings
from lps_server.core.domain import ComparisonResult, ProviderName, QueuedRequest, RequestStatus
from lps_server.core.errors import ConfigurationError, QueueUnavailableError
from lps_server.queue.base import (
    CHANNEL_MAX_ENTRIES,
    ChannelEntry,
    ChannelFollower,
    EndedResults,
    Lease,
    QueueStats,
    SubmitOutcome,
    SweepResult,
    in_progress,
)
from lps_server.queue.codec import (
    decode_queued,
    decode_result,
    encode_result,
)
from lps_server.queue.redis_batch_jobs import RedisBatchJobs
from lps_server.queue.redis_calls import (
    BLOCKING_CONNECTIONS,
    BLOCKING_TIMEOUT_S,
    MAX_BLOCK_S,
    MIN_BLOCK_S,
    RedisCalls,
    open_client,
)
from lps_server.queue.redis_channels import ChannelReader, read_now
from lps_server.queue.redis_keys import ENDED_STATUSES, QueueKeys
from lps_server.queue.redis_pools import blocking_twin
from lps_server.queue.redis_replies import lease_of, submit_args, submit_outcome, sweep_of
from lps_server.queue.redis_scripts import QueueScripts
from lps_server.queue.replies import Deliver, LocalReplies

log = logging.getLogger(__name__)
# Each lease takes at most this many expired requests besides its items; the caller ends them.
LEASE_MAX_EXPIRED = 256
SWEEP_BATCH = 1000


class RedisQueue:
    """A QueueBackend in Redis, shared by every replica using the same prefix.

    Args:
        client: a redis.asyncio client (binary responses; `from_settings` builds one).
        prefix: the key prefix and Cluster hash tag of this queue.
        lease_seconds: how long a lease lasts without `extend` before a sweep reclaims it.
        max_size: most queued requests.
        max_bytes: most bytes of queued requests (`request_bytes`).
        priority_aging_s: how far ahead of older work one priority step puts a request.
        retention_s: how long ended results and idle channels are kept.
        reply_ttl_s: how long a streaming call's reply channel outlives its last result.
        blocking_client: the client for blocking reads (by default a twin of `client`).
    """

    name = "redis"

    def __init__(
        self,
        *,
        client: Redis,
        prefix: str = "lps",
        lease_seconds: float = 30.0,
        max_size: int = 100_000,
        max_bytes: int = 1 << 30,
        priority_aging_s: float = 30.0,
        retention_s: float = 86_400.0,
        reply_ttl_s: float = 300.0,
        blocking_client: Redis | None = None,
    ) -> None:
        self.max_size = max_size
        self._client = client
        self._blocking = blocking_client or blocking_twin(
            client, max_connections=BLOCKING_CONNECTIONS, socket_timeout=BLOCKING_TIMEOUT_S
        )
        self._keys = QueueKeys(prefix)
        self._scripts = QueueScripts.register(client)
        self._lease_s = lease_seconds
        self._max_bytes = max_bytes
        self._aging = priority_aging_s
        self._retention_ms = max(1, round(retention_s * 1000))
        self._retention_s = retention_s
        self._reply_ttl_ms = max(1, round(reply_ttl_s * 1000))
        self._redis = RedisCalls(client)
        self._call = self._redis.call
        self._unavailable = self._redis.guard
        self._replies = LocalReplies()
        self._batch_jobs = RedisBatchJobs(
            client=client, keys=self._keys, call=self._call, retention_s=retention_s
        )
        self._channels = ChannelReader(
            blocking=self._blocking, commands=client, keys=self._keys, guard=self._unavailable
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisQueue:
        """A queue on LPS_REDIS_URL under LPS_REDIS_PREFIX, sized and timed by the settings.

        Raises:
            ConfigurationError: the URL or the prefix is invalid.
        """
        try:
            keys = QueueKeys(settings.redis_prefix)
        except ValueError as exc:
            raise ConfigurationError(f"LPS_REDIS_PREFIX is invalid: {exc}") from None
        try:
            client = open_client(settings.redis_url, max_connections=settings.redis_max_connections)
        except ValueError as exc:
            raise ConfigurationError(f"LPS_REDIS_URL is invalid: {exc}") from None
        return cls(
            client=client,
            prefix=keys.prefix,
            lease_seconds=settings.queue_lease_seconds,
            max_size=settings.queue_max_size,
            max_bytes=settings.queue_max_bytes,
            priority_aging_s=settings.queue_priority_aging_seconds,
            retention_s=settings.result_retention_seconds,
            reply_ttl_s=settings.reply_channel_ttl_seconds,
        )

    async def _run(self, script: Any, args: Sequence[Any]) -> Any:
        prefixed = [*self._keys.script_prefixes(), *args]
        return await self._call(lambda: script(keys=self._keys.script_keys(), args=prefixed))

    async def submit(self, requests: Sequence[QueuedRequest]) -> list[SubmitOutcome]:
        """Enqueue new requests in one script call; known ids return their status (or a conflict
        when their payload digest differs), overflow is rejected (only the requests that do not
        fit)."""
        if not requests:
            return []
        args: list[Any] = [self.max_size, self._max_bytes]
        for q in requests:
            args += submit_args(q, aging_s=self._aging)
        replies = await self._run(self._scripts.submit, args)
        limit = f"{self.max_size} requests or {self._max_bytes} bytes"
        return [
            submit_outcome(q.request_id, r.decode(), limit=limit)
            for q, r in zip(requests, replies, strict=True)
        ]

    async def lease(
        self,
        *,
        now: float,
        group: str | None = None,
        max_items: int = 1,
        token: str = "",
        exclude: Collection[ProviderName] = (),
    ) -> Lease:
        """Take the head and more of its group (or only `group`), up to the group's limit, under
        a fenced token; expired and unreadable requests met on the way come back apart."""
        token = token or uuid.uuid4().hex
        among = [p.value for p in ProviderName if p not in exclude] if exclude else []
        if exclude and not among and group is None:
            return Lease(token=token)
        args = [
            token,
            repr(now + self._lease_s),
            repr(now),
            group or "",
            max_items,
            LEASE_MAX_EXPIRED,
            *among,
        ]
        return lease_of(await self._run(self._scripts.lease, args), token=token)

    async def wait_for_work(self, timeout: float) -> None:
        """Block on the wake list until a submit, release or reclaim pushes a token, or timeout.

        On a Redis failure it returns at once: the caller's next lease() reports the failure.
        """
        if self._redis.closed or timeout <= 0:
            return
        # Redis reads a BLPOP timeout below 1 ms as 0, which means "block forever".
        block_s = min(max(timeout, MIN_BLOCK_S), MAX_BLOCK_S)
        try:
            with self._unavailable():
                await self._blocking.blpop([self._keys.wake], timeout=block_s)
        except QueueUnavailableError:
            return

    async def extend(
        self, request_ids: Sequence[str], *, token: str, now: float, calling: bool = False
    ) -> list[str]:
        """Push the lease deadline of the requests held under `token` to `now` + lease_seconds
        (with `calling`, mark them as called); return the ids no longer held under it."""
        if not request_ids:
            return []
        args = [token, repr(now + self._lease_s), "1" if calling else "", *request_ids]
        return [rid.decode() for rid in await self._run(self._scripts.extend, args)]

    async def release(
        self, request_ids: Sequence[str], *, token: str, retry_at: float | None = None
    ) -> None:
        """Requeue the requests held under `token` at their original position (with `retry_at`,
        not before that time)."""
        if request_ids:
            due = "" if retry_at is None else repr(retry_at)
            await self._run(self._scripts.release, [token, due, *request_ids])

    async def complete(
        self, done: Sequence[tuple[QueuedRequest, ComparisonResult]], *, token: str = ""
    ) -> list[bool]:
        """Store and publish each result once, in one script call; True where the stored result
        is this holder's (stored now, or by an earlier call whose reply was lost)."""
        if not done:
            return []
        args: list[Any] = [token, self._retention_ms, CHANNEL_MAX_ENTRIES, self._reply_ttl_ms]
        for queued, result in done:
            if not result.status.is_final:
                raise ValueError(f"complete() needs a final status, got {result.status.value}")
            channel, reply_to = queued.request.result_channel, queued.reply_to
            args += [
                queued.request_id,
                result.status.value,
                encode_result(result),
                repr(result.completed_at),
                channel,
                "" if reply_to == channel or self._replies.reader(reply_to) else reply_to,
            ]
        replies = [int(r) for r in await self._run(self._scripts.complete, args)]
        if again := replies.count(2):
            log.warning(
                "%d of %d results had been stored by an earlier attempt whose reply was lost; "
                "they are delivered now",
                again,
                len(done),
            )
        firsts = [r > 0 for r in replies]
        self._replies.deliver(done, firsts)
        return firsts

    def reply_here(self, channel: str, deliver: Deliver) -> AbstractContextManager[None]:
        """Results this replica stores for `channel` go to `deliver` instead of onto the channel
        while open; other replicas still publish theirs on it."""
        return self._replies.open(channel, deliver)

    async def get(self, request_id: str) -> ComparisonResult | None:
        """The stored result, or a status-only result while the request is not done."""
        key = self._keys.request(request_id)
        fields: list[Any] = await self._call(
            lambda: self._client.hmget(key, ["status", "result", "payload"])
        )
        status, result, payload = fields
        if status is None:
            return None
        if result is not None:
            return decode_result(result)
        return in_progress(decode_queued(payload), RequestStatus(status.decode()))

    async def ended_results(self, request_ids: Sequence[str]) -> EndedResults:
        """The stored results of those of `request_ids` that have ended, and the ids Redis does
        not know at all (no request hash), in one pipelined call."""
        if not request_ids:
            return EndedResults()

        async def results() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                for rid in request_ids:
                    pipe.hmget(self._keys.request(rid), ["status", "result"])
                replies: list[Any] = await pipe.execute()
                return replies

        stored = await self._call(results)
        found: dict[str, ComparisonResult] = {}
        unknown = set()
        for rid, (status, raw) in zip(request_ids, stored, strict=True):
            if status is None:
                unknown.add(rid)
            if raw is None:
                continue
            try:
                found[rid] = decode_result(raw)
            except Exception as exc:  # a newer release's result must not hide the others
                log.error("the stored result of %s is not one this release reads: %r", rid, exc)
        return EndedResults(found, frozenset(unknown))

    def follow(self, channel: str, *, cursor: str) -> AbstractContextManager[ChannelFollower]:
        """A follower of `channel` after `cursor`, read by this replica's one channel reader.

        Raises:
            QueueUnavailableError: the queue is closed.
        """
        return self._channels.follow(channel, cursor)

    async def read_channel(
        self, channel: str, *, cursor: str, timeout: float
    ) -> list[ChannelEntry]:
        """Entries after `cursor` (a stream entry id; anything else reads from the oldest);
        waits up to `timeout` for the first when there are none (through the channel reader,
        so a waiting read holds no connection of its own)."""
        if timeout > 0:
            with self.follow(channel, cursor=cursor) as follower:
                return await follower.read(timeout)
        return await self._call(lambda: read_now(self._client, self._keys.channel(channel), cursor))

    async def sweep(self, *, now: float) -> SweepResult:
        """Requeue lapsed leases at their original position, take expired queued requests out
        (the caller ends them), and forget end-state counts past retention."""
        token = uuid.uuid4().hex
        args = [
            repr(now),
            repr(now + self._lease_s),
            repr(now - self._retention_s),
            SWEEP_BATCH,
            token,
        ]
        return sweep_of(await self._run(self._scripts.sweep, args), token=token)

    async def stats(self, *, now: float) -> QueueStats:
        """Depth by status and the oldest queued age, in one round trip."""
        keys = self._keys

        async def counts() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.zcard(keys.pending)
                pipe.zcard(keys.delayed)
                pipe.zcard(keys.leases)
                for status in ENDED_STATUSES:
                    pipe.zcard(keys.ended(status))
                pipe.zrange(keys.enqueued, 0, 0, withscores=True)
                pipe.hget(self._batch_jobs.keys.meta, "requests")  # held by batch jobs
                replies: list[Any] = await pipe.execute()
                return replies

        replies = await self._call(counts)
        waiting, delayed, processing, completed, failed, expired, oldest = replies[:7]
        processing += int(replies[7] or 0)
        queued = waiting + delayed
        oldest_at = oldest[0][1] if oldest else now
        return QueueStats(
            queued=queued,
            processing=processing,
            completed=completed,
            failed=failed,
            expired=expired,
            oldest_queued_age_s=max(0.0, now - oldest_at),
        )

    def batch_jobs(self) -> RedisBatchJobs:
        """The batch jobs kept beside this queue."""
        return self._batch_jobs

    async def ping(self) -> None:
        """Raise QueueUnavailableError when Redis does not answer."""
        await self._call(self._client.ping)

    async def close(self) -> None:
        """Close both connection pools; blocked reads end with them, later calls raise
        QueueUnavailableError."""
        self._redis.close()
        await self._channels.close()
        await self._blocking.aclose()
        await self._redis.finished()  # calls already past their check end first
        await self._client.aclose()
        await self._blocking.aclose()  # again, for a blocking call that reconnected meanwhile
