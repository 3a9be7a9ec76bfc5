"""The price table: US dollars per million tokens of each kind, per model (`LPS_PRICE_TABLE`).

A call's cost is priced per token kind, each token once: uncached input at the input price, cache
reads and cache writes at their own prices, output at the output price (`TokenUsage`'s
`prompt_tokens` includes the cached tokens; `uncached_input_tokens` is the rest). An entry that
lists no cache prices gets its provider's rule (`CacheRule`): Anthropic documents cache reads at
0.1x and five-minute cache writes at 1.25x the input price; OpenAI lists a cached-input price per
model and charges nothing for writing, so its entries list `cache_read_per_mtok` and, without it,
cached input is priced as plain input (no discount is assumed). Calls through a provider's batch
API cost `batch` times the synchronous price (0.5 by default, both vendors' discount).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lps_server.core.domain import TokenUsage
from lps_server.core.errors import ConfigurationError

PRICE_TABLE_VAR = "LPS_PRICE_TABLE"
BATCH_DISCOUNT = 0.5
_REQUIRED = ("input_per_mtok", "output_per_mtok")
_OPTIONAL = ("cache_read_per_mtok", "cache_write_per_mtok", "batch")


@dataclass(frozen=True, slots=True)
class CacheRule:
    """A vendor's cache prices as multiples of the input price, for entries that list none."""

    read: float = 1.0
    write: float = 1.0


#: Anthropic: cache reads at 0.1x, five-minute cache writes at 1.25x the input price.
ANTHROPIC_CACHE_RULE = CacheRule(read=0.1, write=1.25)
#: No discount assumed: cached tokens at the input price (OpenAI lists its cached price per model).
NO_CACHE_DISCOUNT = CacheRule()


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """US dollars per million tokens of each kind, and the batch API's multiplier.

    Attributes:
        input_per_mtok: uncached input (prompt) tokens.
        output_per_mtok: output (completion) tokens.
        cache_read_per_mtok: input tokens read from the prompt cache (None: the provider's rule).
        cache_write_per_mtok: input tokens written to the prompt cache (None: the provider's rule).
        batch: what a call through the provider's batch API costs, as a fraction of this price.
    """

    input_per_mtok: float
    output_per_mtok: float
    cache_read_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None
    batch: float = BATCH_DISCOUNT

    def cost(
        self, usage: TokenUsage, *, rule: CacheRule = NO_CACHE_DISCOUNT, batch: bool = False
    ) -> float:
        """The price of `usage` in US dollars; `batch` for a call made through a batch API."""
        read = self.cache_read_per_mtok
        write = self.cache_write_per_mtok
        dollars = (
            usage.uncached_input_tokens * self.input_per_mtok
            + usage.cache_read_tokens * (self.input_per_mtok * rule.read if read is None else read)
            + usage.cache_write_tokens
            * (self.input_per_mtok * rule.write if write is None else write)
            + usage.completion_tokens * self.output_per_mtok
        ) / 1_000_000
        return dollars * self.batch if batch else dollars


# List prices at the time of writing; LPS_PRICE_TABLE overrides or extends them per model.
DEFAULT_PRICES: Mapping[str, ModelPrice] = {
    "gpt-4o-mini": ModelPrice(0.15, 0.60, cache_read_per_mtok=0.075),
    "gpt-4o": ModelPrice(2.50, 10.00, cache_read_per_mtok=1.25),
    "gpt-4.1": ModelPrice(2.00, 8.00, cache_read_per_mtok=0.50),
    "gpt-4.1-mini": ModelPrice(0.40, 1.60, cache_read_per_mtok=0.10),
    "gpt-4.1-nano": ModelPrice(0.10, 0.40, cache_read_per_mtok=0.025),
    "claude-haiku-4-5": ModelPrice(1.00, 5.00, 0.10, 1.25),
    "claude-sonnet-4-5": ModelPrice(3.00, 15.00, 0.30, 3.75),
    "claude-3-5-haiku-latest": ModelPrice(0.80, 4.00, 0.08, 1.00),
}


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Prices by exact model name; a model not listed costs 0 (and is reported so in the docs)."""

    prices: Mapping[str, ModelPrice] = field(default_factory=lambda: dict(DEFAULT_PRICES))

    def cost(
        self,
        model: str,
        usage: TokenUsage,
        *,
        rule: CacheRule = NO_CACHE_DISCOUNT,
        batch: bool = False,
    ) -> float:
        """The price of `usage` on `model`, 0.0 when the model has no price."""
        price = self.prices.get(model)
        return price.cost(usage, rule=rule, batch=batch) if price is not None else 0.0

    def models(self) -> frozenset[str]:
        """Every priced model name."""
        return frozenset(self.prices)

    @classmethod
    def from_setting(cls, raw: str) -> PriceTable:
        """The built-in prices updated by `raw`: inline JSON, or the path of a JSON file.

        Raises:
            ConfigurationError: the file cannot be read or the JSON has the wrong shape.
        """
        data = json_setting(PRICE_TABLE_VAR, raw)
        prices = dict(DEFAULT_PRICES)
        for model, entry in data.items():
            prices[model] = _price(model, entry)
        return cls(prices)


def json_setting(name: str, raw: str) -> dict[str, object]:
    """A setting holding a JSON object inline or in a file named by its value ({} when empty).

    Raises:
        ConfigurationError: the file cannot be read or the value is not a JSON object.
    """
    raw = raw.strip()
    if not raw:
        return {}
    text = raw
    if not raw.startswith("{"):
        try:
            text = Path(raw).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"{name}: cannot read file {raw!r}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"{name} must be a JSON object keyed by model")
    return data


def _price(model: str, entry: object) -> ModelPrice:
    where = f"{PRICE_TABLE_VAR}[{model!r}]"
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{where} must be an object with input_per_mtok, output_per_mtok")
    if unknown := sorted(set(entry) - set(_REQUIRED) - set(_OPTIONAL)):
        raise ConfigurationError(f"{where} has unknown keys {unknown}")
    values: dict[str, float] = {}
    for key in (*_REQUIRED, *_OPTIONAL):
        if key not in entry and key in _OPTIONAL:
            continue
        value = entry.get(key)
        # bool is an int subclass; `true` is no price. JSON as Python reads it allows NaN.
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise ConfigurationError(f"{where}.{key} must be a finite number >= 0")
        values[key] = float(value)
    return ModelPrice(**values)
