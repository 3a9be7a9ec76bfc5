"""A small HTTP/1.1 server for fake provider APIs: routes by method and path pattern, keep-alive,
Content-Length bodies, query strings and multipart forms; every request is recorded.

A route can be made to hang once (`hang_next`): the request is handled (its effect happens) but
never answered, until the client hangs up. That is how a test puts a replica at the worst moment
("the provider created the batch, its answer never arrived") and kills it there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many"}


@dataclass
class Request:
    """A request the server received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    received_at: float = field(default_factory=time.time)

    def json(self) -> Any:
        """The body as JSON (None when it is not)."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def form(self) -> dict[str, tuple[str, bytes]]:
        """A multipart/form-data body: field name -> (file name or "", content)."""
        kind = self.headers.get("content-type", "")
        found = re.search(r"boundary=([^;]+)", kind)
        if not kind.startswith("multipart/form-data") or not found:
            return {}
        boundary = b"--" + found.group(1).strip('"').encode()
        parts: dict[str, tuple[str, bytes]] = {}
        for chunk in self.body.split(boundary)[1:]:
            if chunk.startswith(b"--"):
                break
            head, _, content = chunk.lstrip(b"\r\n").partition(b"\r\n\r\n")
            disposition = head.decode("latin-1")
            name = re.search(r'name="([^"]*)"', disposition)
            filename = re.search(r'filename="([^"]*)"', disposition)
            if name:
                parts[name.group(1)] = (
                    filename.group(1) if filename else "",
                    content.removesuffix(b"\r\n"),
                )
        return parts


@dataclass
class Response:
    """An answer: status, body (JSON-encoded unless bytes) and extra headers."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> tuple[bytes, str]:
        if isinstance(self.body, bytes):
            return self.body, "application/octet-stream"
        return json.dumps(self.body if self.body is not None else {}).encode(), "application/json"


Handler = Callable[[Request, re.Match[str]], Awaitable[Response]]


class FakeHttpServer:
    """Routes requests to handlers; subclasses register routes in `routes()`."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        # Requests handled but left unanswered (`hang_next`), in the order they began to hang.
        self.hanging: list[Request] = []
        self.base_root = ""
        self._server: asyncio.Server | None = None
        self._writers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._changed = asyncio.Event()
        self._hang: list[tuple[str, re.Pattern[str]]] = []
        self._delay: list[tuple[str, re.Pattern[str], float]] = []
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        for method, pattern, handler in self.routes():
            self._routes.append((method, re.compile(pattern + r"$"), handler))

    def routes(self) -> list[tuple[str, str, Handler]]:
        """(method, path pattern, handler) of every endpoint."""
        raise NotImplementedError

    async def __aenter__(self) -> FakeHttpServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.base_root = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers.values():
            writer.transport.close()
        await asyncio.gather(*self._writers, return_exceptions=True)
        await self._server.wait_closed()

    def delay_next(self, method: str, pattern: str, seconds: float) -> None:
        """Handle the next `method` request whose path matches, but answer it `seconds` later."""
        self._delay.append((method, re.compile(pattern + r"$"), seconds))

    def hang_next(self, method: str, pattern: str) -> None:
        """Handle the next `method` request whose path matches, but never answer it."""
        self._hang.append((method, re.compile(pattern + r"$")))

    def changed(self) -> None:
        """Wake `wait_until` callers (state moved on)."""
        self._changed.set()

    async def wait_until(self, predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Wait (at most `timeout` s) until `predicate` holds; checked whenever a request
        arrives or is answered, and every 50 ms (time-driven state moves on by itself)."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self._changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), 0.05)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._writers[task] = writer
        try:
            while await self._exchange(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        line = await reader.readline()
        if not line:
            return False
        method, target, _ = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while (raw := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        split = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(split.query).items()}
        request = Request(method, split.path, query, headers, body)
        self.requests.append(request)
        self.changed()
        response = Response(404, {"error": {"type": "not_found", "message": target}})
        for route_method, pattern, handler in self._routes:
            if route_method == method and (match := pattern.match(split.path)):
                response = await handler(request, match)
                break
        for hang in self._hang:
            if hang[0] == method and hang[1].match(split.path):
                self._hang.remove(hang)
                self.hanging.append(request)
                self.changed()
                await reader.read()  # returns at EOF: the client gave up (or was killed)
                return False
        for delay in self._delay:
            if delay[0] == method and delay[1].match(split.path):
                self._delay.remove(delay)
                self.hanging.append(request)
                self.changed()
                await asyncio.sleep(delay[2])  # a provider slow to answer, by the script
                break
        payload, kind = response.encoded()
        head = [
            f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Status')}",
            f"Content-Type: {kind}",
            f"Content-Length: {len(payload)}",
            *(f"{k}: {v}" for k, v in response.headers.items()),
        ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
        await writer.drain()
        self.changed()
        return True
