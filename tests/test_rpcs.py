"""Every RPC through a real in-process server on port 0 with the local queue and mock provider."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cj_client import Ack, ComparisonOutcome, LpsClient, NotFoundError
from lps_server.app import LpsApp
from tests.helpers import metric, submission


async def collect(client: LpsClient, subs: list) -> tuple[list[Ack], list[ComparisonOutcome]]:
    acks: list[Ack] = []
    results: list[ComparisonOutcome] = []
    async for event in client.submit_many(subs):
        (acks if isinstance(event, Ack) else results).append(event)  # type: ignore[arg-type]
    return acks, results


async def test_unary_submit_then_result_on_channel(client: LpsClient) -> None:
    request_id, status = await client.submit(submission(1, result_channel="c1"))
    assert (request_id, status) == ("req-1", "queued")
    async for cursor, outcome in client.stream_results("c1"):
        assert cursor
        assert outcome.request_id == "req-1"
        assert outcome.status == "completed"
        assert outcome.winner == "essay_b"
        assert outcome.metadata["resolved_provider"] == "mock"
        assert outcome.metadata["queue_processing_mode"] == "per_request"
        break
    fetched = await client.get("req-1")
    assert fetched.status == "completed"
    assert fetched.winner == "essay_b"


async def test_submit_is_idempotent(client: LpsClient, lps: LpsApp) -> None:
    await client.submit(submission(2, result_channel="c2"))
    async for _ in client.stream_results("c2"):
        break
    request_id, status = await client.submit(submission(2, result_channel="c2"))
    assert (request_id, status) == ("req-2", "completed")
    stats = await client.queue_stats()
    assert (stats.completed, stats.queued) == (1, 0)
    assert metric(lps.registry, "llm_provider_requests_total") == 1


async def test_server_assigns_request_id(client: LpsClient) -> None:
    request_id, _ = await client.submit(submission(3, request_id=""))
    assert len(request_id) == 36
    assert request_id.count("-") == 4


async def test_streaming_submit_acks_then_results(client: LpsClient) -> None:
    subs = [submission(i) for i in range(20)]
    acks, results = await collect(client, subs)
    assert [a.request_id for a in acks] == [s.request_id for s in subs]
    assert all(a.accepted and a.status == "queued" for a in acks)
    assert sorted(r.request_id for r in results) == sorted(s.request_id for s in subs)
    assert all(r.status == "completed" for r in results)


async def test_streaming_submit_rejects_only_invalid_items(client: LpsClient) -> None:
    subs = [submission(1), submission(2, priority=42), submission(3)]
    acks, results = await collect(client, subs)
    assert [a.accepted for a in acks] == [True, False, True]
    assert acks[1].error_code == "INVALID_ARGUMENT"
    assert [v.field for v in acks[1].violations] == ["requests[1].priority"]
    assert sorted(r.request_id for r in results) == ["req-1", "req-3"]


async def test_streaming_duplicate_of_finished_request_gets_stored_result(
    client: LpsClient,
) -> None:
    await collect(client, [submission(7)])
    acks, results = await collect(client, [submission(7), submission(7)])
    assert [a.status for a in acks] == ["completed", "completed"]
    assert [r.request_id for r in results] == ["req-7"]


async def test_stream_results_resumes_from_cursor(client: LpsClient) -> None:
    await collect(client, [submission(i, result_channel="resume") for i in range(10)])
    seen: list[tuple[str, str]] = []
    async for cursor, outcome in client.stream_results("resume"):
        seen.append((cursor, outcome.request_id))
        if len(seen) == 4:
            break
    rest: list[str] = []
    async for _, outcome in client.stream_results("resume", cursor=seen[-1][0]):
        rest.append(outcome.request_id)
        if len(rest) == 6:
            break
    everything = [rid for _, rid in seen] + rest
    assert sorted(everything) == sorted(f"req-{i}" for i in range(10))


async def test_get_unknown_request_is_not_found(client: LpsClient) -> None:
    with pytest.raises(NotFoundError, match="no request with id 'nope'"):
        await client.get("nope")


async def test_queue_stats_reports_mode_and_backend(client: LpsClient) -> None:
    stats = await client.queue_stats()
    assert (stats.backend, stats.processing_mode, stats.max_size) == (
        "local",
        "per_request",
        100_000,
    )


async def test_health_and_reflection(lps: LpsApp) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{lps.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(
            health_pb2.HealthCheckRequest(service="lps.v1.LlmProviderService")
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask():  # type: ignore[no-untyped-def]
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        async for answer in stub.ServerReflectionInfo(ask()):
            names = {s.name for s in answer.list_services_response.service}
            assert "lps.v1.LlmProviderService" in names
            break


async def test_graceful_shutdown_finishes_accepted_work(
    start_lps: Callable[..., Awaitable[LpsApp]],
) -> None:
    app = await start_lps(mock_latency_ms=20, mock_latency_jitter=0.0, max_concurrent_calls=2)
    async with LpsClient(target=f"127.0.0.1:{app.grpc_port}") as client:
        subs = [submission(i, result_channel="drain") for i in range(30)]
        acks = []
        results = []
        stopper: asyncio.Task[None] | None = None
        async for event in client.submit_many(subs):
            if isinstance(event, Ack):
                acks.append(event)
                if len(acks) == len(subs):
                    stopper = asyncio.create_task(app.stop(grace=30))
            else:
                results.append(event)
        assert stopper is not None
        await stopper
    assert all(a.accepted for a in acks)
    assert sorted(r.request_id for r in results) == sorted(s.request_id for s in subs)
    assert {r.status for r in results} == {"completed"}


async def test_new_work_refused_while_draining(
    start_lps: Callable[..., Awaitable[LpsApp]],
) -> None:
    app = await start_lps(mock_latency_ms=200, mock_latency_jitter=0.0)
    async with LpsClient(target=f"127.0.0.1:{app.grpc_port}") as client:
        await client.submit(submission(1))
        stopper = asyncio.create_task(app.stop(grace=10))
        await asyncio.sleep(0.05)  # let stop() close intake; the request in flight holds the drain
        from cj_client import UnavailableError

        with pytest.raises(UnavailableError, match="shutting down"):
            await client.submit(submission(2))
        await stopper
