"""The lease keeper: keeps one bundle's leases alive from the moment they are taken until each of
its requests is stored or given back, and says which ones were lost.

A lease that lapses while its holder still works on it lets another replica take the request over
and call the provider for it a second time. So the keeper extends the bundle's leases every third
of `LPS_QUEUE_LEASE_SECONDS` while the bundle fills, while it calls the provider and while its
results are stored. A failed extension (Redis stalled or restarting) is logged and tried again at
the next beat; the keeper never stops on an error, and says so in the log when the leases can no
longer be extended before they lapse. When Redis reports that a request is no longer held under
the bundle's token, the keeper records it as lost: its holder must neither store nor release it
(the fenced scripts would refuse anyway) and drops the provider's answer for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence

from lps_server.core.errors import QueueUnavailableError
from lps_server.queue.base import QueueBackend

log = logging.getLogger(__name__)
# The most request ids one log line lists.
LOGGED_IDS = 20


class LeaseKeeper:
    """The leases of one bundle, all held under one token.

    Args:
        queue: the queue the leases are in.
        token: the lease token of the bundle.
        lease_s: LPS_QUEUE_LEASE_SECONDS; the keeper extends every third of it.
        clock: Unix time source (the clock lease deadlines are set with).
        request_ids: the requests held from the start.
        taken_at: when the leases were taken (by `clock`); they lapse `lease_s` later.
    """

    def __init__(
        self,
        *,
        queue: QueueBackend,
        token: str,
        lease_s: float,
        clock: Callable[[], float],
        request_ids: Iterable[str],
        taken_at: float,
    ) -> None:
        self.token = token
        self.lease_s = lease_s
        self.clock = clock
        self._queue = queue
        # A dict keeps the order of the ids, so extensions and logs list them as leased.
        self._held = dict.fromkeys(request_ids)
        self._lost: set[str] = set()
        self._gone: set[str] = set()
        self._losing = asyncio.Lock()
        self._valid_until = taken_at + lease_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin extending, every third of a lease period."""
        if self._task is None:
            self._task = asyncio.create_task(self._beat())

    async def stop(self) -> None:
        """Stop extending (what is still held lapses unless someone else acts)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def hold(self, request_ids: Iterable[str]) -> None:
        """Keep these requests too (leased later under the same token)."""
        self._held.update(dict.fromkeys(request_ids))

    def let_go(self, request_ids: Iterable[str]) -> None:
        """Stop keeping these requests: they were stored or given back."""
        for rid in request_ids:
            self._held.pop(rid, None)

    @property
    def held(self) -> list[str]:
        """The requests still kept, in lease order."""
        return list(self._held)

    def is_lost(self, request_id: str) -> bool:
        """True when another holder took the request over: do not store or release it."""
        return request_id in self._lost

    def lapsed(self) -> bool:
        """True once the last confirmed lease deadline has passed: from then on another replica
        may take the requests over at any moment."""
        return self.clock() >= self._valid_until

    async def confirm(self) -> bool:
        """Before money is spent: True when the leases are known to be held for at least
        another beat. When they may lapse sooner (the process was frozen, Redis was slow), they
        are extended now, which also tells which were lost; False when that fails and they may
        have lapsed already, so the caller should not call the provider for them."""
        if self._valid_until - self.clock() > self.lease_s / 3.0:
            return True
        await self._extend()
        return not self.lapsed()

    async def mark_called(self, request_ids: Sequence[str]) -> None:
        """Before their provider call: extend the leases of `request_ids` and mark them as
        called, so that a holder dying mid-call leaves them with one attempt counted (a request
        past its TTL that already cost a call is then never ended EXPIRED).

        Raises:
            QueueUnavailableError: the mark could not be written; the call must not go out,
                since the queue could not record it (docs/queue.md).
        """
        ids = [rid for rid in request_ids if rid in self._held]
        if not ids:
            return
        sent_at = self.clock()
        lost = await self._queue.extend(ids, token=self.token, now=sent_at, calling=True)
        if len(ids) == len(self._held):
            self._valid_until = sent_at + self.lease_s
        await self.lose(lost)

    async def give_back(self, request_ids: Sequence[str] | None = None) -> None:
        """Return requests to the queue (by default every one still held) and stop keeping them.
        When the queue cannot be reached, they stay leased until their leases lapse and a sweep
        reclaims them: logged, never raised."""
        ids = self.held if request_ids is None else list(request_ids)
        if not ids:
            return
        try:
            await self._queue.release(ids, token=self.token)
        except QueueUnavailableError as exc:
            log.warning(
                "could not give back %d request(s); their leases lapse and a sweep reclaims "
                "them: %s",
                len(ids),
                exc,
                extra={"lease_token": self.token},
            )
        self.let_go(ids)

    def is_gone(self, request_id: str) -> bool:
        """True when the request was lost because the queue no longer knows it at all (its
        backend lost its data): nobody else holds it, and nobody will call the provider again."""
        return request_id in self._gone

    async def lose(self, request_ids: Iterable[str]) -> list[str]:
        """Record requests as lost (a fenced call refused them); return those of them another
        holder took over (also when the keeper had noticed already). Those the queue no longer
        knows at all are told apart (one look-up, only on this rare path): logged as lost with
        the queue's data, not as taken over."""
        refused = list(request_ids)
        # One at a time: a beat and a refused complete may report the same requests at once,
        # and the second must see how the first classed them.
        async with self._losing:
            await self._classify([rid for rid in refused if rid in self._held])
        return [rid for rid in refused if rid not in self._gone]

    async def _classify(self, lost: list[str]) -> None:
        if not lost:
            return
        self.let_go(lost)
        self._lost.update(lost)
        try:
            gone = (await self._queue.ended_results(lost)).unknown
        except QueueUnavailableError:
            gone = frozenset()
        if gone:
            self._gone.update(gone)
            log.error(
                "the queue no longer knows %d request(s) this replica held (it lost its data: "
                "Redis restarted without persistence, or flushed); their results cannot be "
                "stored, and their clients are told to submit them again: %s",
                len(gone),
                ", ".join(sorted(gone)[:LOGGED_IDS]),
                extra={"lease_token": self.token, "request_ids": sorted(gone)[:LOGGED_IDS]},
            )
        if taken := [rid for rid in lost if rid not in gone]:
            self._log_taken_over(taken)

    def _log_taken_over(self, lost: list[str]) -> None:
        log.warning(
            "lost the lease of %d request(s) to another holder; their results will not be "
            "stored here: %s",
            len(lost),
            ", ".join(lost[:LOGGED_IDS]),
            extra={"lease_token": self.token, "request_ids": lost[:LOGGED_IDS]},
        )

    async def _beat(self) -> None:
        period = self.lease_s / 3.0
        next_beat = time.monotonic() + period
        while True:
            await asyncio.sleep(max(0.0, next_beat - time.monotonic()))
            # Beats stay on their grid: an extension that took long (a stalled Redis) is followed
            # by the next one at once, not a period later.
            next_beat = max(next_beat + period, time.monotonic())
            if self._held:
                await self._extend()

    async def _extend(self) -> None:
        ids = self.held
        sent_at = self.clock()
        try:
            lost = await self._queue.extend(ids, token=self.token, now=sent_at)
        except QueueUnavailableError as exc:
            self._report_failure(len(ids), exc)
            return
        except Exception:  # a bug must not end the heartbeat: leases would lapse silently
            log.exception("extending %d leases failed unexpectedly; trying again", len(ids))
            return
        self._valid_until = sent_at + self.lease_s
        await self.lose(lost)

    def _report_failure(self, count: int, exc: Exception) -> None:
        left = self._valid_until - self.clock()
        if left > 0:
            log.warning(
                "could not extend the leases of %d request(s), trying again at the next beat; "
                "they lapse in %.1fs: %s",
                count,
                left,
                exc,
                extra={"lease_token": self.token},
            )
        else:
            log.error(
                "could not extend the leases of %d request(s) before they lapsed %.1fs ago; "
                "another replica may take them over and call the provider again: %s",
                count,
                -left,
                exc,
                extra={"lease_token": self.token},
            )
