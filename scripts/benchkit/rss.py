"""rss: resident memory of `lps serve` with 100,000 requests waiting in Redis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis

from benchkit.common import BenchError, new_tag, workload
from benchkit.processes import Run, lps_serve
from cj_client.client import LpsClient
from cj_client.models import ComparisonOutcome


async def measure_rss(run: Run) -> dict[str, Any]:
    """VmRSS of `lps serve` holding `rss_n` queued requests in Redis, processing held."""
    n, tag = run.sizes.rss_n, new_tag("rss")
    with lps_serve(
        "lps-rss", run, queue_backend="redis", redis_url=run.redis.target, redis_prefix=tag,
        queue_processing_mode="per_request", max_concurrent_calls=1, mock_latency_ms=3_600_000,
        queue_max_size=2 * n, shutdown_grace_seconds=1,
    ) as lps:  # fmt: skip
        idle_kb = lps.child.status_kb("VmRSS")
        subs = workload(n + 1, tag=tag)  # + the one request the blocked call holds
        acks = 0
        started = time.perf_counter()
        async with LpsClient(target=lps.target, timeout=30) as client:
            events = client.submit_many(subs, chunk=512)
            try:
                async with asyncio.timeout(60 + n / 200):
                    async for event in events:
                        if isinstance(event, ComparisonOutcome) or not event.accepted:
                            raise BenchError(f"unexpected event {event}")
                        acks += 1
                        if acks == len(subs):
                            break
                submit_s = time.perf_counter() - started
                stats = await client.queue_stats()
                rss_kb, peak_kb = lps.child.status_kb("VmRSS"), lps.child.status_kb("VmHWM")
            finally:
                await events.aclose()  # cancels the call
        redis_bytes = redis.Redis.from_url(run.redis.target).info("memory")["used_memory"]
    return {
        "figures": {"rss_mb_100k": rss_kb / 1024},
        "details": {
            "requests_queued": stats.queued,
            "requests_leased": stats.processing,
            "submitted_per_s": len(subs) / submit_s,
            "rss_idle_mb": idle_kb / 1024,
            "rss_peak_mb": peak_kb / 1024,
            "redis_used_memory_mb": redis_bytes / 2**20,
            "note": "VmRSS while the submitting stream is still open, waiting for its results",
        },
    }
