"""One `SubmitComparisons` call: acknowledge requests as they arrive, then stream their results.

Results come back on a reply channel private to the call (any replica can publish to it), and each
request id is answered at most once on the call. The call follows its channel through the
replica's one channel reader (`QueueBackend.follow`), so an open call holds no Redis connection.
Requests already known from an earlier call, and any result whose hand-over was lost, are found
in the store by the replica's `ResultWatch` (batched look-ups).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Protocol

from opentelemetry.context import Context

from generated.lps.v1 import comparison_pb2 as pb
from generated.lps.v1 import llm_provider_service_pb2 as svc
from lps_server.core.domain import ComparisonResult, QueuedRequest
from lps_server.core.errors import (
    FieldViolation,
    InvalidRequestError,
    LpsError,
    RequestConflictError,
)
from lps_server.edge.convert import STATUS_TO_PB, result_to_pb
from lps_server.edge.grpc_errors import to_status
from lps_server.edge.rejections import rejection_reason
from lps_server.edge.result_watch import ResultWatch
from lps_server.edge.wire_time import duration_pb
from lps_server.processing.intake import Intake
from lps_server.queue.base import QueueBackend, SubmitOutcome

log = logging.getLogger(__name__)
CHANNEL_WAIT_S = 1.0
_READ_DONE = object()


class PrepareRequest(Protocol):
    """Validates and routes one request message into its queued form (the servicer's `prepare`;
    passed in so that this module does not import the servicer that uses it)."""

    def __call__(
        self, msg: pb.ComparisonRequest, *, path: str, reply_to: str, parent: Context
    ) -> QueuedRequest: ...


class StreamSubmission:
    """State of one streaming submission.

    Args:
        prepare: validates and routes one request message (raises InvalidRequestError).
        admit: spends one unit of the caller's submission rate; returns 0.0, or the seconds to
            wait when the caller is over its rate (that request is then refused).
        rate_message: why an over-rate request is refused.
        max_requests_per_message: a larger message ends the call INVALID_ARGUMENT.
        on_rejected: called with the reason (`rejection_reason`) of every refused request.
    """

    def __init__(
        self,
        *,
        prepare: PrepareRequest,
        intake: Intake,
        queue: QueueBackend,
        watch: ResultWatch,
        reply_to: str,
        parent: Context,
        admit: Callable[[], float] = lambda: 0.0,
        rate_message: str = "",
        max_requests_per_message: int | None = None,
        on_rejected: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self._prepare_one = prepare
        self._on_rejected = on_rejected
        self._admit = admit
        self._rate_message = rate_message
        self._max_requests = max_requests_per_message
        self._intake = intake
        self._queue = queue
        self._reply_to = reply_to
        self._parent = parent
        self._out: asyncio.Queue[object] = asyncio.Queue()
        self._awaiting: set[str] = set()
        self._answered: set[str] = set()
        self._early: dict[str, ComparisonResult] = {}
        self._watched = watch.open(self._out.put_nowait)
        self._index = 0

    async def run(
        self, messages: AsyncIterator[svc.SubmitComparisonsRequest]
    ) -> AsyncGenerator[svc.SubmitComparisonsResponse, None]:
        """Yield acks and results until the client has half-closed and every accepted request
        has its result."""
        # Results this replica stores for the call come straight here; the follower reads the
        # ones other replicas store from the reply channel.
        with self._queue.reply_here(self._reply_to, self._out.put_nowait):
            reader = asyncio.create_task(self._read(messages))
            follower = asyncio.create_task(self._follow())
            reading = True
            try:
                while reading or self._awaiting:
                    item = await self._out.get()
                    if item is _READ_DONE:
                        reading = False
                        await reader  # re-raises a failure to read the client's messages
                    elif isinstance(item, svc.SubmissionAck):
                        yield svc.SubmitComparisonsResponse(ack=item)
                        for early in self._release_early(item):
                            yield early
                    elif isinstance(item, ComparisonResult):
                        answer = self._answer(item)
                        if answer is not None:
                            yield answer
            finally:
                reader.cancel()
                follower.cancel()
                self._watched.close()

    def _answer(self, result: ComparisonResult) -> svc.SubmitComparisonsResponse | None:
        rid = result.request_id
        if rid in self._answered:
            return None
        if rid not in self._awaiting:
            # The result overtook its own ack (another replica was quick): hold it.
            self._early[rid] = result
            return None
        self._awaiting.discard(rid)
        self._watched.discard(rid)
        self._answered.add(rid)
        return svc.SubmitComparisonsResponse(result=result_to_pb(result))

    def _release_early(self, ack: svc.SubmissionAck) -> list[svc.SubmitComparisonsResponse]:
        early = self._early.pop(ack.request_id, None) if ack.accepted else None
        event = self._answer(early) if early is not None else None
        return [event] if event is not None else []

    async def _read(self, messages: AsyncIterator[svc.SubmitComparisonsRequest]) -> None:
        # One message is submitted while the next is read and validated: waiting for the queue
        # before reading on would stall the client's stream (HTTP/2 flow control) for a Redis
        # round trip per message. Submissions stay in message order, and at most one waits.
        submitting: asyncio.Task[None] | None = None
        try:
            async for message in messages:
                acks, prepared = self._prepare(message.requests)
                if submitting is not None:
                    await submitting
                submitting = asyncio.create_task(self._submit(acks, prepared))
        except asyncio.CancelledError:
            if submitting is not None:
                submitting.cancel()  # the call is over: nobody reads the acks
            raise
        except Exception:
            # A bad message ends the call, but the message before it is acknowledged first.
            if submitting is not None:
                await submitting
            raise
        else:
            if submitting is not None:
                await submitting
        finally:
            self._out.put_nowait(_READ_DONE)

    def _prepare(
        self, requests: Sequence[pb.ComparisonRequest]
    ) -> tuple[list[svc.SubmissionAck | None], list[tuple[int, QueuedRequest]]]:
        """Validate and route one message's requests: acks for the refused ones, and the slots
        of the others, which `_submit` fills."""
        if self._max_requests is not None and len(requests) > self._max_requests:
            # A protocol error of the client, not of one request: the call ends here, and requests
            # accepted from earlier messages go on (their results stay available by id).
            raise InvalidRequestError(
                [
                    FieldViolation(
                        "requests",
                        f"at most {self._max_requests} requests per message "
                        f"(LPS_MAX_REQUESTS_PER_MESSAGE), got {len(requests)}; "
                        "split them over several messages",
                    )
                ]
            )
        acks: list[svc.SubmissionAck | None] = []
        prepared: list[tuple[int, QueuedRequest]] = []
        for msg in requests:
            path = f"requests[{self._index}]"
            self._index += 1
            try:
                queued = self._prepare_one(
                    msg, path=path, reply_to=self._reply_to, parent=self._parent
                )
            except InvalidRequestError as exc:
                acks.append(_rejection(msg.request_id, exc))
                continue
            wait = self._admit()
            if wait > 0:
                acks.append(_exhausted(msg.request_id, self._rate_message, wait))
                continue
            prepared.append((len(acks), queued))
            acks.append(None)
        return acks, prepared

    async def _submit(
        self, acks: list[svc.SubmissionAck | None], prepared: list[tuple[int, QueuedRequest]]
    ) -> None:
        """Queue the prepared requests and send every ack of their message, in message order."""
        try:
            outcomes = await self._intake.submit([q for _, q in prepared])
        except LpsError as exc:
            for slot, queued in prepared:
                acks[slot] = _rejection(queued.request_id, exc)
        else:
            for (slot, queued), outcome in zip(prepared, outcomes, strict=True):
                acks[slot] = self._accepted(queued, outcome)
        queued_slots = {slot for slot, _ in prepared}
        for slot, ack in enumerate(acks):
            if ack is not None:
                if not ack.accepted:
                    # Before queueing, the only RESOURCE_EXHAUSTED refusal is the client's rate.
                    over_rate = slot not in queued_slots
                    self._on_rejected(rejection_reason(ack.error.code, over_rate=over_rate))
                self._out.put_nowait(ack)

    def _accepted(self, queued: QueuedRequest, outcome: SubmitOutcome) -> svc.SubmissionAck:
        if outcome.conflict:
            conflict = RequestConflictError(outcome.rejected, request_id=outcome.request_id)
            return _rejection(outcome.request_id, conflict)
        if outcome.status is None:
            return _exhausted(outcome.request_id, outcome.rejected, outcome.retry_after)
        rid = queued.request_id
        if outcome.created:
            # Queued anew (the store had lost or forgotten an id this call was answered for):
            # a new request, whose result the client was just promised.
            self._answered.discard(rid)
        if rid not in self._awaiting and rid not in self._answered:
            self._awaiting.add(rid)
            self._watched.add(rid, known=not outcome.created)
        return svc.SubmissionAck(
            request_id=outcome.request_id, accepted=True, status=STATUS_TO_PB[outcome.status]
        )

    async def _follow(self) -> None:
        """Move results from the reply channel to the output."""
        task = asyncio.current_task()
        try:
            with self._queue.follow(self._reply_to, cursor="") as follower:
                # Python 3.11's asyncio.wait_for (which followers wait with) can swallow a
                # cancellation that races with its result; the flag still says the call is over.
                while task is None or not task.cancelling():
                    try:
                        entries = await follower.read(CHANNEL_WAIT_S)
                    except LpsError as exc:
                        log.warning("result stream interrupted, retrying: %s", exc)
                        await asyncio.sleep(CHANNEL_WAIT_S)
                        continue
                    for entry in entries:
                        self._out.put_nowait(entry.result)
        except LpsError as exc:  # the queue closed first: only the store look-ups remain
            log.warning("result stream cannot follow its reply channel: %s", exc)


def _exhausted(request_id: str, message: str, retry_after: float) -> svc.SubmissionAck:
    return svc.SubmissionAck(
        request_id=request_id,
        accepted=False,
        error=svc.SubmissionError(
            code="RESOURCE_EXHAUSTED", message=message, retry_after=duration_pb(retry_after)
        ),
    )


def _rejection(request_id: str, exc: LpsError) -> svc.SubmissionAck:
    status = to_status(exc)
    violations = getattr(exc, "violations", [])
    return svc.SubmissionAck(
        request_id=request_id,
        accepted=False,
        error=svc.SubmissionError(
            code=status.code.name,
            message=str(exc),
            field_violations=[
                svc.FieldViolation(field=v.field, description=v.description) for v in violations
            ],
        ),
    )
