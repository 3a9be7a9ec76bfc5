"""The Redis queue backend: durable, prioritised, expiring, shared by many replicas.

The data model is in `redis_keys`, every state change is one Lua script in `redis_scripts`; this
module encodes arguments, decodes replies, turns every Redis failure into `QueueUnavailableError` in
one place (`_unavailable`), and tries a call once more after a dead connection (`_call`). See
docs/queue.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    MaxConnectionsError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from lps_server.core.config import Settings
from lps_server.core.domain import ComparisonResult, ProviderName, QueuedRequest, RequestStatus
from lps_server.core.errors import ConfigurationError, QueueBusyError, QueueUnavailableError
from lps_server.queue.base import (
    CHANNEL_MAX_ENTRIES,
    RETRY_AFTER_FULL_S,
    ChannelEntry,
    ChannelFollower,
    EndedResults,
    Lease,
    QueueStats,
    SubmitOutcome,
    SweepResult,
    UnreadableRequest,
    conflicting,
    in_progress,
)
from lps_server.queue.codec import (
    decode_queued,
    decode_result,
    encode_queued,
    encode_result,
    unreadable,
)
from lps_server.queue.ordering import queue_score, request_bytes
from lps_server.queue.payload_digest import payload_digest
from lps_server.queue.redis_batch_jobs import RedisBatchJobs
from lps_server.queue.redis_channels import ChannelReader, read_now
from lps_server.queue.redis_keys import ENDED_STATUSES, QueueKeys
from lps_server.queue.redis_pools import BoundedPool, blocking_twin
from lps_server.queue.redis_scripts import QueueScripts
from lps_server.queue.replies import Deliver, LocalReplies

log = logging.getLogger(__name__)
T = TypeVar("T")
# Short timeouts make calls fail fast (gRPC UNAVAILABLE) while Redis is down, instead of hanging
# the RPCs that wait on them. Scripts do bounded work, so 2 s is far above a healthy call.
CONNECT_TIMEOUT_S = 1.0
COMMAND_TIMEOUT_S = 2.0
# Blocking reads (BLPOP, XREAD BLOCK) run on their own connections, whose read timeout must outlast
# the longest block we ask Redis for.
MAX_BLOCK_S = 10.0
MIN_BLOCK_S = 0.01
BLOCKING_TIMEOUT_S = MAX_BLOCK_S + COMMAND_TIMEOUT_S
# Blocking calls of one replica: the dispatcher's BLPOP and the channel reader's XREAD, and spares.
BLOCKING_CONNECTIONS = 4
# close() waits at most this long for calls in progress.
CLOSE_WAIT_S = COMMAND_TIMEOUT_S
# Each lease takes at most this many expired requests besides its items; the caller ends them.
LEASE_MAX_EXPIRED = 256
SWEEP_BATCH = 1000
# Errors Redis answers with while it cannot serve writes (loading, out of memory, read-only
# replica, failing cluster), or cannot serve this queue at all (LPS_REDIS_URL names a database
# the server does not have): for a client these mean "unavailable", not "bad request", and never
# a bare INTERNAL. redis-py turns some of these replies into their own classes and drops the
# code from the message ("OOM command not allowed..." becomes OutOfMemoryError("command not
# allowed...")), so both the classes and the messages are matched.
_UNAVAILABLE_ERRORS = (OutOfMemoryError, ReadOnlyError, ClusterDownError)
_UNAVAILABLE_REPLIES = (
    "LOADING",
    "OOM",
    "READONLY",
    "MISCONF",
    "MASTERDOWN",
    "CLUSTERDOWN",
    "DB index is out of range",
)


def _retry() -> Retry:
    # No retries inside redis-py: a call fails at once and the caller decides. The one retry we
    # do, after a connection turned out dead, is `RedisQueue._call`'s, where it can be logged.
    return Retry(NoBackoff(), 0)


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
        self._closed = False
        self._calls = 0  # calls between their `_closed` check and their end
        self._idle = asyncio.Event()
        self._idle.set()
        self._replies = LocalReplies()
        self._batch_jobs = RedisBatchJobs(
            client=client, keys=self._keys, call=self._call, retention_s=retention_s
        )
        kwargs = client.connection_pool.connection_kwargs
        self._address = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
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
            pool = BoundedPool.from_url(
                settings.redis_url,
                max_connections=settings.redis_max_connections,
                # CLIENT LIST then says which replica holds which connections.
                client_name=f"lps:{socket.gethostname()}:{os.getpid()}",
                socket_connect_timeout=CONNECT_TIMEOUT_S,
                socket_timeout=COMMAND_TIMEOUT_S,
                retry=_retry(),
            )
            client = Redis.from_pool(pool)
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

    @contextmanager
    def _unavailable(self) -> Iterator[None]:
        """Translate Redis failures into QueueUnavailableError naming the server and cause."""
        if self._closed:
            # redis-py would quietly reconnect a closed client; a closed queue serves nothing.
            raise QueueUnavailableError(f"redis queue at {self._address} is closed")
        self._calls += 1
        self._idle.clear()
        try:
            yield
        except MaxConnectionsError as exc:
            pool = "LPS_REDIS_MAX_CONNECTIONS"
            raise QueueBusyError(
                f"redis connection pool of this replica is full ({exc}; {pool}); Redis at "
                f"{self._address} may be fine: the replica is overloaded, retry shortly"
            ) from exc
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise QueueUnavailableError(f"redis at {self._address} unreachable: {exc}") from exc
        except ResponseError as exc:
            if isinstance(exc, _UNAVAILABLE_ERRORS) or str(exc).startswith(_UNAVAILABLE_REPLIES):
                raise QueueUnavailableError(
                    f"redis at {self._address} cannot serve the queue: {exc}"
                ) from exc
            raise
        finally:
            self._calls -= 1
            if not self._calls:
                self._idle.set()

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis operation; a dead connection is replaced and the operation tried once
        more.

        After Redis restarts, every connection in the pool is dead, and the first command sent on
        one fails although Redis is up again. So on a connection error the pool's idle
        connections are dropped (they are all as old as the one that failed) and the operation
        runs again on a fresh connection. That is safe because every script is fenced and
        idempotent: one that did run before its reply was lost answers the same again (a lease
        whose reply was lost is the exception: its requests lapse and are reclaimed, docs/queue.md).
        A timeout is not retried: the server may be stalled, not gone.
        """
        try:
            with self._unavailable():
                return await operation()
        except QueueUnavailableError as exc:
            # A full pool is no dead connection: dropping idle connections would not help it.
            if (
                self._closed
                or isinstance(exc, QueueBusyError)
                or not isinstance(exc.__cause__, RedisConnectionError)
            ):
                raise
            log.info("redis connection failed (%s); retrying once on a new one", exc.__cause__)
        with self._unavailable():
            await self._client.connection_pool.disconnect(inuse_connections=False)
            return await operation()

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
            args += [
                q.request_id,
                encode_queued(q),
                repr(queue_score(q, aging_s=self._aging)),
                q.group,
                "" if q.deadline is None else repr(q.deadline),
                request_bytes(q),
                repr(q.enqueued_at),
                q.route.provider.value,
                payload_digest(q.request),
            ]
        replies = await self._run(self._scripts.submit, args)
        return [
            self._outcome(q.request_id, r.decode()) for q, r in zip(requests, replies, strict=True)
        ]

    def _outcome(self, request_id: str, reply: str) -> SubmitOutcome:
        if reply == "new":
            return SubmitOutcome(request_id, RequestStatus.QUEUED, created=True)
        if reply == "conflict":
            return conflicting(request_id)
        if reply != "full":
            return SubmitOutcome(request_id, RequestStatus(reply), created=False)
        limit = f"{self.max_size} requests or {self._max_bytes} bytes"
        return SubmitOutcome(
            request_id,
            None,
            created=False,
            rejected=f"queue is full ({limit}); retry later",
            retry_after=RETRY_AFTER_FULL_S,
        )

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
        reply = await self._run(self._scripts.lease, args)
        due = float(reply[2]) if reply[2] else None
        leased_group = reply[0].decode()
        if not leased_group:
            return Lease(token=token, next_retry_at=due)
        count = int(reply[1])
        lease = Lease(group=leased_group, token=token, next_retry_at=due)
        for index in range(3, len(reply), 3):
            rid, attempts = reply[index].decode(), int(reply[index + 1])
            queued = _decode_leased(rid, reply[index + 2], lease.unreadable)
            if queued is None:
                continue
            (lease.items if (index - 3) // 3 < count else lease.expired).append(queued)
            if attempts:
                lease.attempts[rid] = attempts
        return lease

    async def wait_for_work(self, timeout: float) -> None:
        """Block on the wake list until a submit, release or reclaim pushes a token, or timeout.

        On a Redis failure it returns at once: the caller's next lease() reports the failure.
        """
        if self._closed or timeout <= 0:
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
        reply = await self._run(self._scripts.sweep, args)
        found = SweepResult(reclaimed=int(reply[0]), token=token)
        for index in range(1, len(reply), 2):
            queued = _decode_leased(reply[index].decode(), reply[index + 1], found.unreadable)
            if queued is not None:
                found.expired.append(queued)
        return found

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
        self._closed = True
        await self._channels.close()
        await self._blocking.aclose()
        # Calls already past their check (a cancelled task's last command, say) finish first: one
        # still waiting for a connection would otherwise open it in a closed pool and leave it open.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), CLOSE_WAIT_S)
        await self._client.aclose()
        await self._blocking.aclose()  # again, for a blocking call that reconnected meanwhile


def _decode_leased(
    request_id: str, payload: bytes, unreadable_out: list[UnreadableRequest]
) -> QueuedRequest | None:
    """The leased request stored as `payload`, or None after noting why it cannot be read.

    Any failure counts: a payload corrupted in Redis or written by a newer release must end that
    one request, never the caller's loop.
    """
    try:
        queued = decode_queued(payload)
    except Exception as exc:
        unreadable_out.append(unreadable(request_id, payload, exc))
        return None
    if queued.request_id != request_id:
        mismatch = ValueError(f"the payload is request {queued.request_id[:60]!r}'s")
        unreadable_out.append(unreadable(request_id, payload, mismatch))
        return None
    return queued
