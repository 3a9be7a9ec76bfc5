"""An HTTP provider behind the processor: retries, partial answers, usage and cost, no key leaks."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

from lps_server.core.config import Settings
from lps_server.core.domain import (
    ComparisonRequest,
    Overrides,
    ProcessingMode,
    ProviderName,
    RequestStatus,
)
from lps_server.observability.metrics import LpsMetrics
from lps_server.processing.intake import Intake
from lps_server.processing.processor import Processor
from lps_server.providers import ProviderRegistry
from lps_server.queue import LocalQueue
from tests.fake_llm_servers import FakeOpenAI, Reply
from tests.provider_rig import SECRET, items


async def test_through_the_processor_retries_and_keeps_the_key_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Serial bundle of 4 on a compatible server: a 429, then an answer missing one item, then the
    item alone; every request completes with usage and cost, and the key is in no span, metric,
    result or log."""
    caplog.set_level(logging.DEBUG)
    async with FakeOpenAI(api_key=SECRET) as server:
        server.script(
            Reply(429, {"Retry-After": "0.05"}),
            Reply(
                answer={
                    "comparisons": [
                        {"index": i, "justification": "Clearer.", "winner": "B", "confidence": 3}
                        for i in (1, 3, 4)
                    ]
                }
            ),
        )
        env = {
            "LPS_OPENAI_COMPATIBLE_BASE_URL": server.base_url,
            "LPS_OPENAI_COMPATIBLE_API_KEY": SECRET,
            "LPS_OPENAI_COMPATIBLE_MODEL": "local-judge",
            "LPS_PRICE_TABLE": '{"local-judge": {"input_per_mtok": 10, "output_per_mtok": 20}}',
        }
        settings = Settings(
            queue_processing_mode=ProcessingMode.SERIAL_BUNDLE,
            serial_bundle_max_requests_per_call=4,
            serial_bundle_max_wait_ms=200,
            retry_backoff_ms=1,
        )
        registry = CollectorRegistry()
        spans = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
        providers = ProviderRegistry.from_settings(settings, env=env)
        queue = LocalQueue()
        intake = Intake(queue=queue, providers=providers, settings=settings)
        processor = Processor(
            queue=queue,
            providers=providers,
            settings=settings,
            metrics=LpsMetrics(registry),
            tracer_provider=tracer_provider,
        )
        requests = [
            ComparisonRequest(
                request_id=item.key,
                essay_a=item.essay_a,
                essay_b=item.essay_b,
                instructions=item.instructions,
                overrides=Overrides(provider=ProviderName.OPENAI_COMPATIBLE),
                result_channel="results",
            )
            for item in items(4)
        ]
        await intake.submit([intake.prepare(req) for req in requests])
        running = asyncio.create_task(processor.run())
        results = []
        cursor = ""
        async with asyncio.timeout(10):
            while len(results) < 4:
                entries = await queue.read_channel("results", cursor=cursor, timeout=5)
                results += [e.result for e in entries]
                cursor = entries[-1].cursor if entries else cursor
        processor.stop()
        await running
        await providers.aclose()

    assert server.problems == []
    assert [c.comparisons for c in server.calls] == [4, 4, 1]
    assert {r.status for r in results} == {RequestStatus.COMPLETED}
    assert all(r.token_usage.total_tokens > 0 and r.cost_usd > 0 for r in results)
    assert all(r.model == "local-judge" for r in results)
    labels = {"provider": "openai_compatible", "model": "local-judge"}
    assert registry.get_sample_value("llm_provider_serial_bundle_calls_total", labels) == 2
    exported = [
        json.dumps(
            [
                s.attributes and dict(s.attributes),
                [e.attributes for e in s.events],
                s.status.description,
            ],
            default=str,
        )
        for s in spans.get_finished_spans()
    ]
    assert exported, "spans were recorded"
    for text in [*exported, generate_latest(registry).decode(), repr(results), caplog.text]:
        assert SECRET not in text
