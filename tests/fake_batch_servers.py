"""Local stand-ins for OpenAI's Batch API (files + batches) and Anthropic's Message Batches, with
their state machines, run in milliseconds.

OpenAI: `POST /v1/files` (multipart, purpose=batch), `POST /v1/batches`, `GET /v1/batches[/{id}]`,
`POST /v1/batches/{id}/cancel`, `GET /v1/files/{id}/content`; a batch goes validating ->
in_progress -> finalizing -> completed (or failed at validation, expired, cancelling ->
cancelled), its answers in an output file and its failed lines in an error file, in shuffled order.
Anthropic: `POST /v1/messages/batches`, `GET /v1/messages/batches[/{id}]`, `.../cancel`,
`.../results`; in_progress -> (canceling ->) ended, `request_counts`, results as JSONL of
succeeded / errored / canceled / expired lines, in shuffled order.

Every line's request is validated as the synchronous API would validate it (the checks of
`fake_llm_servers`), and problems are listed in `problems`. Each line is answered by a judge that
reads the request id marked in essay A of every comparison (`item_marker`), so that a client that
maps answers to the wrong line or position gets a verdict that disagrees with `expected_winner`.
Tests script what goes wrong with `script(BatchScript(...))`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.fake_http import FakeHttpServer, Handler, Request, Response
from tests.fake_llm_servers import FakeAnthropic, FakeOpenAI

_BLOCK = re.compile(r"^Comparison (\d+):$", re.MULTILINE)
_ITEM = re.compile(r"\[item:([A-Za-z0-9_.:-]+)\]")
USAGE = (900, 120)


def expected_winner(request_id: str) -> str:
    """The fake judge's verdict for a marked request: "A" or "B" by a hash of its id."""
    return "A" if hashlib.sha256(request_id.encode()).digest()[0] % 2 == 0 else "B"


def judged(prompt: str) -> dict[str, Any]:
    """The answer to a bundle prompt: every comparison by its marked request id (entries in
    reverse order, so that matching by position instead of index gets them wrong)."""
    blocks = _BLOCK.split(prompt)[1:]
    entries = []
    for number, text in zip(blocks[::2], blocks[1::2], strict=True):
        essay_a = text.split("Essay B:", 1)[0]
        marked = _ITEM.search(essay_a)
        winner = expected_winner(marked.group(1)) if marked else ("A" if int(number) % 2 else "B")
        entries.append(
            {
                "index": int(number),
                "justification": f"Essay {winner} argues more clearly.",
                "winner": winner,
                "confidence": 3,
            }
        )
    return {"comparisons": entries[::-1]}


@dataclass
class BatchScript:
    """What happens to the next batch created.

    Attributes:
        outcome: `completed`, `failed` (OpenAI: at validation), `expired`, or `cancelled`
            (cancelled by the provider's side, as an operator would).
        finished: with `expired`/`cancelled`, how many lines ran before (default: none).
        errors: line number (from 0) -> (HTTP status, message) of a line that fails.
        invalid: line numbers whose answer is not usable JSON.
        steps: state changes take this many seconds each.
    """

    outcome: str = "completed"
    finished: int = 0
    errors: dict[int, tuple[int, str]] = field(default_factory=dict)
    invalid: set[int] = field(default_factory=set)
    steps: float = 0.01


@dataclass
class _Batch:
    id: str
    lines: list[dict[str, Any]]
    script: BatchScript
    created_at: float
    started: float
    metadata: dict[str, str] = field(default_factory=dict)
    input_file_id: str = ""
    cancel_asked: float | None = None
    order: list[int] = field(default_factory=list)
    # The state the last status request saw (a batch moves at most one state past it).
    last: str = ""

    def elapsed(self) -> float:
        return time.monotonic() - self.started


class _FakeBatches(FakeHttpServer):
    """What both fakes share: scripts, the judge, counting."""

    def __init__(self, *, api_key: str | Collection[str], seed: int = 7) -> None:
        self.api_keys = {api_key} if isinstance(api_key, str) else set(api_key)
        self.problems: list[str] = []
        self.batches: dict[str, _Batch] = {}
        self.created: list[str] = []
        self.polls: Counter[str] = Counter()
        self._scripts: list[BatchScript] = []
        self._ids = itertools.count(1)
        self._rng = random.Random(seed)
        super().__init__()

    def script(self, *scripts: BatchScript) -> None:
        """The next batches created follow these scripts, in order (then: completed)."""
        self._scripts.extend(scripts)

    def cancel(self, batch_id: str) -> None:
        """Cancel a batch from the provider's side (an operator in the console)."""
        self.batches[batch_id].cancel_asked = time.monotonic()
        self.changed()

    def _new(self, lines: list[dict[str, Any]], **extra: Any) -> _Batch:
        script = self._scripts.pop(0) if self._scripts else BatchScript()
        order = list(range(len(lines)))
        self._rng.shuffle(order)  # output order is not input order
        batch = _Batch(
            id=f"batch_{next(self._ids):04d}",
            lines=lines,
            script=script,
            created_at=time.time(),
            started=time.monotonic(),
            order=order,
            **extra,
        )
        self.batches[batch.id] = batch
        self.created.append(batch.id)
        return batch

    def _line_answer(self, batch: _Batch, number: int, prompt: str) -> tuple[int, Any]:
        """(HTTP status, answer) of line `number`: an error, unusable content, or the judge's."""
        if number in batch.script.errors:
            return batch.script.errors[number]
        if number in batch.script.invalid:
            return 200, "not json at all"
        return 200, judged(prompt)

    def _ran(self, batch: _Batch, number: int) -> bool:
        """Whether line `number` ran before its batch expired or was cancelled."""
        if batch.script.outcome in ("expired", "cancelled") or batch.cancel_asked is not None:
            return number < batch.script.finished
        return True

    def _page(
        self, request: Request, *, cursor: str, extra: dict[str, Any] | None = None
    ) -> Response:
        """A page of the batches, newest first, after the one `cursor` names."""
        newest = [self.batches[b] for b in reversed(self.created)]
        after = request.query.get(cursor)
        if after:
            ids = [b.id for b in newest]
            newest = newest[ids.index(after) + 1 :] if after in ids else []
        limit = int(request.query.get("limit", "20"))
        page = newest[:limit]
        return Response(
            200,
            {
                **(extra or {}),
                "data": [self._object(b) for b in page],
                "has_more": len(newest) > limit,
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
            },
        )

    def _object(self, batch: _Batch) -> dict[str, Any]:
        raise NotImplementedError

    def _check_key(self, presented: str | None) -> Response | None:
        if presented not in self.api_keys:
            return Response(401, {"error": {"type": "authentication_error", "message": "bad key"}})
        return None


class FakeOpenAIBatches(_FakeBatches):
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

    def _status(self, batch: _Batch) -> tuple[str, int]:
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
        return _step(path, batch.last, n)

    def _object(self, batch: _Batch) -> dict[str, Any]:
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

    def _write_outputs(self, batch: _Batch, obj: dict[str, Any]) -> None:
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
                    "usage": {"prompt_tokens": USAGE[0], "completion_tokens": USAGE[1]},
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
                self.files[out_id] = ("output.jsonl", _jsonl(output))
            if errors:
                self.files[err_id] = ("errors.jsonl", _jsonl(errors))
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


class FakeAnthropicBatches(_FakeBatches):
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

    def _state(self, batch: _Batch) -> str:
        """in_progress (-> canceling) -> ended, never more than one state past the last one a
        status request saw."""
        step = batch.script.steps
        if batch.cancel_asked is not None:  # canceling from the cancel request on
            path = ["canceling", "ended"]
            n = 1 if time.monotonic() - batch.cancel_asked >= step else 0
        else:
            path, n = ["in_progress", "ended"], min(1, int(batch.elapsed() / (2 * step)))
        return _step(path, batch.last, n)[0]

    def _ended(self, batch: _Batch) -> bool:
        return self._state(batch) == "ended"

    def _kind(self, batch: _Batch, number: int) -> str:
        if self._ran(batch, number):
            return "errored" if number in batch.script.errors else "succeeded"
        cancelled = batch.cancel_asked is not None or batch.script.outcome == "cancelled"
        return "canceled" if cancelled else "expired"

    def _object(self, batch: _Batch) -> dict[str, Any]:
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
                prompt = "\n".join(
                    m["content"] for m in params["messages"] if isinstance(m["content"], str)
                )
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
        return Response(200, _jsonl(lines))


def _step(path: list[str], last: str, target: int) -> tuple[str, int]:
    """The state `target` of `path`, but at most one past `last`."""
    seen = path.index(last) if last in path else -1
    n = min(target, seen + 1)
    return path[n], n


def _jsonl(objects: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objects)
