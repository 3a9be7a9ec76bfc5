"""What the in-process queue keeps of ended requests, in the order they ended.

An ended request keeps its result (for `get`, and for a resubmission of its id, answered with its
status), the digest of its payload (a resubmission with another payload is a conflict), and the
token of the lease that ended it (a repeated `complete` or `extend` by that holder is answered as
before). Not its essays: they are gone with the request's record. Requests are kept
in the order they ended, so forgetting those past the retention looks only at those due.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass

from lps_server.core.domain import ComparisonResult, RequestStatus


@dataclass(frozen=True, slots=True)
class Ended:
    """One ended request: its result, its payload digest and the token of the lease that ended
    it."""

    result: ComparisonResult
    lease: str
    digest: str


class EndedRequests:
    """Ended requests by id, oldest end first, with a count per end state."""

    def __init__(self) -> None:
        self._ended: OrderedDict[str, Ended] = OrderedDict()
        self._counts: Counter[RequestStatus] = Counter()

    def add(self, request_id: str, result: ComparisonResult, *, lease: str, digest: str) -> None:
        """Keep `result` as the end of `request_id`."""
        self._ended[request_id] = Ended(result, lease, digest)
        self._counts[result.status] += 1

    def get(self, request_id: str) -> Ended | None:
        """The end of `request_id`, if it ended within the retention."""
        return self._ended.get(request_id)

    def count(self, status: RequestStatus) -> int:
        """How many kept requests ended in `status`."""
        return self._counts[status]

    def forget_before(self, cutoff: float) -> None:
        """Forget the requests that ended before `cutoff`, looking only at those (requests are
        kept in the order they ended; one that ended earlier behind a later one waits for it)."""
        while self._ended:
            ended = next(iter(self._ended.values()))
            if ended.result.completed_at >= cutoff:
                return
            self._ended.popitem(last=False)
            self._counts[ended.result.status] -= 1
