"""The Redis payload codec: every value round-trips exactly, whichever JSON path wrote it."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lps_server.core.domain import (
    BundleFacts,
    ComparisonRequest,
    ComparisonResult,
    ErrorCode,
    Essay,
    Failure,
    Judgement,
    Overrides,
    ProcessingMode,
    ProviderName,
    QueuedRequest,
    RequestStatus,
    Route,
    TokenUsage,
    Winner,
)
from lps_server.queue.codec import decode_queued, decode_result, encode_queued, encode_result
from tests.queue_support import judged, make_queued

text = st.text(max_size=12)
floats = st.floats(allow_nan=False)
mapping = st.dictionaries(text, text, max_size=3)
essays = st.builds(Essay, id=text, text=st.text(max_size=60))
overrides = st.builds(
    Overrides,
    provider=st.none() | st.sampled_from(ProviderName),
    model=text,
    temperature=st.none() | floats,
    max_tokens=st.none() | st.integers(0, 1 << 20),
    system_prompt=text,
)
requests = st.builds(
    ComparisonRequest,
    request_id=text,
    essay_a=essays,
    essay_b=essays,
    correlation_id=text,
    instructions=text,
    overrides=overrides,
    metadata=mapping,
    priority=st.integers(0, 10),
    ttl_seconds=st.none() | floats,
    result_channel=text,
)
queued_requests = st.builds(
    QueuedRequest,
    request=requests,
    route=st.builds(Route, provider=st.sampled_from(ProviderName), model=text),
    group=text,
    bundle_limit=st.integers(1, 64),
    enqueued_at=floats,
    deadline=st.none() | floats,
    reply_to=text,
    trace_context=mapping,
)
results = st.builds(
    ComparisonResult,
    request_id=text,
    status=st.sampled_from(RequestStatus),
    correlation_id=text,
    judgement=st.none()
    | st.builds(
        Judgement, winner=st.sampled_from(Winner), justification=text, confidence=st.integers(1, 5)
    ),
    failure=st.none()
    | st.builds(
        Failure,
        code=st.sampled_from(ErrorCode),
        message=text,
        retryable=st.booleans(),
        attempts=st.integers(0, 9),
    ),
    provider=st.none() | st.sampled_from(ProviderName),
    model=text,
    token_usage=st.builds(TokenUsage, *[st.integers(0, 1 << 40)] * 4),
    cost_usd=floats,
    response_time_s=floats,
    requested_at=floats,
    completed_at=floats,
    trace_id=text,
    metadata=mapping,
    bundle=st.none()
    | st.builds(
        BundleFacts,
        bundle_id=text,
        index=st.integers(0, 63),
        size=st.integers(1, 64),
        mode=st.sampled_from(ProcessingMode),
    ),
)
quick = settings(max_examples=80, deadline=None, database=None)


@quick
@given(queued_requests)
def test_codec_round_trips_queued_requests(queued: QueuedRequest) -> None:
    decoded = decode_queued(encode_queued(queued))
    # repr also tells -0.0 from 0.0 and an int from a float, which == would let pass.
    assert (decoded, repr(decoded)) == (queued, repr(queued))


@quick
@given(results)
def test_codec_round_trips_results(result: ComparisonResult) -> None:
    decoded = decode_result(encode_result(result))
    assert (decoded, repr(decoded)) == (result, repr(result))


def test_codec_keeps_non_ascii_and_lone_surrogates() -> None:
    queued = make_queued("r1", text="Ünïcödé ✓ \ud800 end")
    data = encode_queued(queued)
    assert "Ünïcödé ✓".encode() in data  # raw UTF-8, not \\u escapes
    assert decode_queued(data) == queued


@pytest.mark.parametrize("value", [math.inf, -math.inf])
def test_codec_keeps_values_orjson_cannot_write(value: float) -> None:
    # orjson writes non-finite floats as null and refuses integers beyond 64 bits.
    queued = replace(make_queued("r1"), deadline=value)
    assert repr(decode_queued(encode_queued(queued))) == repr(queued)
    result = replace(judged(queued), cost_usd=value)
    assert repr(decode_result(encode_result(result))) == repr(result)
    result = replace(judged(queued), token_usage=TokenUsage(1 << 70, 0))
    assert repr(decode_result(encode_result(result))) == repr(result)


def test_codec_reads_payloads_with_fields_it_does_not_know_or_lacks() -> None:
    # A payload written by an older release (no `trace_context`) or a newer one (extra field).
    data = encode_queued(make_queued("r1")).replace(b',"trace_context":{}', b',"added_later":1')
    assert decode_queued(data) == make_queued("r1")
