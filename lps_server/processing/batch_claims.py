"""A replica's claim of one batch job, kept alive while it works on the job (creating it at the
provider, polling it, storing its results), so that no other replica works on it meanwhile, and
any other may take it over once the claim lapses (its replica died or froze).

The claim is extended every third of `LPS_QUEUE_LEASE_SECONDS`, like a lease. Before an action
that costs money or cannot be taken back (creating a batch), the worker confirms the claim: a
claim that may have lapsed, or was taken over, stops the action.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from lps_server.core.errors import QueueUnavailableError
from lps_server.queue.batch_jobs import BatchJobStore, JobUpdate

log = logging.getLogger(__name__)


class JobClaim:
    """The claim `owner` holds on job `job_id`, valid until `until`.

    Args:
        jobs: the job store.
        job_id: the job.
        owner: the claim's token.
        lease_s: LPS_QUEUE_LEASE_SECONDS; extended every third of it.
        clock: Unix time source.
        until: when the claim lapses unless extended.
    """

    def __init__(
        self,
        *,
        jobs: BatchJobStore,
        job_id: str,
        owner: str,
        lease_s: float,
        clock: Callable[[], float],
        until: float,
    ) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self.owner = owner
        self.lease_s = lease_s
        self.clock = clock
        self._until = until
        self.lost = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin extending."""
        if self._task is None:
            self._task = asyncio.create_task(self._beat())

    async def stop(self) -> None:
        """Stop extending (the claim lapses unless given up)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _beat(self) -> None:
        while not self.lost:
            await asyncio.sleep(self.lease_s / 3.0)
            await self.extend()

    async def extend(self) -> bool:
        """Push the claim a lease period on; False once it is lost."""
        until = self.clock() + self.lease_s
        try:
            held = await self.jobs.update(self.job_id, JobUpdate(), owner=self.owner, until=until)
        except QueueUnavailableError as exc:
            log.warning("could not extend the claim of batch job %s: %s", self.job_id, exc)
            return not self.lapsed()
        if held:
            self._until = until
        else:
            self.lost = True
            log.warning("lost the claim of batch job %s to another replica", self.job_id)
        return held

    def lapsed(self) -> bool:
        """True once the claim's last known deadline has passed."""
        return self.clock() >= self._until

    async def confirm(self) -> bool:
        """Before an action that cannot be taken back: True when the claim is held for at least
        another beat (extending it first when it might lapse sooner)."""
        if self.lost:
            return False
        if self._until - self.clock() > self.lease_s / 3.0:
            return True
        return await self.extend() and not self.lapsed()

    async def update(self, update: JobUpdate) -> bool:
        """Change the job's fields, keeping the claim."""
        held = await self.jobs.update(self.job_id, update, owner=self.owner)
        self.lost = self.lost or not held
        return held

    async def release(self, next_at: float, update: JobUpdate | None = None) -> bool:
        """Give the claim up: the job next needs work at `next_at` (any replica may do it)."""
        await self.stop()
        held = await self.jobs.update(
            self.job_id, update or JobUpdate(), owner=self.owner, release_at=next_at
        )
        self.lost = True
        return held

    async def close(self, outcome: str) -> bool:
        """End the job."""
        await self.stop()
        closed = await self.jobs.close(
            self.job_id, owner=self.owner, now=self.clock(), outcome=outcome
        )
        self.lost = True
        return closed
