"""Bradley-Terry scoring of comparative-judgement outcomes."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import choix
import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Outcome:
    """Result of one comparison."""

    winner: str
    loser: str


@dataclass(frozen=True)
class EssayScore:
    """Fitted logit-scale score of one essay with its standard error."""

    essay_id: str
    score: float
    se: float
    comparisons: int


@dataclass(frozen=True)
class Scores:
    """Fitted scale, best essay first, with its scale separation reliability."""

    essays: tuple[EssayScore, ...]
    ssr: float

    def as_mapping(self) -> dict[str, float]:
        """Scores keyed by essay id."""
        return {essay.essay_id: essay.score for essay in self.essays}


def fit_bradley_terry(
    essay_ids: Sequence[str],
    outcomes: Sequence[Outcome],
    *,
    regularization: float = 0.01,
) -> Scores:
    """Fit a centred, lightly L2-regularised Bradley-Terry model on the logit scale."""
    ids = list(essay_ids)
    index = {essay: i for i, essay in enumerate(ids)}
    if len(index) != len(ids):
        raise ValueError("essay ids must be unique")
    # Without a penalty an unbeaten essay's MLE is infinite; the penalty keeps it finite.
    if not regularization > 0:
        raise ValueError("regularization must be positive")
    for outcome in outcomes:
        for essay in (outcome.winner, outcome.loser):
            if essay not in index:
                raise ValueError(f"unknown essay id: {essay!r}")
        if outcome.winner == outcome.loser:
            raise ValueError(f"essay compared with itself: {outcome.winner!r}")

    n = len(ids)
    winners = np.array([index[o.winner] for o in outcomes], dtype=np.intp)
    losers = np.array([index[o.loser] for o in outcomes], dtype=np.intp)
    counts = np.bincount(winners, minlength=n) + np.bincount(losers, minlength=n)

    if outcomes:
        data = list(zip(winners.tolist(), losers.tolist(), strict=True))
        # choix penalises alpha * sum(theta**2): a Gaussian prior with variance 1 / (2 alpha).
        fitted = np.asarray(choix.opt_pairwise(n, data, alpha=regularization), dtype=np.float64)
        # The penalised optimum is already mean-zero; this removes optimiser tolerance.
        params = fitted - fitted.mean()
    else:
        params = np.zeros(n)

    # An uncompared essay carries only the prior, so it gets the prior SD; leaving it out of
    # the covariance also stops its prior-only position inflating everyone else's SE.
    ses = np.full(n, 1.0 / math.sqrt(2.0 * regularization))
    compared = np.flatnonzero(counts)
    if compared.size:
        local = np.full(n, -1, dtype=np.intp)
        local[compared] = np.arange(compared.size)
        ses[compared] = _standard_errors(
            params[compared], local[winners], local[losers], regularization
        )

    essays = sorted(
        (
            EssayScore(essay, float(params[i]), float(ses[i]), int(counts[i]))
            for i, essay in enumerate(ids)
        ),
        key=lambda e: (-e.score, e.essay_id),
    )
    ssr = scale_separation_reliability(params.tolist(), ses.tolist())
    return Scores(essays=tuple(essays), ssr=ssr)


def _standard_errors(
    params: NDArray[np.float64],
    winners: NDArray[np.intp],
    losers: NDArray[np.intp],
    regularization: float,
) -> NDArray[np.float64]:
    n = params.size
    p = 1.0 / (1.0 + np.exp(-(params[winners] - params[losers])))
    info = p * (1.0 - p)
    hessian = 2.0 * regularization * np.eye(n)
    np.add.at(hessian, (winners, winners), info)
    np.add.at(hessian, (losers, losers), info)
    np.add.at(hessian, (winners, losers), -info)
    np.add.at(hessian, (losers, winners), -info)
    # Scores are reported centred, so the covariance is that of the centred parameters: the
    # pseudo-inverse on the subspace orthogonal to the all-ones direction. The compared essays
    # alone are mean-zero too (the penalised optimum sums to zero per connected component).
    centring = np.eye(n) - 1.0 / n
    covariance = np.linalg.pinv(centring @ hessian @ centring, hermitian=True)
    variances: NDArray[np.float64] = np.clip(np.diag(covariance), 0.0, None)
    return np.sqrt(variances)


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


def max_score_change(old: Mapping[str, float], new: Mapping[str, float]) -> float:
    """Largest absolute score change between two fits of the same essays."""
    if old.keys() != new.keys():
        raise ValueError("score maps cover different essays")
    return max((abs(new[essay] - old[essay]) for essay in new), default=0.0)
