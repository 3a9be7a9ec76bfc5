"""Bearer-token authentication of every RPC but the health service, and who a caller is.

With LPS_AUTH_TOKENS set, a call needs the metadata `authorization: Bearer <token>` naming one of
the tokens, else it ends UNAUTHENTICATED before its request is even parsed. Health checks stay open
so load balancers and orchestrators need no secret; reflection needs a token, because it describes
the whole API to whoever asks.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence

import grpc
from grpc_health.v1 import health

from lps_server.core.errors import UnauthenticatedError
from lps_server.edge.grpc_errors import to_status
from lps_server.edge.method_handlers import (
    Continuation,
    Handler,
    ServerInterceptor,
    aborting,
    method_name,
    service_name,
)

AUTHORIZATION = "authorization"
BEARER = "bearer"
OPEN_SERVICES = frozenset({health.SERVICE_NAME})
Metadata = Iterable[tuple[str, str | bytes]]
RejectionListener = Callable[[str, grpc.StatusCode], None]


def _digest(token: str | bytes) -> bytes:
    # Comparing fixed-length digests keeps compare_digest's time independent of token lengths.
    raw = token.encode() if isinstance(token, str) else token
    return hashlib.sha256(raw).digest()


def bearer_token(metadata: Metadata | None) -> str | bytes | None:
    """The token of the first `authorization: Bearer <token>` entry; "" when malformed."""
    for key, value in metadata or ():
        if key.lower() != AUTHORIZATION:
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        return token.strip() if scheme.lower() == BEARER else ""
    return None


class TokenChecker:
    """Checks bearer tokens against the configured ones in constant time."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self._digests = tuple(_digest(t) for t in tokens)

    @property
    def enabled(self) -> bool:
        """True when tokens are configured (authentication is on)."""
        return bool(self._digests)

    def problem(self, metadata: Metadata | None) -> str | None:
        """Why the call is not authenticated, or None when it is. Never contains the token."""
        token = bearer_token(metadata)
        if token is None:
            return "missing credentials: send the metadata 'authorization: Bearer <token>'"
        if not token:
            return "malformed credentials: the authorization metadata must read 'Bearer <token>'"
        return None if self.valid(token) else "the bearer token is not valid on this server"

    def valid(self, token: str | bytes) -> bool:
        """True when `token` is one of the configured tokens."""
        given = _digest(token)
        ok = False
        for known in self._digests:  # no early exit: every token is compared every time
            ok |= hmac.compare_digest(given, known)
        return ok


def client_identity(metadata: Metadata | None, peer: str, *, authenticated: bool) -> str:
    """Who is calling, for per-client limits: the token when authentication is on, else the
    peer's IP address.

    Without authentication a token is whatever the client chooses, so it cannot name the client;
    with it, the token is hashed so the key never holds the secret.
    """
    if authenticated:
        token = bearer_token(metadata)
        if token:
            return "token:" + _digest(token).hex()[:16]
    return "peer:" + peer_host(peer)


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer string (`ipv4:1.2.3.4:5`, `ipv6:[::1]:5`, `unix:...`)."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer


class AuthInterceptor(ServerInterceptor):
    """Refuses calls without a valid bearer token with UNAUTHENTICATED (health stays open).

    Args:
        tokens: the accepted tokens (LPS_AUTH_TOKENS); empty turns authentication off.
        on_reject: told the method name and code of every refused call (for metrics).
    """

    def __init__(
        self, tokens: Sequence[str], *, on_reject: RejectionListener | None = None
    ) -> None:
        self._checker = TokenChecker(tokens)
        self._on_reject = on_reject

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        """Pass authenticated calls on; give the others a handler that aborts them."""
        method = handler_call_details.method
        if not self._checker.enabled or service_name(method) in OPEN_SERVICES:
            return await continuation(handler_call_details)  # type: ignore[no-any-return]
        problem = self._checker.problem(handler_call_details.invocation_metadata)
        handler: Handler | None = await continuation(handler_call_details)
        if problem is None:
            return handler  # type: ignore[return-value]
        if handler is None:
            # Unknown methods are refused alike, so that probing without a token cannot tell which
            # methods exist; a handler that reads nothing suits a call of any arity.
            handler = _ANY_ARITY
        elif self._on_reject is not None:
            self._on_reject(method_name(method), grpc.StatusCode.UNAUTHENTICATED)
        return aborting(handler, to_status(UnauthenticatedError(problem)))


_ANY_ARITY: Handler = grpc.stream_stream_rpc_method_handler(lambda requests, context: None)
