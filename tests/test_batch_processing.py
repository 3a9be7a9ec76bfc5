"""The batch path end to end in one process: requests gathered into jobs, lines of numbered
comparisons, results judged as the mock judges, per-item outcomes and retries in later batches,
the TTL rule, status queries, batch prices and metrics; on both queue backends where the backend
matters."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from cj_client import ComparisonOutcome
from lps_server.core.domain import ProcessingMode
from lps_server.providers.mock import judge
from tests.batch_rig import (
    BATCH,
    batch_app,
    client_for,
    http_provider,
    judged_subs,
)
from tests.fake_batch_servers import (
    BatchScript,
    FakeAnthropicBatches,
    FakeOpenAIBatches,
    expected_winner,
)
from tests.fault_rig import results_of
from tests.helpers import metric, submission

WAIT_S = 20.0


def job_of(outcome: ComparisonOutcome) -> str:
    """The batch job a result's line belonged to (its bundle id is `<job id>-<line>`)."""
    job, _, line = outcome.bundle_id.rpartition("-")
    assert job, outcome
    assert line.isdigit(), outcome
    return job


async def test_batch_api_mode_sends_everything_through_jobs_judged_as_the_mock_judges(
    backend: dict[str, Any],
) -> None:
    registry = CollectorRegistry()
    subs = [submission(i, request_id=f"b-{i}") for i in range(60)]
    async with (
        batch_app(registry=registry, batch_api_max_requests_per_batch=25, **backend) as app,
        client_for(app) as client,
    ):
        counts, results = await results_of(client, subs, timeout=WAIT_S)
        stats = await client.queue_stats()
    assert set(counts.values()) == {1}
    assert len(results) == 60
    for sub in subs:
        result = results[sub.request_id]
        truth = judge(sub.request_id, sub.essay_a.text, sub.essay_b.text, temperature=0.1)
        assert result.status == "completed", result
        assert result.winner == truth.winner.value
        assert result.processing_mode == "batch_api"
        assert result.metadata["queue_processing_mode"] == "batch_api"
        assert 1 <= result.bundle_size <= 4
        assert 0 <= result.bundle_index < result.bundle_size
    # At most 25 requests a job (so 3 jobs or more, by how the gathering windows fell), and
    # 4 comparisons a line.
    sizes = Counter(job_of(r) for r in results.values())
    assert len(sizes) >= 3
    assert max(sizes.values()) <= 25
    lines = {r.bundle_id for r in results.values()}
    assert len(lines) == sum(math.ceil(n / 4) for n in sizes.values())
    assert metric(registry, "llm_provider_batch_items_per_job_sum", provider="mock") == 60
    assert metric(registry, "llm_provider_batch_lines_per_job_sum", provider="mock") == len(lines)
    jobs = len(sizes)
    assert metric(registry, "llm_provider_batch_result_seconds_count", provider="mock") == jobs
    ended = metric(
        registry, "llm_provider_batch_jobs_ended_total", provider="mock", outcome="completed"
    )
    assert ended == jobs
    assert (
        metric(registry, "llm_provider_requests_total", provider="mock", status="completed") == 60
    )
    assert (stats.queued, stats.processing, stats.completed) == (0, 0, 60)


async def test_one_server_serves_interactive_and_bulk_work() -> None:
    """per_request mode with LPS_BATCH_API_PROVIDERS=mock: requests tagged provider_batch_api go
    through batch jobs, the others one per call, on the same server."""
    bulk = [
        submission(
            i, request_id=f"bulk-{i}", metadata={"cj_llm_batching_mode": "provider_batch_api"}
        )
        for i in range(12)
    ]
    interactive = [submission(i, request_id=f"now-{i}") for i in range(12)]
    async with (
        batch_app(
            queue_processing_mode=ProcessingMode.PER_REQUEST, batch_api_providers=("mock",)
        ) as app,
        client_for(app) as client,
    ):
        _, results = await results_of(client, [*bulk, *interactive], timeout=WAIT_S)
    for sub in bulk:
        assert results[sub.request_id].processing_mode == "batch_api"
        assert job_of(results[sub.request_id])
    for sub in interactive:
        assert results[sub.request_id].processing_mode == "per_request"
        assert (results[sub.request_id].bundle_id, results[sub.request_id].bundle_size) == ("", 1)
    for sub in [*bulk, *interactive]:
        truth = judge(sub.request_id, sub.essay_a.text, sub.essay_b.text, temperature=0.1)
        assert results[sub.request_id].winner == truth.winner.value


async def test_a_request_that_cannot_wait_for_a_batch_is_served_per_request() -> None:
    """A TTL shorter than the batch window (24 h) cannot be promised a batch result in time."""
    hurried = [submission(i, request_id=f"soon-{i}", ttl_seconds=600) for i in range(3)]
    patient = [submission(i, request_id=f"later-{i}", ttl_seconds=2 * 86_400) for i in range(3)]
    registry = CollectorRegistry()
    async with batch_app(registry=registry) as app, client_for(app) as client:
        _, results = await results_of(client, [*hurried, *patient], timeout=WAIT_S)
    assert {results[s.request_id].processing_mode for s in hurried} == {"per_request"}
    assert {results[s.request_id].processing_mode for s in patient} == {"batch_api"}
    waited = metric(
        registry,
        "llm_provider_queue_wait_time_seconds_count",
        queue_processing_mode="per_request",
        result="completed",
    )
    assert waited == 3


async def test_partial_failures_are_retried_in_a_later_batch_then_fail_with_the_provider_error(
    backend: dict[str, Any],
) -> None:
    """Six requests, three lines of two: a line refused (400) fails at once; a line the provider
    could not run (500) is retried in a second batch, fails again and, its retries spent, ends
    FAILED; the third line is judged, at the batch price."""
    registry = CollectorRegistry()
    async with FakeOpenAIBatches(api_key="sk-batch-key") as fake:
        fake.script(
            BatchScript(errors={0: (400, "this model cannot judge"), 1: (500, "server hiccup")}),
            BatchScript(errors={0: (500, "server hiccup again")}),
        )
        subs = judged_subs("pf", 6, "openai")
        async with (
            batch_app(
                also=[http_provider(fake)],
                registry=registry,
                serial_bundle_max_requests_per_call=2,
                queue_max_retries=1,
                **backend,
            ) as app,
            client_for(app) as client,
        ):
            counts, results = await results_of(client, subs, timeout=WAIT_S)
        assert fake.problems == []
        assert len(fake.created) == 2, "the retried line went into a second batch"
        first, second = (fake.line_requests(b) for b in fake.created)
    assert sorted(len(line) for line in first) == [2, 2, 2]
    assert second == [first[1]]
    assert set(counts.values()) == {1}
    refused = [results[rid] for rid in first[0]]
    assert all(r.status == "failed" and r.error_code == "provider_error" for r in refused)
    assert all("this model cannot judge" in r.error_message for r in refused)
    assert all("(after 1 attempt)" in r.error_message for r in refused)
    retried = [results[rid] for rid in first[1]]
    assert all(r.status == "failed" and r.error_code == "provider_unavailable" for r in retried)
    assert all("server hiccup again" in r.error_message for r in retried)
    assert all("(after 2 attempts)" in r.error_message for r in retried)
    for rid in first[2]:
        result = results[rid]
        assert result.status == "completed"
        assert result.winner == ("essay_a" if expected_winner(rid) == "A" else "essay_b")
        # 450 prompt tokens each (150 of them cached) and 60 completion tokens; gpt-4o-mini at
        # 0.15 in, 0.075 cached, 0.60 out per Mtok, halved for the batch.
        assert result.cost_usd == pytest.approx(0.5 * (300 * 0.15 + 150 * 0.075 + 60 * 0.60) / 1e6)
    cost = metric(registry, "llm_provider_cost_dollars_total", provider="openai")
    assert cost == pytest.approx(sum(results[rid].cost_usd for rid in first[2]))
    # Each token counted once, by kind: 150 of each line's 450 prompt tokens were cached reads.
    tokens = {
        kind: metric(registry, "llm_provider_tokens_used_total", provider="openai", type=kind)
        for kind in ("input", "cache_read", "output")
    }
    assert tokens == {"input": 2 * 300, "cache_read": 2 * 150, "output": 2 * 60}
    assert metric(registry, "llm_provider_retries_total", provider="openai") == 2


async def test_an_expired_batch_is_retried_in_a_later_batch() -> None:
    async with FakeAnthropicBatches(api_key="sk-batch-key") as fake:
        fake.script(BatchScript(outcome="expired", finished=1))
        subs = judged_subs("ex", 6, "anthropic")
        registry = CollectorRegistry()
        async with (
            batch_app(
                also=[http_provider(fake)], registry=registry, serial_bundle_max_requests_per_call=2
            ) as app,
            client_for(app) as client,
        ):
            _, results = await results_of(client, subs, timeout=WAIT_S)
        assert fake.problems == []
        assert len(fake.created) == 2
    assert all(r.status == "completed" for r in results.values())
    first, second = fake.created
    by_job = {job_of(r) for r in results.values()}
    assert len(by_job) == 2
    for sub in subs:
        expected = "essay_a" if expected_winner(sub.request_id) == "A" else "essay_b"
        assert results[sub.request_id].winner == expected
    expired = metric(
        registry, "llm_provider_batch_jobs_ended_total", provider="anthropic", outcome="expired"
    )
    assert expired == 1
    assert first != second


@pytest.mark.parametrize("flavour", ["openai", "anthropic"])
async def test_a_cancelled_batch_keeps_its_finished_lines(flavour: str) -> None:
    fake = (
        FakeOpenAIBatches(api_key="sk-batch-key")
        if flavour == "openai"
        else FakeAnthropicBatches(api_key="sk-batch-key")
    )
    async with fake:
        fake.script(BatchScript(finished=1, steps=0.3))
        subs = judged_subs("cx", 4, flavour)
        async with (
            batch_app(also=[http_provider(fake)], serial_bundle_max_requests_per_call=2) as app,
            client_for(app) as client,
        ):
            collecting = asyncio.create_task(results_of(client, subs, timeout=WAIT_S))
            await fake.wait_until(lambda: bool(fake.created), timeout=WAIT_S, what="a batch")
            fake.cancel(fake.created[0])  # an operator cancels it in the provider's console
            _, results = await collecting
        assert len(fake.created) == 1
        ran, cancelled_line = fake.line_requests(fake.created[0])
    finished = [results[rid] for rid in ran]
    cancelled = [results[rid] for rid in cancelled_line]
    assert all(r.status == "completed" for r in finished)
    assert all(r.status == "failed" and "cancelled" in r.error_message for r in cancelled)


async def test_a_status_query_says_where_the_batch_job_stands() -> None:
    async with batch_app(mock_batch_latency_ms=600.0) as app, client_for(app) as client:
        for i in range(5):
            await client.submit(submission(i, request_id=f"st-{i}"))
        seen = None
        for _ in range(500):  # bounded: the job is submitted after its 200 ms gathering window
            seen = (await client.get("st-0")).batch_job
            if seen is not None and seen.state == "submitted":
                break
            await asyncio.sleep(0.01)
        assert seen is not None
        assert seen.state == "submitted"
        assert seen.provider_batch_id.startswith("mockbatch_")
        assert (seen.requests, seen.lines) == (5, 2)
        assert seen.submitted_at >= seen.recorded_at > 0
        assert (await client.queue_stats()).processing == 5
        for _ in range(400):
            done = await client.get("st-4")
            if done.is_final:
                break
            await asyncio.sleep(0.01)
    assert done.status == "completed"
    assert done.batch_job is None
    assert job_of(done) == seen.job_id


@pytest.mark.parametrize("flavour", ["openai", "anthropic"])
async def test_a_creation_whose_answer_was_lost_is_found_and_not_made_twice(flavour: str) -> None:
    fake = (
        FakeOpenAIBatches(api_key="sk-batch-key")
        if flavour == "openai"
        else FakeAnthropicBatches(api_key="sk-batch-key")
    )
    async with fake:
        fake.hang_next("POST", "/v1/batches" if flavour == "openai" else "/v1/messages/batches")
        subs = judged_subs("lost", 5, flavour)
        async with (
            batch_app(also=[http_provider(fake, timeout_s=0.3)]) as app,
            client_for(app) as client,
        ):
            counts, results = await results_of(client, subs, timeout=WAIT_S)
        assert fake.created == [fake.created[0]], "one batch, found again, not a second"
        assert fake.problems == []
    assert set(counts.values()) == {1}
    assert all(r.status == "completed" for r in results.values())


async def test_the_docs_list_every_batch_metric_and_each_exists_at_zero() -> None:
    from tests.test_metrics_startup import documented, exported

    registry = CollectorRegistry()
    # As in test_metrics_startup: a bundling replica with an HTTP provider (never called), here
    # also with the batch path for the mock.
    async with (
        FakeOpenAIBatches(api_key="sk-batch-key") as fake,
        batch_app(
            registry=registry,
            also=[http_provider(fake)],
            queue_processing_mode=ProcessingMode.SERIAL_BUNDLE,
            batch_api_providers=("mock",),
        ),
    ):
        found = exported(registry)
    listed = {**documented("LPS metrics"), **documented("Batch-job metrics")}
    assert found == listed
    names = {"llm_provider_batch_jobs", "llm_provider_batch_jobs_ended_total"}
    samples = [s for f in registry.collect() for s in f.samples if s.name in names]
    states = {s.labels["state"] for s in samples if s.name == "llm_provider_batch_jobs"}
    assert states == {"recorded", "creating", "submitted", "collecting"}
    assert samples
    assert all(s.value == 0 for s in samples)
    assert not math.isnan(metric(registry, "llm_provider_batch_polls_total"))


def test_batch_settings_are_checked() -> None:
    from lps_server.core.config import Settings
    from lps_server.core.errors import ConfigurationError

    assert (
        Settings.from_env({"LPS_QUEUE_PROCESSING_MODE": "batch_api"}).queue_processing_mode == BATCH
    )
    assert Settings.from_env({"LPS_BATCH_API_PROVIDERS": "openai, mock"}).batch_api_providers == (
        "openai",
        "mock",
    )
    with pytest.raises(ConfigurationError, match="LPS_BATCH_API_PROVIDERS"):
        Settings.from_env({"LPS_BATCH_API_PROVIDERS": "opnai"})
    with pytest.raises(ConfigurationError, match="LPS_BATCH_API_MAX_REQUESTS_PER_BATCH"):
        Settings.from_env({"LPS_BATCH_API_MAX_REQUESTS_PER_BATCH": "50001"})
    with pytest.raises(ConfigurationError, match="LPS_BATCH_API_POLL_SECONDS"):
        Settings.from_env({"LPS_BATCH_API_POLL_SECONDS": "0"})
