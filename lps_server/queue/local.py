"""The embedded in-process queue: the default backend, with the same semantics as Redis.

Requests wait in one heap per compatibility key, one per provider and a global heap that finds the
head of the queue; entries taken from one heap are skipped lazily in the others (each entry carries
the token it was queued with). Requests waiting for a retry wait in a heap by due time until a
lease moves them back. Leases are fenced by a token as in Redis, though in-process they never lapse.
Nothing survives the process: for durability and many replicas use Redis.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from lps_server.core.bundling import limit_of
from lps_server.core.domain import ComparisonResult, ProviderName, QueuedRequest, RequestStatus
from lps_server.core.errors import QueueUnavailableError
from lps_server.queue.base import (
    CHANNEL_MAX_ENTRIES,
    RETRY_AFTER_FULL_S,
    ChannelEntry,
    Lease,
    QueueStats,
    SubmitOutcome,
    SweepResult,
    conflicting,
    in_progress,
)
from lps_server.queue.ordering import queue_score, request_bytes
from lps_server.queue.payload_digest import payload_digest
from lps_server.queue.replies import Deliver, LocalReplies


@dataclass(slots=True)
class _Record:
    queued: QueuedRequest
    status: RequestStatus
    score: float
    # Submission order: breaks ties between equal scores, and is kept when a request is released
    # so it goes back to exactly its place (the token changes with every enqueue).
    seq: int = 0
    token: int = 0
    result: ComparisonResult | None = None
    finished_at: float = 0.0
    # The token of the lease that holds it (or, once ended, of the one that ended it).
    lease: str = ""
    attempts: int = 0
    # When a request waiting for a retry becomes due; None for every other request.
    retry_at: float | None = None


@dataclass(slots=True)
class _Channel:
    entries: deque[tuple[int, ComparisonResult]] = field(
        default_factory=lambda: deque(maxlen=CHANNEL_MAX_ENTRIES)
    )
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    last_publish: float = 0.0


class LocalQueue:
    """An in-process QueueBackend.

    Args:
        max_size: most queued requests.
        max_bytes: most bytes of queued essay text, instructions and metadata.
        priority_aging_s: how far ahead of older work one priority step puts a request.
        retention_s: how long ended results and idle channels are kept.
    """

    name = "local"

    def __init__(
        self,
        *,
        max_size: int = 100_000,
        max_bytes: int = 1 << 30,
        priority_aging_s: float = 30.0,
        retention_s: float = 86_400.0,
    ) -> None:
        self.max_size = max_size
        self._max_bytes = max_bytes
        self._aging = priority_aging_s
        self._retention = retention_s
        self._records: dict[str, _Record] = {}
        self._groups: dict[str, list[tuple[float, int, int, str]]] = {}
        self._head: list[tuple[float, int, int, str, str]] = []
        self._by_provider: dict[ProviderName, list[tuple[float, int, int, str, str]]] = {}
        self._retries: list[tuple[float, int, str]] = []
        self._tokens = itertools.count(1)
        self._leases = itertools.count(1)
        self._queued = 0  # leasable now
        self._waiting_retry = 0
        self._queued_bytes = 0  # of both
        self._channels: dict[str, _Channel] = {}
        self._replies = LocalReplies()
        self._cursor = itertools.count(1)
        self._work = asyncio.Event()
        self._closed = False

    async def submit(self, requests: Sequence[QueuedRequest]) -> list[SubmitOutcome]:
        """Enqueue new requests; known ids return their status (or a conflict when their
        payload differs), overflow is rejected."""
        outcomes = []
        for queued in requests:
            known = self._records.get(queued.request_id)
            if known is not None:
                # Digests are only computed for known ids: new requests pay nothing for the check.
                if payload_digest(known.queued.request) != payload_digest(queued.request):
                    outcomes.append(conflicting(queued.request_id))
                else:
                    outcomes.append(SubmitOutcome(queued.request_id, known.status, created=False))
                continue
            size = request_bytes(queued)
            if self._queued >= self.max_size or self._queued_bytes + size > self._max_bytes:
                outcomes.append(self._full(queued.request_id))
                continue
            score = queue_score(queued, aging_s=self._aging)
            record = _Record(queued, RequestStatus.QUEUED, score, seq=next(self._tokens))
            self._records[queued.request_id] = record
            self._queued_bytes += size
            self._enqueue(record)
            outcomes.append(SubmitOutcome(queued.request_id, RequestStatus.QUEUED, created=True))
        return outcomes

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
        """Make a request leasable at its place (its bytes are counted already)."""
        record.status = RequestStatus.QUEUED
        record.token = next(self._tokens)
        record.lease = ""
        group = record.queued.group
        rid = record.queued.request_id
        entry = (record.score, record.seq, record.token, rid)
        heapq.heappush(self._groups.setdefault(group, []), entry)
        heapq.heappush(self._head, (*entry, group))
        provider = self._by_provider.setdefault(record.queued.route.provider, [])
        heapq.heappush(provider, (*entry, group))
        self._queued += 1
        self._work.set()

    def _defer(self, record: _Record, retry_at: float) -> None:
        """Queue a request that must not be leased before `retry_at`."""
        record.status = RequestStatus.QUEUED
        record.token = next(self._tokens)
        record.lease = ""
        record.attempts += 1
        record.retry_at = retry_at
        heapq.heappush(self._retries, (retry_at, record.token, record.queued.request_id))
        self._waiting_retry += 1

    def _unqueue(self, record: _Record) -> None:
        """Take a queued request out of the counts (its heap entries die with its token)."""
        if record.retry_at is None:
            self._queued -= 1
        else:
            self._waiting_retry -= 1
            record.retry_at = None
        self._queued_bytes -= request_bytes(record.queued)
        record.token = -1

    def _is_live(self, rid: str, token: int) -> bool:
        record = self._records.get(rid)
        if record is None or record.token != token:
            return False
        return record.status == RequestStatus.QUEUED

    def _promote_due(self, now: float) -> None:
        """Move retries whose time has come back to their place in the queue."""
        while self._retries and self._retries[0][0] <= now:
            _, token, rid = heapq.heappop(self._retries)
            if self._is_live(rid, token):
                record = self._records[rid]
                record.retry_at = None
                self._waiting_retry -= 1
                self._enqueue(record)

    def _next_retry_at(self) -> float | None:
        while self._retries and not self._is_live(self._retries[0][2], self._retries[0][1]):
            heapq.heappop(self._retries)
        return self._retries[0][0] if self._retries else None

    def _head_group(self, exclude: Collection[ProviderName]) -> str | None:
        """The group of the head of the queue, looking only at providers not in `exclude`."""
        heaps = (
            [h for p, h in self._by_provider.items() if p not in exclude]
            if exclude
            else [self._head]
        )
        best: tuple[float, int, int, str, str] | None = None
        for heap in heaps:
            while heap and not self._is_live(heap[0][3], heap[0][2]):
                heapq.heappop(heap)
            if heap and (best is None or heap[0][:2] < best[:2]):
                best = heap[0]
        return best[4] if best is not None else None

    async def lease(
        self,
        *,
        now: float,
        group: str | None = None,
        max_items: int = 1,
        token: str = "",
        exclude: Collection[ProviderName] = (),
    ) -> Lease:
        """Take the head and more of its group (or only `group`), up to the group's limit, held
        under a token; the head is looked for only among providers not in `exclude`."""
        token = token or f"local-{next(self._leases)}"
        # What wait_for_work waits for: work queued after this lease looked.
        self._work.clear()
        self._promote_due(now)
        if group is None:
            group = self._head_group(exclude)
            if group is None:
                return Lease(token=token, next_retry_at=self._next_retry_at())
        limit = min(max_items, limit_of(group))
        heap = self._groups.get(group, [])
        items: list[QueuedRequest] = []
        expired: list[QueuedRequest] = []
        attempts: dict[str, int] = {}
        while heap and len(items) < limit:
            _, _, entry_token, rid = heapq.heappop(heap)
            if not self._is_live(rid, entry_token):
                continue
            record = self._records[rid]
            self._unqueue(record)
            record.status = RequestStatus.PROCESSING
            record.lease = token
            if record.attempts:
                attempts[rid] = record.attempts
            (expired if _expires(record, now) else items).append(record.queued)
        if not heap:
            self._groups.pop(group, None)
        return Lease(
            items=items,
            expired=expired,
            group=group,
            token=token,
            attempts=attempts,
            next_retry_at=None if items or expired else self._next_retry_at(),
        )

    async def wait_for_work(self, timeout: float) -> None:
        """Return as soon as a request is queued after the last lease looked, or after
        `timeout`."""
        if self._closed:
            return
        try:
            await asyncio.wait_for(self._work.wait(), timeout)
        except TimeoutError:
            return

    def _held(self, rid: str, token: str) -> _Record | None:
        record = self._records.get(rid)
        if record is None or record.status != RequestStatus.PROCESSING or record.lease != token:
            return None
        return record

    async def extend(self, request_ids: Sequence[str], *, token: str, now: float) -> list[str]:
        """Report the ids no longer held under `token`; leases never lapse in-process."""
        lost = []
        for rid in request_ids:
            record = self._records.get(rid)
            ended_by_holder = (
                record is not None and record.status.is_final and record.lease == token
            )
            if self._held(rid, token) is None and not ended_by_holder:
                lost.append(rid)
        return lost

    async def release(
        self, request_ids: Sequence[str], *, token: str, retry_at: float | None = None
    ) -> None:
        """Requeue the requests held under `token` at their original position (with
        `retry_at`, not before that time)."""
        for rid in request_ids:
            record = self._held(rid, token)
            if record is None:
                continue
            self._queued_bytes += request_bytes(record.queued)
            if retry_at is None:
                self._enqueue(record)
            else:
                self._defer(record, retry_at)

    async def complete(
        self, done: Sequence[tuple[QueuedRequest, ComparisonResult]], *, token: str = ""
    ) -> list[bool]:
        """Store and publish each result once, only for its holder (or, without a token, for
        requests never leased); True where the stored result is this holder's."""
        stored, fresh = [], []
        for queued, result in done:
            record = self._records.get(queued.request_id)
            fresh.append(False)
            if record is None or record.status.is_final:
                # A repeat by the holder that ended it: True again, nothing published again.
                stored.append(record is not None and bool(token) and record.lease == token)
                continue
            if token and self._held(queued.request_id, token) is None:
                stored.append(False)
                continue
            if not token:
                if record.status != RequestStatus.QUEUED:
                    stored.append(False)
                    continue
                # Ended without being leased (drain at shutdown): take it out of the count.
                self._unqueue(record)
            record.lease = token
            record.status = result.status
            record.result = result
            record.finished_at = result.completed_at
            read_here = self._replies.reader(queued.reply_to) is not None
            skipped = {"", queued.reply_to} if read_here else {""}
            for channel in {queued.request.result_channel, queued.reply_to} - skipped:
                self._publish(channel, result)
            stored.append(True)
            fresh[-1] = True
        self._replies.deliver(done, fresh)
        return stored

    def reply_here(self, channel: str, deliver: Deliver) -> AbstractContextManager[None]:
        """Results for `channel` go to `deliver` instead of onto the channel while open."""
        return self._replies.open(channel, deliver)

    def _publish(self, name: str, result: ComparisonResult) -> None:
        channel = self._channels.setdefault(name, _Channel())
        channel.entries.append((next(self._cursor), result))
        channel.last_publish = result.completed_at
        channel.changed.set()
        channel.changed = asyncio.Event()

    async def get(self, request_id: str) -> ComparisonResult | None:
        """The stored result, or a status-only result while the request is not done."""
        record = self._records.get(request_id)
        if record is None:
            return None
        if record.result is not None:
            return record.result
        return in_progress(record.queued, record.status)

    async def read_channel(
        self, channel: str, *, cursor: str, timeout: float
    ) -> list[ChannelEntry]:
        """Entries after `cursor`; waits up to `timeout` for the first when there are none."""
        after = int(cursor) if cursor.isascii() and cursor.isdigit() else 0
        state = self._channels.setdefault(channel, _Channel())
        entries = [ChannelEntry(str(n), r) for n, r in state.entries if n > after]
        if entries or timeout <= 0:
            return entries
        if self._closed:
            # Returning nothing at once would let a reader loop spin; tell it why it must stop.
            raise QueueUnavailableError("the in-process queue is closed: server shutting down")
        try:
            await asyncio.wait_for(state.changed.wait(), timeout)
        except TimeoutError:
            return []
        return [ChannelEntry(str(n), r) for n, r in state.entries if n > after]

    async def sweep(self, *, now: float) -> SweepResult:
        """Take expired requests out of the queue and forget results past retention."""
        expired = []
        token = f"local-{next(self._leases)}"
        for record in list(self._records.values()):
            if record.status == RequestStatus.QUEUED and _expires(record, now):
                self._unqueue(record)
                record.status = RequestStatus.PROCESSING
                record.lease = token
                expired.append(record.queued)
            elif record.status.is_final and record.finished_at + self._retention < now:
                del self._records[record.queued.request_id]
        for name, channel in list(self._channels.items()):
            if channel.entries and channel.last_publish + self._retention < now:
                del self._channels[name]
        return SweepResult(expired=expired, token=token)

    async def stats(self, *, now: float) -> QueueStats:
        """Depth by status and the oldest queued age."""
        counts = dict.fromkeys(RequestStatus, 0)
        oldest = now
        for record in self._records.values():
            counts[record.status] += 1
            if record.status == RequestStatus.QUEUED:
                oldest = min(oldest, record.queued.enqueued_at)
        return QueueStats(
            queued=self._queued + self._waiting_retry,
            processing=counts[RequestStatus.PROCESSING],
            completed=counts[RequestStatus.COMPLETED],
            failed=counts[RequestStatus.FAILED],
            expired=counts[RequestStatus.EXPIRED],
            oldest_queued_age_s=max(0.0, now - oldest),
        )

    async def ping(self) -> None:
        """The in-process queue is always reachable."""

    async def close(self) -> None:
        """Wake every waiter so loops can notice shutdown."""
        self._closed = True
        self._work.set()
        for channel in self._channels.values():
            channel.changed.set()

    def pending(self) -> list[QueuedRequest]:
        """Queued requests in queue order (used to end them at shutdown)."""
        live = [r for r in self._records.values() if r.status == RequestStatus.QUEUED]
        return [r.queued for r in sorted(live, key=lambda r: (r.score, r.seq))]


def _expires(record: _Record, now: float) -> bool:
    """Past its TTL, and never attempted: once a request has cost a provider call, it is retried
    to the end however late, never ended EXPIRED."""
    return record.attempts == 0 and record.queued.is_expired(now)
