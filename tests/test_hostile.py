"""Hostile input through a real server: random and adversarial requests (hypothesis), raw bytes
that are not valid protobuf or UTF-8, oversized messages, and clients that vanish mid-stream.

Every answer must be a success or INVALID_ARGUMENT / RESOURCE_EXHAUSTED with google.rpc details
(NOT_FOUND for lookups of unknown ids, ALREADY_EXISTS for a drawn id reused with another payload),
never INTERNAL or UNKNOWN, never a traceback; the server
keeps serving, logs no error, and every request it accepted reaches an end state.

The server runs on the test's event loop; hypothesis drives a synchronous gRPC client in a worker
thread, so the examples need no fixtures (which hypothesis would reuse across examples).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cj_client import LpsClient
from generated.lps.v1 import comparison_pb2 as pb
from generated.lps.v1 import llm_provider_service_pb2 as svc
from generated.lps.v1 import llm_provider_service_pb2_grpc as svc_grpc
from lps_server.app import LpsApp
from lps_server.core.domain import ProcessingMode
from tests.helpers import metric, submission

SERVICE = "/lps.v1.LlmProviderService/"
CALL_TIMEOUT_S = 30
SETTLE_TIMEOUT_S = 30
MAX_REQUESTS_PER_MESSAGE = 16
EXAMPLES = 200
FINAL = {pb.REQUEST_STATUS_COMPLETED, pb.REQUEST_STATUS_FAILED, pb.REQUEST_STATUS_EXPIRED}
LEAKS = ("Traceback (most recent", 'File "/', "Unexpected <class", "site-packages", "lps_server/")
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
MARKER = "\x01MARKER\x01"

# Large values are prebuilt: hypothesis is slow to grow strings this long, and the interesting
# sizes sit right at the limits (LPS_MAX_ESSAY_BYTES = 100000 bytes of UTF-8).
HUGE = [
    "x" * 100_000,
    "x" * 100_001,
    "é" * 50_000,
    "é" * 50_001,
    "😀" * 25_001,
    "\x00" * 1000,
    "word " * 20_000,
    "\u202e\u200b\ufeff" * 1000,  # bidi override, zero-width space, BOM
]
control = st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=20)
texts = st.one_of(st.text(max_size=40), control, st.sampled_from(HUGE))
short = st.one_of(st.text(max_size=12), control, st.sampled_from(["", "x" * 256, "x" * 257]))
ids = st.one_of(st.sampled_from(["", "dup-1", "dup-2", "x" * 256, "x" * 257]), short)
known_keys = st.sampled_from(
    ["preferred_bundle_size", "cj_llm_batching_mode", "resolved_provider", "queue_processing_mode"]
)
metadata = st.one_of(
    st.dictionaries(
        st.one_of(known_keys, short), st.one_of(short, st.sampled_from(HUGE)), max_size=6
    ),
    st.sampled_from([60, 64, 65, 1000, 5000]).map(lambda n: {f"k{i}": "v" * 8 for i in range(n)}),
    st.fixed_dictionaries(
        {"preferred_bundle_size": st.sampled_from(["0", "1", "64", "65", "-1", "1e9", "²", "8 "])}
    ),
)
providers = st.one_of(st.sampled_from(list(pb.Provider.values())), INT32)


@st.composite
def comparison_requests(draw: st.DrawFn) -> pb.ComparisonRequest:
    """A request: often valid, often subtly not, sometimes absurd."""
    hostile = draw(st.booleans())
    tame = st.text(max_size=12)
    msg = pb.ComparisonRequest(
        request_id=draw(ids if hostile else st.one_of(tame, st.sampled_from(["dup-1", "dup-2"]))),
        correlation_id=draw(short if hostile else tame),
        instructions=draw(texts) if hostile else "Which is better?",
        priority=draw(INT32) if hostile else draw(st.integers(0, 10)),
        result_channel=draw(short if hostile else st.sampled_from(["", "ch-a", "ch-b"])),
    )
    for essay in (msg.essay_a, msg.essay_b):
        if not hostile or draw(st.integers(0, 9)):  # a tenth of hostile requests miss an essay
            essay.id = draw(short if hostile else tame)
            essay.text = draw(texts) if hostile else draw(tame) + " an essay"
    o = msg.overrides
    o.provider = draw(providers) if hostile else pb.PROVIDER_MOCK
    if hostile:
        o.model = draw(short)
        o.system_prompt = draw(texts)
        if draw(st.booleans()):
            o.temperature = draw(st.floats(width=32))
        if draw(st.booleans()):
            o.max_tokens = draw(INT32)
    msg.metadata.update(draw(metadata) if hostile else {"cj_source": "hostile"})
    valid_ttl = st.tuples(st.integers(0, 5), st.integers(0, 999_999_999))
    ttl = draw(st.one_of(st.none(), st.tuples(INT64, INT32), valid_ttl) if hostile else st.none())
    if ttl is not None:
        msg.ttl.seconds, msg.ttl.nanos = ttl
    return msg


@dataclass(frozen=True)
class Unary:
    request: pb.ComparisonRequest


@dataclass(frozen=True)
class Stream:
    messages: list[list[pb.ComparisonRequest]]
    cancel_after: int | None  # events to read before walking away; None reads to the end
    drop_connection: bool  # close the whole channel instead of cancelling the call


@dataclass(frozen=True)
class Raw:
    method: str
    payload: bytes


@dataclass(frozen=True)
class Lookup:
    request_id: str


def invalid_utf8(request: pb.ComparisonRequest, field: str) -> bytes:
    """A SubmitComparisonRequest whose string `field` holds bytes that are not UTF-8."""
    target = request.essay_a if field == "essay_a.text" else request
    if field == "metadata":
        request.metadata[MARKER] = "v"
    else:
        setattr(target, field.split(".")[-1], MARKER)
    wire = svc.SubmitComparisonRequest(request=request).SerializeToString()
    assert wire.count(MARKER.encode()) == 1
    return wire.replace(MARKER.encode(), b"\xff\xfe\xc3\x28\xed\xa0\x80\x80")  # same length


actions = st.one_of(
    st.builds(Unary, comparison_requests()),
    st.builds(
        Stream,
        st.lists(
            st.lists(comparison_requests(), max_size=MAX_REQUESTS_PER_MESSAGE + 2), max_size=3
        ),
        st.one_of(st.none(), st.integers(0, 6)),
        st.booleans(),
    ),
    st.builds(
        Raw,
        st.sampled_from(
            ["SubmitComparison", "GetComparison", "GetQueueStats", "SubmitComparisons"]
        ),
        st.binary(max_size=64),
    ),
    st.builds(
        Raw,
        st.just("SubmitComparison"),
        st.builds(
            invalid_utf8,
            comparison_requests(),
            st.sampled_from(["request_id", "essay_a.text", "metadata", "result_channel"]),
        ),
    ),
    st.builds(Lookup, ids),
)


class Driver:
    """Sends actions through a synchronous client and checks every answer."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.channel = grpc.insecure_channel(target)
        self.stub = svc_grpc.LlmProviderServiceStub(self.channel)
        self.accepted: set[str] = set()
        self.runs = 0

    def run(self, action: Unary | Stream | Raw | Lookup) -> None:
        self.runs += 1
        # Drawn ids repeat with other payloads: ALREADY_EXISTS is the contract's answer.
        allowed = {
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.ALREADY_EXISTS,
        }
        try:
            if isinstance(action, Unary):
                reply = self.stub.SubmitComparison(
                    svc.SubmitComparisonRequest(request=action.request), timeout=CALL_TIMEOUT_S
                )
                self.accepted.add(reply.request_id)
            elif isinstance(action, Stream):
                self._stream(action)
            elif isinstance(action, Raw):
                allowed.add(grpc.StatusCode.NOT_FOUND)  # garbage may parse as an unknown id
                self._raw(action)
            else:
                allowed.add(grpc.StatusCode.NOT_FOUND)
                reply = self.stub.GetComparison(
                    svc.GetComparisonRequest(request_id=action.request_id), timeout=CALL_TIMEOUT_S
                )
                assert_clean(reply.result.error.message)
        except grpc.RpcError as exc:
            check_error(exc, allowed)  # type: ignore[arg-type]

    def _stream(self, action: Stream) -> None:
        channel = grpc.insecure_channel(self.target) if action.drop_connection else self.channel
        stub = svc_grpc.LlmProviderServiceStub(channel)
        messages = [svc.SubmitComparisonsRequest(requests=m) for m in action.messages]
        call = stub.SubmitComparisons(iter(messages), timeout=CALL_TIMEOUT_S)
        try:
            for n, event in enumerate(call):
                if action.cancel_after is not None and n >= action.cancel_after:
                    break
                self._check_event(event)
        finally:
            if action.drop_connection:
                channel.close()
            else:
                call.cancel()

    def _check_event(self, event: svc.SubmitComparisonsResponse) -> None:
        if event.HasField("ack"):
            ack = event.ack
            if ack.accepted:
                self.accepted.add(ack.request_id)
                return
            assert ack.error.code in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "ALREADY_EXISTS"), (
                ack
            )
            assert_clean(ack.error.message)
            if ack.error.code == "INVALID_ARGUMENT":
                assert ack.error.field_violations, ack
            elif ack.error.code == "ALREADY_EXISTS":
                assert repr(ack.request_id) in ack.error.message, ack
            else:
                assert ack.error.retry_after.ToNanoseconds() > 0, ack
        else:
            assert event.result.status in FINAL
            assert_clean(event.result.error.message)

    def _raw(self, action: Raw) -> None:
        path = SERVICE + action.method
        if action.method == "SubmitComparisons":
            call = self.channel.stream_stream(path)(iter([action.payload]), timeout=CALL_TIMEOUT_S)
            for _ in call:
                pass
            return
        self.channel.unary_unary(path)(action.payload, timeout=CALL_TIMEOUT_S)


def assert_clean(text: str) -> None:
    """No traceback or internals in text a client sees."""
    assert not any(leak in text for leak in LEAKS), text


def check_error(exc: grpc.Call, allowed: set[grpc.StatusCode]) -> None:
    """An error a client may see: an allowed code, details explaining it, nothing internal."""
    code, text = exc.code(), exc.details() or ""
    assert code in allowed, (code, text)
    assert text
    assert_clean(text)
    status = rpc_status.from_call(exc)
    kinds = {d.TypeName() for d in status.details} if status is not None else set()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert error_details_pb2.BadRequest.DESCRIPTOR.full_name in kinds, text
    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" not in text:
        # gRPC itself refuses oversized messages (no details); every other refusal says when
        # to retry.
        assert error_details_pb2.RetryInfo.DESCRIPTOR.full_name in kinds, text
    elif code == grpc.StatusCode.ALREADY_EXISTS:
        assert error_details_pb2.ErrorInfo.DESCRIPTOR.full_name in kinds, text


def adversarial_corpus() -> Iterator[Unary | Stream | Raw | Lookup]:
    """Cases that must be tried on every run, whatever hypothesis draws."""

    def valid(i: int, **fields: object) -> pb.ComparisonRequest:
        msg = pb.ComparisonRequest(
            request_id=f"corpus-{i}",
            essay_a=pb.Essay(id="a", text="one two three"),
            essay_b=pb.Essay(id="b", text="one two three four five"),
            overrides=pb.LlmOverrides(provider=pb.PROVIDER_MOCK),
        )
        for name, value in fields.items():
            setattr(msg, name, value)
        return msg

    for number in [*pb.Provider.values(), 5, 99, -1, 2**31 - 1, -(2**31)]:
        request = valid(100 + number % 1000)
        request.overrides.provider = number
        yield Unary(request)
    many_keys = valid(1)
    many_keys.metadata.update({f"k{i}": "v" for i in range(5000)})
    yield Unary(many_keys)
    for seconds, nanos in [(-1, 0), (0, -1), (2**63 - 1, 0), (-(2**63), 0), (1, 10**9), (0, 0)]:
        request = valid(200 + len(str(seconds)) + nanos % 7)
        request.ttl.seconds, request.ttl.nanos = seconds, nanos
        yield Unary(request)
    yield Unary(valid(3, instructions="x" * 2_000_000))  # past LPS_MAX_MESSAGE_BYTES
    duplicates = [valid(4), valid(4), valid(4, priority=99), valid(4)]
    yield Stream([duplicates, duplicates], cancel_after=None, drop_connection=False)
    yield Stream([[valid(5 + i) for i in range(MAX_REQUESTS_PER_MESSAGE + 1)]], None, False)
    yield Stream([[valid(30 + i) for i in range(8)]], cancel_after=8, drop_connection=False)
    yield Stream([[valid(40 + i) for i in range(8)]], cancel_after=3, drop_connection=True)
    yield Stream([[valid(50 + i) for i in range(8)]], cancel_after=0, drop_connection=True)
    for field in ("request_id", "essay_a.text", "metadata", "result_channel"):
        yield Raw("SubmitComparison", invalid_utf8(valid(6), field))
    bad_stream = svc.SubmitComparisonsRequest(requests=[valid(7)]).SerializeToString()
    yield Raw("SubmitComparisons", bad_stream.replace(b"corpus-7", b"corpus\xff\xfe"))
    yield Raw("GetComparison", b"\x0a\x02\xff\xfe")
    yield Raw("SubmitComparison", b"\x0a\xff\xff\xff\xff\x0f")  # a length past the end


async def test_hostile_input_never_breaks_the_server(
    start_lps: Callable[..., Awaitable[LpsApp]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    app = await start_lps(
        queue_processing_mode=ProcessingMode.SERIAL_BUNDLE,
        max_message_bytes=1024 * 1024,
        max_requests_per_message=MAX_REQUESTS_PER_MESSAGE,
    )
    driver = Driver(f"127.0.0.1:{app.grpc_port}")

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(actions)
    def property_holds(action: Unary | Stream | Raw | Lookup) -> None:
        driver.run(action)

    def drive() -> None:
        for action in adversarial_corpus():
            driver.run(action)
        property_holds()

    try:
        await asyncio.to_thread(drive)
    finally:
        driver.channel.close()
    assert driver.runs >= EXAMPLES
    assert len(driver.accepted) > 20, "the run should have accepted plenty of work"

    async with LpsClient(target=driver.target, timeout=10) as client:
        await _settled(client)
        for request_id in driver.accepted:
            outcome = await client.get(request_id)
            assert outcome.status in ("completed", "failed", "expired"), outcome
        # Still serving ordinary work.
        async for event in client.submit_many([submission(1, request_id="after-the-storm")]):
            if not hasattr(event, "accepted"):
                assert event.status == "completed"  # type: ignore[union-attr]
    for code in ("UNKNOWN", "INTERNAL"):
        assert metric(app.registry, "llm_provider_grpc_requests_total", code=code) == 0, code
    refused = metric(app.registry, "llm_provider_grpc_requests_total", code="INVALID_ARGUMENT")
    assert refused >= 10  # the corpus alone has a dozen, counted by method
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def _settled(client: LpsClient) -> None:
    """Wait (bounded) until nothing is queued or processing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_TIMEOUT_S
    while True:
        stats = await client.queue_stats()
        if stats.queued + stats.processing == 0:
            return
        assert loop.time() < deadline, f"work still pending: {stats}"
        await asyncio.sleep(0.05)
