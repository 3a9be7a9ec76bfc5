"""Why a submitted request was refused, as the bounded `reason` of
`llm_provider_submissions_rejected_total`, and the gRPC codes LPS calls end with."""

from __future__ import annotations

#: Every code an LPS call can end with; their call counters exist from start-up.
CALL_CODES = (
    "OK",
    "CANCELLED",
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "RESOURCE_EXHAUSTED",
    "UNAVAILABLE",
    "UNAUTHENTICATED",
    "INTERNAL",
)

_REASONS = {
    "INVALID_ARGUMENT": "invalid_request",
    "UNAVAILABLE": "unavailable",
    "ALREADY_EXISTS": "already_exists",
    "UNAUTHENTICATED": "unauthenticated",
}


def rejection_reason(code: str, *, over_rate: bool) -> str:
    """The reason for a refusal that carries gRPC code `code` (its name).

    RESOURCE_EXHAUSTED is either the client's own submission rate (`over_rate`) or a full queue;
    codes with no reason of their own are `internal`.
    """
    if code == "RESOURCE_EXHAUSTED":
        return "rate_limited" if over_rate else "queue_full"
    return _REASONS.get(code, "internal")
