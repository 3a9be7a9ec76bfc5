"""Calls to Redis from the queue: one place where every Redis failure becomes
`QueueUnavailableError` (or `QueueBusyError`) naming the server and the cause, the one retry after
a dead connection, and the connection pool the queue's client is built on. See docs/queue.md,
"When Redis is down".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

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

from lps_server.core.errors import QueueBusyError, QueueUnavailableError
from lps_server.queue.redis_pools import BoundedPool

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
    # do, after a connection turned out dead, is `RedisCalls.call`'s, where it can be logged.
    return Retry(NoBackoff(), 0)


def open_client(url: str, *, max_connections: int) -> Redis:
    """A client on `url` with a bounded pool, short timeouts and no retries of its own.

    Raises:
        ValueError: the URL is invalid.
    """
    pool = BoundedPool.from_url(
        url,
        max_connections=max_connections,
        # CLIENT LIST then says which replica holds which connections.
        client_name=f"lps:{socket.gethostname()}:{os.getpid()}",
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=COMMAND_TIMEOUT_S,
        retry=_retry(),
    )
    return Redis.from_pool(pool)


class RedisCalls:
    """Runs the queue's Redis operations on `client`, translating their failures.

    Args:
        client: the queue's command client.
    """

    def __init__(self, client: Redis) -> None:
        self._client = client
        self.closed = False
        self._calls = 0  # calls between their `closed` check and their end
        self._idle = asyncio.Event()
        self._idle.set()
        kwargs = client.connection_pool.connection_kwargs
        self.address = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"

    def close(self) -> None:
        """Refuse every call from now on."""
        self.closed = True

    async def finished(self) -> None:
        """Wait (at most CLOSE_WAIT_S) for the calls already past their check (a cancelled
        task's last command, say): one still waiting for a connection would otherwise open it in
        a closed pool and leave it open."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), CLOSE_WAIT_S)

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Translate Redis failures into QueueUnavailableError naming the server and cause."""
        if self.closed:
            # redis-py would quietly reconnect a closed client; a closed queue serves nothing.
            raise QueueUnavailableError(f"redis queue at {self.address} is closed")
        self._calls += 1
        self._idle.clear()
        try:
            yield
        except MaxConnectionsError as exc:
            pool = "LPS_REDIS_MAX_CONNECTIONS"
            raise QueueBusyError(
                f"redis connection pool of this replica is full ({exc}; {pool}); Redis at "
                f"{self.address} may be fine: the replica is overloaded, retry shortly"
            ) from exc
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise QueueUnavailableError(f"redis at {self.address} unreachable: {exc}") from exc
        except ResponseError as exc:
            if isinstance(exc, _UNAVAILABLE_ERRORS) or str(exc).startswith(_UNAVAILABLE_REPLIES):
                raise QueueUnavailableError(
                    f"redis at {self.address} cannot serve the queue: {exc}"
                ) from exc
            raise
        finally:
            self._calls -= 1
            if not self._calls:
                self._idle.set()

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
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
            with self.guard():
                return await operation()
        except QueueUnavailableError as exc:
            # A full pool is no dead connection: dropping idle connections would not help it.
            if (
                self.closed
                or isinstance(exc, QueueBusyError)
                or not isinstance(exc.__cause__, RedisConnectionError)
            ):
                raise
            log.info("redis connection failed (%s); retrying once on a new one", exc.__cause__)
        with self.guard():
            await self._client.connection_pool.disconnect(inuse_connections=False)
            return await operation()
