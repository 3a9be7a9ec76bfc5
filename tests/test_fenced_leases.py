"""Fenced leases, retries that wait in the queue, and leases that skip full providers: the queue
contract on both backends (LocalQueue and RedisQueue against a private redis-server)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import replace

from lps_server.core.domain import ProviderName, QueuedRequest, RequestStatus, Route
from lps_server.queue.base import QueueBackend
from tests.queue_support import T0, judged, make_queued


def routed(rid: str, provider: ProviderName, *, at: float, group: str = "") -> QueuedRequest:
    """A queued request for `provider`, in a group of its own provider."""
    queued = make_queued(rid, at=at, group=group or f"8:{provider.value}")
    return replace(queued, route=Route(provider, "m"))


async def test_only_the_holder_extends_releases_and_completes(queue: QueueBackend) -> None:
    first = make_queued("r1", channel="ch")
    await queue.submit([first, make_queued("r2", at=T0 + 1)])
    held = await queue.lease(now=T0 + 1, max_items=1)
    assert [q.request_id for q in held.items] == ["r1"]
    assert held.token
    assert await queue.extend(["r1"], token="intruder", now=T0 + 2) == ["r1"]
    await queue.release(["r1"], token="intruder")
    assert (await queue.get("r1")).status == RequestStatus.PROCESSING  # type: ignore[union-attr]
    assert await queue.complete([(first, judged(first))], token="intruder") == [False]
    assert await queue.complete([(first, judged(first))]) == [False], "no token, leased: refused"
    assert await queue.read_channel("ch", cursor="", timeout=0) == []
    # The holder can do all three.
    assert await queue.extend(["r1"], token=held.token, now=T0 + 2) == []
    assert await queue.complete([(first, judged(first))], token=held.token) == [True]
    # Ended by the holder: not "lost" to it, and asking again is answered the same.
    assert await queue.extend(["r1"], token=held.token, now=T0 + 3) == []
    assert await queue.complete([(first, judged(first))], token=held.token) == [True]
    assert len(await queue.read_channel("ch", cursor="", timeout=0)) == 1


async def test_a_lease_taken_over_is_reported_lost_and_cannot_be_given_back(
    queue: QueueBackend,
) -> None:
    await queue.submit([make_queued("r1"), make_queued("r2", at=T0 + 1)])
    old = await queue.lease(now=T0 + 1, max_items=8)
    assert [q.request_id for q in old.items] == ["r1"]
    # The holder gives r1 back (as a reclaim would), and someone else takes it.
    await queue.release(["r1"], token=old.token)
    new = await queue.lease(now=T0 + 2)
    assert [q.request_id for q in new.items] == ["r1"]
    assert new.token != old.token
    assert await queue.extend(["r1"], token=old.token, now=T0 + 3) == ["r1"]
    await queue.release(["r1"], token=old.token)
    assert (await queue.get("r1")).status == RequestStatus.PROCESSING  # type: ignore[union-attr]
    assert await queue.extend(["r1", "ghost"], token=new.token, now=T0 + 3) == ["ghost"]


async def test_a_lease_can_grow_under_its_token(queue: QueueBackend) -> None:
    await queue.submit([make_queued(f"r{i}", group="8:g", at=T0 + i) for i in range(3)])
    lease = await queue.lease(now=T0 + 5, max_items=1)
    more = await queue.lease(now=T0 + 5, group="8:g", max_items=2, token=lease.token)
    assert more.token == lease.token
    assert await queue.extend(["r0", "r1", "r2"], token=lease.token, now=T0 + 6) == []


async def test_a_retry_waits_in_the_queue_until_due_and_counts_its_attempts(
    queue: QueueBackend,
) -> None:
    await queue.submit([make_queued("retried", at=T0), make_queued("next", at=T0 + 1)])
    lease = await queue.lease(now=T0 + 2)
    assert [q.request_id for q in lease.items] == ["retried"]
    assert lease.attempts == {}
    await queue.release(["retried"], token=lease.token, retry_at=T0 + 10)
    assert (await queue.get("retried")).status == RequestStatus.QUEUED  # type: ignore[union-attr]
    assert (await queue.stats(now=T0 + 3)).queued == 2
    # Not before it is due: the next request goes first, and the lease says when to look again.
    early = await queue.lease(now=T0 + 3)
    assert [q.request_id for q in early.items] == ["next"]
    empty = await queue.lease(now=T0 + 9)
    assert (empty.items, empty.next_retry_at) == ([], T0 + 10)
    due = await queue.lease(now=T0 + 10)
    assert [q.request_id for q in due.items] == ["retried"]
    assert due.attempts == {"retried": 1}
    assert due.next_retry_at is None
    await queue.release(["retried"], token=due.token, retry_at=T0 + 11)
    assert (await queue.lease(now=T0 + 12)).attempts == {"retried": 2}


async def test_a_waiting_retry_keeps_its_place_and_outlives_its_ttl(queue: QueueBackend) -> None:
    await queue.submit(
        [make_queued("old", at=T0, deadline=T0 + 100), make_queued("newer", at=T0 + 1)]
    )
    lease = await queue.lease(now=T0 + 2)
    await queue.release(["old"], token=lease.token, retry_at=T0 + 5)
    # Once due it goes back to its original place, ahead of newer work.
    assert [q.request_id for q in (await queue.lease(now=T0 + 6)).items] == ["old"]
    lease = await queue.lease(now=T0 + 6)
    assert [q.request_id for q in lease.items] == ["newer"]
    # The TTL bounds the wait before the first call only: a retry outlives it.
    await queue.submit([make_queued("late", at=T0 + 7, deadline=T0 + 20)])
    late = await queue.lease(now=T0 + 8)
    await queue.release(["late"], token=late.token, retry_at=T0 + 30)
    assert (await queue.sweep(now=T0 + 21)).expired == []
    assert (await queue.stats(now=T0 + 21)).queued == 1
    due = await queue.lease(now=T0 + 30)
    assert ([q.request_id for q in due.items], due.expired) == (["late"], [])


async def test_a_lease_skips_providers_with_no_room(queue: QueueBackend) -> None:
    slow, idle = ProviderName.OPENAI, ProviderName.ANTHROPIC
    await queue.submit(
        [
            routed("s1", slow, at=T0),
            routed("s2", slow, at=T0 + 1),
            routed("i1", idle, at=T0 + 2),
            routed("m1", ProviderName.MOCK, at=T0 + 3),
        ]
    )
    lease = await queue.lease(now=T0 + 5, exclude={slow})
    assert [q.request_id for q in lease.items] == ["i1"], "the oldest of the providers with room"
    assert (await queue.lease(now=T0 + 5, max_items=0, exclude={slow, idle})).group == "8:mock"
    assert (await queue.lease(now=T0 + 5, exclude=set(ProviderName))).items == []
    lease = await queue.lease(now=T0 + 5, max_items=8)
    assert [q.request_id for q in lease.items] == ["s1", "s2"], "without exclusions: the head"


async def test_wait_for_work_waits_for_new_work_not_for_work_a_lease_skipped(
    queue: QueueBackend,
) -> None:
    await queue.submit([routed("s1", ProviderName.OPENAI, at=T0)])
    assert (await queue.lease(now=T0 + 1, exclude={ProviderName.OPENAI})).items == []
    await queue.wait_for_work(0.01)  # Redis: take the wake token of that submit
    # The only queued work is for a full provider: waiting must not return at once (a busy
    # loop), only when something new arrives or the timeout passes.
    assert await _returns_within(queue.wait_for_work(0.3), 0.2) is False
    await queue.submit([make_queued("m1", at=T0 + 1)])
    assert await _returns_within(queue.wait_for_work(5.0), 2.0) is True


async def _returns_within(waiting: Awaitable[None], seconds: float) -> bool:
    task = asyncio.ensure_future(waiting)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        await task
    return bool(done)
