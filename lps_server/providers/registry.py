"""Which providers this server can call, and how a request resolves to a provider and model."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

from lps_server.core.config import Settings
from lps_server.core.domain import CircuitState, Overrides, ProviderName, Route
from lps_server.providers.anthropic import AnthropicProvider
from lps_server.providers.base import Provider
from lps_server.providers.circuit_breaker import CircuitListener
from lps_server.providers.http_provider import HttpProvider
from lps_server.providers.http_settings import HttpProvidersSettings
from lps_server.providers.mock import MockProvider
from lps_server.providers.openai_compat import OpenAICompatibleProvider

OTHER_MODEL = "other"


class UnknownProviderError(LookupError):
    """The request names a provider this server is not configured for."""


class ProviderRegistry:
    """The configured providers, keyed by name."""

    def __init__(self, providers: Iterable[Provider]) -> None:
        self._providers = {p.name: p for p in providers}

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        env: Mapping[str, str] | None = None,
        on_circuit_state: CircuitListener | None = None,
    ) -> ProviderRegistry:
        """Build the mock provider (always available) and every configured HTTP provider.

        Args:
            settings: the server settings (the mock provider's).
            env: where the HTTP providers' `LPS_<P>_*` settings are read (default: os.environ).
            on_circuit_state: called on every circuit-breaker transition of an HTTP provider.

        Raises:
            ConfigurationError: an HTTP provider setting is invalid.
        """
        mock = MockProvider(
            model=settings.mock_model,
            latency_ms=settings.mock_latency_ms,
            latency_per_item_ms=settings.mock_latency_per_item_ms,
            jitter=settings.mock_latency_jitter,
            error_rate=settings.mock_error_rate,
            temperature=settings.mock_judge_temperature,
            position_bias=settings.mock_position_bias,
            bundle_position_noise=settings.mock_bundle_position_noise,
            rng=random.Random(settings.mock_seed),
        )
        providers: list[Provider] = [mock]
        for http in HttpProvidersSettings.from_env(env).configured():
            adapter = (
                AnthropicProvider
                if http.provider == ProviderName.ANTHROPIC
                else OpenAICompatibleProvider
            )
            providers.append(adapter(http, on_circuit_state=on_circuit_state))
        return cls(providers)

    def names(self) -> list[ProviderName]:
        """Configured provider names."""
        return list(self._providers)

    def get(self, name: ProviderName) -> Provider:
        """The provider called `name`.

        Raises:
            UnknownProviderError: it is not configured.
        """
        try:
            return self._providers[name]
        except KeyError:
            raise UnknownProviderError(
                f"provider {name.value!r} is not configured on this server "
                f"(configured: {', '.join(p.value for p in self._providers)})"
            ) from None

    def is_configured(self, name: ProviderName) -> bool:
        """True when requests may name this provider."""
        return name in self._providers

    def resolve(self, overrides: Overrides) -> Route:
        """The provider and model a request goes to: the override's model, else the default.

        Raises:
            UnknownProviderError: no provider is named, or it is not configured.
        """
        if overrides.provider is None:
            raise UnknownProviderError("no provider named")
        provider = self.get(overrides.provider)
        return Route(provider.name, overrides.model or provider.default_model)

    def model_label(self, route: Route) -> str:
        """A bounded metric label for the route's model: known models by name, else `other`."""
        provider = self._providers.get(route.provider)
        if provider is not None and route.model in provider.known_models():
            return route.model
        return OTHER_MODEL

    def model_labels(self) -> dict[ProviderName, list[str]]:
        """Every model label each provider's metrics can carry: its known models and `other`."""
        return {
            name: [*sorted(p.known_models()), OTHER_MODEL] for name, p in self._providers.items()
        }

    def http(self, name: ProviderName) -> HttpProvider | None:
        """The provider called `name` when it is an HTTP provider (with rate budgets)."""
        provider = self._providers.get(name)
        return provider if isinstance(provider, HttpProvider) else None

    def circuit_states(self) -> dict[ProviderName, CircuitState]:
        """The circuit state of every provider that has a circuit breaker (the HTTP ones)."""
        return {
            name: p.circuit_state
            for name, p in self._providers.items()
            if isinstance(p, HttpProvider)
        }

    async def aclose(self) -> None:
        """Close every provider."""
        for provider in self._providers.values():
            await provider.aclose()
