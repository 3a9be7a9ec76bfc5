"""Typed errors of the LPS client; `transport` raises them, translating gRPC statuses."""

from __future__ import annotations

from cj_client.models import FieldViolation


class LpsClientError(Exception):
    """A call to LPS failed; `code` is the gRPC status code name."""

    def __init__(self, message: str, *, code: str) -> None:
        self.code = code
        super().__init__(message)


class InvalidRequestError(LpsClientError):
    """The server rejected the request; `violations` name the fields."""

    def __init__(self, message: str, *, violations: list[FieldViolation]) -> None:
        self.violations = violations
        super().__init__(message, code="INVALID_ARGUMENT")


class ResourceExhaustedError(LpsClientError):
    """The server refused the call for now; retry after `retry_after` seconds (0: no hint)."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(message, code="RESOURCE_EXHAUSTED")


class QueueFullError(ResourceExhaustedError):
    """The queue is full: every client waits until it drains."""


class LimitExceededError(ResourceExhaustedError):
    """A limit of this client was reached: its submission rate or open streams, or the size of
    one message (which waiting does not cure)."""


class UnavailableError(LpsClientError):
    """The server or its queue backend is unreachable, or the server is shutting down."""


class UnauthenticatedError(LpsClientError):
    """The call needs a valid bearer token."""


class NotFoundError(LpsClientError):
    """No request with that id is known."""
