"""Every refused submission counts in `llm_provider_submissions_rejected_total{reason}`: inside a
stream (validation, rate limit, full queue) and in unary calls (those too, and a draining or
unauthenticated server's refusals), each by its reason."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from cj_client import (
    Ack,
    InvalidRequestError,
    LimitExceededError,
    LpsClient,
    UnauthenticatedError,
    UnavailableError,
)
from cj_client.models import ComparisonSubmission
from lps_server.observability.metrics import REJECTION_REASONS
from tests.helpers import GatedMock, eventually, metric, running_app, submission

WAIT_S = 10.0
REJECTED = "llm_provider_submissions_rejected_total"


def bad(i: int) -> ComparisonSubmission:
    return submission(i, priority=42)  # priority must be 0..10


async def acks_of(client: LpsClient, subs: list[ComparisonSubmission]) -> list[Ack]:
    acks: list[Ack] = []
    async with asyncio.timeout(WAIT_S):
        async for event in client.submit_many(subs):
            if isinstance(event, Ack):
                acks.append(event)
    return acks


async def test_refusals_in_streams_and_unary_calls_are_counted_by_reason() -> None:
    provider = GatedMock()
    async with (
        running_app(
            provider=provider,
            max_concurrent_calls=1,
            queue_max_size=3,
            rate_limit_per_second=0.001,  # no refill during the test
            rate_limit_burst=8,
        ) as app,
        LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10) as client,
    ):
        assert {
            reason: metric(app.registry, REJECTED, reason=reason) for reason in REJECTION_REASONS
        } == dict.fromkeys(REJECTION_REASONS, 0.0)
        await client.submit(submission(0))  # leased at once, then held: 7 tokens left
        async with asyncio.timeout(WAIT_S):
            await provider.entered.wait()
        # One message: two invalid, three queued (the queue holds 3), one over the queue's size.
        first = [bad(1), submission(2), submission(3), submission(4), submission(5), bad(6)]
        events: list[object] = []

        async def follow() -> None:
            async for event in client.submit_many(first):
                events.append(event)

        stream = asyncio.create_task(follow())
        await eventually(lambda: len(events) >= len(first), "the first stream's acks")
        # Then three more for a full queue (their tokens spent: none left) and one over the rate.
        second = await acks_of(client, [submission(i) for i in range(7, 11)])
        refused = Counter(
            a.error_code
            for a in [*events[: len(first)], *second]
            if isinstance(a, Ack) and not a.accepted
        )
        assert refused == {"INVALID_ARGUMENT": 2, "RESOURCE_EXHAUSTED": 5}
        with pytest.raises(InvalidRequestError):
            await client.submit(bad(11))
        with pytest.raises(LimitExceededError):
            await client.submit(submission(12))
        await app.edge.begin_drain()
        with pytest.raises(UnavailableError):
            await client.submit(submission(13))
        provider.gate.set()
        async with asyncio.timeout(WAIT_S):
            await stream

    counts = {reason: metric(app.registry, REJECTED, reason=reason) for reason in REJECTION_REASONS}
    assert counts == {
        **dict.fromkeys(REJECTION_REASONS, 0.0),
        "invalid_request": 3,
        "queue_full": 4,
        "rate_limited": 2,
        "unavailable": 1,
    }


async def test_a_unary_submission_without_a_valid_token_counts_as_unauthenticated() -> None:
    async with running_app(auth_tokens=("secret-token",)) as app:
        async with LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10) as client:
            with pytest.raises(UnauthenticatedError):
                await client.submit(submission(1))
            # A stream refused as a whole is one refused call, not refused requests.
            with pytest.raises(UnauthenticatedError):
                await acks_of(client, [submission(3), submission(4)])
        async with LpsClient(
            target=f"127.0.0.1:{app.grpc_port}", timeout=10, token="secret-token"
        ) as client:
            with pytest.raises(InvalidRequestError):
                await client.submit(bad(2))
    assert metric(app.registry, REJECTED, reason="unauthenticated") == 1
    assert metric(app.registry, REJECTED, reason="invalid_request") == 1
    assert metric(app.registry, REJECTED) == 2
    calls = "llm_provider_grpc_requests_total"
    assert metric(app.registry, calls, method="SubmitComparisons", code="UNAUTHENTICATED") == 1
