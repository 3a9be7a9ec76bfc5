"""Behaviour every queue backend shares, run against LocalQueue and RedisQueue alike.

Time is passed in (`now`), so nothing here waits for a clock; the only waits are for events
(`wait_for_work`, `read_channel`), bounded by their timeouts.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from lps_server.core.domain import RequestStatus
from lps_server.queue.base import QueueBackend
from tests.queue_support import T0, QueueFactory, expired_result, judged, make_queued


async def lease_ids(queue: QueueBackend, *, now: float = T0 + 1, **kwargs: Any) -> list[str]:
    lease = await queue.lease(now=now, **kwargs)
    return [q.request_id for q in lease.items]


async def drain_order(queue: QueueBackend, *, now: float = T0 + 1) -> list[str]:
    """Request ids in the order single-item leases return them."""
    order = []
    while ids := await lease_ids(queue, now=now):
        order += ids
    return order


async def test_higher_priority_first_then_fifo(queue: QueueBackend) -> None:
    # Ids sort against submission order, so FIFO cannot come from id order by accident.
    await queue.submit(
        [
            make_queued("z-low", priority=0, at=T0),
            make_queued("m-high", priority=5, at=T0 + 2),
            make_queued("a-low", priority=0, at=T0 + 1),
            make_queued("b-high", priority=5, at=T0 + 3),
        ]
    )
    # Same priority, same enqueue time: submission order decides.
    await queue.submit([make_queued(rid, priority=9, at=T0 + 4) for rid in ("t3", "t1", "t2")])
    assert await drain_order(queue) == ["t3", "t1", "t2", "m-high", "b-high", "z-low", "a-low"]


async def test_low_priority_waits_at_most_the_aging_bound(make_queue: QueueFactory) -> None:
    queue = make_queue(queue_priority_aging_seconds=30.0)
    bound = 10 * 30.0
    await queue.submit(
        [
            make_queued("low", priority=0, at=T0),
            make_queued("high-before-bound", priority=10, at=T0 + bound - 1),
            make_queued("high-after-bound", priority=10, at=T0 + bound + 1),
        ]
    )
    assert await drain_order(queue, now=T0 + bound + 2) == [
        "high-before-bound",
        "low",
        "high-after-bound",
    ]


async def test_submit_is_idempotent_by_request_id(queue: QueueBackend) -> None:
    first = await queue.submit([make_queued("r1"), make_queued("r1")])
    assert [(o.created, o.status) for o in first] == [
        (True, RequestStatus.QUEUED),
        (False, RequestStatus.QUEUED),
    ]
    lease = await queue.lease(now=T0 + 1)
    assert [q.request_id for q in lease.items] == ["r1"]
    (again,) = await queue.submit([make_queued("r1")])
    assert (again.created, again.status) == (False, RequestStatus.PROCESSING)
    await queue.complete([(make_queued("r1"), judged(make_queued("r1")))], token=lease.token)
    (late,) = await queue.submit([make_queued("r1")])
    assert (late.created, late.status) == (False, RequestStatus.COMPLETED)
    assert await lease_ids(queue) == []
    stats = await queue.stats(now=T0 + 10)
    assert (stats.queued, stats.processing, stats.completed) == (0, 0, 1)


async def test_bundle_takes_head_group_and_leaves_other_groups_in_place(
    queue: QueueBackend,
) -> None:
    await queue.submit(
        [
            make_queued("a1", group="8:a", at=T0),
            make_queued("b1", group="8:b", at=T0 + 1),
            make_queued("a2", group="8:a", at=T0 + 2),
            make_queued("b2", group="8:b", at=T0 + 3),
            make_queued("a3", group="8:a", at=T0 + 4),
            make_queued("c1", group="8:c", at=T0 + 5),
        ]
    )
    lease = await queue.lease(now=T0 + 10, max_items=8)
    assert (lease.group, [q.request_id for q in lease.items]) == ("8:a", ["a1", "a2", "a3"])
    # b1, met while the bundle of `a` filled, was not moved behind newer work: it leads now.
    lease = await queue.lease(now=T0 + 10, max_items=8)
    assert (lease.group, [q.request_id for q in lease.items]) == ("8:b", ["b1", "b2"])
    assert await lease_ids(queue, max_items=8) == ["c1"]


async def test_bundle_size_is_the_smaller_of_max_items_and_group_limit(
    queue: QueueBackend,
) -> None:
    await queue.submit([make_queued(f"s{i}", group="3:s", at=T0 + i) for i in range(5)])
    assert await lease_ids(queue, max_items=8) == ["s0", "s1", "s2"]
    assert await lease_ids(queue, max_items=1) == ["s3"]


async def test_lease_of_a_given_group_takes_only_that_group(queue: QueueBackend) -> None:
    await queue.submit(
        [make_queued("a1", group="8:a", at=T0), make_queued("b1", group="8:b", at=T0 + 1)]
    )
    assert await lease_ids(queue, group="8:b", max_items=8) == ["b1"]
    empty = await queue.lease(now=T0 + 1, group="8:zzz", max_items=8)
    assert (empty.items, empty.expired) == ([], [])
    assert await lease_ids(queue, max_items=8) == ["a1"]


async def test_expired_requests_found_at_lease_are_returned_apart(queue: QueueBackend) -> None:
    await queue.submit(
        [
            make_queued("old", group="8:g", at=T0, deadline=T0 + 10),
            make_queued("fresh", group="8:g", at=T0 + 1),
            make_queued("also-old", group="8:g", at=T0 + 2, deadline=T0 + 10),
        ]
    )
    lease = await queue.lease(now=T0 + 10, max_items=8)
    assert [q.request_id for q in lease.items] == ["fresh"]
    assert sorted(q.request_id for q in lease.expired) == ["also-old", "old"]
    # Out of the queue, not yet ended: the caller ends them.
    assert (await queue.get("old")).status == RequestStatus.PROCESSING  # type: ignore[union-attr]
    assert await lease_ids(queue, max_items=8) == []


async def test_sweep_takes_expired_queued_requests_and_submitter_is_told(
    queue: QueueBackend,
) -> None:
    doomed = make_queued("doomed", at=T0, deadline=T0 + 10, channel="ch")
    await queue.submit([doomed, make_queued("keeper", at=T0 + 1)])
    assert (await queue.sweep(now=T0 + 9)).expired == []
    found = await queue.sweep(now=T0 + 10)
    assert [q.request_id for q in found.expired] == ["doomed"]
    assert (await queue.stats(now=T0 + 10)).queued == 1
    ending = [(doomed, expired_result(doomed, now=T0 + 10))]
    assert await queue.complete(ending) == [False], "held by the sweep's token"
    assert await queue.complete(ending, token=found.token) == [True]
    entries = await queue.read_channel("ch", cursor="", timeout=0)
    assert [(e.result.request_id, e.result.status) for e in entries] == [
        ("doomed", RequestStatus.EXPIRED)
    ]
    assert await drain_order(queue, now=T0 + 11) == ["keeper"]


async def test_second_completion_is_refused_and_published_once(queue: QueueBackend) -> None:
    queued = make_queued("r1", channel="ch", reply_to="reply-1")
    await queue.submit([queued])
    lease = await queue.lease(now=T0 + 1)
    first = judged(queued, now=T0 + 2)
    assert await queue.complete([(queued, first)], token=lease.token) == [True]
    # Another holder (a replica whose lease was taken over) is refused; the holder itself,
    # asking again after a lost reply, is told its result is the stored one. Neither publishes.
    assert await queue.complete([(queued, judged(queued, now=T0 + 3))], token="other") == [False]
    assert await queue.complete([(queued, judged(queued, now=T0 + 3))]) == [False]
    assert await queue.complete([(queued, first)], token=lease.token) == [True]
    for channel in ("ch", "reply-1"):
        entries = await queue.read_channel(channel, cursor="", timeout=0)
        assert [e.result for e in entries] == [first]
    assert await queue.get("r1") == first


async def test_complete_of_unknown_request_is_refused(queue: QueueBackend) -> None:
    ghost = make_queued("ghost", channel="ch")
    assert await queue.complete([(ghost, judged(ghost))]) == [False]
    assert await queue.read_channel("ch", cursor="", timeout=0) == []


async def test_read_channel_resumes_from_a_cursor_without_gaps(queue: QueueBackend) -> None:
    batch = [make_queued(f"r{i}", channel="ch", at=T0 + i) for i in range(4)]
    await queue.submit(batch)
    lease = await queue.lease(now=T0 + 10, max_items=1)
    await queue.complete([(batch[0], judged(batch[0]))], token=lease.token)
    await queue.complete([(q, judged(q)) for q in batch[1:3]])  # never leased: no token
    everything = await queue.read_channel("ch", cursor="", timeout=0)
    assert [e.result.request_id for e in everything] == ["r0", "r1", "r2"]
    rest = await queue.read_channel("ch", cursor=everything[0].cursor, timeout=0)
    assert [e.result.request_id for e in rest] == ["r1", "r2"]
    assert await queue.read_channel("ch", cursor=everything[-1].cursor, timeout=0) == []
    await queue.complete([(batch[3], judged(batch[3]))])
    tail = await queue.read_channel("ch", cursor=everything[-1].cursor, timeout=0)
    assert [e.result.request_id for e in tail] == ["r3"]


async def test_read_channel_wakes_on_publish(queue: QueueBackend) -> None:
    queued = make_queued("r1", channel="ch")
    await queue.submit([queued])
    started = time.monotonic()
    reader = asyncio.create_task(queue.read_channel("ch", cursor="", timeout=5.0))
    await asyncio.sleep(0.05)  # let the reader block first; the wait itself is on the event
    await queue.complete([(queued, judged(queued))])
    entries = await reader
    assert [e.result.request_id for e in entries] == ["r1"]
    assert time.monotonic() - started < 1.0


async def test_read_channel_times_out_empty(queue: QueueBackend) -> None:
    started = time.monotonic()
    assert await queue.read_channel("quiet", cursor="", timeout=0.2) == []
    assert 0.15 <= time.monotonic() - started < 2.0


async def test_wait_for_work_returns_when_work_arrives(queue: QueueBackend) -> None:
    started = time.monotonic()
    waiter = asyncio.create_task(queue.wait_for_work(5.0))
    await asyncio.sleep(0.05)  # let the waiter block first
    await queue.submit([make_queued("r1")])
    await waiter
    assert time.monotonic() - started < 1.0


async def test_wait_for_work_times_out_on_an_idle_queue(queue: QueueBackend) -> None:
    started = time.monotonic()
    await queue.wait_for_work(0.2)
    assert time.monotonic() - started >= 0.15


async def test_full_queue_rejects_only_what_does_not_fit(make_queue: QueueFactory) -> None:
    queue = make_queue(queue_max_size=2)
    outcomes = await queue.submit([make_queued(f"r{i}", at=T0 + i) for i in range(3)])
    assert [o.created for o in outcomes] == [True, True, False]
    rejected = outcomes[2]
    assert rejected.status is None
    assert "full" in rejected.rejected
    assert rejected.retry_after > 0
    # A known id is answered with its status even when the queue is full.
    (known,) = await queue.submit([make_queued("r0")])
    assert (known.created, known.status) == (False, RequestStatus.QUEUED)
    assert (await queue.stats(now=T0)).queued == 2
    assert await queue.get("r2") is None
    await queue.lease(now=T0 + 5)
    (retried,) = await queue.submit([make_queued("r2", at=T0 + 2)])
    assert retried.created


async def test_byte_budget_rejects_what_does_not_fit(make_queue: QueueFactory) -> None:
    queue = make_queue(queue_max_bytes=3000)
    outcomes = await queue.submit(
        [
            make_queued("big", text="x" * 1000),
            make_queued("too-big", text="x" * 1000, at=T0 + 1),
            make_queued("small", at=T0 + 2),
        ]
    )
    assert [o.created for o in outcomes] == [True, False, True]
    # Leasing frees the bytes again.
    await queue.lease(now=T0 + 5)
    (retried,) = await queue.submit([make_queued("too-big", text="x" * 1000, at=T0 + 1)])
    assert retried.created


async def test_release_puts_requests_back_at_their_original_position(
    queue: QueueBackend,
) -> None:
    await queue.submit([make_queued("first", at=T0), make_queued("second", at=T0 + 1)])
    lease = await queue.lease(now=T0 + 1)
    assert [q.request_id for q in lease.items] == ["first"]
    await queue.submit([make_queued("third", at=T0 + 2)])
    await queue.release(["first"], token="someone-else")
    assert (await queue.get("first")).status == RequestStatus.PROCESSING  # type: ignore[union-attr]
    await queue.release(["first"], token=lease.token)
    assert (await queue.get("first")).status == RequestStatus.QUEUED  # type: ignore[union-attr]
    assert await drain_order(queue) == ["first", "second", "third"]


async def test_get_reports_status_then_the_result(queue: QueueBackend) -> None:
    assert await queue.get("nobody") is None
    queued = make_queued("r1")
    await queue.submit([queued])
    pending = await queue.get("r1")
    assert pending is not None
    assert (pending.status, pending.correlation_id, pending.requested_at) == (
        RequestStatus.QUEUED,
        "corr-r1",
        T0,
    )
    assert dict(pending.metadata) == {"cj_batch_id": "b1"}
    lease = await queue.lease(now=T0 + 1)
    assert (await queue.get("r1")).status == RequestStatus.PROCESSING  # type: ignore[union-attr]
    result = judged(queued)
    await queue.complete([(queued, result)], token=lease.token)
    assert await queue.get("r1") == result


async def test_stats_count_by_status_and_oldest_age(queue: QueueBackend) -> None:
    await queue.submit(
        [make_queued(f"r{i}", priority=i, at=T0 + 10 * i, group="1:g") for i in range(4)]
    )
    one = await queue.lease(now=T0 + 100, max_items=1)
    leased = one.items  # r3, the highest priority
    assert [q.request_id for q in leased] == ["r3"]
    two = await queue.lease(now=T0 + 100, max_items=1)
    second = two.items
    await queue.complete([(leased[0], judged(leased[0]))], token=one.token)
    await queue.complete([(second[0], expired_result(second[0], now=T0 + 100))], token=two.token)
    stats = await queue.stats(now=T0 + 100)
    assert (stats.queued, stats.processing, stats.completed, stats.expired, stats.failed) == (
        2,
        0,
        1,
        1,
        0,
    )
    assert stats.oldest_queued_age_s == pytest.approx(100.0)
    await drain_order(queue, now=T0 + 200)
    assert (await queue.stats(now=T0 + 200)).oldest_queued_age_s == 0.0


async def test_release_keeps_submission_order_among_equal_scores(queue: QueueBackend) -> None:
    await queue.submit([make_queued(rid, at=T0) for rid in ("t3", "t1", "t2")])
    lease = await queue.lease(now=T0 + 1)
    assert [q.request_id for q in lease.items] == ["t3"]
    await queue.release(["t3"], token=lease.token)
    assert await drain_order(queue) == ["t3", "t1", "t2"]


async def test_close_wakes_blocked_waiters(make_queue: QueueFactory) -> None:
    queue = make_queue()
    waiter = asyncio.create_task(queue.wait_for_work(5.0))
    reader = asyncio.create_task(queue.read_channel("ch", cursor="", timeout=5.0))
    await asyncio.sleep(0.05)  # let both block first
    started = time.monotonic()
    await queue.close()
    assert await asyncio.gather(waiter, reader) == [None, []]
    assert time.monotonic() - started < 1.0


async def test_a_request_given_back_mid_call_counts_the_call_and_does_not_expire(
    queue: QueueBackend,
) -> None:
    # A holder that marked a call and gives the request back without its result (cancelled
    # mid-call) leaves one failed attempt on it: past its TTL it is retried, not EXPIRED.
    await queue.submit([make_queued("r1", deadline=T0 + 5)])
    held = await queue.lease(now=T0 + 1)
    assert await queue.extend(["r1"], token=held.token, now=T0 + 1, calling=True) == []
    await queue.release(["r1"], token=held.token)
    again = await queue.lease(now=T0 + 10)
    assert [q.request_id for q in again.items] == ["r1"]
    assert again.expired == []
    assert again.attempts == {"r1": 1}
    # Given back again without a call: no attempt is added.
    await queue.release(["r1"], token=again.token)
    third = await queue.lease(now=T0 + 11)
    assert third.attempts == {"r1": 1}


async def test_a_request_given_back_before_any_call_still_expires(queue: QueueBackend) -> None:
    await queue.submit([make_queued("r1", deadline=T0 + 5)])
    held = await queue.lease(now=T0 + 1)
    assert await queue.extend(["r1"], token=held.token, now=T0 + 1) == []
    await queue.release(["r1"], token=held.token)
    again = await queue.lease(now=T0 + 10)
    assert [q.request_id for q in again.expired] == ["r1"]
    assert again.attempts == {}
