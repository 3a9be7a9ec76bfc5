"""Looks up, in batches, the results that this replica's open streams still wait for.

A `SubmitComparisons` call has its results pushed to it: in memory when this replica stored them,
on its reply channel when another did. Two kinds are never pushed to it. A request id the client
sent again after an earlier call had submitted it (a client that reconnected) has its result
published on the earlier call's channel. And a result whose hand-over was lost (its `complete`
stored it but the reply never came back) reached no channel of this call. So the store is asked.

* An id known before the call is looked up at once, then after 1, 2, 4 s and every
  `KNOWN_MAX_INTERVAL_S` from then on.
* Every other awaited id is looked up every `recheck_s` (LPS_STREAM_RECHECK_SECONDS): a safety
  net for a result stored but not delivered.
* An id the queue does not know at all (accepted, yet neither queued, processing nor ended: the
  backend lost its data) is answered at once with a FAILED `request_lost` result, so the client
  resubmits instead of waiting forever.

One `ResultWatch` serves every stream of the replica: the ids due at one moment, from any number
of streams, go to the queue in one batched lookup (`QueueBackend.ended_results`), never one round
trip per id.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from lps_server.core.domain import ComparisonResult
from lps_server.core.errors import LpsError
from lps_server.processing.results import lost
from lps_server.queue.base import EndedResults

log = logging.getLogger(__name__)
KNOWN_FIRST_INTERVAL_S = 1.0
KNOWN_MAX_INTERVAL_S = 5.0
BATCH = 1000
Lookup = Callable[[Sequence[str]], Awaitable[EndedResults]]
Deliver = Callable[[ComparisonResult], None]


class WatchedIds:
    """The ids one stream waits for; found results go to its `deliver`."""

    def __init__(self, watch: ResultWatch, deliver: Deliver) -> None:
        self._watch = watch
        self._deliver = deliver
        self._ids: set[str] = set()

    def add(self, request_id: str, *, known: bool) -> None:
        """Wait for `request_id`; `known` when an earlier call submitted it."""
        if request_id not in self._ids:
            self._ids.add(request_id)
            self._watch.schedule(self, request_id, known=known)

    def discard(self, request_id: str) -> None:
        """Stop waiting for `request_id` (its result arrived another way)."""
        self._ids.discard(request_id)

    def close(self) -> None:
        """Stop waiting for every id (the call ended)."""
        self._ids.clear()

    def awaits(self, request_id: str) -> bool:
        """Whether the stream still waits for `request_id`."""
        return request_id in self._ids

    def found(self, result: ComparisonResult) -> None:
        """Hand a looked-up result to the stream."""
        self._ids.discard(result.request_id)
        self._deliver(result)


class ResultWatch:
    """Batched look-ups of awaited results for every stream of one replica.

    Args:
        lookup: the queue's `ended_results`.
        recheck_s: how often an id the call submitted itself is looked up.
        clock: monotonic time source.
    """

    def __init__(
        self,
        *,
        lookup: Lookup,
        recheck_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._recheck_s = recheck_s
        self._clock = clock
        # (due, tie-break, stream, id, interval it waited, known before the call)
        self._due: list[tuple[float, int, WatchedIds, str, float, bool]] = []
        self._ties = itertools.count()
        self._sooner = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def open(self, deliver: Deliver) -> WatchedIds:
        """A new stream's set of awaited ids."""
        return WatchedIds(self, deliver)

    def schedule(self, watched: WatchedIds, request_id: str, *, known: bool) -> None:
        """Look `request_id` up for `watched`: at once if known before the call, else later."""
        if self._closed:
            return
        self._push(watched, request_id, 0.0 if known else self._recheck_s, known)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    def _push(self, watched: WatchedIds, rid: str, interval: float, known: bool) -> None:
        due = self._clock() + interval
        if not self._due or due < self._due[0][0]:
            self._sooner.set()
        heapq.heappush(self._due, (due, next(self._ties), watched, rid, interval, known))

    def _next_interval(self, interval: float, known: bool) -> float:
        if not known:
            return self._recheck_s
        return min(max(interval * 2, KNOWN_FIRST_INTERVAL_S), KNOWN_MAX_INTERVAL_S)

    async def _run(self) -> None:
        while self._due:
            wait = self._due[0][0] - self._clock()
            if wait > 0:
                self._sooner.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._sooner.wait(), wait)
                continue
            due = self._take_due()
            if due:
                await self._check(due)

    def _take_due(self) -> list[tuple[WatchedIds, str, float, bool]]:
        now = self._clock()
        taken: list[tuple[WatchedIds, str, float, bool]] = []
        while self._due and self._due[0][0] <= now and len(taken) < BATCH:
            _, _, watched, rid, interval, known = heapq.heappop(self._due)
            if watched.awaits(rid):  # else answered meanwhile, or the call ended
                taken.append((watched, rid, interval, known))
        return taken

    async def _check(self, due: list[tuple[WatchedIds, str, float, bool]]) -> None:
        ids = list(dict.fromkeys(rid for _, rid, _, _ in due))
        try:
            looked_up = await self._lookup(ids)
        except LpsError as exc:
            log.warning(
                "could not look up %d results that streams await; trying again later: %s",
                len(ids),
                exc,
            )
            looked_up = EndedResults()
        except Exception:  # a result this release cannot read: the others must still be found
            log.exception("looking up %d results that streams await failed", len(ids))
            looked_up = EndedResults()
        found = looked_up.results
        if gone := [rid for rid in ids if rid in looked_up.unknown]:
            log.error(
                "the queue no longer knows %d request(s) that streams await (it lost its data: "
                "Redis restarted without persistence, or flushed); telling their clients to "
                "submit them again: %s",
                len(gone),
                ", ".join(gone[:20]),
                extra={"request_ids": gone[:20]},
            )
        now = time.time()
        for watched, rid, interval, known in due:
            if not watched.awaits(rid):
                continue
            if rid in looked_up.unknown:
                # Accepted, yet neither queued, processing nor ended: waiting would be forever.
                watched.found(lost(rid, now))
                continue
            result = found.get(rid)
            if result is None:
                self._push(watched, rid, self._next_interval(interval, known), known)
                continue
            if not known:
                log.warning(
                    "request %s had ended in the store but its result had not reached its "
                    "stream (its hand-over or publish was lost, or is still on its way); "
                    "delivered from the store",
                    rid,
                    extra={"request_id": rid},
                )
            watched.found(result)

    async def close(self) -> None:
        """Stop looking results up."""
        self._closed = True
        self._due.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
