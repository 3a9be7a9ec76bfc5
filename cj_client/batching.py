"""Batching modes: which mode a CJ batch runs in, and the metadata every request carries."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

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
