"""LPS Prometheus metrics read after real flows through an in-process server, and over HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from cj_client import (
    ComparisonOutcome,
    EssayInput,
    InvalidRequestError,
    LpsClient,
    NotFoundError,
)
from cj_client.metrics import CjMetrics
from lps_server.core.domain import ProcessingMode
from lps_server.observability.metrics import BUNDLE_SIZE_BUCKETS, EXPIRY_AGE_BUCKETS
from tests.helpers import GatedMock, eventually, metric, running_app, submission, submit_all

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MODEL = "mock-judge-1"
WEIRD = "weird-model-123"
WAIT_S = 10.0


class FakeClock:
    """A Unix clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def samples_of(registry: CollectorRegistry, family: str) -> list[Any]:
    """The samples of a registered metric family (names without `_total`)."""
    (found,) = [f for f in registry.collect() if f.name == family]
    return list(found.samples)


def bundles_of(results: list[ComparisonOutcome]) -> dict[str, list[int]]:
    """Bundle sizes by model as the results report them (one entry per bundle)."""
    sizes: dict[str, dict[str, int]] = defaultdict(dict)
    for r in results:
        sizes[r.model][r.bundle_id] = r.bundle_size
    return {model: sorted(by_id.values()) for model, by_id in sizes.items()}


async def test_per_request_mode_records_requests_but_no_bundle_samples(
    start_lps: Callable[..., Any], registry: CollectorRegistry
) -> None:
    lps = await start_lps()
    async with LpsClient(target=f"127.0.0.1:{lps.grpc_port}", timeout=10) as client:
        results = await submit_all(client, [submission(i) for i in range(6)])

    assert {r.status for r in results} == {"completed"}
    assert {r.processing_mode for r in results} == {"per_request"}
    assert samples_of(registry, "llm_provider_serial_bundle_calls") == []
    assert samples_of(registry, "llm_provider_serial_bundle_items_per_call") == []
    labels = {"provider": "mock", "model": MODEL}
    assert metric(registry, "llm_provider_requests_total", status="completed", **labels) == 6
    assert metric(registry, "llm_provider_response_duration_seconds_count", **labels) == 6
    assert (
        metric(
            registry,
            "llm_provider_queue_wait_time_seconds_count",
            queue_processing_mode="per_request",
            result="completed",
        )
        == 6
    )
    tokens = "llm_provider_tokens_used_total"
    assert metric(registry, tokens, type="input", **labels) == sum(r.prompt_tokens for r in results)
    assert metric(registry, tokens, type="output", **labels) == sum(
        r.completion_tokens for r in results
    )
    assert metric(registry, tokens, type="input") > 0
    assert metric(registry, tokens, type="output") > 0
    # The mock reports no cached tokens; the kinds exist (at 0) for providers that do.
    assert metric(registry, tokens, type="cache_read", **labels) == 0
    assert metric(registry, tokens, type="cache_write", **labels) == 0
    assert metric(registry, "llm_provider_cost_dollars_total", **labels) == pytest.approx(
        sum(r.cost_usd for r in results)
    )
    assert (
        metric(registry, "llm_provider_grpc_requests_total", method="SubmitComparisons", code="OK")
        == 1
    )


async def test_serial_bundle_metrics_match_the_bundles_sent_and_bound_the_model_label(
    start_lps: Callable[..., Any], registry: CollectorRegistry
) -> None:
    lps = await start_lps(
        queue_processing_mode=ProcessingMode.SERIAL_BUNDLE, serial_bundle_max_requests_per_call=4
    )
    # Interleaved: two compatibility groups; the mock only knows its configured model.
    subs = [submission(i, model=WEIRD if i % 3 == 0 else "") for i in range(15)]
    async with LpsClient(target=f"127.0.0.1:{lps.grpc_port}", timeout=10) as client:
        results = await submit_all(client, subs)

    assert {r.status for r in results} == {"completed"}
    assert {r.model for r in results} == {MODEL, WEIRD}
    sizes = bundles_of(results)
    assert max(max(s) for s in sizes.values()) == 4, "the requests were meant to be bundled"
    for model, label in ((MODEL, MODEL), (WEIRD, "other")):
        labels = {"provider": "mock", "model": label}
        bundles = sizes[model]
        assert metric(registry, "llm_provider_serial_bundle_calls_total", **labels) == len(bundles)
        items = "llm_provider_serial_bundle_items_per_call"
        assert metric(registry, f"{items}_count", **labels) == len(bundles)
        assert metric(registry, f"{items}_sum", **labels) == sum(bundles)
        for bound in BUNDLE_SIZE_BUCKETS:
            expected = sum(1 for s in bundles if s <= bound)
            assert metric(registry, f"{items}_bucket", le=str(float(bound)), **labels) == expected
        assert metric(registry, "llm_provider_requests_total", status="completed", **labels) == (
            sum(bundles)
        )
        assert metric(registry, "llm_provider_response_duration_seconds_count", **labels) == len(
            bundles
        )

    # Label safety: the client's model name never becomes a label value.
    models = {
        s.labels["model"] for f in registry.collect() for s in f.samples if "model" in s.labels
    }
    assert models == {MODEL, "other"}


async def test_grpc_calls_are_counted_by_method_and_code(
    start_lps: Callable[..., Any], registry: CollectorRegistry
) -> None:
    lps = await start_lps()
    async with LpsClient(target=f"127.0.0.1:{lps.grpc_port}", timeout=10) as client:
        with pytest.raises(InvalidRequestError):
            await client.submit(submission(1, priority=42))
        with pytest.raises(InvalidRequestError):
            await client.submit(submission(2, essay_a=EssayInput("a2", "")))
        with pytest.raises(NotFoundError):
            await client.get("no-such-request")
        await client.queue_stats()
        await client.queue_stats()
        await client.submit(submission(3, result_channel="cancelled"))
        async for _ in client.stream_results("cancelled"):
            break  # the client cancels the call: how every StreamResults call ends
        await eventually(
            lambda: (
                metric(registry, "llm_provider_grpc_requests_total", method="StreamResults") > 0
            ),
            "the cancelled StreamResults call to be counted",
        )

    counts = {
        (s.labels["method"], s.labels["code"]): s.value
        for s in samples_of(registry, "llm_provider_grpc_requests")
        if s.name.endswith("_total") and s.value > 0
    }
    assert counts == {
        ("SubmitComparison", "INVALID_ARGUMENT"): 2,
        ("GetComparison", "NOT_FOUND"): 1,
        ("GetQueueStats", "OK"): 2,
        ("SubmitComparison", "OK"): 1,
        ("StreamResults", "CANCELLED"): 1,
    }
    latency = "llm_provider_grpc_request_duration_seconds_count"
    assert metric(registry, latency, method="SubmitComparison", code="INVALID_ARGUMENT") == 2
    assert metric(registry, latency, method="GetQueueStats", code="OK") == 2


async def test_ttl_expiry_at_dequeue_is_counted_with_its_age() -> None:
    provider, clock = GatedMock(), FakeClock()
    async with (
        running_app(
            provider=provider,
            clock=clock,
            max_concurrent_calls=1,
            queue_sweep_interval_seconds=3600,
            queue_lease_seconds=3600,
        ) as app,
        LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10) as client,
    ):
        await client.submit(submission(0, result_channel="ttl"))
        async with asyncio.timeout(WAIT_S):
            await provider.entered.wait()  # the only call slot is busy from now on
        await client.submit(submission(1, result_channel="ttl", ttl_seconds=10))
        await client.submit(submission(2, result_channel="ttl", ttl_seconds=600))
        clock.now += 200
        provider.gate.set()
        outcomes = {}
        async with asyncio.timeout(WAIT_S):
            async for _, outcome in client.stream_results("ttl"):
                outcomes[outcome.request_id] = outcome.status
                if len(outcomes) == 3:
                    break

    registry = app.registry
    assert outcomes == {"req-0": "completed", "req-1": "expired", "req-2": "completed"}
    labels = {"provider": "mock", "queue_processing_mode": "per_request"}
    assert metric(registry, "llm_provider_queue_expiry_total", expiry_reason="ttl", **labels) == 1
    assert metric(registry, "llm_provider_queue_expiry_total", expiry_reason="cleanup") == 0
    age = "llm_provider_queue_expiry_age_seconds"
    assert metric(registry, f"{age}_sum", **labels) == pytest.approx(200)
    for bound in EXPIRY_AGE_BUCKETS:
        assert metric(registry, f"{age}_bucket", le=str(float(bound)), **labels) == (
            1 if bound >= 200 else 0
        )
    # An expired request never reaches a provider, so it is not a processed request.
    assert metric(registry, "llm_provider_requests_total") == 2
    # Both others ended 200 s after they were queued; waits that long still land in a bucket.
    wait = {"queue_processing_mode": "per_request", "result": "completed"}
    assert metric(registry, "llm_provider_queue_wait_time_seconds_count", **wait) == 2
    assert metric(registry, "llm_provider_queue_wait_time_seconds_sum", **wait) == (
        pytest.approx(400)
    )
    assert metric(registry, "llm_provider_queue_wait_time_seconds_bucket", le="120.0") == 0
    assert metric(registry, "llm_provider_queue_wait_time_seconds_bucket", le="300.0") == 2


async def test_cleanup_expiry_by_the_sweep_is_counted_with_its_age() -> None:
    provider, clock = GatedMock(), FakeClock()
    async with (
        running_app(
            provider=provider,
            clock=clock,
            max_concurrent_calls=1,
            queue_sweep_interval_seconds=0.01,
            queue_lease_seconds=3600,
            queue_processing_mode=ProcessingMode.SERIAL_BUNDLE,
        ) as app,
        LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10) as client,
    ):
        await client.submit(submission(0))
        async with asyncio.timeout(WAIT_S):
            await provider.entered.wait()
        for i in (1, 2):
            await client.submit(submission(i, ttl_seconds=60))
        clock.now += 100
        reason = {"expiry_reason": "cleanup"}
        await eventually(
            lambda: metric(app.registry, "llm_provider_queue_expiry_total", **reason) == 2,
            "the sweep to expire both requests",
        )
        assert [(await client.get(f"req-{i}")).status for i in (1, 2)] == ["expired"] * 2
        provider.gate.set()

    registry = app.registry
    labels = {"provider": "mock", "queue_processing_mode": "serial_bundle"}
    assert (
        metric(registry, "llm_provider_queue_expiry_total", expiry_reason="cleanup", **labels) == 2
    )
    assert metric(registry, "llm_provider_queue_expiry_total", expiry_reason="ttl") == 0
    age = "llm_provider_queue_expiry_age_seconds"
    assert metric(registry, f"{age}_count", **labels) == 2
    assert metric(registry, f"{age}_sum", **labels) == pytest.approx(200)
    assert metric(registry, f"{age}_bucket", le="60.0", **labels) == 0
    assert metric(registry, f"{age}_bucket", le="120.0", **labels) == 2
    # Only the request that reached the provider made a bundle call.
    assert metric(registry, "llm_provider_serial_bundle_calls_total") == 1
    assert metric(registry, "llm_provider_serial_bundle_items_per_call_sum") == 1


FIXED_FAMILIES = {
    "llm_provider_serial_bundle_calls": "counter",
    "llm_provider_serial_bundle_items_per_call": "histogram",
    "llm_provider_queue_expiry": "counter",
    "llm_provider_queue_expiry_age_seconds": "histogram",
    "llm_provider_queue_depth": "gauge",
    "llm_provider_queue_wait_time_seconds": "histogram",
    "llm_provider_requests": "counter",
    "llm_provider_response_duration_seconds": "histogram",
    "llm_provider_tokens_used": "counter",
    "llm_provider_cost_dollars": "counter",
    "llm_provider_grpc_requests": "counter",
    "llm_provider_grpc_request_duration_seconds": "histogram",
}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


async def test_metrics_endpoint_serves_every_fixed_metric_in_prometheus_text_format() -> None:
    async with running_app(
        serve_metrics=True,
        queue_processing_mode=ProcessingMode.SERIAL_BUNDLE,
        serial_bundle_max_requests_per_call=8,
    ) as app:
        assert app.metrics_port
        async with LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10) as client:
            results = await submit_all(client, [submission(i) for i in range(8)])
        text = await asyncio.to_thread(scrape, app.metrics_port)

    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in FIXED_FAMILIES.items():
        assert name in families, f"{name} missing from /metrics"
        assert families[name].type == kind
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    labels = (("model", MODEL), ("provider", "mock"))
    bundles = len({r.bundle_id for r in results})
    assert values[("llm_provider_serial_bundle_calls_total", labels)] == bundles
    assert values[("llm_provider_serial_bundle_items_per_call_sum", labels)] == 8
    status = (("model", MODEL), ("provider", "mock"), ("status", "completed"))
    assert values[("llm_provider_requests_total", status)] == 8


# The deploy stack is not run here (no Docker); its files must parse and name real metrics.


def recorded_rules() -> dict[str, str]:
    """The recording rules shipped in deploy/prometheus/lps.rules.yml: name -> expression."""
    yaml = pytest.importorskip("yaml")
    rules = yaml.safe_load((DEPLOY / "prometheus" / "lps.rules.yml").read_text("utf-8"))
    return {r["record"]: r["expr"] for g in rules["groups"] for r in g["rules"] if "record" in r}


def metrics_named(expr: str) -> set[str]:
    """The metric families an expression reads (suffixes of histograms and counters dropped)."""
    names = re.findall(r"\b(?:llm_provider|cj)_\w+", re.sub(r"\b\w+:\w+:\w+\b", "", expr))
    return {re.sub(r"_(bucket|count|sum|total)$", "", m) for m in names}


async def test_dashboard_queries_only_metrics_and_recorded_series_that_exist() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "lps.json").read_text("utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    async with running_app(queue_processing_mode=ProcessingMode.SERIAL_BUNDLE) as app:
        CjMetrics(app.registry)
        known = {f.name for f in app.registry.collect()}
    rules = recorded_rules()
    named = set().union(*map(metrics_named, exprs), *map(metrics_named, rules.values()))
    assert named <= known, f"unknown metrics in the dashboard or rules: {sorted(named - known)}"
    used_rules = {r for e in exprs for r in re.findall(r"\b\w+:\w+:\w+\b", e)}
    assert used_rules <= set(rules), f"unknown recorded series: {sorted(used_rules - set(rules))}"
    assert used_rules, "the dashboard reads the recording rules"
    for topic in (
        "llm_provider_queue_depth",
        "llm_provider_queue_oldest_age_seconds",
        "llm_provider_serial_bundle_items_per_call_bucket",
        "provider_model:llm_provider_serial_bundle_items_per_call:mean_rate5m",
        "expiry_reason:llm_provider_queue_expiry:rate5m",
        "provider_model:llm_provider_response_duration_seconds:p95_rate5m",
        "lps:llm_provider_requests_failed:ratio_rate5m",
        "llm_provider_grpc_requests_total",
        "llm_provider_submissions_rejected_total",
        "llm_provider_circuit_state",
        "llm_provider_tokens_used_total",
        "cj_llm_requests_total",
    ):
        assert any(topic in e for e in exprs), f"no panel queries {topic}"
    panel_sources = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    assert panel_sources == {"prometheus"}


def test_deploy_stack_wires_jaeger_otlp_and_the_host_lps_scrape() -> None:
    compose = (DEPLOY / "compose.yaml").read_text("utf-8")
    for needle in ("jaegertracing/all-in-one", '"4317:4317"', "host.docker.internal:host-gateway"):
        assert needle in compose
    provisioning = DEPLOY / "grafana" / "provisioning" / "datasources" / "datasources.yaml"
    assert "uid: prometheus" in provisioning.read_text("utf-8")
    assert "host.docker.internal:9464" in (DEPLOY / "prometheus.yml").read_text("utf-8")


def test_compose_prometheus_and_grafana_files_parse_as_yaml() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text("utf-8"))
    assert {"redis", "jaeger", "prometheus", "grafana"} <= set(compose["services"])
    assert "host.docker.internal:host-gateway" in compose["services"]["prometheus"]["extra_hosts"]
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text("utf-8"))
    targets = [
        t
        for job in prometheus["scrape_configs"]
        for static in job["static_configs"]
        for t in static["targets"]
    ]
    assert "host.docker.internal:9464" in targets
    assert prometheus["rule_files"] == ["prometheus/lps.rules.yml"]
    assert (DEPLOY / prometheus["rule_files"][0]).is_file()
    (gateway,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "pushgateway"]
    assert gateway["honor_labels"] is True
    for path in (DEPLOY / "grafana" / "provisioning").rglob("*.yaml"):
        assert yaml.safe_load(path.read_text("utf-8"))["apiVersion"] == 1
