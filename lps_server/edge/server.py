"""Building the gRPC server: services, health, reflection, and the bound port."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc

# `health.aio` re-exports this class; importing it directly gives mypy its type.
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from generated.lps.v1 import llm_provider_service_pb2 as svc
from generated.lps.v1 import llm_provider_service_pb2_grpc as svc_grpc
from lps_server.core.config import Settings
from lps_server.core.errors import ConfigurationError

_SERVICE = svc.DESCRIPTOR.services_by_name["LlmProviderService"]
SERVICE_NAME = _SERVICE.full_name
#: The service's method names, as metrics label them.
SERVICE_METHODS = tuple(m.name for m in _SERVICE.methods)
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (or mutual TLS with LPS_TLS_CLIENT_CA) credentials, or None for plaintext."""
    if not settings.tls_cert:
        return None
    try:
        cert = Path(settings.tls_cert).read_bytes()
        key = Path(settings.tls_key).read_bytes()
        ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    except OSError as exc:
        raise ConfigurationError(f"cannot read TLS files: {exc}") from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def create_server(
    servicer: svc_grpc.LlmProviderServiceServicer,
    *,
    host: str,
    port: int,
    health_servicer: HealthServicer,
    credentials: grpc.ServerCredentials | None = None,
    interceptors: Sequence[Any] = (),
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> tuple[grpc.aio.Server, int]:
    """A server with the service, health and reflection; port 0 picks a free port.

    Messages over `max_message_bytes` (LPS_MAX_MESSAGE_BYTES) are refused by gRPC itself with
    RESOURCE_EXHAUSTED before any of our code reads them.

    Returns:
        The (not yet started) server and the port it bound.
    """
    server = grpc.aio.server(
        interceptors=list(interceptors),
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
    )
    svc_grpc.add_LlmProviderServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{host}:{port}"
    if credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, credentials)
    if bound == 0:
        raise ConfigurationError(f"cannot bind gRPC port {address}")
    return server, bound
