"""Tracing for `cj assess`, from the standard OTEL_* variables (the CLI is the only place that
installs an exporter; the library takes a TracerProvider)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

SERVICE_NAME = "cj"


class TracingConfigError(Exception):
    """The OTEL_* variables ask for an exporter this client cannot provide."""


def tracing_from_env(
    env: Mapping[str, str] | None = None, *, service_name: str | None = None
) -> TracerProvider | None:
    """A provider exporting OTLP over gRPC when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set,
    unless OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none; else None (tracing off).

    Its spans are service `service_name`, by default OTEL_SERVICE_NAME or `cj`.

    Raises:
        TracingConfigError: another exporter or protocol is asked for (as `lps serve` refuses it).
    """
    source = os.environ if env is None else env

    def var(*names: str) -> str:
        return next((source[n].strip() for n in names if source.get(n, "").strip()), "")

    exporter = var("OTEL_TRACES_EXPORTER").lower() or "otlp"
    if var("OTEL_SDK_DISABLED").lower() == "true" or exporter == "none":
        return None
    if not var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    protocol = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    if (exporter, protocol) != ("otlp", "grpc"):
        raise TracingConfigError(
            f"cj exports traces with OTEL_TRACES_EXPORTER=otlp over grpc only "
            f"(got {exporter!r} over {protocol!r})"
        )
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    name = service_name or source.get("OTEL_SERVICE_NAME") or SERVICE_NAME
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider
