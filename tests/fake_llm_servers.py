"""Local stand-ins for the OpenAI Chat Completions and Anthropic Messages endpoints.

Each server listens on 127.0.0.1, port 0, speaks just enough HTTP/1.1 (keep-alive, Content-Length
bodies), validates every request as the real API would (path, auth headers, body shape) and records
it. A request that fails validation is answered 400 and listed in `problems`, so a test asserts
`problems == []`. Answers come from a script of `Reply` objects, else from a default judge that
answers every numbered comparison in the prompt, after `latency_s`.

For the fault tests it also counts what it was asked, per item: an essay that carries the marker
`[item:<id>]` is one comparison of item `<id>` (`asked()`), and every call records which API key
asked (`RecordedCall.key`) and when it arrived and was answered.

With an `economy` (`tests/fake_rate_limits.py`) a server counts tokens its own way, caches prompts
and enforces rate limits as the vendor does (429 with Retry-After, rate-limit headers); its usage
then reports its own counts instead of the fixed `usage`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fake_rate_limits import FakeEconomy, fake_tokens, retry_after_headers

ANTHROPIC_VERSION = "2023-06-01"
_COMPARISON = re.compile(r"^Comparison (\d+):$", re.MULTILINE)
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ITEM = re.compile(r"\[item:([A-Za-z0-9_.:-]+)\]")
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 429: "Too Many Requests"}


@dataclass
class Reply:
    """One scripted answer.

    Attributes:
        status: the HTTP status.
        headers: extra response headers (e.g. Retry-After).
        error: for an error status, the provider's error message.
        raw: a raw body to send instead of JSON (for malformed responses).
        answer: the structured answer to wrap in a normal response (default: the judge's).
        content: OpenAI only: the message content string, sent as is.
        hang: never answer; wait until the client hangs up.
        usage: the usage object to report, in the API's shape (default: from `usage`).
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    error: str = ""
    raw: bytes | None = None
    answer: object = None
    content: str | None = None
    hang: bool = False
    usage: dict[str, Any] | None = None


@dataclass(frozen=True)
class RecordedCall:
    """A request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    prompt: str
    received_at: float = 0.0
    answered: asyncio.Event = field(default_factory=asyncio.Event, compare=False)

    @property
    def comparisons(self) -> int:
        """How many numbered comparisons the prompt holds."""
        return len(_COMPARISON.findall(self.prompt))

    @property
    def items(self) -> list[str]:
        """The item ids the prompt's essays are marked with (one marked essay per comparison)."""
        return _ITEM.findall(self.prompt)

    @property
    def key(self) -> str:
        """The API key the call presented (either header convention)."""
        bearer = self.headers.get("authorization", "").removeprefix("Bearer ")
        return self.headers.get("x-api-key", bearer)


def item_marker(item: str) -> str:
    """The text that marks an essay as belonging to item `item` (see `asked`)."""
    return f"[item:{item}]"


def default_answer(count: int) -> dict[str, Any]:
    """Essay A wins odd-numbered comparisons, B even ones; entries in reverse order, so a client
    that matched by position instead of index would get every verdict wrong."""
    entries = [
        {
            "index": i,
            "justification": f"Essay {'A' if i % 2 else 'B'} argues more clearly.",
            "winner": "A" if i % 2 else "B",
            "confidence": 1 + i % 5,
        }
        for i in range(count, 0, -1)
    ]
    return {"comparisons": entries}


class FakeLlmServer:
    """Base of the fake servers; subclasses validate and wrap answers in their API's shape.

    Args:
        api_key: the key clients must present (None: no auth expected).
        usage: (prompt, completion) tokens reported per call.
    """

    path = ""
    flavour = ""

    def __init__(
        self,
        *,
        api_key: str | None,
        usage: tuple[int, int] = (1003, 250),
        latency_s: float = 0.0,
        also_accept: tuple[str, ...] = (),
        economy: FakeEconomy | None = None,
    ) -> None:
        self.api_key = api_key
        self.economy = economy
        self.also_accept = also_accept
        self.usage = usage
        self.latency_s = latency_s
        self.replies: deque[Reply] = deque()
        self.calls: list[RecordedCall] = []
        self.problems: list[str] = []
        self.base_url = ""
        self._server: asyncio.Server | None = None
        self._handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._changed = asyncio.Event()

    async def __aenter__(self) -> FakeLlmServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.base_url = self._base_url(f"http://127.0.0.1:{port}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        # Closing the transports ends the handlers through EOF; cancelling them instead trips an
        # asyncio 3.11 bug that logs the CancelledError from the stream callback.
        for writer in self._handlers.values():
            writer.transport.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    def asked(self, key: str | None = None) -> Counter[str]:
        """How many times each marked item was asked for (by callers presenting `key`)."""
        return Counter(
            item for call in self.calls if key is None or call.key == key for item in call.items
        )

    async def wait_until(self, predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Wait (at most `timeout` s) until `predicate` holds; it is checked whenever a call
        arrives or is answered."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with `replies`, in order; then with the default judge."""
        self.replies.extend(replies)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        try:
            while await self._one_exchange(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _one_exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        request_line = await reader.readline()
        if not request_line:
            return False
        method, path, _ = request_line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
        reply = self.replies.popleft() if self.replies else Reply()
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        prompt = self._prompt(body) if isinstance(body, dict) else ""
        call = RecordedCall(
            method, path, headers, body if isinstance(body, dict) else {}, prompt, time.time()
        )
        self.calls.append(call)
        self._changed.set()
        if reply.hang:
            await reader.read()  # returns at EOF: the client gave up
            return False
        admitted = self._admit(body) if self.economy is not None else None
        if admitted is not None and admitted[0] is None:
            # Refused at arrival, as providers do: at once, counting nothing.
            await self._respond(writer, 429, self._error_body("rate_limit_error", "rate limited"),
                                admitted[1])  # fmt: skip
            call.answered.set()
            self._changed.set()
            return True
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)  # a slow provider: the answer takes this long
        auth_error = self._auth_problem(headers)
        if auth_error:
            status, payload, extra = 401, self._error_body("authentication_error", auth_error), {}
        else:
            problems = self._problems(method, path, headers, body)
            self.problems.extend(problems)
            if problems:
                status, payload = (
                    400,
                    self._error_body("invalid_request_error", "; ".join(problems)),
                )
                extra = {}
            elif reply.status >= 400:
                status, extra = reply.status, reply.headers
                payload = self._error_body("api_error", reply.error or f"error {reply.status}")
            else:
                status, extra = reply.status, reply.headers
                answer = reply.answer
                if answer is None and reply.content is None:
                    answer = default_answer(call.comparisons)
                usage = reply.usage
                if admitted is not None:
                    usage, limit_headers = self._finish(admitted, answer, reply.content)
                    extra = {**limit_headers, **extra}
                payload = json.dumps(self._wrap(body, answer, reply.content, usage)).encode()
        if reply.raw is not None and not auth_error and status < 400:
            payload = reply.raw
        await self._respond(writer, status, payload, extra)
        call.answered.set()
        self._changed.set()
        return True

    async def _respond(
        self, writer: asyncio.StreamWriter, status: int, payload: bytes, extra: dict[str, str]
    ) -> None:
        head = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
            "Content-Type: application/json",
            f"Content-Length: {len(payload)}",
            *(f"{k}: {v}" for k, v in extra.items()),
        ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
        await writer.drain()

    def _admit(self, body: object) -> tuple[Any, dict[str, str]]:
        """Count the prompt and charge the limits at arrival: (admitted call, headers) with the
        call as (charge, prompt counts), or (None, the 429's headers)."""
        assert self.economy is not None
        economy = self.economy
        now = time.time()
        body = body if isinstance(body, dict) else {}
        prompt = economy.prompt(self.flavour, body)
        if economy.limits is None:
            return (None, prompt), {}
        charge, wait = economy.limits.admit(economy.charge(self.flavour, body, prompt), now)
        if charge is None:
            return None, {**retry_after_headers(self.flavour, wait),
                          **economy.headers(self.flavour, now)}  # fmt: skip
        return (charge, prompt), {}

    def _finish(
        self, admitted: tuple[Any, dict[str, str]], answer: object, content: str | None
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """The usage of an answered call by the fake's count, and its rate-limit headers."""
        assert self.economy is not None
        (charge, (total, read, written)), _ = admitted
        output = fake_tokens(content if content is not None else json.dumps(answer))
        if charge is not None and "output_tokens" in charge.counts:
            charge.counts["output_tokens"] = output  # Anthropic counts what was produced
        usage = self._usage(total, read, written, output)
        return usage, self.economy.headers(self.flavour, time.time())

    def _usage(self, total: int, read: int, written: int, output: int) -> dict[str, Any]:
        raise NotImplementedError

    def _error_body(self, kind: str, message: str) -> bytes:
        return json.dumps({"error": {"type": kind, "message": message}}).encode()

    def _base_url(self, root: str) -> str:
        raise NotImplementedError

    def _prompt(self, body: dict[str, Any]) -> str:
        raise NotImplementedError

    def _auth_problem(self, headers: dict[str, str]) -> str:
        raise NotImplementedError

    def _problems(self, method: str, path: str, headers: dict[str, str], body: object) -> list[str]:
        raise NotImplementedError

    def _wrap(
        self,
        body: dict[str, Any],
        answer: object,
        content: str | None,
        usage: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        raise NotImplementedError


class FakeOpenAI(FakeLlmServer):
    """`POST /v1/chat/completions` with a strict `json_schema` response format."""

    path = "/v1/chat/completions"
    flavour = "openai"

    def _base_url(self, root: str) -> str:
        return root + "/v1"

    def _usage(self, total: int, read: int, written: int, output: int) -> dict[str, Any]:
        return {
            "prompt_tokens": total,
            "completion_tokens": output,
            "total_tokens": total + output,
            "prompt_tokens_details": {"cached_tokens": read},
        }

    def _prompt(self, body: dict[str, Any]) -> str:
        messages = body.get("messages")
        if not isinstance(messages, list):
            return ""
        return "\n".join(
            m["content"]
            for m in messages
            if isinstance(m, dict) and m.get("role") == "user" and isinstance(m["content"], str)
        )

    def _auth_problem(self, headers: dict[str, str]) -> str:
        presented = headers.get("authorization")
        if self.api_key is None:
            return "" if presented is None else "no Authorization header expected"
        if presented not in {f"Bearer {k}" for k in (self.api_key, *self.also_accept)}:
            # The real API echoes (a masked form of) a wrong key; echo it whole, to prove that
            # the client masks it.
            return f"Incorrect API key provided: {(presented or '').removeprefix('Bearer ')}"
        return ""

    def _problems(self, method: str, path: str, headers: dict[str, str], body: object) -> list[str]:
        problems = _common(method, path, self.path, headers)
        if not isinstance(body, dict):
            return [*problems, "body is not a JSON object"]
        if not isinstance(body.get("model"), str) or not body["model"]:
            problems.append("model must be a non-empty string")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            problems.append("messages must be a non-empty list")
        else:
            for m in messages:
                ok = isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                if not ok or not isinstance(m.get("content"), str):
                    problems.append(f"bad message {m!r:.60}")
        limits = [k for k in ("max_tokens", "max_completion_tokens") if k in body]
        if len(limits) > 1 or any(not _positive_int(body[k]) for k in limits):
            problems.append("at most one of max_tokens/max_completion_tokens, a positive integer")
        if "temperature" in body and not _number_in(body["temperature"], 0.0, 2.0):
            problems.append("temperature must be in 0..2")
        fmt = body.get("response_format")
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
            return [*problems, "response_format.type must be json_schema"]
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not _NAME.match(str(spec.get("name", ""))):
            return [*problems, "response_format.json_schema.name is missing or invalid"]
        if spec.get("strict") is not True:
            problems.append("json_schema.strict must be true")
        problems.extend(_strict_schema_problems(spec.get("schema"), "schema"))
        return problems

    def _wrap(
        self,
        body: dict[str, Any],
        answer: object,
        content: str | None,
        usage: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        prompt_tokens, completion_tokens = self.usage
        return {
            "id": f"chatcmpl-{len(self.calls)}",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": content if content is not None else json.dumps(answer),
                        "refusal": None,
                    },
                    "finish_reason": "stop",
                }
            ],
            "usage": usage
            or {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


class FakeAnthropic(FakeLlmServer):
    """`POST /v1/messages` with a forced tool whose input is the answer."""

    path = "/v1/messages"
    flavour = "anthropic"

    def _base_url(self, root: str) -> str:
        return root

    def _usage(self, total: int, read: int, written: int, output: int) -> dict[str, Any]:
        return {
            "input_tokens": total - read - written,
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": read,
            "output_tokens": output,
        }

    def _prompt(self, body: dict[str, Any]) -> str:
        messages = body.get("messages")
        if not isinstance(messages, list):
            return ""
        return "\n".join(
            block_text(m["content"]) for m in messages if isinstance(m, dict) and "content" in m
        )

    def _auth_problem(self, headers: dict[str, str]) -> str:
        if headers.get("x-api-key") not in (self.api_key, *self.also_accept):
            return "invalid x-api-key"
        return ""

    def _problems(self, method: str, path: str, headers: dict[str, str], body: object) -> list[str]:
        problems = _common(method, path, self.path, headers)
        if headers.get("anthropic-version") != ANTHROPIC_VERSION:
            problems.append("anthropic-version header must be 2023-06-01")
        if "authorization" in headers:
            problems.append("unexpected Authorization header")
        if not isinstance(body, dict):
            return [*problems, "body is not a JSON object"]
        if not isinstance(body.get("model"), str) or not body["model"]:
            problems.append("model must be a non-empty string")
        if not _positive_int(body.get("max_tokens")):
            problems.append("max_tokens is required, a positive integer")
        if "system" in body and not _text_content(body["system"]):
            problems.append("system must be a string or a list of text blocks")
        if "temperature" in body and not _number_in(body["temperature"], 0.0, 1.0):
            problems.append("temperature must be in 0..1")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            problems.append("messages must be a non-empty list")
        elif not all(
            isinstance(m, dict) and m.get("role") in ("user", "assistant") for m in messages
        ):
            problems.append("message roles must be user or assistant")
        elif not all(_text_content(m.get("content")) for m in messages):
            problems.append("message content must be a string or a list of text blocks")
        elif messages[0].get("role") != "user":
            problems.append("the first message must be the user's")
        tools = body.get("tools")
        names = set()
        if not isinstance(tools, list) or not tools:
            problems.append("tools must be a non-empty list")
        else:
            for tool in tools:
                if not isinstance(tool, dict) or not _NAME.match(str(tool.get("name", ""))):
                    problems.append("every tool needs a valid name")
                    continue
                names.add(tool["name"])
                schema = tool.get("input_schema")
                if not isinstance(schema, dict) or schema.get("type") != "object":
                    problems.append(f"tool {tool['name']}: input_schema must be an object schema")
        choice = body.get("tool_choice")
        if not isinstance(choice, dict) or choice.get("type") != "tool":
            problems.append("tool_choice must force a tool")
        elif choice.get("name") not in names:
            problems.append("tool_choice names no declared tool")
        if "response_format" in body:
            problems.append("response_format is not a Messages API field")
        return problems

    def _wrap(
        self,
        body: dict[str, Any],
        answer: object,
        content: str | None,
        usage: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        prompt_tokens, completion_tokens = self.usage
        choice = body.get("tool_choice") or {}
        blocks: list[dict[str, Any]] = []
        if content is not None:
            blocks.append({"type": "text", "text": content})
        else:
            blocks.append(
                {"type": "tool_use", "id": "toolu_01", "name": choice.get("name"), "input": answer}
            )
        return {
            "id": f"msg_{len(self.calls)}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": blocks,
            "stop_reason": "tool_use" if content is None else "end_turn",
            "usage": usage or {"input_tokens": prompt_tokens, "output_tokens": completion_tokens},
        }


def _text_content(content: object) -> bool:
    """A Messages API text field: a string, or text blocks (with cache_control only ephemeral)."""
    if isinstance(content, str):
        return True
    if not isinstance(content, list) or not content:
        return False
    return all(
        isinstance(b, dict)
        and b.get("type") == "text"
        and isinstance(b.get("text"), str)
        and set(b) <= {"type", "text", "cache_control"}
        and b.get("cache_control", {"type": "ephemeral"}) == {"type": "ephemeral"}
        for b in content
    )


def block_text(content: object) -> str:
    """The text of a message's content: a string, or Anthropic's list of text blocks."""
    if isinstance(content, list):
        return "\n".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return content if isinstance(content, str) else ""


def _common(method: str, path: str, expected: str, headers: dict[str, str]) -> list[str]:
    problems = []
    if method != "POST":
        problems.append(f"method must be POST, got {method}")
    if path != expected:
        problems.append(f"path must be {expected}, got {path}")
    if not headers.get("content-type", "").startswith("application/json"):
        problems.append("content-type must be application/json")
    return problems


def _strict_schema_problems(schema: object, where: str) -> list[str]:
    """OpenAI strict mode: every object lists all its properties as required and forbids others."""
    if not isinstance(schema, dict):
        return [f"{where} must be a schema object"]
    problems = []
    if schema.get("type") == "object":
        props = schema.get("properties")
        if not isinstance(props, dict):
            return [f"{where}: object without properties"]
        if schema.get("additionalProperties") is not False:
            problems.append(f"{where}: additionalProperties must be false")
        if set(schema.get("required", [])) != set(props):
            problems.append(f"{where}: every property must be required")
        for name, sub in props.items():
            problems.extend(_strict_schema_problems(sub, f"{where}.{name}"))
    elif schema.get("type") == "array":
        problems.extend(_strict_schema_problems(schema.get("items"), f"{where}[]"))
    elif schema.get("type") not in ("string", "integer", "number", "boolean"):
        problems.append(f"{where}: unknown type {schema.get('type')!r}")
    for keyword in ("minLength", "maxLength", "minimum", "maximum", "minItems", "maxItems"):
        if keyword in schema:
            problems.append(f"{where}: {keyword} is not portable across strict-mode servers")
    return problems


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number_in(value: object, low: float, high: float) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return low <= value <= high
