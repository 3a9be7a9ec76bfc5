"""Mean-square fit of judgements to the model, per essay and per judge (infit and outfit).

For a judgement the winner was expected to win with probability p; its squared residual is
(1 - p)^2 and its variance p (1 - p), the same seen from either essay. Outfit is the mean of the
squared standardised residuals, (1 - p) / p, so one surprising result moves it a lot; infit
divides the summed squared residuals by the summed variances, weighting judgements by how
informative they were. Both are near 1 when judgements follow the model; above 1 they are more
erratic than it expects (a polarising essay, an inconsistent judge).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cj_client.stats.design import Design
from cj_client.stats.fit import Fit, winner_probability

# An essay is flagged as misfitting when its infit is this many SDs above the essays' mean.
MISFIT_SDS = 2.0


@dataclass(frozen=True)
class MeanSquares:
    """Infit and outfit per group (essays or judges); NaN where a group has no judgements."""

    infit: NDArray[np.float64]
    outfit: NDArray[np.float64]


def essay_mean_squares(design: Design, fit: Fit) -> MeanSquares:
    """Infit and outfit of each essay over the judgements it took part in."""
    p = winner_probability(design, fit)
    groups = np.concatenate((design.winners, design.losers))
    return _mean_squares(np.concatenate((p, p)), groups, design.essays)


def judge_mean_squares(design: Design, fit: Fit) -> MeanSquares:
    """Infit and outfit of each judge over its judgements."""
    p = winner_probability(design, fit)
    return _mean_squares(p, design.judge_index, len(design.judges))


def misfits(infit: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Essays whose infit is more than MISFIT_SDS standard deviations above the mean infit."""
    known = infit[np.isfinite(infit)]
    if known.size < 3:
        return np.zeros(infit.size, dtype=bool)
    bound = known.mean() + MISFIT_SDS * known.std(ddof=1)
    return np.asarray(np.isfinite(infit) & (infit > bound), dtype=np.bool_)


def _mean_squares(p: NDArray[np.float64], groups: NDArray[np.intp], size: int) -> MeanSquares:
    squared = (1.0 - p) ** 2
    variance = p * (1.0 - p)
    count = np.bincount(groups, minlength=size).astype(np.float64)
    summed_variance = np.bincount(groups, weights=variance, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        infit = np.bincount(groups, weights=squared, minlength=size) / summed_variance
        outfit = np.bincount(groups, weights=(1.0 - p) / p, minlength=size) / count
    infit[count == 0] = np.nan
    outfit[count == 0] = np.nan
    return MeanSquares(infit=infit, outfit=outfit)
