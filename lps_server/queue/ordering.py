"""Queue order and size accounting shared by both backends."""

from __future__ import annotations

from lps_server.core.domain import QueuedRequest


def queue_score(queued: QueuedRequest, *, aging_s: float) -> float:
    """The request's place in the queue: lower scores are served first.

    Each priority step moves a request `aging_s` seconds ahead of older work. So higher priority
    goes first and equal priorities are FIFO, yet a request of priority 0 waits at most
    `10 * aging_s` seconds behind a steady stream of priority-10 work: that is its aging bound.
    """
    return queued.enqueued_at - queued.request.priority * aging_s


def request_bytes(queued: QueuedRequest) -> int:
    """Approximate bytes a queued request holds, for the queue's byte budget."""
    request = queued.request
    size = len(request.essay_a.text) + len(request.essay_b.text) + len(request.instructions)
    return size + sum(len(k) + len(v) for k, v in request.metadata.items()) + 256
