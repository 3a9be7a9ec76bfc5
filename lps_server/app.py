"""The LPS application: queue, providers, processor, gRPC server and metrics endpoint, wired."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from opentelemetry import trace
from prometheus_client import CollectorRegistry

from lps_server.budgets import BudgetStore, make_budget_store
from lps_server.core.config import Settings
from lps_server.core.domain import ProcessingMode
from lps_server.edge.grpc_edge import GrpcEdge
from lps_server.observability.batch_metrics import BatchMetrics
from lps_server.observability.metrics import LabelSpace, LpsMetrics
from lps_server.observability.metrics_http import start_metrics_endpoint
from lps_server.observability.queue_gauges import QueueGauges, QueueReading
from lps_server.processing.batch_processing import BatchProcessing
from lps_server.processing.endings import RequestEndings
from lps_server.processing.intake import Intake
from lps_server.processing.processor import Processor
from lps_server.providers import ProviderRegistry
from lps_server.providers.base import RETRYABLE_CODES
from lps_server.providers.batch_registry import BatchApis
from lps_server.queue import LocalQueue, QueueBackend, make_queue

log = logging.getLogger(__name__)
STREAM_FLUSH_GRACE_S = 5.0


class LpsApp:
    """One LPS replica. `start()` binds and serves; `stop()` drains and shuts down.

    Args:
        settings: the configuration.
        registry: the Prometheus registry metrics go to (a fresh one by default).
        tracer_provider: where spans go (the global provider by default).
        queue: a queue backend (built from settings by default).
        providers: a provider registry (built from settings by default).
        clock: Unix time source.
        budgets: where rate budgets are kept (beside the queue, from settings, by default).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        queue: QueueBackend | None = None,
        providers: ProviderRegistry | None = None,
        clock: Callable[[], float] = time.time,
        budgets: BudgetStore | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = LpsMetrics(self.registry)
        self.batch_metrics: BatchMetrics | None = None
        self.queue = queue or make_queue(settings)
        self.budgets = budgets or make_budget_store(settings)
        self.providers = providers or ProviderRegistry.from_settings(
            settings, on_circuit_state=self.metrics.set_circuit_state
        )
        self.metrics.initialise(
            LabelSpace(
                models=self.providers.model_labels(),
                mode=settings.queue_processing_mode,
                retry_codes=RETRYABLE_CODES,
                circuits=self.providers.circuit_states(),
            )
        )
        self.queue_gauges = QueueGauges(self._read_queue)
        self.queue_gauges.register(self.registry)
        self._clock = clock
        self.batch_apis = self._batch_apis()
        self.intake = Intake(
            queue=self.queue, providers=self.providers, settings=settings, clock=clock
        )
        self.processor = Processor(
            queue=self.queue,
            providers=self.providers,
            settings=settings,
            metrics=self.metrics,
            tracer_provider=tracer_provider,
            clock=clock,
            # Health follows processing: NOT_SERVING while it cannot run or reach the queue. A
            # draining edge ignores it (NOT_SERVING for good).
            on_serving=self._set_serving,
            batches=self._batch_path(),
            budgets=self.budgets,
        )
        self.edge = GrpcEdge(
            settings=settings,
            intake=self.intake,
            queue=self.queue,
            providers=self.providers,
            metrics=self.metrics,
            tracer_provider=tracer_provider,
            clock=clock,
        )
        self.grpc_port = self.edge.port
        self.metrics_port: int | None = None
        self._metrics_http: WSGIServer | None = None
        self._processor_task: asyncio.Task[None] | None = None

    def _batch_apis(self) -> BatchApis | None:
        """The batch APIs, when some requests can take the batch path; their series at 0."""
        settings = self.settings
        batch_mode = settings.queue_processing_mode == ProcessingMode.BATCH_API
        if not (batch_mode or settings.batch_api_providers):
            return None
        apis = BatchApis.from_registry(self.providers, settings, clock=self._clock)
        used = [p for p in apis.names() if batch_mode or p.value in settings.batch_api_providers]
        self.batch_metrics = BatchMetrics(self.registry)
        self.batch_metrics.initialise(used, lps=self.metrics, also_per_request=batch_mode)
        return apis

    def _batch_path(self) -> Callable[[RequestEndings], BatchProcessing] | None:
        apis, metrics = self.batch_apis, self.batch_metrics
        if apis is None or metrics is None:
            return None
        return lambda endings: BatchProcessing(
            queue=self.queue,
            providers=self.providers,
            apis=apis,
            settings=self.settings,
            metrics=self.metrics,
            batch_metrics=metrics,
            endings=endings,
            clock=self._clock,
            rng=random.Random(),
        )

    async def _read_queue(self) -> QueueReading:
        stats = await self.queue.stats(now=self._clock())
        return QueueReading(stats.queued, stats.processing, stats.oldest_queued_age_s)

    async def start(self, *, serve_metrics: bool = True) -> None:
        """Start serving gRPC (and /metrics unless disabled) and processing the queue."""
        await self.edge.start()
        if serve_metrics:
            self._metrics_http = start_metrics_endpoint(
                self.registry, host=self.settings.metrics_host, port=self.settings.metrics_port
            )
            self.metrics_port = self._metrics_http.server_port
            self.edge.announce_metrics_port(self.metrics_port)
        await self.queue_gauges.attach()
        # SERVING first: from then on the processor reports every change.
        await self.edge.set_serving(True)
        self._processor_task = asyncio.create_task(self.processor.run())
        if self.processor.batches is not None:
            self.processor.batches.start()
        log.info(
            "lps listening grpc=%s:%d metrics=%s backend=%s mode=%s",
            self.settings.grpc_host,
            self.grpc_port,
            f"{self.settings.metrics_host}:{self.metrics_port}" if self.metrics_port else "off",
            self.queue.name,
            self.settings.queue_processing_mode.value,
            extra={"grpc_port": self.grpc_port, "metrics_port": self.metrics_port},
        )

    async def _set_serving(self, serving: bool) -> None:
        await self.edge.set_serving(serving)

    async def stop(self, grace: float | None = None) -> None:
        """Drain and shut down: health NOT_SERVING, refuse new work, finish accepted work.

        With the in-process queue every accepted request is processed before the processor stops
        (requests still queued when `grace` runs out end FAILED, naming the shutdown). With Redis,
        queued work stays in Redis for other replicas and only the bundles in flight are finished.
        """
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        stop_by = time.monotonic() + grace
        await self.edge.begin_drain()
        self.intake.close()
        if self._processor_task is not None:
            self.processor.stop(drain=isinstance(self.queue, LocalQueue))
            done, _ = await asyncio.wait({self._processor_task}, timeout=grace)
            if not done:
                log.warning("grace period of %.1fs ran out; stopping bundles in flight", grace)
                self.processor.stop()
                self.processor.cancel_in_flight()
                await asyncio.wait({self._processor_task}, timeout=STREAM_FLUSH_GRACE_S)
        if self.processor.batches is not None:
            # In-process jobs are finished (or cancelled) now; shared ones are left to others.
            await self.processor.batches.stop(
                drain=isinstance(self.queue, LocalQueue), grace=stop_by - time.monotonic()
            )
        if isinstance(self.queue, LocalQueue) and (leftover := self.queue.pending()):
            await self.processor.endings.abandon(
                leftover, "server shut down before this request was processed; submit it again"
            )
        # Let streaming calls deliver the last results before connections close.
        await self.edge.stop(STREAM_FLUSH_GRACE_S)
        self.queue_gauges.detach()
        await self.queue.close()
        await self.budgets.close()
        await self.providers.aclose()
        if self.batch_apis is not None:
            await self.batch_apis.aclose()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        log.info("lps stopped")
