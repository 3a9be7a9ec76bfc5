"""The gRPC edge of one replica: the server with its interceptors, health and reflection."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2

# `health.aio` re-exports this class; importing it directly gives mypy its type.
from grpc_health.v1._async import HealthServicer
from opentelemetry import trace

from lps_server.core.config import Settings
from lps_server.edge.auth import AuthInterceptor
from lps_server.edge.decode_guard import DecodeGuardInterceptor
from lps_server.edge.rejections import CALL_CODES, rejection_reason
from lps_server.edge.server import (
    SERVICE_METHODS,
    SERVICE_NAME,
    create_server,
    server_credentials,
    server_options,
)
from lps_server.edge.servicer import LlmProviderServicer
from lps_server.observability.metrics import LpsMetrics
from lps_server.processing.intake import Intake
from lps_server.providers import ProviderRegistry
from lps_server.queue.base import QueueBackend

UNARY_SUBMIT = "SubmitComparison"


class GrpcEdge:
    """The gRPC server of one replica, bound at construction (port 0 picks a free port).

    Args:
        settings: host, port, TLS, tokens and limits.
        intake: where accepted requests go.
        queue: the queue backend results are read from.
        providers: the provider registry (validation of provider names).
        metrics: where call counts and latencies go.
        tracer_provider: where spans go (the global provider by default).
        clock: Unix time source.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        intake: Intake,
        queue: QueueBackend,
        providers: ProviderRegistry,
        metrics: LpsMetrics,
        tracer_provider: trace.TracerProvider | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._metrics = metrics
        metrics.initialise_grpc(SERVICE_METHODS, CALL_CODES)
        self._health = HealthServicer()
        self._servicer = LlmProviderServicer(
            intake=intake,
            queue=queue,
            providers=providers,
            settings=settings,
            metrics=metrics,
            tracer_provider=tracer_provider,
            clock=clock,
        )
        self._server, self.port = create_server(
            self._servicer,
            host=settings.grpc_host,
            port=settings.grpc_port,
            health_servicer=self._health,
            credentials=server_credentials(settings),
            # Authentication first: an unauthenticated call is refused before its bytes are parsed.
            interceptors=[
                AuthInterceptor(settings.auth_tokens, on_reject=self._count_rejection),
                DecodeGuardInterceptor(on_reject=self._count_rejection),
            ],
            max_message_bytes=settings.max_message_bytes,
            options=server_options(settings),
        )

    def _count_rejection(self, method: str, code: grpc.StatusCode) -> None:
        # Calls refused by an interceptor never reach the servicer, which counts all the others.
        self._metrics.grpc_requests.labels(method=method, code=code.name).inc()
        if method == UNARY_SUBMIT:
            self._metrics.record_rejection(rejection_reason(code.name, over_rate=False))

    async def start(self) -> None:
        """Start serving calls."""
        await self._server.start()

    def announce_metrics_port(self, port: int) -> None:
        """Report `port` as this replica's /metrics port in GetQueueStats."""
        self._servicer.metrics_port = port

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING or NOT_SERVING on the health service (overall and for LPS)."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in (SERVICE_NAME, health.OVERALL_HEALTH):
            await self._health.set(name, status)

    async def begin_drain(self) -> None:
        """Health NOT_SERVING for good, and every later call answered UNAVAILABLE."""
        await self._health.enter_graceful_shutdown()
        self._servicer.refuse_new_calls()

    async def stop(self, grace: float) -> None:
        """Stop the server, letting calls in progress finish for up to `grace` seconds."""
        await self._server.stop(grace)
        await self._servicer.close()
