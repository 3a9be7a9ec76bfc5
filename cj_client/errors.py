"""Typed errors of the LPS client; `transport` raises them, translating gRPC statuses."""

from __future__ import annotations

from cj_client.models import Ack, FieldViolation


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


class PermissionDeniedError(LpsClientError):
    """The token is valid but may not make this call."""


class AlreadyExistsError(LpsClientError):
    """The request id is known to the server with a different payload; `request_id` names it."""

    def __init__(self, message: str, *, request_id: str) -> None:
        self.request_id = request_id
        super().__init__(message, code="ALREADY_EXISTS")


class DeadlineExceededError(LpsClientError):
    """No answer came before the deadline."""


class AssessmentError(Exception):
    """A CJ run ended without a trustworthy ranking.

    Attributes:
        reason: the run's stop reason (`server_lost`, `refused`, `too_many_failures`).
        code: the gRPC status code name behind it, or "" when no call failed.
    """

    def __init__(self, message: str, *, reason: str, code: str = "") -> None:
        self.reason = reason
        self.code = code
        super().__init__(message)


class ServerLostError(AssessmentError):
    """The server stayed unreachable (or kept refusing for now) past `--server-timeout`."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message, reason="server_lost", code=code)


class RunRefusedError(AssessmentError):
    """The server refused the run in a way retrying cannot cure (bad token, bad request, a
    reused request id with another payload)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message, reason="refused", code=code)


class TooManyFailuresError(AssessmentError):
    """More comparisons failed than the run allows (`max_failed_share`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="too_many_failures")


class JournalWriteError(AssessmentError):
    """The run's journal could not be written (a full disk, a quota, a file-size limit): the run
    stops, since what it is told could no longer be resumed; `--resume` continues it once there
    is room."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="journal_unwritable")


class OutputWriteError(Exception):
    """An output of a run (ranking.csv, ranking.json, summary.json, scores.png, or the report on
    stdout) could not be written; `path` names it and `reason` is the system's reason."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: cannot write it: {reason}")


class JournalError(Exception):
    """A run journal cannot be read or does not fit the run it should continue."""


def error_from_ack(ack: Ack) -> LpsClientError:
    """The typed error for a streamed submission the server rejected (`ack.accepted` False)."""
    message = ack.error_message or ack.error_code
    code = ack.error_code or "UNKNOWN"
    if code == "INVALID_ARGUMENT":
        return InvalidRequestError(message, violations=list(ack.violations))
    if code == "RESOURCE_EXHAUSTED":
        return ResourceExhaustedError(message, retry_after=ack.retry_after)
    if code == "ALREADY_EXISTS":
        return AlreadyExistsError(message, request_id=ack.request_id)
    if code == "UNAVAILABLE":
        return UnavailableError(message, code=code)
    if code == "UNAUTHENTICATED":
        return UnauthenticatedError(message, code=code)
    return LpsClientError(message, code=code)


class InputError(ValueError):
    """A user's input cannot be used; the message names the file, line, essay id or flag."""
