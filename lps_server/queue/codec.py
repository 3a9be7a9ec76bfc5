"""Bytes for what the Redis queue stores: QueuedRequest and ComparisonResult as compact JSON.

Fields are written by name, not position, so a payload stored by one release still decodes in the
next during a rolling deploy (a field it does not carry takes its default). Text goes out as UTF-8
rather than `\\u` escapes: essays dominate the bytes and are often not ASCII. Decoding an encoded
value gives back an equal value (floats are written in their shortest exact form).

orjson does the work: the payloads are mostly essay text, and it encodes them about thirty times
faster than the standard library (the codec was a tenth of LPS's CPU per comparison). It cannot
write three rare things exactly: lone surrogates and integers beyond 64 bits (it refuses them) and
non-finite floats (it writes `null`). Payloads holding any of them take the standard library's path
(surrogates as UTF-8 with `surrogatepass`, big integers, `Infinity`), marked by a leading space so
that decoding takes the same path: orjson would refuse some of that and read big integers as floats.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

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
from lps_server.queue.base import UnreadableRequest

Obj = dict[str, Any]
# How much of a decoding error an unreadable request's failure message quotes.
MAX_REASON_CHARS = 200


def _dump(obj: Obj, floats: tuple[float | None, ...]) -> bytes:
    """`obj` as JSON; `floats` are its float fields, which must be finite for orjson's path."""
    if all(f is None or math.isfinite(f) for f in floats):
        try:
            return orjson.dumps(obj)
        except TypeError:  # a lone surrogate or an integer beyond 64 bits
            pass
    # surrogatepass keeps any Python str encodable; json.loads decodes bytes the same way.
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return _STDLIB_MARK + text.encode("utf-8", "surrogatepass")


# Leading whitespace is valid JSON, so the mark needs no stripping and older readers ignore it.
_STDLIB_MARK = b" "


def _load(data: bytes) -> Obj:
    obj: Obj
    if data.startswith(_STDLIB_MARK):
        obj = json.loads(data)
    else:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:  # a payload from a release before orjson
            obj = json.loads(data)
    return obj


def _essay(essay: Essay) -> Obj:
    return {"id": essay.id, "text": essay.text}


def _essay_from(obj: Obj) -> Essay:
    return Essay(id=obj["id"], text=obj["text"])


def _overrides(o: Overrides) -> Obj:
    return {
        "provider": o.provider.value if o.provider is not None else None,
        "model": o.model,
        "temperature": o.temperature,
        "max_tokens": o.max_tokens,
        "system_prompt": o.system_prompt,
    }


def _overrides_from(obj: Obj) -> Overrides:
    provider = obj.get("provider")
    return Overrides(
        provider=ProviderName(provider) if provider is not None else None,
        model=obj.get("model", ""),
        temperature=obj.get("temperature"),
        max_tokens=obj.get("max_tokens"),
        system_prompt=obj.get("system_prompt", ""),
    )


def _request(r: ComparisonRequest) -> Obj:
    return {
        "request_id": r.request_id,
        "essay_a": _essay(r.essay_a),
        "essay_b": _essay(r.essay_b),
        "correlation_id": r.correlation_id,
        "instructions": r.instructions,
        "overrides": _overrides(r.overrides),
        "metadata": dict(r.metadata),
        "priority": r.priority,
        "ttl_seconds": r.ttl_seconds,
        "result_channel": r.result_channel,
    }


def _request_from(obj: Obj) -> ComparisonRequest:
    return ComparisonRequest(
        request_id=obj["request_id"],
        essay_a=_essay_from(obj["essay_a"]),
        essay_b=_essay_from(obj["essay_b"]),
        correlation_id=obj.get("correlation_id", ""),
        instructions=obj.get("instructions", ""),
        overrides=_overrides_from(obj.get("overrides", {})),
        metadata=dict(obj.get("metadata", {})),
        priority=obj.get("priority", 0),
        ttl_seconds=obj.get("ttl_seconds"),
        result_channel=obj.get("result_channel", ""),
    )


def encode_queued(queued: QueuedRequest) -> bytes:
    """The stored form of a queued request."""
    return _dump(
        {
            "request": _request(queued.request),
            "route": {"provider": queued.route.provider.value, "model": queued.route.model},
            "group": queued.group,
            "bundle_limit": queued.bundle_limit,
            "enqueued_at": queued.enqueued_at,
            "deadline": queued.deadline,
            "reply_to": queued.reply_to,
            "trace_context": dict(queued.trace_context),
        },
        (
            queued.request.overrides.temperature,
            queued.request.ttl_seconds,
            queued.enqueued_at,
            queued.deadline,
        ),
    )


def decode_queued(data: bytes) -> QueuedRequest:
    """The queued request `encode_queued` wrote."""
    obj = _load(data)
    route = obj["route"]
    return QueuedRequest(
        request=_request_from(obj["request"]),
        route=Route(provider=ProviderName(route["provider"]), model=route["model"]),
        group=obj["group"],
        bundle_limit=obj["bundle_limit"],
        enqueued_at=obj["enqueued_at"],
        deadline=obj.get("deadline"),
        reply_to=obj.get("reply_to", ""),
        trace_context=dict(obj.get("trace_context", {})),
    )


def unreadable(request_id: str, data: bytes, error: Exception) -> UnreadableRequest:
    """What can still be told about a payload `decode_queued` refused with `error`: the reason,
    and the channels and correlation id when the payload is at least a JSON object of our shape.

    `routable` is False when the payload names a provider this release does not know (a newer
    release wrote it); then it reads well enough otherwise.
    """
    try:
        loaded: object = _load(data)
    except ValueError:
        loaded = None
    obj: Obj = loaded if isinstance(loaded, dict) else {}
    request: Obj = obj["request"] if isinstance(obj.get("request"), dict) else {}
    route: Obj = obj["route"] if isinstance(obj.get("route"), dict) else {}
    provider = route.get("provider")
    known = {p.value for p in ProviderName}
    if isinstance(provider, str) and provider not in known:
        reason = f"it names provider {provider[:40]!r}, unknown to this release"
        routable = False
    else:
        text = f"{type(error).__name__}: {error}"
        reason = f"its payload does not decode ({text[:MAX_REASON_CHARS]})"
        routable = True

    def text_of(source: Obj, key: str) -> str:
        value = source.get(key)
        return value if isinstance(value, str) else ""

    enqueued_at = obj.get("enqueued_at")
    return UnreadableRequest(
        request_id=request_id,
        reason=reason,
        routable=routable,
        result_channel=text_of(request, "result_channel"),
        reply_to=text_of(obj, "reply_to"),
        correlation_id=text_of(request, "correlation_id"),
        enqueued_at=float(enqueued_at) if isinstance(enqueued_at, int | float) else 0.0,
    )


def _judgement(j: Judgement | None) -> Obj | None:
    if j is None:
        return None
    return {"winner": j.winner.value, "justification": j.justification, "confidence": j.confidence}


def _judgement_from(obj: Obj | None) -> Judgement | None:
    if obj is None:
        return None
    return Judgement(
        winner=Winner(obj["winner"]),
        justification=obj["justification"],
        confidence=obj["confidence"],
    )


def _failure(f: Failure | None) -> Obj | None:
    if f is None:
        return None
    return {
        "code": f.code.value,
        "message": f.message,
        "retryable": f.retryable,
        "attempts": f.attempts,
    }


def _failure_from(obj: Obj | None) -> Failure | None:
    if obj is None:
        return None
    return Failure(
        code=ErrorCode(obj["code"]),
        message=obj["message"],
        retryable=obj.get("retryable", False),
        attempts=obj.get("attempts", 0),
    )


def _bundle(b: BundleFacts | None) -> Obj | None:
    if b is None:
        return None
    return {"bundle_id": b.bundle_id, "index": b.index, "size": b.size, "mode": b.mode.value}


def _bundle_from(obj: Obj | None) -> BundleFacts | None:
    if obj is None:
        return None
    return BundleFacts(
        bundle_id=obj.get("bundle_id", ""),
        index=obj.get("index", 0),
        size=obj.get("size", 1),
        mode=ProcessingMode(obj.get("mode", ProcessingMode.PER_REQUEST.value)),
    )


def encode_result(result: ComparisonResult) -> bytes:
    """The stored (and published) form of a result."""
    return _dump(
        {
            "request_id": result.request_id,
            "status": result.status.value,
            "correlation_id": result.correlation_id,
            "judgement": _judgement(result.judgement),
            "failure": _failure(result.failure),
            "provider": result.provider.value if result.provider is not None else None,
            "model": result.model,
            # Older payloads hold the first two; cached kinds follow, so both decode.
            "token_usage": _usage(result.token_usage),
            "cost_usd": result.cost_usd,
            "response_time_s": result.response_time_s,
            "requested_at": result.requested_at,
            "completed_at": result.completed_at,
            "trace_id": result.trace_id,
            "metadata": dict(result.metadata),
            "bundle": _bundle(result.bundle),
        },
        (result.cost_usd, result.response_time_s, result.requested_at, result.completed_at),
    )


def _usage(usage: TokenUsage) -> list[int]:
    values = [usage.prompt_tokens, usage.completion_tokens]
    if usage.cache_read_tokens or usage.cache_write_tokens:
        values += [usage.cache_read_tokens, usage.cache_write_tokens]
    return values


def decode_result(data: bytes) -> ComparisonResult:
    """The result `encode_result` wrote."""
    obj = _load(data)
    provider = obj.get("provider")
    usage = [*obj.get("token_usage", []), 0, 0, 0, 0][:4]
    return ComparisonResult(
        request_id=obj["request_id"],
        status=RequestStatus(obj["status"]),
        correlation_id=obj.get("correlation_id", ""),
        judgement=_judgement_from(obj.get("judgement")),
        failure=_failure_from(obj.get("failure")),
        provider=ProviderName(provider) if provider is not None else None,
        model=obj.get("model", ""),
        token_usage=TokenUsage(*usage),
        cost_usd=obj.get("cost_usd", 0.0),
        response_time_s=obj.get("response_time_s", 0.0),
        requested_at=obj.get("requested_at", 0.0),
        completed_at=obj.get("completed_at", 0.0),
        trace_id=obj.get("trace_id", ""),
        metadata=dict(obj.get("metadata", {})),
        bundle=_bundle_from(obj.get("bundle")),
    )
