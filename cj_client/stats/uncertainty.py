"""Standard errors of the fitted scale: the inverse Fisher information in the sum-to-zero gauge.

Bradley-Terry scores are only defined up to a shift. Without anchors the reported scores of the
``m`` compared essays sum to zero, so their covariance is ``P H^-1 P``, with ``P`` the centring
projection and ``H`` the Fisher information plus the prior's precision ``c``. The all-ones
direction is an eigenvector of ``H`` with eigenvalue ``c`` (the likelihood says nothing about a
shift), so adding ``J / m`` to the score block moves that eigenvalue to ``1 + c`` without touching
the others, and ``P H^-1 P`` is the inverse of the result minus ``J / (m^2 (1 + c))``: an exact
identity, on a matrix whose eigenvalues are all of ordinary size. (A pseudo-inverse of the centred
matrix keeps the null direction's rounding error, about -4e-15, as an eigenvalue.) With anchors the
scale is fixed by them and the free parameters' covariance is simply the inverse of their
information.

The inverse is taken by a dense Cholesky factorisation: O(n^3) once per call, about 0.2 s at 2,000
essays on one core, so a run computes it only when a standard error is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.linalg import lapack

from cj_client.stats.fit import Fit, FitProblem


@dataclass(frozen=True)
class StandardErrors:
    """Standard errors of each essay's score (0 for an anchor) and each judge's position bias."""

    scores: NDArray[np.float64]
    bias: NDArray[np.float64]


@dataclass(frozen=True)
class InformationFactor:
    """The Cholesky factor of the free parameters' information, shifted in the gauge direction
    (``gauged`` marks the shifted rows), and the log-determinant of the unshifted matrix."""

    lower: NDArray[np.float64]
    gauged: NDArray[np.bool_]
    log_det: float


def cholesky_factor(problem: FitProblem, fit: Fit) -> InformationFactor:
    """Factor the information at `fit` (with the gauge shift when there are no anchors).

    Raises:
        ArithmeticError: the matrix is not positive definite (a bug: the prior makes it so).
    """
    n = problem.design.essays
    free = problem.free()
    information = problem.information(fit)
    # The gauge: without anchors the compared essays' scores sum to zero. (Each connected set of
    # compared essays sums to zero at the optimum; an essay never compared sits at the centre
    # with the prior's SD and is left out, so that it does not inflate everyone else's SE.)
    counts = problem.design.counts()
    gauged = (free < n) & (counts[np.minimum(free, n - 1)] > 0) if n else free < 0
    gauged &= not problem.anchors
    size = int(gauged.sum())
    precision = problem.prior.precision
    if size and gauged[:size].all():
        information[:size, :size] += 1.0 / size  # the usual case, as a view: no 4n^2 copy
    elif size:
        information[np.ix_(gauged, gauged)] += 1.0 / size
    if information.size == 0:
        return InformationFactor(np.zeros((0, 0)), gauged, 0.0)
    lower, info = lapack.dpotrf(information, lower=1, clean=1)
    if info != 0:
        raise ArithmeticError(f"Cholesky factorisation failed (info={info})")
    log_det = 2.0 * float(np.sum(np.log(np.diag(lower))))
    if size:
        # The shift moved one eigenvalue from the prior's precision c to 1 + c.
        log_det -= math.log((1.0 + precision) / precision)
    return InformationFactor(lower, gauged, log_det)


def standard_errors(problem: FitProblem, fit: Fit) -> StandardErrors:
    """Standard errors at the fitted parameters."""
    return standard_errors_from(problem, fit, cholesky_factor(problem, fit))


def standard_errors_from(
    problem: FitProblem, fit: Fit, factor: InformationFactor
) -> StandardErrors:
    """Standard errors from an information factor already computed at `fit`.

    Raises:
        ArithmeticError: a variance came out non-positive.
    """
    n = problem.design.essays
    free = problem.free()
    variances = _inverse_diagonal(factor.lower)
    size = int(factor.gauged.sum())
    if size:
        variances[factor.gauged] -= 1.0 / (size * (1.0 + problem.prior.precision))
    if np.any(variances <= 0.0):
        raise ArithmeticError("non-positive variance from the Fisher information")
    errors = np.zeros(n + len(problem.design.judges))
    errors[free] = np.sqrt(variances)
    return StandardErrors(scores=errors[:n], bias=errors[n:])


def _inverse_diagonal(lower: NDArray[np.float64]) -> NDArray[np.float64]:
    """diag(A^-1) of A = lower @ lower.T."""
    if lower.size == 0:
        return np.zeros(0)
    inverse, info = lapack.dtrtri(lower, lower=1)
    if info != 0:
        raise ArithmeticError(f"triangular inverse failed (info={info})")
    # A^-1 = L^-T L^-1, so its diagonal is the column sums of squares of L^-1.
    return np.asarray(np.einsum("ij,ij->j", inverse, inverse), dtype=np.float64)
