"""When to stop requesting comparisons."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

StopReason = Literal["budget", "stable", "ssr_target"]


@dataclass(frozen=True)
class StoppingRule:
    """Stop on budget, on a stable scale, or on reaching a target reliability.

    The budget always applies. Stability (largest score change between consecutive fits at
    most ``stability_threshold`` logits) and ``ssr_target`` only count once ``min_waves``
    waves are done, because early fits are too noisy to be trusted as settled.
    """

    max_comparisons: int
    stability_threshold: float = 0.05
    ssr_target: float | None = 0.9
    min_waves: int = 3

    def __post_init__(self) -> None:
        if self.max_comparisons < 0:
            raise ValueError("max_comparisons must be non-negative")
        if self.stability_threshold < 0:
            raise ValueError("stability_threshold must be non-negative")
        if self.ssr_target is not None and not 0.0 < self.ssr_target <= 1.0:
            raise ValueError("ssr_target must be in (0, 1]")
        if self.min_waves < 0:
            raise ValueError("min_waves must be non-negative")

    def should_stop(
        self,
        *,
        comparisons_done: int,
        waves_done: int,
        score_change: float | None,
        ssr: float | None,
    ) -> StopReason | None:
        """Reason to stop now, or None to carry on; ``score_change`` is None before two fits.

        ``ssr`` costs a full computation of the standard errors, so a caller passes None when
        there is no SSR target.

        Raises:
            ValueError: there is an SSR target but no SSR.
        """
        if self.ssr_target is not None and ssr is None:
            raise ValueError("an SSR target needs the SSR")
        if comparisons_done >= self.max_comparisons:
            return "budget"
        if waves_done < self.min_waves:
            return None
        if score_change is not None and score_change <= self.stability_threshold:
            return "stable"
        if self.ssr_target is not None and ssr is not None and ssr >= self.ssr_target:
            return "ssr_target"
        return None
