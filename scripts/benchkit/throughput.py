"""ceiling (e2e and echo rates) and bundling (makespans and fill ratios)."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from typing import Any

from benchkit.common import BUNDLE_MAX, BUNDLED, SLOW_MOCK, BenchError, new_tag, workload
from benchkit.processes import Run, calls_per, echo_serve, lps_serve, redis_calls
from cj_client.client import LpsClient
from cj_client.models import ComparisonOutcome, ComparisonSubmission
from lps_server.core.domain import ProcessingMode


async def stream_all(client: LpsClient, subs: list[ComparisonSubmission]) -> float:
    """Submit `subs` on one SubmitComparisons call in messages of 64; seconds until the last
    result arrived. Every comparison must complete."""
    started = time.perf_counter()
    completed = 0
    async with asyncio.timeout(120 + len(subs) / 10):
        async for event in client.submit_many(subs, chunk=64):
            if isinstance(event, ComparisonOutcome):
                if event.status != "completed":
                    raise BenchError(f"{event.request_id} {event.status}: {event.error_message}")
                completed += 1
            elif not event.accepted:
                raise BenchError(f"{event.request_id} rejected: {event.error_message}")
    elapsed = time.perf_counter() - started
    if completed != len(subs):
        raise BenchError(f"{completed} of {len(subs)} results arrived")
    return elapsed


async def measure_ceiling(run: Run) -> dict[str, Any]:
    """e2e (Redis and local queue) and echo rates in interleaved rounds; CPU per comparison."""
    n = run.sizes.ceiling_n
    with (
        echo_serve(run) as echo,
        lps_serve("lps-ceiling-redis", run, queue_backend="redis", redis_url=run.redis.target,
                  redis_prefix=new_tag("ceiling"), **BUNDLED) as redis_lps,
        lps_serve("lps-ceiling-local", run, queue_backend="local", **BUNDLED) as local_lps,
    ):  # fmt: skip
        servers = {"echo": echo, "e2e": redis_lps, "e2e_local": local_lps}
        rates: dict[str, list[float]] = {name: [] for name in servers}
        cpu: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        redis_per_comparison: dict[str, float] = {}
        async with contextlib.AsyncExitStack() as stack:
            clients = {
                name: await stack.enter_async_context(LpsClient(target=server.target))
                for name, server in servers.items()
            }
            for client in clients.values():  # connections, caches, Redis script loads
                await stream_all(client, workload(run.sizes.warmup_n, tag=new_tag("warm")))
            for _ in range(run.sizes.ceiling_rounds):
                for name, server in servers.items():
                    subs = workload(n, tag=new_tag(name))
                    calls = redis_calls(run.redis.target)
                    before = server.child.cpu_s(), run.redis.child.cpu_s(), time.process_time()
                    rates[name].append(n / await stream_all(clients[name], subs))
                    after = server.child.cpu_s(), run.redis.child.cpu_s(), time.process_time()
                    if name == "e2e":
                        redis_per_comparison = calls_per(calls, redis_calls(run.redis.target), n)
                    ms = [(a - b) * 1e3 / n for a, b in zip(after, before, strict=True)]
                    cpu[name].append(dict(zip(("server", "redis", "client"), ms, strict=True)))
    rate = {name: statistics.median(values) for name, values in rates.items()}
    # Each round's ratio pairs measurements taken seconds apart, so a slow spell of the machine
    # (which moves the rates by 20-30% here) falls on both sides of the ratio: the median of the
    # rounds' ratios, not the ratio of the medians.
    ratios = {
        name: [e / echo for e, echo in zip(rates[name], rates["echo"], strict=True)]
        for name in ("e2e", "e2e_local")
    }
    return {
        "figures": {
            "ceiling_ratio": statistics.median(ratios["e2e"]),
            "ceiling_ratio_local": statistics.median(ratios["e2e_local"]),
            "e2e_per_s": rate["e2e"],
            "e2e_local_per_s": rate["e2e_local"],
            "echo_per_s": rate["echo"],
        },
        "details": {
            "comparisons": n,
            "rates_per_s": rates,
            "ratios_per_round": ratios,
            "cpu_ms_per_comparison": {
                name: {k: statistics.median(s[k] for s in samples) for k in samples[0]}
                for name, samples in cpu.items()
            },
            "redis_commands_per_comparison": redis_per_comparison,
        },
    }


async def measure_bundling(run: Run) -> dict[str, Any]:
    """Makespans per_request vs serial_bundle, and fill ratios plain and interleaved."""
    configs = {
        "per_request": ({"queue_processing_mode": ProcessingMode.PER_REQUEST}, ("",)),
        "serial_bundle": (BUNDLED, ("",)),
        "serial_bundle_interleaved": (BUNDLED, ("mock-a", "mock-b")),
    }
    details: dict[str, Any] = {"comparisons": run.sizes.bundling_n, "mock": SLOW_MOCK}
    for name, (mode, models) in configs.items():
        tag = new_tag(name)
        with lps_serve(f"lps-{name}", run, queue_backend="redis", redis_url=run.redis.target,
                       redis_prefix=tag, **mode, **SLOW_MOCK) as lps:  # fmt: skip
            async with LpsClient(target=lps.target) as client:
                subs = workload(run.sizes.bundling_n, tag=tag, models=models)
                makespan = await stream_all(client, subs)
            sums = await asyncio.to_thread(lps.metric_sums)
        bundles = sums.get("llm_provider_serial_bundle_items_per_call_count", 0.0)
        items = sums.get("llm_provider_serial_bundle_items_per_call_sum", 0.0)
        details[name] = {
            "makespan_s": makespan,
            "provider_calls": sums.get("llm_provider_response_duration_seconds_count", 0.0),
            "mean_items_per_call": items / bundles if bundles else 1.0,
        }
    fill = details["serial_bundle"]["mean_items_per_call"] / BUNDLE_MAX
    return {
        "figures": {
            "bundling_gain": details["per_request"]["makespan_s"]
            / details["serial_bundle"]["makespan_s"],
            "fill_ratio": fill,
            "fill_ratio_interleaved": details["serial_bundle_interleaved"]["mean_items_per_call"]
            / BUNDLE_MAX,
        },
        "details": details,
    }
