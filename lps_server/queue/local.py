"""The embedded in-process queue: the default backend, with the same semantics as Redis.

Requests not yet ended, and the heaps that find them in queue order, are in `local_index`; this
module leases, extends, releases and completes them. Leases are fenced by a token as in Redis,
though in-process they never lapse. Ended requests are kept in the order they ended, so a sweep
looks only at what is due. An ended request keeps only its result and the token that ended it
(`local_ended`): its essays are dropped. Nothing survives the process: for durability and many
replicas use Redis.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext

from lps_server.core.bundling import limit_of
from lps_server.core.domain import ComparisonResult, ProviderName, QueuedRequest, RequestStatus
from lps_server.queue.base import (
    ChannelEntry,
    ChannelFollower,
    EndedResults,
    Lease,
    QueueStats,
    SubmitOutcome,
    SweepResult,
    conflicting,
    in_progress,
    queue_full,
)
from lps_server.queue.local_batch_jobs import LocalBatchJobs
from lps_server.queue.local_channels import LocalChannels
from lps_server.queue.local_ended import EndedRequests
from lps_server.queue.local_index import QueuedIndex, Record
from lps_server.queue.ordering import queue_score, request_bytes
from lps_server.queue.payload_digest import payload_digest
from lps_server.queue.replies import Deliver, LocalReplies


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
        self._index = QueuedIndex()
        self._records = self._index.records
        self._ended = EndedRequests()
        self._leases = itertools.count(1)
        self._processing = 0
        self._channels = LocalChannels()
        self._replies = LocalReplies()
        self._closed = False
        self._batch_jobs = LocalBatchJobs(self)

    async def submit(self, requests: Sequence[QueuedRequest]) -> list[SubmitOutcome]:
        """Enqueue new requests; known ids return their status (or a conflict when their
        payload differs), overflow is rejected."""
        outcomes = []
        for queued in requests:
            known = self._known(queued.request_id)
            if known is not None:
                status, digest = known
                # Digests are only computed for known ids: new requests pay nothing for the check.
                if digest != payload_digest(queued.request):
                    outcomes.append(conflicting(queued.request_id))
                else:
                    outcomes.append(SubmitOutcome(queued.request_id, status, created=False))
                continue
            size = request_bytes(queued)
            index = self._index
            if index.queued >= self.max_size or index.queued_bytes + size > self._max_bytes:
                outcomes.append(self._full(queued.request_id))
                continue
            score = queue_score(queued, aging_s=self._aging)
            record = Record(queued, RequestStatus.QUEUED, score, seq=index.new_seq())
            self._records[queued.request_id] = record
            index.queued_bytes += size
            index.enqueue(record)
            outcomes.append(SubmitOutcome(queued.request_id, RequestStatus.QUEUED, created=True))
        return outcomes

    def _known(self, request_id: str) -> tuple[RequestStatus, str] | None:
        """The status and payload digest of a known request, or None."""
        record = self._records.get(request_id)
        if record is not None:
            return record.status, payload_digest(record.queued.request)
        ended = self._ended.get(request_id)
        return (ended.result.status, ended.digest) if ended is not None else None

    def _full(self, request_id: str) -> SubmitOutcome:
        return queue_full(request_id, f"{self.max_size} requests or {self._max_bytes} bytes")

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
        self._index.work.clear()
        self._index.promote_due(now)
        if group is None:
            group = self._index.head_group(exclude)
            if group is None:
                return Lease(token=token, next_retry_at=self._index.next_retry_at())
        items: list[QueuedRequest] = []
        expired: list[QueuedRequest] = []
        attempts: dict[str, int] = {}
        for record in self._index.take(group, min(max_items, limit_of(group)), now=now):
            self._hold(record, token)
            if record.attempts:
                attempts[record.queued.request_id] = record.attempts
            (expired if record.expires(now) else items).append(record.queued)
        return Lease(
            items=items,
            expired=expired,
            group=group,
            token=token,
            attempts=attempts,
            next_retry_at=None if items or expired else self._index.next_retry_at(),
        )

    async def wait_for_work(self, timeout: float) -> None:
        """Return as soon as a request is queued after the last lease looked, or after
        `timeout`."""
        if self._closed:
            return
        try:
            await asyncio.wait_for(self._index.work.wait(), timeout)
        except TimeoutError:
            return

    def _hold(self, record: Record, token: str) -> None:
        """Lease a request taken out of the queue under `token`."""
        record.status = RequestStatus.PROCESSING
        self._processing += 1
        record.lease = token

    def _held(self, rid: str, token: str) -> Record | None:
        record = self._records.get(rid)
        if record is None or record.status != RequestStatus.PROCESSING or record.lease != token:
            return None
        return record

    async def extend(
        self, request_ids: Sequence[str], *, token: str, now: float, calling: bool = False
    ) -> list[str]:
        """Report the ids no longer held under `token` (with `calling`, mark the held ones as
        called); leases never lapse in-process."""
        lost = []
        for rid in request_ids:
            record = self._held(rid, token)
            if record is not None:
                record.called = record.called or calling
                continue
            ended = self._ended.get(rid)
            if ended is None or ended.lease != token:
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
            self._processing -= 1
            self._index.queued_bytes += request_bytes(record.queued)
            if record.called and retry_at is None:
                record.attempts += 1  # given back mid-call: that call was an attempt
            record.called = False
            if retry_at is None:
                self._index.enqueue(record)
            else:
                self._index.defer(record, retry_at)

    async def complete(
        self, done: Sequence[tuple[QueuedRequest, ComparisonResult]], *, token: str = ""
    ) -> list[bool]:
        """Store and publish each result once, only for its holder (or, without a token, for
        requests never leased); True where the stored result is this holder's."""
        stored, fresh = [], []
        for queued, result in done:
            rid = queued.request_id
            record = self._records.get(rid)
            fresh.append(False)
            if record is None:
                # A repeat by the holder that ended it: True again, nothing published again.
                ended = self._ended.get(rid)
                stored.append(ended is not None and bool(token) and ended.lease == token)
                continue
            if token and self._held(rid, token) is None:
                stored.append(False)
                continue
            if not token:
                if record.status != RequestStatus.QUEUED:
                    stored.append(False)
                    continue
                # Ended without being leased (drain at shutdown): take it out of the count.
                self._index.unqueue(record)
            else:
                self._processing -= 1
            del self._records[rid]
            self._ended.add(rid, result, lease=token, digest=payload_digest(queued.request))
            now = result.completed_at
            self._publish(queued.request.result_channel, result, now=now, ttl=self._retention)
            if self._replies.reader(queued.reply_to) is None:
                self._publish(queued.reply_to, result, now=now, ttl=self._reply_ttl)
            stored.append(True)
            fresh[-1] = True
        self._replies.deliver(done, fresh)
        return stored

    def reply_here(self, channel: str, deliver: Deliver) -> AbstractContextManager[None]:
        """Results for `channel` go to `deliver` instead of onto the channel while open."""
        return self._replies.open(channel, deliver)

    def _publish(self, channel: str, result: ComparisonResult, *, now: float, ttl: float) -> None:
        if channel:
            self._channels.publish(channel, result, now=now, ttl=ttl)

    async def get(self, request_id: str) -> ComparisonResult | None:
        """The stored result, or a status-only result while the request is not done."""
        ended = self._ended.get(request_id)
        if ended is not None:
            return ended.result
        record = self._records.get(request_id)
        return None if record is None else in_progress(record.queued, record.status)

    async def ended_results(self, request_ids: Sequence[str]) -> EndedResults:
        """The stored results of those of `request_ids` that have ended, and the unknown ids."""
        found = {}
        unknown = set()
        for rid in request_ids:
            ended = self._ended.get(rid)
            if ended is not None:
                found[rid] = ended.result
            elif rid not in self._records:
                unknown.add(rid)
        return EndedResults(found, frozenset(unknown))

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
        token = f"local-{next(self._leases)}"
        for record in self._index.take_expired(now):
            self._hold(record, token)
            expired.append(record.queued)
        self._ended.forget_before(now - self._retention)
        self._channels.forget_idle(now)
        self._index.oldest_queued()  # drops stale entries from the front of the index
        return SweepResult(expired=expired, token=token)

    async def stats(self, *, now: float) -> QueueStats:
        """Depth by status and the oldest queued age."""
        oldest = self._index.oldest_queued()
        return QueueStats(
            queued=self._index.queued + self._index.waiting_retry,
            processing=self._processing,
            completed=self._ended.count(RequestStatus.COMPLETED),
            failed=self._ended.count(RequestStatus.FAILED),
            expired=self._ended.count(RequestStatus.EXPIRED),
            oldest_queued_age_s=max(0.0, now - oldest) if oldest is not None else 0.0,
        )

    async def ping(self) -> None:
        """The in-process queue is always reachable."""

    async def close(self) -> None:
        """Wake every waiter so loops can notice shutdown."""
        self._closed = True
        self._index.work.set()
        self._channels.close()

    def batch_jobs(self) -> LocalBatchJobs:
        """The batch jobs kept beside this queue."""
        return self._batch_jobs

    def hand_over(self, held: Mapping[str, str], to: str) -> list[str]:
        """Move requests held under their tokens (`held`) under the token `to`, all or nothing:
        the ids not held are returned, and then nothing moved."""
        missing = [rid for rid, token in held.items() if self._held(rid, token) is None]
        if not missing:
            for rid in held:
                self._records[rid].lease = to
        return missing

    def held_by(self, request_ids: Sequence[str], token: str) -> dict[str, QueuedRequest]:
        """The queued form of those requests held under `token`."""
        records = ((rid, self._held(rid, token)) for rid in request_ids)
        return {rid: r.queued for rid, r in records if r is not None}

    def pending(self) -> list[QueuedRequest]:
        """Queued requests in queue order (used to end them at shutdown)."""
        live = [r for r in self._records.values() if r.status == RequestStatus.QUEUED]
        return [r.queued for r in sorted(live, key=lambda r: (r.score, r.seq))]
