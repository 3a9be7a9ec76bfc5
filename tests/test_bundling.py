"""Serial bundles end to end on both queue backends (origin checklist PR 4, DESIGN "Processing
semantics"): compatible requests share one provider call, bundles form fairly, expired requests
never reach a provider, items fail and retry one by one, and per-request mode is unchanged.

Provider calls are observed through `RecordingProvider`, the real mock provider behind a recorder.
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import replace
from typing import Any

import pytest

from cj_client import Ack, ComparisonOutcome, ComparisonSubmission, LpsClient
from cj_client.transport import submission_to_pb
from lps_server.app import LpsApp
from lps_server.bundling import bundle_limit
from lps_server.config import Settings
from lps_server.convert import request_from_pb
from lps_server.domain import ErrorCode, Overrides, ProcessingMode, ProviderName
from lps_server.providers import ProviderRegistry
from lps_server.providers.base import (
    ComparisonItem,
    ItemFailure,
    ItemOutcome,
    ProviderCallError,
)
from lps_server.providers.mock import MockProvider
from tests.helpers import metric, submission

REDIS_QUEUE_READY = importlib.util.find_spec("lps_server.queue.redis_queue") is not None
BACKENDS = [
    "local",
    pytest.param(
        "redis",
        marks=[
            pytest.mark.redis,
            pytest.mark.skipif(not REDIS_QUEUE_READY, reason="lps_server.queue.redis_queue absent"),
        ],
    ),
]
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


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings selecting the queue backend (a flushed private Redis for `redis`)."""
    if request.param == "redis":
        return {"queue_backend": "redis", "redis_url": request.getfixturevalue("redis_url")}
    return {"queue_backend": "local"}


@pytest.fixture
async def make_app(backend: dict[str, Any]) -> AsyncIterator[AppFactory]:
    """Build LPS apps with the given providers (serial-bundle mode unless told otherwise); with
    `start=False` requests can be queued before processing begins. All are stopped afterwards."""
    apps: list[LpsApp] = []

    async def make(
        *providers: RecordingProvider,
        start: bool = True,
        clock: Callable[[], float] = time.time,
        **settings: Any,
    ) -> LpsApp:
        values: dict[str, Any] = {
            "grpc_host": "127.0.0.1",
            "grpc_port": 0,
            "metrics_port": 0,
            "queue_processing_mode": SERIAL,
            "retry_backoff_ms": 1,
            # Only the sweep at start-up: expiry in these tests is found when dequeued.
            "queue_sweep_interval_seconds": 3600.0,
            **backend,
            **settings,
        }
        registry = ProviderRegistry(list(providers) or [RecordingProvider()])
        app = LpsApp(Settings.from_env({}, **values), providers=registry, clock=clock)
        apps.append(app)
        if start:
            await app.start(serve_metrics=False)
        return app

    yield make
    for app in apps:
        await app.stop(grace=5)


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


# --- the happy path -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 5, 8])
async def test_compatible_requests_share_one_provider_call(make_app: AppFactory, n: int) -> None:
    provider = RecordingProvider()
    app = await make_app(provider, serial_bundle_max_requests_per_call=8)
    subs = [submission(i) for i in range(n)]
    async with client_of(app) as client:
        results = await submit_and_collect(client, subs)

    ids = [s.request_id for s in subs]
    assert provider.calls == [ids]
    assert {r.status for r in results.values()} == {"completed"}
    bundle_ids = {r.bundle_id for r in results.values()}
    assert len(bundle_ids) == 1
    assert "" not in bundle_ids
    assert [results[rid].bundle_index for rid in ids] == list(range(n))
    assert {r.bundle_size for r in results.values()} == {n}
    assert {r.processing_mode for r in results.values()} == {"serial_bundle"}
    assert {r.winner for r in results.values()} == {"essay_b"}
    labels = {"provider": "mock", "model": MOCK_MODEL}
    assert metric(app.registry, "llm_provider_serial_bundle_calls_total", **labels) == 1
    assert metric(app.registry, "llm_provider_serial_bundle_items_per_call_sum", **labels) == n
    assert metric(app.registry, "llm_provider_serial_bundle_items_per_call_count", **labels) == 1
    assert metric(app.registry, "llm_provider_requests_total", status="completed") == n


async def test_bundles_never_exceed_the_configured_maximum(make_app: AppFactory) -> None:
    provider = RecordingProvider()
    app = await make_app(provider, start=False, serial_bundle_max_requests_per_call=4)
    ids = [f"r{i:02d}" for i in range(10)]
    await enqueue(app, subs_of(ids, "c"))
    await app.start(serve_metrics=False)
    async with client_of(app) as client:
        results = await follow(client, "c", len(ids))

    assert provider.calls == [ids[0:4], ids[4:8], ids[8:10]]
    assert {r.status for r in results.values()} == {"completed"}
    assert metric(app.registry, "llm_provider_serial_bundle_calls_total") == 3
    assert metric(app.registry, "llm_provider_serial_bundle_items_per_call_sum") == 10


# --- preferred_bundle_size ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hint", "sizes"),
    [
        ("3", [3, 3, 3, 1]),
        ("1", [1] * 10),
        ("16", [8, 2]),  # a hint can only lower the maximum
        ("0", [8, 2]),
        ("65", [8, 2]),
        ("abc", [8, 2]),
        ("-3", [8, 2]),
        ("²", [8, 2]),  # a digit to str.isdigit, yet not an integer
    ],
)
async def test_preferred_bundle_size_only_lowers_the_limit(
    make_app: AppFactory, hint: str, sizes: list[int]
) -> None:
    provider = RecordingProvider()
    app = await make_app(provider, start=False, serial_bundle_max_requests_per_call=8)
    ids = [f"r{i:02d}" for i in range(10)]
    await enqueue(app, subs_of(ids, "c", metadata={"preferred_bundle_size": hint}))
    await app.start(serve_metrics=False)
    async with client_of(app) as client:
        results = await follow(client, "c", len(ids))

    assert [len(c) for c in provider.calls] == sizes
    assert [k for c in provider.calls for k in c] == ids
    assert {r.status for r in results.values()} == {"completed"}


@pytest.mark.parametrize("hint", ["²", "٣", " 4 ", "1e3", "", "4.0"])
def test_bundle_limit_reads_only_plain_integers(hint: str) -> None:
    got = bundle_limit({"preferred_bundle_size": hint}, mode=SERIAL, max_per_call=8)
    assert got == (4 if hint.strip() == "4" else 8)


async def test_a_bad_hint_over_grpc_is_ignored_not_an_error(make_app: AppFactory) -> None:
    provider = RecordingProvider()
    app = await make_app(provider)
    subs = [submission(i, metadata={"preferred_bundle_size": "²"}) for i in range(3)]
    async with client_of(app) as client:
        results = await submit_and_collect(client, subs)
    assert {r.status for r in results.values()} == {"completed"}


# --- compatibility and fairness -------------------------------------------------------------------


async def test_mixed_providers_models_and_hints_bundle_by_compatibility(
    make_app: AppFactory,
) -> None:
    journal: list[tuple[ProviderName, list[str]]] = []
    mock = RecordingProvider(journal=journal)
    other = RecordingProvider(name=ProviderName.OPENAI, model="gpt-test", journal=journal)
    app = await make_app(
        mock, other, start=False, serial_bundle_max_requests_per_call=8, max_concurrent_calls=1
    )
    groups: dict[str, dict[str, Any]] = {
        "default": {"metadata": {"cj_llm_batching_mode": "serial_bundle"}},
        "model": {"model": "mock-judge-2", "metadata": {"cj_llm_batching_mode": "serial_bundle"}},
        "hint": {"metadata": {"cj_llm_batching_mode": "per_request"}},
        "temperature": {"temperature": 0.5, "metadata": {"cj_llm_batching_mode": "serial_bundle"}},
        "provider": {"provider": "openai", "metadata": {"cj_llm_batching_mode": "serial_bundle"}},
    }
    group_of: dict[str, str] = {}
    subs = []
    for i in range(15):  # round robin: default, model, hint, temperature, provider, default, ...
        name = list(groups)[i % len(groups)]
        rid = f"r{i:02d}-{name}"
        group_of[rid] = name
        subs.append(submission(i, request_id=rid, result_channel="c", **groups[name]))
    await enqueue(app, subs)
    await app.start(serve_metrics=False)
    async with client_of(app) as client:
        results = await follow(client, "c", len(subs))

    assert {r.status for r in results.values()} == {"completed"}
    # One call per group, each holding its whole group in queue order, led in queue order.
    assert [[group_of[k] for k in keys] for _, keys in journal] == [[g] * 3 for g in groups]
    assert sorted(k for _, keys in journal for k in keys) == sorted(group_of)
    assert [p for p, _ in journal] == [ProviderName.MOCK] * 4 + [ProviderName.OPENAI]
    assert mock.models == [MOCK_MODEL, "mock-judge-2", MOCK_MODEL, MOCK_MODEL]
    assert other.models == ["gpt-test"]
    assert {results[k].provider for k in group_of if group_of[k] == "provider"} == {"openai"}
    assert metric(app.registry, "llm_provider_serial_bundle_calls_total", provider="openai") == 1
    assert metric(app.registry, "llm_provider_serial_bundle_calls_total", provider="mock") == 4


async def test_interleaved_groups_still_form_full_bundles(make_app: AppFactory) -> None:
    provider = RecordingProvider()
    app = await make_app(
        provider, start=False, serial_bundle_max_requests_per_call=8, max_concurrent_calls=1
    )
    model_of = {f"r{i:02d}": "model-a" if i % 2 == 0 else "model-b" for i in range(32)}
    subs = [
        submission(i, request_id=rid, model=model, result_channel="c")
        for i, (rid, model) in enumerate(model_of.items())
    ]
    await enqueue(app, subs)
    await app.start(serve_metrics=False)
    async with client_of(app) as client:
        results = await follow(client, "c", len(subs))

    evens, odds = sorted(model_of)[0::2], sorted(model_of)[1::2]
    assert provider.calls == [evens[:8], odds[:8], evens[8:], odds[8:]]
    assert provider.models == ["model-a", "model-b", "model-a", "model-b"]
    assert {r.status for r in results.values()} == {"completed"}
    assert metric(app.registry, "llm_provider_serial_bundle_items_per_call_sum") == 32
    assert metric(app.registry, "llm_provider_serial_bundle_calls_total") == 4


async def test_an_older_incompatible_request_leads_a_later_bundle(make_app: AppFactory) -> None:
    """B5 waits only for the bundles its elders lead (ceil(5 / 4) = 2), never for newer work."""
    provider = RecordingProvider()
    provider.gate = asyncio.Event()
    app = await make_app(
        provider, start=False, serial_bundle_max_requests_per_call=4, max_concurrent_calls=1
    )
    older = [submission(i, request_id=f"A{i}", result_channel="c") for i in range(5)]
    b5 = submission(5, request_id="B5", model="mock-judge-2", result_channel="c")
    await enqueue(app, [*older, b5])
    await app.start(serve_metrics=False)
    await asyncio.wait_for(provider.entered.wait(), WAIT_S)  # A0..A3 are in flight
    newer = [submission(i, request_id=f"A{i}", result_channel="c") for i in range(6, 14)]
    await enqueue(app, newer)
    provider.gate.set()
    async with client_of(app) as client:
        results = await follow(client, "c", 14)

    assert provider.calls == [
        ["A0", "A1", "A2", "A3"],
        ["A4", "A6", "A7", "A8"],  # led by A4, older than B5; newer A's join it as companions
        ["B5"],
        ["A9", "A10", "A11", "A12"],
        ["A13"],
    ]
    assert {r.status for r in results.values()} == {"completed"}


async def test_leases_follow_the_rule_under_random_traffic(make_app: AppFactory) -> None:
    """Against the queue itself: each lease is the head plus the oldest of its group, full unless
    the group ran out, and nothing is lost or leased twice."""
    app = await make_app(start=False, serial_bundle_max_requests_per_call=4)
    rng = random.Random(7)
    models = ["m-a", "m-b", "m-c"]
    hints = {"m-a": "", "m-b": "2", "m-c": ""}
    subs = []
    for i in range(60):
        model = rng.choice(models)
        meta = {"preferred_bundle_size": hints[model]} if hints[model] else {}
        subs.append(submission(i, request_id=f"r{i:02d}", model=model, metadata=meta))
    await enqueue(app, subs)
    order = [s.request_id for s in subs]
    model_of = {s.request_id: s.model for s in subs}
    limit_of = {"m-a": 4, "m-b": 2, "m-c": 4}
    remaining = list(order)
    while remaining:
        lease = await app.queue.lease(now=time.time(), max_items=4)
        ids = [q.request_id for q in lease.items]
        head_model = model_of[remaining[0]]
        same = [r for r in remaining if model_of[r] == head_model]
        assert ids == same[: limit_of[head_model]]
        for rid in ids:
            remaining.remove(rid)
    assert (await app.queue.lease(now=time.time(), max_items=4)).items == []


# --- expiry ---------------------------------------------------------------------------------------


async def test_expired_requests_never_reach_the_provider(make_app: AppFactory) -> None:
    provider = RecordingProvider()
    provider.gate = asyncio.Event()
    clock = ShiftedClock()
    app = await make_app(provider, clock=clock, max_concurrent_calls=1)
    active = [submission(i, request_id=f"a{i}") for i in range(4)]
    short = [submission(i, request_id=f"e{i}", ttl_seconds=1.0) for i in range(3)]
    other_group = submission(9, request_id="e-other", ttl_seconds=1.0, model="mock-judge-2")
    mixed = [active[0], short[0], active[1], short[1], short[2], active[2], other_group, active[3]]
    async with client_of(app) as client:
        await client.submit(submission(99, request_id="blocker", result_channel="b"))
        await asyncio.wait_for(provider.entered.wait(), WAIT_S)
        results: dict[str, ComparisonOutcome] = {}
        async with asyncio.timeout(WAIT_S), aclosing(client.submit_many(mixed)) as events:
            acks = [await anext(events) for _ in mixed]
            assert all(isinstance(a, Ack) and a.accepted for a in acks)
            clock.offset = 60.0  # every 1-second TTL has passed; the default TTL has not
            provider.gate.set()
            async for event in events:
                assert isinstance(event, ComparisonOutcome)
                results[event.request_id] = event

    expired_ids = {"e0", "e1", "e2", "e-other"}
    assert provider.calls == [["blocker"], ["a0", "a1", "a2", "a3"]]
    assert {rid for rid, r in results.items() if r.status == "expired"} == expired_ids
    assert {rid for rid, r in results.items() if r.status == "completed"} == {
        "a0",
        "a1",
        "a2",
        "a3",
    }
    assert {results[rid].error_code for rid in expired_ids} == {"expired"}
    assert "TTL passed" in results["e0"].error_message
    reg = app.registry
    assert metric(reg, "llm_provider_queue_expiry_total", expiry_reason="ttl") == 4
    assert metric(reg, "llm_provider_queue_expiry_total", expiry_reason="cleanup") == 0
    assert metric(reg, "llm_provider_queue_expiry_age_seconds_count") == 4
    # Expired requests count nowhere else: 1 + 4 items in two calls, 5 processed requests.
    assert metric(reg, "llm_provider_serial_bundle_calls_total") == 2
    assert metric(reg, "llm_provider_serial_bundle_items_per_call_sum") == 5
    assert metric(reg, "llm_provider_requests_total") == 5
    assert metric(reg, "llm_provider_queue_wait_time_seconds_count") == 5


# --- LPS_SERIAL_BUNDLE_MAX_WAIT_MS ----------------------------------------------------------------


async def test_requests_trickling_in_within_the_wait_share_one_call(make_app: AppFactory) -> None:
    provider = RecordingProvider()
    app = await make_app(provider, serial_bundle_max_wait_ms=300)
    async with client_of(app) as client:
        for i in range(3):
            await client.submit(submission(i, result_channel="c"))
        results = await follow(client, "c", 3)
    assert provider.calls == [["req-0", "req-1", "req-2"]]
    assert {r.bundle_size for r in results.values()} == {3}


async def test_a_full_bundle_does_not_wait_out_the_window(make_app: AppFactory) -> None:
    provider = RecordingProvider()
    app = await make_app(
        provider, serial_bundle_max_wait_ms=60_000, serial_bundle_max_requests_per_call=3
    )
    async with client_of(app) as client:
        for i in range(3):
            await client.submit(submission(i, result_channel="c"))
        results = await follow(client, "c", 3)  # times out after WAIT_S if the bundle waited
    assert provider.calls == [["req-0", "req-1", "req-2"]]
    assert {r.status for r in results.values()} == {"completed"}


@pytest.mark.parametrize(("wait_ms", "waits"), [(0, False), (400, True)])
async def test_a_lone_request_waits_only_when_a_window_is_set(
    make_app: AppFactory, wait_ms: int, waits: bool
) -> None:
    provider = RecordingProvider()
    app = await make_app(provider, serial_bundle_max_wait_ms=wait_ms)
    async with client_of(app) as client:
        started = time.monotonic()
        await client.submit(submission(0, result_channel="c"))
        await follow(client, "c", 1)
        elapsed = time.monotonic() - started
    assert provider.calls == [["req-0"]]
    assert (elapsed >= 0.4) is waits, elapsed


async def test_the_window_never_holds_back_other_groups(make_app: AppFactory) -> None:
    """A partial bundle waits only while the queue is shallow: with B waiting, A goes at once;
    then B, alone, waits for a companion, which fills it."""
    provider = RecordingProvider()
    app = await make_app(
        provider,
        start=False,
        serial_bundle_max_wait_ms=60_000,
        serial_bundle_max_requests_per_call=2,
    )
    await enqueue(
        app,
        [
            submission(0, request_id="A0", result_channel="a"),
            submission(1, request_id="B1", model="mock-judge-2", result_channel="b"),
        ],
    )
    await app.start(serve_metrics=False)
    async with client_of(app) as client:
        assert list(await follow(client, "a", 1)) == ["A0"]  # times out if A waited
        assert provider.calls == [["A0"]]
        await client.submit(
            submission(2, request_id="B2", model="mock-judge-2", result_channel="b")
        )
        results = await follow(client, "b", 2)
    assert provider.calls == [["A0"], ["B1", "B2"]]
    assert {r.status for r in results.values()} == {"completed"}


async def test_a_lease_of_zero_items_peeks_at_the_head(make_app: AppFactory) -> None:
    """The processor relies on this to tell a shallow queue from one with other work waiting."""
    app = await make_app(start=False)
    assert (await app.queue.lease(now=time.time(), max_items=0)).group == ""
    await enqueue(app, [submission(0, model="m-1"), submission(1, model="m-2")])
    peek = await app.queue.lease(now=time.time(), max_items=0)
    assert (peek.items, peek.expired) == ([], [])
    first = await app.queue.lease(now=time.time(), max_items=8)
    assert first.group == peek.group
    assert [q.request_id for q in first.items] == ["req-0"]
    assert (await app.queue.stats(now=time.time())).queued == 1


# --- per-item failures and retries ----------------------------------------------------------------


async def test_items_fail_and_retry_one_by_one(make_app: AppFactory) -> None:
    rate_limited = ItemFailure(ErrorCode.RATE_LIMITED, "429 slow down")
    provider = RecordingProvider(
        fail={
            "r1": [rate_limited],  # retryable once: retried, then judged
            "r2": [ItemFailure(ErrorCode.PROVIDER_ERROR, "500 model crashed")],  # not retryable
            "r3": [rate_limited] * 10,  # retryable, beyond LPS_QUEUE_MAX_RETRIES
        }
    )
    app = await make_app(provider, queue_max_retries=2)
    ids = [f"r{i}" for i in range(6)]
    async with client_of(app) as client:
        results = await submit_and_collect(client, subs_of(ids))

    assert provider.calls == [ids, ["r1", "r3"], ["r3"]]
    assert {rid for rid, r in results.items() if r.status == "completed"} == {
        "r0",
        "r1",
        "r4",
        "r5",
    }
    assert (results["r2"].status, results["r2"].error_code) == ("failed", "provider_error")
    assert results["r2"].error_message == "500 model crashed (after 1 attempt)"
    assert (results["r3"].status, results["r3"].error_code) == ("failed", "rate_limited")
    assert results["r3"].error_message == "429 slow down (after 3 attempts)"
    assert {r.bundle_id for r in results.values()} == {results["r0"].bundle_id}
    assert results["r3"].bundle_index == 3
    reg = app.registry
    assert metric(reg, "llm_provider_retries_total", error_code="rate_limited") == 3
    assert metric(reg, "llm_provider_requests_total", status="completed") == 4
    assert metric(reg, "llm_provider_requests_total", status="failed") == 2
    # Every answered provider call is a serial-bundle call, retries included.
    assert metric(reg, "llm_provider_serial_bundle_calls_total") == 3
    assert metric(reg, "llm_provider_serial_bundle_items_per_call_sum") == 9


async def test_a_failed_call_is_retried_for_all_its_items(make_app: AppFactory) -> None:
    unavailable = ProviderCallError(ErrorCode.PROVIDER_UNAVAILABLE, "503 try later")
    provider = RecordingProvider(fail_calls=[unavailable])
    app = await make_app(provider)
    ids = ["r0", "r1", "r2"]
    async with client_of(app) as client:
        results = await submit_and_collect(client, subs_of(ids))
    assert provider.calls == [ids, ids]
    assert {r.status for r in results.values()} == {"completed"}
    # The failed call answered nothing: only the successful one is a serial-bundle call.
    assert metric(app.registry, "llm_provider_serial_bundle_calls_total") == 1
    assert (
        metric(app.registry, "llm_provider_retries_total", error_code="provider_unavailable") == 3
    )


# --- LPS_MAX_CONCURRENT_CALLS ---------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3])
async def test_calls_in_flight_never_exceed_the_limit(make_app: AppFactory, limit: int) -> None:
    provider = RecordingProvider(latency_ms=40)
    app = await make_app(
        provider, start=False, serial_bundle_max_requests_per_call=2, max_concurrent_calls=limit
    )
    ids = [f"r{i:02d}" for i in range(12)]
    await enqueue(app, subs_of(ids, "c"))
    await app.start(serve_metrics=False)
    async with client_of(app) as client:
        results = await follow(client, "c", len(ids))
    assert {r.status for r in results.values()} == {"completed"}
    assert len(provider.calls) == 6
    assert provider.max_in_flight == limit


async def test_the_limit_applies_per_provider(make_app: AppFactory) -> None:
    mock = RecordingProvider(latency_ms=60)
    other = RecordingProvider(name=ProviderName.OPENAI, latency_ms=60)
    app = await make_app(
        mock, other, start=False, serial_bundle_max_requests_per_call=1, max_concurrent_calls=2
    )
    subs = [
        submission(i, request_id=f"p{i:02d}", provider="openai" if i % 2 else "mock")
        for i in range(16)
    ]
    await enqueue(app, [replace(s, result_channel="pp") for s in subs])
    await app.start(serve_metrics=False)
    async with client_of(app) as client:
        results = await follow(client, "pp", len(subs))
    assert {r.status for r in results.values()} == {"completed"}
    # Each provider reaches its own limit at the same time: the limit is not shared.
    assert (mock.max_in_flight, other.max_in_flight) == (2, 2)


# --- per-request mode is unchanged ----------------------------------------------------------------


async def test_per_request_mode_is_unaffected(make_app: AppFactory) -> None:
    per_request = RecordingProvider()
    app = await make_app(per_request, queue_processing_mode=ProcessingMode.PER_REQUEST)
    subs = [submission(i) for i in range(6)]
    async with client_of(app) as client:
        plain = await submit_and_collect(client, subs)
    bundled_provider = RecordingProvider()
    bundled_app = await make_app(bundled_provider, redis_prefix="lps-serial")
    async with client_of(bundled_app) as client:
        bundled = await submit_and_collect(client, subs)

    ids = [s.request_id for s in subs]
    assert per_request.calls == [[rid] for rid in ids]
    assert bundled_provider.calls == [ids]
    for r in plain.values():
        assert (r.status, r.bundle_id, r.bundle_index, r.bundle_size) == ("completed", "", 0, 1)
        assert r.processing_mode == "per_request"
    assert not has_samples(app, "llm_provider_serial_bundle_")
    assert metric(app.registry, "llm_provider_requests_total", status="completed") == 6
    verdict = {rid: (r.winner, r.justification, r.confidence) for rid, r in plain.items()}
    assert verdict == {rid: (r.winner, r.justification, r.confidence) for rid, r in bundled.items()}
