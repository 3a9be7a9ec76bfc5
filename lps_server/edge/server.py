"""Building the gRPC server: services, health, reflection, connection options, the bound port."""

from __future__ import annotations

import socket
import ssl
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
# gRPC reads INT_MAX as "no limit": calls in progress when a connection reaches its maximum age
# run to their end (a CJ run's stream can last hours); only new calls move to a new connection.
NO_LIMIT_MS = 2**31 - 1


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """gRPC server options from the settings: keepalive, maximum connection age, no port sharing.

    SO_REUSEPORT is off, so a second server on a port in use fails to bind instead of silently
    taking half of the new connections.
    """
    options = [
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", _ms(settings.grpc_keepalive_seconds)),
        ("grpc.keepalive_timeout_ms", _ms(settings.grpc_keepalive_timeout_seconds)),
        # gRPC 1.85 times an unanswered keepalive ping by this one (a minute by default), not by
        # the keepalive timeout alone: without it a frozen client kept its streams past that.
        ("grpc.http2.ping_timeout_ms", _ms(settings.grpc_keepalive_timeout_seconds)),
    ]
    if settings.grpc_max_connection_age_seconds > 0:
        options += [
            ("grpc.max_connection_age_ms", _ms(settings.grpc_max_connection_age_seconds)),
            ("grpc.max_connection_age_grace_ms", NO_LIMIT_MS),
        ]
    return options


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (or mutual TLS with LPS_TLS_CLIENT_CA) credentials, or None for plaintext.

    Raises:
        ConfigurationError: a file cannot be read, or is not PEM of the kind it should hold.
    """
    if not settings.tls_cert:
        return None
    cert = _read("LPS_TLS_CERT", settings.tls_cert)
    key = _read("LPS_TLS_KEY", settings.tls_key)
    ca = _read("LPS_TLS_CLIENT_CA", settings.tls_client_ca) if settings.tls_client_ca else None
    # gRPC only finds bad material when a client connects; checked here, it stops the start.
    if b"-----BEGIN CERTIFICATE-----" not in cert:
        raise ConfigurationError(f"LPS_TLS_CERT={settings.tls_cert!r} holds no PEM certificate")
    if b"PRIVATE KEY-----" not in key:
        raise ConfigurationError(f"LPS_TLS_KEY={settings.tls_key!r} holds no PEM private key")
    if ca is not None and b"-----BEGIN CERTIFICATE-----" not in ca:
        raise ConfigurationError(
            f"LPS_TLS_CLIENT_CA={settings.tls_client_ca!r} holds no PEM certificate"
        )
    try:
        # The password callback refuses an encrypted key rather than prompting on a terminal.
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
            settings.tls_cert, settings.tls_key, password=lambda: b""
        )
    except ssl.SSLError as exc:
        raise ConfigurationError(
            f"LPS_TLS_CERT={settings.tls_cert!r} and LPS_TLS_KEY={settings.tls_key!r} cannot be "
            f"used together (a certificate and its unencrypted private key): {exc.reason or exc}"
        ) from None
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
    options: Sequence[tuple[str, Any]] = (("grpc.so_reuseport", 0),),
) -> tuple[grpc.aio.Server, int]:
    """A server with the service, health and reflection; port 0 picks a free port.

    Messages over `max_message_bytes` (LPS_MAX_MESSAGE_BYTES) are refused by gRPC itself with
    RESOURCE_EXHAUSTED before any of our code reads them.

    Returns:
        The (not yet started) server and the port it bound.

    Raises:
        ConfigurationError: the address cannot be bound (in use, not local, not permitted).
    """
    address = f"{host}:{port}"
    check_bindable(host, port, "LPS_GRPC_HOST/LPS_GRPC_PORT")
    server = grpc.aio.server(
        interceptors=list(interceptors),
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            *options,
        ],
    )
    svc_grpc.add_LlmProviderServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError:  # gRPC says only "failed to bind"; check_bindable found no cause
        bound = 0
    if bound == 0:
        raise ConfigurationError(f"cannot listen for gRPC on {address} (LPS_GRPC_PORT)")
    return server, bound


def check_bindable(host: str, port: int, variables: str) -> None:
    """Raise ConfigurationError naming the cause when `host`:`port` cannot be listened on.

    gRPC reports a failed bind without its cause (and logs a line of its own), so the address is
    tried here first with a plain socket. With port 0 the host is still checked (the probe takes
    any free port): a host that does not resolve or is not local fails there too.
    """
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigurationError(f"cannot listen on {host}:{port} ({variables}): {exc}") from None
    for family, kind, proto, _, sockaddr in addresses:
        with socket.socket(family, kind, proto) as probe:
            # As gRPC and http.server do: a port left in TIME_WAIT by an earlier run is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
                probe.listen(1)
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot listen on {host}:{port} ({variables}): {exc.strerror}"
                ) from None


def _read(variable: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{variable}={path!r} cannot be read: {exc.strerror}") from None


def _ms(seconds: float) -> int:
    return max(1, min(NO_LIMIT_MS, round(seconds * 1000)))
