"""The child roles the benchmark starts: the echo server and the unary pacer."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
import uuid
from typing import Any

import grpc

from benchkit.common import BUNDLE_MAX, JUSTIFICATION, BenchError, workload
from cj_client.client import LpsClient
from cj_client.models import ComparisonSubmission
from generated.lps.v1 import comparison_pb2 as pb
from generated.lps.v1 import llm_provider_service_pb2 as svc
from generated.lps.v1 import llm_provider_service_pb2_grpc as svc_grpc


class EchoServicer(svc_grpc.LlmProviderServiceServicer):
    """Answers each request with an ack and a result the size of a real one; nothing else."""

    async def SubmitComparisons(self, request_iterator: Any, context: Any) -> Any:
        """Acks for a message's requests, then their results, as LPS sends them."""
        async for message in request_iterator:
            for r in message.requests:
                ack = svc.SubmissionAck(
                    request_id=r.request_id, accepted=True, status=pb.REQUEST_STATUS_QUEUED
                )
                yield svc.SubmitComparisonsResponse(ack=ack)
            for i, r in enumerate(message.requests):
                yield svc.SubmitComparisonsResponse(result=echo_result(r, i))


def echo_result(r: pb.ComparisonRequest, index: int) -> pb.ComparisonResult:
    """A completed result with every field LPS fills, built as cheaply as LPS could."""
    model = r.overrides.model or "mock-judge-1"
    metadata = dict(r.metadata, resolved_provider="mock", resolved_model=model,
                    queue_processing_mode="serial_bundle")  # fmt: skip
    prompt = (len(r.instructions) + len(r.essay_a.text) + len(r.essay_b.text)) // 4
    result = pb.ComparisonResult(
        request_id=r.request_id, correlation_id=r.correlation_id,
        status=pb.REQUEST_STATUS_COMPLETED, provider=r.overrides.provider, model=model,
        trace_id=uuid.uuid4().hex, request_metadata=metadata, bundle_id=uuid.uuid4().hex,
        bundle_index=index % BUNDLE_MAX, bundle_size=BUNDLE_MAX,
        queue_processing_mode=pb.QUEUE_PROCESSING_MODE_SERIAL_BUNDLE,
        judgement=pb.Judgement(winner=pb.WINNER_ESSAY_A, justification=JUSTIFICATION, confidence=3),
        token_usage=pb.TokenUsage(prompt_tokens=prompt, completion_tokens=48,
                                  total_tokens=prompt + 48),
    )  # fmt: skip
    now = time.time_ns()
    result.response_time.FromNanoseconds(1_000_000)
    result.requested_at.FromNanoseconds(now)
    result.completed_at.FromNanoseconds(now)
    return result


async def run_echo() -> None:
    """Serve the echo servicer on a free port until SIGTERM; prints `echo listening <port>`."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 16 << 20)])
    svc_grpc.add_LlmProviderServiceServicer_to_server(EchoServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"echo listening {port}", flush=True)
    await stop.wait()
    await server.stop(1)


async def run_pace(args: argparse.Namespace) -> None:
    """Submit unary requests at `--rate`/s, open loop; print send and response times as JSON."""
    subs = workload(args.warmup + args.count, tag=args.tag)
    sent: dict[str, float] = {}
    acked: dict[str, float] = {}

    async def submit(client: LpsClient, sub: ComparisonSubmission) -> None:
        request_id, status = await client.submit(sub)
        acked[request_id] = time.time()
        if status != "queued":
            raise BenchError(f"{request_id} was {status}, not queued")

    async with LpsClient(target=args.target) as client:
        tasks = []
        t0 = time.monotonic()
        for i, sub in enumerate(subs):
            delay = t0 + i / args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # the schedule is the event waited for
            sent[sub.request_id] = time.time()
            tasks.append(asyncio.create_task(submit(client, sub)))
        await asyncio.gather(*tasks)
    print(json.dumps({"sent": sent, "acked": acked}))
