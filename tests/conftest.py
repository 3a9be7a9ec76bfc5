"""Shared fixtures: a private redis-server per session, fresh metrics registries, a server on port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from tests.redis_server import RedisProcess


@pytest.fixture(scope="session")
def redis_proc() -> Iterator[RedisProcess]:
    """A private redis-server for the whole test session."""
    proc = RedisProcess()
    proc.start()
    yield proc
    proc.close()


@pytest.fixture
async def redis_url(redis_proc: RedisProcess) -> AsyncIterator[str]:
    """The private server's URL, flushed before each test."""
    client = aioredis.from_url(redis_proc.url)
    await client.flushall()
    await client.aclose()
    yield redis_proc.url


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh Prometheus registry."""
    return CollectorRegistry()
