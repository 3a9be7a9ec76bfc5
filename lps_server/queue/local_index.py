"""Where the in-process queue's requests wait: one record per request not yet ended, and the heaps
that find them in queue order.

Queued requests wait in one heap per compatibility key, one per provider and a global heap that
finds the head of the queue; entries taken from one heap are skipped lazily in the others (each
entry carries the token it was queued with, and a record's token changes whenever it is queued
again or taken). Requests waiting for a retry wait in a heap by due time until a lease moves them
back. Two more heaps index queued requests by deadline and by enqueue time, so a sweep and
`stats()` look only at what is due or at the head, never at every record.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Collection
from dataclasses import dataclass

from lps_server.core.domain import ProviderName, QueuedRequest, RequestStatus
from lps_server.queue.ordering import request_bytes


@dataclass(slots=True)
class Record:
    """A request that has not ended (queued, waiting for a retry, or processing)."""

    queued: QueuedRequest
    status: RequestStatus
    score: float
    # Submission order: breaks ties between equal scores, and is kept when a request is released
    # so it goes back to exactly its place (the token changes with every enqueue).
    seq: int = 0
    token: int = 0
    # The token of the lease that holds it.
    lease: str = ""
    attempts: int = 0
    # A provider call went out for it under the current lease (`extend(calling=True)`).
    called: bool = False
    # When a request waiting for a retry becomes due; None for every other request.
    retry_at: float | None = None

    def expires(self, now: float) -> bool:
        """Past its TTL, and never attempted: once a request has cost a provider call, it is
        retried to the end however late, never ended EXPIRED."""
        return self.attempts == 0 and self.queued.is_expired(now)


_Entry = tuple[float, int, int, str]  # (score, seq, token, id)
_HeadEntry = tuple[float, int, int, str, str]  # the same, and the group


class QueuedIndex:
    """The records of the requests not yet ended, and the heaps of those queued.

    `queued` counts the requests leasable now, `waiting_retry` those waiting for a retry,
    `queued_bytes` the bytes of both; `work` is set whenever a request becomes leasable.
    """

    def __init__(self) -> None:
        self.records: dict[str, Record] = {}
        self._groups: dict[str, list[_Entry]] = {}
        self._head: list[_HeadEntry] = []
        self._by_provider: dict[ProviderName, list[_HeadEntry]] = {}
        self._retries: list[tuple[float, int, str]] = []
        # (deadline or enqueue time, token, id) of queued requests; stale entries skipped lazily.
        self._deadlines: list[tuple[float, int, str]] = []
        self._enqueue_times: list[tuple[float, int, str]] = []
        self._tokens = itertools.count(1)
        self.queued = 0
        self.waiting_retry = 0
        self.queued_bytes = 0
        self.work = asyncio.Event()

    def new_seq(self) -> int:
        """A submission sequence number (from the same counter as the tokens)."""
        return next(self._tokens)

    def enqueue(self, record: Record) -> None:
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
        if record.queued.deadline is not None and not record.attempts:
            heapq.heappush(self._deadlines, (record.queued.deadline, record.token, rid))
        heapq.heappush(self._enqueue_times, (record.queued.enqueued_at, record.token, rid))
        self.queued += 1
        self.work.set()

    def defer(self, record: Record, retry_at: float) -> None:
        """Queue a request that must not be leased before `retry_at`, one more failed attempt
        counted."""
        record.status = RequestStatus.QUEUED
        record.token = next(self._tokens)
        record.lease = ""
        record.attempts += 1
        record.retry_at = retry_at
        rid = record.queued.request_id
        heapq.heappush(self._retries, (retry_at, record.token, rid))
        heapq.heappush(self._enqueue_times, (record.queued.enqueued_at, record.token, rid))
        self.waiting_retry += 1
        # An idle dispatcher's next lease learns when the retry is due; without this wake it
        # would sleep its idle timeout past a retry due at once (Retry-After: 0).
        self.work.set()

    def unqueue(self, record: Record) -> None:
        """Take a queued request out of the counts (its heap entries die with its token)."""
        if record.retry_at is None:
            self.queued -= 1
        else:
            self.waiting_retry -= 1
            record.retry_at = None
        self.queued_bytes -= request_bytes(record.queued)
        record.token = -1

    def _is_live(self, rid: str, token: int) -> bool:
        record = self.records.get(rid)
        if record is None or record.token != token:
            return False
        return record.status == RequestStatus.QUEUED

    def promote_due(self, now: float) -> None:
        """Move retries whose time has come back to their place in the queue."""
        while self._retries and self._retries[0][0] <= now:
            _, token, rid = heapq.heappop(self._retries)
            if self._is_live(rid, token):
                record = self.records[rid]
                record.retry_at = None
                self.waiting_retry -= 1
                self.enqueue(record)

    def next_retry_at(self) -> float | None:
        """When the earliest waiting retry becomes due, or None."""
        while self._retries and not self._is_live(self._retries[0][2], self._retries[0][1]):
            heapq.heappop(self._retries)
        return self._retries[0][0] if self._retries else None

    def head_group(self, exclude: Collection[ProviderName]) -> str | None:
        """The group of the head of the queue, looking only at providers not in `exclude`."""
        heaps = (
            [h for p, h in self._by_provider.items() if p not in exclude]
            if exclude
            else [self._head]
        )
        best: _HeadEntry | None = None
        for heap in heaps:
            while heap and not self._is_live(heap[0][3], heap[0][2]):
                heapq.heappop(heap)
            if heap and (best is None or heap[0][:2] < best[:2]):
                best = heap[0]
        return best[4] if best is not None else None

    def take(self, group: str, limit: int, *, now: float) -> list[Record]:
        """Take queued requests of `group` out of the queue, in queue order, until `limit` of
        them are unexpired (those found expired on the way are taken too, not counted)."""
        heap = self._groups.get(group, [])
        taken: list[Record] = []
        unexpired = 0
        while heap and unexpired < limit:
            _, _, entry_token, rid = heapq.heappop(heap)
            if not self._is_live(rid, entry_token):
                continue
            record = self.records[rid]
            self.unqueue(record)
            taken.append(record)
            unexpired += not record.expires(now)
        if not heap:
            self._groups.pop(group, None)
        return taken

    def take_expired(self, now: float) -> list[Record]:
        """Take the queued requests past their TTL (and never attempted) out of the queue."""
        taken = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, entry_token, rid = heapq.heappop(self._deadlines)
            if not self._is_live(rid, entry_token):
                continue  # leased, ended or requeued since (a newer entry stands for it)
            record = self.records[rid]
            if not record.expires(now):
                continue  # attempted already: retried to the end, never EXPIRED
            self.unqueue(record)
            taken.append(record)
        return taken

    def oldest_queued(self) -> float | None:
        """The enqueue time of the oldest queued request (dropping stale index entries)."""
        while self._enqueue_times:
            enqueued_at, token, rid = self._enqueue_times[0]
            if self._is_live(rid, token):
                return enqueued_at
            heapq.heappop(self._enqueue_times)
        return None
