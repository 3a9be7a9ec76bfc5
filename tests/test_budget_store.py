"""The budget store's rules, the same for the in-process store and the Redis one (its Lua
scripts): rolling-window grants, waits, the provider's count replacing the estimate, limits learned
from headers, corrections, Retry-After blocks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from lps_server.budgets.base import BudgetStore, Settlement, span
from lps_server.budgets.local import LocalBudgetStore
from lps_server.budgets.redis_store import RedisBudgetStore
from lps_server.core.rates import LimitReading, RateCounts, RateLimitReading
from tests.redis_server import RedisProcess

WINDOW = 60.0  # long: on Redis's real clock nothing leaves the window during a test
SCOPE = "openai:gpt-4o-mini"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["local", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[BudgetStore]:
    if request.param == "local":
        yield LocalBudgetStore(clock=Clock())
        return
    proc: RedisProcess = request.getfixturevalue("redis_proc")
    client = Redis.from_url(proc.url)
    await client.flushall()
    built = RedisBudgetStore(client=client, prefix="budget-test")
    yield built
    await built.close()


def tokens(n: int, requests: int = 1) -> RateCounts:
    return RateCounts(requests=requests, tokens=n)


def reading(limit: int, remaining: int, *, retry_after: float | None = None) -> RateLimitReading:
    return RateLimitReading({"tokens": LimitReading(limit, remaining, 1.0)}, retry_after)


async def test_grants_within_the_limits_then_says_how_long_to_wait(store: BudgetStore) -> None:
    limits = RateCounts(requests=3, tokens=1000)
    first = await store.acquire(SCOPE, need=tokens(600), limits=limits, window_s=WINDOW)
    second = await store.acquire(SCOPE, need=tokens(400), limits=limits, window_s=WINDOW)
    assert first.grant is not None
    assert second.grant is not None
    assert second.state.used == RateCounts(requests=2, tokens=1000)
    denied = await store.acquire(SCOPE, need=tokens(1), limits=limits, window_s=WINDOW)
    assert denied.grant is None
    assert not denied.never
    # Room comes when the first grant leaves the window.
    assert 0 < denied.wait_s <= span(WINDOW)
    other = await store.acquire("openai:gpt-4o", need=tokens(1000), limits=limits, window_s=WINDOW)
    assert other.grant is not None  # budgets are per model


async def test_the_request_limit_counts_calls(store: BudgetStore) -> None:
    limits = RateCounts(requests=2)
    for _ in range(2):
        assert (await store.acquire(SCOPE, need=tokens(5), limits=limits, window_s=WINDOW)).grant
    assert (await store.acquire(SCOPE, need=tokens(5), limits=limits, window_s=WINDOW)).wait_s > 0


async def test_a_call_larger_than_the_limit_is_never_granted(store: BudgetStore) -> None:
    decision = await store.acquire(
        SCOPE, need=tokens(1001), limits=RateCounts(tokens=1000), window_s=WINDOW
    )
    assert decision.grant is None
    assert decision.never == ("tokens",)


async def test_the_providers_count_replaces_the_estimate(store: BudgetStore) -> None:
    limits = RateCounts(tokens=1000)
    grant = (await store.acquire(SCOPE, need=tokens(700), limits=limits, window_s=WINDOW)).grant
    assert grant is not None
    refused = await store.acquire(SCOPE, need=tokens(500), limits=limits, window_s=WINDOW)
    assert refused.grant is None
    state = await store.settle(grant, Settlement(tokens(300)), limits=limits, window_s=WINDOW)
    assert state.used.tokens == 300
    assert (await store.acquire(SCOPE, need=tokens(500), limits=limits, window_s=WINDOW)).grant


async def test_headers_alone_set_the_budget_and_correct_the_count(store: BudgetStore) -> None:
    none = RateCounts()
    grant = (await store.acquire(SCOPE, need=tokens(200), limits=none, window_s=WINDOW)).grant
    assert grant is not None
    # The provider counts 800 used of 1000 where this budget granted 200: it counts four times
    # what we do (or others share the key). Its count wins: a quarter of the limit is granted.
    state = await store.settle(
        grant, Settlement(tokens(200), [reading(1000, 200)]), limits=none, window_s=WINDOW
    )
    assert state.limits.tokens == 1000
    assert state.used.tokens == 200
    assert (await store.acquire(SCOPE, need=tokens(51), limits=none, window_s=WINDOW)).wait_s > 0
    assert (await store.acquire(SCOPE, need=tokens(50), limits=none, window_s=WINDOW)).grant


async def test_calls_sent_beside_one_are_not_read_as_a_higher_count(store: BudgetStore) -> None:
    """At the start of a run several calls go out together; the provider's answer to the first
    counts them all (it counts its window when it answers). Measured against the budget's window
    as it was at the first grant, that read as a ratio of 8 and held the budget at an eighth of
    its limit for windows; against the window at the answer it is what was sent: no correction."""
    none = RateCounts()
    grants = []
    for _ in range(8):
        granted = await store.acquire(SCOPE, need=tokens(100), limits=none, window_s=WINDOW)
        assert granted.grant is not None
        grants.append(granted.grant)
    # The provider holds all eight (800 of 10,000) when it answers the first.
    await store.settle(
        grants[0], Settlement(tokens(100), [reading(10_000, 9_200)]), limits=none, window_s=WINDOW
    )
    # The rest of the limit is there to be granted, not an eighth of it.
    rest = await store.acquire(SCOPE, need=tokens(9_200), limits=none, window_s=WINDOW)
    assert rest.grant is not None


async def test_the_tighter_of_configured_and_announced_limits_is_in_force(
    store: BudgetStore,
) -> None:
    configured = RateCounts(tokens=5000)
    grant = (await store.acquire(SCOPE, need=tokens(10), limits=configured, window_s=WINDOW)).grant
    assert grant is not None
    state = await store.settle(
        grant, Settlement(tokens(10), [reading(2000, 1990)]), limits=configured, window_s=WINDOW
    )
    assert state.limits.tokens == 2000
    looser = await store.settle(
        grant, Settlement(tokens(10), [reading(9000, 8990)]), limits=configured, window_s=WINDOW
    )
    assert looser.limits.tokens == 5000


async def test_a_429_blocks_the_budget_for_its_retry_after(store: BudgetStore) -> None:
    limits = RateCounts(tokens=1000)
    grant = (await store.acquire(SCOPE, need=tokens(10), limits=limits, window_s=WINDOW)).grant
    assert grant is not None
    refused = Settlement(tokens(10), [reading(1000, 0, retry_after=20.0)], rate_limited=True)
    await store.settle(grant, refused, limits=limits, window_s=WINDOW)
    blocked = await store.acquire(SCOPE, need=tokens(1), limits=limits, window_s=WINDOW)
    assert blocked.grant is None
    assert 19.0 < blocked.wait_s <= 20.0


async def test_the_providers_ratio_is_kept_for_windows_after_it_last_told() -> None:
    clock = Clock()
    store = LocalBudgetStore(clock=clock)
    limits = RateCounts(tokens=1000)
    grant = (await store.acquire(SCOPE, need=tokens(250), limits=limits, window_s=1.0)).grant
    assert grant is not None
    # The provider counts 1000 where we granted 250: a ratio of 4, which outlasts the window.
    await store.settle(
        grant, Settlement(tokens(250), [reading(1000, 0)]), limits=limits, window_s=1.0
    )
    clock.now += 1.5  # our own grant has left the window; what the provider taught has not
    assert (await store.acquire(SCOPE, need=tokens(251), limits=limits, window_s=1.0)).wait_s > 0
    assert (await store.acquire(SCOPE, need=tokens(250), limits=limits, window_s=1.0)).grant
    clock.now += 2.0  # three windows without news: forgotten, the key is tried in full again
    assert (await store.acquire(SCOPE, need=tokens(750), limits=limits, window_s=1.0)).grant


async def test_a_grant_counts_a_window_and_a_margin_from_its_grant() -> None:
    """The provider counts a call from its arrival, a little after the grant: the grant outlasts
    the window by a margin (0.1 s + 1 %), and the answer does not move it."""
    clock = Clock()
    store = LocalBudgetStore(clock=clock)
    limits = RateCounts(tokens=1000)
    grant = (await store.acquire(SCOPE, need=tokens(1000), limits=limits, window_s=1.0)).grant
    assert grant is not None
    clock.now += 0.4
    await store.settle(grant, Settlement(tokens(1000)), limits=limits, window_s=1.0)
    clock.now += 0.65  # 1.05 s after the grant: a window has passed, the margin has not
    early = await store.acquire(SCOPE, need=tokens(1), limits=limits, window_s=1.0)
    assert early.grant is None
    assert early.wait_s == pytest.approx(0.06)
    clock.now += 0.06
    assert (await store.acquire(SCOPE, need=tokens(1), limits=limits, window_s=1.0)).grant
