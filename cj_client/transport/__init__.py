"""The client's transport: the only part of `cj_client` that imports `grpc` or `generated`."""

from cj_client.transport.calls import LpsCalls, Metadata
from cj_client.transport.channel import open_channel
from cj_client.transport.convert import (
    PROVIDERS,
    ack_from_pb,
    outcome_from_pb,
    stats_from_pb,
    submission_to_pb,
)
from cj_client.transport.status import QUEUE_FULL_REASON, translate

__all__ = [
    "PROVIDERS",
    "QUEUE_FULL_REASON",
    "LpsCalls",
    "Metadata",
    "ack_from_pb",
    "open_channel",
    "outcome_from_pb",
    "stats_from_pb",
    "submission_to_pb",
    "translate",
]
