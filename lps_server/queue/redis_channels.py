"""One reader per replica for every Redis channel its streams follow, fanned out in memory.

Every open stream follows a channel: a `SubmitComparisons` call its reply channel, a
`StreamResults` call the client's result channel. If each blocked in its own `XREAD`, each would
hold a Redis connection, and a replica would run out of connections long before it ran out of
anything else. Here one task blocks in one `XREAD` over the stream keys of every followed channel
at once (a Redis read may wait on many keys) and hands what it reads to the followers in memory.
One connection serves any number of streams.

The set of channels changes while that read blocks. A new follower (or one that has room again
after it was full) wakes the read by adding an entry to this reader's wake stream, which every
read includes, from the last wake entry it saw. The wake may reach Redis before the read does or
while it blocks. Either way the read returns at once, and the next read includes the new channel.

A follower holds at most `READ_COUNT` entries unread. A full follower (a slow client) is left out
of the read until it has room, and its channel is then read again from its own place: it never
makes the reader hold unbounded memory, and it never holds back the other followers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from redis.asyncio import Redis

from lps_server.core.domain import ComparisonResult
from lps_server.core.errors import QueueUnavailableError
from lps_server.queue.base import ChannelEntry
from lps_server.queue.codec import decode_result
from lps_server.queue.redis_keys import QueueKeys

log = logging.getLogger(__name__)

# Entries per stream per read, and the most entries a follower holds unread.
READ_COUNT = 256
# A read blocks at most this long (the blocking connections' read timeout outlasts it).
MAX_BLOCK_MS = 10_000
# The wake stream outlives any read; a reader that is gone leaves it to expire.
WAKE_TTL_MS = 60_000
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 2.0
CANCEL_AGAIN_S = 0.1
_ENTRY_ID = re.compile(r"^(\d+)-(\d+)$")
Position = tuple[int, int]
Guard = Callable[[], AbstractContextManager[None]]


async def read_now(client: Redis, key: str, cursor: str) -> list[ChannelEntry]:
    """The entries of stream `key` after `cursor` (at most READ_COUNT), without waiting."""
    after = cursor if _ENTRY_ID.match(cursor) else "0-0"  # anything else: from the oldest
    reply: Any = await client.xread({key: after}, count=READ_COUNT)
    # RESP2 answers [[stream, entries]], RESP3 {stream: entries}; one stream was read.
    per_stream = reply.values() if isinstance(reply, dict) else [e for _, e in reply or []]
    return [
        ChannelEntry(entry_id.decode(), decode_result(fields[b"r"]))
        for entries in per_stream
        for entry_id, fields in entries
    ]


def position(cursor: str) -> Position:
    """A stream entry id as a comparable pair; anything else is the start of the stream."""
    match = _ENTRY_ID.match(cursor)
    return (int(match[1]), int(match[2])) if match else (0, 0)


class Follower:
    """One reader's place on one channel (a `ChannelFollower`), fed by the `ChannelReader`."""

    def __init__(self, reader: ChannelReader, channel: str, cursor: str) -> None:
        self.channel = channel
        self.after = position(cursor)
        self._reader = reader
        self._entries: list[ChannelEntry] = []
        self._error: QueueUnavailableError | None = None
        self._ready = asyncio.Event()

    @property
    def has_room(self) -> bool:
        """Whether the reader may hand this follower more entries."""
        return len(self._entries) < READ_COUNT

    def offer(self, entries: list[tuple[Position, str, ComparisonResult | None]]) -> None:
        """Take the entries after this follower's place, as many as it has room for (an entry
        that could not be decoded, None, is passed over)."""
        for at, cursor, result in entries:
            if at <= self.after:
                continue
            if not self.has_room:
                break
            self.after = at
            if result is not None:
                self._entries.append(ChannelEntry(cursor, result))
        if self._entries:
            self._ready.set()

    def fail(self, error: QueueUnavailableError) -> None:
        """Report a failed read to the next `read` (the reader retries by itself)."""
        self._error = error
        self._ready.set()

    def wake(self) -> None:
        """End a waiting `read` with nothing (the queue is closing)."""
        self._ready.set()

    async def read(self, timeout: float) -> list[ChannelEntry]:
        """The entries published after the last ones returned, waiting up to `timeout` for one.

        Raises:
            QueueUnavailableError: a read of Redis failed since the last call, or the queue is
                closed; the follower keeps its place.
        """
        if not self._entries and self._error is None:
            self._reader.check_open()
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout)
        entries, self._entries = self._entries, []
        if len(entries) >= READ_COUNT:
            self._reader.changed()  # it was left out of the read while full
        if entries:
            return entries
        error, self._error = self._error, None
        if error is not None:
            raise error
        return []


class ChannelReader:
    """Reads every channel followed on this replica with one blocking `XREAD` at a time.

    Args:
        blocking: the client for the blocking read (its read timeout outlasts MAX_BLOCK_MS).
        commands: the client for the wake-ups.
        keys: the queue's key names.
        guard: turns Redis failures into QueueUnavailableError (`RedisCalls.guard`).
    """

    def __init__(self, *, blocking: Redis, commands: Redis, keys: QueueKeys, guard: Guard) -> None:
        self._blocking = blocking
        self._commands = commands
        self._keys = keys
        self._guard = guard
        self._followers: dict[str, set[Follower]] = {}
        self._wake_key = keys.reader_wake(uuid.uuid4().hex)
        self._wake_after = "0-0"
        # Every change bumps the generation; a read in flight knows the one it was built from.
        self._generation = 0
        self._reading: int | None = None
        self._waking: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @contextmanager
    def follow(self, channel: str, cursor: str) -> Iterator[Follower]:
        """While open, `channel` is read from just after `cursor` for the follower yielded."""
        self.check_open()
        follower = Follower(self, channel, cursor)
        self._followers.setdefault(channel, set()).add(follower)
        self.changed()
        try:
            yield follower
        finally:
            # No wake: entries that the read in flight returns for it are simply dropped.
            followers = self._followers.get(channel, set())
            followers.discard(follower)
            if not followers:
                self._followers.pop(channel, None)

    @property
    def followed(self) -> int:
        """How many followers are open on this replica."""
        return sum(len(f) for f in self._followers.values())

    def check_open(self) -> None:
        """Raise QueueUnavailableError once the queue is closed."""
        if self._closed:
            raise QueueUnavailableError("redis queue is closed: server shutting down")

    def changed(self) -> None:
        """The followed set changed: start the reader if needed, and wake a read in flight."""
        if self._closed:
            return
        self._generation += 1
        self._changed.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        self._maybe_wake()

    def _maybe_wake(self) -> None:
        if self._reading is not None and self._reading < self._generation and self._waking is None:
            self._waking = asyncio.create_task(self._wake())

    async def _wake(self) -> None:
        try:
            with self._guard():
                async with self._commands.pipeline(transaction=False) as pipe:
                    pipe.xadd(self._wake_key, {"w": "1"}, maxlen=1, approximate=False)
                    pipe.pexpire(self._wake_key, WAKE_TTL_MS)
                    await pipe.execute()
        except QueueUnavailableError:
            self._waking = None
            return  # the read fails as well, and is retried with every follower
        self._waking = None
        self._maybe_wake()  # for changes made while this wake was on its way

    async def _run(self) -> None:
        backoff = BACKOFF_MIN_S
        while not self._closed:
            streams = self._positions()
            if not streams:
                self._changed.clear()
                await self._changed.wait()
                continue
            self._reading = self._generation
            failure: QueueUnavailableError | None = None
            try:
                with self._guard():
                    reply = await self._blocking.xread(
                        streams, count=READ_COUNT, block=MAX_BLOCK_MS
                    )
            except QueueUnavailableError as exc:
                failure = exc
            except Exception as exc:  # a reply this code did not expect: report, retry, go on
                log.exception("reading %d result channels failed", len(streams) - 1)
                failure = QueueUnavailableError(f"reading result channels failed: {exc!r}")
            finally:
                self._reading = None
            if failure is None:
                backoff = BACKOFF_MIN_S
                self._deliver(reply)
                continue
            if self._closed:
                return
            for followers in self._followers.values():
                for follower in followers:
                    follower.fail(failure)
            # Back off, but a new follower tries again at once and learns the cause.
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _positions(self) -> dict[Any, Any]:
        """Each followed channel's key, from the earliest place among its followers with room."""
        streams: dict[Any, Any] = {}
        for channel, followers in self._followers.items():
            after = min((f.after for f in followers if f.has_room), default=None)
            if after is not None:
                streams[self._keys.channel(channel)] = f"{after[0]}-{after[1]}"
        if streams:
            streams[self._wake_key] = self._wake_after
        return streams

    def _deliver(self, reply: Any) -> None:
        # RESP2 answers [[stream, entries], ...], RESP3 {stream: entries}.
        per_stream = reply.items() if isinstance(reply, dict) else (reply or [])
        prefix = len(self._keys.channel_prefix)
        for raw_key, entries in per_stream:
            key = raw_key.decode()
            if key == self._wake_key:
                self._wake_after = entries[-1][0].decode()
                continue
            followers = self._followers.get(key[prefix:])
            if followers:
                decoded = [self._decode(key, entry_id, fields) for entry_id, fields in entries]
                for follower in list(followers):
                    follower.offer(decoded)

    @staticmethod
    def _decode(
        key: str, entry_id: bytes, fields: dict[bytes, bytes]
    ) -> tuple[Position, str, ComparisonResult | None]:
        cursor = entry_id.decode()
        try:
            result: ComparisonResult | None = decode_result(fields[b"r"])
        except Exception as exc:  # one bad entry must not stop every stream of the replica
            log.error(
                "skipped entry %s of %s: it is not a result this release reads: %r",
                cursor,
                key,
                exc,
            )
            result = None
        return position(cursor), cursor, result

    async def close(self) -> None:
        """Stop reading; followers waiting in `read` return with nothing."""
        self._closed = True
        for task in (self._task, self._waking):
            # Python 3.11's asyncio.wait_for (inside redis-py's send) can swallow a cancellation
            # that lands as it completes, and the read then blocks on; so cancel until it ends.
            while task is not None and not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=CANCEL_AGAIN_S)
            if task is not None and not task.cancelled():
                task.exception()  # retrieved: an ending read's error is no news at close
        for followers in self._followers.values():
            for follower in followers:
                follower.wake()
