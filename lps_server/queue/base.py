"""The queue interface both backends implement; processing code never knows which it has."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from lps_server.core.domain import ComparisonResult, ProviderName, QueuedRequest, RequestStatus
from lps_server.queue.batch_jobs import BatchJobStore
from lps_server.queue.replies import Deliver
from lps_server.queue.unreadable import UnreadableRequest as UnreadableRequest

# Shared by both backends: how many results a channel keeps, and how long a client told "queue
# full" should wait before trying again.
CHANNEL_MAX_ENTRIES = 100_000
RETRY_AFTER_FULL_S = 2.0


@dataclass(frozen=True, slots=True)
class SubmitOutcome:
    """What became of one submitted request.

    `created` is False when the request id was known already (then `status` is the earlier
    submission's) or when the queue was full (then `rejected` says why). `conflict` is True when
    the id was known with a different payload (`payload_digest`): then `status` is None and
    `rejected` names the id; nothing was changed.
    """

    request_id: str
    status: RequestStatus | None
    created: bool
    rejected: str = ""
    retry_after: float = 0.0
    conflict: bool = False


@dataclass(frozen=True, slots=True)
class Lease:
    """Requests taken from the queue for processing, all of one compatibility key.

    Every request of a lease is held under `token`: only calls that present it may extend,
    release or complete them (a fenced lease). `expired` holds requests found past their deadline
    while leasing, `unreadable` those whose payload cannot be read; both are leased too and must be
    ended by the caller (EXPIRED, FAILED), never sent to a provider. `attempts` counts the earlier
    failed attempts of retried items (absent: none). On a lease that took nothing,
    `next_retry_at` is when the earliest request waiting for a retry becomes due (None: none
    waits), so an idle dispatcher knows when to look again.
    """

    items: list[QueuedRequest] = field(default_factory=list)
    expired: list[QueuedRequest] = field(default_factory=list)
    group: str = ""
    token: str = ""
    unreadable: list[UnreadableRequest] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    next_retry_at: float | None = None

    @property
    def request_ids(self) -> list[str]:
        """Every request this lease holds: items, expired and unreadable."""
        held = [q.request_id for q in (*self.items, *self.expired)]
        return held + [u.request_id for u in self.unreadable]


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What a periodic sweep found: expired queued requests (leased under `token` until the
    caller ends them, like `unreadable` ones) and the count of lapsed leases put back."""

    expired: list[QueuedRequest] = field(default_factory=list)
    reclaimed: int = 0
    token: str = ""
    unreadable: list[UnreadableRequest] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class EndedResults:
    """What a look-up of awaited ids found: the results of those that ended, and the ids the
    queue does not know at all (never submitted, forgotten after the retention, or lost with the
    backend's data)."""

    results: dict[str, ComparisonResult] = field(default_factory=dict)
    unknown: frozenset[str] = frozenset()


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

        A known id with the same payload digest gets its status back (a retry); with a different
        digest it gets a `conflict` outcome (`conflicting`).

        Raises:
            QueueUnavailableError: the backend cannot be reached.
        """
        ...

    async def lease(
        self,
        *,
        now: float,
        group: str | None = None,
        max_items: int = 1,
        token: str = "",
        exclude: Collection[ProviderName] = (),
    ) -> Lease:
        """Take a bundle: the head of the queue and more of its group, or only `group` if given.

        At most `min(max_items, limit of the group)` items; `max_items=0` takes nothing and only
        names the head's group in `Lease.group` (a peek). Returns an empty lease at once when
        nothing is queued. Leased requests are PROCESSING under `Lease.token` until completed or
        released: a new token, or `token` when given (to add requests to a lease already held).
        The head is looked for only among requests whose provider is not in `exclude` (the
        providers with no room for more work), so that their work never holds back the others'.
        Requests waiting for a retry are not leased before it is due.
        """
        ...

    async def wait_for_work(self, timeout: float) -> None:
        """Return when new work may have arrived, or after `timeout` seconds."""
        ...

    async def extend(
        self, request_ids: Sequence[str], *, token: str, now: float, calling: bool = False
    ) -> list[str]:
        """Push the lease deadline of the requests held under `token` one lease period past
        `now`; return the ids that are no longer held under it (reclaimed, released or ended by
        another holder): their holder has lost them and must neither store nor release them.
        Requests already ended by this holder are neither extended nor reported.

        With `calling`, the held requests are also marked as called: a provider call goes out
        for them now. A request reclaimed or released with the mark (its holder died or gave up
        mid-call) counts one more failed attempt, so it is retried to the end, never EXPIRED."""
        ...

    async def release(
        self, request_ids: Sequence[str], *, token: str, retry_at: float | None = None
    ) -> None:
        """Return requests held under `token` to the queue at their original position; others
        are left alone. With `retry_at` they count one more failed attempt and are not leased
        again before that Unix time (they wait in the queue, holding no lease and no call)."""
        ...

    async def complete(
        self, done: Sequence[tuple[QueuedRequest, ComparisonResult]], *, token: str = ""
    ) -> list[bool]:
        """Store final results, publish each on its channels; True where the stored result is
        this call's.

        A leased request is ended only by its holder (`token`); without a token only requests
        still queued (never leased) can be ended. False where the request had ended already,
        is unknown, or is held by someone else. Repeating a completion with the same token is
        harmless: it publishes nothing more and answers True again, so a caller that lost the
        reply can simply ask again. A `reply_to` channel with a reader in this process
        (`reply_here`) is not published to: the stored result is handed to that reader instead.

        Raises:
            QueueUnavailableError: the backend cannot be reached; the results may or may not be
                stored (ask again to find out).
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

    async def ended_results(self, request_ids: Sequence[str]) -> EndedResults:
        """The stored results of those of `request_ids` that have ended, and those it does not
        know at all, in one round trip."""
        ...

    async def sweep(self, *, now: float) -> SweepResult:
        """Remove queued requests past their deadline (leased under `SweepResult.token` until the
        caller ends them) and requeue lapsed leases."""
        ...

    async def stats(self, *, now: float) -> QueueStats:
        """Depth by status and oldest queued age."""
        ...

    def batch_jobs(self) -> BatchJobStore:
        """The batch jobs kept beside the queue, in the same backend."""
        ...

    async def ping(self) -> None:
        """Raise QueueUnavailableError when the backend is down."""
        ...

    async def close(self) -> None:
        """Release connections and wake waiters."""
        ...


def conflicting(request_id: str) -> SubmitOutcome:
    """The outcome for a known request id submitted with a different payload."""
    return SubmitOutcome(
        request_id,
        None,
        created=False,
        rejected=(
            f"request_id {request_id!r} is already known with a different payload (essays, "
            "instructions or overrides); a retry must resend the same comparison, a new "
            "comparison needs a new request_id"
        ),
        conflict=True,
    )


def queue_full(request_id: str, limit: str) -> SubmitOutcome:
    """The outcome for a request refused because the queue holds `limit` already."""
    return SubmitOutcome(
        request_id,
        None,
        created=False,
        rejected=f"queue is full ({limit}); retry later",
        retry_after=RETRY_AFTER_FULL_S,
    )


def in_progress(queued: QueuedRequest, status: RequestStatus) -> ComparisonResult:
    """What a status query answers for a request that has not ended yet."""
    return ComparisonResult(
        request_id=queued.request_id,
        status=status,
        correlation_id=queued.request.correlation_id,
        requested_at=queued.enqueued_at,
        metadata=dict(queued.request.metadata),
    )
