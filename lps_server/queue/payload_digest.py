"""The payload digest that tells a retried request from a different request under a reused id.

A request id is an idempotency key: submitting it again is a retry and gets the first
submission's status. A retry may differ from its first try in how it is delivered and labelled, so
the digest covers only what decides the verdict: both essays (id and text, in order), the
instructions and the overrides as sent (provider, model, temperature, max_tokens, system_prompt).
It leaves out the correlation id, metadata (`comparison_iteration`, `cj_request_type` and
`preferred_bundle_size` change between a first try and a retry), priority, TTL and result
channel. A known id whose digest differs is a conflict, refused with ALREADY_EXISTS.
"""

from __future__ import annotations

import hashlib

from lps_server.core.domain import ComparisonRequest


def payload_digest(request: ComparisonRequest) -> str:
    """SHA-256 (hex) of the fields of `request` that decide its verdict."""
    over = request.overrides
    fields = (
        request.essay_a.id,
        request.essay_a.text,
        request.essay_b.id,
        request.essay_b.text,
        request.instructions,
        over.provider,
        over.model,
        over.temperature,
        over.max_tokens,
        over.system_prompt,
    )
    digest = hashlib.sha256()
    for value in fields:
        # Each field is marked unset, or length-prefixed: no two payloads hash the same bytes,
        # however their texts are built. (JSON would do as well at twice the cost, on the path
        # of every submission.) surrogatepass keeps any Python string hashable, as the codec does.
        if value is None:
            digest.update(b"\x00")
            continue
        data = (value if isinstance(value, str) else repr(value)).encode("utf-8", "surrogatepass")
        digest.update(b"\x01" + len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()
