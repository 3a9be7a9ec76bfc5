"""Rate budgets of provider calls: in process (`local`) or shared by replicas in Redis."""

from __future__ import annotations

from lps_server.budgets.base import BudgetStore
from lps_server.budgets.local import LocalBudgetStore
from lps_server.core.config import Settings
from lps_server.core.errors import ConfigurationError

# The queue's timeouts: a budget call fails fast while Redis is down, and dispatch waits.
CONNECT_TIMEOUT_S = 1.0
COMMAND_TIMEOUT_S = 2.0


def make_budget_store(settings: Settings) -> BudgetStore:
    """Budgets where the queue is: in Redis (under the queue's prefix) with the Redis backend,
    else in this process.

    Raises:
        ConfigurationError: the Redis URL or prefix is invalid.
    """
    if settings.queue_backend != "redis":
        return LocalBudgetStore()
    from redis.asyncio import Redis  # redis is only needed here

    from lps_server.budgets.redis_store import RedisBudgetStore

    try:
        client = Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=COMMAND_TIMEOUT_S,
        )
        return RedisBudgetStore(client=client, prefix=settings.redis_prefix)
    except ValueError as exc:
        raise ConfigurationError(f"LPS_REDIS_URL or LPS_REDIS_PREFIX is invalid: {exc}") from None


__all__ = ["BudgetStore", "LocalBudgetStore", "make_budget_store"]
