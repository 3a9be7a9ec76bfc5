"""The one place where a failed gRPC call becomes a typed client error."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from cj_client.errors import (
    AlreadyExistsError,
    DeadlineExceededError,
    InvalidRequestError,
    LimitExceededError,
    LpsClientError,
    NotFoundError,
    PermissionDeniedError,
    QueueFullError,
    UnauthenticatedError,
    UnavailableError,
)
from cj_client.models import FieldViolation

# The google.rpc.ErrorInfo reason LPS gives a RESOURCE_EXHAUSTED caused by a full queue.
QUEUE_FULL_REASON = "QUEUE_FULL"

_ERRORS: Mapping[grpc.StatusCode, Callable[[str, str], LpsClientError]] = {
    grpc.StatusCode.UNAVAILABLE: lambda m, c: UnavailableError(m, code=c),
    grpc.StatusCode.UNAUTHENTICATED: lambda m, c: UnauthenticatedError(m, code=c),
    grpc.StatusCode.NOT_FOUND: lambda m, c: NotFoundError(m, code=c),
    grpc.StatusCode.PERMISSION_DENIED: lambda m, c: PermissionDeniedError(m, code=c),
    grpc.StatusCode.DEADLINE_EXCEEDED: lambda m, c: DeadlineExceededError(m, code=c),
}


def translate(exc: grpc.aio.AioRpcError) -> LpsClientError:
    """The typed client error for a failed call, with the server's details."""
    code = exc.code()
    message = exc.details() or code.name
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    violations: list[FieldViolation] = []
    retry_after = 0.0
    reason = ""
    info_metadata: dict[str, str] = {}
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            retry_after = info.retry_delay.ToNanoseconds() / 1e9
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            error_info = error_details_pb2.ErrorInfo()
            detail.Unpack(error_info)
            reason = error_info.reason
            info_metadata = dict(error_info.metadata)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequestError(message, violations=violations)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # LPS names the reason; gRPC's own refusals (a message over the size limit) carry none.
        if reason == QUEUE_FULL_REASON:
            return QueueFullError(message, retry_after=retry_after)
        return LimitExceededError(message, retry_after=retry_after)
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return AlreadyExistsError(message, request_id=info_metadata.get("request_id", ""))
    factory = _ERRORS.get(code)
    if factory is not None:
        return factory(message, code.name)
    return LpsClientError(message, code=code.name)
