"""Undecodable request bytes end a call INVALID_ARGUMENT instead of gRPC's UNKNOWN.

gRPC's own handling of a deserializer failure answers UNKNOWN with the Python exception's type and
text, and logs a traceback: wrong code, internals shown to the client. Proto3 strings must be valid
UTF-8, so a client (or a proxy) sending raw bytes can trigger it at will. This interceptor wraps
each handler's deserializer to mark such messages, and ends the call with a clear BadRequest.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError

from lps_server.core.errors import FieldViolation, InvalidRequestError
from lps_server.edge.grpc_errors import to_status
from lps_server.edge.method_handlers import (
    Behavior,
    Continuation,
    Handler,
    ServerInterceptor,
    behavior_of,
    method_name,
    rebuild,
)

Ctx = grpc.aio.ServicerContext[Any, Any]
RejectionListener = Callable[[str, grpc.StatusCode], None]


class _Undecodable:
    """Stands in for a request message whose bytes did not parse."""


UNDECODABLE = _Undecodable()
_STATUS = to_status(
    InvalidRequestError(
        [
            FieldViolation(
                "(message)",
                "cannot be decoded: not a valid protobuf message of this method's request type "
                "(strings must be valid UTF-8)",
            )
        ]
    )
)


async def _abort(context: Ctx) -> NoReturn:
    await context.abort(_STATUS.code, _STATUS.details, _STATUS.trailing_metadata)
    raise AssertionError("unreachable")  # pragma: no cover


class DecodeGuardInterceptor(ServerInterceptor):
    """Ends calls whose request bytes do not parse with INVALID_ARGUMENT and a BadRequest.

    Args:
        on_reject: told the method name and code of calls refused before their behavior ran.
    """

    def __init__(self, *, on_reject: RejectionListener | None = None) -> None:
        self._on_reject = on_reject

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        """The handler, with a deserializer marking bad bytes and a behavior refusing them."""
        handler: Handler | None = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler  # type: ignore[return-value]
        behavior = behavior_of(handler)
        if not (inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)):
            return handler  # a synchronous behavior: not one this server registers
        deserialize = handler.request_deserializer

        def guarded(raw: bytes) -> Any:
            try:
                return deserialize(raw)
            except DecodeError:
                return UNDECODABLE

        method = method_name(handler_call_details.method)
        if handler.request_streaming:
            wrapped = _stream_request(behavior)
        else:
            wrapped = _unary_request(behavior, lambda: self._rejected(method))
        return rebuild(handler, wrapped, request_deserializer=guarded)

    def _rejected(self, method: str) -> None:
        if self._on_reject is not None:
            self._on_reject(method, _STATUS.code)


def _unary_request(behavior: Behavior, rejected: Callable[[], None]) -> Behavior:
    # grpc.aio tells an async-generator behavior from a coroutine one: keep the kind.
    if inspect.isasyncgenfunction(behavior):

        async def stream_out(request: Any, context: Ctx) -> AsyncIterator[Any]:
            if request is UNDECODABLE:
                rejected()
                await _abort(context)
            async with aclosing(behavior(request, context)) as responses:
                async for response in responses:
                    yield response

        return stream_out

    async def unary_out(request: Any, context: Ctx) -> Any:
        if request is UNDECODABLE:
            rejected()
            await _abort(context)
        return await behavior(request, context)

    return unary_out


def _stream_request(behavior: Behavior) -> Behavior:
    # The bad message may come after good ones: the behavior runs and sees the abort from its
    # request iterator, so it records the call's code itself (no on_reject here).
    async def checked(requests: AsyncIterable[Any], context: Ctx) -> AsyncIterator[Any]:
        async for request in requests:
            if request is UNDECODABLE:
                await _abort(context)
            yield request

    if inspect.isasyncgenfunction(behavior):

        async def stream_out(requests: AsyncIterable[Any], context: Ctx) -> AsyncIterator[Any]:
            async with aclosing(behavior(checked(requests, context), context)) as responses:
                async for response in responses:
                    yield response

        return stream_out

    async def unary_out(requests: AsyncIterable[Any], context: Ctx) -> Any:
        return await behavior(checked(requests, context), context)

    return unary_out
