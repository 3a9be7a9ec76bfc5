"""The bundling rule: which queued requests may share one provider call.

Two requests are compatible when they resolved to the same provider and model, carry the same
overrides and the same `cj_llm_batching_mode` hint, and allow the same bundle size. The queue keys
every request by this compatibility key at intake. A bundle is then formed as: the request at the
head of the queue (highest priority, oldest), plus up to `limit - 1` more requests of its key, taken
in queue order however far back they stand. Requests of other keys are not moved: the next bundle
is led by whatever is then at the head, so no request waits behind newer work of its own priority,
and interleaved groups still form full bundles.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Collection, Mapping

from lps_server.core.domain import Overrides, ProcessingMode, ProviderName, Route

BATCHING_MODE_KEY = "cj_llm_batching_mode"
PREFERRED_BUNDLE_SIZE_KEY = "preferred_bundle_size"
MAX_BUNDLE_SIZE = 64
#: The CJ hint that asks for a provider batch API (honoured for LPS_BATCH_API_PROVIDERS).
BATCH_API_HINT = "provider_batch_api"
#: The providers' batch completion window (OpenAI's `24h`; Anthropic ends a batch after 24 h).
BATCH_COMPLETION_WINDOW_S = 86_400.0
# What marks a batch group's key, after the limit: not a hex digit, so no plain key has it.
_BATCH_MARK = "batch-"


def takes_batch_path(
    metadata: Mapping[str, str],
    provider: ProviderName,
    *,
    mode: ProcessingMode,
    batch_providers: Collection[str],
    ttl_s: float | None,
) -> bool:
    """Whether a request goes through its provider's batch API rather than a synchronous call.

    Every request does in `batch_api` mode; in the other modes a request whose
    `cj_llm_batching_mode` is `provider_batch_api` does when LPS_BATCH_API_PROVIDERS lists its
    provider. A request whose own TTL is shorter than the batch completion window cannot be
    promised a batch result in time, so it is served per request instead.
    """
    if ttl_s is not None and ttl_s < BATCH_COMPLETION_WINDOW_S:
        return False
    if mode == ProcessingMode.BATCH_API:
        return True
    return metadata.get(BATCHING_MODE_KEY) == BATCH_API_HINT and provider.value in batch_providers


def is_batch_group(key: str) -> bool:
    """True for the compatibility key of requests that take the batch path."""
    return key.split(":", 1)[-1].startswith(_BATCH_MARK)


def bundle_limit(metadata: Mapping[str, str], *, mode: ProcessingMode, max_per_call: int) -> int:
    """The largest bundle this request may lead or join.

    `preferred_bundle_size` can only lower the configured maximum, and counts only when it is an
    integer in 1..64. In per-request mode every call carries one request.
    """
    if mode != ProcessingMode.SERIAL_BUNDLE:
        return 1
    hint = metadata.get(PREFERRED_BUNDLE_SIZE_KEY, "").strip()
    # ASCII digits only: str.isdigit() also accepts "²", which int() rejects.
    if hint.isascii() and hint.isdigit() and 1 <= int(hint) <= MAX_BUNDLE_SIZE:
        return min(max_per_call, int(hint))
    return max_per_call


def compatibility_key(
    route: Route,
    overrides: Overrides,
    metadata: Mapping[str, str],
    *,
    limit: int,
    batch: bool = False,
) -> str:
    """A stable key, equal for exactly the requests that may share a bundle.

    The key starts with the bundle limit (`"8:..."`) so a queue backend can read it without the
    request body; requests that take the batch path have keys of their own (`"8:batch-..."`),
    and the limit is then the number of comparisons per batch line.
    """
    key = _key(
        route.provider.value,
        route.model,
        overrides.temperature,
        overrides.max_tokens,
        overrides.system_prompt,
        metadata.get(BATCHING_MODE_KEY, ""),
        limit,
    )
    if not batch:
        return key
    limit_part, digest = key.split(":", 1)
    return f"{limit_part}:{_BATCH_MARK}{digest}"


@functools.lru_cache(maxsize=1024)
def _key(
    provider: str,
    model: str,
    temperature: float | None,
    max_tokens: int | None,
    system_prompt: str,
    batching_mode: str,
    limit: int,
) -> str:
    # Cached: a workload has few distinct keys, and hashing each request showed in profiles.
    facts = [provider, model, temperature, max_tokens, system_prompt, batching_mode]
    digest = hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:24]
    return f"{limit}:{digest}"


def limit_of(key: str) -> int:
    """The bundle limit encoded in a compatibility key."""
    return int(key.split(":", 1)[0])


def enrich_metadata(
    metadata: Mapping[str, str], *, route: Route, mode: ProcessingMode
) -> dict[str, str]:
    """The metadata with the routing keys added; existing caller keys are left as they are.

    Idempotent: enriching enriched metadata changes nothing.
    """
    enriched = dict(metadata)
    enriched["resolved_provider"] = route.provider.value
    enriched["resolved_model"] = route.model
    enriched["queue_processing_mode"] = mode.value
    return enriched
