"""Protobuf time values, shared by message conversion and error details."""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp


def timestamp_pb(seconds: float) -> Timestamp:
    """A protobuf Timestamp of Unix time `seconds`; unset (zero) when `seconds` is not positive."""
    ts = Timestamp()
    if seconds > 0:
        ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def duration_pb(seconds: float) -> Duration:
    """A protobuf Duration of `seconds`."""
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d
