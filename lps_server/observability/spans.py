"""LPS's spans as a trace viewer shows them: an RPC's SERVER span, a bundle linked to its members
both ways, and provider calls as CLIENT spans with OpenTelemetry's GenAI conventions.

With tracing off (`tracer_for` gave the off tracer) every helper here does nothing at all.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context

from lps_server.core.domain import (
    BundleFacts,
    ComparisonResult,
    ErrorCode,
    Overrides,
    QueuedRequest,
    RequestStatus,
    Route,
    TokenUsage,
)
from lps_server.observability.tracing import context_from, trace_id_of, tracing_on

#: gRPC codes that mark a server span as failed (OpenTelemetry's gRPC conventions); the others,
#: INVALID_ARGUMENT or NOT_FOUND say, are the client's to act on.
SERVER_ERROR_CODES = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
GEN_AI_OPERATION = "chat"


class RpcConventions(enum.Enum):
    """Which version of OpenTelemetry's RPC conventions RPC spans carry.

    `V1_37` (the default): `rpc.system`, `rpc.service`, `rpc.method` (the bare method name) and
    `rpc.grpc.status_code` (an integer). `LATEST`, chosen with `OTEL_SEMCONV_STABILITY_OPT_IN=rpc`:
    `rpc.system.name`, `rpc.method` (`service/method`) and `rpc.status_code` (the code's name).
    `BOTH` (`rpc/dup`): every attribute of both, `rpc.method` as in `LATEST`.
    """

    V1_37 = "v1.37"
    LATEST = "latest"
    BOTH = "both"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RpcConventions:
        """The conventions `OTEL_SEMCONV_STABILITY_OPT_IN` asks for (`rpc/dup` before `rpc`)."""
        opted = {v.strip() for v in env.get("OTEL_SEMCONV_STABILITY_OPT_IN", "").split(",")}
        if "rpc/dup" in opted:
            return cls.BOTH
        if "rpc" in opted:
            return cls.LATEST
        return cls.V1_37


def rpc_start_attributes(
    conventions: RpcConventions, *, service: str, method: str
) -> dict[str, str]:
    """The RPC attributes known when a call starts."""
    old = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
    new = {"rpc.system.name": "grpc", "rpc.method": f"{service}/{method}"}
    if conventions is RpcConventions.V1_37:
        return old
    return new if conventions is RpcConventions.LATEST else old | new


def rpc_end_attributes(
    conventions: RpcConventions, *, code: str, code_value: int
) -> dict[str, str | int]:
    """The RPC attributes known when a call ends: its status code, and `error.type` if failed."""
    found: dict[str, str | int] = {}
    if conventions is not RpcConventions.LATEST:
        found["rpc.grpc.status_code"] = code_value
    if conventions is not RpcConventions.V1_37:
        found["rpc.status_code"] = code
    if code in SERVER_ERROR_CODES:
        found["error.type"] = code
    return found


class RpcServerSpan:
    """The SERVER span of one gRPC call, current while the call runs.

    Args:
        tracer: LPS's tracer.
        conventions: which RPC attribute set to write.
        service: the full service name (`lps.v1.LlmProviderService`).
        method: the method name (`SubmitComparison`).
        metadata: the call's metadata, whose `traceparent` (if any) is the span's parent.
    """

    def __init__(
        self,
        tracer: trace.Tracer,
        *,
        conventions: RpcConventions,
        service: str,
        method: str,
        metadata: Iterable[tuple[str, object]] | None,
    ) -> None:
        self._conventions = conventions
        self._token: object | None = None
        self._span: trace.Span | None = None
        if not tracing_on(tracer):
            return
        parent = context_from({k: v for k, v in metadata or () if isinstance(v, str)})
        self._span = tracer.start_span(
            f"{service}/{method}",
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes=rpc_start_attributes(conventions, service=service, method=method),
        )
        self._token = otel_context.attach(trace.set_span_in_context(self._span, parent))

    def end(self, *, code: str, code_value: int) -> None:
        """Record how the call ended and end the span."""
        if self._span is None:
            return
        attributes = rpc_end_attributes(self._conventions, code=code, code_value=code_value)
        self._span.set_attributes(attributes)
        if "error.type" in attributes:
            self._span.set_status(trace.StatusCode.ERROR, code)
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
        self._span.end()


class BundleSpans:
    """The spans of one bundle: an `lps.process` span per member, in that member's own trace, and
    one `lps.bundle` span, in the lead member's trace, linked to every member and every member to
    it, so a trace viewer leads from either side to the other.

    A member's span ends when its own result is stored; a failed member's span has status ERROR
    and `error.type` (the failure's code).
    """

    def __init__(
        self,
        tracer: trace.Tracer,
        items: Sequence[QueuedRequest],
        facts: Mapping[str, BundleFacts],
        *,
        now: float,
        contexts: Mapping[str, Context],
    ) -> None:
        self._tracer = tracer
        self._on = tracing_on(tracer)
        self._lead = items[0].request_id
        self._route = items[0].route
        self._members: dict[str, trace.Span] = {}
        if not self._on:
            return
        for queued in items:
            rid = queued.request_id
            self._members[rid] = tracer.start_span(
                "lps.process",
                context=contexts[rid],
                attributes=_process_attributes(queued, facts[rid], now),
            )

    def trace_id(self, request_id: str) -> str:
        """The trace id of a member's spans ("" with tracing off)."""
        span = self._members.get(request_id)
        return trace_id_of(span) if span is not None else ""

    @contextmanager
    def bundle(self, bundle_id: str) -> Iterator[None]:
        """The `lps.bundle` span, current for the block (provider calls become its children)."""
        if not self._on:
            yield
            return
        lead = self._members[self._lead]
        with self._tracer.start_as_current_span(
            "lps.bundle",
            context=trace.set_span_in_context(lead),
            links=[trace.Link(s.get_span_context()) for s in self._members.values()],
            attributes={
                "lps.bundle_id": bundle_id,
                "lps.bundle_size": len(self._members),
                "lps.provider": self._route.provider.value,
                "lps.model": self._route.model,
            },
        ) as bundle:
            for member in self._members.values():
                member.add_link(bundle.get_span_context(), {"lps.link": "bundle"})
            yield

    def finish(self, stored: Iterable[tuple[QueuedRequest, ComparisonResult]]) -> None:
        """End the spans of members whose results were just stored."""
        for queued, result in stored:
            span = self._members.pop(queued.request_id, None)
            if span is None:
                continue
            if result.status == RequestStatus.FAILED and result.failure is not None:
                span.set_attribute("error.type", result.failure.code.value)
                span.set_status(trace.StatusCode.ERROR, result.failure.message)
            span.end()

    def close(self) -> None:
        """End the spans of members that got no result here (the bundle was cancelled)."""
        for span in self._members.values():
            span.end()
        self._members.clear()


class ProviderCallSpan:
    """What `provider_call_span` yields: the span, to record the call's outcome on."""

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def record(
        self, *, usages: Iterable[TokenUsage], failure: tuple[ErrorCode, str] | None
    ) -> None:
        """Token usage of the call (its items' summed), or the failure of the call as a whole."""
        if not self._span.is_recording():
            return
        usage = list(usages)
        self._span.set_attributes(
            {
                "gen_ai.usage.input_tokens": sum(u.prompt_tokens for u in usage),
                "gen_ai.usage.output_tokens": sum(u.completion_tokens for u in usage),
                "gen_ai.usage.cache_read.input_tokens": sum(u.cache_read_tokens for u in usage),
                "gen_ai.usage.cache_creation.input_tokens": sum(
                    u.cache_write_tokens for u in usage
                ),
            }
        )
        if failure is not None:
            code, message = failure
            self._span.set_attribute("error.type", code.value)
            self._span.set_status(trace.StatusCode.ERROR, message)


@contextmanager
def provider_call_span(
    tracer: trace.Tracer, *, route: Route, overrides: Overrides, attempt: int, items: int
) -> Iterator[ProviderCallSpan]:
    """One provider call attempt as a CLIENT span named `chat {model}` (GenAI conventions)."""
    if not tracing_on(tracer):
        yield ProviderCallSpan(trace.INVALID_SPAN)
        return
    attributes: dict[str, str | int | float] = {
        "gen_ai.operation.name": GEN_AI_OPERATION,
        "gen_ai.provider.name": route.provider.value,
        "gen_ai.request.model": route.model,
        "lps.attempt": attempt,
        "lps.items": items,
    }
    if overrides.temperature is not None:
        attributes["gen_ai.request.temperature"] = overrides.temperature
    if overrides.max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = overrides.max_tokens
    with tracer.start_as_current_span(
        f"{GEN_AI_OPERATION} {route.model}",
        kind=trace.SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield ProviderCallSpan(span)


def _process_attributes(
    queued: QueuedRequest, facts: BundleFacts, now: float
) -> dict[str, str | int | float]:
    request = queued.request
    return {
        "lps.request_id": queued.request_id,
        "lps.correlation_id": request.correlation_id,
        "lps.cj_batch_id": request.metadata.get("cj_batch_id", ""),
        "lps.provider": queued.route.provider.value,
        "lps.model": queued.route.model,
        "lps.bundle_id": facts.bundle_id,
        "lps.bundle_index": facts.index,
        "lps.bundle_size": facts.size,
        "lps.queue_wait_seconds": max(0.0, now - queued.enqueued_at),
    }
