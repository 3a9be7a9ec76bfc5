"""The Prometheus `/metrics` endpoint of one replica."""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from lps_server.core.errors import ConfigurationError


def start_metrics_endpoint(registry: CollectorRegistry, *, host: str, port: int) -> WSGIServer:
    """Serve `registry` on http://`host`:`port`/metrics from a background thread.

    Raises:
        ConfigurationError: the address cannot be bound (in use, not local, not permitted).
    """
    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on {host}:{port} (LPS_METRICS_HOST/LPS_METRICS_PORT): "
            f"{exc.strerror or exc}"
        ) from None
    return server
