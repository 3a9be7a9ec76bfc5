"""Rebuilding gRPC method handlers inside server interceptors: same arity, new behavior.

An interceptor that rejects a call must hand gRPC a handler of the call's own arity (unary or
streaming on each side), else gRPC mis-handles streaming calls; these helpers keep that in one
place.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc

# The stubs make these generic; the runtime classes are not subscriptable.
if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    ServerInterceptor = grpc.aio.ServerInterceptor
Behavior = Callable[..., Any]
Continuation = Callable[[grpc.HandlerCallDetails], Any]

# Reading what a refused client already sent takes at most this long and this many messages.
DRAIN_MAX_S = 1.0
DRAIN_MAX_MESSAGES = 64

_FACTORIES: dict[tuple[bool, bool], Callable[..., Handler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def method_name(full_method: str) -> str:
    """`/pkg.Service/Method` -> `Method` (the label gRPC metrics use)."""
    return full_method.rsplit("/", 1)[-1]


def service_name(full_method: str) -> str:
    """`/pkg.Service/Method` -> `pkg.Service`."""
    return full_method.lstrip("/").split("/", 1)[0]


def behavior_of(handler: Handler) -> Behavior:
    """The application function of a handler, whatever its arity."""
    behavior = {
        (False, False): handler.unary_unary,
        (False, True): handler.unary_stream,
        (True, False): handler.stream_unary,
        (True, True): handler.stream_stream,
    }[(handler.request_streaming, handler.response_streaming)]
    assert behavior is not None, "a handler always has the behavior of its arity"
    return behavior


def rebuild(
    handler: Handler, behavior: Behavior, *, request_deserializer: Callable[[bytes], Any] | None
) -> Handler:
    """A handler of the same arity and response serializer with another behavior.

    A `request_deserializer` of None passes raw bytes, so nothing is parsed for a call that will
    be refused anyway.
    """
    factory = _FACTORIES[(handler.request_streaming, handler.response_streaming)]
    return factory(
        behavior,
        request_deserializer=request_deserializer,
        response_serializer=handler.response_serializer,
    )


def aborting(handler: Handler, status: grpc.Status) -> Handler:
    """A handler of the same arity that ends the call at once with `status`, reading nothing."""

    # A coroutine (not an async generator) is valid for every arity in grpc.aio: for streaming
    # responses it is the reader/writer style, and it writes nothing before aborting.
    async def abort(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if handler.request_streaming:
            await drain(request)
        await context.abort(status.code, status.details, status.trailing_metadata)

    return rebuild(handler, abort, request_deserializer=None)


async def drain(requests: AsyncIterator[Any]) -> None:
    """Read (and drop) what a client streams until it half-closes, briefly, before refusing it.

    A grpc.aio client whose message write fails because the server already ended the call reports
    INTERNAL "Internal error from Core" instead of the server's status (grpc/grpc#36066): ending a
    streaming call while the client still writes turns a clear refusal into a riddle. Reading
    first lets the writes succeed; the bounds keep a client that never stops from holding the call.
    """
    with contextlib.suppress(Exception):
        async with asyncio.timeout(DRAIN_MAX_S):
            read = 0
            async for _ in requests:
                read += 1
                if read >= DRAIN_MAX_MESSAGES:
                    return
