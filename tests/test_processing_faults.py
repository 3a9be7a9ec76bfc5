"""Processing under faults, in process: retries that hold nothing, Retry-After capped, loops that
restart, health that follows the queue, and results whose storing had no answer.

Real parts throughout: LPS apps on port 0, the local queue or a private redis-server, the mock
provider behind a recorder; the only fault injector is a proxy that loses one Redis reply.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from cj_client import ComparisonSubmission
from cj_client.transport import submission_to_pb
from lps_server.app import LpsApp
from lps_server.core.config import Settings
from lps_server.core.domain import ErrorCode, ProcessingMode, ProviderName
from lps_server.edge.convert import request_from_pb
from lps_server.observability.metrics import LpsMetrics
from lps_server.processing.intake import Intake
from lps_server.processing.processor import Processor
from lps_server.processing.retries import BACKOFF_CAP_S, retry_delay
from lps_server.providers import ProviderRegistry
from lps_server.providers.base import ItemFailure
from lps_server.queue.base import Lease
from lps_server.queue.local import LocalQueue
from lps_server.queue.redis_queue import RedisQueue
from tests.bundling_support import (
    AppFactory,
    RecordingProvider,
    client_of,
    enqueue,
    follow,
    submit_and_collect,
    subs_of,
)
from tests.helpers import metric
from tests.queue_support import redis_settings
from tests.redis_proxy import ReplyDroppingProxy
from tests.redis_server import RedisProcess
from tests.test_redis_recovery import complete_sha

SERVICE = "lps.v1.LlmProviderService"


# --- retries ----------------------------------------------------------------------------------


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    rng = random.Random(7)
    kw: dict[str, Any] = {"base_s": 0.5, "hint_cap_s": 300.0, "rng": rng}
    assert retry_delay(1, [86_400.0], **kw) == 300.0, "a day is cut to the cap"
    assert retry_delay(1, [12.0, 3.0], **kw) == 12.0, "the longest hint below the cap"
    delays = [retry_delay(attempt, [], **kw) for attempt in range(1, 40)]
    assert all(0 <= d <= BACKOFF_CAP_S for d in delays)
    assert retry_delay(1, [5.0], **{**kw, "hint_cap_s": 0.0}) <= 0.5


async def test_a_day_long_retry_after_waits_only_the_cap(make_app: AppFactory) -> None:
    day = ItemFailure(ErrorCode.RATE_LIMITED, "429 come back tomorrow", retry_after=86_400.0)
    provider = RecordingProvider(fail={"r0": [day]})
    app = await make_app(provider, retry_after_max_seconds=0.3, retry_backoff_ms=1)
    started = time.monotonic()
    async with client_of(app) as client:
        results = await submit_and_collect(client, subs_of(["r0"]))
    assert results["r0"].status == "completed"
    assert provider.calls == [["r0"], ["r0"]]
    assert time.monotonic() - started >= 0.3, "the hint is honoured up to the cap"


async def test_an_item_waiting_for_its_retry_holds_no_call_slot(make_app: AppFactory) -> None:
    later = ItemFailure(ErrorCode.RATE_LIMITED, "429 slow down", retry_after=0.5)
    provider = RecordingProvider(fail={"x": [later]})
    app = await make_app(
        provider,
        start=False,
        queue_processing_mode=ProcessingMode.PER_REQUEST,
        max_concurrent_calls=1,
    )
    await enqueue(app, subs_of(["x", "y", "z"], "c"))
    await app.start(serve_metrics=False)
    async with client_of(app) as client:
        results = await follow(client, "c", 3)
    assert {r.status for r in results.values()} == {"completed"}
    # With one call slot, y and z ran while x waited for its retry in the queue.
    assert provider.calls == [["x"], ["y"], ["z"], ["x"]]


# --- supervised loops and health --------------------------------------------------------------


async def submit_all(intake: Intake, subs: list[ComparisonSubmission]) -> None:
    """Queue `subs` as the gRPC edge would."""
    await intake.submit(
        [
            intake.prepare(request_from_pb(submission_to_pb(s), request_id=s.request_id))
            for s in subs
        ]
    )


async def read_ended(queue: LocalQueue, channel: str, n: int) -> list[str]:
    """The ids of the first `n` results published on `channel`, in order."""
    ended: list[str] = []
    cursor = ""
    while len(ended) < n:
        entries = await queue.read_channel(channel, cursor=cursor, timeout=5)
        ended += [e.result.request_id for e in entries]
        cursor = entries[-1].cursor if entries else cursor
    return ended


class HookedLeases:
    """A real LocalQueue whose every lease first awaits `before()`: one that raises fails the
    lease (as a bug in dispatch would), one that sleeps slows it (as a Redis a long way off)."""

    def __init__(self, inner: LocalQueue, before: Callable[[], Awaitable[None]]) -> None:
        self._inner = inner
        self._before = before

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def lease(self, **kwargs: Any) -> Lease:
        await self._before()
        return await self._inner.lease(**kwargs)


def failing_first(n: int) -> Callable[[], Awaitable[None]]:
    """A lease hook that raises the first `n` times."""
    left = [n]

    async def before() -> None:
        if left[0] > 0:
            left[0] -= 1
            raise RuntimeError("a bug in dispatch")

    return before


async def test_a_failing_dispatch_loop_is_restarted_and_health_follows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inner = LocalQueue()
    queue = HookedLeases(inner, failing_first(2))
    registry = CollectorRegistry()
    settings = Settings(queue_sweep_interval_seconds=3600.0)
    provider = RecordingProvider()
    health: list[bool] = []
    done = asyncio.Event()

    async def on_serving(serving: bool) -> None:
        health.append(serving)
        if serving:
            done.set()

    processor = Processor(
        queue=queue,  # type: ignore[arg-type]
        providers=ProviderRegistry([provider]),
        settings=settings,
        metrics=LpsMetrics(registry),
        on_serving=on_serving,
    )
    intake = Intake(queue=inner, providers=ProviderRegistry([provider]), settings=settings)
    subs = subs_of(["r0", "r1"], "c")
    await submit_all(intake, subs)
    running = asyncio.create_task(processor.run())
    try:
        async with asyncio.timeout(10):
            await done.wait()
            ended = await read_ended(inner, "c", 2)
    finally:
        processor.stop()
        await running
    assert health == [False, True], "NOT_SERVING while dispatch could not run, then SERVING"
    assert metric(registry, "llm_provider_processor_restarts_total", loop="dispatch") == 2
    assert metric(registry, "llm_provider_processor_restarts_total", loop="sweep") == 0
    assert "dispatch loop failed, restarting it" in caplog.text
    assert "RuntimeError: a bug in dispatch" in caplog.text
    assert sorted(ended) == sorted(k for call in provider.calls for k in call) == ["r0", "r1"]


async def watch_until(
    statuses: AsyncIterator[health_pb2.HealthCheckResponse], wanted: int, timeout: float
) -> None:
    async with asyncio.timeout(timeout):
        async for reply in statuses:
            if reply.status == wanted:
                return


async def test_room_that_opens_while_a_lease_is_on_its_way_is_not_missed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call ends while the dispatcher leases for the other providers (its own is full): the
    room it leaves wakes the dispatcher at once. The wake was once cleared as the wait began, and
    the work waited for the idle timeout (1 s a call in the rate-limit benchmark); the timeout is
    a minute here, so a lost wake cannot pass."""
    from lps_server.processing import processor as processor_module

    monkeypatch.setattr(processor_module, "IDLE_WAIT_S", 60.0)
    inner = LocalQueue()
    busy = RecordingProvider(latency_ms=20)  # a call ends well within one 200 ms lease
    idle = RecordingProvider(name=ProviderName.OPENAI_COMPATIBLE)
    providers = ProviderRegistry([busy, idle])
    settings = Settings(
        queue_sweep_interval_seconds=3600.0,
        max_concurrent_calls=1,
        queue_processing_mode=ProcessingMode.PER_REQUEST,
    )
    processor = Processor(
        queue=HookedLeases(inner, lambda: asyncio.sleep(0.2)),  # type: ignore[arg-type]
        providers=providers,
        settings=settings,
        metrics=LpsMetrics(CollectorRegistry()),
    )
    intake = Intake(queue=inner, providers=providers, settings=settings)
    subs = subs_of(["r0", "r1", "r2"], "c")
    await submit_all(intake, subs)
    running = asyncio.create_task(processor.run())
    try:
        async with asyncio.timeout(20):  # with the wake lost: two minutes
            ended = await read_ended(inner, "c", 3)
    finally:
        processor.stop()
        await running
    assert sorted(ended) == ["r0", "r1", "r2"]
    assert busy.calls == [["r0"], ["r1"], ["r2"]]
    assert idle.calls == []


async def test_health_is_not_serving_while_redis_is_down_and_serving_once_back(
    killable_redis: RedisProcess,
) -> None:
    settings = Settings.from_env(
        {},
        grpc_host="127.0.0.1",
        grpc_port=0,
        queue_backend="redis",
        redis_url=killable_redis.url,
        queue_sweep_interval_seconds=0.2,
    )
    app = LpsApp(settings, providers=ProviderRegistry([RecordingProvider()]))
    await app.start(serve_metrics=False)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=SERVICE)
            )
            statuses = aiter(watch)
            await watch_until(statuses, health_pb2.HealthCheckResponse.SERVING, 10)
            killable_redis.stop()
            await watch_until(statuses, health_pb2.HealthCheckResponse.NOT_SERVING, 10)
            killable_redis.start()
            await watch_until(statuses, health_pb2.HealthCheckResponse.SERVING, 10)
            watch.cancel()
    finally:
        await app.stop(grace=5)


# --- results whose storing had no answer ------------------------------------------------------


async def test_results_whose_store_had_no_answer_are_found_stored_and_delivered(
    redis_proc: RedisProcess, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with ReplyDroppingProxy(redis_proc.port) as proxy:
        settings = Settings.from_env(
            {},
            grpc_host="127.0.0.1",
            grpc_port=0,
            queue_backend="redis",
            redis_url=proxy.url,
            redis_prefix="t",
            queue_processing_mode=ProcessingMode.SERIAL_BUNDLE,
            queue_sweep_interval_seconds=3600.0,
        )
        provider = RecordingProvider()
        queue = RedisQueue.from_settings(redis_settings(proxy.url))
        app = LpsApp(settings, providers=ProviderRegistry([provider]), queue=queue)
        await app.start(serve_metrics=False)
        try:
            # The reply to the first complete never comes (a timeout): its 8 results were
            # stored all the same, and must reach the call that waits for them.
            proxy.drop_reply_to(await complete_sha(redis_url), close=False)
            ids = [f"r{i}" for i in range(8)]
            async with client_of(app) as client:
                results = await submit_and_collect(client, subs_of(ids))
        finally:
            await app.stop(grace=5)
    assert proxy.dropped.is_set()
    assert {r.status for r in results.values()} == {"completed"}
    assert provider.calls == [ids], "stored once, never redone"
    assert "the outcome is unknown; asking again" in caplog.text
    assert "8 of 8 results had been stored by an earlier attempt" in caplog.text
    assert "before the leases lapsed" not in caplog.text
