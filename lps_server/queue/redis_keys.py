"""Every Redis key the queue uses, built in this one module.

All keys share one hash tag, the configured prefix in braces (`{lps}`). Redis Cluster places a key
by the hash of its tag alone, so the whole queue lives in one slot, on one shard. That is what the
Lua scripts need: a script may only touch keys of one slot, and each of ours moves a request
between the global queue, its group, the lease set and its record atomically. One shard bounds
one queue's throughput (several thousand requests a second, see docs/queue.md); to scale
further, run more queues under different prefixes, each landing on its own slot.

Layout under `{p}` (the prefix):

* `{p}:pending`          zset, every queued request by queue score (the global order)
* `{p}:pending:<provider>` zset per provider, the same members and scores (leases skip
                         providers with no room)
* `{p}:group:<key>`      zset per compatibility key, the same members and scores
* `{p}:req:<request id>` hash: payload, status, score, member, group, deadline, bytes,
                         enqueued_at, provider, digest (`payload_digest`), lease (the holder's
                         token), attempts (failed ones), then result; expires after retention
                         once ended
* `{p}:leases`           zset, leased request ids by lease deadline
* `{p}:delayed`          zset, ids of queued requests waiting for a retry, by when it is due
* `{p}:deadlines`        zset, queued request ids by TTL deadline
* `{p}:enqueued`         zset, queued request ids by enqueue time (oldest queued age)
* `{p}:ended:<status>`   zset per end state, request ids by completion time (stats)
* `{p}:wake`             list of wake tokens that idle replicas BLPOP
* `{p}:meta`             hash of counters: `seq` (FIFO tie-break), `bytes` (queued bytes)
* `{p}:chan:<channel>`   stream of results published on a result channel
* `{p}:reader:<id>`      stream that wakes one replica's channel reader (`redis_channels`)

Queue members (in `pending` and the group zsets) are `<16-digit sequence>:<request id>`: equal
scores sort by member, and the sequence makes that order the order of submission.
"""

from __future__ import annotations

from dataclasses import dataclass

from lps_server.core.domain import RequestStatus

# Width of the sequence that leads a queue member; the request id starts after it and a colon.
MEMBER_SEQ_DIGITS = 16
ENDED_STATUSES = (RequestStatus.COMPLETED, RequestStatus.FAILED, RequestStatus.EXPIRED)


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """Key names for one queue, all under `{prefix}`.

    Raises:
        ValueError: the prefix is empty or holds a brace (it would break the hash tag).
    """

    prefix: str

    def __post_init__(self) -> None:
        if not self.prefix or "{" in self.prefix or "}" in self.prefix:
            raise ValueError(f"redis prefix {self.prefix!r} must be non-empty and brace-free")

    @property
    def tag(self) -> str:
        """The hash tag every key starts with."""
        return "{" + self.prefix + "}"

    @property
    def pending(self) -> str:
        """Global zset of queued members by queue score."""
        return f"{self.tag}:pending"

    @property
    def leases(self) -> str:
        """Zset of leased request ids by lease deadline."""
        return f"{self.tag}:leases"

    @property
    def delayed(self) -> str:
        """Zset of request ids waiting for a retry, by when it is due."""
        return f"{self.tag}:delayed"

    def provider_pending(self, provider: str) -> str:
        """The zset of one provider's queued members (scripts build it from `pending`)."""
        return f"{self.pending}:{provider}"

    @property
    def deadlines(self) -> str:
        """Zset of queued request ids by TTL deadline."""
        return f"{self.tag}:deadlines"

    @property
    def enqueued(self) -> str:
        """Zset of queued request ids by enqueue time."""
        return f"{self.tag}:enqueued"

    @property
    def wake(self) -> str:
        """List of wake tokens."""
        return f"{self.tag}:wake"

    @property
    def meta(self) -> str:
        """Hash of counters."""
        return f"{self.tag}:meta"

    def request(self, request_id: str) -> str:
        """The hash holding one request."""
        return self.request_prefix + request_id

    def group(self, group: str) -> str:
        """The zset of one compatibility key."""
        return self.group_prefix + group

    def ended(self, status: RequestStatus) -> str:
        """The zset of requests that ended in `status`."""
        return self.ended_prefix + status.value

    def channel(self, channel: str) -> str:
        """The stream of one result channel."""
        return self.channel_prefix + channel

    def reader_wake(self, reader_id: str) -> str:
        """The stream whose entries wake the channel reader `reader_id` out of its XREAD."""
        return f"{self.tag}:reader:{reader_id}"

    @property
    def request_prefix(self) -> str:
        """What `request()` puts before the id (scripts build request keys from it)."""
        return f"{self.tag}:req:"

    @property
    def group_prefix(self) -> str:
        """What `group()` puts before the key."""
        return f"{self.tag}:group:"

    @property
    def ended_prefix(self) -> str:
        """What `ended()` puts before the status."""
        return f"{self.tag}:ended:"

    @property
    def channel_prefix(self) -> str:
        """What `channel()` puts before the channel name."""
        return f"{self.tag}:chan:"

    def script_keys(self) -> list[str]:
        """The fixed keys every queue script receives as KEYS, in the order the scripts read."""
        return [
            self.pending,
            self.leases,
            self.deadlines,
            self.enqueued,
            self.wake,
            self.meta,
            self.delayed,
        ]

    def script_prefixes(self) -> list[str]:
        """Prefixes scripts append ids to for keys known only inside the script (ARGV[1..4]).

        Those keys share the hash tag, so they sit in the declared keys' slot on a Cluster.
        """
        return [self.request_prefix, self.group_prefix, self.ended_prefix, self.channel_prefix]
