"""Traces of real calls: one connected tree from the caller's span (or the RPC's SERVER span) to
the provider call, across replicas, and over OTLP/gRPC to a real receiver.

Spans are read from an in-memory exporter after the server has stopped, and once from a receiver.
Bundle links, error statuses and conventions are in test_trace_bundles.py and test_trace_rpc.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.sdk.trace import TracerProvider

from cj_client import ComparisonOutcome, LpsClient
from cj_client.transport import submission_to_pb
from generated.lps.v1 import llm_provider_service_pb2 as svc
from generated.lps.v1 import llm_provider_service_pb2_grpc as svc_grpc
from lps_server.core.domain import ProcessingMode
from lps_server.core.errors import ConfigurationError
from lps_server.observability.telemetry import configure_tracing
from lps_server.observability.tracing import current_carrier, tracer_for
from tests.helpers import GatedMock, results_on, running_app, submission, submit_all
from tests.otlp_receiver import OtlpReceiver
from tests.tracing_support import (
    CALL_SPAN,
    RPC_PREFIX,
    by_request,
    chain,
    hex_trace,
    memory_tracing,
    parent_id,
    span_id,
)

WAIT_S = 10.0
UNARY = RPC_PREFIX + "SubmitComparison"
STREAM = RPC_PREFIX + "SubmitComparisons"
SPAN_NAMES = {STREAM, "lps.submit", "lps.process", "lps.bundle", CALL_SPAN}
FULL_CHAIN = [CALL_SPAN, "lps.bundle", "lps.process", "lps.submit"]
OTEL_VARS = (
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_INSECURE",
    "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
    "OTEL_SEMCONV_STABILITY_OPT_IN",
)


async def test_a_streamed_call_is_one_tree_from_its_server_span_to_every_provider_call() -> None:
    tracing, exporter = memory_tracing()
    subs = [
        submission(
            i,
            correlation_id=f"corr-{i}",
            metadata={"cj_batch_id": "batch-7"},
            temperature=0.25,
            max_tokens=300,
        )
        for i in range(10)
    ]
    async with (
        running_app(
            tracer_provider=tracing,
            queue_processing_mode=ProcessingMode.SERIAL_BUNDLE,
            serial_bundle_max_requests_per_call=4,
        ) as app,
        LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10) as client,
    ):
        results = await submit_all(client, subs)
    assert {r.status for r in results} == {"completed"}
    spans = exporter.get_finished_spans()

    (call,) = [s for s in spans if s.name == STREAM]
    assert call.kind == trace.SpanKind.SERVER
    assert call.parent is None, "no client trace was sent, so the call's span is the root"
    submits = by_request(spans, "lps.submit")
    processes = by_request(spans, "lps.process")
    assert {r.trace_id for r in results} == {hex_trace(call)}, "the call's requests share its trace"
    for r in results:
        submit, process = submits[r.request_id], processes[r.request_id]
        assert parent_id(submit) == span_id(call)
        assert parent_id(process) == span_id(submit)
        attrs = dict(process.attributes or {})
        assert attrs["lps.correlation_id"] == r.correlation_id == f"corr-{r.request_id[4:]}"
        assert attrs["lps.cj_batch_id"] == "batch-7"
        assert (attrs["lps.provider"], attrs["lps.model"]) == ("mock", r.model)
        assert (attrs["lps.bundle_id"], attrs["lps.bundle_size"]) == (r.bundle_id, r.bundle_size)
        assert float(attrs["lps.queue_wait_seconds"]) >= 0  # type: ignore[arg-type]

    members: dict[str, list[ComparisonOutcome]] = {}
    for r in results:
        members.setdefault(r.bundle_id, []).append(r)
    assert max(len(m) for m in members.values()) > 1, "the requests were meant to be bundled"
    bundles = {
        str((s.attributes or {})["lps.bundle_id"]): s for s in spans if s.name == "lps.bundle"
    }
    assert set(bundles) == set(members)
    calls = [s for s in spans if s.name == CALL_SPAN]
    for bundle_id, group in members.items():
        bundle = bundles[bundle_id]
        lead = next(r for r in group if r.bundle_index == 0)
        assert parent_id(bundle) == span_id(processes[lead.request_id])
        assert {link.context.span_id for link in bundle.links} == {
            span_id(processes[r.request_id]) for r in group
        }
        assert (bundle.attributes or {})["lps.bundle_size"] == len(group)
        (provider_call,) = [c for c in calls if parent_id(c) == span_id(bundle)]
        call_attrs = provider_call.attributes or {}
        assert call_attrs["lps.items"] == len(group)
        assert call_attrs["gen_ai.request.temperature"] == 0.25
        assert call_attrs["gen_ai.request.max_tokens"] == 300
        assert chain(spans, provider_call) == [*FULL_CHAIN, STREAM]
    assert len(calls) == len(members)


async def test_server_joins_the_trace_a_client_sends_in_grpc_metadata() -> None:
    server_tracing, exporter = memory_tracing()
    client_tracing, client_exporter = memory_tracing()
    async with running_app(tracer_provider=server_tracing) as app:
        target = f"127.0.0.1:{app.grpc_port}"
        tracer = client_tracing.get_tracer("cj-test")
        async with grpc.aio.insecure_channel(target) as channel:
            stub = svc_grpc.LlmProviderServiceStub(channel)
            with tracer.start_as_current_span("cj.compare") as client_span:
                carrier: dict[str, str] = {}
                inject(carrier)
                await stub.SubmitComparison(
                    svc.SubmitComparisonRequest(
                        request=submission_to_pb(submission(1, result_channel="traced"))
                    ),
                    metadata=tuple(carrier.items()),
                    timeout=10,
                )
        async with LpsClient(target=target, timeout=10) as client:
            (result,) = await results_on(client, "traced", 1)
            await client.submit(submission(2, result_channel="untraced"))
            (other,) = await results_on(client, "untraced", 1)
    spans = exporter.get_finished_spans()

    client_trace = trace.format_trace_id(client_span.get_span_context().trace_id)
    assert result.trace_id == client_trace
    (rpc,) = [s for s in spans if s.name == UNARY and hex_trace(s) == client_trace]
    assert rpc.parent is not None
    assert rpc.parent.is_remote
    assert parent_id(rpc) == client_span.get_span_context().span_id
    assert parent_id(by_request(spans, "lps.submit")["req-1"]) == span_id(rpc)
    assert {s.name for s in spans if hex_trace(s) == client_trace} == {
        UNARY,
        "lps.submit",
        "lps.process",
        "lps.bundle",
        CALL_SPAN,
    }
    (call,) = [s for s in spans if s.name == CALL_SPAN and hex_trace(s) == client_trace]
    assert chain(spans, call) == [*FULL_CHAIN, UNARY]
    # A request without trace context starts its own trace.
    assert other.trace_id not in ("", client_trace)
    assert [s.name for s in client_exporter.get_finished_spans()] == ["cj.compare"]


@pytest.mark.redis
async def test_trace_continues_on_the_replica_that_processes_the_request(
    redis_url: str,
) -> None:
    tracing_a, exporter_a = memory_tracing()
    tracing_b, exporter_b = memory_tracing()
    gated = GatedMock()
    shared: dict[str, Any] = {
        "queue_backend": "redis",
        "redis_url": redis_url,
        "max_concurrent_calls": 1,
    }
    async with (
        running_app(tracer_provider=tracing_a, provider=gated, **shared) as replica_a,
        LpsClient(target=f"127.0.0.1:{replica_a.grpc_port}", timeout=10) as client,
    ):
        # Replica A's only call slot is taken, so it leases nothing else.
        await client.submit(submission(0, result_channel="blocker"))
        async with asyncio.timeout(WAIT_S):
            await gated.entered.wait()
        for i in range(1, 4):
            await client.submit(submission(i, result_channel="shared"))
        async with running_app(tracer_provider=tracing_b, **shared):
            results = await results_on(client, "shared", 3)
        gated.gate.set()
        await results_on(client, "blocker", 1)
    spans_a, spans_b = exporter_a.get_finished_spans(), exporter_b.get_finished_spans()

    submits = by_request(spans_a, "lps.submit")
    processes = by_request(spans_b, "lps.process")
    assert set(by_request(spans_a, "lps.process")) == {"req-0"}
    for r in results:
        submit, process = submits[r.request_id], processes[r.request_id]
        assert hex_trace(submit) == hex_trace(process) == r.trace_id
        assert parent_id(process) == span_id(submit)
        assert process.parent is not None
        assert process.parent.is_remote
    assert {s.name for s in spans_b} == {"lps.process", "lps.bundle", CALL_SPAN}


def test_tracing_is_off_unless_an_otlp_endpoint_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)
    assert configure_tracing(service_name="lps") is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert configure_tracing(service_name="lps") is None
    monkeypatch.setenv("OTEL_SDK_DISABLED", "false")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert configure_tracing(service_name="lps") is None


def test_tracing_refuses_an_otlp_protocol_it_cannot_speak(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    with pytest.raises(ConfigurationError, match="http/protobuf"):
        configure_tracing(service_name="lps")


async def test_spans_arrive_at_a_real_otlp_grpc_receiver(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)
    async with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.port}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
        tracing = configure_tracing(service_name="lps")
        assert tracing is not None
        try:
            async with (
                running_app(tracer_provider=tracing) as app,
                LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10) as client,
            ):
                results = await submit_all(client, [submission(i) for i in range(3)])
            # The exporter thread talks to the receiver on this loop: never block the loop.
            assert await asyncio.to_thread(tracing.force_flush, 10_000)
        finally:
            await asyncio.to_thread(tracing.shutdown)
        received = receiver.spans()

    assert received, "no span reached the receiver"
    assert {s.service_name for s in received} == {"lps"}
    assert {s.name for s in received} == SPAN_NAMES
    for r in results:
        names = {s.name for s in received if s.trace_id == r.trace_id}
        assert names == SPAN_NAMES, f"trace of {r.request_id} holds {names}"
    kinds = {s.name: s.kind for s in received}
    assert kinds[STREAM] == "SPAN_KIND_SERVER"
    assert kinds[CALL_SPAN] == "SPAN_KIND_CLIENT"
    assert kinds["lps.process"] == "SPAN_KIND_INTERNAL"
    process = next(
        s for s in received if s.name == "lps.process" and s.attributes["lps.request_id"] == "req-1"
    )
    submit = next(s for s in received if s.span_id == process.parent_span_id)
    assert submit.name == "lps.submit"
    # Links travel too: the process span points to its bundle span, which points back.
    (bundle,) = [s for s in received if (s.trace_id, s.span_id) in process.links]
    assert bundle.name == "lps.bundle"
    assert (process.trace_id, process.span_id) in bundle.links


async def test_the_cj_client_propagates_its_trace_context() -> None:
    server_tracing, exporter = memory_tracing()
    client_tracing = TracerProvider()
    tracer = client_tracing.get_tracer("cj-test")
    async with (
        running_app(tracer_provider=server_tracing) as app,
        LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10) as client,
    ):
        with tracer.start_as_current_span("cj.wave") as wave:
            results = await submit_all(client, [submission(1)])
    client_trace = format(wave.get_span_context().trace_id, "032x")
    assert results[0].trace_id == client_trace
    spans = exporter.get_finished_spans()
    submits = [s for s in spans if s.name == "lps.submit"]
    assert [hex_trace(s) for s in submits] == [client_trace]
    (rpc,) = [s for s in spans if s.name == STREAM]
    assert parent_id(rpc) == wave.get_span_context().span_id


def test_without_a_provider_the_tracer_records_nothing_and_sets_no_context() -> None:
    # The global provider is unset in tests, so `None` means tracing is off.
    for provider in (None, trace.NoOpTracerProvider()):
        tracer = tracer_for(provider)
        assert tracer.start_span("x") is trace.INVALID_SPAN
        with tracer.start_as_current_span("y") as span:
            assert span is trace.INVALID_SPAN
            assert trace.get_current_span() is trace.INVALID_SPAN
            assert current_carrier() == {}
    with tracer_for(TracerProvider()).start_as_current_span("z") as span:
        assert span.is_recording()
        assert (
            current_carrier()["traceparent"].split("-")[2]
            == f"{span.get_span_context().span_id:016x}"
        )
