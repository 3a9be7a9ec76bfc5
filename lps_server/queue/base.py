"""The queue interface both backends implement; processing code never knows which it has."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from lps_server.core.domain import ComparisonResult, QueuedRequest, RequestStatus
from lps_server.queue.replies import Deliver

# Shared by both backends: how many results a channel keeps, and how long a client told "queue
# full" should wait before trying again.
CHANNEL_MAX_ENTRIES = 100_000
RETRY_AFTER_FULL_S = 2.0


@dataclass(frozen=True, slots=True)
class SubmitOutcome:
    """What became of one submitted request.

    `created` is False when the request id was known already (then `status` is the earlier
    submission's) or when the queue was full (then `rejected` says why).
    """

    request_id: str
    status: RequestStatus | None
    created: bool
    rejected: str = ""
    retry_after: float = 0.0


@dataclass(frozen=True, slots=True)
class Lease:
    """Requests taken from the queue for processing, all of one compatibility key.

    `expired` holds requests found past their deadline while leasing: they are no longer queued and
    must be ended as EXPIRED by the caller, never sent to a provider.
    """

    items: list[QueuedRequest] = field(default_factory=list)
    expired: list[QueuedRequest] = field(default_factory=list)
    group: str = ""


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What a periodic sweep found: expired queued requests and reclaimed lease count."""

    expired: list[QueuedRequest] = field(default_factory=list)
    reclaimed: int = 0


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Depth by status and the age of the oldest queued request."""

    queued: int = 0
    processing: int = 0
    completed: int = 0
    failed: int = 0
    expired: int = 0
    oldest_queued_age_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ChannelEntry:
    """A result published on a channel, with the cursor that resumes just after it."""

    cursor: str
    result: ComparisonResult


class ChannelFollower(Protocol):
    """One reader's place on a channel (`QueueBackend.follow`): each read returns what was
    published after the entries it returned before."""

    async def read(self, timeout: float) -> list[ChannelEntry]:
        """The next entries, waiting up to `timeout` seconds for the first.

        Raises:
            QueueUnavailableError: the backend cannot be reached (the follower stays usable).
        """
        ...


class QueueBackend(Protocol):
    """A durable, prioritised queue of comparison requests, with result storage and channels."""

    name: str
    max_size: int

    async def submit(self, requests: Sequence[QueuedRequest]) -> list[SubmitOutcome]:
        """Enqueue each request unless its id is known already or the queue is full.

        Raises:
            QueueUnavailableError: the backend cannot be reached.
        """
        ...

    async def lease(self, *, now: float, group: str | None = None, max_items: int = 1) -> Lease:
        """Take a bundle: the head of the queue and more of its group, or only `group` if given.

        At most `min(max_items, limit of the group)` items; `max_items=0` takes nothing and only
        names the head's group in `Lease.group` (a peek). Returns an empty lease at once when
        nothing is queued. Leased requests are PROCESSING until completed or released.
        """
        ...

    async def wait_for_work(self, timeout: float) -> None:
        """Return when new work may have arrived, or after `timeout` seconds."""
        ...

    async def extend(self, request_ids: Sequence[str], *, now: float) -> None:
        """Push the lease deadline of these requests one lease period past `now`."""
        ...

    async def release(self, request_ids: Sequence[str]) -> None:
        """Return leased requests to the queue at their original position."""
        ...

    async def complete(self, done: Sequence[tuple[QueuedRequest, ComparisonResult]]) -> list[bool]:
        """Store final results, publish each on its channels; False where it had ended already.

        Publishing happens once per request even when two replicas complete the same request
        (after a lease was reclaimed): only the first completion is stored and published. A
        `reply_to` channel with a reader in this process (`reply_here`) is not published to: the
        stored result is handed to that reader instead.
        """
        ...

    def reply_here(self, channel: str, deliver: Deliver) -> AbstractContextManager[None]:
        """While open, results this process stores for requests whose `reply_to` is `channel` go
        to `deliver` (once stored) instead of onto the channel; results stored by other replicas
        still arrive on the channel."""
        ...

    async def get(self, request_id: str) -> ComparisonResult | None:
        """Where the request stands, or None when it is unknown."""
        ...

    async def read_channel(
        self, channel: str, *, cursor: str, timeout: float
    ) -> list[ChannelEntry]:
        """Results published on `channel` after `cursor` ("" = oldest retained); waits up to
        `timeout` seconds for the first one."""
        ...

    def follow(self, channel: str, *, cursor: str) -> AbstractContextManager[ChannelFollower]:
        """While open, a follower of `channel` from just after `cursor` ("" = oldest retained).

        All the followers of one replica share one reader (for Redis, one connection), however
        many streams they serve.
        """
        ...

    async def ended_results(self, request_ids: Sequence[str]) -> dict[str, ComparisonResult]:
        """The stored results of those of `request_ids` that have ended, in one round trip."""
        ...

    async def sweep(self, *, now: float) -> SweepResult:
        """Remove queued requests past their deadline and requeue expired leases."""
        ...

    async def stats(self, *, now: float) -> QueueStats:
        """Depth by status and oldest queued age."""
        ...

    async def ping(self) -> None:
        """Raise QueueUnavailableError when the backend is down."""
        ...

    async def close(self) -> None:
        """Release connections and wake waiters."""
        ...


def in_progress(queued: QueuedRequest, status: RequestStatus) -> ComparisonResult:
    """What a status query answers for a request that has not ended yet."""
    return ComparisonResult(
        request_id=queued.request_id,
        status=status,
        correlation_id=queued.request.correlation_id,
        requested_at=queued.enqueued_at,
        metadata=dict(queued.request.metadata),
    )
