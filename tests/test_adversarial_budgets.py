"""Attacks on what a paying user relies on from the rate budgets, with real parts: in-process and
`lps serve` replicas, a real redis-server (restarted, frozen, behind a proxy that loses a reply),
fake OpenAI and Anthropic servers that count, cache and rate-limit per rolling window, send the
vendors' headers and 429s, and book what they billed per request id (`tests/adversarial_rig.py`).

The guarantees: (1) every accepted request ends exactly once, nothing waits forever; (2) with a
budget (configured or learned) the provider refuses at most about 1 % of calls, also under
faults; (3) no request is paid for twice; (4) a provider waiting for budget holds nothing another
provider needs; (5) `llm_provider_rate_limited_total` counts the provider's 429s and the token and
cost metrics what the provider reported. An attack the code withstands stays as a regression test
(its docstring says how it would fail); one that breaks a guarantee is `xfail(strict=True)` with
the bug in one line, so that the fix turns it into a regression test (not strict where the break
depends on timing, so that a run it misses does not fail the suite).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from cj_client import ComparisonSubmission, LpsClient
from lps_server.budgets.redis_store import RedisBudgetStore
from lps_server.core.domain import ProcessingMode, TokenUsage
from lps_server.providers.pricing import ANTHROPIC_CACHE_RULE, NO_CACHE_DISCOUNT, PriceTable
from lps_server.queue.redis_scripts import QueueScripts
from tests import fault_rig
from tests.adversarial_rig import (
    LedgerAnthropic,
    LedgerOpenAI,
    marked,
    once_each,
    rate_limited,
    results_for,
    statuses,
    tokens_counted,
    usage_reported,
)
from tests.economy_rig import provider_env, replicas, run_all
from tests.fake_llm_servers import Reply, default_answer
from tests.fake_rate_limits import FakeEconomy, RollingLimits
from tests.helpers import metric
from tests.redis_proxy import ReplyDroppingProxy
from tests.redis_server import RedisProcess
from tests.test_prompt_caching import RUBRIC

pytestmark = [pytest.mark.slow]
KEY = "sk-economy"
WINDOW_S = 1.0
# About 1,350 tokens a call of four (prompt and allowance), so about 7 calls a window.
TOKENS, REQUESTS = 9_000, 40
BUNDLED: dict[str, Any] = {
    "queue_processing_mode": ProcessingMode.SERIAL_BUNDLE,
    "serial_bundle_max_requests_per_call": 4,
    "retry_backoff_ms": 10,
}
LIMITED: dict[str, object] = {
    "rate_limit_window_seconds": WINDOW_S,
    "max_tokens_per_item": 100,
    "tokens_per_minute": TOKENS,
    "requests_per_minute": REQUESTS,
}


def limited(
    window_s: float = WINDOW_S,
    *,
    requests: int = 0,
    tokens: int = 0,
    input_tokens: int = 0,
    output_tokens: int = 0,
) -> FakeEconomy:
    """A provider economy with these limits per rolling `window_s` (0: not limited)."""
    limits = RollingLimits(window_s, requests, tokens, input_tokens, output_tokens)
    return FakeEconomy(limits=limits)


def no_storm(server: LedgerOpenAI | LedgerAnthropic, counted: float) -> None:
    """At most 1 % of the calls refused, each refusal counted once, nobody billed twice."""
    assert server.problems == []
    assert server.refused <= 0.01 * len(server.calls), (server.refused, len(server.calls))
    assert counted == server.refused
    assert not server.duplicates()


# --- 1. every accepted request ends once; nothing waits forever ---------------------------------


async def test_a_budget_smaller_than_one_comparison_fails_each_request_unsent() -> None:
    """Would fail by a timeout if the gate waited for room that never comes, or by calls if the
    comparisons were sent anyway."""
    async with LedgerOpenAI(api_key=KEY, economy=FakeEconomy()) as server:
        env = provider_env(server, "openai", **{**LIMITED, "tokens_per_minute": 300})
        subs = marked(6, provider="openai")
        async with replicas(1, env=env, grace=1, **BUNDLED) as apps:
            results = await run_all(apps, subs, timeout=5)
    once_each(results, subs)
    assert statuses(results) == {"failed": 6}
    assert all(r.error_code == "provider_error" for r in results)
    assert all("against a budget of 300" in r.error_message for r in results)
    assert server.calls == []


async def test_a_provider_limit_below_one_bundle_is_learned_and_bundles_split() -> None:
    """No budget configured; the provider allows about one comparison's tokens a window. Only
    the first, unbudgeted calls (LPS_MAX_CONCURRENT_CALLS of them, documented) may be refused;
    the 429's headers teach the limit and bundles are split to fit. Would fail by a timeout or
    a 429 storm if the limit were not learned, or by FAILED results if the bundle failed."""
    async with LedgerOpenAI(api_key=KEY, economy=limited(tokens=1000)) as server:
        env = provider_env(
            server, "openai", rate_limit_window_seconds=WINDOW_S, max_tokens_per_item=100
        )
        subs = marked(8, provider="openai")
        async with replicas(1, env=env, grace=1, max_concurrent_calls=2, **BUNDLED) as apps:
            results = await run_all(apps, subs, timeout=20)
            counted = rate_limited(apps)
    once_each(results, subs)
    assert statuses(results) == {"completed": 8}
    assert server.refused <= 2
    assert counted == server.refused
    assert max(c.comparisons for c in server.calls[server.refused :]) < 4


@pytest.mark.redis
async def test_a_limit_lowered_below_one_comparison_and_restored_is_forgotten(
    redis_url: str,
) -> None:
    """A limit learned from headers binds for three windows after the provider last announced
    one, and only a configured limit fails a comparison unsent. It once bound for a day (for
    every replica): work over it failed unsent, so no call ever learned the limit was raised."""
    window = 0.5
    economy = limited(window, tokens=TOKENS)
    assert economy.limits is not None
    async with LedgerOpenAI(api_key=KEY, economy=economy) as server:
        env = provider_env(
            server, "openai", rate_limit_window_seconds=window, max_tokens_per_item=100
        )
        redis: dict[str, Any] = {"queue_backend": "redis", "redis_url": redis_url}
        async with replicas(1, env=env, grace=1, **redis, **BUNDLED) as apps:
            assert statuses(await run_all(apps, marked(4, provider="openai", tag="x"))) == {
                "completed": 4
            }
            economy.limits.tokens = 300  # the provider lowers the limit (one 429 tells)...
            low = await run_all(apps, marked(4, provider="openai", tag="low"))
            assert statuses(low) == {"failed": 4}  # right: refused until out of retries
        economy.limits.tokens = TOKENS  # ...and raises it again
        await asyncio.sleep(4 * window)  # longer than any correction is kept
        async with replicas(1, env=env, grace=1, **redis, **BUNDLED) as fresh:
            later = marked(8, provider="openai", tag="later")
            results = await run_all(fresh, later, timeout=10)
    once_each(results, later)
    assert statuses(results) == {"completed": 8}  # were FAILED, never sent


@pytest.mark.parametrize(
    ("flavour", "headers"),
    [
        ("openai", {"retry-after": "86400"}),
        (
            "anthropic",  # no Retry-After: the reset of the exhausted limit is used
            {
                "anthropic-ratelimit-requests-limit": "50",
                "anthropic-ratelimit-requests-remaining": "0",
                "anthropic-ratelimit-requests-reset": "2099-01-01T00:00:00Z",
            },
        ),
    ],
)
async def test_a_huge_retry_after_holds_work_no_longer_than_the_retry_cap(
    flavour: str, headers: dict[str, str]
) -> None:
    server = (LedgerOpenAI if flavour == "openai" else LedgerAnthropic)(
        api_key=KEY, economy=FakeEconomy()
    )
    async with server:
        server.script(Reply(status=429, headers=headers))
        env = provider_env(server, flavour, rate_limit_window_seconds=WINDOW_S)
        subs = marked(4, provider=flavour)
        async with replicas(1, env=env, grace=1, retry_after_max_seconds=1.0, **BUNDLED) as apps:
            results = await run_all(apps, subs, timeout=3)  # was a TimeoutError: a day-long block
    assert statuses(results) == {"completed": 4}


@pytest.mark.redis
async def test_an_infinite_retry_after_is_not_an_internal_error(redis_url: str) -> None:
    async with LedgerOpenAI(api_key=KEY, economy=FakeEconomy()) as server:
        server.script(Reply(status=429, headers={"retry-after": "inf"}))
        env = provider_env(server, "openai", rate_limit_window_seconds=WINDOW_S)
        subs = marked(4, provider="openai")
        redis: dict[str, Any] = {"queue_backend": "redis", "redis_url": redis_url}
        async with replicas(
            1, env=env, grace=1, retry_after_max_seconds=1, **redis, **BUNDLED
        ) as a:
            results = await run_all(a, subs, timeout=5)
    once_each(results, subs)
    assert statuses(results) == {"completed": 4}  # were 4 FAILED `internal`


async def test_retry_after_of_zero_garbage_or_past_ends_failed_after_the_retries() -> None:
    """A provider that refuses every call, with Retry-After 0, garbage and a past date: each
    request ends once, FAILED rate_limited after 1 + LPS_QUEUE_MAX_RETRIES calls, each 429
    counted. Would fail by a timeout if a header blocked the budget for ever, or by a count."""
    async with LedgerOpenAI(api_key=KEY, economy=FakeEconomy()) as server:
        server.script(
            Reply(status=429, headers={"retry-after": "0"}),
            Reply(status=429, headers={"retry-after": "soon", "retry-after-ms": "-"}),
            Reply(status=429, headers={"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}),
        )
        env = provider_env(server, "openai", rate_limit_window_seconds=WINDOW_S)
        subs = marked(4, provider="openai")
        async with replicas(1, env=env, grace=1, queue_max_retries=2, **BUNDLED) as apps:
            results = await run_all(apps, subs, timeout=8)
            counted = rate_limited(apps)
    once_each(results, subs)
    assert statuses(results) == {"failed": 4}
    assert {r.error_code for r in results} == {"rate_limited"}
    assert all("after 3 attempts" in r.error_message for r in results)
    assert counted == server.refused == len(server.calls) == 3


async def test_a_retry_after_of_zero_is_retried_at_once() -> None:
    # With the Redis queue only the first retry waits (about 1 s), and not in every run.
    async with LedgerOpenAI(api_key=KEY, economy=FakeEconomy()) as server:
        server.script(*[Reply(status=429, headers={"retry-after": "0"})] * 3)
        env = provider_env(server, "openai", rate_limit_window_seconds=WINDOW_S)
        subs = marked(4, provider="openai")
        async with replicas(1, env=env, grace=1, **BUNDLED) as apps:
            results = await run_all(apps, subs, timeout=8)
    assert statuses(results) == {"completed": 4}
    # Three backoffs of at most 10, 20 and 40 ms; measured: 3.0 s.
    assert server.calls[-1].received_at - server.calls[0].received_at < 0.5


@pytest.mark.redis
async def test_malformed_limit_headers_are_ignored(redis_url: str) -> None:
    """Headers that do not parse, or make no sense, teach the budget nothing and fail nothing.
    Would fail if one were read as a limit (`llm_provider_rate_limit_budget` set) or failed."""
    garbage = {
        "x-ratelimit-limit-tokens": "lots",
        "x-ratelimit-remaining-tokens": "-3",
        "x-ratelimit-limit-requests": "-5",
        "x-ratelimit-remaining-requests": "999999",
        "x-ratelimit-reset-requests": "soon",
    }
    async with LedgerOpenAI(api_key=KEY, economy=FakeEconomy()) as server:
        server.script(*[Reply(headers=garbage)] * 4)
        env = provider_env(server, "openai", rate_limit_window_seconds=WINDOW_S)
        subs = marked(16, provider="openai")
        redis: dict[str, Any] = {"queue_backend": "redis", "redis_url": redis_url}
        async with replicas(1, env=env, grace=1, **redis, **BUNDLED) as apps:
            results = await run_all(apps, subs, timeout=10)
            learned = metric(apps[0].registry, "llm_provider_rate_limit_budget")
    once_each(results, subs)
    assert statuses(results) == {"completed": 16}
    assert learned == 0


@pytest.mark.redis
async def test_an_int64_max_limit_header_does_not_fail_every_comparison(redis_url: str) -> None:
    # "No limit" as some gateways spell it: INT64_MAX, which parses (as a float) to 2**63.
    huge = {
        "x-ratelimit-limit-tokens": "9223372036854775807",
        "x-ratelimit-remaining-tokens": "9223372036854775000",
    }
    async with LedgerOpenAI(api_key=KEY, economy=FakeEconomy()) as server:
        server.script(Reply(headers=huge))
        env = provider_env(server, "openai", rate_limit_window_seconds=WINDOW_S)
        redis: dict[str, Any] = {"queue_backend": "redis", "redis_url": redis_url}
        async with replicas(1, env=env, grace=1, **redis, **BUNDLED) as apps:
            await run_all(apps, marked(4, provider="openai", tag="first"), timeout=5)
            later = marked(8, provider="openai", tag="later")
            results = await run_all(apps, later, timeout=5)
    once_each(results, later)
    assert statuses(results) == {"completed": 8}  # were FAILED: "a budget of -9223372036854775808"


# --- 2. and 3. no 429 storm, nothing paid twice --------------------------------------------------


@pytest.mark.redis
async def test_two_replicas_two_models_with_budgets_of_their_own_get_no_429(
    redis_url: str,
) -> None:
    """The provider limits each model on its own, gpt-4o at half of gpt-4o-mini's tokens, and
    `LPS_OPENAI_MODEL_BUDGETS` says so. Would fail by 429s if the models shared one budget, if
    gpt-4o had the provider's budget, or if the replicas did not share theirs."""
    economies = {"gpt-4o": limited(requests=REQUESTS, tokens=TOKENS // 2)}
    mini = limited(requests=REQUESTS, tokens=TOKENS)
    async with LedgerOpenAI(
        api_key=KEY, economy=mini, economies=economies, latency_s=0.02
    ) as server:
        table = f'{{"gpt-4o": {{"tokens_per_minute": {TOKENS // 2}}}}}'
        env = provider_env(server, "openai", **LIMITED, model_budgets=table)
        subs = marked(64, provider="openai", tag="mini", model="gpt-4o-mini")
        subs += marked(32, provider="openai", tag="4o", model="gpt-4o")
        redis: dict[str, Any] = {"queue_backend": "redis", "redis_url": redis_url}
        async with replicas(2, env=env, grace=1, **redis, **BUNDLED) as apps:
            results = await run_all(apps, subs, timeout=30)
            counted = rate_limited(apps)
    once_each(results, subs)
    assert statuses(results) == {"completed": 96}
    assert server.billed_models == {"gpt-4o-mini": 16, "gpt-4o": 8}
    no_storm(server, counted)


@pytest.mark.redis
@pytest.mark.parametrize("configured", [True, False], ids=["configured", "from_headers"])
async def test_anthropic_input_and_output_limits_apart_get_no_429(
    redis_url: str, configured: bool
) -> None:
    """Anthropic limits input and output tokens apart (the output allowance counted at
    arrival, the output produced at the end), configured or learned from its headers. Would fail
    by 429s if the kinds were mixed up, or if the output allowance were not budgeted."""
    economy = limited(requests=REQUESTS, input_tokens=6000, output_tokens=900)
    async with LedgerAnthropic(api_key=KEY, economy=economy, latency_s=0.02) as server:
        budget: dict[str, object] = {
            "input_tokens_per_minute": 6000,
            "output_tokens_per_minute": 900,
            "requests_per_minute": REQUESTS,
        }
        env = provider_env(
            server,
            "anthropic",
            rate_limit_window_seconds=WINDOW_S,
            max_tokens_per_item=100,
            **(budget if configured else {}),
        )
        subs = marked(48, provider="anthropic")
        redis: dict[str, Any] = {"queue_backend": "redis", "redis_url": redis_url}
        # From headers, one call per replica until the first answer (the documented start).
        concurrency = 4 if configured else 1
        async with replicas(
            2, env=env, grace=1, max_concurrent_calls=concurrency, **redis, **BUNDLED
        ) as apps:
            results = await run_all(apps, subs, timeout=30)
            counted = rate_limited(apps)
    once_each(results, subs)
    assert statuses(results) == {"completed": 48}
    no_storm(server, counted)


@pytest.mark.redis
# Not strict: whether the burst after the restart meets the provider's still-full window
# depends on where in the window the restart falls (refused in 4 of 5 runs on 2026-12-01; a
# strict xfail failed CI whenever it fell where the window had room).
@pytest.mark.xfail(
    strict=False,
    reason="bug: a budget store that restarts empty reads as an empty window: the replicas grant "
    "a whole window at once while the provider still counts the last one (measured 2-4 of ~27 "
    "calls refused, in most runs)",
)
async def test_a_budget_redis_restarting_empty_mid_run_causes_no_429_burst(
    redis_url: str,
) -> None:
    # The budgets on a Redis of their own, without persistence, so that only they are lost.
    window = 2.0
    budget_redis = RedisProcess()
    budget_redis.start()

    def store() -> RedisBudgetStore:
        client = Redis.from_url(budget_redis.url, socket_connect_timeout=1, socket_timeout=2)
        return RedisBudgetStore(client=client, prefix="lps")

    try:
        economy = limited(window, requests=REQUESTS, tokens=TOKENS)
        async with LedgerOpenAI(api_key=KEY, economy=economy, latency_s=0.02) as server:
            env = provider_env(server, "openai", **{**LIMITED, "rate_limit_window_seconds": 2})
            subs = marked(96, provider="openai")
            redis: dict[str, Any] = {"queue_backend": "redis", "redis_url": redis_url}
            async with replicas(2, env=env, grace=1, budgets=store, **redis, **BUNDLED) as apps:
                run = asyncio.create_task(run_all(apps, subs, timeout=30))
                await server.wait_until(server.calls_reach(8), timeout=10, what="calls")
                budget_redis.stop()
                budget_redis.start()
                results = await run
                counted = rate_limited(apps)
    finally:
        budget_redis.close()
    once_each(results, subs)
    assert statuses(results) == {"completed": 96}
    no_storm(server, counted)  # fails: the refusals after the restart


@pytest.mark.redis
async def test_a_redis_stall_mid_run_causes_no_429_and_no_second_call(
    killable_redis: RedisProcess,
) -> None:
    """Redis (queue and budgets) frozen for longer than its command timeout, mid-run, then let
    go: what it queued meanwhile runs late. Would fail by 429s if late scripts let the
    replicas over-grant, or by an id billed twice if a lease were lost and reclaimed."""
    economy = limited(requests=REQUESTS, tokens=TOKENS)
    async with LedgerOpenAI(api_key=KEY, economy=economy, latency_s=0.02) as server:
        env = provider_env(server, "openai", **LIMITED)
        subs = marked(96, provider="openai")
        redis: dict[str, Any] = {"queue_backend": "redis", "redis_url": killable_redis.url}
        async with replicas(2, env=env, grace=1, **redis, **BUNDLED) as apps:
            run = asyncio.create_task(run_all(apps, subs, timeout=40))
            await server.wait_until(server.calls_reach(10), timeout=10, what="calls")
            killable_redis.pause()
            await asyncio.sleep(3.0)
            killable_redis.resume()
            results = await run
            counted = rate_limited(apps)
    once_each(results, subs)
    assert statuses(results) == {"completed": 96}
    no_storm(server, counted)


FREEZES = 3


@pytest.mark.redis
async def test_a_replica_frozen_and_thawed_holding_grants_pays_nothing_twice(
    redis_url: str, tmp_path: Path
) -> None:
    """Two `lps serve` processes; one is SIGSTOPped three times mid-run for 1.5 windows (its
    grants and calls in flight) and let go. Would fail by an id billed twice if its work were
    taken over and asked again, by a 429 storm if its grants were lost or double-counted."""
    economy = limited(requests=REQUESTS, tokens=TOKENS)
    async with LedgerOpenAI(
        api_key="key-a", also_accept=("key-b",), economy=economy, latency_s=0.02
    ) as server:
        env = {f"LPS_OPENAI_{k.upper()}": str(v) for k, v in LIMITED.items()}
        env.update(
            LPS_QUEUE_PROCESSING_MODE="serial_bundle",
            LPS_SERIAL_BUNDLE_MAX_REQUESTS_PER_CALL="4",
            LPS_RETRY_BACKOFF_MS="10",
        )
        subs = marked(128, provider="openai")
        async with fault_rig.replicas(
            ["a", "b"], redis_url=redis_url, provider=server, log_dir=tmp_path, **env
        ) as (a, b):

            async def submit(target: str, part: list[ComparisonSubmission]) -> Any:
                async with LpsClient(target=target, timeout=40) as client:
                    return await fault_rig.results_of(client, part, timeout=40)

            run = asyncio.gather(submit(a.target, subs[::2]), submit(b.target, subs[1::2]))
            for _ in range(FREEZES):
                n = len(server.calls) + 5
                await server.wait_until(server.calls_reach(n), timeout=10, what="calls")
                a.freeze()
                await asyncio.sleep(1.5 * WINDOW_S)
                a.thaw()
            (counts_a, ends_a), (counts_b, ends_b) = await run
            counted = sum([await r.metric("llm_provider_rate_limited_total") for r in (a, b)])
    assert set((counts_a + counts_b).values()) == {1}
    assert statuses([*ends_a.values(), *ends_b.values()]) == {"completed": 128}
    assert server.problems == []
    assert not server.duplicates()
    assert counted == server.refused
    # Not "at most 1 %": a freeze that falls after a call's last look at its grant's age and
    # before its request leaves the process still sends it late, into a window the other
    # replica may have filled (a call held up before that look is granted afresh:
    # tests/test_late_grant.py). At most the calls the frozen replica held granted.
    assert server.refused <= FREEZES * 4


@pytest.mark.redis
async def test_a_grant_used_late_is_not_sent_into_a_full_window(redis_url: str) -> None:
    """Replica A reaches the queue through a proxy that loses the reply to its next lease
    extend: the mark before a call (`mark_called`), which waits out the 2 s command timeout. The
    call once went out then, on a grant the shared budget had forgotten, into a window the other
    replica filled; now a bundle whose mark failed is not sent and its grant is withdrawn. A
    process frozen between grant and call (SIGSTOP) can still send late: see the frozen-replica
    test's bound."""
    probe = Redis.from_url(redis_url)
    extend = QueueScripts.register(probe).extend.sha.encode()
    await probe.aclose()
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    economy = limited(requests=REQUESTS, tokens=TOKENS)
    async with (
        ReplyDroppingProxy(port) as proxy,
        LedgerOpenAI(api_key=KEY, economy=economy, latency_s=0.02) as server,
    ):
        env = provider_env(server, "openai", **LIMITED)
        subs = marked(160, provider="openai")
        async with (
            replicas(
                1, env=env, grace=1, queue_backend="redis", redis_url=proxy.url, **BUNDLED
            ) as (a,),
            replicas(
                1, env=env, grace=1, queue_backend="redis", redis_url=redis_url, **BUNDLED
            ) as (b,),
        ):
            run = asyncio.create_task(run_all([a, b], subs, timeout=40))
            for start in (8, 20):
                await server.wait_until(server.calls_reach(start), timeout=10, what="calls")
                proxy.drop_reply_to(extend, close=False)
                await asyncio.wait_for(proxy.dropped.wait(), 10)
            results = await run
            counted = rate_limited([a, b])
    once_each(results, subs)
    assert statuses(results) == {"completed": 160}
    no_storm(server, counted)  # was a refusal for each late call


@pytest.mark.redis
async def test_a_limit_that_shrinks_mid_run_is_learned_at_once(redis_url: str) -> None:
    """The provider cuts its token limit to 4,000 mid-run while LPS is configured for 9,000;
    its headers say so. Only calls already granted under the old limit may be refused (at most
    replicas x LPS_MAX_CONCURRENT_CALLS); would fail by a storm of 429s if the announced limit
    did not win over the configured one, or by a timeout if the refused work were lost."""
    economy = limited(requests=REQUESTS, tokens=TOKENS)
    assert economy.limits is not None
    async with LedgerOpenAI(api_key=KEY, economy=economy, latency_s=0.02) as server:
        env = provider_env(server, "openai", **LIMITED)
        subs = marked(64, provider="openai")
        redis: dict[str, Any] = {"queue_backend": "redis", "redis_url": redis_url}
        async with replicas(
            2, env=env, grace=1, max_concurrent_calls=4, **redis, **BUNDLED
        ) as apps:
            run = asyncio.create_task(run_all(apps, subs, timeout=30))
            await server.wait_until(server.calls_reach(8), timeout=10, what="calls")
            economy.limits.tokens = 4000
            results = await run
            counted = rate_limited(apps)
            budgets = [
                metric(a.registry, "llm_provider_rate_limit_budget", limit="tokens") for a in apps
            ]
    once_each(results, subs)
    assert statuses(results) == {"completed": 64}
    assert 4000 in budgets
    assert counted == server.refused <= 2 * 4
    assert not server.duplicates()


# --- 4. a budget wait holds nothing another provider needs ---------------------------------------


@pytest.mark.parametrize("blocked_by", ["budget", "retry_after"])
async def test_a_provider_waiting_for_budget_does_not_delay_another(blocked_by: str) -> None:
    """OpenAI may make one call a minute (or its first call is refused with Retry-After: 60);
    forty OpenAI comparisons queued first, then forty Anthropic ones, one call slot each. Would
    fail by a timeout if OpenAI's wait held the dispatcher, a slot or the head of the queue."""
    async with (
        LedgerOpenAI(api_key=KEY, economy=FakeEconomy()) as openai,
        LedgerAnthropic(api_key=KEY, economy=FakeEconomy(), latency_s=0.02) as anthropic,
    ):
        budget: dict[str, object] = {"requests_per_minute": 1, "rate_limit_window_seconds": 60}
        if blocked_by == "retry_after":
            budget = {}
            openai.script(Reply(status=429, headers={"retry-after": "60"}))
        env = {**provider_env(openai, "openai", **budget), **provider_env(anthropic, "anthropic")}
        waiting = marked(40, provider="openai", tag="o")
        others = marked(40, provider="anthropic", tag="n")
        async with replicas(1, env=env, grace=0.5, max_concurrent_calls=1, **BUNDLED) as (app,):
            want = {s.request_id for s in others}
            got = await results_for(app, waiting + others, want, timeout=3)
    assert statuses([got[rid] for rid in want]) == {"completed": 40}
    assert len(openai.calls) == 1
    assert len(anthropic.calls) == 10


@pytest.mark.redis
async def test_a_lost_budget_reply_does_not_stall_another_provider(
    redis_proc: RedisProcess,
) -> None:
    """The dispatcher asks the budget store inline; a reply lost for one provider's acquire
    once held every provider's work for the store's 2 s command timeout. The dispatcher now
    waits at most 0.5 s for a budget's answer (ACQUIRE_TIMEOUT_S), then pauses that provider."""
    async with (
        ReplyDroppingProxy(redis_proc.port) as proxy,
        LedgerOpenAI(api_key=KEY, economy=FakeEconomy()) as openai,
        LedgerAnthropic(api_key=KEY, economy=FakeEconomy(), latency_s=0.02) as anthropic,
    ):

        def store() -> RedisBudgetStore:
            client = Redis.from_url(proxy.url, socket_connect_timeout=1, socket_timeout=2)
            return RedisBudgetStore(client=client, prefix="lost-reply")

        env = {**provider_env(openai, "openai"), **provider_env(anthropic, "anthropic")}
        async with replicas(1, env=env, grace=0.5, budgets=store, **BUNDLED) as (app,):
            await run_all([app], marked(4, provider="anthropic", tag="warm"))
            proxy.drop_reply_to(b"budget:openai:", close=False)  # OpenAI's next acquire
            waiting = marked(4, provider="openai", tag="o")
            others = marked(4, provider="anthropic", tag="n")
            started = time.monotonic()
            await results_for(app, waiting + others, {s.request_id for s in others}, timeout=10)
            took = time.monotonic() - started
    assert proxy.dropped.is_set()
    assert took < 1.0  # was 2.0 s, the budget store's command timeout


# --- 5. metrics are true -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flavour", "model", "rule"),
    [
        ("openai", "gpt-4o-mini", NO_CACHE_DISCOUNT),
        ("anthropic", "claude-sonnet-4-5", ANTHROPIC_CACHE_RULE),
    ],
)
async def test_token_and_cost_metrics_match_the_usage_the_provider_reported(
    flavour: str, model: str, rule: Any
) -> None:
    """With a rubric long enough to be cached (reads and writes). Would fail if a kind were
    counted twice (cached tokens in input as well), left out, or priced wrong."""
    cls = LedgerOpenAI if flavour == "openai" else LedgerAnthropic
    async with cls(api_key=KEY, economy=FakeEconomy()) as server:
        env = provider_env(server, flavour, max_tokens_per_item=100, model=model)
        subs = marked(16, provider=flavour, instructions=RUBRIC)
        async with replicas(1, env=env, grace=1, **BUNDLED) as apps:
            results = await run_all(apps, subs, timeout=10)
            counted = tokens_counted(apps[0])
            cost = metric(apps[0].registry, "llm_provider_cost_dollars_total")
    once_each(results, subs)
    reported = usage_reported(flavour, server.usages)
    assert counted == reported
    assert reported.get("cache_read", 0) > 0
    prompt = reported["input"] + reported.get("cache_read", 0) + reported.get("cache_write", 0)
    usage = TokenUsage(
        prompt, reported["output"], reported.get("cache_read", 0), reported.get("cache_write", 0)
    )
    assert cost == pytest.approx(PriceTable().cost(model, usage, rule=rule), rel=1e-9)


@pytest.mark.parametrize("answer", ["not_json", "one_item_missing"])
async def test_tokens_of_an_unusable_answer_are_counted(answer: str) -> None:
    """A billed call whose answer is unusable, as a whole or for one item, counts its usage.
    Would fail if tokens were counted from stored results (the first call's part left out)."""
    async with LedgerOpenAI(api_key=KEY, economy=FakeEconomy()) as server:
        if answer == "not_json":
            server.script(Reply(content="I think essay A is better."))
        else:
            judged = default_answer(4)
            judged["comparisons"] = judged["comparisons"][1:]
            server.script(Reply(answer=judged))
        env = provider_env(server, "openai", max_tokens_per_item=100, model="gpt-4o-mini")
        subs = marked(4, provider="openai")
        async with replicas(1, env=env, grace=1, **BUNDLED) as apps:
            results = await run_all(apps, subs, timeout=10)
            counted = tokens_counted(apps[0])
            cost = metric(apps[0].registry, "llm_provider_cost_dollars_total")
    assert statuses(results) == {"completed": 4}  # the unusable ones were retried
    reported = usage_reported("openai", server.usages)
    assert counted == reported
    usage = TokenUsage(
        reported["input"] + reported.get("cache_read", 0),
        reported["output"],
        reported.get("cache_read", 0),
    )
    assert cost == pytest.approx(PriceTable().cost("gpt-4o-mini", usage), rel=1e-9)
