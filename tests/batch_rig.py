"""Shared parts of the batch-API tests: in-process LPS apps whose providers point at the fake
batch servers, quick batch settings, and the submissions the fakes can judge."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CollectorRegistry

from cj_client import ComparisonSubmission, LpsClient
from lps_server.app import LpsApp
from lps_server.core.config import Settings
from lps_server.core.domain import ProcessingMode, ProviderName
from lps_server.providers import Provider, ProviderRegistry
from lps_server.providers.anthropic import AnthropicProvider
from lps_server.providers.http_settings import HttpProviderSettings, Secret
from lps_server.providers.mock import MockProvider
from lps_server.providers.openai_compat import OpenAICompatibleProvider
from tests.fake_batch_servers import FakeAnthropicBatches, FakeOpenAIBatches
from tests.fault_rig import marked

BATCH = ProcessingMode.BATCH_API
KEY = "sk-batch-key"
#: Batch settings that make a test take milliseconds, not minutes.
QUICK: dict[str, Any] = {
    "batch_api_poll_seconds": 0.02,
    "batch_api_max_wait_ms": 200,
    "mock_batch_latency_ms": 60.0,
    "retry_backoff_ms": 1,
    "serial_bundle_max_requests_per_call": 4,
}


def http_provider(
    fake: FakeOpenAIBatches | FakeAnthropicBatches, *, key: str = KEY, timeout_s: float = 5.0
) -> Provider:
    """The synchronous adapter of the fake's provider (its batch adapter is made from it)."""
    anthropic = isinstance(fake, FakeAnthropicBatches)
    settings = HttpProviderSettings(
        provider=ProviderName.ANTHROPIC if anthropic else ProviderName.OPENAI,
        base_url=fake.base_url,
        api_key=Secret(key),
        default_model="claude-haiku-4-5" if anthropic else "gpt-4o-mini",
        timeout_s=timeout_s,
        configured=True,
    )
    return AnthropicProvider(settings) if anthropic else OpenAICompatibleProvider(settings)


@asynccontextmanager
async def batch_app(
    *, also: Sequence[Provider] = (), registry: CollectorRegistry | None = None, **settings: Any
) -> AsyncIterator[LpsApp]:
    """A started LPS (batch_api mode and QUICK settings unless told otherwise) with the mock and
    `also`; stopped, with a short grace, on exit."""
    values: dict[str, Any] = {
        "grpc_host": "127.0.0.1",
        "grpc_port": 0,
        "metrics_port": 0,
        "queue_processing_mode": BATCH,
        **QUICK,
        **settings,
    }
    app = LpsApp(
        Settings.from_env({}, **values),
        registry=registry or CollectorRegistry(),
        providers=ProviderRegistry([MockProvider(jitter=0.0), *also]),
    )
    await app.start(serve_metrics=False)
    try:
        yield app
    finally:
        await app.stop(grace=5)


def client_for(app: LpsApp) -> LpsClient:
    """A client of `app`."""
    return LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10)


def judged_subs(prefix: str, n: int, provider: str, **fields: Any) -> list[ComparisonSubmission]:
    """`n` submissions the fake batch servers judge by their id (`expected_winner`)."""
    return [marked(f"{prefix}-{i}", i, provider=provider, **fields) for i in range(n)]
