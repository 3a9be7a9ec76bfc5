"""The Redis queue's scripts, seen from Python: the arguments a request travels as, and the
decoded replies (submit outcomes, leases, sweeps). Payloads that cannot be read come back apart,
as `UnreadableRequest`s, never as an error of the whole call.
"""

from __future__ import annotations

from typing import Any

from lps_server.core.domain import QueuedRequest, RequestStatus
from lps_server.queue.base import (
    Lease,
    SubmitOutcome,
    SweepResult,
    UnreadableRequest,
    conflicting,
    queue_full,
)
from lps_server.queue.codec import decode_queued, encode_queued, unreadable
from lps_server.queue.ordering import queue_score, request_bytes
from lps_server.queue.payload_digest import payload_digest


def submit_args(q: QueuedRequest, *, aging_s: float) -> list[Any]:
    """The 9 values `submit` takes per request; numbers as the strings Python writes (`repr`),
    so a request goes back into the queue at exactly its original score."""
    return [
        q.request_id,
        encode_queued(q),
        repr(queue_score(q, aging_s=aging_s)),
        q.group,
        "" if q.deadline is None else repr(q.deadline),
        request_bytes(q),
        repr(q.enqueued_at),
        q.route.provider.value,
        payload_digest(q.request),
    ]


def submit_outcome(request_id: str, reply: str, *, limit: str) -> SubmitOutcome:
    """The outcome of one request of a `submit` (`limit` names the queue's size for a refusal)."""
    if reply == "new":
        return SubmitOutcome(request_id, RequestStatus.QUEUED, created=True)
    if reply == "conflict":
        return conflicting(request_id)
    if reply != "full":
        return SubmitOutcome(request_id, RequestStatus(reply), created=False)
    return queue_full(request_id, limit)


def lease_of(reply: list[Any], *, token: str) -> Lease:
    """The lease a `lease` reply describes: {group, n, next due retry, then per item and per
    expired request: id, attempts, payload}."""
    due = float(reply[2]) if reply[2] else None
    leased_group = reply[0].decode()
    if not leased_group:
        return Lease(token=token, next_retry_at=due)
    count = int(reply[1])
    lease = Lease(group=leased_group, token=token, next_retry_at=due)
    for index in range(3, len(reply), 3):
        rid, attempts = reply[index].decode(), int(reply[index + 1])
        queued = _decode_leased(rid, reply[index + 2], lease.unreadable)
        if queued is None:
            continue
        (lease.items if (index - 3) // 3 < count else lease.expired).append(queued)
        if attempts:
            lease.attempts[rid] = attempts
    return lease


def sweep_of(reply: list[Any], *, token: str) -> SweepResult:
    """What a `sweep` reply describes: {reclaimed, then per expired request: id, payload}."""
    found = SweepResult(reclaimed=int(reply[0]), token=token)
    for index in range(1, len(reply), 2):
        queued = _decode_leased(reply[index].decode(), reply[index + 1], found.unreadable)
        if queued is not None:
            found.expired.append(queued)
    return found


def _decode_leased(
    request_id: str, payload: bytes, unreadable_out: list[UnreadableRequest]
) -> QueuedRequest | None:
    """The leased request stored as `payload`, or None after noting why it cannot be read.

    Any failure counts: a payload corrupted in Redis or written by a newer release must end that
    one request, never the caller's loop.
    """
    try:
        queued = decode_queued(payload)
    except Exception as exc:
        unreadable_out.append(unreadable(request_id, payload, exc))
        return None
    if queued.request_id != request_id:
        mismatch = ValueError(f"the payload is request {queued.request_id[:60]!r}'s")
        unreadable_out.append(unreadable(request_id, payload, mismatch))
        return None
    return queued
