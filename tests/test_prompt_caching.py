"""Prompt caching: the shared prefix is first and byte-identical across calls, Anthropic calls
mark it with cache_control only when it is long enough for the model, and cached tokens are read
exactly, carried in results and metrics, and priced per kind."""

from __future__ import annotations

from typing import Any

import pytest

from lps_server.core.domain import Essay, Overrides, ProcessingMode
from lps_server.providers.base import ComparisonItem
from lps_server.providers.prompting import build_prompt
from tests.economy_rig import comparisons, provider_env, replicas, run_all
from tests.fake_llm_servers import FakeAnthropic, FakeOpenAI
from tests.fake_rate_limits import FakeEconomy
from tests.helpers import metric
from tests.provider_rig import rig

# A CJ rubric long enough for a 1,024-token cache minimum (about 1,600 tokens).
RUBRIC = " ".join(
    f"Criterion {i}: reward essays whose argument on point {i} is clear, supported by evidence, "
    f"organised in paragraphs and written in accurate, varied language; penalise repetition."
    for i in range(1, 61)
)


def items(n: int, rubric: str = RUBRIC) -> list[ComparisonItem]:
    return [
        ComparisonItem(f"k{i}", Essay("a", f"Essay A {i}."), Essay("b", f"Essay B {i}."), rubric)
        for i in range(n)
    ]


def blocks(body: dict[str, Any]) -> list[dict[str, Any]]:
    content = body["messages"][0]["content"]
    assert isinstance(content, list)
    return content


def test_the_prefix_is_the_same_whatever_the_bundle_size() -> None:
    one, five = build_prompt(items(1)), build_prompt(items(5))
    assert one.system == five.system
    assert one.prefix == five.prefix
    assert RUBRIC in one.prefix
    assert "Comparison" not in one.prefix.split("Assessment instructions")[0].split("numbered")[0]
    assert five.user.startswith(five.prefix)
    assert "There are 5 comparisons." in five.body
    assert "Essay A 4." in five.body


async def test_anthropic_marks_a_long_enough_prefix_and_only_it() -> None:
    async with rig("anthropic", default_model="claude-sonnet-4-5") as r:
        await r.provider.compare(items(3), model="claude-sonnet-4-5", overrides=_overrides())
        await r.provider.compare(items(2), model="claude-sonnet-4-5", overrides=_overrides())
    assert r.server.problems == []
    first, second = (blocks(c.body) for c in r.server.calls)
    assert first[0]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in first[1]
    assert first[0]["text"] == second[0]["text"]  # byte-identical across bundle sizes
    assert RUBRIC in first[0]["text"]
    assert "Essay A" not in first[0]["text"]
    assert "Essay A 2." in first[1]["text"]


@pytest.mark.parametrize(
    ("model", "instructions", "caching"),
    [
        ("claude-sonnet-4-5", "Which essay argues better?", True),  # far below 1,024 tokens
        ("claude-haiku-4-5", RUBRIC, True),  # Haiku 4.5 caches from 4,096 tokens only
        ("claude-sonnet-4-5", RUBRIC, False),  # LPS_ANTHROPIC_PROMPT_CACHING=off
    ],
)
async def test_anthropic_leaves_the_marker_out_when_the_cache_would_not_take_it(
    model: str, instructions: str, caching: bool
) -> None:
    async with rig("anthropic", default_model=model, prompt_caching=caching) as r:
        await r.provider.compare(items(2, instructions), model=model, overrides=_overrides())
    assert r.server.problems == []
    assert all("cache_control" not in b for b in blocks(r.server.calls[0].body))


async def test_anthropic_cached_tokens_reach_results_metrics_and_cost() -> None:
    economy = FakeEconomy(cache_min_tokens=1024)
    async with FakeAnthropic(api_key="sk-economy", economy=economy) as server:
        env = provider_env(server, "anthropic", model="claude-sonnet-4-5")
        async with replicas(
            1,
            env=env,
            queue_processing_mode=ProcessingMode.SERIAL_BUNDLE,
            serial_bundle_max_requests_per_call=4,
        ) as (app,):
            first = await run_all([app], comparisons(4, provider="anthropic", instructions=RUBRIC))
            later = await run_all(
                [app], comparisons(4, provider="anthropic", tag="d", instructions=RUBRIC)
            )
            labels = {"provider": "anthropic", "model": "claude-sonnet-4-5"}
            by_type = {
                kind: metric(app.registry, "llm_provider_tokens_used_total", type=kind, **labels)
                for kind in ("input", "output", "cache_read", "cache_write")
            }
            cost = metric(app.registry, "llm_provider_cost_dollars_total", **labels)
    assert server.problems == []
    assert economy.cache_writes == 1
    assert economy.cache_reads == 1
    written = sum(r.cache_write_tokens for r in first)
    read = sum(r.cache_read_tokens for r in later)
    assert written > 1024
    assert read == written
    assert sum(r.cache_read_tokens for r in first) == 0
    results = first + later
    prompt = sum(r.prompt_tokens for r in results)
    # Each kind once: the metric's kinds add up to the prompts, cached tokens not added again.
    assert by_type["input"] + by_type["cache_read"] + by_type["cache_write"] == prompt
    assert by_type["cache_read"] == read
    assert by_type["cache_write"] == written
    # claude-sonnet-4-5: $3 in, $0.30 cache read, $3.75 cache write, $15 out per Mtok.
    expected = (
        by_type["input"] * 3.0 + read * 0.30 + written * 3.75 + by_type["output"] * 15.0
    ) / 1e6
    assert cost == pytest.approx(expected)
    assert sum(r.cost_usd for r in results) == pytest.approx(expected)


async def test_openai_prefix_caching_is_read_from_cached_tokens() -> None:
    economy = FakeEconomy()
    async with FakeOpenAI(api_key="sk-economy", economy=economy) as server:
        env = provider_env(server, "openai")
        async with replicas(1, env=env) as (app,):  # per_request: one call per comparison
            results = await run_all([app], comparisons(3, provider="openai", instructions=RUBRIC))
            read = metric(app.registry, "llm_provider_tokens_used_total", type="cache_read")
    assert server.problems == []
    cached = sorted(r.cache_read_tokens for r in results)
    assert cached[0] == 0
    assert cached[1] >= 1024
    assert cached[1] % 128 == 0
    assert read == sum(cached)
    assert all(r.cache_write_tokens == 0 for r in results)


def _overrides() -> Overrides:
    return Overrides()
