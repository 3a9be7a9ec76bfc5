"""Bad input gets INVALID_ARGUMENT with BadRequest field violations, and nothing is enqueued."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from cj_client import InvalidRequestError, LpsClient
from cj_client.transport import translate
from generated.lps.v1 import comparison_pb2 as pb
from generated.lps.v1 import llm_provider_service_pb2 as svc
from generated.lps.v1 import llm_provider_service_pb2_grpc as svc_grpc
from lps_server.app import LpsApp


def valid() -> pb.ComparisonRequest:
    return pb.ComparisonRequest(
        request_id="v1",
        essay_a=pb.Essay(id="a", text="one essay"),
        essay_b=pb.Essay(id="b", text="another essay"),
        overrides=pb.LlmOverrides(provider=pb.PROVIDER_MOCK),
    )


def case(**changes: object) -> pb.ComparisonRequest:
    msg = valid()
    for name, value in changes.items():
        if value is None:
            msg.ClearField(name)
        elif name == "metadata":
            msg.metadata.update(value)  # type: ignore[arg-type]
        elif isinstance(value, pb.Essay | pb.LlmOverrides | Duration):
            getattr(msg, name).CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


CASES = [
    (case(essay_a=None), "request.essay_a", "is required"),
    (case(essay_b=pb.Essay(id="b", text="   ")), "request.essay_b.text", "must not be empty"),
    (case(essay_a=pb.Essay(id="a", text="x" * 100_001)), "request.essay_a.text", "100000 bytes"),
    (case(priority=11), "request.priority", "between 0 and 10"),
    (case(priority=-1), "request.priority", "between 0 and 10"),
    (case(ttl=Duration(seconds=-5)), "request.ttl", "must not be negative"),
    (case(overrides=pb.LlmOverrides()), "request.overrides.provider", "is required"),
    (
        case(overrides=pb.LlmOverrides(provider=99)),
        "request.overrides.provider",
        "unknown provider",
    ),
    (
        case(overrides=pb.LlmOverrides(provider=pb.PROVIDER_ANTHROPIC)),
        "request.overrides.provider",
        "not configured",
    ),
    (case(metadata={f"k{i}": "v" for i in range(65)}), "request.metadata", "at most 64 entries"),
    (case(metadata={"k" * 257: "v"}), "request.metadata['kkkk", "1 to 256 characters"),
    (case(metadata={"key": "v" * 4097}), "request.metadata['key']", "at most 4096 characters"),
]


@pytest.mark.parametrize(("message", "field", "description"), CASES)
async def test_bad_request_names_the_field_and_enqueues_nothing(
    lps: LpsApp, client: LpsClient, message: pb.ComparisonRequest, field: str, description: str
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{lps.grpc_port}") as channel:
        stub = svc_grpc.LlmProviderServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.SubmitComparison(svc.SubmitComparisonRequest(request=message))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = translate(raised.value)
    assert isinstance(error, InvalidRequestError)
    matching = [v for v in error.violations if v.field.startswith(field)]
    assert matching, error.violations
    assert description in matching[0].description
    stats = await client.queue_stats()
    assert (stats.queued, stats.processing, stats.completed, stats.failed) == (0, 0, 0, 0)


async def test_every_violation_is_reported_at_once(lps: LpsApp) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{lps.grpc_port}") as channel:
        stub = svc_grpc.LlmProviderServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.SubmitComparison(
                svc.SubmitComparisonRequest(request=pb.ComparisonRequest(priority=20))
            )
    error = translate(raised.value)
    assert isinstance(error, InvalidRequestError)
    assert {v.field for v in error.violations} == {
        "request.essay_a",
        "request.essay_b",
        "request.priority",
        "request.overrides.provider",
    }


async def test_missing_request_wrapper(lps: LpsApp) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{lps.grpc_port}") as channel:
        stub = svc_grpc.LlmProviderServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.SubmitComparison(svc.SubmitComparisonRequest())
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request: is required" in (raised.value.details() or "")
