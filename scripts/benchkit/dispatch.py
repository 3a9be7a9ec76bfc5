"""dispatch: enqueue -> provider call latency at a paced unary load, LPS in this process; alone,
and beside a slow provider whose backlog was queued first."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchkit.common import BUNDLE_MAX, BUNDLED, ROOT, SCRIPT, BenchError, new_tag, workload
from benchkit.processes import Run, calls_per, child_env, dying_with_parent, redis_calls
from cj_client.transport import submission_to_pb
from lps_server.app import LpsApp
from lps_server.core.config import Settings
from lps_server.core.domain import ProviderName
from lps_server.edge.convert import request_from_pb
from lps_server.observability.logs import JsonFormatter
from lps_server.providers import Provider, ProviderRegistry
from lps_server.providers.mock import MockProvider
from lps_server.queue.redis_queue import RedisQueue

# The slow provider beside the measured one: a call of a full bundle takes a second, and its
# backlog outlasts the measurement.
SLOW_CALL_MS = 1000.0
SLOW_CALLS = 4  # LPS_MAX_CONCURRENT_CALLS, for each provider


class SlowProvider(MockProvider):
    """The mock judge under OpenAI's name, answering after SLOW_CALL_MS."""

    def __init__(self) -> None:
        super().__init__(latency_ms=SLOW_CALL_MS, jitter=0.0)

    @property
    def name(self) -> ProviderName:
        """Served as the OpenAI provider."""
        return ProviderName.OPENAI


@dataclass
class DispatchLog:
    """When each request was enqueued, leased and handed to the provider (time.time())."""

    expected: int
    enqueued: dict[str, float] = field(default_factory=dict)
    leased: dict[str, float] = field(default_factory=dict)
    dispatched: dict[str, float] = field(default_factory=dict)
    all_dispatched: asyncio.Event = field(default_factory=asyncio.Event)


class LeaseRecorder:
    """The Redis queue, noting the enqueued_at and lease time of every leased request."""

    def __init__(self, inner: RedisQueue, log: DispatchLog) -> None:
        self._inner = inner
        self._log = log

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def lease(self, **kwargs: Any) -> Any:
        """Lease from the inner queue and note the times."""
        lease = await self._inner.lease(**kwargs)
        now = time.time()
        for q in lease.items:
            self._log.enqueued.setdefault(q.request_id, q.enqueued_at)
            self._log.leased.setdefault(q.request_id, now)
        return lease


class DispatchRecorder:
    """The mock provider, noting when each item reaches it."""

    def __init__(self, inner: MockProvider, log: DispatchLog) -> None:
        self._inner = inner
        self._log = log
        self.name = inner.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def compare(self, items: Sequence[Any], **kwargs: Any) -> Any:
        """Note the dispatch time of each item, then judge."""
        now = time.time()
        for item in items:
            self._log.dispatched.setdefault(item.key, now)
        if len(self._log.dispatched) >= self._log.expected:
            self._log.all_dispatched.set()
        return await self._inner.compare(items, **kwargs)


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    """p50, p90, p99 and max, in milliseconds."""
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return {"p50": cuts[49] * 1e3, "p90": cuts[89] * 1e3, "p99": cuts[98] * 1e3,
            "max": max(seconds) * 1e3}  # fmt: skip


@contextlib.contextmanager
def logging_like_lps_serve(path: Path, level: str) -> Iterator[None]:
    """Log as `lps serve` does (JSON lines at `level`), to a file, for an in-process LPS."""
    handler = logging.FileHandler(path)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level.upper())
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


async def queue_slow_backlog(app: LpsApp, n: int, tag: str) -> None:
    """Queue `n` requests for the slow provider, ahead of everything the pacer sends."""
    subs = [replace(s, provider="openai") for s in workload(n, tag=f"{tag}-slow")]
    prepared = [
        app.intake.prepare(request_from_pb(submission_to_pb(s), request_id=s.request_id))
        for s in subs
    ]
    await app.intake.submit(prepared)


async def dispatch_at(
    run: Run, rate: float, n: int, *, beside_slow: bool = False
) -> dict[str, Any]:
    """Stage latencies of `n` unary submissions paced at `rate`/s, after 20 unmeasured ones;
    with `beside_slow`, while a slow provider works through a backlog queued before them."""
    warmup, tag = 20, new_tag("dispatch")
    settings = Settings.from_env(
        {}, grpc_host="127.0.0.1", grpc_port=0, queue_backend="redis",
        redis_url=run.redis.target, redis_prefix=tag, max_concurrent_calls=SLOW_CALLS, **BUNDLED,
    )  # fmt: skip
    log = DispatchLog(expected=warmup + n)
    measured: list[Provider] = [DispatchRecorder(MockProvider(), log)]  # type: ignore[list-item]
    providers = ProviderRegistry(measured + ([SlowProvider()] if beside_slow else []))
    queue = LeaseRecorder(RedisQueue.from_settings(settings), log)
    # Enough slow work to keep every slow call slot busy until the last measured request.
    backlog = round((2.0 + (n + warmup) / rate) * SLOW_CALLS * BUNDLE_MAX * 1000 / SLOW_CALL_MS)
    with logging_like_lps_serve(run.logdir / f"{tag}.log", run.log_level):
        app = LpsApp(settings, providers=providers, queue=queue)
        if beside_slow:
            await queue_slow_backlog(app, backlog, tag)
        await app.start(serve_metrics=False)
        try:
            argv = [sys.executable, str(SCRIPT), "--role", "pace", "--tag", tag,
                    "--target", f"127.0.0.1:{app.grpc_port}", "--rate", str(rate),
                    "--count", str(n), "--warmup", str(warmup)]  # fmt: skip
            calls = await asyncio.to_thread(redis_calls, run.redis.target)
            cpu_before = time.process_time(), run.redis.child.cpu_s()
            pacer = await asyncio.create_subprocess_exec(
                *dying_with_parent(argv), env=child_env(), cwd=ROOT,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            try:
                async with asyncio.timeout(60 + (n + warmup) / rate):
                    out, err = await pacer.communicate()
                    if pacer.returncode != 0:
                        raise BenchError(f"pacer failed: {err.decode()[-2000:]}")
                    await log.all_dispatched.wait()
            finally:
                if pacer.returncode is None:
                    pacer.kill()
                    await pacer.wait()
            cpu_after = time.process_time(), run.redis.child.cpu_s()
            calls = calls_per(
                calls, await asyncio.to_thread(redis_calls, run.redis.target), n + warmup
            )
        finally:
            await app.stop(grace=5)
    paced = json.loads(out)
    sent, acked = paced["sent"], paced["acked"]
    timed = [f"{tag}-{i}" for i in range(warmup, warmup + n)]

    def stage(end: dict[str, float], start: dict[str, float]) -> dict[str, float]:
        return percentiles_ms([end[r] - start[r] for r in timed])

    span = max(sent[r] for r in timed) - min(sent[r] for r in timed)
    return {
        "requests": n,
        "offered_per_s": (n - 1) / span if span > 0 else 0.0,
        "stages_ms": {
            "enqueue_to_dispatch": stage(log.dispatched, log.enqueued),
            "enqueue_to_lease": stage(log.leased, log.enqueued),
            "lease_to_dispatch": stage(log.dispatched, log.leased),
            "client_send_to_enqueue": stage(log.enqueued, sent),
            "client_unary_round_trip": stage(acked, sent),
        },
        "cpu_ms_per_request": {
            "lps": (cpu_after[0] - cpu_before[0]) * 1e3 / (n + warmup),
            "redis": (cpu_after[1] - cpu_before[1]) * 1e3 / (n + warmup),
        },
        "redis_commands_per_request": calls,
        "slow_backlog": backlog if beside_slow else 0,
    }


async def measure_dispatch(run: Run) -> dict[str, Any]:
    """Enqueue -> provider call at 200 requests/s, at 50/s for comparison, and at 200/s beside a
    slow provider whose backlog was queued first (its calls take a second each, and it has work
    for all its call slots throughout)."""
    at_200 = await dispatch_at(run, 200.0, run.sizes.dispatch_n)
    at_50 = await dispatch_at(run, 50.0, run.sizes.dispatch_low_n)
    beside = await dispatch_at(run, 200.0, run.sizes.dispatch_n, beside_slow=True)
    latency = at_200["stages_ms"]["enqueue_to_dispatch"]
    beside_latency = beside["stages_ms"]["enqueue_to_dispatch"]
    return {
        "figures": {
            "dispatch_p50_ms": latency["p50"],
            "dispatch_p99_ms": latency["p99"],
            "dispatch_beside_slow_p99_ms": beside_latency["p99"],
        },
        "details": {"at_200_per_s": at_200, "at_50_per_s": at_50, "beside_slow": beside},
    }
