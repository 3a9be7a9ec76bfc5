"""Serial bundles end to end on both queue backends (origin checklist PR 4, DESIGN "Processing
semantics"): compatible requests share one provider call, bundles form fairly, preferred sizes
lower the limit, expired requests never reach a provider, and the fill window never holds work back.
"""

from __future__ import annotations

import asyncio
import random
import time
from contextlib import aclosing
from typing import Any

import pytest

from cj_client import Ack, ComparisonOutcome
from lps_server.core.bundling import bundle_limit
from lps_server.core.domain import ProviderName
from tests.bundling_support import (
    MOCK_MODEL,
    SERIAL,
    WAIT_S,
    AppFactory,
    RecordingProvider,
    ShiftedClock,
    client_of,
    enqueue,
    follow,
    submit_and_collect,
    subs_of,
)
from tests.helpers import metric, submission

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
    # One call per group, each holding its whole group in queue order; each provider's groups
    # are led in queue order. Across providers, openai's group does not wait behind mock's: it
    # goes while mock's first call holds mock's only slot.
    by_provider = {
        provider: [[group_of[k] for k in keys] for p, keys in journal if p == provider]
        for provider in (ProviderName.MOCK, ProviderName.OPENAI)
    }
    assert by_provider[ProviderName.MOCK] == [[g] * 3 for g in list(groups)[:4]]
    assert by_provider[ProviderName.OPENAI] == [["provider"] * 3]
    assert [p for p, _ in journal][:2] == [ProviderName.MOCK, ProviderName.OPENAI]
    assert sorted(k for _, keys in journal for k in keys) == sorted(group_of)
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
