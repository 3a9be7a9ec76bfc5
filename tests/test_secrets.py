"""Secrets (auth tokens, provider API keys) appear in no log, span, metric, result or error.

A server runs with known secret values and real failures: providers at a dead port, and one that
answers 401 echoing the key it was sent (as real APIs do, there masked, here whole). Everything a
client, an operator or a collector can see is then searched for the values.
"""

from __future__ import annotations

import io
import logging
import socket
from collections.abc import Awaitable, Callable

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cj_client import Ack, ComparisonOutcome, LpsClient, UnauthenticatedError
from lps_server.app import LpsApp
from lps_server.core.config import Settings
from lps_server.observability.logs import JsonFormatter
from lps_server.providers.http_settings import HttpProvidersSettings
from tests.fake_llm_servers import FakeOpenAI
from tests.helpers import submission
from tests.redis_server import free_port

TOKEN = "tok-SECRET-abc"
OPENAI_KEY = "sk-SECRET-xyz"
ANTHROPIC_KEY = "sk-ant-SECRET-qrs"
COMPATIBLE_KEY = "sk-SECRET-compat"
SECRETS = (TOKEN, OPENAI_KEY, ANTHROPIC_KEY, COMPATIBLE_KEY)
# Any fragment (a masked "sk-SECRET-x***" form, say) is a leak too: every value holds this word.
MARKER = "SECRET"


def leaks(text: str) -> list[str]:
    """The secrets, or fragments of them, in `text`."""
    return [s for s in (*SECRETS, MARKER) if s in text]


async def test_no_secret_reaches_logs_spans_metrics_results_or_errors(
    start_lps: Callable[..., Awaitable[LpsApp]],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    json_lines = io.StringIO()
    handler = logging.StreamHandler(json_lines)
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
    spans = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(spans))
    dead = f"http://127.0.0.1:{free_port()}"
    try:
        async with FakeOpenAI(api_key="the-key-it-expects") as echoing:
            for name, value in {
                "LPS_OPENAI_API_KEY": OPENAI_KEY,
                "LPS_OPENAI_BASE_URL": dead + "/v1",
                "LPS_ANTHROPIC_API_KEY": ANTHROPIC_KEY,
                "LPS_ANTHROPIC_BASE_URL": dead,
                "LPS_OPENAI_COMPATIBLE_API_KEY": COMPATIBLE_KEY,
                "LPS_OPENAI_COMPATIBLE_BASE_URL": echoing.base_url,
                "LPS_OPENAI_COMPATIBLE_MODEL": "local-judge",
            }.items():
                monkeypatch.setenv(name, value)
            app = await start_lps(
                auth_tokens=(TOKEN,),
                tracer_provider=tracing,
                serve_metrics=True,
                queue_max_retries=1,
                retry_backoff_ms=1,
            )
            seen = await exercise(app)
            # It was sent the key, so its 401 echoed the key: the server had to mask it.
            assert echoing.calls[0].headers["authorization"] == f"Bearer {COMPATIBLE_KEY}"
    finally:
        logging.getLogger().removeHandler(handler)

    for record in caplog.records:
        seen.append(record.getMessage())
        seen.append(JsonFormatter().format(record))  # extras and exception text too
    seen.append(json_lines.getvalue())
    seen += [span.to_json() for span in spans.get_finished_spans()]
    seen += [repr(app.settings), str(app.settings), repr(HttpProvidersSettings.from_env(None))]
    seen.append(repr(Settings(redis_url="redis://lps:pw-SECRET@127.0.0.1:6379/0")))

    assert len(spans.get_finished_spans()) > 5
    assert any("lps listening" in text for text in seen), "the logs were captured"
    found = {i: leaks(text) for i, text in enumerate(seen) if leaks(text)}
    assert not found, {i: (seen[i][:300], hits) for i, hits in found.items()}


async def exercise(app: LpsApp) -> list[str]:
    """Submit work that succeeds, fails at each provider, and is refused; return all answers."""
    seen: list[str] = []
    target = f"127.0.0.1:{app.grpc_port}"
    async with LpsClient(target=target, token=TOKEN, timeout=30) as client:
        subs = [
            submission(1),
            submission(2, provider="openai"),
            submission(3, provider="anthropic"),
            submission(4, provider="openai_compatible"),
            submission(5, priority=42),  # invalid
        ]
        results = []
        async for event in client.submit_many(subs):
            seen.append(repr(event))
            if isinstance(event, ComparisonOutcome):
                results.append(event)
            else:
                assert isinstance(event, Ack)
        assert {r.request_id: r.status for r in results} == {
            "req-1": "completed",
            "req-2": "failed",
            "req-3": "failed",
            "req-4": "failed",
        }
        assert "401" in next(r for r in results if r.request_id == "req-4").error_message
        for i in range(1, 5):
            seen.append(repr(await client.get(f"req-{i}")))
        seen.append(repr(await client.queue_stats()))
    for wrong in (TOKEN + "x", TOKEN[:-1], "Bearer " + TOKEN):
        async with LpsClient(target=target, token=wrong, timeout=10) as intruder:
            with pytest.raises(UnauthenticatedError) as caught:
                await intruder.queue_stats()
            seen.append(str(caught.value))
    async with httpx.AsyncClient(timeout=5) as http:
        scrape = await http.get(f"http://127.0.0.1:{app.metrics_port}/metrics")
    assert "llm_provider_requests_total" in scrape.text
    seen.append(scrape.text)
    return seen


def test_free_port_is_dead() -> None:
    # The "dead" provider address must refuse connections, or the test would measure nothing.
    port = free_port()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
