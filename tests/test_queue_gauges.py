"""Queue depth and oldest age are read when Prometheus scrapes, not by the periodic sweep, and a
scrape answers from the last reading, saying how old it is, while the backend does not answer."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cj_client import LpsClient
from lps_server.core.errors import QueueUnavailableError
from lps_server.observability.queue_gauges import QueueGauges, QueueReading
from lps_server.queue.redis_calls import COMMAND_TIMEOUT_S
from tests.helpers import GatedMock, results_on, running_app, submission
from tests.redis_server import RedisProcess

# Scrapes answer within SCRAPE_WAIT_S (0.5 s) plus the scrape itself; this only bounds a hang.
SCRAPE_TIMEOUT_S = 5.0
DEADLINE_S = 15.0


def scrape_now(port: int) -> dict[str, float]:
    """One scrape of /metrics: the queue gauges, by sample name and status label."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
        text = response.read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("llm_provider_queue_") and "expiry" not in s.name:
                found[s.name + (f":{s.labels['status']}" if "status" in s.labels else "")] = s.value
    return found


async def scrape(port: int) -> dict[str, float]:
    """A scrape from the metrics server's thread, as Prometheus makes it (the loop stays free)."""
    return await asyncio.to_thread(scrape_now, port)


async def scrape_until(
    port: int,
    what: str,
    check: Callable[[dict[str, float]], bool],
    took: list[tuple[float, float]] | None = None,
) -> dict[str, float]:
    """Scrape until `check(gauges)` holds, with a deadline; each scrape's duration and reading
    age go to `took`."""
    async with asyncio.timeout(DEADLINE_S):
        while True:
            started = time.monotonic()
            gauges = await scrape(port)
            if took is not None:
                age = gauges["llm_provider_queue_stats_age_seconds"]
                took.append((time.monotonic() - started, age))
            if check(gauges):
                return gauges
            await asyncio.sleep(0.05)
    raise AssertionError(f"never saw {what}")  # pragma: no cover (timeout raises first)


def depth(gauges: dict[str, float]) -> tuple[float, float]:
    return gauges["llm_provider_queue_depth:queued"], gauges["llm_provider_queue_depth:processing"]


async def test_a_burst_shows_at_scrape_time_though_the_sweep_never_runs() -> None:
    provider = GatedMock()
    async with (
        running_app(
            provider=provider,
            serve_metrics=True,
            max_concurrent_calls=1,
            queue_sweep_interval_seconds=3600,  # the sweep runs once, at start, on an empty queue
        ) as app,
        LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10) as client,
    ):
        assert app.metrics_port
        assert depth(await scrape(app.metrics_port)) == (0, 0)
        for i in range(20):
            await client.submit(submission(i, result_channel="burst"))
        busy = await scrape_until(app.metrics_port, "19 queued", lambda g: depth(g) == (19, 1))
        assert busy["llm_provider_queue_oldest_age_seconds"] > 0
        assert busy["llm_provider_queue_stats_age_seconds"] <= 1.0
        stats = await client.queue_stats()
        assert (stats.queued, stats.processing) == (19, 1)

        provider.gate.set()
        await results_on(client, "burst", 20)
        idle = await scrape_until(app.metrics_port, "an empty queue", lambda g: depth(g) == (0, 0))
        assert idle["llm_provider_queue_oldest_age_seconds"] == 0


class FreezableRedis(RedisProcess):
    """A private redis-server that can be frozen (SIGSTOP) and thawed, without touching the
    session's; closing thaws it first."""

    def signal(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        os.kill(self._proc.pid, sig)

    def close(self) -> None:
        if self._proc is not None:
            self.signal(signal.SIGCONT)
        super().close()


@pytest.fixture
def frozen_redis() -> Iterator[FreezableRedis]:
    """A started FreezableRedis, closed after the test."""
    proc = FreezableRedis()
    proc.start()
    try:
        yield proc
    finally:
        proc.close()


@pytest.mark.slow
@pytest.mark.redis
async def test_a_scrape_answers_from_the_last_reading_while_redis_is_frozen(
    frozen_redis: FreezableRedis,
) -> None:
    provider = GatedMock()
    async with (
        running_app(
            provider=provider,
            serve_metrics=True,
            queue_backend="redis",
            redis_url=frozen_redis.url,
            max_concurrent_calls=1,
            queue_sweep_interval_seconds=3600,
        ) as app,
        LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10) as client,
    ):
        assert app.metrics_port
        for i in range(6):
            await client.submit(submission(i, result_channel="frozen"))
        await scrape_until(app.metrics_port, "5 queued", lambda g: depth(g) == (5, 1))
        frozen_redis.signal(signal.SIGSTOP)
        try:
            # Scrapes answer from the reading taken before the freeze, without waiting for Redis
            # to time out, and the reading's age grows past the 1 s a fresh one may have.
            took: list[tuple[float, float]] = []
            stale = await scrape_until(
                app.metrics_port,
                "a reading older than 1.5 s",
                lambda g: g["llm_provider_queue_stats_age_seconds"] > 1.5,
                took,
            )
            assert depth(stale) == (5, 1)
            # A scrape that found its reading stale asked for a new one and did not wait for it.
            waited = [duration for duration, age in took if age > 1.0]
            assert waited
            assert min(waited) < 0.75 * COMMAND_TIMEOUT_S, took
        finally:
            frozen_redis.signal(signal.SIGCONT)
        fresh = await scrape_until(
            app.metrics_port,
            "a fresh reading",
            lambda g: g["llm_provider_queue_stats_age_seconds"] <= 1.0,
        )
        assert depth(fresh) == (5, 1)
        provider.gate.set()
        await results_on(client, "frozen", 6)


async def test_without_any_reading_the_queue_gauges_are_absent_rather_than_zero() -> None:
    async def backend_down() -> QueueReading:
        raise QueueUnavailableError("cannot reach Redis")

    gauges = QueueGauges(backend_down)
    await gauges.attach()
    try:
        assert await asyncio.to_thread(lambda: list(gauges.collect())) == []
    finally:
        gauges.detach()
