"""Server settings from `LPS_*` environment variables; defaults run with no configuration."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

from lps_server.core.domain import ProcessingMode
from lps_server.core.errors import ConfigurationError

T = TypeVar("T")
MAX_BUNDLE_SIZE = 64
# Below 64 KiB ordinary requests stop fitting in a message; gRPC cannot go past 2 GiB.
MESSAGE_BYTES_RANGE = (64 * 1024, 1024 * 1024 * 1024)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every server setting; each field reads `LPS_<FIELD_NAME_UPPER>`."""

    grpc_host: str = "0.0.0.0"
    grpc_port: int = 50051
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9464
    queue_backend: str = "local"
    # A Redis URL may hold a password: kept out of repr, like the tokens.
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    redis_prefix: str = "lps"
    queue_processing_mode: ProcessingMode = ProcessingMode.PER_REQUEST
    serial_bundle_max_requests_per_call: int = 8
    serial_bundle_max_wait_ms: int = 0
    queue_max_size: int = 100_000
    queue_max_bytes: int = 1_073_741_824
    queue_lease_seconds: float = 30.0
    queue_max_retries: int = 3
    queue_default_ttl_seconds: float = 3600.0
    queue_priority_aging_seconds: float = 30.0
    queue_sweep_interval_seconds: float = 5.0
    result_retention_seconds: float = 86_400.0
    retry_backoff_ms: int = 500
    retry_after_max_seconds: float = 300.0
    max_concurrent_calls: int = 4
    max_essay_bytes: int = 100_000
    shutdown_grace_seconds: float = 30.0
    mock_model: str = "mock-judge-1"
    mock_latency_ms: float = 0.0
    mock_latency_per_item_ms: float = 0.0
    mock_latency_jitter: float = 0.1
    mock_error_rate: float = 0.0
    mock_judge_temperature: float = 0.1
    mock_seed: int = 0
    auth_tokens: tuple[str, ...] = field(default=(), repr=False)
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    max_message_bytes: int = 16 * 1024 * 1024
    max_requests_per_message: int = 512
    max_streams_per_client: int = 16
    rate_limit_per_second: float = 0.0
    rate_limit_burst: int = 100

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read settings from `env` (default: the process environment), then apply `overrides`.

        Raises:
            ConfigurationError: a variable has a value of the wrong type or out of range.
        """
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = source.get(f"LPS_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, raw, _PARSERS.get(f.name) or _TYPE_PARSERS[f.type])
        return replace(cls(**values), **overrides).validated()

    def validated(self) -> Settings:
        """Return self, or raise ConfigurationError naming the first invalid setting."""
        checks = [
            (self.queue_backend in ("local", "redis"), "LPS_QUEUE_BACKEND must be local or redis"),
            (
                1 <= self.serial_bundle_max_requests_per_call <= MAX_BUNDLE_SIZE,
                "LPS_SERIAL_BUNDLE_MAX_REQUESTS_PER_CALL must be in 1..64",
            ),
            (self.serial_bundle_max_wait_ms >= 0, "LPS_SERIAL_BUNDLE_MAX_WAIT_MS must be >= 0"),
            (self.queue_max_size >= 1, "LPS_QUEUE_MAX_SIZE must be >= 1"),
            (self.queue_lease_seconds > 0, "LPS_QUEUE_LEASE_SECONDS must be > 0"),
            (self.queue_max_retries >= 0, "LPS_QUEUE_MAX_RETRIES must be >= 0"),
            (
                0 <= self.retry_after_max_seconds < math.inf,
                "LPS_RETRY_AFTER_MAX_SECONDS must be a finite number >= 0",
            ),
            (self.max_concurrent_calls >= 1, "LPS_MAX_CONCURRENT_CALLS must be >= 1"),
            (0.0 <= self.mock_error_rate <= 1.0, "LPS_MOCK_ERROR_RATE must be in 0..1"),
            (self.mock_judge_temperature > 0, "LPS_MOCK_JUDGE_TEMPERATURE must be > 0"),
            (
                self.queue_processing_mode != ProcessingMode.BATCH_API,
                "LPS_QUEUE_PROCESSING_MODE batch_api is not available yet; "
                "use per_request or serial_bundle",
            ),
            (bool(self.tls_cert) == bool(self.tls_key), "LPS_TLS_CERT and LPS_TLS_KEY go together"),
            (
                not self.tls_client_ca or bool(self.tls_cert),
                "LPS_TLS_CLIENT_CA needs LPS_TLS_CERT and LPS_TLS_KEY (mutual TLS is TLS)",
            ),
            (
                MESSAGE_BYTES_RANGE[0] <= self.max_message_bytes <= MESSAGE_BYTES_RANGE[1],
                "LPS_MAX_MESSAGE_BYTES must be in {}..{}".format(*MESSAGE_BYTES_RANGE),
            ),
            (self.max_requests_per_message >= 1, "LPS_MAX_REQUESTS_PER_MESSAGE must be >= 1"),
            (self.max_streams_per_client >= 1, "LPS_MAX_STREAMS_PER_CLIENT must be >= 1"),
            (
                self.rate_limit_per_second >= 0,
                "LPS_RATE_LIMIT_PER_SECOND must be >= 0 (0 turns the limit off)",
            ),
            (self.rate_limit_burst >= 1, "LPS_RATE_LIMIT_BURST must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigurationError(message)
        return self

    @property
    def bundle_size(self) -> int:
        """The most requests one provider call may carry in the configured mode."""
        if self.queue_processing_mode == ProcessingMode.SERIAL_BUNDLE:
            return self.serial_bundle_max_requests_per_call
        return 1


def _parse(name: str, raw: str, parser: Callable[[str], T]) -> T:
    try:
        return parser(raw.strip())
    except ValueError as exc:
        raise ConfigurationError(f"LPS_{name.upper()}={raw!r} is invalid: {exc}") from None


def _tokens(raw: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in raw.split(",") if t.strip())


_TYPE_PARSERS: dict[Any, Callable[[str], Any]] = {
    "str": str,
    "int": int,
    "float": float,
    "ProcessingMode": ProcessingMode,
}
_PARSERS: dict[str, Callable[[str], Any]] = {"auth_tokens": _tokens}
