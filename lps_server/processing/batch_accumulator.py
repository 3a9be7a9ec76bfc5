"""Gathering the requests of one batch group into a job: up to LPS_BATCH_API_MAX_REQUESTS_PER_BATCH
(and the provider's size limit) for at most LPS_BATCH_API_MAX_WAIT_MS from the first one, then
the job is recorded with them and created at the provider.

The dispatcher hands over each leased bundle of a batch group (`run`, the bundle runner's
signature); the gathering also leases more of its group itself. Until the job is recorded, the
requests stay leased and lease keepers keep their leases alive, so a replica that dies while
gathering loses nothing: its leases lapse and the requests are reclaimed. Recording the job moves
them under the job's token in one step; from then on the job owns them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from lps_server.core.bundling import limit_of
from lps_server.core.config import Settings
from lps_server.core.domain import (
    BundleFacts,
    ErrorCode,
    Failure,
    ProcessingMode,
    QueuedRequest,
)
from lps_server.core.errors import QueueUnavailableError
from lps_server.processing.batch_claims import JobClaim
from lps_server.processing.batch_creation import JobCreator
from lps_server.processing.batch_lines import new_job_id, plan_lines
from lps_server.processing.endings import RequestEndings
from lps_server.processing.leases import LeaseKeeper
from lps_server.processing.results import failed
from lps_server.processing.retries import GaveUp, settle
from lps_server.providers.batch_base import BatchApi
from lps_server.providers.batch_registry import BatchApis
from lps_server.queue.base import QueueBackend
from lps_server.queue.batch_jobs import BatchJobStore, NewJob
from lps_server.queue.ordering import request_bytes

log = logging.getLogger(__name__)
# What a line adds to its requests' text in the upload: the prompt, the answer schema, JSON.
LINE_OVERHEAD_BYTES = 4096
# How many times a job is recorded again without requests another holder took meanwhile.
OPEN_ATTEMPTS = 3


@dataclass(eq=False)
class _Gathering:
    """The requests of one group gathered so far, and the lease keepers that hold them."""

    group: str
    opened_at: float
    keepers: list[LeaseKeeper] = field(default_factory=list)
    items: list[QueuedRequest] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    size: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    flush_now: bool = False

    def add(
        self, items: Sequence[QueuedRequest], attempts: Mapping[str, int], keeper: LeaseKeeper
    ) -> None:
        for queued in items:
            self.items.append(queued)
            self.tokens[queued.request_id] = keeper.token
            self.size += request_bytes(queued) + LINE_OVERHEAD_BYTES // max(1, limit_of(self.group))
            if queued.request_id in attempts:
                self.attempts[queued.request_id] = attempts[queued.request_id]


class BatchAccumulator:
    """Gathers batch-path requests into jobs, one gathering per compatibility group.

    Args:
        queue: the queue backend.
        jobs: the batch-job store.
        apis: the providers' batch APIs.
        creator: creates recorded jobs at their providers.
        settings: batch size and wait, lease period.
        endings: how expired and unreadable requests met while leasing are ended.
        clock: Unix time source.
    """

    def __init__(
        self,
        *,
        queue: QueueBackend,
        jobs: BatchJobStore,
        apis: BatchApis,
        creator: JobCreator,
        settings: Settings,
        endings: RequestEndings,
        clock: Callable[[], float],
    ) -> None:
        self._queue = queue
        self._jobs = jobs
        self._apis = apis
        self._creator = creator
        self._settings = settings
        self._endings = endings
        self._clock = clock
        self._gatherings: dict[str, _Gathering] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(
        self, items: list[QueuedRequest], *, keeper: LeaseKeeper, attempts: Mapping[str, int]
    ) -> None:
        """Take over a leased bundle of a batch group: its leases are kept here from now on, and
        it joins its group's gathering (started now when there is none)."""
        route = items[0].route
        api = self._apis.get(route.provider)
        if api is None:
            await self._unavailable(items, keeper.token)
            keeper.let_go(q.request_id for q in items)
            return
        # The dispatcher's keeper stops when this returns: keepers of the gatherings take over.
        self._adopt(items, attempts, token=keeper.token, api=api)
        keeper.let_go(q.request_id for q in items)

    def _adopt(
        self,
        items: Sequence[QueuedRequest],
        attempts: Mapping[str, int],
        *,
        token: str,
        api: BatchApi,
    ) -> None:
        """Add leased requests to their group's gathering, opening new ones as they fill, with a
        lease keeper of their own in each."""
        group = items[0].group
        rest = list(items)
        while rest:
            gathering = self._gatherings.get(group)
            if gathering is None or self._room(gathering, api) == 0:
                gathering = self._open_gathering(group, api)
            room = self._room(gathering, api)
            part, rest = rest[:room], rest[room:]
            # Extended at most a beat ago, so the leases hold for two more beats at least.
            lease_s = self._settings.queue_lease_seconds
            own = LeaseKeeper(
                queue=self._queue,
                token=token,
                lease_s=lease_s,
                clock=self._clock,
                request_ids=[q.request_id for q in part],
                taken_at=self._clock() - lease_s / 3.0,
            )
            own.start()
            gathering.keepers.append(own)
            gathering.add(part, attempts, own)
            if self._room(gathering, api) == 0:
                gathering.ready.set()

    def _open_gathering(self, group: str, api: BatchApi) -> _Gathering:
        """A new gathering of `group`; a full one before it goes on to its submission."""
        gathering = self._gatherings[group] = _Gathering(group, opened_at=self._clock())
        task = asyncio.create_task(self._gather(gathering, api))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return gathering

    def _room(self, gathering: _Gathering, api: BatchApi) -> int:
        """How many more requests the gathering's job may take."""
        if gathering.size >= api.max_bytes:
            return 0
        most = min(self._settings.batch_api_max_requests_per_batch, api.max_lines)
        return max(0, most - len(gathering.items))

    def _full(self, gathering: _Gathering, api: BatchApi) -> bool:
        return self._room(gathering, api) == 0

    async def _gather(self, gathering: _Gathering, api: BatchApi) -> None:
        try:
            await self._top_up(gathering, api)
            deadline = gathering.opened_at + self._settings.batch_api_max_wait_ms / 1000.0
            while not (self._full(gathering, api) or gathering.flush_now):
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gathering.ready.wait(), remaining)
            await self._top_up(gathering, api)
        except asyncio.CancelledError:
            await self._give_back(gathering)
            raise
        finally:
            # Requests of the group leased from now on start the next gathering.
            if self._gatherings.get(gathering.group) is gathering:
                del self._gatherings[gathering.group]
        try:
            await self._submit(gathering, api)
        except asyncio.CancelledError:
            raise
        except Exception:  # a job recorded before this is taken over when its claim lapses
            log.exception("could not submit a batch job of %d requests", len(gathering.items))
        finally:
            for keeper in gathering.keepers:
                await keeper.stop()

    async def _top_up(self, gathering: _Gathering, api: BatchApi) -> None:
        """Lease more of the group while it is queued and the job has room."""
        main = gathering.keepers[0]
        limit = limit_of(gathering.group)
        try:
            while not self._full(gathering, api):
                lease = await self._queue.lease(
                    now=self._clock(),
                    group=gathering.group,
                    max_items=min(limit, self._room(gathering, api)),
                    token=main.token,
                )
                main.hold(lease.request_ids)
                if lease.expired or lease.unreadable:
                    await self._endings.expire(lease.expired, reason="ttl", token=main.token)
                    await self._endings.end_unreadable(lease.unreadable, token=main.token)
                    ended = [q.request_id for q in lease.expired]
                    main.let_go(ended + [u.request_id for u in lease.unreadable])
                if not lease.items:
                    return
                # Requests handed over meanwhile may have filled the job: the rest go on.
                room = self._room(gathering, api)
                gathering.add(lease.items[:room], lease.attempts, main)
                if over := lease.items[room:]:
                    main.let_go(q.request_id for q in over)
                    self._adopt(over, lease.attempts, token=main.token, api=api)
                    return
        except QueueUnavailableError as exc:
            log.warning("stopped gathering a batch job, the queue is unavailable: %s", exc)

    async def _submit(self, gathering: _Gathering, api: BatchApi) -> None:
        """Record the job with the requests still held, then create it at the provider."""
        for keeper in gathering.keepers:
            await keeper.confirm()
        lost = {
            rid for keeper in gathering.keepers for rid in gathering.tokens if keeper.is_lost(rid)
        }
        items = [q for q in gathering.items if q.request_id not in lost]
        main = gathering.keepers[0]
        owner = uuid.uuid4().hex
        for _ in range(OPEN_ATTEMPTS):
            if not items:
                return
            job = self._plan(gathering, items)
            now = self._clock()
            until = now + self._settings.queue_lease_seconds
            held = {rid: gathering.tokens[rid] for rid in job.request_ids}
            opening = functools.partial(
                self._jobs.open, job, held=held, owner=owner, until=until, now=now
            )
            try:
                missing = await settle(
                    opening, main, f"record a batch job of {len(items)} requests"
                )
            except GaveUp:
                return  # the leases lapse: the requests are reclaimed, or the job taken over
            if not missing:
                break
            log.warning(
                "%d requests were taken over before their batch job was recorded", len(missing)
            )
            items = [q for q in items if q.request_id not in set(missing)]
        else:
            return
        for keeper in gathering.keepers:
            keeper.let_go(job.request_ids)  # the job owns them now
        recorded = job.recorded(at=now, owner=owner, until=until)
        claim = JobClaim(
            jobs=self._jobs,
            job_id=job.job_id,
            owner=owner,
            lease_s=self._settings.queue_lease_seconds,
            clock=self._clock,
            until=until,
        )
        claim.start()
        try:
            await self._creator.create(recorded, claim)
        finally:
            await claim.stop()

    def _plan(self, gathering: _Gathering, items: Sequence[QueuedRequest]) -> NewJob:
        job_id = new_job_id()
        ids = [q.request_id for q in items]
        return NewJob(
            job_id=job_id,
            provider=items[0].route.provider,
            model=items[0].route.model,
            group=gathering.group,
            lines=plan_lines(job_id, ids, limit_of(gathering.group)),
            attempts={rid: gathering.attempts[rid] for rid in ids if rid in gathering.attempts},
        )

    async def _give_back(self, gathering: _Gathering) -> None:
        """Release what a gathering holds (fenced), for other replicas."""
        for keeper in gathering.keepers:
            held = keeper.held
            await keeper.stop()
            try:
                await self._queue.release(held, token=keeper.token)
            except QueueUnavailableError:
                log.error(
                    "could not release %d leases; they will lapse and be reclaimed", len(held)
                )

    async def _unavailable(self, items: Sequence[QueuedRequest], token: str) -> None:
        provider = items[0].route.provider.value
        failure = Failure(
            ErrorCode.CONFIGURATION, f"provider {provider!r} has no batch API on this server"
        )
        now = self._clock()
        facts = BundleFacts(mode=ProcessingMode.BATCH_API)
        await self._queue.complete(
            [(q, failed(q, failure, now, facts)) for q in items], token=token
        )

    def flush(self) -> None:
        """Submit every gathering now, without waiting for its window (a drain)."""
        for gathering in self._gatherings.values():
            gathering.flush_now = True
            gathering.ready.set()

    async def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` for every gathering and creation under way; True when done."""
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(set(self._tasks), timeout=max(0.0, timeout))
        return not pending

    async def stop(self) -> None:
        """Give back what is still gathering (other replicas batch it), cancel creations under
        way (their jobs are recorded: another replica takes them over)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
