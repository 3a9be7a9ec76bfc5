"""RedisQueue under faults against a real private redis-server: unreadable payloads, a connection
left over from before a restart, and the lost reply of `complete` (through a proxy that loses it).
"""

from __future__ import annotations

import json
import logging

import pytest
from redis.asyncio import Redis

from lps_server.core.domain import ProcessingMode, RequestStatus
from lps_server.core.errors import QueueUnavailableError
from lps_server.processing.results import unreadable
from lps_server.queue.codec import encode_queued
from lps_server.queue.redis_keys import QueueKeys
from lps_server.queue.redis_queue import RedisQueue
from lps_server.queue.redis_scripts import QueueScripts
from tests.queue_support import T0, judged, make_queued, redis_settings
from tests.redis_proxy import ReplyDroppingProxy
from tests.redis_server import RedisProcess

KEYS = QueueKeys("t")


async def complete_sha(redis_url: str) -> bytes:
    """The SHA the complete script runs by (the proxy recognises its command by it), loaded
    into Redis first: in a fresh Redis the first EVALSHA only gets NOSCRIPT and runs nothing,
    and a test that dropped that reply would drop nothing that ran (run alone, the tests that
    use this failed so)."""
    observer = Redis.from_url(redis_url)
    try:
        script = QueueScripts.register(observer).complete
        await observer.script_load(script.script)
        return str(script.sha).encode()
    finally:
        await observer.aclose()


async def test_unreadable_payloads_come_back_apart_with_what_can_be_read(redis_url: str) -> None:
    queue = RedisQueue.from_settings(redis_settings(redis_url))
    observer = Redis.from_url(redis_url)
    good = make_queued("good", group="8:g", at=T0)
    corrupt = make_queued("corrupt", group="8:g", at=T0 + 1, channel="ch-corrupt")
    future = make_queued("future", group="8:g", at=T0 + 2, channel="ch-future")
    try:
        await queue.submit([good, corrupt, future])
        await observer.hset(KEYS.request("corrupt"), "payload", b'{"request": {"request_id"')
        newer = json.loads(encode_queued(future))
        newer["route"]["provider"] = "gemini-9"  # a provider only a newer release knows
        await observer.hset(KEYS.request("future"), "payload", json.dumps(newer))

        lease = await queue.lease(now=T0 + 5, max_items=8)
        assert [q.request_id for q in lease.items] == ["good"]
        by_id = {u.request_id: u for u in lease.unreadable}
        assert set(by_id) == {"corrupt", "future"}
        assert by_id["corrupt"].routable
        assert "does not decode" in by_id["corrupt"].reason
        assert by_id["corrupt"].result_channel == ""  # nothing of it can be read
        assert not by_id["future"].routable
        assert "'gemini-9', unknown to this release" in by_id["future"].reason
        assert (by_id["future"].result_channel, by_id["future"].correlation_id) == (
            "ch-future",
            "corr-future",
        )
        # Held under the lease like the others, and ended by its holder like any request.
        ended = [unreadable(u, T0 + 6, ProcessingMode.SERIAL_BUNDLE) for u in lease.unreadable]
        assert await queue.complete(ended, token=lease.token) == [True, True]
        failed = await queue.get("future")
        assert failed is not None
        assert failed.status == RequestStatus.FAILED
        assert failed.failure is not None
        assert "gemini-9" in failed.failure.message
        entries = await queue.read_channel("ch-future", cursor="", timeout=0)
        assert [e.result.request_id for e in entries] == ["future"]
    finally:
        await queue.close()
        await observer.aclose()


async def test_a_connection_from_before_a_restart_is_replaced_and_the_call_retried_once(
    killable_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    queue = RedisQueue.from_settings(redis_settings(killable_redis.url))
    q = make_queued("r1", channel="ch")
    try:
        await queue.submit([q])
        lease = await queue.lease(now=T0 + 1)  # the pool now holds an open connection
        killable_redis.stop()
        killable_redis.start()  # same port, same data (AOF)
        with caplog.at_level(logging.INFO, logger="lps_server.queue.redis_calls"):
            assert await queue.complete([(q, judged(q))], token=lease.token) == [True]
        assert "retrying once on a new one" in caplog.text
        entries = await queue.read_channel("ch", cursor="", timeout=0)
        assert [e.result.request_id for e in entries] == ["r1"]
    finally:
        await queue.close()


@pytest.mark.parametrize("connection", ["closed", "silent"])
async def test_a_lost_reply_of_complete_is_found_out_and_delivered_once(
    redis_proc: RedisProcess,
    redis_url: str,
    connection: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with ReplyDroppingProxy(redis_proc.port) as proxy:
        queue = RedisQueue.from_settings(redis_settings(proxy.url))
        q = make_queued("r1", channel="ch", reply_to="call-1")
        result = judged(q)
        delivered: list[object] = []
        try:
            with queue.reply_here("call-1", delivered.append):
                await queue.submit([q])
                lease = await queue.lease(now=T0 + 1)
                proxy.drop_reply_to(await complete_sha(redis_url), close=connection == "closed")
                if connection == "closed":
                    # The connection died with the reply: retried at once, and found stored.
                    stored = await queue.complete([(q, result)], token=lease.token)
                else:
                    # No answer at all (a timeout): the caller cannot know; asking again tells.
                    with pytest.raises(QueueUnavailableError):
                        await queue.complete([(q, result)], token=lease.token)
                    assert delivered == []
                    stored = await queue.complete([(q, result)], token=lease.token)
                assert proxy.dropped.is_set(), "the first reply was really lost"
                assert stored == [True]
                assert delivered == [result], "handed to the reader here, once"
            assert await queue.get("r1") == result
            entries = await queue.read_channel("ch", cursor="", timeout=0)
            assert [e.result for e in entries] == [result], "published once"
            assert await queue.read_channel("call-1", cursor="", timeout=0) == []
            assert "stored by an earlier attempt whose reply was lost" in caplog.text
        finally:
            await queue.close()
