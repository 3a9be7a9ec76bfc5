"""The batch APIs of the configured providers: the mock's own, OpenAI's Batch API for the OpenAI
and OpenAI-compatible providers, Anthropic's Message Batches."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from lps_server.core.config import Settings
from lps_server.core.domain import ProviderName
from lps_server.providers.anthropic import AnthropicProvider
from lps_server.providers.batch_anthropic import AnthropicBatchApi
from lps_server.providers.batch_base import BatchApi
from lps_server.providers.batch_mock import MockBatchApi
from lps_server.providers.batch_openai import OpenAIBatchApi
from lps_server.providers.mock import MockProvider
from lps_server.providers.openai_compat import OpenAICompatibleProvider
from lps_server.providers.registry import ProviderRegistry


class BatchApis:
    """The batch API of each provider that has one, keyed by provider."""

    def __init__(self, apis: Iterable[BatchApi]) -> None:
        self._apis = {api.name: api for api in apis}

    @classmethod
    def from_registry(
        cls,
        providers: ProviderRegistry,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> BatchApis:
        """A batch API for every provider of `providers` whose adapter has one."""
        apis: list[BatchApi] = []
        for name in providers.names():
            provider = providers.get(name)
            if isinstance(provider, MockProvider):
                apis.append(
                    MockBatchApi(
                        latency_ms=settings.mock_batch_latency_ms,
                        temperature=settings.mock_judge_temperature,
                        error_rate=settings.mock_error_rate,
                        clock=clock,
                    )
                )
            elif isinstance(provider, AnthropicProvider):
                apis.append(AnthropicBatchApi(provider))
            elif isinstance(provider, OpenAICompatibleProvider):
                apis.append(OpenAIBatchApi(provider))
        return cls(apis)

    def get(self, name: ProviderName) -> BatchApi | None:
        """The batch API of `name`, or None when it has none on this server."""
        return self._apis.get(name)

    def names(self) -> list[ProviderName]:
        """The providers with a batch API."""
        return list(self._apis)

    async def aclose(self) -> None:
        """Close every batch API."""
        for api in self._apis.values():
            await api.aclose()
