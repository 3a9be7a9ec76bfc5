"""Trace-context helpers: a request's context travels through the queue as a W3C carrier."""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject

TRACER_NAME = "lps_server"


def current_carrier() -> dict[str, str]:
    """The active span's context as a `traceparent` carrier (empty when tracing is off)."""
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier


def context_from(carrier: Mapping[str, str]) -> otel_context.Context:
    """The context stored with a queued request."""
    return extract(dict(carrier))


def trace_id_of(span: trace.Span) -> str:
    """The span's trace id as 32 hex digits, or "" when the span is not recording a real trace."""
    ctx = span.get_span_context()
    return trace.format_trace_id(ctx.trace_id) if ctx.is_valid else ""
