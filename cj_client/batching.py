"""Batching modes: which mode a CJ batch runs in, the metadata every request carries, and, for
provider batch APIs, the requests' TTL and where their batch jobs stand."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Container, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from cj_client.errors import LpsClientError
from cj_client.models import BatchJobView, ComparisonOutcome

MAX_BUNDLE_HINT = 64


class LLMBatchingMode(StrEnum):
    """How CJ asks LPS to batch its comparisons (`CJ_LLM_BATCHING_MODE`)."""

    PER_REQUEST = "per_request"
    SERIAL_BUNDLE = "serial_bundle"
    PROVIDER_BATCH_API = "provider_batch_api"


@dataclass(frozen=True, slots=True)
class CjSettings:
    """Client settings from `CJ_*` variables."""

    llm_batching_mode: LLMBatchingMode = LLMBatchingMode.PER_REQUEST
    batch_api_allowed_providers: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CjSettings:
        """Read CJ_LLM_BATCHING_MODE and CJ_LLM_BATCH_API_ALLOWED_PROVIDERS.

        Raises:
            ValueError: CJ_LLM_BATCHING_MODE is not a known mode.
        """
        source = os.environ if env is None else env
        raw_mode = source.get("CJ_LLM_BATCHING_MODE", "") or LLMBatchingMode.PER_REQUEST.value
        try:
            mode = LLMBatchingMode(raw_mode.strip())
        except ValueError:
            choices = ", ".join(m.value for m in LLMBatchingMode)
            raise ValueError(f"CJ_LLM_BATCHING_MODE={raw_mode!r} is not one of {choices}") from None
        allowed = source.get("CJ_LLM_BATCH_API_ALLOWED_PROVIDERS", "")
        providers = frozenset(p.strip() for p in allowed.split(",") if p.strip())
        return cls(llm_batching_mode=mode, batch_api_allowed_providers=providers)


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """Per-batch configuration; `llm_batching_mode_override` beats the setting."""

    llm_batching_mode_override: LLMBatchingMode | None = None


def resolve_batching_mode(
    settings: CjSettings, config: BatchConfig, *, provider: str
) -> LLMBatchingMode:
    """The effective mode: the batch override, else the setting.

    `provider_batch_api` is only used for providers in CJ_LLM_BATCH_API_ALLOWED_PROVIDERS; for
    others it falls back to the setting, then `serial_bundle`, then `per_request`.
    """
    wanted = config.llm_batching_mode_override or settings.llm_batching_mode
    candidates = [
        wanted,
        settings.llm_batching_mode,
        LLMBatchingMode.SERIAL_BUNDLE,
        LLMBatchingMode.PER_REQUEST,
    ]
    for mode in candidates:
        usable = mode != LLMBatchingMode.PROVIDER_BATCH_API
        if usable or provider in settings.batch_api_allowed_providers:
            return mode
    return LLMBatchingMode.PER_REQUEST  # pragma: no cover - the list ends with per_request


@dataclass(frozen=True, slots=True)
class BatchTags:
    """Facts shared by every request of one CJ batch."""

    cj_batch_id: str
    bos_batch_id: str
    cj_source: str
    mode: LLMBatchingMode


def request_metadata(
    tags: BatchTags,
    *,
    essay_a_id: str,
    essay_b_id: str,
    iteration: int,
    wave_size: int,
    retry: bool,
) -> dict[str, str]:
    """The well-known metadata keys of one comparison request."""
    return {
        "essay_a_id": essay_a_id,
        "essay_b_id": essay_b_id,
        "bos_batch_id": tags.bos_batch_id,
        "cj_batch_id": tags.cj_batch_id,
        "cj_source": tags.cj_source,
        "cj_request_type": "cj_retry" if retry else "cj_comparison",
        "comparison_iteration": str(iteration),
        "cj_llm_batching_mode": tags.mode.value,
        "preferred_bundle_size": str(max(1, min(MAX_BUNDLE_HINT, wave_size))),
    }


#: How long a provider batch may take (both providers' window), and the margin added to it.
BATCH_WINDOW_S = 86_400.0
BATCH_TTL_MARGIN_S = 3600.0
#: How often a batch-API run asks LPS where its batch job stands (first soon after a wave is
#: sent, once LPS has had a moment to gather it into a job).
BATCH_STATUS_INTERVAL_S = 2.0
BATCH_STATUS_FIRST_S = 0.5


def request_ttl_for(mode: LLMBatchingMode, ttl_s: float) -> float:
    """The TTL a run's requests carry. `provider_batch_api` requests may wait a whole batch
    window (LPS serves a request whose TTL is shorter than the window one per call instead), so
    they get at least the window and a margin."""
    if mode == LLMBatchingMode.PROVIDER_BATCH_API:
        return max(ttl_s, BATCH_WINDOW_S + BATCH_TTL_MARGIN_S)
    return ttl_s


def describe_job(job: BatchJobView, *, now: float) -> str:
    """One line about a batch job: its state, size and the provider's state."""
    provider = f"provider batch {job.provider_batch_id}" if job.provider_batch_id else ""
    if job.provider_state:
        provider += f" {job.provider_state}"
    counts = ", ".join(f"{v} {k}" for k, v in sorted(job.provider_counts.items()) if v)
    parts = [
        f"batch job {job.job_id}: {job.state}",
        f"{_count(job.requests, 'request')} in {_count(job.lines, 'line')}",
        provider + (f" ({counts})" if counts else ""),
        f"submitted {now - job.submitted_at:.0f}s ago" if job.submitted_at else "",
    ]
    return ", ".join(p for p in parts if p)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


class BatchJobWatch:
    """Follows the provider batch jobs a wave's requests wait in: asks LPS about the first
    request of the wave without a result (BATCH_STATUS_FIRST_S after the wave is sent, then
    every BATCH_STATUS_INTERVAL_S) and reports each job when its state, provider state or
    tallies change.

    Args:
        get: the status query (`LpsClient.get`).
        report: told one line per change.
        clock: Unix time source.
    """

    def __init__(
        self,
        get: Callable[[str], Awaitable[ComparisonOutcome]],
        report: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.time,
        interval_s: float = BATCH_STATUS_INTERVAL_S,
        first_s: float = BATCH_STATUS_FIRST_S,
    ) -> None:
        self._get = get
        self._report = report
        self._clock = clock
        self._interval_s = interval_s
        self._first_s = first_s
        self.jobs: dict[str, BatchJobView] = {}

    async def follow(self, request_ids: Sequence[str], done: Container[str]) -> None:
        """Report the jobs of `request_ids` until cancelled (`done`: those with a result)."""
        await asyncio.sleep(self._first_s)
        while True:
            waiting = next((rid for rid in request_ids if rid not in done), None)
            if waiting is not None:
                try:
                    outcome = await self._get(waiting)
                except LpsClientError:
                    outcome = None  # progress only: the run's own calls report failures
                if outcome is not None and outcome.batch_job is not None:
                    self._seen(outcome.batch_job)
            await asyncio.sleep(self._interval_s)  # a status query per interval, by design

    def _seen(self, job: BatchJobView) -> None:
        before = self.jobs.get(job.job_id)
        self.jobs[job.job_id] = job
        key = (job.state, job.provider_state, dict(job.provider_counts))
        if before is None or key != (
            before.state,
            before.provider_state,
            dict(before.provider_counts),
        ):
            self._report(describe_job(job, now=self._clock()))
