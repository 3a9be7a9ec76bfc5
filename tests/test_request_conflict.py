"""A known request id with a different payload is refused with ALREADY_EXISTS, on both backends,
unary and streamed; a retry that differs only in delivery or metadata is still idempotent."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from cj_client import AlreadyExistsError, LpsClient
from lps_server.app import LpsApp
from lps_server.core.domain import Overrides, ProviderName, RequestStatus
from lps_server.queue.base import QueueBackend
from tests.helpers import metric, submission, submit_all
from tests.queue_support import judged, make_queued

Start = Callable[..., Awaitable[LpsApp]]


def _retry_of(rid: str, **request_changes: Any) -> Any:
    """`make_queued(rid)` with some fields of its request changed."""
    queued = make_queued(rid)
    return dataclasses.replace(
        queued, request=dataclasses.replace(queued.request, **request_changes)
    )


async def test_a_retry_with_other_metadata_and_delivery_is_the_same_request(
    queue: QueueBackend,
) -> None:
    await queue.submit([make_queued("r1")])
    (again,) = await queue.submit(
        [
            _retry_of(
                "r1",
                metadata={"comparison_iteration": "7", "cj_request_type": "cj_retry"},
                correlation_id="other",
                priority=9,
                ttl_seconds=5.0,
                result_channel="elsewhere",
            )
        ]
    )
    assert (again.created, again.conflict, again.status) == (False, False, RequestStatus.QUEUED)


@pytest.mark.parametrize(
    "change",
    [
        {"essay_a": make_queued("x").request.essay_b.__class__("a", "another text")},
        {"instructions": "judge the handwriting"},
        {"overrides": Overrides(provider=ProviderName.MOCK, model="other-model")},
        {"overrides": Overrides(temperature=0.7)},
    ],
    ids=["essay text", "instructions", "model", "temperature"],
)
async def test_a_known_id_with_another_payload_is_a_conflict_before_and_after_it_ends(
    queue: QueueBackend, change: dict[str, Any]
) -> None:
    first = make_queued("r1")
    await queue.submit([first])
    (conflict,) = await queue.submit([_retry_of("r1", **change)])
    assert (conflict.conflict, conflict.status, conflict.created) == (True, None, False)
    assert "'r1'" in conflict.rejected
    # Nothing changed: the first payload is still the one queued.
    lease = await queue.lease(now=first.enqueued_at + 1)
    assert [q.request for q in lease.items] == [first.request]
    # Once ended (Redis drops the payload then), a retry is still told from a different request.
    assert await queue.complete([(first, judged(first))], token=lease.token) == [True]
    (late,) = await queue.submit([_retry_of("r1", **change)])
    assert late.conflict
    (retry,) = await queue.submit([make_queued("r1")])
    assert (retry.conflict, retry.status) == (False, RequestStatus.COMPLETED)


async def test_conflicts_within_one_submission_are_found_in_order(queue: QueueBackend) -> None:
    outcomes = await queue.submit(
        [make_queued("r1"), _retry_of("r1", instructions="other"), make_queued("r1")]
    )
    assert [(o.created, o.conflict) for o in outcomes] == [
        (True, False),
        (False, True),
        (False, False),
    ]


@pytest.fixture
async def served(backend: dict[str, Any], start_lps: Start) -> LpsApp:
    """LPS on each backend (`backend`: a flushed private Redis for `redis`)."""
    return await start_lps(**backend)


async def test_unary_submit_of_a_reused_id_is_already_exists_naming_it(served: LpsApp) -> None:
    async with LpsClient(target=f"127.0.0.1:{served.grpc_port}", timeout=10) as client:
        await submit_all(client, [submission(1)])
        changed = submission(1, instructions="Which essay has better handwriting?")
        with pytest.raises(AlreadyExistsError, match="'req-1'") as caught:
            await client.submit(changed)
        assert caught.value.request_id == "req-1"
        assert caught.value.code == "ALREADY_EXISTS"
        # The retry of the original is still idempotent and answered from the store.
        assert await client.submit(submission(1)) == ("req-1", "completed")
    assert metric(served.registry, "llm_provider_requests_total") == 1


async def test_streamed_submit_of_a_reused_id_is_a_rejected_ack(served: LpsApp) -> None:
    async with LpsClient(target=f"127.0.0.1:{served.grpc_port}", timeout=10) as client:
        await submit_all(client, [submission(1)])
        changed = submission(1, essay_b=submission(1).essay_b.__class__("b1", "A new text."))
        events = [event async for event in client.submit_many([changed, submission(2)])]
    acks = [e for e in events if hasattr(e, "accepted")]
    assert [(a.request_id, a.accepted) for a in acks] == [("req-1", False), ("req-2", True)]
    assert acks[0].error_code == "ALREADY_EXISTS"
    assert "'req-1'" in acks[0].error_message
    results = [e.request_id for e in events if not hasattr(e, "accepted")]
    assert results == ["req-2"]
    assert metric(served.registry, "llm_provider_requests_total") == 2
