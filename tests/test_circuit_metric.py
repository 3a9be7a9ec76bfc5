"""The circuit-breaker state of an HTTP provider is exported as `llm_provider_circuit_state`."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from cj_client import Ack, ComparisonOutcome, LpsClient
from lps_server.app import LpsApp
from lps_server.core.config import Settings
from tests.helpers import metric, submission
from tests.redis_server import free_port


async def test_open_circuit_shows_in_the_gauge(monkeypatch: pytest.MonkeyPatch) -> None:
    dead = free_port()  # nothing listens here: every call is a connection failure
    monkeypatch.setenv("LPS_OPENAI_COMPATIBLE_BASE_URL", f"http://127.0.0.1:{dead}/v1")
    monkeypatch.setenv("LPS_OPENAI_COMPATIBLE_MODEL", "local-model")
    monkeypatch.setenv("LPS_OPENAI_COMPATIBLE_CIRCUIT_BREAKER_THRESHOLD", "1")
    registry = CollectorRegistry()
    settings = Settings.from_env(
        {}, grpc_host="127.0.0.1", grpc_port=0, queue_max_retries=0, retry_backoff_ms=1
    )
    app = LpsApp(settings, registry=registry)
    await app.start(serve_metrics=False)
    try:
        async with LpsClient(target=f"127.0.0.1:{app.grpc_port}") as client:
            events = [
                e async for e in client.submit_many([submission(1, provider="openai_compatible")])
            ]
    finally:
        await app.stop(grace=5)
    acks = [e for e in events if isinstance(e, Ack)]
    (result,) = [e for e in events if isinstance(e, ComparisonOutcome)]
    assert acks[0].accepted
    assert result.status == "failed"
    assert result.error_code == "provider_unavailable"
    assert metric(registry, "llm_provider_circuit_state", provider="openai_compatible") == 2
