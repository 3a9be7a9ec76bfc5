"""The in-process queue's result channels: bounded, expiring, created only by a publish.

A channel exists from its first publish until it has been idle for its time to live (the result
retention, or the much shorter reply TTL for a streaming call's reply channel). Reading or
waiting on a channel that does not exist leaves nothing behind. Channels are kept in order of
their last publish, one order per time to live, so forgetting idle ones looks only at those due.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import OrderedDict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from lps_server.core.domain import ComparisonResult
from lps_server.core.errors import QueueUnavailableError
from lps_server.queue.base import CHANNEL_MAX_ENTRIES, ChannelEntry


@dataclass(slots=True)
class _Channel:
    entries: deque[tuple[int, ComparisonResult]] = field(
        default_factory=lambda: deque(maxlen=CHANNEL_MAX_ENTRIES)
    )
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    expires_at: float = 0.0
    waiters: int = 0


class LocalFollower:
    """One reader's place on a local channel (a `ChannelFollower`)."""

    def __init__(self, channels: LocalChannels, name: str, cursor: str) -> None:
        self._channels = channels
        self._name = name
        self._cursor = cursor

    async def read(self, timeout: float) -> list[ChannelEntry]:
        """The entries published after those returned before, waiting up to `timeout`."""
        entries = await self._channels.read(self._name, cursor=self._cursor, timeout=timeout)
        if entries:
            self._cursor = entries[-1].cursor
        return entries


class LocalChannels:
    """Every result channel of one in-process queue."""

    def __init__(self) -> None:
        self._channels: dict[str, _Channel] = {}
        # Per time to live: channel name -> time of its last publish with that TTL, oldest first.
        self._by_ttl: dict[float, OrderedDict[str, float]] = {}
        self._cursor = itertools.count(1)
        self._closed = False

    def __len__(self) -> int:
        return len(self._channels)

    def publish(self, name: str, result: ComparisonResult, *, now: float, ttl: float) -> None:
        """Append `result` to channel `name` (creating it); it lives `ttl` past its last publish."""
        channel = self._channels.setdefault(name, _Channel())
        channel.entries.append((next(self._cursor), result))
        channel.expires_at = max(channel.expires_at, now + ttl)
        order = self._by_ttl.setdefault(ttl, OrderedDict())
        order[name] = now
        order.move_to_end(name)
        channel.changed.set()
        channel.changed = asyncio.Event()

    async def read(self, name: str, *, cursor: str, timeout: float) -> list[ChannelEntry]:
        """Entries after `cursor`; waits up to `timeout` for the first when there are none."""
        after = int(cursor) if cursor.isascii() and cursor.isdigit() else 0
        entries = self._after(name, after)
        if entries or timeout <= 0:
            return entries
        if self._closed:
            # Returning nothing at once would let a reader loop spin; tell it why it must stop.
            raise QueueUnavailableError("the in-process queue is closed: server shutting down")
        with self._waiting(name) as channel, contextlib.suppress(TimeoutError):
            await asyncio.wait_for(channel.changed.wait(), timeout)
        return self._after(name, after)

    def follow(self, name: str, cursor: str) -> LocalFollower:
        """A follower of `name` from just after `cursor`."""
        return LocalFollower(self, name, cursor)

    def _after(self, name: str, after: int) -> list[ChannelEntry]:
        channel = self._channels.get(name)
        if channel is None:
            return []
        return [ChannelEntry(str(n), r) for n, r in channel.entries if n > after]

    @contextmanager
    def _waiting(self, name: str) -> Iterator[_Channel]:
        """The channel to wait on; one made for the wait is gone again after it if unused."""
        channel = self._channels.setdefault(name, _Channel())
        channel.waiters += 1
        try:
            yield channel
        finally:
            channel.waiters -= 1
            if not channel.waiters and not channel.entries:
                self._channels.pop(name, None)

    def forget_idle(self, now: float) -> None:
        """Drop the channels idle past their time to live (looking only at those due)."""
        for ttl, order in self._by_ttl.items():
            while order:
                name, last = next(iter(order.items()))
                if last + ttl >= now:
                    break
                order.popitem(last=False)
                channel = self._channels.get(name)
                if channel is None or channel.expires_at >= now:
                    continue  # published meanwhile with a longer time to live
                if channel.waiters:
                    channel.entries.clear()  # a waiter holds it: emptied now, dropped after
                else:
                    del self._channels[name]

    def close(self) -> None:
        """Wake every waiter so that readers notice the shutdown."""
        self._closed = True
        for channel in self._channels.values():
            channel.changed.set()
