"""The one place where server errors become gRPC status codes with `google.rpc` details."""

from __future__ import annotations

import logging
import uuid

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from lps_server.core.errors import (
    FieldViolation,
    InvalidRequestError,
    LimitExceededError,
    LpsError,
    QueueFullError,
    QueueUnavailableError,
    RequestConflictError,
    ShuttingDownError,
    UnauthenticatedError,
    UnknownRequestError,
)
from lps_server.edge.wire_time import duration_pb

log = logging.getLogger(__name__)

# google.rpc.ErrorInfo on RESOURCE_EXHAUSTED says which resource ran out: clients back off from a
# full queue (everyone's problem) differently from their own rate or stream limit.
ERROR_DOMAIN = "lps.v1"
REASON_QUEUE_FULL = "QUEUE_FULL"
REASON_LIMIT_EXCEEDED = "CLIENT_LIMIT_EXCEEDED"
# ErrorInfo on ALREADY_EXISTS: the request id is known with another payload; metadata names it.
REASON_REQUEST_ID_CONFLICT = "REQUEST_ID_CONFLICT"

_CODES: list[tuple[type[LpsError], int]] = [
    (InvalidRequestError, code_pb2.INVALID_ARGUMENT),
    (QueueFullError, code_pb2.RESOURCE_EXHAUSTED),
    (LimitExceededError, code_pb2.RESOURCE_EXHAUSTED),
    (QueueUnavailableError, code_pb2.UNAVAILABLE),
    (ShuttingDownError, code_pb2.UNAVAILABLE),
    (UnknownRequestError, code_pb2.NOT_FOUND),
    (UnauthenticatedError, code_pb2.UNAUTHENTICATED),
    (RequestConflictError, code_pb2.ALREADY_EXISTS),
]


def bad_request(violations: list[FieldViolation]) -> error_details_pb2.BadRequest:
    """The BadRequest detail listing each invalid field."""
    return error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in violations
        ]
    )


def retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    """The RetryInfo detail telling when to try again."""
    return error_details_pb2.RetryInfo(retry_delay=duration_pb(seconds))


def to_status(exc: BaseException) -> grpc.Status:
    """The gRPC status for an exception; unexpected ones become INTERNAL without a traceback."""
    code = next((c for cls, c in _CODES if isinstance(exc, cls)), None)
    if code is None:
        ref = uuid.uuid4().hex[:12]
        log.error("unexpected error (ref %s)", ref, exc_info=exc)
        message = f"internal server error (ref {ref}; the server log has the details)"
        return rpc_status.to_status(status_pb2.Status(code=code_pb2.INTERNAL, message=message))
    status = status_pb2.Status(code=code, message=str(exc))
    details: list[Message] = []
    if isinstance(exc, InvalidRequestError):
        details.append(bad_request(exc.violations))
    elif isinstance(exc, QueueFullError | LimitExceededError):
        reason = REASON_QUEUE_FULL if isinstance(exc, QueueFullError) else REASON_LIMIT_EXCEEDED
        details += [
            retry_info(exc.retry_after),
            error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN),
        ]
    elif isinstance(exc, RequestConflictError):
        details.append(
            error_details_pb2.ErrorInfo(
                reason=REASON_REQUEST_ID_CONFLICT,
                domain=ERROR_DOMAIN,
                metadata={"request_id": exc.request_id},
            )
        )
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return rpc_status.to_status(status)
