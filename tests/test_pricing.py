"""Cost per token kind: a known usage gives a known cost, each token priced once; the price table
says cache and batch prices per model; the adapters read cached tokens exactly."""

from __future__ import annotations

import pytest

from lps_server.core.domain import TokenUsage
from lps_server.core.errors import ConfigurationError
from lps_server.providers.pricing import (
    ANTHROPIC_CACHE_RULE,
    ModelPrice,
    PriceTable,
)
from lps_server.providers.prompting import split_usage
from tests.fake_llm_servers import Reply
from tests.provider_rig import compare, rig


def test_anthropic_cache_reads_cost_a_tenth_and_writes_a_quarter_more_than_input() -> None:
    # Sonnet 4.5: $3 in, $15 out per Mtok. 1,000,000 prompt tokens of which 600,000 read from
    # the cache and 100,000 written to it, 300,000 uncached; 200,000 output.
    price = ModelPrice(3.0, 15.0)
    usage = TokenUsage(1_000_000, 200_000, cache_read_tokens=600_000, cache_write_tokens=100_000)
    expected = 0.3 * 3.0 + 0.6 * 3.0 * 0.1 + 0.1 * 3.0 * 1.25 + 0.2 * 15.0
    assert price.cost(usage, rule=ANTHROPIC_CACHE_RULE) == pytest.approx(expected)
    assert expected == pytest.approx(4.455)


def test_listed_cache_prices_win_over_the_rule_and_cached_tokens_are_never_paid_twice() -> None:
    # gpt-4o-mini: $0.15 in, $0.075 cached in, $0.60 out. prompt_tokens includes the cached ones.
    price = PriceTable().prices["gpt-4o-mini"]
    usage = TokenUsage(2_000_000, 1_000_000, cache_read_tokens=1_500_000)
    assert price.cost(usage) == pytest.approx(0.5 * 0.15 + 1.5 * 0.075 + 1.0 * 0.60)
    # Without a listed cached price, no discount is assumed: the same as uncached input.
    plain = ModelPrice(0.15, 0.60)
    assert plain.cost(usage) == pytest.approx(plain.cost(TokenUsage(2_000_000, 1_000_000)))


def test_batch_calls_cost_the_batch_multiple_of_the_price() -> None:
    usage = TokenUsage(1_000_000, 1_000_000)
    assert ModelPrice(1.0, 5.0).cost(usage, batch=True) == pytest.approx(3.0)
    assert ModelPrice(1.0, 5.0, batch=0.4).cost(usage, batch=True) == pytest.approx(2.4)


def test_the_price_table_reads_cache_and_batch_prices_per_model() -> None:
    table = PriceTable.from_setting(
        '{"local": {"input_per_mtok": 1, "output_per_mtok": 2, "cache_read_per_mtok": 0.5,'
        ' "cache_write_per_mtok": 1.5, "batch": 0.25}}'
    )
    assert table.prices["local"] == ModelPrice(1.0, 2.0, 0.5, 1.5, 0.25)
    assert table.prices["claude-haiku-4-5"] == ModelPrice(1.0, 5.0, 0.10, 1.25)  # built in
    usage = TokenUsage(400_000, 0, cache_read_tokens=100_000, cache_write_tokens=100_000)
    assert table.cost("local", usage) == pytest.approx(0.2 + 0.05 + 0.15)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('{"m": {"input_per_mtok": 1, "output_per_mtok": 1, "cache": 1}}', "unknown keys"),
        ('{"m": {"input_per_mtok": 1, "output_per_mtok": 1, "batch": -1}}', "batch"),
        (
            '{"m": {"input_per_mtok": 1, "output_per_mtok": 1, "cache_read_per_mtok": true}}',
            "cache",
        ),
    ],
)
def test_a_malformed_price_entry_is_refused_naming_the_field(entry: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        PriceTable.from_setting(entry)


def test_a_bundles_usage_is_split_kind_by_kind_and_adds_up_exactly() -> None:
    usage = TokenUsage(1003, 250, cache_read_tokens=513, cache_write_tokens=7)
    shares = split_usage(usage, 4)
    assert sum(s.prompt_tokens for s in shares) == 1003
    assert sum(s.completion_tokens for s in shares) == 250
    assert sum(s.cache_read_tokens for s in shares) == 513
    assert sum(s.cache_write_tokens for s in shares) == 7
    assert sum(s.uncached_input_tokens for s in shares) == 1003 - 513 - 7


async def test_anthropic_usage_is_read_by_kind_and_priced_per_kind() -> None:
    usage = {
        "input_tokens": 100,
        "cache_creation_input_tokens": 300,
        "cache_read_input_tokens": 4000,
        "output_tokens": 200,
    }
    async with rig("anthropic") as r:
        r.server.script(Reply(usage=usage))
        outcomes = await compare(r, 2)
    # input_tokens excludes the cached tokens: the prompt is the sum of the three kinds.
    assert sum(o.usage.prompt_tokens for o in outcomes) == 4400
    assert sum(o.usage.cache_read_tokens for o in outcomes) == 4000
    assert sum(o.usage.cache_write_tokens for o in outcomes) == 300
    assert sum(o.usage.completion_tokens for o in outcomes) == 200
    # claude-haiku-4-5: $1 in, $0.10 cache read, $1.25 cache write, $5 out per Mtok.
    expected = (100 * 1.0 + 4000 * 0.10 + 300 * 1.25 + 200 * 5.0) / 1e6
    assert sum(o.cost_usd for o in outcomes) == pytest.approx(expected)


async def test_openai_cached_tokens_are_part_of_the_prompt_and_priced_at_the_cached_price() -> None:
    usage = {
        "prompt_tokens": 3000,
        "completion_tokens": 100,
        "total_tokens": 3100,
        "prompt_tokens_details": {"cached_tokens": 2048},
    }
    async with rig("openai") as r:
        r.server.script(Reply(usage=usage))
        outcomes = await compare(r, 2)
    assert sum(o.usage.prompt_tokens for o in outcomes) == 3000  # not 3000 + 2048
    assert sum(o.usage.cache_read_tokens for o in outcomes) == 2048
    assert sum(o.usage.cache_write_tokens for o in outcomes) == 0
    # gpt-4o-mini: $0.15 in, $0.075 cached in, $0.60 out per Mtok.
    expected = (952 * 0.15 + 2048 * 0.075 + 100 * 0.60) / 1e6
    assert sum(o.cost_usd for o in outcomes) == pytest.approx(expected)
