"""Settings of the HTTP providers (OpenAI, OpenAI-compatible, Anthropic) from `LPS_*` variables.

Each provider reads `LPS_<P>_<NAME>` with `<P>` one of OPENAI, OPENAI_COMPATIBLE, ANTHROPIC (see
docs/providers.md). A provider is configured when its API key is set; the OpenAI-compatible one when
its base URL is set, because local servers (vLLM, Ollama) often need no key.
"""

from __future__ import annotations

import hmac
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from lps_server.core.domain import ProviderName, TokenUsage
from lps_server.core.errors import ConfigurationError

T = TypeVar("T")

PREFIXES: Mapping[ProviderName, str] = {
    ProviderName.OPENAI: "LPS_OPENAI_",
    ProviderName.OPENAI_COMPATIBLE: "LPS_OPENAI_COMPATIBLE_",
    ProviderName.ANTHROPIC: "LPS_ANTHROPIC_",
}
DEFAULT_BASE_URLS: Mapping[ProviderName, str] = {
    ProviderName.OPENAI: "https://api.openai.com/v1",
    ProviderName.ANTHROPIC: "https://api.anthropic.com",
}
# The OpenAI-compatible provider has no default model: model names are local to each server.
DEFAULT_MODELS: Mapping[ProviderName, str] = {
    ProviderName.OPENAI: "gpt-4o-mini",
    ProviderName.ANTHROPIC: "claude-haiku-4-5",
}
PRICE_TABLE_VAR = "LPS_PRICE_TABLE"


def finite_float(raw: str) -> float:
    """A float that is a number: `nan` and `inf` are refused (ValueError)."""
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


class Secret:
    """A credential whose repr and str never show the value; `reveal()` is the only way to it."""

    __slots__ = ("_value",)

    def __init__(self, value: str = "") -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret value, for the one place that must send it."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))


class BundleCalls(StrEnum):
    """How a bundle becomes HTTP calls (`LPS_<P>_BUNDLE_CALLS`)."""

    ONE_CALL = "one_call"
    SEQUENTIAL = "sequential"


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """US dollars per million input (prompt) and output (completion) tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def cost(self, usage: TokenUsage) -> float:
        """The price of `usage` in US dollars."""
        return (
            usage.prompt_tokens * self.input_per_mtok
            + usage.completion_tokens * self.output_per_mtok
        ) / 1_000_000


# List prices at the time of writing; LPS_PRICE_TABLE overrides or extends them per model.
DEFAULT_PRICES: Mapping[str, ModelPrice] = {
    "gpt-4o-mini": ModelPrice(0.15, 0.60),
    "gpt-4o": ModelPrice(2.50, 10.00),
    "gpt-4.1": ModelPrice(2.00, 8.00),
    "gpt-4.1-mini": ModelPrice(0.40, 1.60),
    "gpt-4.1-nano": ModelPrice(0.10, 0.40),
    "claude-haiku-4-5": ModelPrice(1.00, 5.00),
    "claude-sonnet-4-5": ModelPrice(3.00, 15.00),
    "claude-3-5-haiku-latest": ModelPrice(0.80, 4.00),
}


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Prices by exact model name; a model not listed costs 0 (and is reported so in the docs)."""

    prices: Mapping[str, ModelPrice] = field(default_factory=lambda: dict(DEFAULT_PRICES))

    def cost(self, model: str, usage: TokenUsage) -> float:
        """The price of `usage` on `model`, 0.0 when the model has no price."""
        price = self.prices.get(model)
        return price.cost(usage) if price is not None else 0.0

    def models(self) -> frozenset[str]:
        """Every priced model name."""
        return frozenset(self.prices)

    @classmethod
    def from_setting(cls, raw: str) -> PriceTable:
        """The built-in prices updated by `raw`: inline JSON, or the path of a JSON file.

        Raises:
            ConfigurationError: the file cannot be read or the JSON has the wrong shape.
        """
        raw = raw.strip()
        if not raw:
            return cls()
        text = raw
        if not raw.startswith("{"):
            try:
                text = Path(raw).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigurationError(
                    f"{PRICE_TABLE_VAR}: cannot read price file {raw!r}: {exc.strerror}"
                ) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{PRICE_TABLE_VAR} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigurationError(f"{PRICE_TABLE_VAR} must be a JSON object keyed by model")
        prices = dict(DEFAULT_PRICES)
        for model, entry in data.items():
            prices[model] = _price(model, entry)
        return cls(prices)


def _price(model: str, entry: object) -> ModelPrice:
    where = f"{PRICE_TABLE_VAR}[{model!r}]"
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{where} must be an object with input_per_mtok, output_per_mtok")
    values = []
    for key in ("input_per_mtok", "output_per_mtok"):
        value = entry.get(key)
        # bool is an int subclass; `true` is no price. JSON as Python reads it allows NaN.
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise ConfigurationError(f"{where}.{key} must be a finite number >= 0")
        values.append(float(value))
    return ModelPrice(*values)


@dataclass(frozen=True, slots=True)
class HttpProviderSettings:
    """One HTTP provider's settings.

    Attributes:
        provider: which provider these settings are for.
        base_url: the API root, without a trailing slash.
        api_key: the credential (may be empty for a keyless local OpenAI-compatible server).
        default_model: the model when a request does not name one.
        timeout_s: the most one HTTP call may take, connect to last byte.
        bundle_calls: one call per bundle, or one call per item in turn.
        breaker_threshold: consecutive failed calls that open the circuit.
        breaker_cooldown_s: how long an open circuit fails fast before a trial call.
        max_tokens_per_item: answer budget per comparison when the request sets none.
        prices: the price table for cost estimates.
        configured: True when requests may be routed to this provider.
    """

    provider: ProviderName
    base_url: str
    api_key: Secret = field(default_factory=Secret)
    default_model: str = ""
    timeout_s: float = 60.0
    bundle_calls: BundleCalls = BundleCalls.ONE_CALL
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 30.0
    max_tokens_per_item: int = 400
    prices: PriceTable = field(default_factory=PriceTable, repr=False)
    configured: bool = False

    @classmethod
    def from_env(
        cls, provider: ProviderName, env: Mapping[str, str], prices: PriceTable
    ) -> HttpProviderSettings:
        """Read `LPS_<P>_*` for `provider` from `env`.

        Raises:
            ConfigurationError: a value is malformed or out of range.
        """
        prefix = PREFIXES[provider]

        def get(name: str, parser: Callable[[str], T], default: T) -> T:
            raw = env.get(prefix + name, "").strip()
            if not raw:
                return default
            try:
                return parser(raw)
            except ValueError as exc:
                raise ConfigurationError(f"{prefix}{name}={raw!r} is invalid: {exc}") from None

        api_key = Secret(env.get(prefix + "API_KEY", "").strip())
        explicit_url = get("BASE_URL", str, "")
        if provider == ProviderName.OPENAI_COMPATIBLE:
            configured = bool(explicit_url)
        else:
            configured = bool(api_key)
        settings = cls(
            provider=provider,
            base_url=(explicit_url or DEFAULT_BASE_URLS.get(provider, "")).rstrip("/"),
            api_key=api_key,
            default_model=get("MODEL", str, DEFAULT_MODELS.get(provider, "")),
            timeout_s=get("TIMEOUT_SECONDS", finite_float, 60.0),
            bundle_calls=get("BUNDLE_CALLS", BundleCalls, BundleCalls.ONE_CALL),
            breaker_threshold=get("CIRCUIT_BREAKER_THRESHOLD", int, 5),
            breaker_cooldown_s=get("CIRCUIT_BREAKER_COOLDOWN_SECONDS", finite_float, 30.0),
            max_tokens_per_item=get("MAX_TOKENS_PER_ITEM", int, 400),
            prices=prices,
            configured=configured,
        )
        return settings.validated() if configured else settings

    def validated(self) -> HttpProviderSettings:
        """Return self, or raise ConfigurationError naming the first invalid setting."""
        prefix = PREFIXES[self.provider]
        checks = [
            (
                self.base_url.startswith(("http://", "https://")),
                f"{prefix}BASE_URL must start with http:// or https://",
            ),
            (
                bool(self.default_model),
                f"{prefix}MODEL must be set: this provider has no default model",
            ),
            (self.timeout_s > 0, f"{prefix}TIMEOUT_SECONDS must be > 0"),
            (self.breaker_threshold >= 1, f"{prefix}CIRCUIT_BREAKER_THRESHOLD must be >= 1"),
            (
                self.breaker_cooldown_s >= 0,
                f"{prefix}CIRCUIT_BREAKER_COOLDOWN_SECONDS must be >= 0",
            ),
            (self.max_tokens_per_item >= 1, f"{prefix}MAX_TOKENS_PER_ITEM must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigurationError(message)
        return self

    def known_models(self) -> frozenset[str]:
        """The default model and every priced model: the bounded set of metric labels."""
        return self.prices.models() | {self.default_model}


@dataclass(frozen=True, slots=True)
class HttpProvidersSettings:
    """The settings of every HTTP provider, configured or not."""

    openai: HttpProviderSettings
    openai_compatible: HttpProviderSettings
    anthropic: HttpProviderSettings

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HttpProvidersSettings:
        """Read every provider's settings from `env` (default: the process environment).

        Raises:
            ConfigurationError: a value is malformed or out of range.
        """
        source = os.environ if env is None else env
        prices = PriceTable.from_setting(source.get(PRICE_TABLE_VAR, ""))
        return cls(
            openai=HttpProviderSettings.from_env(ProviderName.OPENAI, source, prices),
            openai_compatible=HttpProviderSettings.from_env(
                ProviderName.OPENAI_COMPATIBLE, source, prices
            ),
            anthropic=HttpProviderSettings.from_env(ProviderName.ANTHROPIC, source, prices),
        )

    def configured(self) -> list[HttpProviderSettings]:
        """The providers requests may be routed to."""
        return [s for s in (self.openai, self.openai_compatible, self.anthropic) if s.configured]
