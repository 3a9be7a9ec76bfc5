"""Limits: message size, requests per stream message, streams per client, submission rate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from cj_client import Ack, EssayInput, InvalidRequestError, LpsClient, QueueFullError
from cj_client import LimitExceededError as ClientLimitError
from cj_client.transport import submission_to_pb
from generated.lps.v1 import llm_provider_service_pb2 as svc
from generated.lps.v1 import llm_provider_service_pb2_grpc as svc_grpc
from lps_server.app import LpsApp
from lps_server.core.config import Settings
from lps_server.core.domain import QueuedRequest
from lps_server.core.errors import ConfigurationError, LimitExceededError
from lps_server.edge.limits import MAX_TRACKED_CLIENTS, RateLimiter, StreamLimiter
from lps_server.queue.base import SubmitOutcome
from lps_server.queue.local import LocalQueue
from tests.helpers import submission

Start = Callable[..., Awaitable[LpsApp]]
TOKENS = ("tok-one", "tok-two")


def target(app: LpsApp) -> str:
    return f"127.0.0.1:{app.grpc_port}"


def test_defaults_and_bad_values() -> None:
    settings = Settings.from_env({})
    assert (
        settings.max_message_bytes,
        settings.max_requests_per_message,
        settings.max_streams_per_client,
        settings.rate_limit_per_second,
        settings.rate_limit_burst,
    ) == (16 * 1024 * 1024, 512, 16, 0.0, 100)
    for env, message in [
        ({"LPS_MAX_MESSAGE_BYTES": "1000"}, "LPS_MAX_MESSAGE_BYTES must be in"),
        ({"LPS_MAX_REQUESTS_PER_MESSAGE": "0"}, "LPS_MAX_REQUESTS_PER_MESSAGE"),
        ({"LPS_MAX_STREAMS_PER_CLIENT": "0"}, "LPS_MAX_STREAMS_PER_CLIENT"),
        ({"LPS_RATE_LIMIT_PER_SECOND": "-1"}, "LPS_RATE_LIMIT_PER_SECOND"),
        ({"LPS_RATE_LIMIT_BURST": "0"}, "LPS_RATE_LIMIT_BURST"),
        ({"LPS_TLS_CLIENT_CA": "ca.pem"}, "LPS_TLS_CLIENT_CA needs LPS_TLS_CERT"),
    ]:
        with pytest.raises(ConfigurationError, match=message):
            Settings.from_env(env)


# --- message size -------------------------------------------------------------------------------


async def test_messages_over_the_size_limit_are_refused(start_lps: Start) -> None:
    app = await start_lps(max_message_bytes=64 * 1024)
    async with LpsClient(target=target(app), timeout=10) as client:
        big = EssayInput("big", "word " * 14_000)  # 70 kB: a valid essay, too big a message
        with pytest.raises(ClientLimitError, match="larger than max"):
            await client.submit(submission(1, essay_a=big))
        assert (await client.submit(submission(2)))[0] == "req-2"  # and the server carries on


# --- a full queue is not a client limit ----------------------------------------------------------


async def test_a_full_queue_is_told_apart_from_a_client_limit(start_lps: Start) -> None:
    app = await start_lps(queue=LocalQueue(max_size=0))
    async with LpsClient(target=target(app), timeout=10) as client:
        with pytest.raises(QueueFullError, match="queue is full") as caught:
            await client.submit(submission(1))
    assert not isinstance(caught.value, ClientLimitError)
    assert caught.value.retry_after > 0


# --- requests per stream message ----------------------------------------------------------------


async def test_a_stream_message_over_the_request_limit_ends_the_call(start_lps: Start) -> None:
    app = await start_lps(max_requests_per_message=4)
    async with LpsClient(target=target(app), timeout=10) as client:
        events = [e async for e in client.submit_many([submission(i) for i in range(8)], chunk=4)]
        assert sum(isinstance(e, Ack) and e.accepted for e in events) == 8
        with pytest.raises(InvalidRequestError, match="at most 4 requests per message") as caught:
            async for _ in client.submit_many([submission(i) for i in range(10, 15)], chunk=5):
                pass
        assert [v.field for v in caught.value.violations] == ["requests"]


class SlowSubmitQueue(LocalQueue):
    """A local queue that takes its time to accept: the next message is read meanwhile."""

    async def submit(self, requests: Sequence[QueuedRequest]) -> list[SubmitOutcome]:
        await asyncio.sleep(0.2)
        return await super().submit(requests)


async def test_messages_before_the_one_over_the_limit_are_acknowledged(start_lps: Start) -> None:
    # The server reads a message while it queues the one before: that one still gets its acks.
    app = await start_lps(max_requests_per_message=4, queue=SlowSubmitQueue())
    sizes = [4, 4, 5, 4]
    messages = [
        svc.SubmitComparisonsRequest(
            requests=[submission_to_pb(submission(10 * m + i)) for i in range(size)]
        )
        for m, size in enumerate(sizes)
    ]

    async def requests() -> AsyncIterator[svc.SubmitComparisonsRequest]:
        for message in messages:
            yield message

    async with grpc.aio.insecure_channel(target(app)) as channel:
        call = svc_grpc.LlmProviderServiceStub(channel).SubmitComparisons(requests())
        acked: list[str] = []

        async def read_all() -> None:
            async for event in call:
                if event.HasField("ack"):
                    acked.append(event.ack.request_id)

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await read_all()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert sorted(acked) == sorted(f"req-{n}" for n in [0, 1, 2, 3, 10, 11, 12, 13])


# --- concurrent streams per client --------------------------------------------------------------


class OpenStream:
    """A SubmitComparisons call held open after its first ack (so the server holds its slot)."""

    def __init__(self, stub: svc_grpc.LlmProviderServiceStub, token: str, n: int) -> None:
        self._outbox: asyncio.Queue[svc.SubmitComparisonsRequest | None] = asyncio.Queue()
        self._outbox.put_nowait(
            svc.SubmitComparisonsRequest(requests=[submission_to_pb(submission(n))])
        )
        self.call = stub.SubmitComparisons(
            self._requests(), metadata=(("authorization", f"Bearer {token}"),)
        )

    async def _requests(self) -> AsyncIterator[svc.SubmitComparisonsRequest]:
        while (message := await self._outbox.get()) is not None:
            yield message

    async def first_event(self) -> svc.SubmitComparisonsResponse:
        return await asyncio.wait_for(self.call.read(), 10)  # type: ignore[arg-type]


async def test_streams_per_client_are_limited_per_token(start_lps: Start) -> None:
    app = await start_lps(max_streams_per_client=2, auth_tokens=TOKENS)
    async with grpc.aio.insecure_channel(target(app)) as channel:
        stub = svc_grpc.LlmProviderServiceStub(channel)
        held = [OpenStream(stub, "tok-one", n) for n in range(2)]
        for stream in held:
            assert (await stream.first_event()).ack.accepted

        refused = OpenStream(stub, "tok-one", 9)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await refused.first_event()
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 2 per client" in (caught.value.details() or "")
        assert _retry_delay(caught.value) == 1.0

        # Another client (token) has its own slots.
        assert (await OpenStream(stub, "tok-two", 20).first_event()).ack.accepted

        # Ending a stream frees its slot (the server notices the cancellation asynchronously).
        held[0].call.cancel()
        assert await _eventually_accepted(lambda: OpenStream(stub, "tok-one", 30))
        for stream in held[1:]:
            stream.call.cancel()


async def _eventually_accepted(open_stream: Callable[[], OpenStream]) -> bool:
    codes = []
    for _ in range(50):
        try:
            return (await open_stream().first_event()).ack.accepted
        except grpc.aio.AioRpcError as exc:
            codes.append(exc.code())
        assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * len(codes)
        await asyncio.sleep(0.05)
    return False


def _retry_delay(exc: grpc.aio.AioRpcError) -> float:
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    assert status is not None, "RESOURCE_EXHAUSTED carries google.rpc details"
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToNanoseconds() / 1e9)
    raise AssertionError("no RetryInfo detail")


def test_stream_limiter_releases_on_error() -> None:
    limiter = StreamLimiter(max_per_client=1)
    with pytest.raises(RuntimeError), limiter.hold("c"):
        raise RuntimeError("the stream failed")
    with limiter.hold("c"):
        assert limiter.open_streams("c") == 1
    assert limiter.open_streams("c") == 0


# --- submission rate ----------------------------------------------------------------------------


async def test_unary_submissions_over_the_rate_are_refused_with_retry_info(
    start_lps: Start,
) -> None:
    app = await start_lps(rate_limit_per_second=0.2, rate_limit_burst=3, auth_tokens=TOKENS)
    async with LpsClient(target=target(app), token="tok-one", timeout=10) as one:
        for i in range(3):
            await one.submit(submission(i))
        with pytest.raises(ClientLimitError, match="rate limit") as caught:
            await one.submit(submission(3))
        assert 0 < caught.value.retry_after <= 5.0
    async with LpsClient(target=target(app), token="tok-two", timeout=10) as two:
        await two.submit(submission(4))  # its own bucket


async def test_stream_items_over_the_rate_get_rejected_acks(start_lps: Start) -> None:
    app = await start_lps(rate_limit_per_second=0.2, rate_limit_burst=3)
    async with LpsClient(target=target(app), timeout=10) as client:
        subs = [submission(i) for i in range(5)] + [submission(99, priority=42)]
        acks = [e async for e in client.submit_many(subs) if isinstance(e, Ack)]
    assert [a.accepted for a in acks] == [True, True, True, False, False, False]
    assert [a.error_code for a in acks[3:]] == [
        "RESOURCE_EXHAUSTED",
        "RESOURCE_EXHAUSTED",
        "INVALID_ARGUMENT",  # invalid requests are refused as such and spend nothing
    ]
    assert all(0 < a.retry_after <= 5.0 for a in acks[3:5])
    assert "LPS_RATE_LIMIT_PER_SECOND" in acks[3].error_message


def test_token_bucket_refills_at_the_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=2, clock=lambda: now[0])
    assert [limiter.take("c"), limiter.take("c")] == [0.0, 0.0]
    assert limiter.take("c") == pytest.approx(0.5)
    now[0] = 0.25
    assert limiter.take("c") == pytest.approx(0.25)  # half a token so far
    now[0] = 0.5
    assert limiter.take("c") == 0.0
    now[0] = 100.0  # refills to the burst, not beyond
    assert [limiter.take("c") for _ in range(3)][2] > 0
    with pytest.raises(LimitExceededError, match="2 requests per second"):
        limiter.admit("c")


def test_rate_limiter_forgets_idle_clients() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=1.0, burst=1, clock=lambda: now[0])
    for i in range(MAX_TRACKED_CLIENTS):
        limiter.take(f"c{i}")
    assert limiter.take("c0") > 0  # remembered: still empty
    now[0] = 0.5
    limiter.take("newcomer")  # the table is full and nobody is idle: the oldest goes
    assert limiter.tracked_clients == MAX_TRACKED_CLIENTS
    now[0] = 10.0
    limiter.take("another")  # everyone idle for a full refill is forgotten
    assert limiter.tracked_clients == 1


def test_rate_limit_off_by_default() -> None:
    limiter = RateLimiter(rate=0.0, burst=1)
    assert all(limiter.take("c") == 0.0 for _ in range(1000))
