"""Shared parts of the serial-bundle tests: a recording provider, an app factory over both queue
backends, and small helpers for submitting and following results.

Provider calls are observed through `RecordingProvider`, the real mock provider behind a recorder.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import Any

import pytest

from cj_client import Ack, ComparisonOutcome, ComparisonSubmission, LpsClient
from cj_client.transport import submission_to_pb
from lps_server.app import LpsApp
from lps_server.core.domain import Overrides, ProcessingMode, ProviderName
from lps_server.edge.convert import request_from_pb
from lps_server.providers.base import (
    ComparisonItem,
    ItemFailure,
    ItemOutcome,
    ProviderCallError,
)
from lps_server.providers.mock import MockProvider
from tests.helpers import submission

BACKENDS = ["local", pytest.param("redis", marks=pytest.mark.redis)]
MOCK_MODEL = "mock-judge-1"
SERIAL = ProcessingMode.SERIAL_BUNDLE
WAIT_S = 10.0


class RecordingProvider:
    """The mock provider behind a recorder: the item keys of every call in order, the most calls in
    flight at once, scripted failures, and an optional gate that holds calls until it opens.

    Args:
        name: the provider name to serve as (a second provider in mixed-provider tests).
        model: the default model.
        latency_ms: the mock's latency per call.
        fail: per request id, outcomes to return instead of the judgement, one per attempt.
        fail_calls: whole-call failures raised by the first calls, one per call.
        journal: a list shared between providers, receiving (provider, keys) per call.
    """

    def __init__(
        self,
        *,
        name: ProviderName = ProviderName.MOCK,
        model: str = MOCK_MODEL,
        latency_ms: float = 0.0,
        fail: dict[str, list[ItemFailure]] | None = None,
        fail_calls: list[ProviderCallError] | None = None,
        journal: list[tuple[ProviderName, list[str]]] | None = None,
    ) -> None:
        self._inner = MockProvider(model=model, latency_ms=latency_ms, jitter=0.0)
        self._name = name
        self._fail = {k: list(v) for k, v in (fail or {}).items()}
        self._fail_calls = list(fail_calls or [])
        self.journal = journal if journal is not None else []
        self.calls: list[list[str]] = []
        self.models: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    @property
    def name(self) -> ProviderName:
        return self._name

    @property
    def default_model(self) -> str:
        return self._inner.default_model

    def known_models(self) -> frozenset[str]:
        return self._inner.known_models()

    async def compare(
        self, items: Sequence[ComparisonItem], *, model: str, overrides: Overrides
    ) -> list[ItemOutcome]:
        keys = [i.key for i in items]
        self.calls.append(keys)
        self.models.append(model)
        self.journal.append((self._name, keys))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.entered.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self._fail_calls:
                raise self._fail_calls.pop(0)
            outcomes = await self._inner.compare(items, model=model, overrides=overrides)
        finally:
            self.in_flight -= 1
        return [self._scripted(k, o) for k, o in zip(keys, outcomes, strict=True)]

    def _scripted(self, key: str, outcome: ItemOutcome) -> ItemOutcome:
        planned = self._fail.get(key)
        return planned.pop(0) if planned else outcome

    async def aclose(self) -> None:
        await self._inner.aclose()


class ShiftedClock:
    """Wall time plus an offset the test moves forward, so TTLs pass without sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


AppFactory = Callable[..., Awaitable[LpsApp]]


def client_of(app: LpsApp) -> LpsClient:
    return LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=WAIT_S)


async def enqueue(app: LpsApp, subs: Sequence[ComparisonSubmission]) -> None:
    """Queue requests through intake in one backend call, as the servicer does."""
    prepared = [
        app.intake.prepare(request_from_pb(submission_to_pb(s), request_id=s.request_id))
        for s in subs
    ]
    outcomes = await app.intake.submit(prepared)
    assert all(o.created for o in outcomes)


async def submit_and_collect(
    client: LpsClient, subs: Sequence[ComparisonSubmission]
) -> dict[str, ComparisonOutcome]:
    """Stream submissions in one message; every one must be accepted; results by request id."""
    results: dict[str, ComparisonOutcome] = {}
    async with asyncio.timeout(WAIT_S), aclosing(client.submit_many(subs)) as events:
        async for event in events:
            if isinstance(event, Ack):
                assert event.accepted, event
            else:
                results[event.request_id] = event
    assert sorted(results) == sorted(s.request_id for s in subs)
    return results


async def follow(client: LpsClient, channel: str, count: int) -> dict[str, ComparisonOutcome]:
    """The first `count` results published on `channel`."""
    results: dict[str, ComparisonOutcome] = {}
    async with asyncio.timeout(WAIT_S), aclosing(client.stream_results(channel)) as stream:
        async for _, outcome in stream:
            results[outcome.request_id] = outcome
            if len(results) == count:
                break
    return results


def subs_of(ids: Sequence[str], channel: str = "", **kw: Any) -> list[ComparisonSubmission]:
    return [
        submission(i, request_id=rid, result_channel=channel, **kw) for i, rid in enumerate(ids)
    ]


def has_samples(app: LpsApp, prefix: str) -> bool:
    return any(s.name.startswith(prefix) for f in app.registry.collect() for s in f.samples)
