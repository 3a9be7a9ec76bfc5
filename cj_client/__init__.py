"""CJ client: an async client for LPS and a comparative-judgement engine that ranks essays."""

from cj_client.client import LpsClient
from cj_client.errors import (
    InvalidRequestError,
    LimitExceededError,
    LpsClientError,
    NotFoundError,
    QueueFullError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from cj_client.models import (
    Ack,
    ComparisonOutcome,
    ComparisonSubmission,
    EssayInput,
    FieldViolation,
    QueueStatsView,
)

__all__ = [
    "Ack",
    "ComparisonOutcome",
    "ComparisonSubmission",
    "EssayInput",
    "FieldViolation",
    "InvalidRequestError",
    "LimitExceededError",
    "LpsClient",
    "LpsClientError",
    "NotFoundError",
    "QueueFullError",
    "QueueStatsView",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
]
