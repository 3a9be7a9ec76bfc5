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
import json

from lps_server.core.domain import ComparisonRequest


def payload_digest(request: ComparisonRequest) -> str:
    """SHA-256 (hex) of the fields of `request` that decide its verdict."""
    over = request.overrides
    fields = [
        request.essay_a.id,
        request.essay_a.text,
        request.essay_b.id,
        request.essay_b.text,
        request.instructions,
        over.provider.value if over.provider is not None else None,
        over.model,
        over.temperature,
        over.max_tokens,
        over.system_prompt,
    ]
    # A JSON list is unambiguous however the texts are built (no separator can be forged);
    # surrogatepass keeps any Python string hashable, as the codec does.
    encoded = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8", "surrogatepass")).hexdigest()
