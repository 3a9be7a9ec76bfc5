"""A TCP proxy in front of a redis-server that can lose the reply to one command, or cut Redis off
at one command.

"The reply of a script was lost after it ran" is a network fault: the command reached Redis and ran,
the answer never came back. `drop_reply_to(marker)` makes the proxy swallow the next reply on the
connection whose client sent bytes containing `marker` (a script's SHA, say) and then either close
that connection (the client sees a dead connection) or keep it silent (the client times out).

"Redis became unreachable just before that command" is the other: `cut_at(marker)` never forwards
the next command containing `marker`, closes every connection and closes new ones at once (the
client sees Redis gone, and its retry on a fresh connection fails too) until `restore()`.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass


@dataclass
class _Drop:
    marker: bytes
    close: bool
    armed_on: asyncio.StreamWriter | None = None


class ReplyDroppingProxy:
    """Forwards 127.0.0.1:`port` to the Redis at `upstream_port`."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._server: asyncio.Server | None = None
        self._drop: _Drop | None = None
        self._cut_marker: bytes | None = None
        self._cut_off = False
        self._clients: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.dropped = asyncio.Event()
        self.cut = asyncio.Event()
        self.port = 0

    @property
    def url(self) -> str:
        """The redis:// URL clients use to go through the proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    async def __aenter__(self) -> ReplyDroppingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def drop_reply_to(self, marker: bytes, *, close: bool) -> None:
        """Lose the reply to the next command that contains `marker`."""
        self.dropped.clear()
        self._drop = _Drop(marker, close)

    def cut_at(self, marker: bytes) -> None:
        """Cut Redis off at the next command that contains `marker`: it is never forwarded."""
        self.cut.clear()
        self._cut_marker = marker

    def restore(self) -> None:
        """Let connections through again after a cut."""
        self._cut_marker = None
        self._cut_off = False

    def _cut_everything(self) -> None:
        self._cut_off = True
        self._cut_marker = None
        self.cut.set()
        for writer in self._clients:
            writer.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._cut_off:
            client_w.close()
            return
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        up = asyncio.create_task(self._pipe_up(client_r, server_w, client_w))
        down = asyncio.create_task(self._pipe_down(server_r, client_w))
        self._tasks |= {up, down}
        self._clients.add(client_w)
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._clients.discard(client_w)
            for task in (up, down):
                task.cancel()
                self._tasks.discard(task)
            for writer in (client_w, server_w):
                writer.close()
            # A pipe that failed on a connection the cut closed: its error is expected.
            await asyncio.gather(up, down, return_exceptions=True)
            for writer in (client_w, server_w):
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

    async def _pipe_up(
        self,
        client_r: asyncio.StreamReader,
        server_w: asyncio.StreamWriter,
        client_w: asyncio.StreamWriter,
    ) -> None:
        while data := await client_r.read(65536):
            if self._cut_marker is not None and self._cut_marker in data:
                self._cut_everything()
                return
            drop = self._drop
            if drop is not None and drop.armed_on is None and drop.marker in data:
                drop.armed_on = client_w
            server_w.write(data)
            await server_w.drain()

    async def _pipe_down(
        self, server_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        while data := await server_r.read(65536):
            drop = self._drop
            if drop is not None and drop.armed_on is client_w:
                self._drop = None
                self.dropped.set()
                if drop.close:
                    return  # the connection dies with the reply
                continue  # the reply vanishes; the connection stays up
            client_w.write(data)
            await client_w.drain()
