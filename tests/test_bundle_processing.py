"""Serial bundles under failure and load, on both queue backends: items fail and retry one by
one, calls in flight stay within LPS_MAX_CONCURRENT_CALLS per provider, and per-request mode is
unchanged.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from lps_server.core.domain import ErrorCode, ProcessingMode, ProviderName
from lps_server.providers.base import (
    ItemFailure,
    ProviderCallError,
)
from tests.bundling_support import (
    AppFactory,
    RecordingProvider,
    client_of,
    enqueue,
    follow,
    has_samples,
    submit_and_collect,
    subs_of,
)
from tests.helpers import metric, submission

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
    # A retry goes back to the queue and rides a later call: each result carries the facts of
    # the call that answered it.
    first = results["r0"].bundle_id
    assert {results[r].bundle_id for r in ("r0", "r2", "r4", "r5")} == {first}
    assert len({first, results["r1"].bundle_id, results["r3"].bundle_id}) == 3
    assert (results["r1"].bundle_index, results["r1"].bundle_size) == (0, 2)
    assert (results["r3"].bundle_index, results["r3"].bundle_size) == (0, 1)
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
