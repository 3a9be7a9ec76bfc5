"""The in-process queue stays lean: reading a channel does not create it, an ended request keeps
no essay text, and neither a sweep nor `stats()` walks every record.

Memory is measured with tracemalloc and work by counting the lines the queue's modules execute
(sys.settrace), so the checks are about what the queue does, not about how long it takes.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from lps_server.queue import local
from lps_server.queue.local import LocalQueue
from tests.queue_support import T0, judged, make_queued

QUEUE_PACKAGE = str(Path(local.__file__).parent)


@contextmanager
def traced_bytes() -> Iterator[list[int]]:
    """Bytes allocated (and still held) between entry and exit, in `result[0]`."""
    result = [0]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    try:
        yield result
    finally:
        gc.collect()
        result[0] = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()


async def lines_run(action: Callable[[], Awaitable[Any]]) -> int:
    """How many lines of the queue package `action` executes."""
    count = 0

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal count
        if not frame.f_code.co_filename.startswith(QUEUE_PACKAGE):
            return None
        if event == "line":
            count += 1
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        await action()
    finally:
        sys.settrace(previous)
    return count


async def finish(queue: LocalQueue, count: int, *, text: str = "an essay") -> None:
    """Submit, lease and complete `count` requests, holding no reference to them afterwards."""
    await queue.submit(
        [make_queued(f"r{i}", at=T0, text=f"{text} {i}", channel="ch") for i in range(count)]
    )
    for _ in range(count):
        lease = await queue.lease(now=T0 + 1)
        (queued,) = lease.items
        stored = await queue.complete([(queued, judged(queued, now=T0 + 2))], token=lease.token)
        assert stored == [True]


async def finish_more(queue: LocalQueue, count: int) -> None:
    """Submit and complete `count` more requests, ended without a lease (as at shutdown)."""
    batch = [make_queued(f"more{i}", at=T0 + 4) for i in range(count)]
    await queue.submit(batch)
    await queue.complete([(q, judged(q, now=T0 + 5)) for q in batch])


async def test_reading_unknown_channels_leaves_nothing_behind() -> None:
    queue = LocalQueue()
    with traced_bytes() as held:
        for i in range(5000):
            assert await queue.read_channel(f"nobody-{i}", cursor="", timeout=0) == []
        waits = [queue.read_channel(f"waited-{i}", cursor="", timeout=0.01) for i in range(2000)]
        assert await asyncio.gather(*waits) == [[]] * 2000
        del waits
        with queue.follow("followed", cursor="") as follower:
            assert await follower.read(0.01) == []
        for _ in range(3):
            await asyncio.sleep(0)  # asyncio lets go of the finished tasks
    # A channel kept per name read would hold about a kilobyte each: some 7 MB here. What may
    # stay is the capacity of a few tables sized for the 2,000 waits at once.
    assert held[0] < 500_000, held[0]


async def test_an_ended_request_keeps_no_essay_text() -> None:
    queue = LocalQueue()
    essay = "word " * 2000  # 10 kB per essay, two per request: 20 MB for 1,000 requests
    with traced_bytes() as held:
        await finish(queue, 1000, text=essay)
        assert (await queue.get("r7")) is not None
        (again,) = await queue.submit([make_queued("r7", text=f"{essay} 7", channel="ch")])
        assert again.status is not None
        assert not again.created  # still known, so a resubmission is answered, not re-run
        # Its digest is kept without its essays: another payload under its id is a conflict.
        (other,) = await queue.submit([make_queued("r7", text="resent")])
        assert other.conflict
    # What stays is the results (and the channel holding them), about 1 kB a request.
    assert held[0] < 3_000_000, held[0]


async def test_a_sweep_and_stats_do_not_grow_with_the_records_they_need_not_touch() -> None:
    small, large = LocalQueue(), LocalQueue()
    await finish(small, 100)
    await finish(large, 5000)
    for queue, queued in ((small, 10), (large, 1000)):
        await queue.submit(
            [make_queued(f"q{i}", at=T0 + 3, deadline=T0 + 3600) for i in range(queued)]
        )
    costs = []
    for queue in (small, large):
        await queue.sweep(now=T0 + 10)
        # Ten more end: the next sweep looks at what changed since, not at what it kept.
        await finish_more(queue, 10)
        sweep = await lines_run(lambda q=queue: q.sweep(now=T0 + 10))  # nothing is due
        stats = await lines_run(lambda q=queue: q.stats(now=T0 + 10))
        costs.append((sweep, stats))
    (small_sweep, small_stats), (large_sweep, large_stats) = costs
    assert large_sweep <= small_sweep + 5, costs
    assert large_stats <= small_stats + 5, costs
    stats = await large.stats(now=T0 + 10)
    assert (stats.queued, stats.completed, stats.oldest_queued_age_s) == (1000, 5010, 7.0)
    # Past the retention the ended ones go, and only they are looked at.
    expired = await large.sweep(now=T0 + 86_410)
    assert len(expired.expired) == 1000  # their deadline passed long ago
    assert (await large.stats(now=T0 + 86_410)).completed == 0
    assert await large.get("r1") is None
