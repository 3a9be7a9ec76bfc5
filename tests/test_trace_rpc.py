"""Every RPC has a SERVER span in OpenTelemetry's RPC conventions, and a CJ run is one trace:
`cj.assess`, a `cj.wave` per wave, and under each wave the LPS calls it made."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from opentelemetry import trace

from cj_client import LpsClient, NotFoundError, UnavailableError
from cj_client.assessment import Assessment
from cj_client.cli import main as cj_main
from cj_client.outputs import load_essays
from cj_client.run_options import AssessmentOptions
from lps_server.observability.spans import (
    RpcConventions,
    rpc_end_attributes,
    rpc_start_attributes,
)
from tests.helpers import eventually, running_app, submission
from tests.otlp_receiver import OtlpReceiver
from tests.test_tracing import OTEL_VARS
from tests.tracing_support import RPC_PREFIX, attrs, hex_trace, memory_tracing, parent_id, span_id

ESSAYS = Path(__file__).resolve().parent.parent / "examples" / "essays"
SERVICE = "lps.v1.LlmProviderService"


async def test_each_rpc_is_a_server_span_with_rpc_conventions_and_its_status() -> None:
    tracing, exporter = memory_tracing()
    async with running_app(tracer_provider=tracing) as app:
        async with LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10) as client:
            await client.submit(submission(1))
            with pytest.raises(NotFoundError):
                await client.get("no-such-request")
        await app.edge.begin_drain()
        async with LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10) as client:
            with pytest.raises(UnavailableError):
                await client.queue_stats()
    spans = {s.name: s for s in exporter.get_finished_spans() if s.name.startswith(RPC_PREFIX)}

    expected = {
        "SubmitComparison": (0, trace.StatusCode.UNSET),
        "GetComparison": (5, trace.StatusCode.UNSET),  # NOT_FOUND is the client's to act on
        "GetQueueStats": (14, trace.StatusCode.ERROR),  # UNAVAILABLE is the server's failure
    }
    for method, (code, status) in expected.items():
        span = spans[RPC_PREFIX + method]
        assert span.kind == trace.SpanKind.SERVER
        assert span.parent is None
        a = attrs(span)
        assert (a["rpc.system"], a["rpc.service"], a["rpc.method"]) == ("grpc", SERVICE, method)
        assert a["rpc.grpc.status_code"] == code
        assert span.status.status_code == status
        assert ("error.type" in a) == (status == trace.StatusCode.ERROR)
    assert attrs(spans[RPC_PREFIX + "GetQueueStats"])["error.type"] == "UNAVAILABLE"
    # The submit span of the unary call is the SERVER span's child.
    (submit,) = [s for s in exporter.get_finished_spans() if s.name == "lps.submit"]
    assert parent_id(submit) == span_id(spans[RPC_PREFIX + "SubmitComparison"])


async def test_stream_results_cancelled_by_its_client_is_not_an_error() -> None:
    tracing, exporter = memory_tracing()
    async with (
        running_app(tracer_provider=tracing) as app,
        LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10) as client,
    ):
        await client.submit(submission(1, result_channel="c"))
        async with asyncio.timeout(10):
            async for _ in client.stream_results("c"):
                break  # the client leaves: how every StreamResults call ends
        name = RPC_PREFIX + "StreamResults"
        await eventually(
            lambda: any(s.name == name for s in exporter.get_finished_spans()),
            "the cancelled call's span to end",
        )
    (span,) = [s for s in exporter.get_finished_spans() if s.name == name]
    assert attrs(span)["rpc.grpc.status_code"] == 1  # CANCELLED
    assert span.status.status_code == trace.StatusCode.UNSET


@pytest.mark.parametrize(
    ("opt_in", "start", "end"),
    [
        (
            "",
            {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": "GetComparison"},
            {"rpc.grpc.status_code": 14, "error.type": "UNAVAILABLE"},
        ),
        (
            "http,rpc",
            {"rpc.system.name": "grpc", "rpc.method": f"{SERVICE}/GetComparison"},
            {"rpc.status_code": "UNAVAILABLE", "error.type": "UNAVAILABLE"},
        ),
        (
            "rpc,rpc/dup",
            {
                "rpc.system": "grpc",
                "rpc.service": SERVICE,
                "rpc.system.name": "grpc",
                "rpc.method": f"{SERVICE}/GetComparison",
            },
            {
                "rpc.grpc.status_code": 14,
                "rpc.status_code": "UNAVAILABLE",
                "error.type": "UNAVAILABLE",
            },
        ),
    ],
)
def test_rpc_attributes_follow_the_semconv_opt_in(
    opt_in: str, start: dict[str, str], end: dict[str, object]
) -> None:
    conventions = RpcConventions.from_env({"OTEL_SEMCONV_STABILITY_OPT_IN": opt_in})
    assert rpc_start_attributes(conventions, service=SERVICE, method="GetComparison") == start
    assert rpc_end_attributes(conventions, code="UNAVAILABLE", code_value=14) == end
    ok = rpc_end_attributes(conventions, code="OK", code_value=0)
    assert "error.type" not in ok


async def test_a_cj_run_is_one_trace_with_a_span_per_wave_holding_its_lps_calls() -> None:
    server_tracing, server_spans = memory_tracing()
    client_tracing, client_spans = memory_tracing()
    essays = load_essays(ESSAYS)[:8]
    async with (
        running_app(tracer_provider=server_tracing) as app,
        LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10) as client,
    ):
        assessment = Assessment(
            essays,
            client=client,
            options=AssessmentOptions(budget=24, min_waves=3, stability_threshold=0.0),
            tracer_provider=client_tracing,
        )
        report = await assessment.run()
    cj = client_spans.get_finished_spans()
    lps = server_spans.get_finished_spans()

    (run,) = [s for s in cj if s.name == "cj.assess"]
    waves = [s for s in cj if s.name == "cj.wave"]
    assert len(waves) == report.waves >= 2
    assert {parent_id(w) for w in waves} == {span_id(run)}
    assert {hex_trace(s) for s in [*cj, *lps]} == {hex_trace(run)}, "one run, one trace"
    assert {o.trace_id for o in report.outcomes} == {hex_trace(run)}
    calls = [s for s in lps if s.name == RPC_PREFIX + "SubmitComparisons"]
    assert len(calls) == len(waves)
    assert {parent_id(c) for c in calls} == {span_id(w) for w in waves}
    assert attrs(run)["cj.batch_id"] == report.cj_batch_id


@pytest.mark.slow
async def test_cj_assess_exports_one_tree_for_itself_and_its_embedded_lps(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)
    async with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.port}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
        argv = ["assess", str(ESSAYS), "--out", str(tmp_path / "run"), "--quiet"]
        argv += ["--budget", "16", "--mode", "serial_bundle"]
        assert await asyncio.to_thread(cj_main, argv) == 0
        received = receiver.spans()

    assert {s.trace_id for s in received} == {received[0].trace_id}, "one run, one trace"
    names = {(s.service_name, s.name) for s in received}
    for expected in (
        ("cj", "cj.assess"),
        ("cj", "cj.wave"),
        ("lps", RPC_PREFIX + "SubmitComparisons"),
        ("lps", "lps.submit"),
        ("lps", "lps.process"),
        ("lps", "lps.bundle"),
        ("lps", "chat mock-judge-1"),
    ):
        assert expected in names
    by_id = {s.span_id: s for s in received}
    roots = [s for s in received if s.parent_span_id not in by_id]
    assert [r.name for r in roots] == ["cj.assess"], "everything hangs from the run's span"
