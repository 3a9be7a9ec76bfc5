"""Metadata enrichment (origin checklist PR 1): after routing, LPS adds `resolved_provider`,
`resolved_model` and `queue_processing_mode` to a request's metadata, leaves the CJ keys as they
are, and shows the result in ComparisonResult.request_metadata and in the log line that records
each request's result."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

import pytest

from cj_client import Ack, ComparisonOutcome, LpsClient
from lps_server.app import LpsApp
from lps_server.core.bundling import enrich_metadata
from lps_server.core.config import Settings
from lps_server.core.domain import Overrides, ProcessingMode, ProviderName, Route
from lps_server.providers import ProviderRegistry
from lps_server.providers.mock import MockProvider
from tests.bundling_support import BACKENDS
from tests.helpers import submission

LEGACY = {
    "essay_a_id": "essay-17",
    "essay_b_id": "essay-42",
    "bos_batch_id": "bos-7",
    "cj_batch_id": "cj-3",
    "cj_source": "eng5",
    "cj_request_type": "cj_comparison",
    "cj_llm_batching_mode": "serial_bundle",
    "comparison_iteration": "2",
    "preferred_bundle_size": "4",
}
ROUTE = Route(ProviderName.MOCK, "mock-judge-1")
MODES = [ProcessingMode.PER_REQUEST, ProcessingMode.SERIAL_BUNDLE]


# --- enrich_metadata ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_enrichment_adds_the_routing_keys(mode: ProcessingMode) -> None:
    enriched = enrich_metadata(LEGACY, route=ROUTE, mode=mode)
    assert enriched == {
        **LEGACY,
        "resolved_provider": "mock",
        "resolved_model": "mock-judge-1",
        "queue_processing_mode": mode.value,
    }


@pytest.mark.parametrize("mode", MODES)
def test_enrichment_leaves_cj_keys_and_its_input_untouched(mode: ProcessingMode) -> None:
    original = dict(LEGACY)
    enriched = enrich_metadata(original, route=ROUTE, mode=mode)
    assert original == LEGACY
    assert {k: enriched[k] for k in LEGACY} == LEGACY


@pytest.mark.parametrize("mode", MODES)
def test_enrichment_is_idempotent(mode: ProcessingMode) -> None:
    once = enrich_metadata(LEGACY, route=ROUTE, mode=mode)
    assert enrich_metadata(once, route=ROUTE, mode=mode) == once


def test_enrichment_of_empty_metadata() -> None:
    assert enrich_metadata({}, route=ROUTE, mode=ProcessingMode.SERIAL_BUNDLE) == {
        "resolved_provider": "mock",
        "resolved_model": "mock-judge-1",
        "queue_processing_mode": "serial_bundle",
    }


def test_enrichment_states_what_routing_decided_over_stale_values() -> None:
    stale = {**LEGACY, "resolved_provider": "openai", "queue_processing_mode": "per_request"}
    enriched = enrich_metadata(stale, route=ROUTE, mode=ProcessingMode.SERIAL_BUNDLE)
    assert enriched["resolved_provider"] == "mock"
    assert enriched["queue_processing_mode"] == "serial_bundle"


@pytest.mark.parametrize(("override", "model"), [("", "judge-default"), ("judge-x", "judge-x")])
def test_resolved_model_is_the_override_else_the_provider_default(
    override: str, model: str
) -> None:
    providers = ProviderRegistry([MockProvider(model="judge-default")])
    route = providers.resolve(Overrides(provider=ProviderName.MOCK, model=override))
    enriched = enrich_metadata(LEGACY, route=route, mode=ProcessingMode.PER_REQUEST)
    assert enriched["resolved_model"] == model


# --- through the server ---------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "redis":
        return {"queue_backend": "redis", "redis_url": request.getfixturevalue("redis_url")}
    return {"queue_backend": "local"}


@pytest.fixture
async def make_app(backend: dict[str, Any]) -> AsyncIterator[Callable[..., Awaitable[LpsApp]]]:
    apps: list[LpsApp] = []

    async def make(**settings: Any) -> LpsApp:
        base = {"grpc_host": "127.0.0.1", "grpc_port": 0, "metrics_port": 0, **backend}
        app = LpsApp(Settings.from_env({}, **base, **settings))
        apps.append(app)
        await app.start(serve_metrics=False)
        return app

    yield make
    for app in apps:
        await app.stop(grace=5)


@pytest.mark.parametrize("mode", MODES)
async def test_results_and_log_lines_carry_the_enriched_metadata(
    make_app: Callable[..., Awaitable[LpsApp]],
    mode: ProcessingMode,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="lps_server.processing.bundle_runner")
    app = await make_app(queue_processing_mode=mode)
    subs = [
        submission(0, metadata=LEGACY),
        submission(1, metadata=LEGACY, model="judge-x"),
        submission(2),
    ]
    results: dict[str, ComparisonOutcome] = {}
    async with (
        LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10) as client,
        aclosing(client.submit_many(subs)) as events,
    ):
        async for event in events:
            if isinstance(event, Ack):
                assert event.accepted
            else:
                results[event.request_id] = event

    routing = {"resolved_provider": "mock", "queue_processing_mode": mode.value}
    assert results["req-0"].metadata == {**LEGACY, **routing, "resolved_model": "mock-judge-1"}
    assert results["req-1"].metadata == {**LEGACY, **routing, "resolved_model": "judge-x"}
    assert results["req-2"].metadata == {**routing, "resolved_model": "mock-judge-1"}
    assert {r.status for r in results.values()} == {"completed"}
    logged = {
        entry["request_id"]: entry["metadata"]
        for rec in caplog.records
        if rec.name == "lps_server.processing.bundle_runner" and hasattr(rec, "requests")
        for entry in rec.requests
    }
    assert logged == {rid: dict(r.metadata) for rid, r in results.items()}
