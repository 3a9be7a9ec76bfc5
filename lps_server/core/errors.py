"""The server's error hierarchy; the gRPC edge maps each class to one status code."""

from __future__ import annotations

from dataclasses import dataclass


class LpsError(Exception):
    """Base of every error the server raises on purpose."""


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field of a request."""

    field: str
    description: str


class InvalidRequestError(LpsError):
    """The request is malformed; nothing was enqueued."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        self.violations = violations
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations[:5])
        super().__init__(f"invalid request: {summary}")


class QueueFullError(LpsError):
    """The queue is at capacity; the client should retry after `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class LimitExceededError(LpsError):
    """A per-client limit (rate, concurrent streams) is reached; retry after `retry_after` s."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class QueueUnavailableError(LpsError):
    """The queue backend cannot be reached; the message names the cause."""


class QueueBusyError(QueueUnavailableError):
    """The backend is reachable but every connection this replica may open to it is busy."""


class ShuttingDownError(LpsError):
    """The server is draining and accepts no new work."""


class ConfigurationError(LpsError):
    """A setting is missing or invalid."""


class UnknownRequestError(LpsError):
    """No request with this id is known (never submitted, or its result is past retention)."""


class UnauthenticatedError(LpsError):
    """The call carries no valid bearer token."""


class RequestConflictError(LpsError):
    """A known request id was submitted with a different payload; nothing was changed."""

    def __init__(self, message: str, *, request_id: str) -> None:
        self.request_id = request_id
        super().__init__(message)
