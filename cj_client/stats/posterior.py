"""The scores' posterior with the population's spread estimated and integrated out, in the manner
of INLA (integrated nested Laplace approximation): the cheap approximation behind SSR during a run.
The reported scale is sampled instead (`cj_client.stats.sampler`): this approximation shrinks
about 10-20% too far, by a run-dependent amount (the spread's Laplace estimate runs low).

Why not the maximum-likelihood scale: with ten or so comparisons per essay an essay that won most
of its few comparisons lands far out, and adaptive pairing, which then keeps it among strong
partners, stretches the scale further; in simulation its 95% intervals held the truth for only
56-60% of essays under adaptive pairing. The posterior under the prior the essays come from has
neither fault whatever the pairing, because the pairing depends only on judgements already seen.

How: the scores' prior is N(centre, sd^2). For a given sd the posterior of the scores is
approximated by a Gaussian at its mode (the penalised fit) with the inverse Hessian as covariance
(the Laplace approximation), which also approximates the marginal likelihood of sd. sd is
integrated over a small grid around its most likely value, weighted by that likelihood, and each
essay's mean and variance are corrected for the skew of its own few binary judgements by
quadrature over its conditional posterior (the other essays held at their modes). Without
anchors the centre is 0 (the gauge); with anchors it is the free essays' mean, refitted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from cj_client.stats.fit import (
    Fit,
    FitProblem,
    Prior,
    centre_bounds,
    fit_scale,
    winner_logit,
)
from cj_client.stats.uncertainty import (
    InformationFactor,
    cholesky_factor,
    standard_errors_from,
)

# The spread is searched within these bounds (logits).
SD_BOUNDS = (0.05, 10.0)
# The spread's own prior: log(sd) ~ N(log 2, 0.7^2), i.e. a CJ scale's spread is most likely
# within a factor of two of 2 logits. It matters only for small runs: with 16 essays the
# judgements alone barely tell a spread of 0.5 from one of 3, and without it a run could shrink
# every essay to the centre; with hundreds of essays the judgements outweigh it.
SD_PRIOR_LOG_MEAN = math.log(2.0)
SD_PRIOR_LOG_SD = 0.7
# log(sd) is integrated by three-point Gauss-Hermite quadrature around its mode (nodes in units
# of its posterior SD, weights for a normal), corrected by the actual posterior at each node.
GRID = ((-math.sqrt(3.0), 1.0 / 6.0), (0.0, 2.0 / 3.0), (math.sqrt(3.0), 1.0 / 6.0))
# The mode of log(sd) is found to this tolerance, moving at most MAX_STEP at a time.
LOG_SD_TOLERANCE = 0.02
MAX_STEP = 0.7
MAX_PARABOLA_STEPS = 30
_CENTRE_TOLERANCE = 1e-6
_CENTRE_STEPS = 20
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(32)


@dataclass(frozen=True)
class Posterior:
    """Posterior means and SDs of the scores (SD 0 for anchors) and of the position biases.

    ``conditional_scores`` and ``conditional_ses`` are the same at the most likely spread only:
    the spread's uncertainty scales every score together, which widens each interval but does
    not change how well the scale orders the essays, so reliability is computed from these.
    """

    scores: NDArray[np.float64]
    ses: NDArray[np.float64]
    conditional_scores: NDArray[np.float64]
    conditional_ses: NDArray[np.float64]
    bias: NDArray[np.float64]
    bias_ses: NDArray[np.float64]
    prior: Prior
    mode: Fit
    problem: FitProblem


@dataclass(frozen=True)
class _Point:
    log_posterior: float  # of log(sd), up to a constant
    problem: FitProblem
    fit: Fit
    factor: InformationFactor


def posterior(problem: FitProblem, start: Fit) -> Posterior:
    """The posterior of the scores with the prior's spread estimated from the judgements."""
    cache: dict[float, _Point] = {}

    def at(log_sd: float) -> _Point:
        key = round(log_sd, 9)
        if key not in cache:
            cache[key] = _laplace(problem, math.exp(log_sd), start)
        return cache[key]

    low, high = (math.log(b) for b in SD_BOUNDS)
    centre, curvature = _maximise(
        lambda v: at(v).log_posterior, math.log(problem.prior.sd), low, high
    )
    spread = 1.0 / math.sqrt(-curvature) if curvature < 0 else 1.0
    evaluated, log_weights = [], []
    for z, weight in GRID:
        point = at(min(high, max(low, centre + z * spread)))
        evaluated.append(point)
        # The node's weight is the normal's; the actual posterior corrects it. In logs, so
        # that a node far above the found mode (a poor mode) cannot overflow.
        log_weights.append(math.log(weight) + point.log_posterior + 0.5 * z * z)
    relative = np.exp(np.array(log_weights) - max(log_weights))
    weights = relative / relative.sum()
    moments = [_moments(p) for p in evaluated]  # the middle node is the mode
    mean = sum(w * m[0] for w, m in zip(weights, moments, strict=True))
    second = sum(w * (m[1] + m[0] ** 2) for w, m in zip(weights, moments, strict=True))
    variance = np.maximum(second - mean**2, 0.0)
    n = problem.design.essays
    mode = at(centre)
    conditional = moments[[z for z, _ in GRID].index(0.0)]
    return Posterior(
        scores=mean[:n],
        ses=np.sqrt(variance[:n]),
        conditional_scores=conditional[0][:n],
        conditional_ses=np.sqrt(conditional[1][:n]),
        bias=mean[n:],
        bias_ses=np.sqrt(variance[n:]),
        prior=mode.problem.prior,
        mode=mode.fit,
        problem=mode.problem,
    )


def _maximise(
    value: Callable[[float], float], start: float, low: float, high: float
) -> tuple[float, float]:
    """The maximum of a smooth, roughly quadratic function on [low, high] by successive
    parabolic interpolation from `start`, and its second derivative there (each evaluation
    costs a Cholesky factorisation, so few are spent: about six)."""
    seen = {x: value(x) for x in sorted({min(high, max(low, start + d)) for d in (-0.2, 0, 0.2)})}
    curvature = 0.0
    for _ in range(MAX_PARABOLA_STEPS):
        best = max(seen, key=seen.__getitem__)
        near = sorted(seen, key=lambda x: abs(x - best))[:3]
        if len(near) < 3:
            return best, curvature
        a, b, _ = np.polyfit(near, [seen[x] for x in near], 2)
        curvature = 2.0 * float(a)
        # A vertex within a step of the best point; concave-up fits just walk uphill.
        target = -b / (2.0 * a) if a < 0 else best + math.copysign(MAX_STEP, b + 2 * a * best)
        target = min(high, max(low, min(best + MAX_STEP, max(best - MAX_STEP, float(target)))))
        if abs(target - best) < LOG_SD_TOLERANCE or target in seen:
            return best, curvature
        seen[target] = value(target)
    return max(seen, key=seen.__getitem__), curvature


def _laplace(problem: FitProblem, sd: float, start: Fit) -> _Point:
    """The mode at this spread (the centre refitted with anchors) and the Laplace
    approximation of the marginal log-likelihood of the spread."""
    current = replace(problem, prior=Prior(problem.prior.centre, sd))
    fit = fit_scale(current, start_scores=start.scores, start_bias=start.bias)
    if problem.anchors:
        current, fit = _fit_centre(current, fit)
    factor = cholesky_factor(current, fit)
    free = current.free()
    params = np.concatenate((fit.scores, fit.bias))[free]
    precisions = current.precisions(free)
    centres = current.centres(free)
    # log p(judgements | sd) ~ log-likelihood + log prior at the mode - log det(H) / 2.
    log_likelihood = (
        float(-np.logaddexp(0.0, -winner_logit(current.design, fit)).sum())
        - 0.5 * float(np.sum(precisions * (params - centres) ** 2))
        + 0.5 * float(np.sum(np.log(precisions)))
        - 0.5 * factor.log_det
    )
    log_prior = -0.5 * ((math.log(sd) - SD_PRIOR_LOG_MEAN) / SD_PRIOR_LOG_SD) ** 2
    return _Point(log_likelihood + log_prior, current, fit, factor)


def _fit_centre(problem: FitProblem, fit: Fit) -> tuple[FitProblem, Fit]:
    """With anchors: the centre at which the prior's centre equals the free essays' mean score,
    by the secant method on that difference (the mean moves almost linearly with the centre,
    but so slowly when few anchors link the essays that plain iteration would crawl).

    The difference falls as the centre rises, so a root is bracketed once its sign changes;
    when the free essays beat (or lose to) the anchors every time there is none, and the
    centre stops at the edge of `centre_bounds` instead of walking off to 1e12."""
    free = _free_essays(problem)
    if not free.any():
        return problem, fit
    sd = problem.prior.sd
    low, high = centre_bounds(problem)

    def gap(centre: float) -> tuple[float, FitProblem, Fit]:
        trial = replace(problem, prior=Prior(centre, sd))
        fitted = fit_scale(trial, start_scores=fit.scores, start_bias=fit.bias)
        return float(fitted.scores[free].mean()) - centre, trial, fitted

    x0 = min(high, max(low, problem.prior.centre))
    f0, best_problem, best_fit = gap(x0)
    x1 = min(high, max(low, x0 + f0))
    for _ in range(_CENTRE_STEPS):
        if x1 == x0:
            break  # at a bound, the difference pushing outwards
        f1, best_problem, best_fit = gap(x1)
        if abs(f1) < _CENTRE_TOLERANCE or f1 == f0:
            break
        if f0 * f1 < 0:
            low, high = min(x0, x1), max(x0, x1)  # the root lies between
        x0, x1, f0 = x1, min(high, max(low, x1 - f1 * (x1 - x0) / (f1 - f0))), f1
    return best_problem, best_fit


def _free_essays(problem: FitProblem) -> NDArray[np.bool_]:
    free = np.ones(problem.design.essays, dtype=bool)
    free[list(problem.anchors)] = False
    return free


def _moments(point: _Point) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Means and variances of all parameters at one spread: the Laplace ones, with each free
    compared essay's corrected for the skew of its conditional posterior."""
    problem, fit = point.problem, point.fit
    errors = standard_errors_from(problem, fit, point.factor)
    shift, ratio = _skew_correction(problem, fit)
    scores = fit.scores + shift
    if not problem.anchors:
        compared = problem.design.counts() > 0
        if compared.any():
            scores = scores - np.where(compared, scores[compared].mean(), 0.0)
    means = np.concatenate((scores, fit.bias))
    variances = np.concatenate((errors.scores**2 * ratio, errors.bias**2))
    return means, variances


def _skew_correction(
    problem: FitProblem, fit: Fit
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per essay: conditional posterior mean minus mode, and conditional variance over its
    Laplace value, by Gauss-Hermite quadrature with the other parameters at the mode."""
    design = problem.design
    n = design.essays
    eta = winner_logit(design, fit)
    essays = np.concatenate((design.winners, design.losers))
    signs = np.concatenate((np.ones(design.size), -np.ones(design.size)))
    logits = np.concatenate((eta, eta))
    p = 0.5 * (1.0 + np.tanh(0.5 * logits))  # no overflow for extreme logits
    curvature = np.bincount(essays, weights=p * (1.0 - p), minlength=n) + problem.prior.precision
    scale = 1.0 / np.sqrt(curvature)
    at_mode = np.bincount(essays, weights=-np.logaddexp(0.0, -logits), minlength=n)
    log_weights = np.empty((n, _NODES.size))
    offset = fit.scores - problem.prior.centre
    for g, z in enumerate(_NODES):
        u = scale * z
        moved = np.bincount(
            essays, weights=-np.logaddexp(0.0, -(logits + signs * u[essays])), minlength=n
        )
        prior = -0.5 * problem.prior.precision * ((offset + u) ** 2 - offset**2)
        log_weights[:, g] = moved - at_mode + prior + 0.5 * z * z
    log_weights -= log_weights.max(axis=1, keepdims=True)
    weights = _WEIGHTS * np.exp(log_weights)
    weights /= weights.sum(axis=1, keepdims=True)
    nodes = scale[:, None] * _NODES[None, :]
    shift = (weights * nodes).sum(axis=1)
    variance = (weights * nodes * nodes).sum(axis=1) - shift**2
    ratio = variance * curvature
    fixed = list(problem.anchors)
    shift[fixed] = 0.0
    ratio[fixed] = 1.0
    return shift, ratio
