"""Thousands of streams on one replica, on a bounded number of Redis connections, and no result
left behind: a lost hand-over is found in the store, known ids are looked up in batches, reply
channels expire soon after their call, and a full connection pool says so."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from cj_client import Ack, ComparisonOutcome, LpsClient
from cj_client.transport import submission_to_pb
from generated.lps.v1 import llm_provider_service_pb2 as svc
from generated.lps.v1 import llm_provider_service_pb2_grpc as svc_grpc
from lps_server.core.domain import ComparisonResult, Judgement, RequestStatus, Winner
from lps_server.core.errors import QueueBusyError
from lps_server.queue.base import EndedResults
from lps_server.queue.codec import encode_result
from lps_server.queue.redis_queue import RedisQueue
from tests.helpers import WAIT_S, GatedMock, running_app, submission
from tests.queue_support import redis_settings
from tests.test_replicas import Replica

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.redis
STREAMS = 1000
MAX_CONNECTIONS = 8
BLOCKING_CONNECTIONS = 4  # RedisQueue's pool for BLPOP and the channel reader
BUSY_RETRIES = 3


@asynccontextmanager
async def replicas(redis_url: str, tmp: Path, count: int) -> AsyncIterator[list[Replica]]:
    env = {
        "LPS_REDIS_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "LPS_MAX_STREAMS_PER_CLIENT": str(4 * STREAMS),
        "LPS_MAX_CONCURRENT_CALLS": "16",
    }
    started = [Replica(redis_url, tmp / f"r{i}.log", **env) for i in range(count)]
    try:
        await asyncio.gather(*(r.wait_serving() for r in started))
        yield started
    finally:
        for replica in started:
            replica.stop()


async def lps_connections(observer: aioredis.Redis) -> dict[str, int]:
    """Open Redis connections per LPS process (by the client name each replica sets)."""
    counts: dict[str, int] = {}
    for client in await observer.client_list():
        name = client.get("name", "")
        if name.startswith("lps:"):
            counts[name] = counts.get(name, 0) + 1
    return counts


@pytest.mark.slow
async def test_a_thousand_streams_of_each_kind_get_their_results_on_bounded_connections(
    redis_url: str, tmp_path: Path
) -> None:
    observer = aioredis.from_url(redis_url, decode_responses=True)
    async with AsyncExitStack() as stack:
        holder, _ = await stack.enter_async_context(replicas(redis_url, tmp_path, 2))
        # Spread the calls over several connections, as many clients would.
        channels = [
            await stack.enter_async_context(grpc.aio.insecure_channel(holder.target))
            for _ in range(20)
        ]
        stubs = [svc_grpc.LlmProviderServiceStub(c) for c in channels]
        # First the idle kind: StreamResults calls that wait for results not yet submitted.
        followers = [
            stubs[i % len(stubs)].StreamResults(svc.StreamResultsRequest(result_channel=f"ch-{i}"))
            for i in range(STREAMS)
        ]
        submits = [stubs[i % len(stubs)].SubmitComparisons() for i in range(STREAMS)]

        busy: list[str] = []

        async def send_one(i: int) -> None:
            request = submission_to_pb(submission(i, request_id=f"s-{i}", result_channel=f"ch-{i}"))
            for _ in range(BUSY_RETRIES + 1):
                await submits[i].write(svc.SubmitComparisonsRequest(requests=[request]))
                ack = await submits[i].read()
                assert isinstance(ack, svc.SubmitComparisonsResponse)
                # A full pool refuses an item retryably and says so; a client retries it, as
                # LpsClient does. On a starved machine (a loaded CI) 250 intakes at once can
                # outwait the pool's second. Anything else refused fails the test.
                if ack.ack.accepted or "pool of this replica is full" not in ack.ack.error.message:
                    break
                busy.append(request.request_id)
                await asyncio.sleep(0.2)
            assert ack.ack.accepted, ack

        async def submit_one(i: int) -> svc.SubmitComparisonsResponse:
            result = await submits[i].read()  # the call stays open: the client has not half-closed
            assert isinstance(result, svc.SubmitComparisonsResponse)
            return result

        async def follow_one(i: int) -> svc.StreamResultsResponse:
            reply = await followers[i].read()
            assert isinstance(reply, svc.StreamResultsResponse)
            return reply

        async with asyncio.timeout(90):
            # A batch at a time: a burst of over a thousand new streaming calls fails some inside
            # gRPC ("Internal error from Core"), seen against a trivial grpc.aio servicer too.
            for start in range(0, STREAMS, 250):
                await asyncio.gather(*(send_one(i) for i in range(start, start + 250)))
            submitted, followed = await asyncio.gather(
                asyncio.gather(*(submit_one(i) for i in range(STREAMS))),
                asyncio.gather(*(follow_one(i) for i in range(STREAMS))),
            )
        assert [r.result.request_id for r in submitted] == [f"s-{i}" for i in range(STREAMS)]
        assert {r.result.status for r in submitted} == {3}  # REQUEST_STATUS_COMPLETED
        assert [r.result.request_id for r in followed] == [f"s-{i}" for i in range(STREAMS)]
        assert len(busy) < STREAMS // 10, f"{len(busy)} intakes found the pool full"

        # Every one of the 2,000 calls is still open; each replica holds a bounded number of
        # connections (the old design held one per open call on the replica holding them).
        connections = await lps_connections(observer)
        assert len(connections) == 2, connections
        assert all(n <= MAX_CONNECTIONS + BLOCKING_CONNECTIONS for n in connections.values())

        for call in submits:
            await call.done_writing()
        async with asyncio.timeout(30):
            for call in submits:
                assert await call.read() == grpc.aio.EOF
                assert await call.code() == grpc.StatusCode.OK
        for follower in followers:
            follower.cancel()
    await observer.aclose()


def _stored(request_id: str, text: str) -> bytes:
    return encode_result(
        ComparisonResult(
            request_id=request_id,
            status=RequestStatus.COMPLETED,
            judgement=Judgement(Winner.ESSAY_B, text, 4),
            completed_at=time.time(),
        )
    )


async def test_a_result_stored_without_its_publish_still_reaches_its_stream(redis_url: str) -> None:
    provider = GatedMock()
    observer = aioredis.from_url(redis_url)
    async with (
        running_app(
            provider=provider,
            queue_backend="redis",
            redis_url=redis_url,
            stream_recheck_seconds=0.2,
        ) as app,
        LpsClient(target=f"127.0.0.1:{app.grpc_port}") as client,
    ):
        events: list[Ack | ComparisonOutcome] = []

        async def run() -> None:
            async for event in client.submit_many([submission(1, request_id="lost")]):
                events.append(event)

        call = asyncio.create_task(run())
        async with asyncio.timeout(WAIT_S):
            await provider.entered.wait()  # leased, in the provider
        # What a `complete` whose reply was lost leaves: the result stored, nothing handed over.
        key = "{lps}:req:lost"
        await observer.hset(key, mapping={"status": "completed", "result": _stored("lost", "x")})
        await observer.hdel(key, "payload")
        async with asyncio.timeout(WAIT_S):
            await call
        outcome = events[-1]
        assert isinstance(outcome, ComparisonOutcome)
        assert (outcome.request_id, outcome.status, outcome.justification) == (
            "lost",
            "completed",
            "x",
        )
        provider.gate.set()
    await observer.aclose()


async def test_reply_channels_expire_minutes_after_their_call_not_after_the_retention(
    redis_url: str,
) -> None:
    held = GatedMock()
    observer = aioredis.from_url(redis_url)
    common: dict[str, Any] = {
        "queue_backend": "redis",
        "redis_url": redis_url,
        "reply_channel_ttl_seconds": 90,
    }
    async with (
        running_app(provider=held, max_concurrent_calls=1, **common) as holder,
        running_app(**common),
        LpsClient(target=f"127.0.0.1:{holder.grpc_port}") as client,
    ):
        subs = [submission(i, request_id=f"r{i}", result_channel="public") for i in range(20)]
        results: list[str] = []

        async def run() -> None:
            async for event in client.submit_many(subs):
                if isinstance(event, ComparisonOutcome):
                    results.append(event.request_id)
                    if len(results) == len(subs) - 1:
                        held.gate.set()  # the other replica did the rest: let this one finish

        async with asyncio.timeout(WAIT_S):
            await run()
        assert sorted(results) == sorted(s.request_id for s in subs)
    reply_keys = [k async for k in observer.scan_iter(match="{lps}:chan:reply:*")]
    assert len(reply_keys) == 1  # the other replica published to the call's reply channel
    assert 0 < await observer.pttl(reply_keys[0]) <= 90_000
    assert await observer.pttl("{lps}:chan:public") > 86_000_000  # a result channel: retention
    await observer.aclose()


class CountingQueue(RedisQueue):
    """The Redis queue, recording every look-up of results by id."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lookups: list[int] = []
        self.gets = 0
        self.looked_up = asyncio.Event()

    async def ended_results(self, request_ids: Sequence[str]) -> EndedResults:
        self.lookups.append(len(request_ids))
        self.looked_up.set()
        return await super().ended_results(request_ids)

    async def get(self, request_id: str) -> ComparisonResult | None:
        self.gets += 1
        return await super().get(request_id)


async def test_resubmitted_known_ids_are_looked_up_in_batches(redis_url: str) -> None:
    provider = GatedMock()
    queue = CountingQueue(client=aioredis.from_url(redis_url), prefix="lps")
    subs = [submission(i, request_id=f"k{i}") for i in range(30)]
    async with (
        running_app(
            provider=provider, queue=queue, queue_backend="redis", redis_url=redis_url
        ) as app,
        LpsClient(target=f"127.0.0.1:{app.grpc_port}") as client,
    ):
        # A first call submits them and goes away (a client that lost its connection).
        first = client.submit_many(subs)
        async with asyncio.timeout(WAIT_S):
            acks = [await anext(first) for _ in subs]
        await first.aclose()
        assert all(isinstance(a, Ack) and a.accepted for a in acks)
        # The client comes back and sends the same ids: all known, none created.
        outcomes: list[str] = []

        async def again() -> None:
            async for event in client.submit_many(subs):
                if isinstance(event, ComparisonOutcome):
                    outcomes.append(event.request_id)

        call = asyncio.create_task(again())
        async with asyncio.timeout(WAIT_S):
            while len(queue.lookups) < 2:  # at once, then a second later
                queue.looked_up.clear()
                await queue.looked_up.wait()
        provider.gate.set()
        async with asyncio.timeout(WAIT_S):
            await call
        assert sorted(outcomes) == sorted(s.request_id for s in subs)
        # Every look-up carried all the ids awaited, in one round trip; none was asked alone.
        assert queue.lookups[:2] == [30, 30], queue.lookups
        assert len(queue.lookups) <= 5, queue.lookups
        assert queue.gets == 0


async def test_a_full_connection_pool_says_so_and_not_unreachable(redis_url: str) -> None:
    queue = RedisQueue.from_settings(redis_settings(redis_url, redis_max_connections=1))
    observer = aioredis.from_url(redis_url)
    try:
        await queue.ping()  # its one connection is open
        await observer.client_pause(1500)  # Redis holds every reply for 1.5 s
        holding = asyncio.create_task(queue.get("first"))  # takes the connection, waits
        waiting = asyncio.create_task(queue.get("second"))  # waits for the pool (1 s)
        with pytest.raises(QueueBusyError) as caught:
            await waiting
        message = str(caught.value)
        assert "connection pool of this replica is full" in message, message
        assert "LPS_REDIS_MAX_CONNECTIONS" in message
        assert "unreachable" not in message
        assert await holding is None  # the first call was only slow
    finally:
        await queue.close()
        await observer.aclose()
