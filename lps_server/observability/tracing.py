"""Trace-context helpers: a request's context travels through the queue as a W3C carrier."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject

TRACER_NAME = "lps_server"


def tracer_for(provider: trace.TracerProvider | None) -> trace.Tracer:
    """LPS's tracer from `provider` (by default the global provider as it is now).

    With no provider set, tracing is off, and the tracer does nothing at all: the API's own no-op
    path (a proxy, context switches for invalid spans) cost about 5% of LPS's CPU per comparison.
    """
    provider = provider or trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return _OFF
    return provider.get_tracer(TRACER_NAME)


class _OffTracer(trace.NoOpTracer):
    """Spans that are never recorded nor made current."""

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return trace.INVALID_SPAN

    # The API types this with its own (private) context-manager class; any context manager works.
    @contextmanager
    def start_as_current_span(  # type: ignore[override]
        self, *args: Any, **kwargs: Any
    ) -> Iterator[trace.Span]:
        yield trace.INVALID_SPAN


_OFF = _OffTracer()


def tracing_on(tracer: trace.Tracer) -> bool:
    """False for the tracer `tracer_for` gives when tracing is off (then skip all span work)."""
    return tracer is not _OFF


def current_carrier() -> dict[str, str]:
    """The active span's context as a `traceparent` carrier (empty when tracing is off)."""
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier


def context_from(carrier: Mapping[str, str]) -> otel_context.Context:
    """The context stored with a queued request (the current one when none was stored)."""
    return extract(dict(carrier)) if carrier else otel_context.get_current()


def trace_id_of(span: trace.Span) -> str:
    """The span's trace id as 32 hex digits, or "" when the span is not recording a real trace."""
    ctx = span.get_span_context()
    return trace.format_trace_id(ctx.trace_id) if ctx.is_valid else ""
