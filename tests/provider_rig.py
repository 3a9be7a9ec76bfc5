"""A fake provider server and an HTTP provider pointed at it, for the provider tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from lps_server.core.domain import CircuitState, Essay, Overrides, ProviderName
from lps_server.providers.anthropic import AnthropicProvider
from lps_server.providers.base import ComparisonItem, ProviderCallError
from lps_server.providers.http_provider import HttpProvider
from lps_server.providers.http_settings import HttpProviderSettings, Secret
from lps_server.providers.openai_compat import OpenAICompatibleProvider
from tests.fake_llm_servers import FakeAnthropic, FakeLlmServer, FakeOpenAI

SECRET = "sk-test-SECRET-123"
FLAVOURS = ["openai", "anthropic"]
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}
INSTRUCTIONS = "Which essay answers the question 'Should school start later?' better?"


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    """A fake server and a provider pointed at it."""

    server: FakeLlmServer
    provider: HttpProvider
    settings: HttpProviderSettings
    clock: FakeClock
    transitions: list[CircuitState] = field(default_factory=list)


@asynccontextmanager
async def rig(
    flavour: str, *, server_key: str | None = SECRET, **overrides: Any
) -> AsyncIterator[Rig]:
    server: FakeLlmServer = (
        FakeOpenAI(api_key=server_key) if flavour == "openai" else FakeAnthropic(api_key=server_key)
    )
    async with server:
        settings = HttpProviderSettings(
            provider=ProviderName.OPENAI if flavour == "openai" else ProviderName.ANTHROPIC,
            base_url=server.base_url,
            api_key=Secret(SECRET),
            default_model=MODELS[flavour],
            timeout_s=5.0,
            configured=True,
        )
        settings = replace(settings, **overrides)
        clock = FakeClock()
        transitions: list[CircuitState] = []
        adapter = OpenAICompatibleProvider if flavour == "openai" else AnthropicProvider
        provider = adapter(
            settings, clock=clock, on_circuit_state=lambda _name, state: transitions.append(state)
        )
        try:
            yield Rig(server, provider, settings, clock, transitions)
        finally:
            await provider.aclose()


def items(n: int, instructions: str = INSTRUCTIONS) -> list[ComparisonItem]:
    return [
        ComparisonItem(
            key=f"req-{i}",
            essay_a=Essay(f"a{i}", f"Essay A number {i}: later starts help sleep."),
            essay_b=Essay(f"b{i}", f"Essay B number {i}: buses cost money."),
            instructions=instructions,
        )
        for i in range(1, n + 1)
    ]


async def compare(r: Rig, n: int, **overrides: Any) -> list[Any]:
    return await r.provider.compare(
        items(n), model=r.settings.default_model, overrides=Overrides(**overrides)
    )


async def call_error(r: Rig, n: int = 2) -> ProviderCallError:
    with pytest.raises(ProviderCallError) as info:
        await compare(r, n)
    return info.value
