"""Drain: SIGTERM to an `lps serve` replica with bundles in flight loses nothing.

Two real processes share a private Redis. Replica A takes work and is sent SIGTERM while its
bundles are in flight: it refuses new calls (UNAVAILABLE, health NOT_SERVING), finishes those
bundles, leaves the queued work in Redis and exits 0. Replica B, started afterwards, completes the
rest; every request ends exactly once.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cj_client import LpsClient, UnavailableError
from lps_server.core.config import Settings
from lps_server.queue.redis_queue import RedisQueue
from tests.helpers import submission

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
N = 40
LATENCY_MS = 600
START_TIMEOUT_S = 30
_LISTENING = re.compile(r"lps listening grpc=127\.0\.0\.1:(\d+) metrics=127\.0\.0\.1:(\d+)")


class Replica:
    """An `lps serve` process logging to a file."""

    def __init__(self, name: str, redis_url: str, log_dir: Path) -> None:
        self.log = log_dir / f"{name}.log"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "LPS_GRPC_HOST": "127.0.0.1",
            "LPS_METRICS_HOST": "127.0.0.1",
            "LPS_QUEUE_BACKEND": "redis",
            "LPS_REDIS_URL": redis_url,
            "LPS_QUEUE_PROCESSING_MODE": "serial_bundle",
            "LPS_SERIAL_BUNDLE_MAX_REQUESTS_PER_CALL": "4",
            "LPS_MAX_CONCURRENT_CALLS": "2",
            "LPS_MOCK_LATENCY_MS": str(LATENCY_MS),
            "LPS_MOCK_LATENCY_JITTER": "0",
        }
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lps_server.cli",
                    "serve",
                    "--port",
                    "0",
                    "--metrics-port",
                    "0",
                ],
                stderr=out,
                stdout=subprocess.DEVNULL,
                env=env,
                cwd=ROOT,
            )
        self.grpc_port = 0
        self.metrics_port = 0

    async def started(self) -> None:
        """Wait (bounded) for the line that names the bound ports."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (match := _LISTENING.search(self.log.read_text())):
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the replica never logged its ports"
            await asyncio.sleep(0.05)
        self.grpc_port, self.metrics_port = int(match.group(1)), int(match.group(2))

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    async def exit_code(self, timeout: float) -> int:
        return await asyncio.to_thread(self.proc.wait, timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextmanager
def replica(name: str, redis_url: str, log_dir: Path) -> Iterator[Replica]:
    r = Replica(name, redis_url, log_dir)
    try:
        yield r
    finally:
        r.kill()


@asynccontextmanager
async def redis_queue(redis_url: str) -> AsyncIterator[RedisQueue]:
    """The shared queue as the replicas see it, for reading what Redis holds."""
    queue = RedisQueue.from_settings(
        Settings.from_env({"LPS_QUEUE_BACKEND": "redis", "LPS_REDIS_URL": redis_url})
    )
    try:
        yield queue
    finally:
        await queue.close()


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float, what: str) -> None:
    """Poll an async predicate (bounded) until it holds."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_sigterm_finishes_bundles_in_flight_and_leaves_the_rest_to_another_replica(
    redis_url: str, tmp_path: Path
) -> None:
    ids = [f"req-{i}" for i in range(N)]
    with replica("a", redis_url, tmp_path) as a:
        await a.started()
        async with LpsClient(target=a.target, timeout=10) as client:
            for i in range(N):
                await client.submit(submission(i, result_channel="drained"))

            async def in_flight() -> bool:
                return (await client.queue_stats()).processing > 0

            await eventually(in_flight, timeout=10, what="A to lease a bundle")
            processing = {rid for rid in ids if (await client.get(rid)).status == "processing"}
            a.proc.send_signal(signal.SIGTERM)

            refusals: list[str] = []

            async def refusing() -> bool:
                try:
                    await client.queue_stats()
                except UnavailableError as exc:
                    refusals.append(str(exc))
                return bool(refusals)

            await eventually(refusing, timeout=5, what="A to refuse new calls")
            assert "shutting down" in refusals[0]  # refused by A itself, not by a closed port
            with pytest.raises(UnavailableError, match="shutting down"):
                await client.submit(submission(N + 1))
            async with grpc.aio.insecure_channel(a.target) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await a.exit_code(timeout=30) == 0
        log_a = a.log.read_text()
    assert processing, "SIGTERM should have found bundles in flight"
    assert "grace period" not in log_a  # in-flight work finished, nothing was cut short

    async with redis_queue(redis_url) as queue:
        stats = await queue.stats(now=time.time())
        done_by_a = {rid for rid in ids if (r := await queue.get(rid)) and r.status.is_final}
    assert stats.processing == 0, "A left leases behind"
    assert processing <= done_by_a, "A did not finish every bundle it had in flight"
    assert stats.queued == N - len(done_by_a) > 0, "queued work stays in Redis for others"

    with replica("b", redis_url, tmp_path) as b:
        await b.started()
        async with LpsClient(target=b.target, timeout=10) as client:

            async def settled() -> bool:
                s = await client.queue_stats()
                return s.queued + s.processing == 0

            await eventually(settled, timeout=60, what="B to finish the queue")
            outcomes = [await client.get(rid) for rid in ids]
            published: list[str] = []
            async for _, outcome in client.stream_results("drained"):
                published.append(outcome.request_id)
                if len(published) == N:
                    break
            async with httpx.AsyncClient(timeout=5) as http:
                scrape = await http.get(f"http://127.0.0.1:{b.metrics_port}/metrics")
            metrics = scrape.text
    assert {o.status for o in outcomes} == {"completed"}
    assert sorted(published) == sorted(ids), "each result is published once"
    by_b = re.search(r'^llm_provider_requests_total\{[^}]*status="completed"[^}]*\} (\S+)$',
                     metrics, re.M)  # fmt: skip
    assert by_b is not None
    assert float(by_b.group(1)) == N - len(done_by_a), "B redid none of A's work"
