"""Exactly-once provider spend under faults, with real `lps serve` processes and a private
redis-server: each test checks what the client saw and what the provider was asked, per request.

* Redis frozen for less than a lease while calls run: no lease lapses, nothing is asked twice.
* A bundle filling for longer than a lease: nothing is asked twice.
* A replica frozen past its lease: another replica redoes its work (the one case where the
  provider is asked twice), the client sees one result each, the late answer is dropped.
* Redis restarted (AOF) while calls run: the finished results are stored, not paid for again.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cj_client import LpsClient
from tests.fake_llm_servers import FakeOpenAI
from tests.fault_rig import Launch, launcher, marked, results_of
from tests.redis_server import RedisProcess

pytestmark = [pytest.mark.redis, pytest.mark.slow]
SERIAL = {"LPS_QUEUE_PROCESSING_MODE": "serial_bundle"}


@pytest.fixture
def start(killable_redis: RedisProcess, provider: FakeOpenAI, tmp_path: Path) -> Launch:
    """Starts replicas on this test's Redis, calling `provider`."""
    return launcher(redis_url=killable_redis.url, provider=provider, log_dir=tmp_path)


@pytest.fixture
async def provider() -> AsyncIterator[FakeOpenAI]:
    """The fake OpenAI server every replica calls (each with its own key)."""
    async with FakeOpenAI(api_key="key-a", also_accept=("key-b",)) as server:
        yield server


def once_each(ids: list[str]) -> Counter[str]:
    return Counter(dict.fromkeys(ids, 1))


async def test_redis_frozen_for_less_than_a_lease_reclaims_nothing_and_asks_nothing_twice(
    killable_redis: RedisProcess, start: Launch, provider: FakeOpenAI
) -> None:
    # Lease 6 s, extended every 2 s; Redis frozen 3.2 s, longer than the 2 s command timeout:
    # an extension sent into the freeze fails, and the one after it must land in time.
    provider.latency_s = 7.0  # calls outlast the lease: only extensions keep them
    waves = [[f"w{w}-{i}" for i in range(8)] for w in range(2)]
    async with start(
        ["a"],
        LPS_QUEUE_LEASE_SECONDS="6",
        LPS_QUEUE_SWEEP_INTERVAL_SECONDS="0.25",
        LPS_MAX_CONCURRENT_CALLS="4",
        **SERIAL,
    ) as (a,):
        async with LpsClient(target=a.target, timeout=30) as client:
            first = asyncio.create_task(
                results_of(client, [marked(r) for r in waves[0]], timeout=40)
            )
            await provider.wait_until(lambda: len(provider.calls) == 1, timeout=15, what="call 1")
            # Half a heartbeat apart, the two bundles' extensions cannot both miss the freeze.
            await asyncio.sleep(1.0)
            second = asyncio.create_task(
                results_of(client, [marked(r) for r in waves[1]], timeout=40)
            )
            await provider.wait_until(lambda: len(provider.calls) == 2, timeout=15, what="call 2")
            killable_redis.pause()
            await asyncio.sleep(3.2)  # the length of the fault, not a wait for an event
            killable_redis.resume()
            (seen_1, _), (seen_2, _) = await asyncio.gather(first, second)
        log = a.log()
    ids = waves[0] + waves[1]
    assert seen_1 + seen_2 == once_each(ids), "every request has exactly one result"
    assert provider.asked() == once_each(ids), "the provider was asked once per request"
    assert len(provider.calls) == 2
    assert "could not extend the leases" in log, "the freeze did hit an extension"
    assert "reclaimed" not in log
    assert "lapsed" not in log


async def test_a_bundle_filling_for_longer_than_its_lease_asks_nothing_twice(
    start: Launch, provider: FakeOpenAI
) -> None:
    ids = [f"r{i}" for i in range(5)]
    async with start(
        ["a"],
        LPS_QUEUE_LEASE_SECONDS="1.5",
        LPS_QUEUE_SWEEP_INTERVAL_SECONDS="0.2",
        LPS_SERIAL_BUNDLE_MAX_WAIT_MS="3000",  # two lease periods waiting for 3 more requests
        **SERIAL,
    ) as (a,):
        async with LpsClient(target=a.target, timeout=30) as client:
            started = time.monotonic()
            seen, outcomes = await results_of(client, [marked(r) for r in ids], timeout=30)
        log = a.log()
    assert time.monotonic() - started >= 3.0, "the bundle did wait out its fill window"
    assert seen == once_each(ids)
    assert {o.status for o in outcomes.values()} == {"completed"}
    assert [call.items for call in provider.calls] == [ids], "one call, each request once"
    assert "reclaimed" not in log


async def test_a_replica_frozen_past_its_lease_has_its_late_answer_dropped(
    start: Launch, provider: FakeOpenAI
) -> None:
    provider.latency_s = 1.5
    ids = [f"r{i}" for i in range(8)]
    async with start(
        ["a", "b"],
        LPS_QUEUE_LEASE_SECONDS="2",
        LPS_QUEUE_SWEEP_INTERVAL_SECONDS="0.2",
        LPS_SERIAL_BUNDLE_MAX_REQUESTS_PER_CALL="4",
        LPS_MAX_CONCURRENT_CALLS="1",  # one bundle of 4 per replica: a holds exactly 4
        **SERIAL,
    ) as (a, b):
        async with LpsClient(target=b.target, timeout=30) as client:
            run = asyncio.create_task(results_of(client, [marked(r) for r in ids], timeout=40))
            await provider.wait_until(
                lambda: any(c.key == "key-a" for c in provider.calls), timeout=15, what="a's call"
            )
            a.freeze()  # mid-call: its answer arrives while it cannot read it
            seen, outcomes = await run
            a.thaw()
            deadline = time.monotonic() + 15
            while (lost := await a.metric("llm_provider_lease_lost_total")) < 4:
                assert time.monotonic() < deadline, f"a found {lost} of its 4 leases lost"
                await asyncio.sleep(0.1)  # a's state, read from its /metrics: nothing to await
            dropped = await a.metric("llm_provider_lease_lost_total", stage="after_call")
            billed = await a.metric("llm_provider_tokens_used_total", type="output")
            stored = {rid: await client.get(rid) for rid in ids}
        log_a = a.log()
    asked_by_a = provider.asked("key-a")
    assert asked_by_a, "a was asked before it froze"
    assert seen == once_each(ids), "the client saw one result per request"
    assert {o.status for o in outcomes.values()} == {"completed"}
    assert {s.status for s in stored.values()} == {"completed"}
    # b asked once for everything; a for the bundle it was calling when it froze.
    assert provider.asked() == once_each(ids) + asked_by_a
    assert len(asked_by_a) == 4
    assert set(asked_by_a.values()) == {1}
    assert dropped == 4, "every late answer of a was dropped and counted"
    # The provider billed a's call all the same: its tokens count, though nothing was stored.
    calls_by_a = sum(1 for c in provider.calls if c.key == "key-a")
    assert billed == calls_by_a * provider.usage[1], "a's dropped call counts its tokens once"
    assert "lost the lease" in log_a
    assert "reclaimed" in b.log()


async def test_redis_restarted_while_calls_run_stores_what_they_finished(
    killable_redis: RedisProcess, start: Launch, provider: FakeOpenAI
) -> None:
    provider.latency_s = 1.2
    ids = [f"r{i}" for i in range(8)]
    async with start(
        ["a"],
        LPS_QUEUE_LEASE_SECONDS="5",
        LPS_QUEUE_SWEEP_INTERVAL_SECONDS="0.25",
        LPS_SERIAL_BUNDLE_MAX_REQUESTS_PER_CALL="4",
        LPS_MAX_CONCURRENT_CALLS="2",
        **SERIAL,
    ) as (a,):
        async with LpsClient(target=a.target, timeout=30) as client:
            run = asyncio.create_task(results_of(client, [marked(r) for r in ids], timeout=40))
            await provider.wait_until(lambda: len(provider.calls) == 2, timeout=15, what="calls")
            killable_redis.stop()  # a crash...
            killable_redis.start()  # ...and a restart from the AOF, while both calls still run
            assert not any(c.answered.is_set() for c in provider.calls), "restarted mid-call"
            seen, outcomes = await run
        assert a.proc.poll() is None, "the replica stayed up"
        log = a.log()
    assert seen == once_each(ids)
    assert {o.status for o in outcomes.values()} == {"completed"}
    assert provider.asked() == once_each(ids), "finished results stored, not paid for again"
    assert "retrying once on a new one" in log, "a connection from before the restart was met"
    assert "reclaimed" not in log
