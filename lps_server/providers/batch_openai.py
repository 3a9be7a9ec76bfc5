"""OpenAI's Batch API (and compatible servers): a JSONL file of Chat Completions requests, one
batch over it, its output and error files.

* `POST {base}/files` (multipart, `purpose=batch`), each line `{"custom_id", "method": "POST",
  "url": "/v1/chat/completions", "body"}`, the body a synchronous call's;
* `POST {base}/batches` with `input_file_id`, `endpoint`, `completion_window: "24h"` and the job id
  in `metadata` (`lps_job_id`), which is how `find` recognises a batch created by an attempt whose
  answer was lost;
* `GET {base}/batches/{id}`: `validating`, `in_progress`, `finalizing`, then `completed`,
  `failed`, `expired` or `cancelled` (through `cancelling`);
* `GET {base}/files/{id}/content` of `output_file_id` (answered lines, in any order; a completed
  batch can still hold failed lines) and `error_file_id` (`batch_expired`, `batch_cancelled`...).
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from lps_server.core.domain import ErrorCode
from lps_server.providers.base import ItemFailure, ItemOutcome, ProviderCallError
from lps_server.providers.batch_base import (
    COMPLETION_WINDOW,
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
from lps_server.providers.openai_compat import OpenAICompatibleProvider

ENDPOINT = "/v1/chat/completions"
JOB_METADATA_KEY = "lps_job_id"
_ENDED = {
    "completed": BatchOutcome.COMPLETED,
    "failed": BatchOutcome.FAILED,
    "expired": BatchOutcome.EXPIRED,
    "cancelled": BatchOutcome.CANCELLED,
}
_CANCELLED = ("cancelling", "cancelled")
# `find` looks this far before the attempt (clock skew between us and the provider).
FIND_SKEW_S = 300.0


class OpenAIBatchApi(HttpBatchApi):
    """The Batch API of PROVIDER_OPENAI or PROVIDER_OPENAI_COMPATIBLE."""

    max_lines = 50_000
    # 200 MB per input file; a margin for the JSON around each body.
    max_bytes = 190_000_000

    def __init__(
        self, provider: OpenAICompatibleProvider, *, client: httpx.AsyncClient | None = None
    ) -> None:
        key = provider._settings.api_key.reveal()
        super().__init__(provider, {"Authorization": f"Bearer {key}"} if key else {}, client=client)

    def input_file(self, spec: BatchSpec) -> bytes:
        """The JSONL input file of a job."""
        lines = [
            {
                "custom_id": line.custom_id,
                "method": "POST",
                "url": ENDPOINT,
                "body": self.line_body(line, model=spec.model, overrides=spec.overrides),
            }
            for line in spec.lines
        ]
        return b"".join(orjson.dumps(line) + b"\n" for line in lines)

    async def create(self, spec: BatchSpec) -> str:
        """Upload the input file, then create the batch over it, tagged with the job id."""
        # An upload whose answer is lost costs nothing (files are not billed): a later attempt
        # uploads again. Only the batch must never be created twice.
        upload = await self._http.json(
            "POST",
            "/files",
            data={"purpose": "batch"},
            files={
                "file": (f"lps-{spec.job_id}.jsonl", self.input_file(spec), "application/jsonl")
            },
        )
        file_id = _text(upload.get("id"))
        if not file_id:
            raise ProviderCallError(ErrorCode.INVALID_RESPONSE, "openai: upload gave no file id")
        batch = await self._http.json(
            "POST",
            "/batches",
            creating=True,
            json={
                "input_file_id": file_id,
                "endpoint": ENDPOINT,
                "completion_window": COMPLETION_WINDOW,
                "metadata": {JOB_METADATA_KEY: spec.job_id},
            },
        )
        batch_id = _text(batch.get("id"))
        if not batch_id:
            raise ProviderCallError(ErrorCode.INVALID_RESPONSE, "openai: the batch has no id")
        return batch_id

    async def find(self, spec: BatchSpec, *, since: float, claimed: ClaimedBy) -> str | None:
        """The batch whose metadata names this job, among those created since `since`."""
        async for batch in self.listed(
            "/batches",
            cursor="after",
            since=since - FIND_SKEW_S,
            created=lambda b: _number(b.get("created_at")),
        ):
            metadata = batch.get("metadata")
            if _text(batch.get("status")) in _CANCELLED:
                continue  # cancelled as a duplicate by the attempt that made it
            if isinstance(metadata, dict) and metadata.get(JOB_METADATA_KEY) == spec.job_id:
                return _text(batch.get("id")) or None
        return None

    async def status(self, batch_id: str) -> BatchStatus:
        """The batch's status, tallies and result files."""
        batch = await self._http.json("GET", f"/batches/{batch_id}")
        state = _text(batch.get("status"))
        counts = batch.get("request_counts")
        raw_errors = batch.get("errors")
        errors = raw_errors.get("data") if isinstance(raw_errors, dict) else None
        error = ""
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            error = "; ".join(
                f"{e.get('code', 'error')}: {e.get('message', '')}"
                for e in errors[:3]
                if isinstance(e, dict)
            )
        refs = {
            key: _text(batch.get(key))
            for key in ("output_file_id", "error_file_id")
            if _text(batch.get(key))
        }
        return BatchStatus(
            state=state,
            ended=state in _ENDED,
            counts={k: int(v) for k, v in counts.items() if isinstance(v, int)}
            if isinstance(counts, dict)
            else {},
            outcome=_ENDED.get(state),
            error=error,
            refs=refs,
        )

    async def results(
        self, batch_id: str, spec: BatchSpec, status: BatchStatus
    ) -> dict[str, list[ItemOutcome]]:
        """Every line found in the output and error files, by custom_id."""
        by_id = {line.custom_id: line for line in spec.lines}
        found: dict[str, list[ItemOutcome]] = {}
        for key in ("error_file_id", "output_file_id"):  # an answer beats an error for a line
            file_id = status.refs.get(key)
            if not file_id:
                continue
            content = await self._http.call("GET", f"/files/{file_id}/content")
            for entry in jsonl_objects(content.text):
                line = by_id.get(_text(entry.get("custom_id")))
                if line is not None:
                    found[line.custom_id] = self._line(entry, line, spec.model)
        return found

    def _line(self, entry: dict[str, Any], line: BatchLine, model: str) -> list[ItemOutcome]:
        response = entry.get("response")
        error = entry.get("error")
        if isinstance(error, dict):
            code = _text(error.get("code"))
            if code == "batch_expired":
                return [expired_line(self.name)] * len(line.items)
            if code == "batch_cancelled":
                return [cancelled_line(self.name)] * len(line.items)
        if isinstance(response, dict):
            status_code = response.get("status_code")
            if status_code == 200:
                return self.answered(response.get("body"), line, model)
            if isinstance(status_code, int) and status_code >= 400:
                return self.refused(status_code, response.get("body"), line)
        message = _text(error.get("message")) if isinstance(error, dict) else ""
        code = ErrorCode.TIMEOUT if "timeout" in str(error) else ErrorCode.PROVIDER_UNAVAILABLE
        failure = ItemFailure(code, f"openai: batch line failed: {message or 'no answer'}")
        return [failure] * len(line.items)

    async def cancel(self, batch_id: str) -> None:
        """Ask OpenAI to cancel the batch."""
        await self._http.call("POST", f"/batches/{batch_id}/cancel")


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
