"""Checks on incoming messages, at the gRPC edge, before anything is enqueued."""

from __future__ import annotations

from collections.abc import Callable

from generated.lps.v1 import comparison_pb2 as pb
from lps_server.core.config import Settings
from lps_server.core.errors import FieldViolation
from lps_server.edge.convert import PROVIDER_FROM_PB
from lps_server.providers import ProviderRegistry

MAX_ID_CHARS = 256
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY_CHARS = 256
MAX_METADATA_VALUE_CHARS = 4096
MAX_PRIORITY = 10
MAX_TTL_SECONDS = 30 * 86_400
MAX_TOKENS_LIMIT = 1_000_000

_Bad = Callable[[str, str], None]


def validate_request(
    msg: pb.ComparisonRequest, *, path: str, settings: Settings, providers: ProviderRegistry
) -> list[FieldViolation]:
    """Every violation in one request message; an empty list means it may be enqueued."""
    out: list[FieldViolation] = []

    def bad(field: str, description: str) -> None:
        out.append(FieldViolation(f"{path}.{field}", description))

    for name in ("request_id", "correlation_id", "result_channel"):
        if len(getattr(msg, name)) > MAX_ID_CHARS:
            bad(name, f"must be at most {MAX_ID_CHARS} characters")
    for name, present, essay in (
        ("essay_a", msg.HasField("essay_a"), msg.essay_a),
        ("essay_b", msg.HasField("essay_b"), msg.essay_b),
    ):
        if not present:
            bad(name, "is required")
            continue
        if not essay.text.strip():
            bad(f"{name}.text", "must not be empty")
        elif len(essay.text.encode()) > settings.max_essay_bytes:
            bad(f"{name}.text", f"must be at most {settings.max_essay_bytes} bytes (UTF-8)")
        if len(essay.id) > MAX_ID_CHARS:
            bad(f"{name}.id", f"must be at most {MAX_ID_CHARS} characters")
    if len(msg.instructions.encode()) > settings.max_essay_bytes:
        bad("instructions", f"must be at most {settings.max_essay_bytes} bytes (UTF-8)")
    if not 0 <= msg.priority <= MAX_PRIORITY:
        bad("priority", f"must be between 0 and {MAX_PRIORITY}, got {msg.priority}")
    if msg.HasField("ttl"):
        ttl = msg.ttl
        if ttl.seconds < 0 or ttl.nanos < 0:
            bad("ttl", "must not be negative")
        elif ttl.seconds > MAX_TTL_SECONDS or ttl.nanos >= 1_000_000_000:
            bad("ttl", f"must be at most {MAX_TTL_SECONDS} seconds (30 days)")
    _check_overrides(msg.overrides, bad, providers)
    _check_metadata(msg, bad)
    return out


def _check_overrides(o: pb.LlmOverrides, bad: _Bad, providers: ProviderRegistry) -> None:
    provider = PROVIDER_FROM_PB.get(o.provider)
    if o.provider == pb.PROVIDER_UNSPECIFIED:
        bad("overrides.provider", "is required (for example PROVIDER_MOCK)")
    elif provider is None:
        bad("overrides.provider", f"unknown provider number {o.provider}")
    elif not providers.is_configured(provider):
        bad("overrides.provider", f"provider {provider.value!r} is not configured on this server")
    if len(o.model) > MAX_ID_CHARS:
        bad("overrides.model", f"must be at most {MAX_ID_CHARS} characters")
    if o.HasField("temperature") and not 0.0 <= o.temperature <= 2.0:
        bad("overrides.temperature", "must be between 0 and 2")
    if o.HasField("max_tokens") and not 1 <= o.max_tokens <= MAX_TOKENS_LIMIT:
        bad("overrides.max_tokens", f"must be between 1 and {MAX_TOKENS_LIMIT}")
    if len(o.system_prompt) > MAX_METADATA_VALUE_CHARS * 4:
        bad("overrides.system_prompt", f"must be at most {MAX_METADATA_VALUE_CHARS * 4} characters")


def _check_metadata(msg: pb.ComparisonRequest, bad: _Bad) -> None:
    if len(msg.metadata) > MAX_METADATA_ENTRIES:
        bad(
            "metadata", f"must have at most {MAX_METADATA_ENTRIES} entries, got {len(msg.metadata)}"
        )
        return
    for key, value in msg.metadata.items():
        if not key or len(key) > MAX_METADATA_KEY_CHARS:
            bad(f"metadata[{key[:40]!r}]", f"keys must be 1 to {MAX_METADATA_KEY_CHARS} characters")
        if len(value) > MAX_METADATA_VALUE_CHARS:
            bad(
                f"metadata[{key[:40]!r}]",
                f"values must be at most {MAX_METADATA_VALUE_CHARS} characters",
            )
