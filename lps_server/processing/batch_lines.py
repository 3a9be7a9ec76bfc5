"""How a batch job's requests become lines: in the order they were gathered, `limit` per line (the
group's bundle limit, as in a serial bundle), each line named `<job id>-<n>`.

The lines recorded with a job are the lines sent: a line's answer is matched to its requests by
position (comparison k is the line's k-th request), so a line keeps every position when it is
read back, even for requests stored by an earlier, interrupted collection.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence

from lps_server.core.domain import Essay, Overrides, QueuedRequest
from lps_server.providers.base import ComparisonItem
from lps_server.providers.batch_base import BatchLine, BatchSpec
from lps_server.queue.batch_jobs import BatchJob, JobLine


def new_job_id() -> str:
    """A fresh job id (24 hex digits: a custom id `<job id>-<n>` fits every provider's rules)."""
    return uuid.uuid4().hex[:24]


def plan_lines(job_id: str, request_ids: Sequence[str], limit: int) -> tuple[JobLine, ...]:
    """The lines of a job: consecutive runs of at most `limit` requests."""
    size = max(1, limit)
    return tuple(
        JobLine(f"{job_id}-{n}", tuple(request_ids[start : start + size]))
        for n, start in enumerate(range(0, len(request_ids), size))
    )


def keep_only(lines: Sequence[JobLine], present: Mapping[str, object]) -> tuple[JobLine, ...]:
    """The lines without the requests not in `present` (lines left empty are dropped)."""
    kept = (
        JobLine(line.custom_id, tuple(r for r in line.request_ids if r in present))
        for line in lines
    )
    return tuple(line for line in kept if line.request_ids)


def item_of(queued: QueuedRequest) -> ComparisonItem:
    """The comparison a request asks for, keyed by its id."""
    request = queued.request
    return ComparisonItem(
        key=queued.request_id,
        essay_a=request.essay_a,
        essay_b=request.essay_b,
        instructions=request.instructions,
    )


def _placeholder(request_id: str) -> ComparisonItem:
    # Holds the position of a request that is no longer the job's; never sent, never stored.
    return ComparisonItem(
        key=request_id, essay_a=Essay("", ""), essay_b=Essay("", ""), instructions=""
    )


def spec_of(job: BatchJob, requests: Mapping[str, QueuedRequest]) -> BatchSpec:
    """The job as its provider sees it: every line at every position, the requests in `requests`
    as their comparisons and any other as a placeholder."""
    overrides = next((q.request.overrides for q in requests.values()), Overrides())
    lines = tuple(
        BatchLine(
            line.custom_id,
            tuple(
                item_of(requests[rid]) if rid in requests else _placeholder(rid)
                for rid in line.request_ids
            ),
        )
        for line in job.lines
    )
    return BatchSpec(job_id=job.job_id, model=job.model, overrides=overrides, lines=lines)
