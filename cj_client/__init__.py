"""CJ client: an async client for LPS and a comparative-judgement engine that ranks essays.

See docs/library.md: `LpsClient` talks to LPS, `Assessment` runs a ranking through it.
"""

from cj_client.assessment import Assessment
from cj_client.batching import BatchConfig, CjSettings, LLMBatchingMode
from cj_client.client import LpsClient
from cj_client.collector import CollectorLimits
from cj_client.errors import (
    AlreadyExistsError,
    AssessmentError,
    DeadlineExceededError,
    InputError,
    InvalidRequestError,
    JournalError,
    JournalWriteError,
    LimitExceededError,
    LpsClientError,
    NotFoundError,
    PermissionDeniedError,
    QueueFullError,
    ResourceExhaustedError,
    RunRefusedError,
    ServerLostError,
    TooManyFailuresError,
    UnauthenticatedError,
    UnavailableError,
)
from cj_client.essay_files import load_essays
from cj_client.journal import JournalContents, read_journal
from cj_client.models import (
    Ack,
    BatchJobView,
    ComparisonOutcome,
    ComparisonSubmission,
    EssayInput,
    FieldViolation,
    QueueStatsView,
)
from cj_client.progress import RunProgress
from cj_client.run_options import AssessmentOptions, AssessmentReport, journaled_options
from cj_client.scoring import EssayScore, Scores

__all__ = [
    "Ack",
    "AlreadyExistsError",
    "Assessment",
    "AssessmentError",
    "AssessmentOptions",
    "AssessmentReport",
    "BatchConfig",
    "BatchJobView",
    "CjSettings",
    "CollectorLimits",
    "ComparisonOutcome",
    "ComparisonSubmission",
    "DeadlineExceededError",
    "EssayInput",
    "EssayScore",
    "FieldViolation",
    "InputError",
    "InvalidRequestError",
    "JournalContents",
    "JournalError",
    "JournalWriteError",
    "LLMBatchingMode",
    "LimitExceededError",
    "LpsClient",
    "LpsClientError",
    "NotFoundError",
    "PermissionDeniedError",
    "QueueFullError",
    "QueueStatsView",
    "ResourceExhaustedError",
    "RunProgress",
    "RunRefusedError",
    "Scores",
    "ServerLostError",
    "TooManyFailuresError",
    "UnauthenticatedError",
    "UnavailableError",
    "journaled_options",
    "load_essays",
    "read_journal",
]
