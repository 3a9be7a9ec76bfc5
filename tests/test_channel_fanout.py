"""The Redis queue's one channel reader per replica: channels added while it blocks, slow
followers, entries it cannot read, and Redis going away and coming back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from lps_server.core.errors import QueueUnavailableError
from lps_server.queue.base import ChannelEntry, ChannelFollower
from lps_server.queue.redis_channels import READ_COUNT
from lps_server.queue.redis_keys import QueueKeys
from lps_server.queue.redis_queue import RedisQueue
from tests.queue_support import T0, judged, make_queued, redis_settings
from tests.redis_server import RedisProcess

pytestmark = pytest.mark.redis
KEYS = QueueKeys("t")


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[RedisQueue]:
    built = RedisQueue.from_settings(redis_settings(redis_url))
    yield built
    await built.close()


async def publish(queue: RedisQueue, channel: str, ids: list[str]) -> None:
    batch = [make_queued(rid, channel=channel, at=T0 + n) for n, rid in enumerate(ids)]
    await queue.submit(batch)
    await queue.complete([(q, judged(q)) for q in batch])


async def read_until(follower: ChannelFollower, count: int) -> list[ChannelEntry]:
    got: list[ChannelEntry] = []
    async with asyncio.timeout(10):
        while len(got) < count:
            got += await follower.read(5.0)
    return got


async def read_until_it_fails(follower: ChannelFollower) -> None:
    async with asyncio.timeout(5):
        while True:
            await follower.read(5.0)


async def wait_blocked_in_xread(redis_url: str) -> None:
    """Until some client of the test Redis sits in a blocking XREAD (bounded: 5 s)."""
    async with aioredis.from_url(redis_url, decode_responses=True) as observer:
        for _ in range(250):
            clients = await observer.client_list()
            if any(c["cmd"] == "xread" and "b" in c["flags"] for c in clients):
                return
            await asyncio.sleep(0.02)
    raise AssertionError("the channel reader never blocked in XREAD")


async def test_a_channel_followed_while_the_read_blocks_is_read_at_once(
    queue: RedisQueue, redis_url: str
) -> None:
    with queue.follow("first", cursor="") as first:
        idle = asyncio.create_task(first.read(20.0))
        await wait_blocked_in_xread(redis_url)  # blocks for up to 10 s on "first" alone
        with queue.follow("second", cursor="") as second:
            started = time.monotonic()
            await publish(queue, "second", ["s1"])
            entries = await second.read(20.0)
            # Woken by the new follower, not by the end of the 10 s block.
            assert time.monotonic() - started < 2.0
        assert [e.result.request_id for e in entries] == ["s1"]
        assert not idle.done()
        idle.cancel()


async def test_a_slow_follower_holds_back_nobody_and_misses_nothing(queue: RedisQueue) -> None:
    total = 2 * READ_COUNT + 50
    ids = [f"r{i:04d}" for i in range(total)]
    with queue.follow("busy", cursor="") as slow, queue.follow("busy", cursor="") as fast:
        for start in range(0, total, 100):
            await publish(queue, "busy", ids[start : start + 100])
        fast_got = await read_until(fast, total)  # the slow one has not read at all meanwhile
        slow_got = await read_until(slow, total)
    assert [e.result.request_id for e in fast_got] == ids
    assert [e.result.request_id for e in slow_got] == ids
    assert len({e.cursor for e in slow_got}) == total


async def test_an_entry_that_cannot_be_read_is_skipped_and_the_stream_goes_on(
    queue: RedisQueue, redis_url: str
) -> None:
    async with aioredis.from_url(redis_url) as raw:
        await raw.xadd(KEYS.channel("mixed"), {"r": b"\x00not a result"})
    await publish(queue, "mixed", ["after"])
    with queue.follow("mixed", cursor="") as follower:
        entries = await follower.read(5.0)
    assert [e.result.request_id for e in entries] == ["after"]


async def test_a_follower_learns_of_an_outage_and_goes_on_after_it(
    killable_redis: RedisProcess,
) -> None:
    queue = RedisQueue.from_settings(redis_settings(killable_redis.url))
    try:
        with queue.follow("ch", cursor="") as follower:
            await publish(queue, "ch", ["before"])
            assert [e.result.request_id for e in await read_until(follower, 1)] == ["before"]
            killable_redis.stop()
            with pytest.raises(QueueUnavailableError, match="unreachable"):
                await read_until_it_fails(follower)
            killable_redis.start()
            async with asyncio.timeout(10):
                while True:
                    try:
                        await queue.ping()
                        break
                    except QueueUnavailableError:
                        await asyncio.sleep(0.05)  # the server is still starting
            await publish(queue, "ch", ["after"])
            got: list[ChannelEntry] = []
            async with asyncio.timeout(10):
                while not got:
                    try:
                        got = await follower.read(5.0)
                    except QueueUnavailableError:
                        continue  # a failure of the outage, reported once per failed read
        assert [e.result.request_id for e in got] == ["after"]
    finally:
        await queue.close()
