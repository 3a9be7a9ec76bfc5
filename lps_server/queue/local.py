"""The embedded in-process queue: the default backend, with the same semantics as Redis.

Requests wait in one heap per compatibility key plus a global heap that finds the head of the
queue; entries taken from one heap are skipped lazily in the other (each entry carries the token it
was queued with). Two more heaps index queued requests by deadline and by enqueue time, and ended
requests are kept in the order they ended, so a sweep and `stats()` look only at what is due or
at the head, never at every record. An ended request keeps only its result: its essays are
dropped. Nothing survives the process: for durability and many replicas use Redis.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import Counter, OrderedDict
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from lps_server.core.bundling import limit_of
from lps_server.core.domain import ComparisonResult, QueuedRequest, RequestStatus
from lps_server.queue.base import (
    RETRY_AFTER_FULL_S,
    ChannelEntry,
    ChannelFollower,
    Lease,
    QueueStats,
    SubmitOutcome,
    SweepResult,
    in_progress,
)
from lps_server.queue.local_channels import LocalChannels
from lps_server.queue.ordering import queue_score, request_bytes
from lps_server.queue.replies import Deliver, LocalReplies


@dataclass(slots=True)
class _Record:
    """A request that has not ended (queued or processing)."""

    queued: QueuedRequest
    status: RequestStatus
    score: float
    # Submission order: breaks ties between equal scores, and is kept when a request is released
    # so it goes back to exactly its place (the token changes with every enqueue).
    seq: int = 0
    token: int = 0


@dataclass(frozen=True, slots=True)
class _Ended:
    """What is kept of an ended request: its result, for `get` and for a resubmission of its id
    (answered with its status). Not its essays."""

    result: ComparisonResult
    finished_at: float


class LocalQueue:
    """An in-process QueueBackend.

    Args:
        max_size: most queued requests.
        max_bytes: most bytes of queued essay text, instructions and metadata.
        priority_aging_s: how far ahead of older work one priority step puts a request.
        retention_s: how long ended results and idle channels are kept.
        reply_ttl_s: how long a streaming call's reply channel outlives its last result.
    """

    name = "local"

    def __init__(
        self,
        *,
        max_size: int = 100_000,
        max_bytes: int = 1 << 30,
        priority_aging_s: float = 30.0,
        retention_s: float = 86_400.0,
        reply_ttl_s: float = 300.0,
    ) -> None:
        self.max_size = max_size
        self._max_bytes = max_bytes
        self._aging = priority_aging_s
        self._retention = retention_s
        self._reply_ttl = reply_ttl_s
        self._records: dict[str, _Record] = {}
        self._ended: OrderedDict[str, _Ended] = OrderedDict()  # in the order they ended
        self._ended_counts: Counter[RequestStatus] = Counter()
        self._groups: dict[str, list[tuple[float, int, int, str]]] = {}
        self._head: list[tuple[float, int, int, str, str]] = []
        # (deadline or enqueue time, token, id) of queued requests; stale entries skipped lazily.
        self._deadlines: list[tuple[float, int, str]] = []
        self._enqueue_times: list[tuple[float, int, str]] = []
        self._tokens = itertools.count(1)
        self._queued = 0
        self._queued_bytes = 0
        self._processing = 0
        self._channels = LocalChannels()
        self._replies = LocalReplies()
        self._work = asyncio.Event()
        self._closed = False

    async def submit(self, requests: Sequence[QueuedRequest]) -> list[SubmitOutcome]:
        """Enqueue new requests; known ids return their status, overflow is rejected."""
        outcomes = []
        for queued in requests:
            known = self._status(queued.request_id)
            if known is not None:
                outcomes.append(SubmitOutcome(queued.request_id, known, created=False))
                continue
            size = request_bytes(queued)
            if self._queued >= self.max_size or self._queued_bytes + size > self._max_bytes:
                outcomes.append(self._full(queued.request_id))
                continue
            score = queue_score(queued, aging_s=self._aging)
            record = _Record(queued, RequestStatus.QUEUED, score, seq=next(self._tokens))
            self._records[queued.request_id] = record
            self._enqueue(record)
            outcomes.append(SubmitOutcome(queued.request_id, RequestStatus.QUEUED, created=True))
        return outcomes

    def _status(self, request_id: str) -> RequestStatus | None:
        record = self._records.get(request_id)
        if record is not None:
            return record.status
        ended = self._ended.get(request_id)
        return ended.result.status if ended is not None else None

    def _full(self, request_id: str) -> SubmitOutcome:
        limit = f"{self.max_size} requests or {self._max_bytes} bytes"
        return SubmitOutcome(
            request_id,
            None,
            created=False,
            rejected=f"queue is full ({limit}); retry later",
            retry_after=RETRY_AFTER_FULL_S,
        )

    def _enqueue(self, record: _Record) -> None:
        record.status = RequestStatus.QUEUED
        record.token = next(self._tokens)
        group = record.queued.group
        rid = record.queued.request_id
        entry = (record.score, record.seq, record.token, rid)
        heapq.heappush(self._groups.setdefault(group, []), entry)
        heapq.heappush(self._head, (*entry, group))
        if record.queued.deadline is not None:
            heapq.heappush(self._deadlines, (record.queued.deadline, record.token, rid))
        heapq.heappush(self._enqueue_times, (record.queued.enqueued_at, record.token, rid))
        self._queued += 1
        self._queued_bytes += request_bytes(record.queued)
        self._work.set()

    def _is_live(self, rid: str, token: int) -> bool:
        record = self._records.get(rid)
        if record is None or record.token != token:
            return False
        return record.status == RequestStatus.QUEUED

    async def lease(self, *, now: float, group: str | None = None, max_items: int = 1) -> Lease:
        """Take the head and more of its group (or only `group`), up to the group's limit."""
        if group is None:
            while self._head and not self._is_live(self._head[0][3], self._head[0][2]):
                heapq.heappop(self._head)
            if not self._head:
                return Lease()
            group = self._head[0][4]
        limit = min(max_items, limit_of(group))
        heap = self._groups.get(group, [])
        items: list[QueuedRequest] = []
        expired: list[QueuedRequest] = []
        while heap and len(items) < limit:
            _, _, token, rid = heapq.heappop(heap)
            if not self._is_live(rid, token):
                continue
            record = self._records[rid]
            self._queued -= 1
            self._queued_bytes -= request_bytes(record.queued)
            record.status = RequestStatus.PROCESSING
            self._processing += 1
            (expired if record.queued.is_expired(now) else items).append(record.queued)
        if not heap:
            self._groups.pop(group, None)
        if self._queued == 0:
            self._work.clear()
        return Lease(items=items, expired=expired, group=group)

    async def wait_for_work(self, timeout: float) -> None:
        """Return as soon as a request is queued, or after `timeout`."""
        if self._queued > 0 or self._closed:
            return
        try:
            await asyncio.wait_for(self._work.wait(), timeout)
        except TimeoutError:
            return

    async def extend(self, request_ids: Sequence[str], *, now: float) -> None:
        """Leases never lapse in-process: the process holding them is the only one."""

    async def release(self, request_ids: Sequence[str]) -> None:
        """Requeue leased requests at their original position."""
        for rid in request_ids:
            record = self._records.get(rid)
            if record is not None and record.status == RequestStatus.PROCESSING:
                self._processing -= 1
                self._enqueue(record)

    async def complete(self, done: Sequence[tuple[QueuedRequest, ComparisonResult]]) -> list[bool]:
        """Store and publish each result once; False for requests that had ended already."""
        stored = []
        for queued, result in done:
            record = self._records.pop(queued.request_id, None)
            if record is None:  # unknown, or ended already
                stored.append(False)
                continue
            if record.status == RequestStatus.PROCESSING:
                self._processing -= 1
            elif record.status == RequestStatus.QUEUED:
                # Ended without being leased (drain at shutdown): take it out of the count.
                self._queued -= 1
                self._queued_bytes -= request_bytes(record.queued)
            self._ended[queued.request_id] = _Ended(result, finished_at=result.completed_at)
            self._ended_counts[result.status] += 1
            now = result.completed_at
            self._publish(queued.request.result_channel, result, now=now, ttl=self._retention)
            if self._replies.reader(queued.reply_to) is None:
                self._publish(queued.reply_to, result, now=now, ttl=self._reply_ttl)
            stored.append(True)
        self._replies.deliver(done, stored)
        return stored

    def _publish(self, channel: str, result: ComparisonResult, *, now: float, ttl: float) -> None:
        if channel:
            self._channels.publish(channel, result, now=now, ttl=ttl)

    def reply_here(self, channel: str, deliver: Deliver) -> AbstractContextManager[None]:
        """Results for `channel` go to `deliver` instead of onto the channel while open."""
        return self._replies.open(channel, deliver)

    async def get(self, request_id: str) -> ComparisonResult | None:
        """The stored result, or a status-only result while the request is not done."""
        ended = self._ended.get(request_id)
        if ended is not None:
            return ended.result
        record = self._records.get(request_id)
        return None if record is None else in_progress(record.queued, record.status)

    async def ended_results(self, request_ids: Sequence[str]) -> dict[str, ComparisonResult]:
        """The stored results of those of `request_ids` that have ended."""
        found = ((rid, self._ended.get(rid)) for rid in request_ids)
        return {rid: ended.result for rid, ended in found if ended is not None}

    async def read_channel(
        self, channel: str, *, cursor: str, timeout: float
    ) -> list[ChannelEntry]:
        """Entries after `cursor`; waits up to `timeout` for the first when there are none.
        Reading a channel that does not exist does not create it."""
        return await self._channels.read(channel, cursor=cursor, timeout=timeout)

    def follow(self, channel: str, *, cursor: str) -> AbstractContextManager[ChannelFollower]:
        """A follower of `channel` from just after `cursor`."""
        return nullcontext(self._channels.follow(channel, cursor))

    async def sweep(self, *, now: float) -> SweepResult:
        """Take expired requests out of the queue and forget results and channels past
        retention; only requests due (by deadline, by end time) are looked at."""
        expired = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, token, rid = heapq.heappop(self._deadlines)
            if not self._is_live(rid, token):
                continue  # leased, ended or requeued since (a newer entry stands for it)
            record = self._records[rid]
            self._queued -= 1
            self._queued_bytes -= request_bytes(record.queued)
            record.status = RequestStatus.PROCESSING
            self._processing += 1
            record.token = -1
            expired.append(record.queued)
        while self._ended:
            rid, ended = next(iter(self._ended.items()))
            if ended.finished_at + self._retention >= now:
                break
            self._ended.popitem(last=False)
            self._ended_counts[ended.result.status] -= 1
        self._channels.forget_idle(now)
        self._oldest_queued()  # drops stale entries from the front of the index
        if self._queued == 0:
            self._work.clear()
        return SweepResult(expired=expired)

    def _oldest_queued(self) -> float | None:
        while self._enqueue_times:
            enqueued_at, token, rid = self._enqueue_times[0]
            if self._is_live(rid, token):
                return enqueued_at
            heapq.heappop(self._enqueue_times)
        return None

    async def stats(self, *, now: float) -> QueueStats:
        """Depth by status and the oldest queued age."""
        oldest = self._oldest_queued()
        return QueueStats(
            queued=self._queued,
            processing=self._processing,
            completed=self._ended_counts[RequestStatus.COMPLETED],
            failed=self._ended_counts[RequestStatus.FAILED],
            expired=self._ended_counts[RequestStatus.EXPIRED],
            oldest_queued_age_s=max(0.0, now - oldest) if oldest is not None else 0.0,
        )

    async def ping(self) -> None:
        """The in-process queue is always reachable."""

    async def close(self) -> None:
        """Wake every waiter so loops can notice shutdown."""
        self._closed = True
        self._work.set()
        self._channels.close()

    def pending(self) -> list[QueuedRequest]:
        """Queued requests in queue order (used to end them at shutdown)."""
        live = [r for r in self._records.values() if r.status == RequestStatus.QUEUED]
        return [r.queued for r in sorted(live, key=lambda r: (r.score, r.seq))]
