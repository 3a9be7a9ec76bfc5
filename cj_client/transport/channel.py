"""Opening a gRPC channel to LPS: plaintext, TLS or mutual TLS."""

from __future__ import annotations

from pathlib import Path

import grpc


def open_channel(
    target: str,
    *,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls: bool = False,
) -> grpc.aio.Channel:
    """A channel to `target`: plaintext, TLS (system roots or `tls_ca`), or mutual TLS."""
    if not (tls or tls_ca or tls_cert):
        return grpc.aio.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(tls_ca).read_bytes() if tls_ca else None,
        private_key=Path(tls_key).read_bytes() if tls_key else None,
        certificate_chain=Path(tls_cert).read_bytes() if tls_cert else None,
    )
    return grpc.aio.secure_channel(target, credentials)
