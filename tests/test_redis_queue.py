"""RedisQueue against a real private redis-server: what only a shared, durable queue must do.

Behaviour both backends share is in test_queue_contract.py (which runs against Redis too).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from lps_server.core.domain import (
    RequestStatus,
)
from lps_server.core.errors import ConfigurationError, QueueUnavailableError
from lps_server.queue.redis_keys import QueueKeys
from lps_server.queue.redis_queue import RedisQueue
from tests.queue_support import T0, expired_result, judged, make_queued, redis_settings
from tests.redis_server import RedisProcess

# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
async def observer(redis_url: str) -> AsyncIterator[Redis]:
    """A plain client to look at what Redis holds."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def replicas(redis_url: str) -> AsyncIterator[list[RedisQueue]]:
    """Two queues on the same Redis and prefix, each with its own client: two replicas."""
    queues = [RedisQueue.from_settings(redis_settings(redis_url)) for _ in range(2)]
    yield queues
    for queue in queues:
        await queue.close()


async def commands_sent(url: str, action: Awaitable[Any]) -> list[str]:
    """Commands clients sent while `action` ran (MONITOR; commands run inside scripts aside)."""
    watcher = Redis.from_url(url)
    try:
        async with watcher.monitor() as monitor:
            await action
            await watcher.echo("end-of-action")  # on another connection of the watcher's pool
            seen = []
            while (info := await monitor.next_command())["command"] != "ECHO end-of-action":
                seen.append(info)
            # Everything from the echo's connection (its handshake included) is ours, not sent.
            return [
                i["command"].split(" ", 1)[0].upper()
                for i in seen
                if i["client_type"] != "lua" and i["client_port"] != info["client_port"]
            ]
    finally:
        await watcher.aclose()


# --- many replicas ---------------------------------------------------------------------------


async def test_submit_is_idempotent_across_replicas_even_concurrently(
    replicas: list[RedisQueue],
) -> None:
    one, two = replicas
    ids = [f"r{i}" for i in range(60)]
    batches = [
        replica.submit([make_queued(rid, at=T0 + i) for i, rid in enumerate(ids[start::3])])
        for start in range(3)
        for replica in (one, two)
    ]
    outcomes = [o for batch in await asyncio.gather(*batches) for o in batch]
    created = sorted(o.request_id for o in outcomes if o.created)
    assert created == sorted(ids)
    assert all(o.status == RequestStatus.QUEUED for o in outcomes)
    assert (await two.stats(now=T0)).queued == 60


async def test_a_lease_that_lapsed_mid_call_is_reclaimed_with_the_call_counted(
    replicas: list[RedisQueue],
) -> None:
    # The holder marked its call, then died: the sweep reclaims the request with one failed
    # attempt counted, so past its TTL it is leased as work, not ended EXPIRED (it was paid for).
    dying, survivor = replicas  # lease_seconds is 30 (the default)
    await dying.submit([make_queued("r1", at=T0, deadline=T0 + 10)])
    held = await dying.lease(now=T0 + 1)
    assert await dying.extend(["r1"], token=held.token, now=T0 + 2, calling=True) == []
    found = await survivor.sweep(now=T0 + 40)
    assert found.reclaimed == 1
    assert found.expired == [], "a request that cost a call is not found expired"
    taken = await survivor.lease(now=T0 + 41)
    assert [q.request_id for q in taken.items] == ["r1"]
    assert taken.attempts == {"r1": 1}


async def test_lapsed_lease_is_reclaimed_by_another_replica_at_its_position(
    replicas: list[RedisQueue],
) -> None:
    dying, survivor = replicas  # lease_seconds is 30 (the default)
    first = make_queued("first", at=T0, channel="ch")
    await dying.submit([first])
    held = await dying.lease(now=T0 + 1)
    assert [q.request_id for q in held.items] == ["first"]
    await survivor.submit([make_queued("later", at=T0 + 2)])
    # A heartbeat moves the deadline to T0 + 50.
    assert await dying.extend(["first"], token=held.token, now=T0 + 20) == []
    assert (await survivor.sweep(now=T0 + 40)).reclaimed == 0
    # The holder stops heart-beating (it stalled); its lease lapses.
    assert (await survivor.sweep(now=T0 + 51)).reclaimed == 1
    assert (await survivor.get("first")).status == RequestStatus.QUEUED  # type: ignore[union-attr]
    taken = await survivor.lease(now=T0 + 52)
    assert [q.request_id for q in taken.items] == ["first"]
    # The stalled holder wakes: it cannot extend, release or complete what it lost.
    assert await dying.extend(["first"], token=held.token, now=T0 + 53) == ["first"]
    await dying.release(["first"], token=held.token)
    assert await dying.complete([(first, judged(first, now=T0 + 54))], token=held.token) == [False]
    assert (await survivor.get("first")).status == RequestStatus.PROCESSING  # type: ignore[union-attr]
    stored = await survivor.complete([(first, judged(first, now=T0 + 55))], token=taken.token)
    assert stored == [True]
    entries = await survivor.read_channel("ch", cursor="", timeout=0)
    assert [e.result.completed_at for e in entries] == [T0 + 55]


async def test_expired_requests_held_by_a_dead_replica_are_not_lost(
    replicas: list[RedisQueue],
) -> None:
    dying, survivor = replicas
    await dying.submit([make_queued("late", group="8:g", deadline=T0 + 5)])
    lease = await dying.lease(now=T0 + 6, max_items=8)
    assert [q.request_id for q in lease.expired] == ["late"]
    # It dies before ending the expired request: the lapsed lease brings it back, expired.
    found = await survivor.sweep(now=T0 + 37)
    assert (found.reclaimed, [q.request_id for q in found.expired]) == (1, ["late"])
    # The sweeping replica dies too before ending it: the next sweep after the lease finds it.
    assert (await dying.sweep(now=T0 + 50)).expired == []
    found = await dying.sweep(now=T0 + 68)
    assert (found.reclaimed, [q.request_id for q in found.expired]) == (1, ["late"])
    ending = [(q, expired_result(q, now=T0 + 68)) for q in found.expired]
    assert await dying.complete(ending, token=found.token) == [True]
    assert (await dying.sweep(now=T0 + 200)).expired == []


# --- what Redis holds ------------------------------------------------------------------------


async def test_submit_lease_and_complete_of_many_are_one_round_trip_each(redis_url: str) -> None:
    queue = RedisQueue.from_settings(redis_settings(redis_url))
    try:
        # Warm up: open the connection and load the scripts (NOSCRIPT, SCRIPT LOAD, once).
        ghost = make_queued("ghost")
        await queue.submit([make_queued("warm-up", group="8:w")])
        await queue.lease(now=T0, max_items=8)
        await queue.complete([(ghost, judged(ghost))])
        await queue.extend(["ghost"], token="t", now=T0)
        await queue.release(["ghost"], token="t")

        batch = [make_queued(f"r{i}", group="8:g", at=T0 + i) for i in range(50)]
        assert await commands_sent(redis_url, queue.submit(batch)) == ["EVALSHA"]
        lease = await queue.lease(now=T0 + 100, max_items=8, token="bundle")
        leasing = queue.lease(now=T0 + 100, max_items=8)
        assert await commands_sent(redis_url, leasing) == ["EVALSHA"]
        ids = [q.request_id for q in lease.items]
        extending = queue.extend(ids, token="bundle", now=T0 + 101)
        assert await commands_sent(redis_url, extending) == ["EVALSHA"]
        releasing = queue.release(ids[4:], token="bundle", retry_at=T0 + 200)
        assert await commands_sent(redis_url, releasing) == ["EVALSHA"]
        done = [(q, judged(q)) for q in lease.items[:4]]
        completing = queue.complete(done, token="bundle")
        assert await commands_sent(redis_url, completing) == ["EVALSHA"]
        assert (await queue.stats(now=T0 + 100)).completed == 4
    finally:
        await queue.close()


async def test_every_key_is_under_the_prefix_hash_tag(redis_url: str, observer: Redis) -> None:
    queue = RedisQueue.from_settings(redis_settings(redis_url))
    other = RedisQueue.from_settings(redis_settings(redis_url, redis_prefix="other"))
    try:
        q = make_queued("r1", group="8:g", deadline=T0 + 50, channel="ch", reply_to="reply")
        await queue.submit([q, make_queued("r2", group="8:g", deadline=T0 + 50)])
        lease = await queue.lease(now=T0 + 1, max_items=1)
        await queue.complete([(q, judged(q))], token=lease.token)
        retry = await queue.lease(now=T0 + 1, max_items=1)
        await queue.release(["r2"], token=retry.token, retry_at=T0 + 30)
        keys = sorted(k.decode() for k in await observer.keys("*"))
        assert keys
        assert all(k.startswith("{t}:") for k in keys), keys
        # Another prefix is another queue.
        assert await other.get("r1") is None
        assert (await other.lease(now=T0 + 1)).items == []
    finally:
        await queue.close()
        await other.close()
    with pytest.raises(ValueError, match="brace"):
        QueueKeys("a}b")
    with pytest.raises(ConfigurationError, match="LPS_REDIS_PREFIX"):
        RedisQueue.from_settings(redis_settings(redis_url, redis_prefix="{lps}"))


async def test_ended_requests_are_kept_for_the_retention_time_only(
    redis_url: str, observer: Redis
) -> None:
    queue = RedisQueue.from_settings(redis_settings(redis_url, result_retention_seconds=100.0))
    keys = QueueKeys("t")
    try:
        q = make_queued("r1", channel="ch")
        await queue.submit([q])
        lease = await queue.lease(now=T0 + 1)
        await queue.complete([(q, judged(q, now=T0 + 2))], token=lease.token)
        for key in (keys.request("r1"), keys.channel("ch")):
            assert 0 < await observer.pttl(key) <= 100_000
        assert await observer.hget(keys.request("r1"), "payload") is None  # essays dropped
        assert (await queue.stats(now=T0 + 3)).completed == 1
        await queue.sweep(now=T0 + 101)  # ended at T0 + 2: still within retention
        assert (await queue.stats(now=T0 + 101)).completed == 1
        await queue.sweep(now=T0 + 103)
        assert (await queue.stats(now=T0 + 103)).completed == 0
    finally:
        await queue.close()


async def test_queue_structures_are_empty_once_everything_ended(
    replicas: list[RedisQueue], observer: Redis
) -> None:
    queue, _ = replicas
    keys = QueueKeys("t")
    batch = [
        make_queued(f"r{i}", group=f"8:g{i % 2}", at=T0 + i, deadline=T0 + 10 + i) for i in range(6)
    ]
    await queue.submit(batch)
    lease = await queue.lease(now=T0 + 11, max_items=8)  # r0 expired, r2 and r4 leased
    await queue.release([lease.items[0].request_id], token=lease.token, retry_at=T0 + 12)
    await queue.complete([(q, judged(q)) for q in lease.items[1:]], token=lease.token)
    ending = [(q, expired_result(q, now=T0 + 11)) for q in lease.expired]
    await queue.complete(ending, token=lease.token)
    while (found := await queue.sweep(now=T0 + 100)).expired:
        ending = [(q, expired_result(q, now=T0 + 100)) for q in found.expired]
        await queue.complete(ending, token=found.token)
    # The retried one outlives its TTL (it has cost a call): it is leased again and ends.
    retried = await queue.lease(now=T0 + 100, max_items=8)
    await queue.complete([(q, judged(q)) for q in retried.items], token=retried.token)
    fixed = [keys.pending, keys.leases, keys.deadlines, keys.enqueued, keys.delayed]
    fixed += [keys.group("8:g0"), keys.provider_pending("mock")]
    assert await observer.exists(*fixed, keys.group("8:g1")) == 0
    assert int(await observer.hget(keys.meta, "bytes") or 0) == 0
    stats = await queue.stats(now=T0 + 100)
    assert (stats.queued, stats.processing, stats.completed, stats.expired) == (0, 0, 2, 4)


# --- Redis down ------------------------------------------------------------------------------


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A private redis-server this test may kill."""
    proc = RedisProcess()
    proc.start()
    yield proc
    proc.close()


async def test_redis_down_fails_fast_with_the_cause_and_recovers_by_itself(
    own_redis: RedisProcess,
) -> None:
    queue = RedisQueue.from_settings(redis_settings(own_redis.url))
    q = make_queued("r1", channel="ch")
    try:
        await queue.submit([q])
        reader = asyncio.create_task(queue.read_channel("ch", cursor="", timeout=5.0))
        await asyncio.sleep(0.05)  # let the read block in Redis first
        own_redis.stop()
        calls = [
            reader,
            queue.submit([make_queued("r2")]),
            queue.lease(now=T0 + 1),
            queue.complete([(q, judged(q))]),
            queue.release(["r1"], token="t"),
            queue.extend(["r1"], token="t", now=T0 + 1),
            queue.get("r1"),
            queue.read_channel("ch", cursor="", timeout=1.0),
            queue.sweep(now=T0 + 1),
            queue.stats(now=T0 + 1),
            queue.ping(),
        ]
        message = f"redis at 127.0.0.1:{own_redis.port} unreachable"
        for call in calls:
            started = time.monotonic()
            with pytest.raises(QueueUnavailableError, match=message):
                await call
            assert time.monotonic() - started < 1.0
        started = time.monotonic()
        await queue.wait_for_work(5.0)  # returns at once; the next lease reports the failure
        assert time.monotonic() - started < 1.0

        own_redis.start()  # an empty Redis (no persistence): r1 is lost, the queue works again
        await queue.ping()
        (outcome,) = await queue.submit([make_queued("r3")])
        assert outcome.created
        assert [r.request_id for r in (await queue.lease(now=T0 + 2)).items] == ["r3"]
    finally:
        await queue.close()


async def test_a_closed_queue_refuses_calls_instead_of_reconnecting(redis_url: str) -> None:
    queue = RedisQueue.from_settings(redis_settings(redis_url))
    await queue.submit([make_queued("r1")])
    await queue.close()
    for call in (
        queue.read_channel("ch", cursor="", timeout=1.0),
        queue.submit([make_queued("r2")]),
        queue.lease(now=T0),
    ):
        with pytest.raises(QueueUnavailableError, match="closed"):
            await call


async def test_close_lets_calls_in_progress_finish_and_leaves_no_connection_open(
    redis_url: str, observer: Redis
) -> None:
    queue = RedisQueue.from_settings(redis_settings(redis_url))
    baseline = len(await observer.client_list())
    # Started before close(), still opening its connection when close() begins.
    calls = [asyncio.create_task(queue.stats(now=T0)) for _ in range(3)]
    await asyncio.sleep(0)
    await queue.close()
    assert [(await c).queued for c in calls] == [0, 0, 0]
    assert len(await observer.client_list()) == baseline
