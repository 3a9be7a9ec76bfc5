"""The options and the report of a CJ run, and the options' record in the run's journal."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cj_client.batching import BatchConfig, CjSettings, LLMBatchingMode
from cj_client.errors import JournalError
from cj_client.journal import JournalContents
from cj_client.judges import Judge
from cj_client.models import ComparisonOutcome
from cj_client.request_ids import MAX_BATCH_ID_CHARS, MAX_REQUEST_ID_CHARS
from cj_client.scoring import Scores
from cj_client.stats.run_statistics import RunStatistics

DEFAULT_INSTRUCTIONS = (
    "You are an experienced teacher. Judge which essay is the better piece of writing: "
    "argument, evidence, organisation and language."
)


def new_cj_batch_id() -> str:
    """A fresh `cj_batch_id`, for runs that are not given one."""
    return f"cj-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True, slots=True)
class AssessmentOptions:
    """Options of one CJ run; `budget` defaults to five comparisons per essay (ten per essay
    counting both sides). A run whose failed share of comparisons exceeds `max_failed_share`
    ends with TooManyFailuresError; requests carry `request_ttl_s` as their TTL."""

    budget: int | None = None
    batch: BatchConfig = field(default_factory=BatchConfig)
    provider: str = "mock"
    model: str = ""
    instructions: str = DEFAULT_INSTRUCTIONS
    stability_threshold: float = 0.05
    ssr_target: float | None = None
    min_waves: int = 3
    seed: int = 0
    cj_batch_id: str = ""
    bos_batch_id: str = ""
    cj_source: str = "cj_assess"
    max_failed_share: float = 0.05
    request_ttl_s: float = 3600.0
    # Several judges take the comparisons in turn (empty: `provider` and `model` judge all).
    judges: tuple[Judge, ...] = ()
    # Essays whose scores are fixed, putting the run on an earlier run's scale.
    anchors: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"budget must be at least 1 comparison, got {self.budget}")
        if not 0.0 <= self.max_failed_share <= 1.0:
            raise ValueError(f"max_failed_share must be in [0, 1], got {self.max_failed_share}")
        if self.request_ttl_s <= 0:
            raise ValueError(f"request_ttl_s must be positive, got {self.request_ttl_s}")
        if len(self.cj_batch_id) > MAX_BATCH_ID_CHARS:
            raise ValueError(
                f"cj_batch_id must be at most {MAX_BATCH_ID_CHARS} characters (LPS's ids are at "
                f"most {MAX_REQUEST_ID_CHARS}), got {len(self.cj_batch_id)}"
            )

    def budget_for(self, essays: int) -> int:
        """The comparison budget for a run over `essays` essays."""
        return 5 * essays if self.budget is None else self.budget


@dataclass(frozen=True, slots=True)
class AssessmentReport:
    """What a run produced: scores best first, and the run's accounting.

    `failed` counts ended comparisons without a judgement; `unfinished` those sent but without a
    result when the run stopped (only an interrupted or failed run has any).
    """

    scores: Scores
    effective_mode: LLMBatchingMode
    batching_mode_override: LLMBatchingMode | None
    cj_batch_id: str
    requested: int
    completed: int
    failed: int
    provider_calls: int
    tokens: int
    cost_usd: float
    elapsed_s: float
    waves: int
    stop_reason: str
    outcomes: tuple[ComparisonOutcome, ...]
    unfinished: int = 0
    complete: bool = True
    statistics: RunStatistics | None = None
    scoring_seconds: float = 0.0


def journaled_options(contents: JournalContents) -> AssessmentOptions:
    """The options a journaled run began with.

    Raises:
        JournalError: the header does not hold them.
    """
    try:
        record = dict(contents.header["options"])
        override = record.pop("batch", {}).get("llm_batching_mode_override")
        batch = BatchConfig(LLMBatchingMode(override) if override else None)
        names = {f.name for f in dataclasses.fields(AssessmentOptions)}
        values = {k: v for k, v in record.items() if k in names}
        values["cj_batch_id"] = contents.header["cj_batch_id"]  # the id the run was given
        values["judges"] = tuple(Judge(**judge) for judge in values.get("judges", ()))
        return AssessmentOptions(**values, batch=batch)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise JournalError(f"the journal's run options are unreadable: {exc}") from None


def options_record(options: AssessmentOptions) -> dict[str, Any]:
    """The options as the journal's header records them (`journaled_options` reads them back)."""
    record = dataclasses.asdict(options)
    override = options.batch.llm_batching_mode_override
    record["batch"] = {"llm_batching_mode_override": override.value if override else None}
    return record


def settings_record(settings: CjSettings) -> dict[str, Any]:
    """The CJ_* settings as the journal's header records them (`journaled_settings` reads them)."""
    return {
        "llm_batching_mode": settings.llm_batching_mode.value,
        "batch_api_allowed_providers": sorted(settings.batch_api_allowed_providers),
    }


def journaled_settings(contents: JournalContents, default: CjSettings) -> CjSettings:
    """The CJ_* settings a journaled run began with (a resumed run keeps its batching mode
    whatever the resuming shell exports); `default` for a journal that predates the record.

    Raises:
        JournalError: the header's record of them is unreadable.
    """
    record = contents.header.get("settings")
    if record is None:
        return default
    try:
        return CjSettings(
            llm_batching_mode=LLMBatchingMode(record["llm_batching_mode"]),
            batch_api_allowed_providers=frozenset(
                str(p) for p in record["batch_api_allowed_providers"]
            ),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise JournalError(f"the journal's CJ_* settings are unreadable: {exc}") from None
