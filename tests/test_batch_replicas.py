"""Batch jobs survive the replica that made them: two `lps serve` processes on one private Redis,
a fake OpenAI batch server, and the replica creating a job SIGKILLed at the worst moments: after
the job was recorded but before the provider created its batch (the upload hangs), and after the
provider created it but before its id was recorded (the create's answer never arrives). The other
replica collects every result, exactly once, judged right, and no request is in two batches."""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import aclosing
from pathlib import Path

import pytest

from cj_client import Ack, ComparisonSubmission, LpsClient
from tests.fake_batch_servers import FakeOpenAIBatches, expected_winner
from tests.fault_rig import Replica, marked
from tests.helpers import results_on
from tests.redis_server import RedisProcess

pytestmark = pytest.mark.slow
KEYS = {"a": "key-a", "b": "key-b"}
ENV = {
    "LPS_QUEUE_PROCESSING_MODE": "batch_api",
    "LPS_SERIAL_BUNDLE_MAX_REQUESTS_PER_CALL": "3",
    "LPS_BATCH_API_MAX_WAIT_MS": "100",
    "LPS_BATCH_API_POLL_SECONDS": "0.1",
    "LPS_QUEUE_LEASE_SECONDS": "2",
    "LPS_QUEUE_SWEEP_INTERVAL_SECONDS": "0.5",
    "LPS_OPENAI_TIMEOUT_SECONDS": "2",
    "LPS_RETRY_BACKOFF_MS": "1",
}
WAIT_S = 40.0


async def queue_at_once(client: LpsClient, subs: list[ComparisonSubmission]) -> None:
    """Queue `subs` in one stream message (one submission), reading only their acks."""
    acks = 0
    async with aclosing(client.submit_many(subs)) as events:
        async for event in events:
            assert isinstance(event, Ack), event
            assert event.accepted, event
            acks += 1
            if acks == len(subs):
                return


def batched_ids(fake: FakeOpenAIBatches) -> Counter[str]:
    """How many created batches hold each request (by the marker in its line's prompt)."""
    found: Counter[str] = Counter()
    for batch_id in fake.created:
        found.update({rid for line in fake.line_requests(batch_id) for rid in line})
    return found


@pytest.mark.parametrize(
    ("hang", "moment"),
    [
        ("/v1/files", "recorded, not yet created at the provider"),
        ("/v1/batches", "created at the provider, its id not yet recorded"),
    ],
)
async def test_a_replica_killed_while_creating_a_job_loses_nothing_and_pays_once(
    killable_redis: RedisProcess, tmp_path: Path, hang: str, moment: str
) -> None:
    async with FakeOpenAIBatches(api_key=KEYS.values()) as fake:
        fake.hang_next("POST", hang)
        replicas = {
            name: Replica(
                name,
                redis_url=killable_redis.url,
                provider=fake,  # type: ignore[arg-type]
                log_dir=tmp_path,
                env=ENV,
                api_key=key,
            )
            for name, key in KEYS.items()
        }
        try:
            await asyncio.gather(*(r.started() for r in replicas.values()))
            subs = [marked(f"kill-{i}", i, result_channel="kill") for i in range(9)]
            async with LpsClient(target=replicas["a"].target, timeout=10) as client:
                for sub in subs:
                    await client.submit(sub)
            # The creator is the replica whose request hangs: kill it right there.
            await fake.wait_until(
                lambda: bool(fake.hanging), timeout=WAIT_S, what=f"a job {moment}"
            )
            key = fake.hanging[0].headers["authorization"].removeprefix("Bearer ")
            creator = next(name for name, k in KEYS.items() if k == key)
            replicas[creator].kill()
            survivor = replicas["b" if creator == "a" else "a"]
            async with LpsClient(target=survivor.target, timeout=10) as client:
                results = await asyncio.wait_for(results_on(client, "kill", len(subs)), WAIT_S)
        finally:
            for replica in replicas.values():
                replica.kill()
        assert fake.problems == []
        in_batches = batched_ids(fake)
    assert sorted(r.request_id for r in results) == sorted(s.request_id for s in subs)
    assert Counter(r.request_id for r in results) == Counter({s.request_id: 1 for s in subs})
    for result in results:
        assert result.status == "completed", result
        expected = "essay_a" if expected_winner(result.request_id) == "A" else "essay_b"
        assert result.winner == expected
    assert in_batches == Counter({s.request_id: 1 for s in subs}), "each request in one batch"
    if hang == "/v1/batches":
        assert "found batch" in survivor.log(), "the lost batch was found, not made again"


async def test_a_replica_killed_while_gathering_a_job_loses_nothing(
    killable_redis: RedisProcess, tmp_path: Path
) -> None:
    """Killed with a job still gathering (its requests leased, nothing recorded): the leases
    lapse, and the next replica gathers the requests into a job of its own."""
    async with FakeOpenAIBatches(api_key=KEYS.values()) as fake:
        slow = Replica(
            "a",
            redis_url=killable_redis.url,
            provider=fake,  # type: ignore[arg-type]
            log_dir=tmp_path,
            env={**ENV, "LPS_BATCH_API_MAX_WAIT_MS": "600000"},
            api_key=KEYS["a"],
        )
        survivor: Replica | None = None
        try:
            await slow.started()
            subs = [marked(f"gather-{i}", i, result_channel="gather") for i in range(6)]
            async with LpsClient(target=slow.target, timeout=10) as client:
                for sub in subs:
                    await client.submit(sub)
                for _ in range(500):  # bounded: leased within milliseconds of the submission
                    if (await client.queue_stats()).processing == len(subs):
                        break
                    await asyncio.sleep(0.01)
                assert (await client.queue_stats()).processing == len(subs)
            slow.kill()
            # The six leases were taken one by one, so they may lapse on either side of a sweep
            # (a loaded machine did that) and come back in two sweeps: the survivor gathers for
            # four sweep intervals, so that both reach its one job.
            survivor = Replica(
                "b",
                redis_url=killable_redis.url,
                provider=fake,  # type: ignore[arg-type]
                log_dir=tmp_path,
                env={**ENV, "LPS_BATCH_API_MAX_WAIT_MS": "2000"},
                api_key=KEYS["b"],
            )
            await survivor.started()
            async with LpsClient(target=survivor.target, timeout=10) as client:
                results = await asyncio.wait_for(results_on(client, "gather", len(subs)), WAIT_S)
        finally:
            slow.kill()
            if survivor is not None:
                survivor.kill()
        assert fake.problems == []
        assert len(fake.created) == 1
        in_batches = batched_ids(fake)
    assert Counter(r.request_id for r in results) == Counter({s.request_id: 1 for s in subs})
    assert all(r.status == "completed" for r in results)
    assert in_batches == Counter({s.request_id: 1 for s in subs})
    assert "reclaimed" in survivor.log()


async def test_a_replica_frozen_while_creating_leaves_the_batch_to_the_one_that_took_over(
    killable_redis: RedisProcess, tmp_path: Path
) -> None:
    """The creator freezes (SIGSTOP) after the provider made the batch, longer than its claim;
    the other replica takes the job over and finds the batch; the creator, thawed, gets the
    provider's answer late and must neither record it nor cancel the batch now in use."""
    async with FakeOpenAIBatches(api_key=KEYS.values()) as fake:
        fake.delay_next("POST", "/v1/batches", 1.5)
        replicas = {
            name: Replica(
                name,
                redis_url=killable_redis.url,
                provider=fake,  # type: ignore[arg-type]
                log_dir=tmp_path,
                # Six comparisons a line, leased at once: one job, on one replica.
                env={
                    **ENV,
                    "LPS_OPENAI_TIMEOUT_SECONDS": "30",
                    "LPS_SERIAL_BUNDLE_MAX_REQUESTS_PER_CALL": "6",
                },
                api_key=key,
            )
            for name, key in KEYS.items()
        }
        try:
            await asyncio.gather(*(r.started() for r in replicas.values()))
            subs = [marked(f"frozen-{i}", i, result_channel="frozen") for i in range(6)]
            async with LpsClient(target=replicas["a"].target, timeout=10) as client:
                await queue_at_once(client, subs)
            await fake.wait_until(lambda: bool(fake.hanging), timeout=WAIT_S, what="a create")
            key = fake.hanging[0].headers["authorization"].removeprefix("Bearer ")
            creator = replicas[next(name for name, k in KEYS.items() if k == key)]
            survivor = replicas["b" if creator.name == "a" else "a"]
            creator.freeze()
            # Thawed once the other replica has found the batch (it polls it then).
            await fake.wait_until(
                lambda: fake.polls[fake.created[0]] > 0, timeout=WAIT_S, what="the takeover"
            )
            creator.thaw()
            async with LpsClient(target=survivor.target, timeout=10) as client:
                results = await asyncio.wait_for(results_on(client, "frozen", len(subs)), WAIT_S)
        finally:
            for replica in replicas.values():
                replica.kill()
        assert fake.problems == []
        assert len(fake.created) == 1
        batch = fake.batches[fake.created[0]]
        assert batch.cancel_asked is None, "the batch in use was not cancelled"
    assert Counter(r.request_id for r in results) == Counter({s.request_id: 1 for s in subs})
    assert all(r.status == "completed" for r in results), [r.error_message for r in results]
