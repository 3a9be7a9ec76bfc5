"""Bradley-Terry scoring of comparative-judgement outcomes, wave by wave.

`ScaleFitter` is what a run uses: after each wave it refits from the previous scores (a few sparse
Newton steps), and computes standard errors (a dense O(n^3) inverse) only when asked for them:
by an SSR stopping target, and once for the final report. The statistics live in `cj_client.stats`.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np
from threadpoolctl import threadpool_limits

from cj_client.stats.design import Design, Outcome
from cj_client.stats.fit import FitProblem, Prior, fit_scale
from cj_client.stats.posterior import Posterior, posterior
from cj_client.stats.reliability import posterior_reliability, scale_separation_reliability
from cj_client.stats.run_statistics import RunStatistics, run_statistics
from cj_client.stats.uncertainty import StandardErrors, standard_errors

__all__ = [
    "DEFAULT_REGULARIZATION",
    "EssayScore",
    "Outcome",
    "ScaleFitter",
    "Scores",
    "fit_bradley_terry",
    "max_score_change",
    "scale_separation_reliability",
]

# A penalty of alpha * sum(theta**2) (choix's convention): a Gaussian prior of SD 1/sqrt(2 alpha),
# about 7 logits: wide enough to leave any realistic scale alone, and an unbeaten essay finite.
DEFAULT_REGULARIZATION = 0.01
# The prior SD of a run's scores before the judgements say otherwise: a typical CJ scale's spread.
INITIAL_PRIOR_SD = 2.0
_T = TypeVar("_T")


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


class ScaleFitter:
    """The scale of one run, refitted as judgements arrive.

    After each wave the scores are refitted from the previous ones under the current prior (a
    few sparse Newton steps). The reported scale (`scores`, `ssr`, `statistics`) is the posterior
    with the prior's spread estimated and integrated out (`cj_client.stats.posterior`); it costs a
    few dense factorisations, so a run asks for it only for an SSR target and at the end, and the
    spread it finds becomes the prior of later waves.

    Args:
        essay_ids: the essays (unique).
        anchors: essays whose scores are fixed, by id; they put the run on an earlier scale.
        prior_sd: a fixed prior SD, reported with plain Laplace standard errors and the
            classical SSR; None (the default) estimates the spread as above.
        estimate_bias: fit each judge's advantage for position A alongside the scores.
        clock: measures the time spent scoring (`seconds`).

    Raises:
        ValueError: ids repeat, an anchor is not among the essays, or an anchor is not finite.
    """

    def __init__(
        self,
        essay_ids: Sequence[str],
        *,
        anchors: Mapping[str, float] | None = None,
        prior_sd: float | None = None,
        estimate_bias: bool = True,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._ids = tuple(essay_ids)
        design = Design.build(self._ids, [])
        index = {essay: i for i, essay in enumerate(self._ids)}
        anchors = anchors or {}
        if unknown := sorted(set(anchors) - set(index)):
            raise ValueError(f"anchors not among the essays: {', '.join(unknown)}")
        if bad := sorted(e for e, v in anchors.items() if not math.isfinite(v)):
            raise ValueError(f"anchor scores must be finite numbers: {', '.join(bad)}")
        anchored = {index[essay]: float(value) for essay, value in anchors.items()}
        centre = statistics.fmean(anchored.values()) if anchored else 0.0
        prior = Prior(centre=centre, sd=prior_sd or INITIAL_PRIOR_SD)
        self._problem = FitProblem(design, prior, anchored, estimate_bias)
        self._estimate_prior = prior_sd is None
        self._clock = clock
        self.seconds = 0.0
        self._fit = self._timed(lambda: fit_scale(self._problem))
        self._posterior: Posterior | None = None

    def current(self) -> dict[str, float]:
        """The latest fitted scores by essay id (the prior's centre before any judgement)."""
        return dict(zip(self._ids, self._fit.scores.tolist(), strict=True))

    def update(self, outcomes: Sequence[Outcome]) -> dict[str, float]:
        """Refit on all judgements so far, starting from the previous fit; the new scores."""
        self._timed(lambda: self._update(outcomes))
        return self.current()

    def ssr(self) -> float:
        """Scale separation reliability of the reported scale, over the essays not anchored."""
        return self.scores().ssr

    def scores(self) -> Scores:
        """The reported scale: scores with standard errors, best essay first."""
        post = self._timed(self._report)
        counts = self._problem.design.counts()
        essays = sorted(
            (
                EssayScore(essay, float(post.scores[i]), float(post.ses[i]), int(counts[i]))
                for i, essay in enumerate(self._ids)
            ),
            key=lambda e: (-e.score, e.essay_id),
        )
        free = [i for i in range(len(self._ids)) if i not in self._problem.anchors]
        reliability = (
            posterior_reliability if self._estimate_prior else scale_separation_reliability
        )
        ssr = reliability(
            post.conditional_scores[free].tolist(), post.conditional_ses[free].tolist()
        )
        return Scores(essays=tuple(essays), ssr=ssr)

    def statistics(self, *, seed: int) -> RunStatistics:
        """Fit, split-half reliability and position bias of the reported scale."""
        post = self._timed(self._report)
        errors = StandardErrors(scores=post.ses, bias=post.bias_ses)
        fit = replace(post.mode, bias=post.bias)
        return self._timed(lambda: run_statistics(post.problem, fit, errors, seed=seed))

    @property
    def prior(self) -> Prior:
        """The prior of the latest fit."""
        return self._problem.prior

    def _update(self, outcomes: Sequence[Outcome]) -> None:
        previous = self._problem.design
        design = Design.build(self._ids, outcomes)
        by_judge = dict(zip(previous.judges, self._fit.bias.tolist(), strict=True))
        start_bias = np.array([by_judge.get(judge, 0.0) for judge in design.judges])
        self._problem = replace(self._problem, design=design)
        self._fit = fit_scale(self._problem, start_scores=self._fit.scores, start_bias=start_bias)
        self._posterior = None

    def _report(self) -> Posterior:
        if self._posterior is None:
            if self._estimate_prior and self._problem.design.size:
                self._posterior = posterior(self._problem, self._fit)
                self._problem = replace(self._problem, prior=self._posterior.prior)
            else:
                errors = standard_errors(self._problem, self._fit)
                self._posterior = Posterior(
                    scores=self._fit.scores,
                    ses=errors.scores,
                    conditional_scores=self._fit.scores,
                    conditional_ses=errors.scores,
                    bias=self._fit.bias,
                    bias_ses=errors.bias,
                    prior=self._problem.prior,
                    mode=self._fit,
                    problem=self._problem,
                )
        return self._posterior

    def _timed(self, work: Callable[[], _T]) -> _T:
        started = self._clock()
        try:
            # One BLAS thread: the matrices are small or medium, and on a busy machine
            # OpenBLAS's spinning threads made a 200 x 200 solve 100 times slower.
            with threadpool_limits(limits=1, user_api="blas"):
                return work()
        finally:
            self.seconds += self._clock() - started


def fit_bradley_terry(
    essay_ids: Sequence[str],
    outcomes: Sequence[Outcome],
    *,
    regularization: float = DEFAULT_REGULARIZATION,
) -> Scores:
    """Fit a centred, lightly L2-regularised Bradley-Terry model on the logit scale, from scratch
    and without a position-bias term."""
    if not regularization > 0:
        raise ValueError("regularization must be positive")
    prior_sd = 1.0 / math.sqrt(2.0 * regularization)
    fitter = ScaleFitter(essay_ids, prior_sd=prior_sd, estimate_bias=False)
    fitter.update(outcomes)
    return fitter.scores()


def max_score_change(old: Mapping[str, float], new: Mapping[str, float]) -> float:
    """Largest absolute score change between two fits of the same essays."""
    if old.keys() != new.keys():
        raise ValueError("score maps cover different essays")
    return max((abs(new[essay] - old[essay]) for essay in new), default=0.0)
