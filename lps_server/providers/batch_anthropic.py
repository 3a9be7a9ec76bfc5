"""Anthropic's Message Batches: `POST {base}/v1/messages/batches` with `requests: [{custom_id,
params}]` (each `params` a synchronous Messages request body), `GET {base}/v1/messages/batches/{id}`
(`processing_status` `in_progress`, `canceling`, `ended`; `request_counts`), then the JSONL at
`results_url`: one line per request, `result.type` `succeeded` (with the message), `errored`,
`canceled` or `expired`, in any order.

Message Batches carry no metadata, so `find` recognises a batch by what it can see: created within
the window of the attempt whose answer was lost, holding as many requests as the job has lines,
not the batch of another job, and not cancelled. Two jobs of the same size whose creations were
both lost within the same minute cannot be told apart this way; the results then carry custom ids
of the other job, which are not this job's, so its requests are retried rather than given another
job's answers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx

from lps_server.core.domain import ErrorCode
from lps_server.providers.anthropic import ANTHROPIC_VERSION, AnthropicProvider
from lps_server.providers.base import ItemFailure, ItemOutcome, ProviderCallError
from lps_server.providers.batch_base import (
    BatchLine,
    BatchOutcome,
    BatchSpec,
    BatchStatus,
    ClaimedBy,
    cancelled_line,
    expired_line,
)
from lps_server.providers.batch_http import HttpBatchApi, jsonl_objects
from lps_server.providers.batch_http import text_of as _text

BATCHES = "/v1/messages/batches"
# How far around the attempt `find` looks, for clock skew between us and the provider.
FIND_SKEW_S = 120.0
# How an `errored` line's error type maps to a failure: retried (overloaded, rate limited, API
# errors) or not (the request itself was refused).
_ERRORED = {
    "rate_limit_error": ErrorCode.RATE_LIMITED,
    "overloaded_error": ErrorCode.PROVIDER_UNAVAILABLE,
    "api_error": ErrorCode.PROVIDER_UNAVAILABLE,
    "timeout_error": ErrorCode.TIMEOUT,
}


class AnthropicBatchApi(HttpBatchApi):
    """Anthropic's Message Batches API."""

    max_lines = 100_000
    # 256 MB per batch request; a margin for the JSON around each body.
    max_bytes = 240_000_000

    def __init__(
        self, provider: AnthropicProvider, *, client: httpx.AsyncClient | None = None
    ) -> None:
        headers = {
            "x-api-key": provider._settings.api_key.reveal(),
            "anthropic-version": ANTHROPIC_VERSION,
        }
        super().__init__(provider, headers, client=client)

    async def create(self, spec: BatchSpec) -> str:
        """Create the batch with every line's Messages request."""
        requests = [
            {
                "custom_id": line.custom_id,
                "params": self.line_body(line, model=spec.model, overrides=spec.overrides),
            }
            for line in spec.lines
        ]
        batch = await self._http.json("POST", BATCHES, creating=True, json={"requests": requests})
        batch_id = _text(batch.get("id"))
        if not batch_id:
            raise ProviderCallError(ErrorCode.INVALID_RESPONSE, "anthropic: the batch has no id")
        return batch_id

    async def find(self, spec: BatchSpec, *, since: float, claimed: ClaimedBy) -> str | None:
        """The one unclaimed batch of this job's size created in the attempt's window."""
        low, high = since - FIND_SKEW_S, since + self.call_timeout_s + FIND_SKEW_S
        candidates: list[tuple[float, str]] = []
        async for batch in self.listed(
            BATCHES, cursor="after_id", since=low, created=lambda b: _time(b.get("created_at"))
        ):
            created = _time(batch.get("created_at"))
            counts = batch.get("request_counts")
            size = -1
            if isinstance(counts, dict):
                size = sum(v for v in counts.values() if isinstance(v, int))
            batch_id = _text(batch.get("id"))
            if batch.get("cancel_initiated_at"):
                continue  # cancelled as a duplicate by the attempt that made it
            if low <= created <= high and size == len(spec.lines) and batch_id:
                candidates.append((created, batch_id))
        for _, batch_id in sorted(candidates):
            if await claimed(batch_id) is None:
                return batch_id
        return None

    async def status(self, batch_id: str) -> BatchStatus:
        """The batch's processing status and request counts."""
        batch = await self._http.json("GET", f"{BATCHES}/{batch_id}")
        state = _text(batch.get("processing_status"))
        raw = batch.get("request_counts")
        counts = (
            {k: v for k, v in raw.items() if isinstance(v, int)} if isinstance(raw, dict) else {}
        )
        ended = state == "ended"
        outcome = None
        if ended:
            if batch.get("cancel_initiated_at"):
                outcome = BatchOutcome.CANCELLED
            elif counts.get("expired"):
                outcome = BatchOutcome.EXPIRED
            else:
                outcome = BatchOutcome.COMPLETED
        url = _text(batch.get("results_url"))
        return BatchStatus(
            state=state,
            ended=ended,
            counts=counts,
            outcome=outcome,
            refs={"results_url": url} if url else {},
        )

    async def results(
        self, batch_id: str, spec: BatchSpec, status: BatchStatus
    ) -> dict[str, list[ItemOutcome]]:
        """Every line of the results file, by custom_id."""
        url = status.refs.get("results_url", "")
        if not url.startswith(self._settings.base_url + "/"):
            # The key goes only to the configured API, whatever URL a response names.
            url = f"{BATCHES}/{batch_id}/results"
        content = await self._http.call("GET", url)
        by_id = {line.custom_id: line for line in spec.lines}
        found: dict[str, list[ItemOutcome]] = {}
        for entry in jsonl_objects(content.text):
            line = by_id.get(_text(entry.get("custom_id")))
            result = entry.get("result")
            if line is not None and isinstance(result, dict):
                found[line.custom_id] = self._line(result, line, spec.model)
        return found

    def _line(self, result: dict[str, Any], line: BatchLine, model: str) -> list[ItemOutcome]:
        kind = _text(result.get("type"))
        if kind == "succeeded":
            return self.answered(result.get("message"), line, model)
        if kind == "expired":
            return [expired_line(self.name)] * len(line.items)
        if kind == "canceled":
            return [cancelled_line(self.name)] * len(line.items)
        outer = result.get("error")
        error = outer.get("error") if isinstance(outer, dict) else None
        error = error if isinstance(error, dict) else (outer if isinstance(outer, dict) else {})
        error_type = _text(error.get("type"))
        code = _ERRORED.get(error_type, ErrorCode.PROVIDER_ERROR)
        message = _text(error.get("message")) or error_type or kind or "no result"
        failure = ItemFailure(code, f"anthropic: batch line {kind or 'failed'}: {message}"[:300])
        return [failure] * len(line.items)

    async def cancel(self, batch_id: str) -> None:
        """Ask Anthropic to cancel the batch."""
        await self._http.call("POST", f"{BATCHES}/{batch_id}/cancel")


def _time(value: object) -> float:
    """An RFC 3339 time as Unix time (0 when absent or malformed)."""
    if not isinstance(value, str):
        return 0.0
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return 0.0
