"""Dispatch under faults, with real `lps serve` processes and a private redis-server: each test
checks what the client saw and what the provider was asked.

* Poisoned payloads in the queue: they end FAILED with a clear code, the rest completes, dispatch
  never stops and health stays SERVING.
* A slow provider beside an idle one: the idle provider's work is not held up.
* SIGTERM with calls in flight: nothing is leased after the signal, and the work cut short at the
  end of the grace period goes back to the queue for other replicas.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.asyncio import Redis

from cj_client import Ack, ComparisonOutcome, LpsClient
from cj_client.transport import submission_to_pb
from lps_server.core.config import Settings
from lps_server.core.domain import RequestStatus
from lps_server.edge.convert import request_from_pb
from lps_server.processing.intake import Intake
from lps_server.providers import ProviderRegistry
from lps_server.queue.redis_keys import QueueKeys
from lps_server.queue.redis_queue import RedisQueue
from tests.fake_llm_servers import FakeOpenAI
from tests.fault_rig import Launch, launcher, marked
from tests.redis_server import RedisProcess

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def start(killable_redis: RedisProcess, provider: FakeOpenAI, tmp_path: Path) -> Launch:
    """Starts replicas on this test's Redis, calling `provider`."""
    return launcher(redis_url=killable_redis.url, provider=provider, log_dir=tmp_path)


@pytest.fixture
async def provider() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="key-a") as server:
        yield server


async def queue_directly(redis_url: str, provider: FakeOpenAI, ids: list[str]) -> None:
    """Put requests in the shared queue as a replica's intake would, with no replica running."""
    env = {"LPS_OPENAI_API_KEY": "key-a", "LPS_OPENAI_BASE_URL": provider.base_url}
    settings = Settings.from_env({}, queue_backend="redis", redis_url=redis_url)
    queue = RedisQueue.from_settings(settings)
    intake = Intake(
        queue=queue, providers=ProviderRegistry.from_settings(settings, env=env), settings=settings
    )
    try:
        subs = [marked(rid, i, result_channel="results") for i, rid in enumerate(ids)]
        prepared = [
            intake.prepare(request_from_pb(submission_to_pb(s), request_id=s.request_id))
            for s in subs
        ]
        assert all(o.created for o in await intake.submit(prepared))
    finally:
        await queue.close()


async def test_poisoned_payloads_end_failed_and_dispatch_goes_on(
    killable_redis: RedisProcess, start: Launch, provider: FakeOpenAI
) -> None:
    ids = [f"r{i}" for i in range(6)]
    await queue_directly(killable_redis.url, provider, [*ids[:3], "corrupt", "future", *ids[3:]])
    keys, raw = QueueKeys("lps"), Redis.from_url(killable_redis.url)
    try:
        await raw.hset(keys.request("corrupt"), "payload", b'{"request": {"request_id": "cor')
        newer = json.loads(await raw.hget(keys.request("future"), "payload"))  # type: ignore[arg-type]
        newer["route"]["provider"] = "gemini-9"  # written by a newer release
        await raw.hset(keys.request("future"), "payload", json.dumps(newer))
    finally:
        await raw.aclose()

    async with start(
        ["a"],
        LPS_QUEUE_PROCESSING_MODE="serial_bundle",  # the poisoned ones share bundles with others
    ) as (a,):
        async with LpsClient(target=a.target, timeout=20) as client:
            published: dict[str, ComparisonOutcome] = {}
            async with asyncio.timeout(20), aclosing(client.stream_results("results")) as stream:
                async for _, outcome in stream:
                    published[outcome.request_id] = outcome
                    if len(published) == 7:  # the corrupt one has no readable channel
                        break
            poisoned = {rid: await client.get(rid) for rid in ("corrupt", "future")}
            # Dispatch goes on: new work is processed.
            later = [marked(f"later-{i}", i) for i in range(2)]
            async with asyncio.timeout(20), aclosing(client.submit_many(later)) as events:
                done_later = [e async for e in events if not isinstance(e, Ack)]
            async with grpc.aio.insecure_channel(a.target) as channel:
                health = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="lps.v1.LlmProviderService"), timeout=5
                )
            counted = {
                reason: await a.metric("llm_provider_unreadable_requests_total", reason=reason)
                for reason in ("undecodable", "unroutable")
            }
            restarts = await a.metric("llm_provider_processor_restarts_total")
        log = a.log()

    assert {rid for rid, o in published.items() if o.status == "completed"} == set(ids)
    for rid, outcome in [*poisoned.items(), ("future", published["future"])]:
        assert (outcome.status, outcome.error_code) == ("failed", "unreadable_request"), rid
    assert "gemini-9" in poisoned["future"].error_message
    assert "does not decode" in poisoned["corrupt"].error_message
    assert {o.status for o in done_later} == {"completed"}
    assert len(done_later) == 2
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert counted == {"undecodable": 1.0, "unroutable": 1.0}
    assert restarts == 0, "nothing raised out of a loop"
    expected = dict.fromkeys([*ids, "later-0", "later-1"], 1)
    assert provider.asked() == expected, "the poisoned requests never reached the provider"
    assert "ended request corrupt FAILED" in log


async def test_a_slow_provider_does_not_hold_up_an_idle_one(
    start: Launch, provider: FakeOpenAI
) -> None:
    provider.latency_s = 3.0  # openai: slow
    slow_ids = [f"slow-{i}" for i in range(6)]
    idle_ids = [f"idle-{i}" for i in range(4)]
    async with (
        FakeOpenAI(api_key="key-idle") as idle,
        start(
            ["a"],
            LPS_MAX_CONCURRENT_CALLS="2",
            LPS_OPENAI_COMPATIBLE_BASE_URL=idle.base_url,
            LPS_OPENAI_COMPATIBLE_API_KEY="key-idle",
            LPS_OPENAI_COMPATIBLE_MODEL="local-judge",
        ) as (a,),
    ):
        subs = [marked(rid, i) for i, rid in enumerate(slow_ids)]
        subs += [marked(rid, i, provider="openai_compatible") for i, rid in enumerate(idle_ids)]
        idle_done: list[str] = []
        async with LpsClient(target=a.target, timeout=20) as client:
            async with asyncio.timeout(20), aclosing(client.submit_many(subs)) as events:
                async for event in events:
                    if isinstance(event, Ack):
                        assert event.accepted, event
                    elif event.request_id.startswith("idle-"):
                        assert event.status == "completed", event
                        idle_done.append(event.request_id)
                        if len(idle_done) == len(idle_ids):
                            break
            slow_answered = [c.answered.is_set() for c in provider.calls]
    assert sorted(idle_done) == idle_ids
    # The slow provider's work was queued first; yet the idle provider's all ended before the
    # slow provider answered even its first call.
    assert slow_answered == [False, False], "the slow provider was called at its own limit"
    assert idle.asked() == dict.fromkeys(idle_ids, 1)


async def test_sigterm_takes_no_new_lease_and_gives_back_what_the_grace_period_cut(
    killable_redis: RedisProcess, start: Launch, provider: FakeOpenAI
) -> None:
    provider.latency_s = 3.0  # longer than the grace period: the calls are cut short
    ids = [f"r{i}" for i in range(8)]
    await queue_directly(killable_redis.url, provider, ids)
    async with start(
        ["a"],
        LPS_MAX_CONCURRENT_CALLS="2",
        LPS_SHUTDOWN_GRACE_SECONDS="1",
    ) as (a,):
        await provider.wait_until(lambda: len(provider.calls) == 2, timeout=15, what="2 calls")
        signalled_at = time.time()
        a.proc.send_signal(signal.SIGTERM)
        assert await a.exit_code(timeout=20) == 0
        log = a.log()
    queue = RedisQueue.from_settings(
        Settings.from_env({}, queue_backend="redis", redis_url=killable_redis.url)
    )
    try:
        stats = await queue.stats(now=time.time())
        statuses = {rid: (await queue.get(rid)).status for rid in ids}  # type: ignore[union-attr]
    finally:
        await queue.close()
    assert "grace period of 1.0s ran out" in log
    assert len(provider.calls) == 2, "no call after SIGTERM: nothing new was leased"
    assert all(c.received_at < signalled_at for c in provider.calls)
    # The two calls cut short were given back at once, not left to lapse: all 8 are queued.
    assert (stats.queued, stats.processing) == (8, 0)
    assert set(statuses.values()) == {RequestStatus.QUEUED}
