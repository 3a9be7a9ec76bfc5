"""The gRPC servicer: the only server module that speaks protobuf besides `convert`."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, aclosing, asynccontextmanager, nullcontext
from dataclasses import replace
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context

from generated.lps.v1 import comparison_pb2 as pb
from generated.lps.v1 import llm_provider_service_pb2 as svc
from generated.lps.v1 import llm_provider_service_pb2_grpc as svc_grpc
from lps_server.core.config import Settings
from lps_server.core.domain import QueuedRequest, RequestStatus
from lps_server.core.errors import (
    FieldViolation,
    InvalidRequestError,
    LimitExceededError,
    QueueFullError,
    RequestConflictError,
    ShuttingDownError,
    UnknownRequestError,
)
from lps_server.edge.auth import client_identity
from lps_server.edge.convert import STATUS_TO_PB, request_from_pb, result_to_pb, stats_to_pb
from lps_server.edge.grpc_errors import to_status
from lps_server.edge.limits import ClientLimits
from lps_server.edge.method_handlers import drain
from lps_server.edge.rejections import rejection_reason
from lps_server.edge.result_watch import ResultWatch
from lps_server.edge.server import SERVICE_NAME
from lps_server.edge.stream_submit import StreamSubmission
from lps_server.edge.validation import validate_request
from lps_server.observability.metrics import LpsMetrics
from lps_server.observability.spans import RpcConventions, RpcServerSpan
from lps_server.observability.tracing import current_carrier, tracer_for
from lps_server.processing.intake import Intake, new_request_id
from lps_server.providers import ProviderRegistry
from lps_server.queue.base import QueueBackend

STREAM_POLL_S = 5.0
Ctx = grpc.aio.ServicerContext[Any, Any]


class LlmProviderServicer(svc_grpc.LlmProviderServiceServicer):
    """Implements `lps.v1.LlmProviderService` over an Intake and a QueueBackend."""

    def __init__(
        self,
        *,
        intake: Intake,
        queue: QueueBackend,
        providers: ProviderRegistry,
        settings: Settings,
        metrics: LpsMetrics,
        tracer_provider: trace.TracerProvider | None = None,
        clock: Callable[[], float] = time.time,
        limits: ClientLimits | None = None,
    ) -> None:
        self._intake = intake
        self._queue = queue
        self._providers = providers
        self._settings = settings
        self._metrics = metrics
        self._tracer = tracer_for(tracer_provider)
        self._clock = clock
        self._limits = limits or ClientLimits.from_settings(settings)
        self._watch = ResultWatch(
            lookup=queue.ended_results, recheck_s=settings.stream_recheck_seconds
        )
        self._rpc_conventions = RpcConventions.from_env(os.environ)
        self._draining = False
        # The port /metrics is served on (0: none), told once it is bound; GetQueueStats reports it
        # so that tools find this replica's metrics instead of guessing a port.
        self.metrics_port = 0

    def refuse_new_calls(self) -> None:
        """Answer every later call UNAVAILABLE (drain); calls already running go on."""
        self._draining = True

    async def close(self) -> None:
        """Stop the look-ups of awaited results (once the server has stopped)."""
        await self._watch.close()

    @asynccontextmanager
    async def _rpc(
        self,
        method: str,
        context: Ctx,
        *,
        stream: bool = False,
        requests: AsyncIterator[Any] | None = None,
        submits: bool = False,
    ) -> AsyncIterator[str]:
        """Translate errors into statuses; record the call's code, latency and SERVER span.

        Yields the caller's identity for per-client limits; a `stream` call holds one of the
        caller's stream slots until it ends. A refused call with streamed `requests` reads what the
        client still sends before it ends (see `drain`). A refused unary call that `submits` a
        request counts as a rejected submission.
        """
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        span = RpcServerSpan(
            self._tracer,
            conventions=self._rpc_conventions,
            service=SERVICE_NAME,
            method=method,
            metadata=context.invocation_metadata(),
        )
        try:
            if self._draining:
                raise ShuttingDownError(
                    "server is shutting down and accepts no new calls; retry on another replica"
                )
            client = client_identity(
                context.invocation_metadata(),
                context.peer(),
                authenticated=bool(self._settings.auth_tokens),
            )
            slot: AbstractContextManager[None] = (
                self._limits.streams.hold(client) if stream else nullcontext()
            )
            with slot:
                yield client
        except grpc.aio.AbortError:
            # Aborted by a guard below us (undecodable message): report the code it sent.
            code = _code_of(context)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            # The client cancelled or left: how every StreamResults call ends. Not an OK call.
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            status = to_status(exc)
            code = status.code
            if submits:
                over_rate = isinstance(exc, LimitExceededError)
                self._metrics.record_rejection(rejection_reason(code.name, over_rate=over_rate))
            if requests is not None:
                await drain(requests)
            await context.abort(status.code, status.details, status.trailing_metadata)
        finally:
            labels = {"method": method, "code": code.name}
            self._metrics.grpc_requests.labels(**labels).inc()
            self._metrics.grpc_latency.labels(**labels).observe(time.perf_counter() - started)
            span.end(code=code.name, code_value=code.value[0])

    def _incoming_context(self, context: Ctx) -> Context:
        # The call's SERVER span (a child of the caller's `traceparent`) is current in `_rpc`.
        return otel_context.get_current()

    def prepare(
        self, msg: pb.ComparisonRequest, *, path: str, reply_to: str, parent: Context
    ) -> QueuedRequest:
        """Validate and route one request message.

        Raises:
            InvalidRequestError: with every field violation.
        """
        violations = validate_request(
            msg, path=path, settings=self._settings, providers=self._providers
        )
        if violations:
            raise InvalidRequestError(violations)
        request = request_from_pb(msg, request_id=msg.request_id or new_request_id())
        with self._tracer.start_as_current_span(
            "lps.submit",
            context=parent,
            attributes={
                "lps.request_id": request.request_id,
                "lps.correlation_id": request.correlation_id,
                "lps.cj_batch_id": request.metadata.get("cj_batch_id", ""),
            },
        ):
            queued = self._intake.prepare(
                request, reply_to=reply_to, trace_context=current_carrier()
            )
        return queued

    async def SubmitComparison(
        self, request: svc.SubmitComparisonRequest, context: Ctx
    ) -> svc.SubmitComparisonResponse:
        """Enqueue one request; idempotent by request_id."""
        async with self._rpc("SubmitComparison", context, submits=True) as client:
            if not request.HasField("request"):
                raise InvalidRequestError([_missing("request")])
            parent = self._incoming_context(context)
            queued = self.prepare(request.request, path="request", reply_to="", parent=parent)
            self._limits.rate.admit(client)
            (outcome,) = await self._intake.submit([queued])
            if outcome.conflict:
                raise RequestConflictError(outcome.rejected, request_id=outcome.request_id)
            if outcome.status is None:
                raise QueueFullError(outcome.rejected, retry_after=outcome.retry_after)
            return svc.SubmitComparisonResponse(
                request_id=outcome.request_id, status=STATUS_TO_PB[outcome.status]
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def SubmitComparisons(
        self,
        request_iterator: AsyncIterator[svc.SubmitComparisonsRequest],
        context: Ctx,
    ) -> AsyncIterator[svc.SubmitComparisonsResponse]:
        """Acknowledge every streamed request, then stream each accepted one's result."""
        async with self._rpc(
            "SubmitComparisons", context, stream=True, requests=request_iterator
        ) as client:
            submission = StreamSubmission(
                prepare=self.prepare,
                intake=self._intake,
                queue=self._queue,
                watch=self._watch,
                reply_to=f"reply:{uuid.uuid4().hex}",
                parent=self._incoming_context(context),
                admit=lambda: self._limits.rate.take(client),
                rate_message=self._limits.rate.message(),
                max_requests_per_message=self._limits.max_requests_per_message,
                on_rejected=self._metrics.record_rejection,
            )
            # Closed at once when the client goes: its reader and follower tasks end with it.
            async with aclosing(submission.run(request_iterator)) as events:
                async for event in events:
                    yield event

    async def StreamResults(
        self, request: svc.StreamResultsRequest, context: Ctx
    ) -> AsyncIterator[svc.StreamResultsResponse]:
        """Follow a result channel from a cursor until the client goes away."""
        async with self._rpc("StreamResults", context, stream=True):
            if not request.result_channel:
                raise InvalidRequestError([_missing("result_channel")])
            # One reader per replica follows every StreamResults channel: no connection per call.
            with self._queue.follow(request.result_channel, cursor=request.cursor) as follower:
                while True:
                    for entry in await follower.read(STREAM_POLL_S):
                        yield svc.StreamResultsResponse(
                            result=result_to_pb(entry.result), cursor=entry.cursor
                        )

    async def GetComparison(
        self, request: svc.GetComparisonRequest, context: Ctx
    ) -> svc.GetComparisonResponse:
        """Status and, once ended, the result of one request."""
        async with self._rpc("GetComparison", context):
            if not request.request_id:
                raise InvalidRequestError([_missing("request_id")])
            result = await self._queue.get(request.request_id)
            if result is None:
                raise UnknownRequestError(f"no request with id {request.request_id!r} is known")
            if result.status == RequestStatus.PROCESSING:
                # Waiting in a provider batch job? Then say where the job stands.
                job = await self._queue.batch_jobs().of_request(request.request_id)
                if job is not None and job.is_open:  # not a job it was retried from
                    result = replace(result, batch_job=job.view())
            return svc.GetComparisonResponse(result=result_to_pb(result))
        raise AssertionError("unreachable")  # pragma: no cover

    async def GetQueueStats(
        self, request: svc.GetQueueStatsRequest, context: Ctx
    ) -> svc.GetQueueStatsResponse:
        """Depth by status, oldest queued age and processing mode."""
        async with self._rpc("GetQueueStats", context):
            stats = await self._queue.stats(now=self._clock())
            return stats_to_pb(
                stats,
                mode=self._settings.queue_processing_mode,
                backend=self._queue.name,
                max_size=self._queue.max_size,
                metrics_port=self.metrics_port,
            )
        raise AssertionError("unreachable")  # pragma: no cover


def _missing(field: str) -> FieldViolation:
    return FieldViolation(field, "is required")


def _code_of(context: Ctx) -> grpc.StatusCode:
    # grpc.aio keeps the aborted code as its integer value.
    value = context.code()
    for code in grpc.StatusCode:
        if value in (code, code.value[0]):
            return code
    return grpc.StatusCode.UNKNOWN
