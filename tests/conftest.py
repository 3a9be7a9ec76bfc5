"""Shared fixtures: a private redis-server per session, fresh registries, LPS on port 0."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from cj_client import LpsClient
from lps_server.app import LpsApp
from lps_server.core.config import Settings
from lps_server.providers import ProviderRegistry
from lps_server.queue.base import QueueBackend
from tests.bundling_support import BACKENDS, SERIAL, AppFactory, RecordingProvider
from tests.queue_support import QueueFactory, build_queue
from tests.redis_server import RedisProcess


@pytest.fixture(scope="session")
def redis_proc() -> Iterator[RedisProcess]:
    """A private redis-server for the whole test session."""
    proc = RedisProcess()
    proc.start()
    yield proc
    proc.close()


@pytest.fixture
def killable_redis() -> Iterator[RedisProcess]:
    """A private redis-server of one test, which it may freeze, kill and restart; with an
    fsync-always AOF, so a restart keeps what Redis acknowledged."""
    proc = RedisProcess(appendonly=True)
    proc.start()
    yield proc
    proc.close()


@pytest.fixture
async def redis_url(redis_proc: RedisProcess) -> AsyncIterator[str]:
    """The private server's URL, flushed before each test."""
    client = aioredis.from_url(redis_proc.url)
    await client.flushall()
    await client.aclose()
    return redis_proc.url


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh Prometheus registry."""
    return CollectorRegistry()


@pytest.fixture
async def start_lps(
    registry: CollectorRegistry,
) -> AsyncIterator[Callable[..., Awaitable[LpsApp]]]:
    """A factory of started in-process LPS apps on port 0; each is stopped after the test."""
    apps: list[LpsApp] = []

    async def start(
        *,
        tracer_provider: Any = None,
        serve_metrics: bool = False,
        queue: QueueBackend | None = None,
        **settings: Any,
    ) -> LpsApp:
        base: dict[str, Any] = {
            "grpc_host": "127.0.0.1",
            "grpc_port": 0,
            "metrics_host": "127.0.0.1",
            "metrics_port": 0,
        }
        base.update(settings)
        app = LpsApp(
            Settings.from_env({}, **base),
            registry=registry if not apps else None,
            tracer_provider=tracer_provider,
            queue=queue,
        )
        await app.start(serve_metrics=serve_metrics)
        apps.append(app)
        return app

    yield start
    for app in apps:
        await app.stop(grace=5)


@pytest.fixture
async def lps(start_lps: Callable[..., Awaitable[LpsApp]]) -> LpsApp:
    """One started LPS with defaults (local queue, per-request mode, mock provider)."""
    return await start_lps()


@pytest.fixture
async def client(lps: LpsApp) -> AsyncIterator[LpsClient]:
    """A client connected to `lps`."""
    async with LpsClient(target=f"127.0.0.1:{lps.grpc_port}", timeout=10) as c:
        yield c


# Serial-bundle tests (tests/test_bundling.py, tests/test_bundle_processing.py) share these.
@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings selecting the queue backend (a flushed private Redis for `redis`)."""
    if request.param == "redis":
        return {"queue_backend": "redis", "redis_url": request.getfixturevalue("redis_url")}
    return {"queue_backend": "local"}


@pytest.fixture
async def make_app(backend: dict[str, Any]) -> AsyncIterator[AppFactory]:
    """Build LPS apps with the given providers (serial-bundle mode unless told otherwise); with
    `start=False` requests can be queued before processing begins. All are stopped afterwards."""
    apps: list[LpsApp] = []

    async def make(
        *providers: RecordingProvider,
        start: bool = True,
        clock: Callable[[], float] = time.time,
        **settings: Any,
    ) -> LpsApp:
        values: dict[str, Any] = {
            "grpc_host": "127.0.0.1",
            "grpc_port": 0,
            "metrics_port": 0,
            "queue_processing_mode": SERIAL,
            "retry_backoff_ms": 1,
            # Only the sweep at start-up: expiry in these tests is found when dequeued.
            "queue_sweep_interval_seconds": 3600.0,
            **backend,
            **settings,
        }
        registry = ProviderRegistry(list(providers) or [RecordingProvider()])
        app = LpsApp(Settings.from_env({}, **values), providers=registry, clock=clock)
        apps.append(app)
        if start:
            await app.start(serve_metrics=False)
        return app

    yield make
    for app in apps:
        await app.stop(grace=5)


@pytest.fixture(params=["local", "redis"])
async def make_queue(request: pytest.FixtureRequest) -> AsyncIterator[QueueFactory]:
    """Builds queues of one backend (closed after the test); Redis is flushed first."""
    built: list[QueueBackend] = []
    url = ""
    if request.param == "redis":
        url = request.getfixturevalue("redis_proc").url
        with redis.Redis.from_url(url) as sync_client:
            sync_client.flushall()

    def build(**settings: Any) -> QueueBackend:
        queue = build_queue(request.param, url, **settings)
        built.append(queue)
        return queue

    yield build
    for queue in built:
        await queue.close()


@pytest.fixture
def queue(make_queue: QueueFactory) -> QueueBackend:
    """A queue of each backend with default settings."""
    return make_queue()
