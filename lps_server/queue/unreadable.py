"""A leased request whose stored payload cannot be read (kept apart from `base` so that every
queue module can name it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class UnreadableRequest:
    """A leased request whose stored payload this server cannot decode or route (corrupt, or
    written by a newer release). It must be ended FAILED by its holder, never retried: every
    replica of this release would fail on it the same way.

    The channels and correlation id are what could still be read from the payload ("" when
    nothing could), so that the submitter can be told.
    """

    request_id: str
    reason: str
    routable: bool = False
    result_channel: str = ""
    reply_to: str = ""
    correlation_id: str = ""
    enqueued_at: float = 0.0
