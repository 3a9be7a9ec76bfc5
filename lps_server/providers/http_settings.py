"""Settings of the HTTP providers (OpenAI, OpenAI-compatible, Anthropic) from `LPS_*` variables.

Each provider reads `LPS_<P>_<NAME>` with `<P>` one of OPENAI, OPENAI_COMPATIBLE, ANTHROPIC (see
docs/providers.md). A provider is configured when its API key is set; the OpenAI-compatible one when
its base URL is set, because local servers (vLLM, Ollama) often need no key.
"""

from __future__ import annotations

import hmac
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from lps_server.core.domain import ProviderName
from lps_server.core.errors import ConfigurationError
from lps_server.core.rates import RateCounts
from lps_server.providers.budget_settings import ProviderBudgets
from lps_server.providers.pricing import PRICE_TABLE_VAR, ModelPrice, PriceTable

__all__ = ["PRICE_TABLE_VAR", "ModelPrice", "PriceTable"]  # re-exported: prices live in pricing

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
        budgets: requests and tokens per window, per model, and the largest call.
        prompt_caching: mark the shared prompt prefix for the provider's cache (Anthropic).
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
    budgets: ProviderBudgets = field(default_factory=ProviderBudgets)
    prompt_caching: bool = True

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
            budgets=ProviderBudgets.from_values(
                prefix,
                limits=RateCounts(
                    requests=get("REQUESTS_PER_MINUTE", int, 0),
                    tokens=get("TOKENS_PER_MINUTE", int, 0),
                    input_tokens=get("INPUT_TOKENS_PER_MINUTE", int, 0),
                    output_tokens=get("OUTPUT_TOKENS_PER_MINUTE", int, 0),
                ),
                window_s=get("RATE_LIMIT_WINDOW_SECONDS", finite_float, 60.0),
                max_input=get("MAX_INPUT_TOKENS_PER_CALL", int, 0),
                table=env.get(prefix + "MODEL_BUDGETS", ""),
            ),
            prompt_caching=get("PROMPT_CACHING", _switch, True),
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
        """The default model, every priced model and every model with a budget of its own: the
        bounded set of metric labels."""
        return self.prices.models() | {self.default_model} | frozenset(self.budgets.models)


def _switch(raw: str) -> bool:
    """`on` or `off` (also true/false, 1/0, yes/no)."""
    value = raw.lower()
    if value in ("on", "true", "1", "yes"):
        return True
    if value in ("off", "false", "0", "no"):
        return False
    raise ValueError("must be on or off")


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
