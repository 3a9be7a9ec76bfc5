"""A bundle whose `called` mark cannot be written is not sent: nothing is paid for while the queue
cannot record it. Its requests go back to the queue (or lapse and are reclaimed), its rate budget
grant is withdrawn, the dispatcher backs off, and each request is called once Redis is back.

Real parts: the in-process queue behind a subclass whose first mark fails as if Redis were
unreachable (deterministic), and a private redis-server behind a proxy that cuts Redis off at the
mark; the mock provider behind a recorder, or the fake OpenAI server with a rate budget.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from cj_client.transport import submission_to_pb
from lps_server.app import LpsApp
from lps_server.core.config import Settings
from lps_server.core.domain import ProcessingMode
from lps_server.core.errors import QueueUnavailableError
from lps_server.edge.convert import request_from_pb
from lps_server.observability.metrics import LpsMetrics
from lps_server.processing.intake import Intake
from lps_server.processing.processor import Processor
from lps_server.providers import ProviderRegistry
from lps_server.queue.local import LocalQueue
from lps_server.queue.redis_scripts import QueueScripts
from tests.bundling_support import RecordingProvider, client_of, submit_and_collect, subs_of
from tests.economy_rig import comparisons, provider_env
from tests.fake_llm_servers import FakeOpenAI
from tests.helpers import eventually, metric
from tests.redis_proxy import ReplyDroppingProxy
from tests.redis_server import RedisProcess

WITHHELD = "llm_provider_requests_withheld_total"
# (written, request ids, provider calls made before the mark)
Mark = tuple[bool, list[str], int]


class UnmarkableQueue(LocalQueue):
    """A real LocalQueue whose first `failures` `called` marks fail as with Redis unreachable
    (nothing written); every mark is recorded with the provider calls made before it."""

    def __init__(self, *, failures: int, calls_so_far: Callable[[], int]) -> None:
        super().__init__()
        self.failures = failures
        self.marks: list[Mark] = []
        self._calls_so_far = calls_so_far

    async def extend(
        self, request_ids: Sequence[str], *, token: str, now: float, calling: bool = False
    ) -> list[str]:
        if calling:
            written = self.failures <= 0
            self.marks.append((written, list(request_ids), self._calls_so_far()))
            if not written:
                self.failures -= 1
                raise QueueUnavailableError("redis at 127.0.0.1:1 unreachable: injected")
        return await super().extend(request_ids, token=token, now=now, calling=calling)


async def test_a_bundle_whose_mark_fails_is_not_sent_and_is_called_once_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    provider = RecordingProvider()
    queue = UnmarkableQueue(failures=1, calls_so_far=lambda: len(provider.calls))
    registry = CollectorRegistry()
    settings = Settings(
        queue_sweep_interval_seconds=3600.0, queue_processing_mode=ProcessingMode.SERIAL_BUNDLE
    )
    health: list[bool] = []

    async def on_serving(serving: bool) -> None:
        health.append(serving)

    processor = Processor(
        queue=queue,
        providers=ProviderRegistry([provider]),
        settings=settings,
        metrics=LpsMetrics(registry),
        on_serving=on_serving,
    )
    intake = Intake(queue=queue, providers=ProviderRegistry([provider]), settings=settings)
    ids = ["r0", "r1", "r2"]
    await intake.submit(
        [
            intake.prepare(request_from_pb(submission_to_pb(s), request_id=s.request_id))
            for s in subs_of(ids, "c")
        ]
    )
    running = asyncio.create_task(processor.run())
    ended: list[str] = []
    cursor = ""
    try:
        async with asyncio.timeout(10):
            while len(ended) < len(ids):
                entries = await queue.read_channel("c", cursor=cursor, timeout=5)
                ended += [e.result.request_id for e in entries]
                cursor = entries[-1].cursor if entries else cursor
    finally:
        processor.stop()
        await running
    assert queue.marks == [(False, ids, 0), (True, ids, 0)], "no call before a written mark"
    assert provider.calls == [ids], "the bundle is called once, after its mark was written"
    assert Counter(ended) == Counter(ids), "one result each"
    assert metric(registry, WITHHELD, provider="mock", reason="unmarked") == 3
    assert metric(registry, "llm_provider_processor_restarts_total", loop="dispatch") == 0
    assert health == [False, True], "backed off as the queue was unavailable, then served"
    assert "their called mark could not be written" in caplog.text
    assert "queue unavailable, retrying in" in caplog.text


async def test_the_rate_budget_granted_to_a_bundle_not_sent_is_withdrawn() -> None:
    """One request a minute: a grant left counted would hold the bundle back for a minute."""
    async with FakeOpenAI(api_key="sk-economy", usage=(0, 0)) as server:
        env = provider_env(server, "openai", requests_per_minute=1, rate_limit_window_seconds=60)
        settings = Settings.from_env(
            {},
            grpc_host="127.0.0.1",
            grpc_port=0,
            queue_processing_mode=ProcessingMode.SERIAL_BUNDLE,
            queue_sweep_interval_seconds=3600.0,
        )
        queue = UnmarkableQueue(failures=1, calls_so_far=lambda: len(server.calls))
        registry = CollectorRegistry()
        app = LpsApp(
            settings,
            registry=registry,
            providers=ProviderRegistry.from_settings(settings, env=env),
            queue=queue,
        )
        await app.start(serve_metrics=False)
        subs = comparisons(3, provider="openai")
        try:
            async with client_of(app) as client:
                results = await submit_and_collect(client, subs)  # within 10 s
        finally:
            await app.stop(grace=5)
    ids = [s.request_id for s in subs]
    assert {r.status for r in results.values()} == {"completed"}
    assert queue.marks == [(False, ids, 0), (True, ids, 0)]
    assert [c.comparisons for c in server.calls] == [3]
    assert metric(registry, WITHHELD, provider="openai", reason="unmarked") == 3
    assert metric(registry, "llm_provider_rate_limit_wait_seconds_sum") == 0, "never waited"


async def extend_sha(redis_url: str) -> bytes:
    """The SHA the extend script (leases extended, and marked `called`) runs by."""
    client = Redis.from_url(redis_url)
    try:
        return str(QueueScripts.register(client).extend.sha).encode()
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_redis_cut_off_at_the_mark_sends_nothing_and_each_request_is_called_once_after(
    redis_proc: RedisProcess, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis becomes unreachable at the mark: the give-back fails too, so the leases lapse; once
    Redis is back, a sweep reclaims them and the bundle is called once."""
    caplog.set_level(logging.WARNING)
    async with ReplyDroppingProxy(redis_proc.port) as proxy:
        settings = Settings.from_env(
            {},
            grpc_host="127.0.0.1",
            grpc_port=0,
            queue_backend="redis",
            redis_url=proxy.url,
            queue_processing_mode=ProcessingMode.SERIAL_BUNDLE,
            queue_lease_seconds=2.0,
            queue_sweep_interval_seconds=0.2,
        )
        provider = RecordingProvider()
        registry = CollectorRegistry()
        app = LpsApp(settings, registry=registry, providers=ProviderRegistry([provider]))
        await app.start(serve_metrics=False)
        ids = ["r0", "r1", "r2"]
        try:
            # The first extend is the mark: the keeper's first beat comes a third of a lease on.
            proxy.cut_at(await extend_sha(redis_url))
            async with client_of(app) as client:
                collecting = asyncio.create_task(submit_and_collect(client, subs_of(ids)))
                await asyncio.wait_for(proxy.cut.wait(), 10)
                await eventually(
                    lambda: metric(registry, WITHHELD, provider="mock", reason="unmarked") == 3,
                    "the bundle withheld",
                    timeout=5,
                )
                await eventually(lambda: "could not give back 3" in caplog.text, "a failed release")
                assert provider.calls == [], "nothing is sent while the queue cannot record it"
                proxy.restore()
                results = await collecting
        finally:
            await app.stop(grace=5)
    assert {r.status for r in results.values()} == {"completed"}
    assert Counter(k for call in provider.calls for k in call) == Counter(ids), "called once each"
    assert "reclaimed 3 requests whose lease lapsed" in caplog.text
