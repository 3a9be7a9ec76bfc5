"""Real `lps serve` processes on a private Redis: a replica killed mid-work, Redis restarted."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cj_client import Ack, ComparisonOutcome, LpsClient, UnavailableError
from tests.helpers import submission
from tests.redis_server import RedisProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


class Replica:
    """One `lps serve` process; its log goes to a file so a full pipe can never stall it."""

    def __init__(self, redis_url: str, log: Path, **env: str) -> None:
        self.port = free_port()
        self.log = log
        full_env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "LPS_GRPC_HOST": "127.0.0.1",
            "LPS_GRPC_PORT": str(self.port),
            "LPS_METRICS_PORT": "0",
            "LPS_QUEUE_BACKEND": "redis",
            "LPS_REDIS_URL": redis_url,
            "LPS_MOCK_LATENCY_JITTER": "0",
            **env,
        }
        with log.open("w") as handle:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lps_server.cli", "serve"],
                stderr=handle,
                env=full_env,
                cwd=ROOT,
            )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def wait_serving(self) -> None:
        async with grpc.aio.insecure_channel(self.target) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="lps.v1.LlmProviderService"),
                wait_for_ready=True,
                timeout=30,
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    def completions(self) -> int:
        return self.log.read_text().count('"status":"completed"')

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def redis_aof() -> Iterator[RedisProcess]:
    """A dedicated Redis with an fsync-always AOF, so a restart loses nothing it acknowledged."""
    proc = RedisProcess(appendonly=True)
    proc.start()
    yield proc
    proc.close()


async def collect(client: LpsClient, count: int, prefix: str) -> tuple[list[Ack], Counter[str]]:
    acks: list[Ack] = []
    results: Counter[str] = Counter()
    subs = [submission(i, request_id=f"{prefix}-{i}") for i in range(count)]
    async for event in client.submit_many(subs):
        if isinstance(event, Ack):
            acks.append(event)
        else:
            assert isinstance(event, ComparisonOutcome)
            assert event.status == "completed", event
            results[event.request_id] += 1
    return acks, results


async def test_replica_killed_mid_work_loses_nothing(
    redis_aof: RedisProcess, tmp_path: Path
) -> None:
    env = {
        "LPS_QUEUE_PROCESSING_MODE": "serial_bundle",
        "LPS_QUEUE_LEASE_SECONDS": "2",
        "LPS_QUEUE_SWEEP_INTERVAL_SECONDS": "0.5",
        "LPS_MOCK_LATENCY_MS": "150",
        "LPS_MAX_CONCURRENT_CALLS": "4",
    }
    doomed = Replica(redis_aof.url, tmp_path / "a.log", **env)
    survivor = Replica(redis_aof.url, tmp_path / "b.log", **env)
    try:
        await asyncio.gather(doomed.wait_serving(), survivor.wait_serving())

        async def kill_once_busy() -> int:
            for _ in range(600):  # bounded: 30 s
                if doomed.completions() >= 16:
                    break
                await asyncio.sleep(0.05)
            done_before = doomed.completions()
            doomed.proc.send_signal(signal.SIGKILL)
            return done_before

        async with LpsClient(target=survivor.target) as client:
            killer = asyncio.create_task(kill_once_busy())
            acks, results = await collect(client, 2000, "crash")
            done_by_doomed = await killer
    finally:
        doomed.stop()
        survivor.stop()
    assert done_by_doomed >= 16, "the killed replica was processing when it died"
    assert len(acks) == 2000
    assert all(a.accepted for a in acks)
    assert len(results) == 2000, "every request has a result"
    assert set(results.values()) == {1}, "and exactly one"
    assert "reclaimed" in survivor.log.read_text(), "the dead replica's leases were reclaimed"


async def test_redis_restart_under_load(redis_aof: RedisProcess, tmp_path: Path) -> None:
    replica = Replica(
        redis_aof.url,
        tmp_path / "lps.log",
        LPS_MOCK_LATENCY_MS="40",
        LPS_MAX_CONCURRENT_CALLS="2",
        LPS_QUEUE_LEASE_SECONDS="2",
        LPS_QUEUE_SWEEP_INTERVAL_SECONDS="0.5",
    )
    try:
        await replica.wait_serving()
        async with LpsClient(target=replica.target, timeout=5) as client:

            async def outage() -> str:
                await asyncio.sleep(0.6)  # let the load build up: a deep queue, calls in flight
                redis_aof.stop()
                try:
                    await client.submit(submission(9999, request_id="during-outage"))
                except UnavailableError as exc:
                    message = str(exc)
                else:
                    message = "accepted while redis was down"
                await asyncio.sleep(1.0)
                redis_aof.start()
                return message

            restart = asyncio.create_task(outage())
            acks, results = await collect(client, 150, "load")
            outage_message = await restart
            assert replica.proc.poll() is None, "the server stayed up"
            _, after = await collect(client, 20, "after")
    finally:
        replica.stop()
    assert "redis" in outage_message, outage_message
    assert "unreachable" in outage_message, outage_message
    accepted = {a.request_id for a in acks if a.accepted}
    assert accepted == {f"load-{i}" for i in range(150)}
    assert set(results) == accepted
    assert set(results.values()) == {1}
    assert len(after) == 20
