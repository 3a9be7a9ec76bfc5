"""OpenAI's Batch API, faked: files and batches, validating -> in_progress -> finalizing ->
completed (or failed, expired, cancelling -> cancelled), output and error files in shuffled order.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Collection
from typing import Any

from tests.fake_batch_common import USAGE, USAGE_CACHED, Batch, FakeBatches, advance, jsonl
from tests.fake_http import Handler, Request, Response
from tests.fake_llm_servers import FakeOpenAI


class FakeOpenAIBatches(FakeBatches):
    """OpenAI's files and batches endpoints."""

    def __init__(self, *, api_key: str | Collection[str], seed: int = 7) -> None:
        self.files: dict[str, tuple[str, bytes]] = {}
        self._validator = FakeOpenAI(api_key=None)
        super().__init__(api_key=api_key, seed=seed)

    @property
    def base_url(self) -> str:
        """What LPS_OPENAI_BASE_URL is set to."""
        return self.base_root + "/v1"

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/v1/files", self._upload),
            ("GET", "/v1/files/([^/]+)/content", self._content),
            ("POST", "/v1/batches", self._create),
            ("GET", "/v1/batches", self._list),
            ("GET", "/v1/batches/([^/]+)", self._get),
            ("POST", "/v1/batches/([^/]+)/cancel", self._cancel),
        ]

    def _auth(self, request: Request) -> Response | None:
        return self._check_key(request.headers.get("authorization", "").removeprefix("Bearer "))

    async def _upload(self, request: Request, _: re.Match[str]) -> Response:
        if denied := self._auth(request):
            return denied
        form = request.form()
        if form.get("purpose", ("", b""))[1] != b"batch":
            self.problems.append("files: purpose must be batch")
        name, content = form.get("file", ("", b""))
        seen: set[str] = set()
        for text in content.decode().splitlines():
            line = json.loads(text)
            custom_id = line.get("custom_id")
            if not isinstance(custom_id, str) or custom_id in seen:
                self.problems.append(f"line custom_id missing or repeated: {custom_id!r}")
            seen.add(str(custom_id))
            if line.get("method") != "POST" or line.get("url") != "/v1/chat/completions":
                self.problems.append(
                    f"line {custom_id}: method/url must be POST /v1/chat/completions"
                )
            headers = {"content-type": "application/json"}
            self.problems.extend(
                self._validator._problems("POST", "/v1/chat/completions", headers, line.get("body"))
            )
        file_id = f"file-{len(self.files) + 1:04d}"
        self.files[file_id] = (name, content)
        return Response(
            200,
            {
                "id": file_id,
                "object": "file",
                "bytes": len(content),
                "filename": name,
                "purpose": "batch",
                "created_at": int(time.time()),
            },
        )

    async def _content(self, request: Request, match: re.Match[str]) -> Response:
        if denied := self._auth(request):
            return denied
        found = self.files.get(match.group(1))
        return (
            Response(200, found[1]) if found else Response(404, {"error": {"message": "no file"}})
        )

    async def _create(self, request: Request, _: re.Match[str]) -> Response:
        if denied := self._auth(request):
            return denied
        body = request.json() or {}
        if body.get("endpoint") != "/v1/chat/completions" or body.get("completion_window") != "24h":
            self.problems.append(f"batches: bad endpoint or window: {body}")
        upload = self.files.get(body.get("input_file_id", ""))
        if upload is None:
            return Response(400, {"error": {"type": "invalid_request_error", "message": "no file"}})
        lines = [json.loads(t) for t in upload[1].decode().splitlines()]
        batch = self._new(
            lines, metadata=dict(body.get("metadata") or {}), input_file_id=body["input_file_id"]
        )
        return Response(200, self._object(batch))

    async def _get(self, request: Request, match: re.Match[str]) -> Response:
        if denied := self._auth(request):
            return denied
        batch = self.batches.get(match.group(1))
        if batch is None:
            return Response(
                404, {"error": {"type": "invalid_request_error", "message": "no batch"}}
            )
        self.polls[batch.id] += 1
        shown = self._object(batch)
        batch.last = shown["status" if "status" in shown else "processing_status"]
        return Response(200, shown)

    async def _list(self, request: Request, _: re.Match[str]) -> Response:
        if denied := self._auth(request):
            return denied
        return self._page(request, cursor="after", extra={"object": "list"})

    async def _cancel(self, request: Request, match: re.Match[str]) -> Response:
        if denied := self._auth(request):
            return denied
        batch = self.batches[match.group(1)]
        if batch.cancel_asked is None and self._status(batch)[0] not in _OPENAI_FINAL:
            batch.cancel_asked = time.monotonic()
        return Response(200, self._object(batch))

    def _status(self, batch: Batch) -> tuple[str, int]:
        """(status, state-change count): where the script and the time since creation put the
        batch, but never more than one state past the last one a status request saw."""
        step = batch.script.steps
        if batch.script.outcome == "failed":
            path = ["validating", "failed"]
        else:
            path = ["validating", "in_progress", "finalizing", batch.script.outcome]
        n = min(int(batch.elapsed() / step), len(path) - 1)
        if batch.cancel_asked is not None:  # cancelling from the cancel request on
            path = ["cancelling", "cancelled"]
            n = 1 if time.monotonic() - batch.cancel_asked >= step else 0
        return advance(path, batch.last, n)

    def _prompt(self, line: dict[str, Any]) -> str:
        return "\n".join(m["content"] for m in line["body"]["messages"] if m["role"] == "user")

    def _object(self, batch: Batch) -> dict[str, Any]:
        status, _ = self._status(batch)
        total = len(batch.lines)
        obj: dict[str, Any] = {
            "id": batch.id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": status,
            "created_at": int(batch.created_at),
            "metadata": batch.metadata,
            "request_counts": {"total": total, "completed": 0, "failed": 0},
        }
        if status == "failed":
            obj["errors"] = {
                "object": "list",
                "data": [
                    {"code": "invalid_model", "message": "the model does not support batches"}
                ],
            }
        if status in ("completed", "expired", "cancelled"):
            self._write_outputs(batch, obj)
        return obj

    def _write_outputs(self, batch: Batch, obj: dict[str, Any]) -> None:
        out_id, err_id = f"file-out-{batch.id}", f"file-err-{batch.id}"
        if out_id not in self.files and err_id not in self.files:
            output, errors = [], []
            for number in batch.order:  # shuffled: output order is not input order
                line = batch.lines[number]
                cid = line["custom_id"]
                if not self._ran(batch, number):
                    code = (
                        "batch_cancelled"
                        if batch.cancel_asked or batch.script.outcome == "cancelled"
                        else "batch_expired"
                    )
                    errors.append(
                        {
                            "id": f"req_{cid}",
                            "custom_id": cid,
                            "response": None,
                            "error": {"code": code, "message": f"this request was {code[6:]}"},
                        }
                    )
                    continue
                prompt = "\n".join(
                    m["content"] for m in line["body"]["messages"] if m["role"] == "user"
                )
                status, answer = self._line_answer(batch, number, prompt)
                if status != 200:
                    body = {
                        "error": {
                            "type": "invalid_request_error" if status < 500 else "server_error",
                            "message": answer,
                        }
                    }
                    errors.append(
                        {
                            "id": f"req_{cid}",
                            "custom_id": cid,
                            "response": {"status_code": status, "body": body},
                            "error": None,
                        }
                    )
                    continue
                content = answer if isinstance(answer, str) else json.dumps(answer)
                body = {
                    "id": f"chatcmpl-{cid}",
                    "object": "chat.completion",
                    "model": line["body"]["model"],
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": content, "refusal": None},
                        }
                    ],
                    "usage": {
                        "prompt_tokens": USAGE[0],
                        "completion_tokens": USAGE[1],
                        # Part of the prompt served from the cache, as OpenAI's batches report.
                        "prompt_tokens_details": {"cached_tokens": USAGE_CACHED},
                    },
                }
                output.append(
                    {
                        "id": f"req_{cid}",
                        "custom_id": cid,
                        "response": {"status_code": 200, "body": body},
                        "error": None,
                    }
                )
            if output:
                self.files[out_id] = ("output.jsonl", jsonl(output))
            if errors:
                self.files[err_id] = ("errors.jsonl", jsonl(errors))
        done = [n for n in range(len(batch.lines)) if self._ran(batch, n)]
        obj["request_counts"] = {
            "total": len(batch.lines),
            "completed": len(done),
            "failed": len(batch.lines) - len(done),
        }
        if out_id in self.files:
            obj["output_file_id"] = out_id
        if err_id in self.files:
            obj["error_file_id"] = err_id


_OPENAI_FINAL = ("completed", "failed", "expired", "cancelled")
