"""streams: how many open result streams one `lps serve` holds, each getting its result.

One replica (the holder) is given `streams_n` StreamResults calls, idle at first, and
`streams_n` SubmitComparisons calls of one request each, which the client keeps open (it never
half-closes until the end). A second replica on the same Redis shares the processing, so results
reach the holder's calls both in memory and through its channel reader. Once every call has its
result, with all of them still open, the holder's memory and Redis connections are read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import redis

from benchkit.common import BenchError, new_tag, workload
from benchkit.processes import Run, lps_serve
from cj_client.transport import submission_to_pb
from generated.lps.v1 import llm_provider_service_pb2 as svc
from generated.lps.v1 import llm_provider_service_pb2_grpc as svc_grpc

STREAMS_PER_CONNECTION = 100
OPEN_BATCH = 250


def redis_connections(url: str, pid: int) -> int:
    """Redis connections held by the LPS process `pid` (its connections carry its pid)."""
    with redis.Redis.from_url(url, decode_responses=True) as client:
        names = [c.get("name", "") for c in client.client_list()]
    return sum(1 for name in names if name.startswith("lps:") and name.endswith(f":{pid}"))


async def measure_streams(run: Run) -> dict[str, Any]:
    """Open streams of both kinds held by one replica with every result delivered, and its RSS."""
    n, tag = run.sizes.streams_n, new_tag("streams")
    settings: dict[str, object] = {
        "queue_backend": "redis",
        "redis_url": run.redis.target,
        "redis_prefix": tag,
        "max_streams_per_client": 4 * n,
        "max_concurrent_calls": 16,
    }
    with (
        lps_serve("lps-streams", run, **settings) as holder,
        lps_serve("lps-streams-helper", run, **settings),
    ):
        idle_kb = holder.child.status_kb("VmRSS")
        subs = [
            dataclasses.replace(sub, result_channel=f"{tag}-ch-{i}")
            for i, sub in enumerate(workload(n, tag=tag))
        ]
        channels = [
            grpc.aio.insecure_channel(holder.target)
            for _ in range(max(1, 2 * n // STREAMS_PER_CONNECTION))
        ]
        try:
            stubs = [svc_grpc.LlmProviderServiceStub(c) for c in channels]
            started = time.perf_counter()
            follows: list[Any] = [None] * n
            release = asyncio.Event()

            def one_message(i: int) -> AsyncIterator[svc.SubmitComparisonsRequest]:
                async def messages() -> AsyncIterator[svc.SubmitComparisonsRequest]:
                    yield svc.SubmitComparisonsRequest(requests=[submission_to_pb(subs[i])])
                    await release.wait()  # the call stays open: the client has not half-closed

                return messages()

            async def submit_one(i: int, acked: asyncio.Event) -> str:
                stub = stubs[i % len(stubs)]
                channel = subs[i].result_channel
                follows[i] = stub.StreamResults(svc.StreamResultsRequest(result_channel=channel))
                call = stub.SubmitComparisons(one_message(i))
                try:
                    ack = await call.read()
                finally:
                    acked.set()
                if not isinstance(ack, svc.SubmitComparisonsResponse) or not ack.ack.accepted:
                    raise BenchError(f"request {i} was not accepted: {ack}")
                result = await call.read()
                if not isinstance(result, svc.SubmitComparisonsResponse):
                    raise BenchError(f"call {i} ended without its result")
                return result.result.request_id

            async def follow_one(i: int) -> str:
                reply = await follows[i].read()
                if not isinstance(reply, svc.StreamResultsResponse):
                    raise BenchError(f"StreamResults {i} ended without a result")
                return reply.result.request_id

            async with asyncio.timeout(60 + n / 20):
                # Calls open a batch at a time (each batch acknowledged before the next): a burst
                # of a few thousand new streaming calls fails some inside gRPC ("Internal error
                # from Core"), seen as well against a trivial grpc.aio servicer and with the
                # calls spread over two client processes.
                submitting = []
                for start in range(0, n, OPEN_BATCH):
                    batch = range(start, min(n, start + OPEN_BATCH))
                    acked = [asyncio.Event() for _ in batch]
                    submitting += [
                        asyncio.create_task(submit_one(i, e))
                        for i, e in zip(batch, acked, strict=True)
                    ]
                    await asyncio.gather(*(e.wait() for e in acked))
                submitted, followed = await asyncio.gather(
                    asyncio.gather(*submitting),
                    asyncio.gather(*(follow_one(i) for i in range(n))),
                )
            delivered_s = time.perf_counter() - started
            expected = [sub.request_id for sub in subs]
            if list(submitted) != expected or list(followed) != expected:
                raise BenchError("a stream got another request's result")
            open_kb = holder.child.status_kb("VmRSS")
            connections = redis_connections(run.redis.target, holder.child.proc.pid)
            release.set()
            for follow in follows:
                follow.cancel()
        finally:
            for channel in channels:
                await channel.close()
    return {
        "figures": {"streams_per_replica": float(2 * n), "streams_rss_mb": open_kb / 1024},
        "details": {
            "submit_streams": n,
            "result_streams": n,
            "delivered_s": delivered_s,
            "rss_idle_mb": idle_kb / 1024,
            "rss_kb_per_stream": (open_kb - idle_kb) / (2 * n),
            "redis_connections_of_holder": connections,
            "note": "every stream still open when memory and connections were read",
        },
    }
