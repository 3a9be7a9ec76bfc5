"""RedisQueue against a real private redis-server: what only a shared, durable queue must do.

Behaviour both backends share is in test_queue_contract.py (which runs against Redis too).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
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


async def test_lapsed_lease_is_reclaimed_by_another_replica_at_its_position(
    replicas: list[RedisQueue],
) -> None:
    dying, survivor = replicas  # lease_seconds is 30 (the default)
    first = make_queued("first", at=T0, channel="ch")
    await dying.submit([first])
    assert [q.request_id for q in (await dying.lease(now=T0 + 1)).items] == ["first"]
    await survivor.submit([make_queued("later", at=T0 + 2)])
    await dying.extend(["first"], now=T0 + 20)  # a heartbeat moves the deadline to T0 + 50
    assert (await survivor.sweep(now=T0 + 40)).reclaimed == 0
    # The holder stops heart-beating (it died); its lease lapses.
    assert (await survivor.sweep(now=T0 + 51)).reclaimed == 1
    assert (await survivor.get("first")).status == RequestStatus.QUEUED  # type: ignore[union-attr]
    assert [q.request_id for q in (await survivor.lease(now=T0 + 52)).items] == ["first"]
    # Both now complete it: only one result is stored and published.
    stored = [
        await survivor.complete([(first, judged(first, now=T0 + 53))]),
        await dying.complete([(first, judged(first, now=T0 + 54))]),
    ]
    assert stored == [[True], [False]]
    entries = await survivor.read_channel("ch", cursor="", timeout=0)
    assert [e.result.completed_at for e in entries] == [T0 + 53]


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
    await dying.complete([(q, expired_result(q, now=T0 + 68)) for q in found.expired])
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

        batch = [make_queued(f"r{i}", group="8:g", at=T0 + i) for i in range(50)]
        assert await commands_sent(redis_url, queue.submit(batch)) == ["EVALSHA"]
        leasing = queue.lease(now=T0 + 100, max_items=8)
        assert await commands_sent(redis_url, leasing) == ["EVALSHA"]
        done = [(q, judged(q)) for q in batch[:8]]
        assert await commands_sent(redis_url, queue.complete(done)) == ["EVALSHA"]
        assert (await queue.stats(now=T0 + 100)).completed == 8
    finally:
        await queue.close()


async def test_every_key_is_under_the_prefix_hash_tag(redis_url: str, observer: Redis) -> None:
    queue = RedisQueue.from_settings(redis_settings(redis_url))
    other = RedisQueue.from_settings(redis_settings(redis_url, redis_prefix="other"))
    try:
        q = make_queued("r1", group="8:g", deadline=T0 + 50, channel="ch", reply_to="reply")
        await queue.submit([q, make_queued("r2", group="8:g", deadline=T0 + 50)])
        await queue.lease(now=T0 + 1, max_items=1)
        await queue.complete([(q, judged(q))])
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
        await queue.lease(now=T0 + 1)
        await queue.complete([(q, judged(q, now=T0 + 2))])
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
    await queue.release([lease.items[0].request_id])
    await queue.complete([(q, judged(q)) for q in lease.items[1:]])
    await queue.complete([(q, expired_result(q, now=T0 + 11)) for q in lease.expired])
    while found := (await queue.sweep(now=T0 + 100)).expired:
        await queue.complete([(q, expired_result(q, now=T0 + 100)) for q in found])
    fixed = [keys.pending, keys.leases, keys.deadlines, keys.enqueued, keys.group("8:g0")]
    assert await observer.exists(*fixed, keys.group("8:g1")) == 0
    assert int(await observer.hget(keys.meta, "bytes") or 0) == 0
    stats = await queue.stats(now=T0 + 100)
    assert (stats.queued, stats.processing, stats.completed, stats.expired) == (0, 0, 1, 5)


# --- Redis down ------------------------------------------------------------------------------


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
            queue.release(["r1"]),
            queue.extend(["r1"], now=T0 + 1),
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
