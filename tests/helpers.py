"""Small helpers shared by tests: submissions, metric reads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from opentelemetry import trace
from prometheus_client import CollectorRegistry

from cj_client import Ack, ComparisonOutcome, ComparisonSubmission, EssayInput, LpsClient
from lps_server.app import LpsApp
from lps_server.core.config import Settings
from lps_server.core.domain import Overrides
from lps_server.providers import ComparisonItem, ItemOutcome, Provider, ProviderRegistry
from lps_server.providers.mock import MockProvider
from lps_server.queue.base import QueueBackend

WAIT_S = 10.0
RICH = "A thorough essay weighs sleep research, bus schedules, sports and family routines."
POOR = "School is good. School is good. School is good."


def submission(i: int = 0, **kw: object) -> ComparisonSubmission:
    """A valid mock submission; keyword arguments override fields."""
    fields: dict[str, object] = {
        "essay_a": EssayInput(f"a{i}", f"{POOR} {i}"),
        "essay_b": EssayInput(f"b{i}", f"{RICH} {i}"),
        "request_id": f"req-{i}",
        "instructions": "Which essay argues better?",
    }
    fields.update(kw)
    return ComparisonSubmission(**fields)  # type: ignore[arg-type]


async def eventually(check: Callable[[], bool], what: str, *, timeout: float = WAIT_S) -> None:
    """Poll a condition (a metric, finished spans...) until it holds, with a deadline."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels` (0 when absent)."""
    total = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


class GatedMock(MockProvider):
    """The mock provider, but every call waits for `gate`; `entered` is set once a call began.

    Keyword arguments go to MockProvider (latency, error injection...).
    """

    def __init__(self, **mock: Any) -> None:
        super().__init__(**mock)
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def compare(
        self, items: Sequence[ComparisonItem], *, model: str, overrides: Overrides
    ) -> list[ItemOutcome]:
        self.entered.set()
        await self.gate.wait()
        return await super().compare(items, model=model, overrides=overrides)


@asynccontextmanager
async def running_app(
    *,
    tracer_provider: trace.TracerProvider | None = None,
    provider: MockProvider | None = None,
    also: Sequence[Provider] = (),
    clock: Callable[[], float] = time.time,
    serve_metrics: bool = False,
    queue: QueueBackend | None = None,
    **settings: Any,
) -> AsyncIterator[LpsApp]:
    """A started LPS on free ports with its own registry, stopped (work finished) on exit.

    With `provider` (and `also`, more providers) it calls those, else the configured ones.
    """
    config = Settings.from_env(
        {}, grpc_host="127.0.0.1", grpc_port=0, metrics_host="127.0.0.1", metrics_port=0, **settings
    )
    app = LpsApp(
        config,
        registry=CollectorRegistry(),
        tracer_provider=tracer_provider,
        providers=ProviderRegistry([provider, *also]) if provider is not None else None,
        clock=clock,
        queue=queue,
    )
    await app.start(serve_metrics=serve_metrics)
    try:
        yield app
    finally:
        await app.stop(grace=5)


async def submit_all(
    client: LpsClient, subs: list[ComparisonSubmission]
) -> list[ComparisonOutcome]:
    """Stream submissions in one message; every one must be accepted and end."""
    results: list[ComparisonOutcome] = []
    async with asyncio.timeout(WAIT_S):
        async for event in client.submit_many(subs):
            if isinstance(event, Ack):
                assert event.accepted, event
            else:
                results.append(event)
    assert sorted(r.request_id for r in results) == sorted(s.request_id for s in subs)
    return results


async def results_on(client: LpsClient, channel: str, count: int) -> list[ComparisonOutcome]:
    """The first `count` results published on `channel`, within WAIT_S."""
    found: list[ComparisonOutcome] = []
    async with asyncio.timeout(WAIT_S):
        async for _, outcome in client.stream_results(channel):
            found.append(outcome)
            if len(found) == count:
                return found
    raise AssertionError("the result stream ended early")
