"""Anthropic's Message Batches, faked: in_progress -> (canceling ->) ended, `request_counts`,
results as JSONL of succeeded / errored / canceled / expired lines in shuffled order.
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from tests.fake_batch_common import USAGE, Batch, FakeBatches, advance, jsonl
from tests.fake_http import Handler, Request, Response
from tests.fake_llm_servers import FakeAnthropic, block_text


class FakeAnthropicBatches(FakeBatches):
    """Anthropic's Message Batches endpoints."""

    def __init__(self, *, api_key: str | Collection[str], seed: int = 7) -> None:
        self._validator = FakeAnthropic(api_key=None)
        super().__init__(api_key=api_key, seed=seed)

    @property
    def base_url(self) -> str:
        """What LPS_ANTHROPIC_BASE_URL is set to."""
        return self.base_root

    def routes(self) -> list[tuple[str, str, Handler]]:
        prefix = "/v1/messages/batches"
        return [
            ("POST", prefix, self._create),
            ("GET", prefix, self._list),
            ("GET", prefix + "/([^/]+)", self._get),
            ("POST", prefix + "/([^/]+)/cancel", self._cancel),
            ("GET", prefix + "/([^/]+)/results", self._results),
        ]

    def _auth(self, request: Request) -> Response | None:
        if request.headers.get("anthropic-version") != "2023-06-01":
            self.problems.append("anthropic-version header must be 2023-06-01")
        return self._check_key(request.headers.get("x-api-key"))

    async def _create(self, request: Request, _: re.Match[str]) -> Response:
        if denied := self._auth(request):
            return denied
        requests = (request.json() or {}).get("requests")
        if not isinstance(requests, list) or not requests:
            return Response(
                400, {"error": {"type": "invalid_request_error", "message": "requests"}}
            )
        seen: set[str] = set()
        headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
        for entry in requests:
            cid = entry.get("custom_id")
            if (
                not isinstance(cid, str)
                or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", cid)
                or cid in seen
            ):
                self.problems.append(f"custom_id invalid or repeated: {cid!r}")
            seen.add(str(cid))
            self.problems.extend(
                self._validator._problems("POST", "/v1/messages", headers, entry.get("params"))
            )
        return Response(200, self._object(self._new(requests)))

    async def _get(self, request: Request, match: re.Match[str]) -> Response:
        if denied := self._auth(request):
            return denied
        batch = self.batches.get(match.group(1))
        if batch is None:
            return Response(404, {"error": {"type": "not_found_error", "message": "no batch"}})
        self.polls[batch.id] += 1
        shown = self._object(batch)
        batch.last = shown["status" if "status" in shown else "processing_status"]
        return Response(200, shown)

    async def _list(self, request: Request, _: re.Match[str]) -> Response:
        if denied := self._auth(request):
            return denied
        return self._page(request, cursor="after_id")

    async def _cancel(self, request: Request, match: re.Match[str]) -> Response:
        if denied := self._auth(request):
            return denied
        batch = self.batches[match.group(1)]
        if batch.cancel_asked is None and not self._ended(batch):
            batch.cancel_asked = time.monotonic()
        return Response(200, self._object(batch))

    def _state(self, batch: Batch) -> str:
        """in_progress (-> canceling) -> ended, never more than one state past the last one a
        status request saw."""
        step = batch.script.steps
        if batch.cancel_asked is not None:  # canceling from the cancel request on
            path = ["canceling", "ended"]
            n = 1 if time.monotonic() - batch.cancel_asked >= step else 0
        else:
            path, n = ["in_progress", "ended"], min(1, int(batch.elapsed() / (2 * step)))
        return advance(path, batch.last, n)[0]

    def _ended(self, batch: Batch) -> bool:
        return self._state(batch) == "ended"

    def _kind(self, batch: Batch, number: int) -> str:
        if self._ran(batch, number):
            return "errored" if number in batch.script.errors else "succeeded"
        cancelled = batch.cancel_asked is not None or batch.script.outcome == "cancelled"
        return "canceled" if cancelled else "expired"

    def _prompt(self, line: dict[str, Any]) -> str:
        messages = line["params"]["messages"]
        return "\n".join(block_text(m["content"]) for m in messages)

    def _object(self, batch: Batch) -> dict[str, Any]:
        ended = self._ended(batch)
        counts = {
            "processing": len(batch.lines),
            "succeeded": 0,
            "errored": 0,
            "canceled": 0,
            "expired": 0,
        }
        if ended:
            counts["processing"] = 0
            for number in range(len(batch.lines)):
                counts[self._kind(batch, number)] += 1
        created = datetime.fromtimestamp(batch.created_at, UTC).isoformat().replace("+00:00", "Z")
        state = self._state(batch)
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": state,
            "request_counts": counts,
            "created_at": created,
            "ended_at": created if ended else None,
            "cancel_initiated_at": created
            if batch.cancel_asked or batch.script.outcome == "cancelled"
            else None,
            "results_url": f"{self.base_root}/v1/messages/batches/{batch.id}/results"
            if ended
            else None,
        }

    async def _results(self, request: Request, match: re.Match[str]) -> Response:
        if denied := self._auth(request):
            return denied
        batch = self.batches[match.group(1)]
        if not self._ended(batch):
            return Response(
                400, {"error": {"type": "invalid_request_error", "message": "not ended"}}
            )
        lines = []
        for number in batch.order:
            entry = batch.lines[number]
            cid, params = entry["custom_id"], entry["params"]
            kind = self._kind(batch, number)
            if kind == "succeeded":
                prompt = "\n".join(block_text(m["content"]) for m in params["messages"])
                _, answer = self._line_answer(batch, number, prompt)
                block = (
                    {"type": "text", "text": answer}
                    if isinstance(answer, str)
                    else {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": params["tool_choice"]["name"],
                        "input": answer,
                    }
                )
                message = {
                    "id": f"msg_{cid}",
                    "type": "message",
                    "role": "assistant",
                    "model": params["model"],
                    "content": [block],
                    "stop_reason": "tool_use" if block["type"] == "tool_use" else "end_turn",
                    "usage": {"input_tokens": USAGE[0], "output_tokens": USAGE[1]},
                }
                result: dict[str, Any] = {"type": "succeeded", "message": message}
            elif kind == "errored":
                status, message_text = batch.script.errors[number]
                kind_name = "invalid_request_error" if status < 500 else "overloaded_error"
                result = {
                    "type": "errored",
                    "error": {
                        "type": "error",
                        "error": {"type": kind_name, "message": message_text},
                    },
                }
            else:
                result = {"type": kind}
            lines.append({"custom_id": cid, "result": result})
        return Response(200, jsonl(lines))
