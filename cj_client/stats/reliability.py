"""How far the scale can be trusted: scale separation and split-half reliability."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from cj_client.stats.fit import Fit, FitProblem, fit_scale

# Splits averaged: ten for a few hundred essays; fewer for more, whose halves' correlation
# varies less from split to split (about as 1 / sqrt(n)), down to three.
SPLITS = 10
SPLITS_AT = 400


def scale_separation_reliability(scores: Sequence[float], ses: Sequence[float]) -> float:
    """SSR = (observed variance - mean squared SE) / observed variance, clipped to [0, 1]."""
    if len(scores) != len(ses):
        raise ValueError("scores and ses differ in length")
    if len(scores) < 2:
        return 0.0
    # Sample variance: the fitted scores were centred, which uses up one degree of freedom.
    observed = statistics.variance(scores)
    if observed <= 0.0:
        return 0.0
    error = statistics.fmean(se * se for se in ses)
    return min(1.0, max(0.0, (observed - error) / observed))


def posterior_reliability(means: Sequence[float], sds: Sequence[float]) -> float:
    """Reliability of posterior estimates: var(means) / (var(means) + mean posterior variance).

    Posterior means are shrunk towards the centre, so their (sample) variance is the true
    scores' variance less the error variance (not plus it, as for maximum-likelihood
    estimates), and the squared correlation of the means with the truth is this ratio. It is
    the EAP reliability of item response theory, SSR's counterpart for a shrunk scale.
    """
    if len(means) != len(sds):
        raise ValueError("means and sds differ in length")
    if len(means) < 2:
        return 0.0
    spread = statistics.variance(means)
    error = statistics.fmean(sd * sd for sd in sds)
    if spread + error <= 0.0:
        return 0.0
    return min(1.0, max(0.0, spread / (spread + error)))


def split_half_reliability(
    problem: FitProblem, fit: Fit, *, seed: int, splits: int | None = None
) -> float | None:
    """Mean over random splits of the judgements into halves of the Spearman-Brown corrected
    correlation between the two halves' scores, clipped to [0, 1].

    Each half is fitted like the whole (same prior, anchors and bias terms); anchored essays are
    left out of the correlation, since both halves give them the same fixed score. None when
    there are too few judgements or free essays to correlate.
    """
    design = problem.design
    free = np.setdiff1d(np.arange(design.essays), list(problem.anchors))
    if design.size < 4 or free.size < 3:
        return None
    rng = np.random.default_rng(seed)
    if splits is None:
        splits = max(3, min(SPLITS, round(SPLITS * (SPLITS_AT / design.essays) ** 0.5)))
    values = []
    for _ in range(splits):
        order = rng.permutation(design.size)
        halves = (order[: design.size // 2], order[design.size // 2 :])
        fitted = [
            fit_scale(
                replace(problem, design=design.subset(np.sort(half))),
                start_scores=fit.scores,
                start_bias=fit.bias,
            ).scores[free]
            for half in halves
        ]
        if np.std(fitted[0]) == 0.0 or np.std(fitted[1]) == 0.0:
            values.append(0.0)
            continue
        r = float(np.corrcoef(fitted[0], fitted[1])[0, 1])
        values.append(max(0.0, 2.0 * r / (1.0 + r)) if r > 0 else 0.0)
    return min(1.0, statistics.fmean(values))
