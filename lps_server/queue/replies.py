"""Reply channels with a reader in this process: their results skip the channel.

Each SubmitComparisons call has a private reply channel. When the replica that finishes a request is
the one holding its call, which is the usual case, the result goes straight to the call once it is
stored. Only results finished elsewhere travel through the queue's channel. Sending local results
through the channel would cost a channel write, a read and a decode for every result, and Redis
would hold each streamed result twice for the whole retention period.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from lps_server.core.domain import ComparisonResult, QueuedRequest

Deliver = Callable[[ComparisonResult], None]


class LocalReplies:
    """Which reply channels have a reader in this process, and how to hand it a result."""

    def __init__(self) -> None:
        self._readers: dict[str, Deliver] = {}

    @contextmanager
    def open(self, channel: str, deliver: Deliver) -> Iterator[None]:
        """While open, `reader(channel)` is `deliver`."""
        if channel in self._readers:
            raise ValueError(f"reply channel {channel!r} already has a reader here")
        self._readers[channel] = deliver
        try:
            yield
        finally:
            del self._readers[channel]

    def reader(self, channel: str) -> Deliver | None:
        """The reader of `channel` in this process, if it has one."""
        return self._readers.get(channel) if channel else None

    def deliver(
        self, done: Sequence[tuple[QueuedRequest, ComparisonResult]], stored: Sequence[bool]
    ) -> None:
        """Hand each result this process stored first to its call's reader here, if it has one
        (a backend's `complete` skipped that reply channel for it)."""
        for (queued, result), first in zip(done, stored, strict=True):
            reader = self.reader(queued.reply_to)
            if first and reader is not None:
                reader(result)
