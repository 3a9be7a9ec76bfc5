"""Collecting a wave's results from LPS: every wait has a deadline, nothing is paid for twice.

A wave goes out on one `SubmitComparisons` stream. Whatever goes wrong, the requests still
without a result are sent again under the same request ids, which LPS answers from its store when
it knows them (submission is idempotent), so a retry never asks the provider twice:

* the stream breaks, or the server refuses for now (UNAVAILABLE, RESOURCE_EXHAUSTED): wait with
  backoff and jitter (at least as long as RetryInfo asks) and send the rest again, for as long as
  the server has answered anything within `server_timeout_s`; past that the server is lost;
* the stream goes quiet for `stall_s`: look up every missing id (`GetComparison`). Ended ones are
  taken from the lookup; ids the server does not know (NOT_FOUND: lost, for example by a Redis
  restarted without persistence) are sent again; queued and processing ones are waited for, but
  no longer than `result_deadline_s` (the requests' TTL and a margin: LPS ends a request by then).
  The lookups end once the server has answered none of them for `server_timeout_s`, however many
  are pending: a frozen server is lost by then;
* a refusal that retrying cannot cure (UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT,
  ALREADY_EXISTS, ...) ends the run at once, naming the code.

A retried failure is reported (`on_notice`) once per wave and status code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass

from cj_client.backoff import Backoff, is_retryable
from cj_client.client import LpsClient
from cj_client.errors import (
    LpsClientError,
    NotFoundError,
    ResourceExhaustedError,
    RunRefusedError,
    ServerLostError,
    error_from_ack,
)
from cj_client.models import Ack, ComparisonOutcome, ComparisonSubmission

LOOKUP_CONCURRENCY = 16
# Rounds in a row that find requests lost, without a result between them, before the server is
# taken for one that loses what it accepts.
MAX_LOST_ROUNDS = 10
# The error code of a result the server gives for a request its queue lost (not a verdict).
REQUEST_LOST = "request_lost"
FINAL_STATUSES = frozenset({"completed", "failed", "expired"})
_END = object()


@dataclass(frozen=True, slots=True)
class CollectorLimits:
    """How long the collector waits for what.

    Attributes:
        server_timeout_s: the longest the server may go without answering anything before the run
            gives up (`--server-timeout`).
        stall_s: a stream silent this long has its missing ids looked up.
        lookup_timeout_s: the deadline of one lookup.
        result_deadline_s: the longest a wave waits for results the server says are still queued
            or processing.
    """

    server_timeout_s: float = 60.0
    stall_s: float = 20.0
    lookup_timeout_s: float = 10.0
    result_deadline_s: float = 3600.0 + 120.0


class WaveCollector:
    """Submits waves and collects every result, retrying under the same request ids.

    Args:
        client: the connected client.
        limits: the deadlines.
        on_result: called with each final result as it arrives (journal, progress).
        on_notice: called with a line for the user when something goes wrong and is retried.
        backoff: the delays between tries.
        clock: a monotonic clock in seconds.
    """

    def __init__(
        self,
        client: LpsClient,
        *,
        limits: CollectorLimits | None = None,
        on_result: Callable[[ComparisonOutcome], None] = lambda outcome: None,
        on_notice: Callable[[str], None] = lambda message: None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._limits = limits or CollectorLimits()
        self._on_result = on_result
        self._on_notice = on_notice
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._last_answer: float | None = None
        self._failures = 0
        self._lost_rounds = 0
        # Codes already reported in this wave: a refusal of some requests in every round (a rate
        # limit) is one notice, not one per round.
        self._reported: set[str] = set()

    async def collect(
        self, submissions: Sequence[ComparisonSubmission]
    ) -> dict[str, ComparisonOutcome]:
        """Every submission's final result, by request id.

        Raises:
            ServerLostError: the server answered nothing for `server_timeout_s`, or results the
                server holds did not come within `result_deadline_s`.
            RunRefusedError: the server refused with a code that retrying cannot cure.
        """
        pending = {s.request_id: s for s in submissions}
        done: dict[str, ComparisonOutcome] = {}
        self._reported.clear()
        if self._last_answer is None:
            self._last_answer = self._clock()
        while pending:
            retry_after = await self._round(pending, done)
            if pending:
                await asyncio.sleep(self._backoff.delay(max(0, self._failures - 1), retry_after))
        return done

    async def _round(
        self, pending: dict[str, ComparisonSubmission], done: dict[str, ComparisonOutcome]
    ) -> float:
        """One stream of everything still pending, until it ends, breaks or loses requests;
        returns how long the server asked us to wait before the next round."""
        events: asyncio.Queue[object] = asyncio.Queue()
        pump = asyncio.create_task(self._pump(list(pending.values()), events))
        fetches: set[asyncio.Task[None]] = set()
        started = self._clock()
        retry_after = 0.0
        lost: set[str] = set()
        try:
            while True:
                try:
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
                    # cancellation (Ctrl-C) that races with the item it returns.
                    async with asyncio.timeout(self._limits.stall_s):
                        item = await events.get()
                except TimeoutError:
                    if await self._look_up(pending, done):
                        self._count_lost_round()
                        return 0.0  # lost requests: send everything missing again
                    if pending and self._clock() - started > self._limits.result_deadline_s:
                        raise ServerLostError(
                            f"{len(pending)} comparisons got no result within "
                            f"{self._limits.result_deadline_s:g} s although {self._target} "
                            "reports them queued or processing",
                            code="DEADLINE_EXCEEDED",
                        ) from None
                    if not pending:
                        return 0.0
                    continue
                if item is _END:
                    return retry_after
                if isinstance(item, LpsClientError):
                    self._failed(item)
                    return _retry_after(item)
                if isinstance(item, Exception):
                    raise item  # not the server's doing (a submission that cannot be encoded)
                if isinstance(item, Ack):
                    if item.accepted:
                        self._answered()
                        if item.status in FINAL_STATUSES and item.request_id in pending:
                            # Known and ended (a rerun, a resume): fetch it now rather than
                            # wait for the stream to come round to it.
                            fetch = self._fetch(item.request_id, events)
                            fetches.add(asyncio.create_task(fetch))
                    else:
                        refusal = error_from_ack(item)
                        self._failed(refusal, pending.get(item.request_id))
                        retry_after = max(retry_after, _retry_after(refusal))
                elif isinstance(item, ComparisonOutcome):
                    self._answered()
                    if item.status == "failed" and item.error_code == REQUEST_LOST:
                        # The server's queue lost it after accepting it: not a verdict, so it
                        # is sent again under its id once the rest of this round is in.
                        lost.add(item.request_id)
                    else:
                        self._record(item, pending, done)
                if not pending:
                    return 0.0
                if lost and lost.issuperset(pending):
                    self._resend_lost(len(lost))
                    return 0.0
        finally:
            for task in (pump, *fetches):
                task.cancel()
            await asyncio.wait({pump, *fetches})

    def _count_lost_round(self) -> None:
        self._lost_rounds += 1
        if self._lost_rounds > MAX_LOST_ROUNDS:
            raise ServerLostError(
                f"{self._target} lost the same requests {self._lost_rounds} "
                "times in a row (they are unknown to it after it accepted them)",
                code="NOT_FOUND",
            )

    def _resend_lost(self, count: int) -> None:
        """The server answered `count` requests `request_lost`: another round sends them."""
        self._count_lost_round()
        self._on_notice(
            f"{count} requests were lost by {self._target}'s queue after it accepted them "
            "(e.g. restarted without persistence); sending them again under the same ids"
        )

    async def _fetch(self, request_id: str, events: asyncio.Queue[object]) -> None:
        """Put the stored result of `request_id` among the events (the stream still delivers it
        when this fails)."""
        try:
            async with asyncio.timeout(self._limits.lookup_timeout_s):
                outcome = await self._client.get(request_id)
        except (TimeoutError, LpsClientError):
            return
        events.put_nowait(outcome)

    async def _pump(self, subs: list[ComparisonSubmission], events: asyncio.Queue[object]) -> None:
        try:
            async with aclosing(self._client.submit_many(subs)) as stream:
                async for event in stream:
                    events.put_nowait(event)
        except Exception as exc:  # handed to the round, which decides what it means
            events.put_nowait(exc)
        else:
            events.put_nowait(_END)

    def _record(
        self,
        outcome: ComparisonOutcome,
        pending: dict[str, ComparisonSubmission],
        done: dict[str, ComparisonOutcome],
    ) -> None:
        if outcome.is_final and pending.pop(outcome.request_id, None) is not None:
            self._lost_rounds = 0
            done[outcome.request_id] = outcome
            self._on_result(outcome)

    async def _look_up(
        self, pending: dict[str, ComparisonSubmission], done: dict[str, ComparisonOutcome]
    ) -> bool:
        """Look up every pending id; record the ended ones; True when some are unknown (lost).

        The phase as a whole has a deadline, not only each lookup: it goes on while the server
        answers, and ends once it has answered nothing for `server_timeout_s` (after one
        lookup's deadline at least), so a frozen server is given up by then however many
        comparisons are pending.

        Raises:
            ServerLostError: the server answered no lookup by the phase's deadline.
            RunRefusedError: a lookup was refused with a code that retrying cannot cure.
        """
        ids = list(pending)
        queue = iter(ids)
        answers: asyncio.Queue[ComparisonOutcome | Exception] = asyncio.Queue()

        async def worker() -> None:
            for rid in queue:  # shared: each id is looked up by one worker
                try:
                    answers.put_nowait(await self._look_up_one(rid))
                except Exception as exc:  # not the server's doing: raised below, not waited for
                    answers.put_nowait(exc)

        workers = [asyncio.create_task(worker()) for _ in range(min(LOOKUP_CONCURRENCY, len(ids)))]
        earliest_end = self._clock() + self._limits.lookup_timeout_s
        lost = 0
        try:
            for _ in ids:
                last = self._last_answer if self._last_answer is not None else self._clock()
                deadline = max(earliest_end, last + self._limits.server_timeout_s)
                try:
                    async with asyncio.timeout(max(0.0, deadline - self._clock())):
                        answer = await answers.get()
                except TimeoutError:
                    raise ServerLostError(
                        f"lost the server at {self._target}: no answer for "
                        f"{self._clock() - last:.0f} s (--server-timeout "
                        f"{self._limits.server_timeout_s:g}) to lookups (GetComparison) of "
                        f"{len(pending)} pending comparisons",
                        code="DEADLINE_EXCEEDED",
                    ) from None
                if isinstance(answer, ComparisonOutcome):
                    self._answered()
                    self._record(answer, pending, done)
                elif isinstance(answer, NotFoundError):
                    self._answered()
                    lost += 1
                elif isinstance(answer, LpsClientError):
                    self._failed(answer)
                else:
                    raise answer
        finally:
            for task in workers:
                task.cancel()
            if workers:
                await asyncio.wait(workers)
        if lost:
            self._on_notice(
                f"{lost} requests are unknown to {self._target} (lost, e.g. by a queue "
                "restarted without persistence); sending them again under the same ids"
            )
        return bool(lost)

    async def _look_up_one(self, request_id: str) -> ComparisonOutcome | LpsClientError:
        try:
            async with asyncio.timeout(self._limits.lookup_timeout_s):
                return await self._client.get(request_id)
        except TimeoutError:
            return LpsClientError(
                f"no answer to GetComparison within {self._limits.lookup_timeout_s:g} s",
                code="DEADLINE_EXCEEDED",
            )
        except LpsClientError as exc:
            return exc

    def _answered(self) -> None:
        self._last_answer = self._clock()
        self._failures = 0

    def _failed(self, exc: LpsClientError, submission: ComparisonSubmission | None = None) -> None:
        """Raise when `exc` ends the run; else count it and tell the user once per outage."""
        subject = ""
        if submission is not None:
            subject = f" (comparison {submission.essay_a.id} vs {submission.essay_b.id})"
        if not is_retryable(exc.code):
            raise RunRefusedError(f"{exc.code}: {exc}{subject}", code=exc.code)
        last = self._last_answer if self._last_answer is not None else self._clock()
        silent = self._clock() - last
        if silent > self._limits.server_timeout_s:
            raise ServerLostError(
                f"lost the server at {self._target}: no answer for {silent:.0f} s "
                f"(--server-timeout {self._limits.server_timeout_s:g}); last error "
                f"{exc.code}: {exc}",
                code=exc.code,
            )
        self._failures += 1
        if exc.code not in self._reported:
            self._reported.add(exc.code)
            left = self._limits.server_timeout_s - silent
            self._on_notice(f"{exc.code}: {exc}; retrying for up to {left:.0f} s")

    @property
    def _target(self) -> str:
        return self._client.target


def _retry_after(exc: LpsClientError) -> float:
    return exc.retry_after if isinstance(exc, ResourceExhaustedError) else 0.0
