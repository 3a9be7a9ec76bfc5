"""Adversarial tests of the LPS server's guarantees, as an operations team would break them: real
`lps serve` processes (and in-process servers) on a private redis-server that is frozen, killed,
restarted, filled up or tampered with; a fake provider that counts what it was asked per request
id; clients that count what they received; the replicas' own metrics.

Three kinds of test, in this order:

* guarantees that held under attack and were not covered yet;
* bugs, each demonstrated by a test marked xfail(strict=True) whose reason names the bug: it
  passes once the bug is fixed, and strict xfail then fails the suite so the marker is removed;
* bugs fixed together with their test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from cj_client import Ack, LpsClient, LpsClientError, UnavailableError
from cj_client.transport.convert import submission_to_pb
from generated.lps.v1 import comparison_pb2 as pb
from generated.lps.v1 import llm_provider_service_pb2 as svc
from generated.lps.v1 import llm_provider_service_pb2_grpc as svc_grpc
from lps_server.core.config import Settings
from lps_server.core.domain import ComparisonResult, ErrorCode, Overrides, ProcessingMode
from lps_server.providers.base import ComparisonItem, ItemFailure, ItemOutcome
from lps_server.providers.mock import MockProvider
from lps_server.queue.codec import encode_result
from lps_server.queue.redis_keys import QueueKeys
from lps_server.queue.redis_queue import RedisQueue
from tests.bundling_support import AppFactory, RecordingProvider
from tests.fake_llm_servers import FakeOpenAI
from tests.fault_rig import Launch, launcher, marked, results_of
from tests.helpers import GatedMock, metric, running_app, submission, submit_all
from tests.queue_support import judged, make_queued
from tests.redis_server import RedisProcess
from tests.test_startup import refused

pytestmark = pytest.mark.redis
SERIAL = {"LPS_QUEUE_PROCESSING_MODE": "serial_bundle"}
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
async def provider() -> AsyncIterator[FakeOpenAI]:
    """The fake OpenAI server every replica calls (each with its own key)."""
    async with FakeOpenAI(api_key="key-a", also_accept=("key-b", "key-c")) as server:
        yield server


@pytest.fixture
def start(killable_redis: RedisProcess, provider: FakeOpenAI, tmp_path: Path) -> Launch:
    """Starts replicas on this test's Redis, calling `provider`."""
    return launcher(redis_url=killable_redis.url, provider=provider, log_dir=tmp_path)


@pytest.fixture
def volatile_redis() -> Iterator[RedisProcess]:
    """A private redis-server without persistence: a restart empties it."""
    proc = RedisProcess(appendonly=False)
    proc.start()
    yield proc
    proc.close()


async def fill_connection_pool(
    redis: RedisProcess, client: LpsClient, known_id: str, connections: int
) -> None:
    """Make the replica open `connections` Redis connections: look an id up that many times at
    once while Redis holds every command for a moment, so that each look-up needs its own."""
    observer = Redis.from_url(redis.url)
    try:
        await observer.client_pause(500)
        await asyncio.gather(*(client.get(known_id) for _ in range(connections)))
    finally:
        await observer.aclose()


async def fill_up(observer: Redis) -> None:
    """Write to Redis until it refuses for want of memory (maxmemory, noeviction)."""
    for i in range(1000):
        try:
            await observer.set(f"filler-{i}", "x" * 10_000)
        except OutOfMemoryError:
            return
    raise AssertionError("Redis never filled up")


def completed_result(request_id: str) -> ComparisonResult:
    """A COMPLETED result of `request_id`."""
    return judged(make_queued(request_id))


def once_each(ids: list[str]) -> Counter[str]:
    return Counter(dict.fromkeys(ids, 1))


async def _health_changes_to(
    target: str, wanted: int, *, within: float, then: Callable[[], None] = lambda: None
) -> bool:
    """Watch the health of `target`: once SERVING, call `then`; True when `wanted` follows
    within `within` seconds."""
    async with grpc.aio.insecure_channel(target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="lps.v1.LlmProviderService")
        )
        try:
            statuses = aiter(watch)
            async with asyncio.timeout(10):
                while (await anext(statuses)).status != health_pb2.HealthCheckResponse.SERVING:
                    pass
            then()
            async with asyncio.timeout(within):
                while (await anext(statuses)).status != wanted:
                    pass
            return True
        except TimeoutError:
            return False
        finally:
            watch.cancel()


# --- Guarantees that held (not covered before) ----------------------------------------------------


@pytest.mark.slow
async def test_three_replicas_under_faults_within_the_guarantee_pay_once_and_count_once(
    killable_redis: RedisProcess, start: Launch, provider: FakeOpenAI
) -> None:
    # The faults the guarantee covers, one after the other on three busy replicas: Redis frozen
    # for less than a lease less one beat, a replica frozen for less than that, and Redis
    # restarted from its AOF. Every request has one result, the provider is asked once for each,
    # and the request counters of the replicas add up to the requests.
    provider.latency_s = 1.0
    streams = [[f"s{k}-{i}" for i in range(120)] for k in range(3)]
    async with start(
        ["a", "b", "c"],
        LPS_QUEUE_LEASE_SECONDS="4",
        LPS_QUEUE_SWEEP_INTERVAL_SECONDS="0.25",
        **SERIAL,
    ) as replicas:
        clients = [LpsClient(target=r.target, timeout=30) for r in replicas]
        runs = [
            asyncio.create_task(results_of(client, [marked(r) for r in ids], timeout=60))
            for client, ids in zip(clients, streams, strict=True)
        ]

        async def after_calls(count: int) -> None:
            await provider.wait_until(lambda: len(provider.calls) >= count, timeout=30, what="")

        await after_calls(6)
        killable_redis.pause()
        await asyncio.sleep(1.5)  # the length of each fault, not a wait for an event
        killable_redis.resume()
        await after_calls(18)
        replicas[1].freeze()
        await asyncio.sleep(1.5)
        replicas[1].thaw()
        await after_calls(30)
        killable_redis.stop()
        killable_redis.start()
        seen = [counts for counts, _ in await asyncio.gather(*runs)]
        for client in clients:
            await client.close()
        counted = [await r.metric("llm_provider_requests_total") for r in replicas]
        lost = [await r.metric("llm_provider_lease_lost_total") for r in replicas]
    for counts, ids in zip(seen, streams, strict=True):
        assert counts == once_each(ids), "every request has exactly one result on its stream"
    all_ids = [rid for ids in streams for rid in ids]
    assert provider.asked() == once_each(all_ids), "the provider was asked once per request"
    assert sum(counted) == len(all_ids), f"llm_provider_requests_total adds up to {counted}"
    # (A lease whose reply the Redis freeze swallowed may be reclaimed: it was never called.)
    assert lost == [0, 0, 0], "no lease was lost to another holder"


async def test_a_record_with_an_unreadable_deadline_does_not_stop_dispatch(
    redis_url: str,
) -> None:
    # Poison of another kind than the payload: a field of the request's hash that the lease
    # script compares (written by another release, or by hand). The script fails on it, but
    # after taking it out of the queue, so the requests behind it are still leased.
    writer = RedisQueue.from_settings(
        Settings.from_env({}, queue_backend="redis", redis_url=redis_url)
    )
    now = time.time()
    queued = [
        make_queued(rid, at=now + i * 0.001, deadline=now + 3600, channel="results")
        for i, rid in enumerate(["good-1", "bad", "good-2"])
    ]
    observer = Redis.from_url(redis_url)
    try:
        await writer.submit(queued)
        await observer.hset(QueueKeys("lps").request("bad"), "deadline", "soon")
    finally:
        await writer.close()
        await observer.aclose()
    async with (
        running_app(queue_backend="redis", redis_url=redis_url) as app,
        LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10) as client,
    ):
        ended: dict[str, str] = {}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(6), aclosing(client.stream_results("results")) as stream:
                async for _, outcome in stream:
                    ended[outcome.request_id] = outcome.status
                    if {"good-1", "good-2"} <= set(ended):
                        break
    assert ended.get("good-2") == "completed", f"dispatch stopped behind the bad record: {ended}"


@pytest.mark.parametrize("backend", ["local", "redis"])
async def test_requests_that_are_known_are_never_told_request_lost(
    backend: str, redis_url: str
) -> None:
    # The false positives request_lost could have: a request still queued behind a busy
    # provider, one mid-lease (its call in flight), and the same id sent again on a second
    # stream (looked up at once as known). Each is looked up many times (recheck 0.1 s) while it
    # waits; none may be answered request_lost, and each gets its one real result.
    provider = GatedMock()
    subs = [submission(1, request_id="calling"), submission(2, request_id="queued")]
    outcomes: dict[str, list[Any]] = {"first": [], "again": []}
    async with (
        running_app(
            provider=provider,
            queue_backend=backend,
            redis_url=redis_url,
            max_concurrent_calls=1,
            stream_recheck_seconds=0.1,
        ) as app,
        LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=20) as client,
    ):

        async def collect(name: str, batch: list[Any]) -> None:
            async with aclosing(client.submit_many(batch)) as events:
                async for event in events:
                    if not isinstance(event, Ack):
                        outcomes[name].append(event)

        first = asyncio.create_task(collect("first", subs))
        async with asyncio.timeout(10):
            await provider.entered.wait()
        again = asyncio.create_task(collect("again", subs))
        await asyncio.sleep(1.5)  # many look-ups of every id, known and not
        told_early = outcomes["first"] + outcomes["again"]
        provider.gate.set()
        async with asyncio.timeout(20):
            await asyncio.gather(first, again)
    assert told_early == [], f"answered while their work was still pending: {told_early}"
    for name, got in outcomes.items():
        assert sorted(o.request_id for o in got) == ["calling", "queued"], (name, got)
        assert {o.status for o in got} == {"completed"}, (name, got)


@pytest.mark.parametrize("fault", ["killed", "frozen"])
async def test_health_comes_back_and_stays_serving_once_redis_returns(
    fault: str, killable_redis: RedisProcess
) -> None:
    # The ping loop must not leave the replica NOT_SERVING after Redis returns (restarted, or
    # resumed after a freeze that only the ping's timeout notices), nor flap: once SERVING
    # again, it stays so while Redis stays up (here, with nothing to do).
    fail, recover = (
        (killable_redis.stop, killable_redis.start)
        if fault == "killed"
        else (killable_redis.pause, killable_redis.resume)
    )
    async with running_app(
        provider=GatedMock(), queue_backend="redis", redis_url=killable_redis.url
    ) as app:
        target = f"127.0.0.1:{app.grpc_port}"
        down = await _health_changes_to(
            target,
            health_pb2.HealthCheckResponse.NOT_SERVING,
            within=10,
            then=fail,
        )
        assert down, "health still read SERVING 10 s after Redis went down"
        recover()
        back = False
        after: list[int] = []
        async with grpc.aio.insecure_channel(target) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="lps.v1.LlmProviderService")
            )
            try:
                statuses = aiter(watch)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(15):
                        while (await anext(statuses)).status != SERVING:
                            pass
                        back = True
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(4):  # four pings with Redis up
                        while True:
                            after.append((await anext(statuses)).status)
            finally:
                watch.cancel()
    assert back, "health still read NOT_SERVING 15 s after Redis returned"
    assert after == [], f"health changed again with Redis up: {after}"


class _AlwaysTimesOut(MockProvider):
    """The mock provider, but every item of every call times out (retryable); counts the calls
    items asked."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    async def compare(
        self, items: Sequence[ComparisonItem], *, model: str, overrides: Overrides
    ) -> list[ItemOutcome]:
        self.asked += len(items)
        return [ItemFailure(ErrorCode.TIMEOUT, "the provider timed out")] * len(items)


@pytest.mark.parametrize("backend", ["local", "redis"])
async def test_a_retried_request_past_its_ttl_is_retried_to_the_end_and_counted_once_a_call(
    backend: str, redis_url: str
) -> None:
    # The 'called' mark and the retry's release both stand for the same failed attempt: each
    # call must count once (not twice: the retries would run out early), and a request whose
    # TTL passed while it waited for its retry has cost a call, so it is retried to the end,
    # never EXPIRED.
    provider = _AlwaysTimesOut()
    async with (
        running_app(
            provider=provider,
            queue_backend=backend,
            redis_url=redis_url,
            queue_max_retries=2,
            retry_backoff_ms=700,  # the first retry is due after the TTL
            queue_sweep_interval_seconds=0.2,
        ) as app,
        LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=30) as client,
    ):
        async with (
            asyncio.timeout(30),
            aclosing(
                client.submit_many([submission(1, request_id="r1", ttl_seconds=0.5)])
            ) as events,
        ):
            outcome = [e async for e in events if not isinstance(e, Ack)]
        expired = metric(app.registry, "llm_provider_queue_expiry_total")
    assert [o.status for o in outcome] == ["failed"], outcome
    assert provider.asked == 3, "one call and two retries"
    assert not expired


# --- Bugs: each test fails for the bug its xfail reason names -------------------------------------

# (None open.)


# --- Bugs fixed with their test -------------------------------------------------------------------


async def test_a_lost_request_sent_again_on_the_same_stream_gets_its_result(
    redis_url: str,
) -> None:
    # Told request_lost, a client sends the request again, on the same stream as the message
    # asks. It was queued and paid for anew, but the stream remembered the id as answered and
    # dropped its result: the client waited for a result it had been acked for.
    provider = GatedMock()
    observer = Redis.from_url(redis_url)
    request = submission_to_pb(submission(1, request_id="r1"))
    async with (
        running_app(
            provider=provider,
            queue_backend="redis",
            redis_url=redis_url,
            stream_recheck_seconds=0.2,
        ) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel,
    ):
        call = svc_grpc.LlmProviderServiceStub(channel).SubmitComparisons()
        try:
            async with asyncio.timeout(10):
                await call.write(svc.SubmitComparisonsRequest(requests=[request]))
                first_ack = await call.read()
                await provider.entered.wait()
                await observer.flushall()  # Redis loses the request mid-call
                told = await call.read()
            provider.gate.set()
            assert told.result.error.code == pb.ERROR_CODE_REQUEST_LOST, (
                told
            )  # as the message asks:
            await call.write(svc.SubmitComparisonsRequest(requests=[request]))  # send it again
            async with asyncio.timeout(10):
                again = await call.read()
            assert again.ack.accepted, again
            answer = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    answer = await call.read()
                    await call.done_writing()
            asked = provider.calls
        finally:
            call.cancel()
            await observer.aclose()
    assert first_ack.ack.accepted
    assert asked == 2, "it was processed again"
    assert answer is not None, "the stream never got the result it was acked for"
    assert answer.result.status == pb.REQUEST_STATUS_COMPLETED, answer


async def test_a_request_whose_ttl_passes_while_its_bundle_fills_is_never_sent(
    make_app: AppFactory,
) -> None:
    # The fill window (LPS_SERIAL_BUNDLE_MAX_WAIT_MS) holds leased requests; one whose TTL passes
    # meanwhile must end EXPIRED, not be sent when the window closes.
    provider = RecordingProvider()
    app = await make_app(provider, serial_bundle_max_wait_ms=1500)
    async with LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10) as client:
        subs = [
            submission(0, request_id="short", ttl_seconds=0.5),
            submission(1, request_id="long"),
        ]
        outcomes = {o.request_id: o for o in await submit_all(client, subs)}
    assert outcomes["short"].status == "expired", "sent to the provider after its TTL had passed"
    assert outcomes["long"].status == "completed"
    assert [k for call in provider.calls for k in call] == ["long"]
    assert metric(app.registry, "llm_provider_queue_expiry_total", expiry_reason="ttl") == 1


async def test_a_redis_url_naming_a_database_redis_lacks_is_unavailable_with_its_cause(
    redis_proc: RedisProcess,
) -> None:
    # Redis has 16 databases by default: /99 is an operator's typo. Every call used to answer a
    # bare INTERNAL and the processing loops restarted on an unexpected ResponseError.
    url = f"redis://127.0.0.1:{redis_proc.port}/99"
    async with (
        running_app(queue_backend="redis", redis_url=url) as app,
        LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10) as client,
    ):
        with pytest.raises(UnavailableError) as refused:
            await client.submit(submission(1))
        with pytest.raises(UnavailableError):
            await client.queue_stats()
        restarts = metric(app.registry, "llm_provider_processor_restarts_total")
    assert "DB index is out of range" in str(refused.value)
    assert restarts == 0, "a queue it cannot use is an outage, not a bug of the loops"


async def test_a_full_redis_refuses_submissions_unavailable_not_internal(
    killable_redis: RedisProcess,
) -> None:
    # docs/queue.md: with maxmemory-policy noeviction "a full Redis answers OOM (-> UNAVAILABLE)".
    # redis-py parses that reply into OutOfMemoryError and drops the "OOM " from its message,
    # so matching the message alone let it through as a bare INTERNAL.
    observer = Redis.from_url(killable_redis.url)
    async with (
        running_app(queue_backend="redis", redis_url=killable_redis.url) as app,
        LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10) as client,
    ):
        try:
            used = (await observer.info("memory"))["used_memory"]
            await observer.config_set("maxmemory-policy", "noeviction")
            await observer.config_set("maxmemory", used + 100_000)
            await fill_up(observer)
            with pytest.raises(UnavailableError) as refused:
                await client.submit(submission(1))
        finally:
            await observer.config_set("maxmemory", 0)
            await observer.aclose()
    assert "maxmemory" in str(refused.value), "the message names the cause"


async def test_one_unreadable_stored_result_does_not_hide_the_others_from_a_stream(
    redis_url: str,
) -> None:
    # The stream's store look-ups go in one batch; one result this release cannot read (a newer
    # release's error code, during a rolling deploy) used to fail the whole batch, so a
    # reconnected client never received any of the others.
    ids = [f"k{i}" for i in range(6)]
    observer = Redis.from_url(redis_url)
    try:
        # Requests an earlier call submitted and that have ended; one result was written by a
        # newer release, with an error code this one does not know.
        for rid in ids:
            result = completed_result(rid)
            await observer.hset(
                QueueKeys("lps").request(rid),
                mapping={"status": "completed", "result": encode_result(result)},
            )
        newer = json.loads(encode_result(completed_result("k0")))
        newer.update(
            status="failed",
            judgement=None,
            failure={"code": "budget_exhausted", "message": "over budget"},
        )
        await observer.hset(
            QueueKeys("lps").request("k0"),
            mapping={"status": "failed", "result": json.dumps(newer)},
        )
    finally:
        await observer.aclose()
    arrived: list[str] = []
    async with (
        running_app(queue_backend="redis", redis_url=redis_url) as app,
        LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10) as client,
    ):
        # The client reconnects and sends the same ids again: all known, looked up in the store.
        subs = [submission(i, request_id=rid) for i, rid in enumerate(ids)]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(4), aclosing(client.submit_many(subs)) as events:
                async for event in events:
                    if not isinstance(event, Ack):
                        arrived.append(event.request_id)
                        if len(arrived) == len(ids) - 1:
                            break  # the unreadable one never comes: the call stays open
    assert sorted(arrived) == ids[1:], "every readable result reached the stream"


@pytest.mark.slow
@pytest.mark.parametrize("variable", ["LPS_GRPC_HOST", "LPS_METRICS_HOST"])
def test_a_host_that_cannot_be_listened_on_ends_the_start_in_one_line_with_port_zero(
    variable: str,
) -> None:
    # Port 0 skipped the check of the host: gRPC then logged a line of its own and the message
    # named LPS_GRPC_PORT; ports are 0 in every test and in many deployments.
    line = refused("--port", "0", "--metrics-port", "0", **{variable: "256.1.1.1"})
    assert variable in line, line
    assert "256.1.1.1" in line, line


async def test_health_turns_not_serving_when_redis_dies_while_every_provider_is_busy(
    killable_redis: RedisProcess,
) -> None:
    provider = GatedMock()  # calls wait for the gate: the provider is busy until the test ends
    async with running_app(
        provider=provider,
        queue_backend="redis",
        redis_url=killable_redis.url,
        max_concurrent_calls=1,
        queue_sweep_interval_seconds=0.2,
    ) as app:
        async with LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10) as client:
            await client.submit(submission(1, request_id="busy"))
            await client.submit(submission(2, request_id="waiting"))
        async with asyncio.timeout(10):
            await provider.entered.wait()
        try:
            told = await _health_changes_to(
                f"127.0.0.1:{app.grpc_port}",
                health_pb2.HealthCheckResponse.NOT_SERVING,
                within=5,
                then=killable_redis.stop,
            )
        finally:
            killable_redis.start()
            provider.gate.set()
    assert told, "health still read SERVING 5 s after Redis went down"


@pytest.mark.slow
async def test_results_stored_by_a_complete_sent_into_a_long_redis_freeze_are_counted(
    killable_redis: RedisProcess, start: Launch, provider: FakeOpenAI
) -> None:
    provider.latency_s = 1.0
    ids = [f"r{i}" for i in range(8)]
    async with start(
        ["a"],
        LPS_QUEUE_LEASE_SECONDS="2",
        # Only the sweep at start-up: nobody reclaims the lapsed leases, so the late complete
        # is the one that ends the requests.
        LPS_QUEUE_SWEEP_INTERVAL_SECONDS="3600",
        LPS_STREAM_RECHECK_SECONDS="0.5",
        **SERIAL,
    ) as (a,):
        async with LpsClient(target=a.target, timeout=30) as client:
            # One request first, so that Redis has loaded the complete script before the freeze
            # (otherwise the complete sent into the freeze runs into NOSCRIPT when Redis resumes).
            await results_of(client, [marked("warm-up")], timeout=15)
            # And a pool of idle connections, so that the complete goes out on an open one (a
            # new one would wait for the freeze in its handshake and never send the script).
            await fill_connection_pool(killable_redis, client, "warm-up", 12)
            run = asyncio.create_task(results_of(client, [marked(r) for r in ids], timeout=40))
            await provider.wait_until(lambda: len(provider.calls) == 2, timeout=15, what="call")
            killable_redis.pause()  # the answer comes in 1 s; its complete waits in the freeze
            await provider.wait_until(
                lambda: provider.calls[1].answered.is_set(), timeout=15, what="the answer"
            )
            # The length of the fault: well past the complete's timeout (2 s), by when the lease
            # has lapsed and the runner has given up on the complete.
            await asyncio.sleep(3.5)
            killable_redis.resume()
            seen, outcomes = await run
            counted = await a.metric("llm_provider_requests_total", status="completed")
        log = a.log()
    assert seen == once_each(ids), "every request has one result"
    assert {o.status for o in outcomes.values()} == {"completed"}
    assert provider.asked() == once_each(["warm-up", *ids]), "asked once each: nobody redid it"
    assert "could not store" in log, "the freeze did hit the complete"
    assert counted == 1 + len(ids), (
        f"{1 + len(ids)} requests completed, the metric counts {counted:g}"
    )


@pytest.mark.slow
async def test_answers_dropped_because_redis_was_down_past_the_lease_are_counted(
    killable_redis: RedisProcess, start: Launch, provider: FakeOpenAI
) -> None:
    provider.latency_s = 1.0
    ids = [f"r{i}" for i in range(8)]
    async with (
        start(
            ["a"],
            LPS_QUEUE_LEASE_SECONDS="2",
            LPS_QUEUE_SWEEP_INTERVAL_SECONDS="0.2",
            **SERIAL,
        ) as (a,),
        LpsClient(target=a.target, timeout=30) as client,
    ):
        run = asyncio.create_task(results_of(client, [marked(r) for r in ids], timeout=60))
        await provider.wait_until(lambda: len(provider.calls) == 1, timeout=15, what="call")
        killable_redis.stop()  # a crash while the provider works on the bundle...
        await provider.wait_until(
            lambda: provider.calls[0].answered.is_set(), timeout=15, what="the answer"
        )
        await asyncio.sleep(2.5)  # ...down well past the lease (the length of the fault)...
        killable_redis.start()  # ...and back from its AOF
        seen, outcomes = await run
        dropped = await a.metric("llm_provider_lease_lost_total", stage="after_call")
        counted = await a.metric("llm_provider_requests_total", status="completed")
    assert seen == once_each(ids), "every request has one result"
    assert {o.status for o in outcomes.values()} == {"completed"}
    paid_twice = sum(n - 1 for n in provider.asked().values())
    assert counted == len(ids)
    assert dropped == paid_twice, (
        f"{paid_twice} answers were paid for twice, lease_lost{{after_call}} reads {dropped:g}"
    )


@pytest.mark.slow
async def test_a_request_that_cost_a_call_is_not_expired_after_its_holder_died(
    start: Launch, provider: FakeOpenAI
) -> None:
    provider.latency_s = 3.0
    async with start(
        ["a", "b"],
        LPS_QUEUE_LEASE_SECONDS="2",
        LPS_QUEUE_SWEEP_INTERVAL_SECONDS="0.2",
    ) as replicas:
        by_key = {r.api_key: r for r in replicas}
        async with LpsClient(target=replicas[0].target, timeout=30) as client:
            await client.submit(marked("r1", ttl_seconds=1.5, result_channel="results"))
        await provider.wait_until(lambda: len(provider.calls) == 1, timeout=15, what="the call")
        holder = by_key[provider.calls[0].key]
        holder.kill()  # mid-call, before its TTL passed; it lapses 2 s later, past the TTL
        survivor = next(r for r in replicas if r is not holder)
        async with LpsClient(target=survivor.target, timeout=30) as client:
            async with asyncio.timeout(30), aclosing(client.stream_results("results")) as stream:
                _, outcome = await anext(stream)
            expired = await survivor.metric("llm_provider_queue_expiry_total")
    assert provider.asked()["r1"] >= 1, "the provider was called for it before its TTL"
    assert outcome.status == "completed", (
        f"a request that cost a provider call ended {outcome.status.upper()}"
    )
    assert expired == 0


@pytest.mark.slow
async def test_a_stream_whose_requests_redis_lost_is_told_instead_of_hanging(
    volatile_redis: RedisProcess, provider: FakeOpenAI, tmp_path: Path
) -> None:
    provider.latency_s = 1.5
    start = launcher(redis_url=volatile_redis.url, provider=provider, log_dir=tmp_path)
    ids = [f"r{i}" for i in range(4)]
    async with (
        start(["a"], LPS_STREAM_RECHECK_SECONDS="0.5") as (a,),
        LpsClient(target=a.target, timeout=30) as client,
    ):
        run = asyncio.create_task(results_of(client, [marked(r) for r in ids], timeout=5))
        await provider.wait_until(lambda: len(provider.calls) == 4, timeout=15, what="calls")
        volatile_redis.stop()
        volatile_redis.start()  # empty: every request, lease and channel is gone
        try:
            seen, _ = await run
        except LpsClientError:
            return  # the call ended with an error naming the loss: the client can resubmit
        except TimeoutError:
            pytest.fail("the stream still waited 5 s after Redis lost its requests")
    assert set(seen) == set(ids), "every request was answered (a failure naming the loss)"


async def test_answers_for_requests_redis_lost_are_not_counted_as_taken_over(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Redis loses its data (FLUSHALL stands for a restart without persistence) while the
    # provider works on the requests: the stream is told at once that they were lost, and when
    # the answers come the replica neither counts them as paid twice nor logs that another
    # holder took them over: nobody holds them.
    provider = GatedMock()
    ids = [f"r{i}" for i in range(3)]
    observer = Redis.from_url(redis_url)
    outcomes: dict[str, Any] = {}
    async with (
        running_app(
            provider=provider,
            queue_backend="redis",
            redis_url=redis_url,
            queue_processing_mode=ProcessingMode.SERIAL_BUNDLE,
            stream_recheck_seconds=0.2,
        ) as app,
        LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10) as client,
    ):
        subs = [submission(i, request_id=rid) for i, rid in enumerate(ids)]

        async def collect() -> None:
            async with aclosing(client.submit_many(subs)) as events:
                async for event in events:
                    if not isinstance(event, Ack):
                        outcomes[event.request_id] = event

        run = asyncio.create_task(collect())
        async with asyncio.timeout(10):
            await provider.entered.wait()
            await observer.flushall()
            await run  # the call ends once every request is answered
        provider.gate.set()
    # Leaving the app waited for the bundle in flight: its answers came and were dropped.
    lost = metric(app.registry, "llm_provider_lease_lost_total", stage="after_call")
    await observer.aclose()
    assert sorted(outcomes) == ids
    assert {o.error_code for o in outcomes.values()} == {"request_lost"}, outcomes
    assert lost == 0, "answers for requests nobody else holds counted as paid twice"
    assert "the queue no longer knows" in caplog.text
    assert "another holder" not in caplog.text
