"""Batch jobs shared by replicas and outliving them: polls shared on one Redis, a stopped replica's
job finished by the next, and the in-process queue's drain (jobs finished within the grace period,
else cancelled and their requests ended FAILED)."""

from __future__ import annotations

import asyncio
import itertools
import re
from contextlib import aclosing
from typing import Any

from prometheus_client import CollectorRegistry

from cj_client import Ack, BatchJobView, ComparisonOutcome, LpsClient, NotFoundError
from lps_server.app import LpsApp
from lps_server.core.config import Settings
from lps_server.providers import ProviderRegistry
from lps_server.providers.mock import MockProvider
from tests.batch_rig import BATCH, QUICK, batch_app, client_for, http_provider, judged_subs
from tests.fake_batch_servers import BatchScript, FakeOpenAIBatches
from tests.fault_rig import results_of
from tests.helpers import metric, results_on, submission

KEY = "sk-batch-key"
WAIT_S = 20.0
_POLL = re.compile(r"^/v1/batches/[^/]+$")


async def test_replicas_share_the_polls_of_a_job(redis_url: str) -> None:
    """Two replicas on one Redis: each poll of a job waits for the shared schedule (at least
    LPS_BATCH_API_POLL_SECONDS after the one before, whichever replica made it)."""
    poll_s = 0.05
    shared: dict[str, Any] = {
        "queue_backend": "redis",
        "redis_url": redis_url,
        "batch_api_poll_seconds": poll_s,
    }
    async with FakeOpenAIBatches(api_key=KEY) as fake:
        fake.script(BatchScript(steps=0.25))
        async with (
            batch_app(also=[http_provider(fake)], **shared) as first,
            batch_app(also=[http_provider(fake)], **shared),
            client_for(first) as client,
        ):
            _, results = await results_of(client, judged_subs("sh", 4, "openai"), timeout=WAIT_S)
        polls = [r.received_at for r in fake.requests if r.method == "GET" and _POLL.match(r.path)]
        assert len(fake.created) == 1
    assert all(r.status == "completed" for r in results.values())
    assert len(polls) >= 3
    gaps = [later - earlier for earlier, later in itertools.pairwise(polls)]
    assert min(gaps) >= 0.9 * poll_s, gaps


def _app(registry: CollectorRegistry, **settings: Any) -> LpsApp:
    values: dict[str, Any] = {
        "grpc_host": "127.0.0.1",
        "grpc_port": 0,
        "queue_processing_mode": BATCH,
        **QUICK,
        **settings,
    }
    return LpsApp(
        Settings.from_env({}, **values),
        registry=registry,
        providers=ProviderRegistry([MockProvider(jitter=0.0)]),
    )


async def test_a_stopped_replica_leaves_its_job_to_the_next(redis_url: str) -> None:
    shared = {"queue_backend": "redis", "redis_url": redis_url, "mock_batch_latency_ms": 800.0}
    subs = [submission(i, request_id=f"left-{i}", result_channel="left") for i in range(6)]
    gone, next_one = CollectorRegistry(), CollectorRegistry()
    first = _app(gone, **shared)
    await first.start(serve_metrics=False)
    async with client_for(first) as client:
        for sub in subs:
            await client.submit(sub)
        try:
            job = await submitted(client, "left-0")
        finally:
            await first.stop(grace=5)
    assert metric(gone, "llm_provider_batch_jobs_ended_total") == 0, "it left before the end"
    second = _app(next_one, **shared)
    await second.start(serve_metrics=False)
    try:
        async with client_for(second) as client:
            results = await results_on(client, "left", len(subs))
    finally:
        await second.stop(grace=5)
    assert sorted(r.request_id for r in results) == sorted(s.request_id for s in subs)
    assert all(r.status == "completed" for r in results)
    assert metric(next_one, "llm_provider_batch_jobs_ended_total", outcome="completed") == 1
    assert {r.bundle_id.rpartition("-")[0] for r in results} == {job.job_id}


async def _stream_until_stopped(
    app: LpsApp, n: int, *, grace: float
) -> dict[str, ComparisonOutcome]:
    """Submit `n` requests on one stream, stop the app once their job is submitted, and return
    what the stream delivered before it ended."""
    subs = [submission(i, request_id=f"dr-{i}") for i in range(n)]
    results: dict[str, ComparisonOutcome] = {}
    async with client_for(app) as client:

        async def read() -> None:
            async with aclosing(client.submit_many(subs)) as events:
                async for event in events:
                    if not isinstance(event, Ack):
                        results[event.request_id] = event

        reading = asyncio.create_task(read())
        try:
            await submitted(client, "dr-0")
        finally:
            await app.stop(grace=grace)
        await asyncio.wait_for(reading, WAIT_S)
    return results


async def submitted(client: LpsClient, request_id: str) -> BatchJobView:
    """The batch job of `request_id` once it is submitted (polled within a deadline)."""
    for _ in range(500):
        try:
            job = (await client.get(request_id)).batch_job
        except NotFoundError:  # not queued yet
            job = None
        if job is not None and job.state == "submitted":
            return job
        await asyncio.sleep(0.01)
    raise AssertionError(f"the batch job of {request_id} was never submitted")


async def test_a_local_drain_finishes_its_open_jobs() -> None:
    app = _app(CollectorRegistry(), mock_batch_latency_ms=300.0)
    await app.start(serve_metrics=False)
    results = await _stream_until_stopped(app, 5, grace=5)
    assert len(results) == 5
    assert all(r.status == "completed" for r in results.values())


async def test_a_local_drain_past_its_grace_ends_the_jobs_requests_failed() -> None:
    app = _app(CollectorRegistry(), mock_batch_latency_ms=60_000.0)
    await app.start(serve_metrics=False)
    results = await _stream_until_stopped(app, 3, grace=0.3)
    assert len(results) == 3
    assert all(r.status == "failed" for r in results.values())
    assert all("shut down" in r.error_message for r in results.values())
    assert all("batch job" in r.error_message for r in results.values())
