"""Tracing set-up, for entry points only: the OpenTelemetry SDK and OTLP export from OTEL_*."""

from __future__ import annotations

import os

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from lps_server.core.errors import ConfigurationError


def configure_tracing(*, service_name: str) -> TracerProvider | None:
    """An SDK TracerProvider exporting over OTLP gRPC, or None when tracing is not configured.

    Tracing is on when OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set, unless
    OTEL_SDK_DISABLED is "true" or OTEL_TRACES_EXPORTER is "none"; the exporter reads the other
    standard OTEL_* variables.

    Raises:
        ConfigurationError: the variables ask for an exporter or protocol other than OTLP gRPC.
    """
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    if exporter == "none":
        return None
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not endpoint:
        return None
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    # Failing loudly beats exporting nowhere: an http/protobuf endpoint (4318) ignores gRPC.
    if exporter != "otlp" or protocol != "grpc":
        raise ConfigurationError(
            f"tracing supports OTEL_TRACES_EXPORTER=otlp over OTEL_EXPORTER_OTLP_PROTOCOL=grpc "
            f"only (got exporter {exporter!r}, protocol {protocol!r})"
        )
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    name = os.environ.get("OTEL_SERVICE_NAME", service_name)
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider
