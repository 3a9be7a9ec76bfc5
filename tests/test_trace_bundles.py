"""A bundle's members come from different traces: each member's span links to the bundle span and
the bundle span to every member, a member's span ends when its own result is stored, failures are
ERROR with `error.type`, and provider calls are CLIENT spans with OpenTelemetry's GenAI attributes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan

from cj_client import LpsClient
from lps_server.core.domain import ErrorCode, Overrides, ProcessingMode
from lps_server.providers import ComparisonItem, ItemFailure, ItemOutcome
from lps_server.providers.base import ProviderCallError
from tests.helpers import GatedMock, results_on, running_app, submission, submit_all
from tests.tracing_support import (
    CALL_SPAN,
    RPC_PREFIX,
    attrs,
    hex_trace,
    memory_tracing,
    parent_id,
    span_id,
)

WAIT_S = 10.0


class ScriptedMock(GatedMock):
    """The gated mock with scripted trouble, by request id: `retry_once` items fail retryably on
    their first attempt, `fail` items always fail (not retryable), and the first call holding
    `boom` fails as a whole."""

    def __init__(self, *, retry_once: set[str], fail: set[str], boom: str) -> None:
        super().__init__()
        self._retry_once = set(retry_once)
        self._fail = fail
        self._boom = boom
        self.batches: list[list[str]] = []

    async def compare(
        self, items: Sequence[ComparisonItem], *, model: str, overrides: Overrides
    ) -> list[ItemOutcome]:
        keys = [i.key for i in items]
        self.batches.append(keys)
        outcomes = await super().compare(items, model=model, overrides=overrides)
        if self._boom in keys:
            self._boom = ""
            raise ProviderCallError(ErrorCode.PROVIDER_UNAVAILABLE, "scripted outage (503)")
        for n, key in enumerate(keys):
            if key in self._fail:
                outcomes[n] = ItemFailure(ErrorCode.PROVIDER_ERROR, "scripted refusal")
            elif key in self._retry_once:
                self._retry_once.discard(key)
                outcomes[n] = ItemFailure(ErrorCode.RATE_LIMITED, "scripted 429")
        return outcomes


def links_of(span: ReadableSpan) -> set[tuple[int, int]]:
    return {(link.context.trace_id, link.context.span_id) for link in span.links}


def ids(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return (span.context.trace_id, span.context.span_id)


def end(span: ReadableSpan) -> int:
    assert span.end_time is not None
    return span.end_time


async def test_members_of_other_traces_and_their_bundle_lead_to_each_other() -> None:
    tracing, exporter = memory_tracing()
    provider = ScriptedMock(retry_once={"req-2"}, fail={"req-3"}, boom="req-6")
    async with (
        running_app(
            tracer_provider=tracing,
            provider=provider,
            queue_processing_mode=ProcessingMode.SERIAL_BUNDLE,
            serial_bundle_max_requests_per_call=4,
            max_concurrent_calls=1,
            retry_backoff_ms=1,
        ) as app,
        LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10) as client,
    ):
        # req-0 takes the only call slot; req-1..8 queue up behind it, each in its own unary
        # call and so in its own trace, and then form bundles of up to four.
        await client.submit(submission(0, result_channel="traced"))
        async with asyncio.timeout(WAIT_S):
            await provider.entered.wait()
        for i in range(1, 9):
            await client.submit(submission(i, result_channel="traced"))
        provider.gate.set()
        results = {r.request_id: r for r in await results_on(client, "traced", 9)}
    spans = exporter.get_finished_spans()
    # The scripted trouble happened. A retry goes back to the queue and joins a later bundle, so
    # which requests share the later calls depends on timing; what is asserted below does not.
    asked = Counter(key for batch in provider.batches[1:] for key in batch)
    assert provider.batches[1] == ["req-1", "req-2", "req-3", "req-4"]
    assert (asked["req-1"], asked["req-3"], asked["req-4"]) == (1, 1, 1)
    assert asked["req-2"] >= 2, "req-2 failed retryably once (and again if it shared the outage)"
    assert asked["req-6"] == 2, "the call holding req-6 failed as a whole and was retried"
    assert {rid: r.status for rid, r in results.items() if r.status != "completed"} == {
        "req-3": "failed"
    }

    # Every unary call is its own trace, rooted in its SERVER span.
    rpcs = [s for s in spans if s.name == RPC_PREFIX + "SubmitComparison"]
    assert len({hex_trace(s) for s in rpcs}) == len(rpcs) == 9
    # One member span per attempt of a request, all in that request's own trace.
    attempts: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        if span.name == "lps.process":
            attempts.setdefault(str(attrs(span)["lps.request_id"]), []).append(span)
    assert {rid: len(found) for rid, found in attempts.items()} == {
        f"req-{i}": asked[f"req-{i}"] or 1 for i in range(9)
    }
    trace_of = {rid: {hex_trace(m) for m in found} for rid, found in attempts.items()}
    assert all(len(traces) == 1 for traces in trace_of.values())
    assert set.union(*trace_of.values()) == {hex_trace(s) for s in rpcs}
    bundles = {str(attrs(s)["lps.bundle_id"]): s for s in spans if s.name == "lps.bundle"}
    assert len(bundles) == len(provider.batches)
    for bundle_id, bundle in bundles.items():
        members = [m for found in attempts.values() for m in found]
        members = [m for m in members if attrs(m)["lps.bundle_id"] == bundle_id]
        # Bundle -> every member, and every member -> the bundle, across traces.
        assert members
        assert links_of(bundle) == {ids(m) for m in members}
        for member in members:
            assert ids(bundle) in links_of(member)
        lead = [m for m in members if attrs(m)["lps.bundle_index"] == 0]
        assert parent_id(bundle) == span_id(lead[0])
        assert len({hex_trace(m) for m in members}) == len(members)
    # A result names the bundle of the call that answered it.
    for rid, result in results.items():
        assert attrs(attempts[rid][-1])["lps.bundle_id"] == result.bundle_id

    # A member's span ends when its own result is stored, not when its bundle ends; req-2, put
    # back for a retry, ended its first span only after that bundle.
    bundle_a = bundles[results["req-1"].bundle_id]
    for rid in ("req-1", "req-3", "req-4"):
        assert end(attempts[rid][0]) < end(bundle_a), f"{rid} ended with its bundle"
    first_req_2 = min(attempts["req-2"], key=lambda m: m.start_time or 0)
    assert attrs(first_req_2)["lps.bundle_id"] == results["req-1"].bundle_id
    assert end(first_req_2) >= end(bundle_a)

    # Failures: the failed member and the call that failed as a whole are ERROR, with error.type.
    failed = attempts["req-3"][0]
    assert failed.status.status_code == trace.StatusCode.ERROR
    assert failed.status.description == results["req-3"].error_message
    assert attrs(failed)["error.type"] == "provider_error"
    for rid, result in results.items():
        if result.status == "completed":
            final = max(attempts[rid], key=lambda m: m.start_time or 0)
            assert final.status.status_code == trace.StatusCode.UNSET, rid
            assert "error.type" not in attrs(final)
    calls = sorted((s for s in spans if s.name == CALL_SPAN), key=lambda s: s.start_time or 0)
    (outage,) = [c for c in calls if c.status.status_code == trace.StatusCode.ERROR]
    assert attrs(outage)["error.type"] == "provider_unavailable"
    assert calls[1].status.status_code == trace.StatusCode.UNSET, "bundle A's answer came back"

    # Provider calls: CLIENT spans in the GenAI conventions, with the tokens of the items each
    # judged (every judgement's tokens in exactly the call that produced it).
    for call in calls:
        assert call.kind == trace.SpanKind.CLIENT
        assert parent_id(call) in {span_id(b) for b in bundles.values()}
        a = attrs(call)
        assert (a["gen_ai.operation.name"], a["gen_ai.provider.name"]) == ("chat", "mock")
        assert a["gen_ai.request.model"] == "mock-judge-1"
    assert attrs(outage)["gen_ai.usage.input_tokens"] == 0
    completed = [r for r in results.values() if r.status == "completed"]
    for key, field in (("input", "prompt_tokens"), ("output", "completion_tokens")):
        total = sum(int(attrs(c)[f"gen_ai.usage.{key}_tokens"]) for c in calls)
        assert total == sum(getattr(r, field) for r in completed) > 0


class ShortAnswerMock(GatedMock):
    """Answers its first call with one judgement too few, then correctly."""

    async def compare(
        self, items: Sequence[ComparisonItem], *, model: str, overrides: Overrides
    ) -> list[ItemOutcome]:
        outcomes = await super().compare(items, model=model, overrides=overrides)
        return outcomes[:-1] if self.calls == 1 else outcomes


async def test_an_answer_with_the_wrong_number_of_items_is_an_error_of_the_call() -> None:
    tracing, exporter = memory_tracing()
    provider = ShortAnswerMock()
    provider.gate.set()
    async with (
        running_app(
            tracer_provider=tracing,
            provider=provider,
            queue_processing_mode=ProcessingMode.SERIAL_BUNDLE,
            retry_backoff_ms=1,
        ) as app,
        LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10) as client,
    ):
        results = await submit_all(client, [submission(i) for i in range(3)])
    assert {r.status for r in results} == {"completed"}
    calls = sorted(
        (s for s in exporter.get_finished_spans() if s.name == CALL_SPAN),
        key=lambda s: s.start_time or 0,
    )
    assert calls[0].status.status_code == trace.StatusCode.ERROR
    assert attrs(calls[0])["error.type"] == "invalid_response"
    assert all(c.status.status_code == trace.StatusCode.UNSET for c in calls[1:])
