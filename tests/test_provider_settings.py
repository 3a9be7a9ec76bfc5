"""HTTP provider settings from the environment, and the provider registry built from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lps_server.core.config import Settings
from lps_server.core.domain import Overrides, ProviderName
from lps_server.core.errors import ConfigurationError
from lps_server.providers import ProviderRegistry
from lps_server.providers.http_settings import (
    BundleCalls,
    HttpProvidersSettings,
    ModelPrice,
    Secret,
)
from tests.provider_rig import SECRET


def test_settings_from_env_defaults_and_configuration(tmp_path: Path) -> None:
    none = HttpProvidersSettings.from_env({})
    assert none.configured() == []
    assert none.openai.base_url == "https://api.openai.com/v1"
    assert none.anthropic.base_url == "https://api.anthropic.com"

    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"local-judge": {"input_per_mtok": 1, "output_per_mtok": 2}}))
    env = {
        "LPS_OPENAI_API_KEY": SECRET,
        "LPS_OPENAI_COMPATIBLE_BASE_URL": "http://127.0.0.1:8000/v1/",
        "LPS_OPENAI_COMPATIBLE_MODEL": "local-judge",
        "LPS_OPENAI_COMPATIBLE_BUNDLE_CALLS": "sequential",
        "LPS_ANTHROPIC_TIMEOUT_SECONDS": "12.5",
        "LPS_PRICE_TABLE": str(prices),
    }
    some = HttpProvidersSettings.from_env(env)
    assert [s.provider for s in some.configured()] == [
        ProviderName.OPENAI,
        ProviderName.OPENAI_COMPATIBLE,
    ]
    compat = some.openai_compatible
    assert compat.base_url == "http://127.0.0.1:8000/v1"
    assert compat.bundle_calls == BundleCalls.SEQUENTIAL
    assert not compat.api_key
    assert compat.prices.prices["local-judge"] == ModelPrice(1.0, 2.0)
    assert "gpt-4o-mini" in compat.known_models(), "built-in prices stay"
    assert some.anthropic.timeout_s == 12.5
    assert SECRET not in repr(some)
    assert some.openai.api_key == Secret(SECRET)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LPS_OPENAI_COMPATIBLE_BASE_URL": "http://x/v1"}, "LPS_OPENAI_COMPATIBLE_MODEL"),
        ({"LPS_OPENAI_API_KEY": "k", "LPS_OPENAI_BUNDLE_CALLS": "batch"}, "BUNDLE_CALLS"),
        ({"LPS_ANTHROPIC_API_KEY": "k", "LPS_ANTHROPIC_BASE_URL": "api.x"}, "BASE_URL"),
        ({"LPS_OPENAI_API_KEY": "k", "LPS_OPENAI_CIRCUIT_BREAKER_THRESHOLD": "0"}, "THRESHOLD"),
        ({"LPS_PRICE_TABLE": '{"m": {"input_per_mtok": -1}}'}, "input_per_mtok"),
        ({"LPS_PRICE_TABLE": "/nonexistent/prices.json"}, "cannot read"),
    ],
)
def test_invalid_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        HttpProvidersSettings.from_env(env)


def test_registry_builds_configured_providers_and_bounded_model_labels() -> None:
    from lps_server.core.domain import Route

    assert ProviderRegistry.from_settings(Settings(), env={}).names() == [ProviderName.MOCK]
    env = {
        "LPS_ANTHROPIC_API_KEY": SECRET,
        "LPS_PRICE_TABLE": '{"claude-x": {"input_per_mtok": 1, "output_per_mtok": 5}}',
    }
    registry = ProviderRegistry.from_settings(Settings(), env=env)
    assert registry.names() == [ProviderName.MOCK, ProviderName.ANTHROPIC]
    route = registry.resolve(Overrides(provider=ProviderName.ANTHROPIC))
    assert route == Route(ProviderName.ANTHROPIC, "claude-haiku-4-5")
    assert registry.model_label(route) == "claude-haiku-4-5"
    assert registry.model_label(Route(ProviderName.ANTHROPIC, "claude-x")) == "claude-x"
    assert registry.model_label(Route(ProviderName.ANTHROPIC, "made-up-model")) == "other"
