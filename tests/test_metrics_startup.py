"""What a replica exports before its first request: every bounded label combination at 0 (so the
first burst counts in rate() and increase()), every HTTP provider's circuit state, and exactly the
metrics docs/observability.md lists."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from cj_client.metrics import CjMetrics
from lps_server.app import LpsApp
from lps_server.core.config import Settings
from lps_server.core.domain import ProcessingMode
from lps_server.edge.rejections import CALL_CODES
from lps_server.observability.metrics import (
    EXPIRY_REASONS,
    PROCESSED_STATUSES,
    REJECTION_REASONS,
    TOKEN_TYPES,
)
from tests.helpers import running_app
from tests.redis_server import free_port

DOCS = Path(__file__).resolve().parent.parent / "docs" / "observability.md"
ROW = re.compile(
    r"^\| `((?:llm_provider|cj_llm)_\w+)` \| (counter|gauge|histogram)[^|]*\| ([^|]*)\|"
)
METHODS = {
    "SubmitComparison",
    "SubmitComparisons",
    "StreamResults",
    "GetComparison",
    "GetQueueStats",
}
RETRIED = {"rate_limited", "provider_unavailable", "timeout", "invalid_response"}
Samples = dict[str, list[dict[str, str]]]


@pytest.fixture
async def fresh_app(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LpsApp]:
    """A started serial-bundle replica with the mock and an OpenAI-compatible provider (at a port
    nobody listens on: it is never called here)."""
    monkeypatch.setenv("LPS_OPENAI_COMPATIBLE_BASE_URL", f"http://127.0.0.1:{free_port()}/v1")
    monkeypatch.setenv("LPS_OPENAI_COMPATIBLE_MODEL", "local-model")
    async with running_app(
        serve_metrics=True, queue_processing_mode=ProcessingMode.SERIAL_BUNDLE
    ) as app:
        yield app


async def scrape(app: LpsApp) -> tuple[Samples, dict[str, float]]:
    """The /metrics text, as each sample name's label sets, and every sample's value."""

    def get() -> str:
        url = f"http://127.0.0.1:{app.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    text = await asyncio.to_thread(get)
    labels: Samples = {}
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels.setdefault(s.name, []).append(dict(s.labels))
            values[f"{s.name}{sorted(s.labels.items())}"] = s.value
    return labels, values


def combos(samples: list[dict[str, str]], *keys: str) -> set[tuple[str, ...]]:
    return {tuple(s[k] for k in keys) for s in samples}


async def test_every_bounded_series_exists_at_zero_before_the_first_request(
    fresh_app: LpsApp,
) -> None:
    labels, values = await scrape(fresh_app)
    models = fresh_app.providers.model_labels()
    assert {"mock-judge-1", "other"} <= set(models[next(iter(models))])
    assert {"local-model", "other"} <= {m for ms in models.values() for m in ms}
    pairs = {(p.value, m) for p, ms in models.items() for m in ms}
    providers = {p for p, _ in pairs}
    mode = "serial_bundle"
    expected: dict[str, tuple[tuple[str, ...], set[tuple[str, ...]]]] = {
        "llm_provider_requests_total": (
            ("provider", "model", "status"),
            {(p, m, s) for p, m in pairs for s in PROCESSED_STATUSES},
        ),
        "llm_provider_tokens_used_total": (
            ("provider", "model", "type"),
            {(p, m, t) for p, m in pairs for t in TOKEN_TYPES},
        ),
        "llm_provider_retries_total": (
            ("provider", "model", "error_code"),
            {(p, m, c) for p, m in pairs for c in RETRIED},
        ),
        "llm_provider_cost_dollars_total": (("provider", "model"), pairs),
        "llm_provider_serial_bundle_calls_total": (("provider", "model"), pairs),
        "llm_provider_serial_bundle_items_per_call_count": (("provider", "model"), pairs),
        "llm_provider_response_duration_seconds_count": (("provider", "model"), pairs),
        "llm_provider_queue_expiry_total": (
            ("provider", "queue_processing_mode", "expiry_reason"),
            {(p, mode, r) for p in providers for r in EXPIRY_REASONS},
        ),
        "llm_provider_queue_expiry_age_seconds_count": (
            ("provider", "queue_processing_mode"),
            {(p, mode) for p in providers},
        ),
        "llm_provider_queue_wait_time_seconds_count": (
            ("queue_processing_mode", "result"),
            {(mode, s) for s in PROCESSED_STATUSES},
        ),
        "llm_provider_submissions_rejected_total": (
            ("reason",),
            {(r,) for r in REJECTION_REASONS},
        ),
        "llm_provider_grpc_requests_total": (
            ("method", "code"),
            {(m, c) for m in METHODS for c in CALL_CODES},
        ),
        "llm_provider_grpc_request_duration_seconds_count": (
            ("method", "code"),
            {(m, "OK") for m in METHODS},
        ),
    }
    for name, (keys, wanted) in expected.items():
        assert combos(labels[name], *keys) == wanted, name
        assert all(values[k] == 0 for k in values if k.startswith(name + "[")), name
    # The circuit of every HTTP provider is published, closed, from the start; the mock has none.
    assert labels["llm_provider_circuit_state"] == [{"provider": "openai_compatible"}]
    assert values["llm_provider_circuit_state[('provider', 'openai_compatible')]"] == 0
    assert values["llm_provider_queue_depth[('status', 'queued')]"] == 0
    assert values["llm_provider_queue_oldest_age_seconds[]"] == 0


async def test_a_per_request_replica_publishes_no_bundle_series() -> None:
    registry = CollectorRegistry()
    LpsApp(Settings.from_env({}, grpc_host="127.0.0.1", grpc_port=0), registry=registry)
    names = {s.name for f in registry.collect() for s in f.samples}
    assert "llm_provider_requests_total" in names
    assert not {n for n in names if "serial_bundle" in n}


def documented(table_of: str) -> dict[str, tuple[str, frozenset[str]]]:
    """The metric table under the heading `table_of`: name -> (type, label names)."""
    text = DOCS.read_text("utf-8")
    section = text.split(f"### {table_of}\n", 1)[1].split("\n### ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if match := ROW.match(line):
            name, kind, label_cell = match.groups()
            names = re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", label_cell))
            rows[name] = (kind, frozenset(names))
    return rows


def exported(registry: CollectorRegistry) -> dict[str, tuple[str, frozenset[str]]]:
    found = {}
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        label_names = {k for s in family.samples for k in s.labels if k != "le"}
        found[name] = (family.type, frozenset(label_names))
    return found


async def test_the_docs_list_every_metric_the_server_exports_with_its_type_and_labels(
    fresh_app: LpsApp,
) -> None:
    assert documented("LPS metrics") == exported(fresh_app.registry)


def test_the_docs_list_every_cj_metric_with_its_type_and_labels() -> None:
    registry = CollectorRegistry()
    CjMetrics(registry)
    assert documented("CJ client metrics") == exported(registry)
