"""Server settings from `LPS_*` environment variables; defaults run with no configuration.

Every numeric setting declares the values it accepts next to its default, in the field's metadata
(`between`, `at_least`, `above`), so adding a setting with its range is one line. Every float must
also be finite: `nan` and `inf` are refused whatever the range. `validated()` checks both, then
the rules that relate several settings.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

from lps_server.core.domain import ProcessingMode, ProviderName
from lps_server.core.errors import ConfigurationError

T = TypeVar("T")
MAX_BUNDLE_SIZE = 64
# OpenAI's limit of requests per batch, the lower of the two providers' (Anthropic: 100,000).
MAX_BATCH_REQUESTS = 50_000
# Below 64 KiB ordinary requests stop fitting in a message; gRPC cannot go past 2 GiB.
MESSAGE_BYTES_RANGE = (64 * 1024, 1024 * 1024 * 1024)
HOUR_S = 3600.0
DAY_S = 86_400.0
YEAR_S = 365 * DAY_S


@dataclass(frozen=True, slots=True)
class Range:
    """The values a numeric setting accepts: `low`..`high`, `low` itself excluded if `open_low`."""

    low: float
    high: float = math.inf
    open_low: bool = False

    def admits(self, value: float) -> bool:
        """Whether `value` lies in the range."""
        above_low = value > self.low if self.open_low else value >= self.low
        return above_low and value <= self.high

    def describe(self) -> str:
        """The range as an error message says it: `in 1..64`, `> 0`, `>= 1`."""
        low, high = _number(self.low), _number(self.high)
        if self.high == math.inf:
            return f"> {low}" if self.open_low else f">= {low}"
        return f"> {low} and <= {high}" if self.open_low else f"in {low}..{high}"


def between(low: float, high: float) -> dict[str, Range]:
    """Field metadata: the setting accepts `low`..`high`, both included."""
    return {"range": Range(low, high)}


def at_least(low: float) -> dict[str, Range]:
    """Field metadata: the setting accepts `low` and more."""
    return {"range": Range(low)}


def above(low: float, high: float = math.inf) -> dict[str, Range]:
    """Field metadata: the setting accepts more than `low` (up to `high`): a positive interval."""
    return {"range": Range(low, high, open_low=True)}


PORT = between(0, 65535)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every server setting; each field reads `LPS_<FIELD_NAME_UPPER>`.

    A numeric field's metadata states its range (`between`, `at_least`, `above`); see the module
    docstring.
    """

    grpc_host: str = "0.0.0.0"
    grpc_port: int = field(default=50051, metadata=PORT)
    metrics_host: str = "0.0.0.0"
    metrics_port: int = field(default=9464, metadata=PORT)
    queue_backend: str = "local"
    # A Redis URL may hold a password: kept out of repr, like the tokens.
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    redis_prefix: str = "lps"
    queue_processing_mode: ProcessingMode = ProcessingMode.PER_REQUEST
    serial_bundle_max_requests_per_call: int = field(
        default=8, metadata=between(1, MAX_BUNDLE_SIZE)
    )
    serial_bundle_max_wait_ms: int = field(default=0, metadata=between(0, HOUR_S * 1000))
    queue_max_size: int = field(default=100_000, metadata=at_least(1))
    queue_max_bytes: int = field(default=1_073_741_824, metadata=at_least(1))
    queue_lease_seconds: float = field(default=30.0, metadata=above(0, DAY_S))
    queue_max_retries: int = field(default=3, metadata=between(0, 100))
    queue_default_ttl_seconds: float = field(default=3600.0, metadata=above(0, YEAR_S))
    queue_priority_aging_seconds: float = field(default=30.0, metadata=between(0, DAY_S))
    queue_sweep_interval_seconds: float = field(default=5.0, metadata=between(0.01, DAY_S))
    result_retention_seconds: float = field(default=86_400.0, metadata=above(0, YEAR_S))
    retry_backoff_ms: int = field(default=500, metadata=between(0, HOUR_S * 1000))
    retry_after_max_seconds: float = field(default=300.0, metadata=between(0, DAY_S))
    max_concurrent_calls: int = field(default=4, metadata=between(1, 10_000))
    max_essay_bytes: int = field(default=100_000, metadata=at_least(1))
    shutdown_grace_seconds: float = field(default=30.0, metadata=between(0, DAY_S))
    mock_model: str = "mock-judge-1"
    mock_latency_ms: float = field(default=0.0, metadata=between(0, DAY_S * 1000))
    mock_latency_per_item_ms: float = field(default=0.0, metadata=between(0, DAY_S * 1000))
    mock_latency_jitter: float = field(default=0.1, metadata=between(0, 1))
    mock_error_rate: float = field(default=0.0, metadata=between(0, 1))
    mock_judge_temperature: float = field(default=0.1, metadata=above(0, 1000))
    # A real judge's flaws (docs/cj.md): a logit for essay A; logit noise per place in a bundle.
    mock_position_bias: float = field(default=0.0, metadata=between(-20, 20))
    mock_bundle_position_noise: float = field(default=0.0, metadata=between(0, 20))
    mock_seed: int = 0
    mock_batch_latency_ms: float = field(default=3000.0, metadata=between(0, DAY_S * 1000))
    # Provider batch APIs (docs/batching.md, "Provider batch APIs").
    batch_api_providers: tuple[str, ...] = ()
    batch_api_max_requests_per_batch: int = field(
        default=10_000, metadata=between(1, MAX_BATCH_REQUESTS)
    )
    batch_api_max_wait_ms: int = field(default=5000, metadata=between(0, DAY_S * 1000))
    batch_api_poll_seconds: float = field(default=30.0, metadata=above(0, DAY_S))
    auth_tokens: tuple[str, ...] = field(default=(), repr=False)
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    max_message_bytes: int = field(default=16 * 1024 * 1024, metadata=between(*MESSAGE_BYTES_RANGE))
    max_requests_per_message: int = field(default=512, metadata=between(1, 100_000))
    max_streams_per_client: int = field(default=16, metadata=between(1, 1_000_000))
    rate_limit_per_second: float = field(default=0.0, metadata=between(0, 1e9))
    rate_limit_burst: int = field(default=100, metadata=between(1, 1_000_000_000))
    # Streams (issue 15): connections to Redis, reply channels, the re-check of awaited results.
    redis_max_connections: int = field(default=32, metadata=between(1, 10_000))
    reply_channel_ttl_seconds: float = field(default=300.0, metadata=above(0, DAY_S))
    stream_recheck_seconds: float = field(default=30.0, metadata=between(0.05, DAY_S))
    # gRPC connections: keepalive pings, and a maximum age so that clients spread over replicas.
    grpc_keepalive_seconds: float = field(default=60.0, metadata=between(1, DAY_S))
    grpc_keepalive_timeout_seconds: float = field(default=20.0, metadata=between(1, HOUR_S))
    grpc_max_connection_age_seconds: float = field(default=1800.0, metadata=between(0, 30 * DAY_S))

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
        for f in fields(self):
            _check_range(f.name, getattr(self, f.name), f.metadata.get("range"))
        checks = [
            (self.queue_backend in ("local", "redis"), "LPS_QUEUE_BACKEND must be local or redis"),
            (
                set(self.batch_api_providers) <= {p.value for p in ProviderName},
                "LPS_BATCH_API_PROVIDERS must list providers among "
                + ", ".join(p.value for p in ProviderName),
            ),
            (bool(self.tls_cert) == bool(self.tls_key), "LPS_TLS_CERT and LPS_TLS_KEY go together"),
            (
                not self.tls_client_ca or bool(self.tls_cert),
                "LPS_TLS_CLIENT_CA needs LPS_TLS_CERT and LPS_TLS_KEY (mutual TLS is TLS)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigurationError(message)
        return self

    @property
    def bundle_size(self) -> int:
        """The most requests one provider call (or batch line) may carry in the configured mode."""
        if self.queue_processing_mode in (ProcessingMode.SERIAL_BUNDLE, ProcessingMode.BATCH_API):
            return self.serial_bundle_max_requests_per_call
        return 1


def _check_range(name: str, value: object, allowed: Range | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    variable = f"LPS_{name.upper()}"
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigurationError(f"{variable} must be a finite number, got {value!r}")
    if allowed is not None and not allowed.admits(value):
        raise ConfigurationError(f"{variable} must be {allowed.describe()}, got {value!r}")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


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
_PARSERS: dict[str, Callable[[str], Any]] = {
    "auth_tokens": _tokens,
    "batch_api_providers": _tokens,
}
