"""economics: rate-limit utilisation and 429 share of two replicas sharing one budget, and the
cost of bundles with prompt caching against per-request calls without it.

The provider is the test suite's fake OpenAI-compatible (and Anthropic) server, in this process,
with `tests/fake_rate_limits.py`: it counts tokens its own way, limits requests and tokens per
rolling window (scaled down from a minute to `WINDOW_S`, so the run is affordable), answers with
the vendor's rate-limit headers, refuses with 429 and Retry-After, and caches prompt prefixes.
Two `lps serve` replicas share one Redis and one provider key.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

from benchkit.common import ROOT, BenchError, new_tag, workload
from benchkit.processes import Run, lps_serve
from benchkit.throughput import stream_all
from cj_client.client import LpsClient
from cj_client.models import ComparisonOutcome, ComparisonSubmission
from lps_server.core.domain import ProcessingMode

# The fake providers are the test suite's, a real part of the project's tooling.
sys.path.insert(0, str(ROOT))
from tests.fake_llm_servers import FakeAnthropic, FakeOpenAI
from tests.fake_rate_limits import FakeEconomy, RollingLimits

KEY = "sk-bench"
MODEL = "bench-judge"
ANSWER_TOKENS = 200  # LPS_<P>_MAX_TOKENS_PER_ITEM: each comparison's answer allowance
LATENCY_S = 0.2
BUNDLE = 8
# A six-criterion CJ rubric with level descriptors (about 1,500 tokens): long enough for a
# 1,024-token cache minimum, as real assessment rubrics are.
LEVELS = (
    ("Excellent", "consistently and convincingly, with no lapses a careful reader would notice"),
    ("Good", "clearly and mostly securely, with occasional lapses that do not obscure meaning"),
    ("Adequate", "in places, unevenly, so that the reader must sometimes work to follow"),
    ("Weak", "rarely or not at all, so that the essay's purpose is hard to discern"),
)
CRITERIA = (
    "states a clear position on the question and keeps to it throughout",
    "supports each claim with relevant evidence, examples or reasoning",
    "organises paragraphs so that each develops one idea and leads to the next",
    "anticipates objections and answers them fairly rather than ignoring them",
    "chooses precise, varied vocabulary suited to an informed general reader",
    "writes accurate sentences whose grammar, spelling and punctuation serve the meaning",
)
RUBRIC = "Judge the essays against this rubric; weigh the criteria equally.\n" + "\n".join(
    f"Criterion {i}: the essay {criterion}. "
    + " ".join(f"{level}: it does so {how}." for level, how in LEVELS)
    for i, criterion in enumerate(CRITERIA, start=1)
)


@dataclass(frozen=True)
class Scale:
    """How large a run is: comparisons, the scaled window and the provider's limits per window."""

    comparisons: int
    cost_comparisons: int
    window_s: float
    tokens: int
    requests: int


# A bundle of 8 of the example essays is charged about 7,500 tokens by the fake (prompt and
# allowance): 375,000 tokens per 6 s window admit about 50 calls a window, a quarter of what two
# replicas with 4 calls each in flight at 0.2 s a call could send, so the limit binds.
FULL = Scale(comparisons=2000, cost_comparisons=1000, window_s=6.0, tokens=375_000, requests=150)
QUICK_SCALE = Scale(comparisons=160, cost_comparisons=24, window_s=1.0, tokens=30_000, requests=40)


def subs_for(n: int, tag: str, provider: str, **fields: Any) -> list[ComparisonSubmission]:
    """The benchmark's CJ-like comparisons, for `provider`."""
    return [replace(s, provider=provider, **fields) for s in workload(n, tag=tag)]


async def stream_on(targets: list[str], subs: list[ComparisonSubmission]) -> None:
    """Submit `subs` spread over the replicas, one stream each, until every result is in."""

    async def one(target: str, part: list[ComparisonSubmission]) -> float:
        async with LpsClient(target=target, timeout=60) as client:
            return await stream_all(client, part)

    await asyncio.gather(*(one(t, subs[i :: len(targets)]) for i, t in enumerate(targets)))


def utilization(limits: RollingLimits, window_s: float) -> dict[str, float]:
    """How full the provider's rolling window was kept: its token count over the last window ÷
    its limit, averaged over the steady part, sampled every 1 % of a window. The steady part runs
    from a window after the first admission (the opening burst) to a window before the last (the
    tail, when the queue no longer holds a window's work)."""
    admitted = sorted(limits.admitted, key=lambda c: c.at)
    if len(admitted) < 2:
        raise BenchError("the provider admitted fewer than two calls")
    start, end = admitted[0].at + window_s, admitted[-1].at - window_s
    if end - start < window_s:
        raise BenchError(f"no steady part: calls spanned {admitted[-1].at - admitted[0].at:.1f}s")
    step = window_s / 100
    samples = [start + i * step for i in range(int((end - start) / step) + 1)]
    shares = []
    for t in samples:
        held = sum(c.counts.get("tokens", 0) for c in admitted if t - window_s < c.at <= t)
        shares.append(held / limits.tokens)
    return {
        "utilization": sum(shares) / len(shares),
        "lowest_window_share": min(shares),
        "steady_s": end - start,
        "span_s": admitted[-1].at - admitted[0].at,
    }


async def rate_limited(run: Run, scale: Scale, *, configured: bool) -> dict[str, Any]:
    """Two replicas on one Redis, serial bundles of 8, against a provider limiting tokens per
    window; with the budget configured, or with only the provider's headers to go on."""
    tag = new_tag("economics")
    limits = RollingLimits(window_s=scale.window_s, requests=scale.requests, tokens=scale.tokens)
    economy = FakeEconomy(limits=limits)
    async with FakeOpenAI(api_key=KEY, economy=economy, latency_s=LATENCY_S) as fake:
        settings: dict[str, Any] = {
            "queue_backend": "redis",
            "redis_url": run.redis.target,
            "redis_prefix": tag,
            "queue_processing_mode": ProcessingMode.SERIAL_BUNDLE,
            "serial_bundle_max_requests_per_call": BUNDLE,
            "openai_compatible_base_url": fake.base_url,
            "openai_compatible_api_key": KEY,
            "openai_compatible_model": MODEL,
            "openai_compatible_max_tokens_per_item": ANSWER_TOKENS,
            "openai_compatible_rate_limit_window_seconds": scale.window_s,
        }
        if configured:
            settings["openai_compatible_tokens_per_minute"] = scale.tokens
            settings["openai_compatible_requests_per_minute"] = scale.requests
        with (
            lps_serve(f"lps-{tag}-a", run, **settings) as a,
            lps_serve(f"lps-{tag}-b", run, **settings) as b,
        ):
            started = time.perf_counter()
            await stream_on(
                [a.target, b.target], subs_for(scale.comparisons, tag, "openai_compatible")
            )
            makespan = time.perf_counter() - started
            sums = [await asyncio.to_thread(s.metric_sums) for s in (a, b)]
    calls = len(limits.admitted) + limits.refused
    counted_429 = sum(s.get("llm_provider_rate_limited_total", 0.0) for s in sums)
    if counted_429 != limits.refused:
        raise BenchError(f"LPS counted {counted_429} 429s, the provider sent {limits.refused}")
    return {
        **utilization(limits, scale.window_s),
        "rate_limited_share": limits.refused / calls,
        "calls": calls,
        "refused": limits.refused,
        "makespan_s": makespan,
        "comparisons": scale.comparisons,
        "window_s": scale.window_s,
        "limit_tokens_per_window": scale.tokens,
    }


async def cost_per_comparison(
    run: Run, n: int, *, mode: ProcessingMode, caching: bool
) -> dict[str, float]:
    """Cost per comparison (from the results) on the fake Anthropic server, which caches a
    marked prefix of at least 1,024 tokens, priced as claude-sonnet-4-5 by LPS's table."""
    tag = new_tag("cost")
    economy = FakeEconomy(cache_min_tokens=1024)
    async with FakeAnthropic(api_key=KEY, economy=economy) as fake:
        settings: dict[str, Any] = {
            "queue_processing_mode": mode,
            "serial_bundle_max_requests_per_call": BUNDLE,
            "anthropic_base_url": fake.base_url,
            "anthropic_api_key": KEY,
            "anthropic_model": "claude-sonnet-4-5",
            "anthropic_max_tokens_per_item": ANSWER_TOKENS,
            "anthropic_prompt_caching": "on" if caching else "off",
        }
        with lps_serve(f"lps-{tag}", run, **settings) as lps:
            subs = subs_for(n, tag, "anthropic", instructions=RUBRIC)
            results = await collect(lps.target, subs)
    if fake.problems:
        raise BenchError(f"the fake provider refused requests: {fake.problems[:3]}")
    total = sum(r.cost_usd for r in results)
    return {
        "cost_per_comparison_usd": total / n,
        "calls": len(fake.calls),
        "cache_reads": economy.cache_reads,
        "cache_writes": economy.cache_writes,
        "prompt_tokens": sum(r.prompt_tokens for r in results) / n,
        "cache_read_tokens": sum(r.cache_read_tokens for r in results) / n,
    }


async def collect(target: str, subs: list[ComparisonSubmission]) -> list[ComparisonOutcome]:
    """Every result of `subs`, submitted on one stream; all must complete."""
    results = []
    async with LpsClient(target=target, timeout=60) as client:
        async for event in client.submit_many(subs, chunk=64):
            if isinstance(event, ComparisonOutcome):
                if event.status != "completed":
                    raise BenchError(f"{event.request_id} {event.status}: {event.error_message}")
                results.append(event)
    return results


async def measure_economics(run: Run) -> dict[str, Any]:
    """Utilisation and 429 share, budget configured and headers only; the cost ratio."""
    scale = QUICK_SCALE if run.sizes.economics_quick else FULL
    budget = await rate_limited(run, scale, configured=True)
    headers = await rate_limited(run, scale, configured=False)
    n = scale.cost_comparisons
    plain = await cost_per_comparison(run, n, mode=ProcessingMode.PER_REQUEST, caching=False)
    cached = await cost_per_comparison(run, n, mode=ProcessingMode.SERIAL_BUNDLE, caching=True)
    bundled = await cost_per_comparison(run, n, mode=ProcessingMode.SERIAL_BUNDLE, caching=False)
    ratio = cached["cost_per_comparison_usd"] / plain["cost_per_comparison_usd"]
    return {
        "figures": {
            "rate_limit_utilization": budget["utilization"],
            "rate_limited_share": budget["rate_limited_share"],
            "rate_limit_utilization_headers": headers["utilization"],
            "rate_limited_share_headers": headers["rate_limited_share"],
            "cost_ratio": ratio,
        },
        "details": {
            "budget_configured": budget,
            "headers_only": headers,
            "cost": {
                "per_request_uncached": plain,
                "serial_bundle_cached": cached,
                "serial_bundle_uncached": bundled,
                "bundling_alone_ratio": bundled["cost_per_comparison_usd"]
                / plain["cost_per_comparison_usd"],
            },
        },
    }
