"""Bundles that fit: a bundle never exceeds what one call may carry nor what the budget can
ever grant; too large, it is split (the rest leads the next bundle), never failed. One comparison
that no call could carry ends FAILED, naming the limit, and is never sent."""

from __future__ import annotations

from dataclasses import replace

from cj_client import EssayInput
from lps_server.core.domain import ProcessingMode
from tests.economy_rig import comparisons, provider_env, replicas, run_all
from tests.fake_llm_servers import FakeOpenAI

BUNDLED = {
    "queue_processing_mode": ProcessingMode.SERIAL_BUNDLE,
    "serial_bundle_max_requests_per_call": 8,
}


async def test_a_bundle_over_the_per_call_input_limit_is_split() -> None:
    # About 540 prompt tokens for one comparison and 150 more for each further one: a call of
    # at most 700 input tokens carries two of them.
    async with FakeOpenAI(api_key="sk-economy", usage=(0, 0)) as server:
        env = provider_env(server, "openai", max_input_tokens_per_call=700)
        async with replicas(1, env=env, **BUNDLED) as (app,):
            results = await run_all([app], comparisons(16, provider="openai"))
    assert server.problems == []
    assert [r.status for r in results] == ["completed"] * 16
    assert [c.comparisons for c in server.calls] == [2] * 8


async def test_a_bundle_over_what_the_budget_can_ever_grant_is_split() -> None:
    # Three comparisons ask about 2,040 tokens (prompt and answer allowance), four 2,590.
    async with FakeOpenAI(api_key="sk-economy", usage=(0, 0)) as server:
        env = provider_env(server, "openai", tokens_per_minute=2100, rate_limit_window_seconds=0.2)
        async with replicas(1, env=env, **BUNDLED) as (app,):
            results = await run_all([app], comparisons(12, provider="openai"))
    assert [r.status for r in results] == ["completed"] * 12
    assert [c.comparisons for c in server.calls] == [3] * 4


async def test_a_comparison_no_call_could_carry_fails_alone_and_is_never_sent() -> None:
    subs = comparisons(5, provider="openai")
    huge = replace(subs[2], essay_a=EssayInput("huge", "An endless essay. " * 400))
    subs[2] = huge
    async with FakeOpenAI(api_key="sk-economy", usage=(0, 0)) as server:
        env = provider_env(server, "openai", max_input_tokens_per_call=700)
        async with replicas(1, env=env, **BUNDLED) as (app,):
            results = {r.request_id: r for r in await run_all([app], subs)}
    failed = results.pop(huge.request_id)
    assert failed.status == "failed"
    assert failed.error_code == "provider_error"
    assert "MAX_INPUT_TOKENS_PER_CALL" in failed.error_message
    assert "700" in failed.error_message
    assert all(r.status == "completed" for r in results.values())
    assert all("endless" not in c.prompt for c in server.calls)
    assert sum(c.comparisons for c in server.calls) == 4
