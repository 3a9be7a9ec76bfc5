"""Helpers shared by the tracing tests: in-memory export and walking finished spans."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

RPC_PREFIX = "lps.v1.LlmProviderService/"
CALL_SPAN = "chat mock-judge-1"


def memory_tracing() -> tuple[TracerProvider, InMemorySpanExporter]:
    """A tracer provider whose finished spans can be read from the exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def hex_trace(span: ReadableSpan) -> str:
    """The span's trace id as 32 hex digits."""
    assert span.context is not None
    return trace.format_trace_id(span.context.trace_id)


def span_id(span: ReadableSpan) -> int:
    """The span's id."""
    assert span.context is not None
    return int(span.context.span_id)


def parent_id(span: ReadableSpan) -> int | None:
    """The id of the span's parent, or None for a root."""
    return span.parent.span_id if span.parent is not None else None


def attrs(span: ReadableSpan) -> dict[str, object]:
    """The span's attributes as a plain dict."""
    return dict(span.attributes or {})


def by_request(spans: Sequence[ReadableSpan], name: str) -> dict[str, ReadableSpan]:
    """Spans called `name`, by their `lps.request_id` (one each)."""
    found: dict[str, ReadableSpan] = {}
    for span in spans:
        if span.name == name:
            rid = str(attrs(span)["lps.request_id"])
            assert rid not in found, f"two {name} spans for {rid}"
            found[rid] = span
    return found


def chain(spans: Sequence[ReadableSpan], leaf: ReadableSpan) -> list[str]:
    """The names of `leaf` and its ancestors, leaf first, checking they share one trace."""
    index = {span_id(s): s for s in spans}
    walked, span = [leaf.name], leaf
    while (pid := parent_id(span)) is not None and pid in index:
        span = index[pid]
        assert hex_trace(span) == hex_trace(leaf)
        walked.append(span.name)
    return walked
