"""The penalised Bradley-Terry fit: Newton's method on sparse matrices, warm-started.

The model: the winner of a judgement beats the loser with logit
``theta[winner] - theta[loser] + side * bias[judge]``. The free essays' scores have a Gaussian
prior ``N(prior.centre, prior.sd^2)`` (the population the essays come from), each judge's bias a
wide one (``BIAS_PRIOR_SD``). Essays in ``anchors`` keep the scores given. Without anchors the
centre is 0 and the fitted scores of each connected set of compared essays sum to zero.

The Hessian is a weighted graph Laplacian of the comparisons plus the prior's precision (and one
row per judge), so each Newton step is a sparse solve: conjugate gradients with a diagonal
preconditioner, whose cost grows with the number of judgements, not with the cube of the number
of essays.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from numpy.typing import NDArray

from cj_client.stats.design import Design

# A judge's advantage for position A is a nuisance the data pin down well; its prior only keeps
# it finite when one judge saw nothing but A wins.
BIAS_PRIOR_SD = 5.0
# Newton stops once no parameter moves by more than this many logits.
STEP_TOLERANCE = 1e-8
MAX_ITERATIONS = 200
# Below this many free parameters a dense solve is cheaper than conjugate gradients.
DENSE_SOLVE_MAX = 400
_ARMIJO = 1e-4
# With anchors, the free essays' mean score lies at most this many logits outside the anchors'
# range (an average new essay beating the top anchor 99 times in 100). Further out the
# judgements cannot place it: when the new essays beat every anchor every time, the likelihood
# rises without end as the centre does (docs/decisions.md).
CENTRE_REACH = 5.0
_MIN_STEP_SCALE = 1e-10


@dataclass(frozen=True)
class Prior:
    """The Gaussian prior of the free essays' scores."""

    centre: float
    sd: float

    def __post_init__(self) -> None:
        if not (self.sd > 0 and np.isfinite(self.sd)):
            raise ValueError("the prior SD must be a positive number")

    @property
    def precision(self) -> float:
        """1 / sd^2."""
        return 1.0 / (self.sd * self.sd)


@dataclass(frozen=True)
class Fit:
    """The fitted parameters: a score per essay and a position bias per judge."""

    scores: NDArray[np.float64]
    bias: NDArray[np.float64]
    iterations: int


@dataclass(frozen=True)
class FitProblem:
    """What is fitted: the judgements, the prior, which parameters are fixed."""

    design: Design
    prior: Prior
    anchors: Mapping[int, float]
    estimate_bias: bool

    def free(self) -> NDArray[np.intp]:
        """Indices (into scores followed by biases) of the parameters that are fitted."""
        n, judges = self.design.essays, len(self.design.judges)
        mask = np.ones(n + judges, dtype=bool)
        mask[list(self.anchors)] = False
        if not self.estimate_bias:
            mask[n:] = False
        return np.flatnonzero(mask)

    def precisions(self, free: NDArray[np.intp]) -> NDArray[np.float64]:
        """The prior precision of each free parameter."""
        bias = 1.0 / (BIAS_PRIOR_SD * BIAS_PRIOR_SD)
        return np.where(free < self.design.essays, self.prior.precision, bias)

    def centres(self, free: NDArray[np.intp]) -> NDArray[np.float64]:
        """The prior mean of each free parameter."""
        return np.where(free < self.design.essays, self.prior.centre, 0.0)

    def start(self, scores: NDArray[np.float64] | None, bias: NDArray[np.float64] | None) -> Fit:
        """A starting point: the given values (or the prior's centre), anchors at their scores."""
        n = self.design.essays
        start = np.full(n, self.prior.centre) if scores is None else scores.astype(np.float64)
        for essay, score in self.anchors.items():
            start[essay] = score
        judges = len(self.design.judges)
        biases = (
            bias.astype(np.float64) if bias is not None and self.estimate_bias else np.zeros(judges)
        )
        return Fit(start, biases, 0)

    def information(self, fit: Fit) -> NDArray[np.float64]:
        """Fisher information plus the prior's precision (the negative Hessian of the log
        posterior) of the free parameters at `fit`, as a dense matrix."""
        free = self.free()
        x = _columns(self.design, free)
        p = winner_probability(self.design, fit)
        information = _information(x, p, self.precisions(free))
        dense = information.toarray() if sp.issparse(information) else information
        return np.asarray(dense, dtype=np.float64)


def centre_bounds(problem: FitProblem) -> tuple[float, float]:
    """Where the free essays' centre may lie with anchors: within CENTRE_REACH of the
    anchors' range (without anchors the centre is 0)."""
    if not problem.anchors:
        return 0.0, 0.0
    scores = problem.anchors.values()
    return min(scores) - CENTRE_REACH, max(scores) + CENTRE_REACH


def fit_scale(
    problem: FitProblem,
    *,
    start_scores: NDArray[np.float64] | None = None,
    start_bias: NDArray[np.float64] | None = None,
) -> Fit:
    """Maximise the posterior by damped Newton steps from the given start."""
    design = problem.design
    n = design.essays
    start = problem.start(start_scores, start_bias)
    full = np.concatenate((start.scores, start.bias))
    free = problem.free()
    x = _columns(design, free)
    fixed = np.setdiff1d(np.arange(full.size), free)
    offset = np.asarray(design.matrix()[:, fixed] @ full[fixed], dtype=np.float64)
    centres = problem.centres(free)
    precisions = problem.precisions(free)
    params = full[free].copy()

    def objective(values: NDArray[np.float64]) -> float:
        eta = x @ values + offset
        prior = 0.5 * np.sum(precisions * (values - centres) ** 2)
        return float(-np.logaddexp(0.0, -eta).sum() - prior)

    current = objective(params)
    iterations = 0
    limit = MAX_ITERATIONS if params.size else 0
    for iterations in range(1, limit + 1):  # noqa: B007 - reported in the Fit
        p = _sigmoid(x @ params + offset)
        gradient = x.T @ (1.0 - p) - precisions * (params - centres)
        step = _solve(_information(x, p, precisions), gradient)
        slope = float(gradient @ step)
        if not slope > 0:
            # An inexact solve can point downhill (or be nan); the gradient never does.
            step, slope = gradient, float(gradient @ gradient)
        accepted = _line_search(objective, params, current, step, slope)
        if accepted is None:
            break  # no step uphill is left: the optimum, to the arithmetic's precision
        candidate, value, moved = accepted
        params, current = candidate, value
        if moved < STEP_TOLERANCE:
            break
    full[free] = params
    scores = full[:n]
    if not problem.anchors:
        # The optimum's compared essays already sum to zero; this removes the solver's tolerance.
        scores = scores - scores.mean()
    return Fit(scores=scores.copy(), bias=full[n:].copy(), iterations=iterations)


def _line_search(
    objective: Callable[[NDArray[np.float64]], float],
    params: NDArray[np.float64],
    current: float,
    step: NDArray[np.float64],
    slope: float,
) -> tuple[NDArray[np.float64], float, float] | None:
    """The first of the halved steps that raises the objective enough (Armijo), with its value
    and largest move; None when none does. A step is never taken downhill: taking the last
    halving whatever it gave once let a near-singular solve walk the scores to 1e12."""
    scale = 1.0
    while scale >= _MIN_STEP_SCALE:
        candidate = params + scale * step
        value = objective(candidate)
        if np.isfinite(value) and value >= current + _ARMIJO * scale * slope:
            return candidate, value, float(np.max(np.abs(scale * step)))
        scale /= 2.0
    return None


def winner_logit(design: Design, fit: Fit) -> NDArray[np.float64]:
    """The fitted logit that each judgement's winner wins it."""
    return np.asarray(
        fit.scores[design.winners]
        - fit.scores[design.losers]
        + design.sides * fit.bias[design.judge_index],
        dtype=np.float64,
    )


def winner_probability(design: Design, fit: Fit) -> NDArray[np.float64]:
    """The fitted probability that each judgement's winner wins it."""
    return _sigmoid(winner_logit(design, fit))


# A dense array or a scipy.sparse matrix (scipy ships no types, so mypy sees Any).
Matrix = Any


def _columns(design: Design, free: NDArray[np.intp]) -> Matrix:
    """The design's columns of the free parameters: dense when small (sparse bookkeeping would
    cost more than the arithmetic), sparse otherwise."""
    columns = design.matrix()[:, free]
    return columns.toarray() if free.size <= DENSE_SOLVE_MAX else columns.tocsr()


def _information(x: Matrix, p: NDArray[np.float64], precisions: NDArray[np.float64]) -> Matrix:
    weights = p * (1.0 - p)
    if isinstance(x, np.ndarray):
        return np.asarray(x.T @ (weights[:, None] * x) + np.diag(precisions), dtype=np.float64)
    return (x.T @ sp.diags(weights) @ x + sp.diags(precisions)).tocsr()  # sparse


def _solve(hessian: Matrix, gradient: NDArray[np.float64]) -> NDArray[np.float64]:
    if gradient.size == 0:
        return gradient.copy()
    if isinstance(hessian, np.ndarray):
        return np.asarray(np.linalg.solve(hessian, gradient), dtype=np.float64)
    preconditioner = sp.diags(1.0 / hessian.diagonal())
    solution, _ = spla.cg(hessian, gradient, rtol=1e-10, atol=0.0, M=preconditioner)
    # An inexact step is still an ascent direction; the outer loop checks convergence.
    return np.asarray(solution, dtype=np.float64)


def _sigmoid(eta: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * eta)), dtype=np.float64)
