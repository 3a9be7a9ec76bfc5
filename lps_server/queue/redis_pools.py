"""Bounded Redis connection pools: a replica opens at most a set number of connections.

A call that finds every connection busy waits for one, up to `POOL_WAIT_S`, rather than failing
at once (redis-py's default pool) or opening one more connection without limit. When the wait runs
out it raises `PoolFullError`, which the queue reports as a full pool: Redis itself may be fine.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError

# Shorter than the command timeout, so that a call stuck behind busy connections is told the pool
# is full rather than timing out on a connection it got at the last moment.
POOL_WAIT_S = 1.0


class PoolFullError(MaxConnectionsError):
    """Every connection of a bounded pool stayed busy for the whole wait."""


class BoundedPool(BlockingConnectionPool):
    """A pool of at most `max_connections`; callers wait up to `timeout` seconds for one."""

    def __init__(self, *, max_connections: int, timeout: float = POOL_WAIT_S, **kwargs: Any):
        super().__init__(max_connections=max_connections, timeout=timeout, **kwargs)

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        """A connection, waiting for one while all are busy.

        Raises:
            PoolFullError: none became free within the wait.
        """
        try:
            return await super().get_connection()  # type: ignore[no-untyped-call]
        except RedisConnectionError as exc:
            # The blocking pool says "No connection available." when its wait times out; any
            # other connection error (connect refused, say) is Redis's and goes on as it is.
            if isinstance(exc.__cause__, TimeoutError) and not isinstance(exc, PoolFullError):
                raise PoolFullError(
                    f"all {self.max_connections} connections busy for {self.timeout:g} s"
                ) from exc
            raise


def blocking_twin(client: Redis, *, max_connections: int, socket_timeout: float) -> Redis:
    """A client to the same server for blocking calls, whose read timeout outlasts them."""
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "socket_timeout": socket_timeout}
    # from_pool: the client owns the pool, so closing the client closes its connections.
    return Redis.from_pool(
        BoundedPool(
            max_connections=max_connections, connection_class=pool.connection_class, **kwargs
        )
    )
