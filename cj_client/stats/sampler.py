"""The reported scale, sampled: a Gibbs sampler of the scores' posterior with the population's
spread (and, with anchors, its centre) drawn alongside them.

Why not the Laplace approximation of `cj_client.stats.posterior` for the report: from binary
judgements it underestimates the spread (about 10% on average, up to 25% in a run at ten
comparisons per essay), and even at the true spread its means are shrunk about 9% too far, so
a run's scale came out compressed by a run-dependent factor (the truth regressed on the scores
had slopes of 0.83-1.32, 1.16 on average, over eight 200-essay runs) and an anchored cohort
landed on a scale of a different unit. The sampler is exact in the limit of many draws: the
same eight runs give slopes averaging 0.97-0.99 (docs/cj.md, Anchors).

How (Polson, Scott and Windle's Polya-Gamma augmentation): given a Polya-Gamma variable
``omega_k ~ PG(1, eta_k)`` per judgement, the logistic likelihood becomes Gaussian in the
parameters, so the scores and biases are drawn jointly from a Gaussian whose precision is the
comparison graph's weighted Laplacian plus the prior: a dense Cholesky factorisation for small
runs, and for large ones a sparse solve by conjugate gradients of a randomly perturbed system
(Papandreou and Yuille's perturb-and-solve), whose solution has exactly that distribution. The
spread's log is then drawn from its full conditional (log-concave: by a fine grid around its
mode), and with anchors the centre from its normal one. Without anchors the centre is 0 and
each draw's compared scores are centred (the gauge).

Draws are seeded by the judgements, so the same judgements always give the same report; the
Monte Carlo error of a score is typically a twentieth of its standard error (at 200 essays:
median 0.05 SE, at most about 0.27 SE against a chain of 8,000 draws; SEs within 3%, at most 16%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from polyagamma import random_polyagamma
from scipy.linalg import lapack

from cj_client.stats.fit import (
    DENSE_SOLVE_MAX,
    Fit,
    FitProblem,
    Prior,
    centre_bounds,
    fit_scale,
)
from cj_client.stats.posterior import (
    SD_BOUNDS,
    SD_PRIOR_LOG_MEAN,
    SD_PRIOR_LOG_SD,
    Posterior,
)

# Kept draws after a short burn-in from the posterior mode (the chain starts where most of the
# mass is, so a few dozen draws forget the start).
DRAWS = 400
BURN_IN = 50
# The spread's full conditional is drawn from a grid over +-8 of its SDs around its mode.
_GRID = np.linspace(-8.0, 8.0, 801)
_CG_TOLERANCE = 1e-6  # relative residual: far below the Monte Carlo error
_CG_MAX_ITERATIONS = 1000


@dataclass(frozen=True)
class _Layout:
    """The free parameters' design columns, the fixed ones' contribution to each judgement's
    logit, and the prior's precision of the biases."""

    columns: sp.csr_matrix
    offset: NDArray[np.float64]
    is_essay: NDArray[np.bool_]
    bias_precision: NDArray[np.float64]
    pattern: _HessianPattern


def sampled_posterior(problem: FitProblem, start: Fit, *, draws: int = DRAWS) -> Posterior:
    """Posterior means and SDs of the scores and biases, from `draws` Gibbs draws started at
    `start` (a fit of `problem`)."""
    design = problem.design
    n = design.essays
    rng = np.random.default_rng([design.size, n, int(design.winners.sum())])
    layout = _layout(problem, start)
    free = problem.free()
    full = np.concatenate((start.scores, start.bias))
    values = full[free].copy()
    sd, centre = problem.prior.sd, problem.prior.centre
    anchored = bool(problem.anchors)
    bounds = centre_bounds(problem)
    compared = design.counts() > 0
    kept = np.empty((draws, full.size))
    log_sds = np.empty(draws)
    for step in range(BURN_IN + draws):
        values = _draw_parameters(layout, values, sd, centre, rng)
        scores = values[layout.is_essay]
        if anchored and scores.size:
            # Clipped to the bounds the mode keeps to: with no judgement to stop it (new essays
            # beating every anchor), the centre would random-walk away.
            centre = float(np.clip(rng.normal(scores.mean(), sd / math.sqrt(scores.size)), *bounds))
        log_sd = _draw_log_sd(scores.size, float(np.sum((scores - centre) ** 2)), rng)
        sd = math.exp(log_sd)
        if step >= BURN_IN:
            full[free] = values
            draw = full.copy()
            if not anchored and compared.any():
                draw[:n] -= np.where(compared, draw[:n][compared].mean(), 0.0)
            kept[step - BURN_IN] = draw
            log_sds[step - BURN_IN] = log_sd
    means = kept.mean(axis=0)
    variances = kept.var(axis=0)
    # The part of each variance that the spread's uncertainty explains (the linear projection
    # of the draws on log(sd)): a common stretch of the scale, which widens every interval but
    # leaves the essays' order alone, so reliability is computed without it.
    deviation = log_sds - log_sds.mean()
    spread_variance = float(deviation @ deviation) / draws
    explained = (
        ((kept - means).T @ deviation / draws) ** 2 / spread_variance
        if spread_variance > 0
        else np.zeros_like(means)
    )
    conditional = np.sqrt(np.maximum(variances - explained, 0.0))
    sds = np.sqrt(variances)
    sds[list(problem.anchors)] = 0.0
    conditional[list(problem.anchors)] = 0.0
    free_mask = np.ones(n, dtype=bool)
    free_mask[list(problem.anchors)] = False
    found_centre = float(means[:n][free_mask].mean()) if anchored and free_mask.any() else 0.0
    prior = Prior(found_centre, float(np.exp(np.median(log_sds))))
    fitted = replace(problem, prior=prior)
    mode = fit_scale(fitted, start_scores=start.scores, start_bias=start.bias)
    return Posterior(
        scores=means[:n],
        ses=sds[:n],
        conditional_scores=means[:n],
        conditional_ses=conditional[:n],
        bias=means[n:],
        bias_ses=sds[n:],
        prior=prior,
        mode=mode,
        problem=fitted,
    )


def _layout(problem: FitProblem, start: Fit) -> _Layout:
    design = problem.design
    free = problem.free()
    matrix = design.matrix()
    full = np.concatenate((start.scores, start.bias))
    for essay, score in problem.anchors.items():
        full[essay] = score
    fixed = np.setdiff1d(np.arange(full.size), free)
    offset = np.asarray(matrix[:, fixed] @ full[fixed], dtype=np.float64).ravel()
    columns = matrix[:, free]
    is_essay = free < design.essays
    bias_precision = np.where(is_essay, 0.0, problem.precisions(free))
    csr = columns.tocsr()
    return _Layout(
        columns=csr,
        offset=offset,
        is_essay=is_essay,
        bias_precision=bias_precision,
        pattern=_HessianPattern.of(csr),
    )


def _draw_parameters(
    layout: _Layout,
    values: NDArray[np.float64],
    sd: float,
    centre: float,
    rng: np.random.Generator,
) -> NDArray[np.float64]:
    """One joint draw of the free parameters given fresh Polya-Gamma variables."""
    if values.size == 0:
        return values
    x = layout.columns
    eta = np.asarray(x @ values, dtype=np.float64) + layout.offset
    omega = np.asarray(random_polyagamma(1.0, eta, random_state=rng), dtype=np.float64)
    precision = np.where(layout.is_essay, 1.0 / (sd * sd), layout.bias_precision)
    # The Gaussian's canonical mean: X' (1/2 - omega * offset) + prior precision * prior mean.
    linear = x.T @ (0.5 - omega * layout.offset) + np.where(
        layout.is_essay, precision * centre, 0.0
    )
    if values.size <= DENSE_SOLVE_MAX:
        hessian = layout.pattern.dense(omega, precision)
        lower, info = lapack.dpotrf(hessian, lower=1, clean=1)
        if info != 0:
            raise ArithmeticError(f"Cholesky factorisation failed (info={info})")
        mean = lapack.dpotrs(lower, linear, lower=1)[0]
        noise = lapack.dtrtrs(lower, rng.standard_normal(values.size), lower=1, trans=1)[0]
        return np.asarray(mean + noise, dtype=np.float64)
    # Perturb and solve: Q^-1 (b + X' Omega^1/2 z1 + D^1/2 z2) ~ N(Q^-1 b, Q^-1).
    hessian = layout.pattern.sparse(omega, precision)
    perturbed = (
        linear
        + x.T @ (np.sqrt(omega) * rng.standard_normal(omega.size))
        + np.sqrt(precision) * rng.standard_normal(values.size)
    )
    return _conjugate_gradients(hessian, perturbed, values)


@dataclass(frozen=True)
class _HessianPattern:
    """The sparsity of X' Omega X + D, computed once, so that each draw's matrix is one
    weighted sum over the judgements (a sparse matrix product per draw cost ten times more)."""

    position: NDArray[np.intp]  # each product term's (and diagonal entry's) place in `data`
    judgement: NDArray[np.intp]  # each product term's judgement
    product: NDArray[np.float64]  # each product term's x_ki * x_kj
    indices: NDArray[np.int32]
    indptr: NDArray[np.int32]
    rows: NDArray[np.intp]  # each stored entry's row

    @classmethod
    def of(cls, x: sp.csr_matrix) -> _HessianPattern:
        size = x.shape[1]
        row_of = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
        # All ordered pairs of nonzeros within a row: rows hold at most three (winner, loser,
        # the judge's bias), so this is at most nine terms per judgement.
        left, right = _pairs_within_rows(x.indptr)
        keys = np.concatenate(
            (
                x.indices[left].astype(np.int64) * size + x.indices[right],
                np.arange(size) * (size + 1),
            )
        )
        unique, position = np.unique(keys, return_inverse=True)
        rows = (unique // size).astype(np.int32)
        indptr = np.zeros(size + 1, dtype=np.int32)
        np.cumsum(np.bincount(rows, minlength=size), out=indptr[1:])
        return cls(
            position=position.astype(np.intp),
            judgement=row_of[left].astype(np.intp),
            product=x.data[left] * x.data[right],
            indices=(unique % size).astype(np.int32),
            indptr=indptr,
            rows=rows.astype(np.intp),
        )

    def sparse(self, omega: NDArray[np.float64], diagonal: NDArray[np.float64]) -> sp.csr_matrix:
        """X' diag(omega) X + diag(diagonal), sparse."""
        weights = np.concatenate((omega[self.judgement] * self.product, diagonal))
        data = np.bincount(self.position, weights=weights, minlength=self.indices.size)
        size = self.indptr.size - 1
        return sp.csr_matrix((data, self.indices, self.indptr), shape=(size, size))

    def dense(
        self, omega: NDArray[np.float64], diagonal: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """X' diag(omega) X + diag(diagonal), dense."""
        size = self.indptr.size - 1
        full = np.zeros((size, size))
        full[self.rows, self.indices] = self.sparse(omega, diagonal).data
        return full


def _pairs_within_rows(indptr: NDArray[np.int32]) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Indices into a CSR matrix's data of every ordered pair of entries sharing a row."""
    lengths = np.diff(indptr)
    left, right = [], []
    for a in range(int(lengths.max(initial=0))):
        for b in range(int(lengths.max(initial=0))):
            rows = np.flatnonzero((lengths > a) & (lengths > b))
            left.append(indptr[rows] + a)
            right.append(indptr[rows] + b)
    if not left:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    return np.concatenate(left).astype(np.intp), np.concatenate(right).astype(np.intp)


def _conjugate_gradients(
    matrix: sp.csr_matrix, rhs: NDArray[np.float64], start: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Solve matrix @ x = rhs (symmetric positive definite) by conjugate gradients with a
    diagonal preconditioner, from `start`, to a relative residual of _CG_TOLERANCE. (scipy's
    cg costs several times more per iteration in overhead at these sizes.)"""
    inverse_diagonal = 1.0 / matrix.diagonal()
    x = start.copy()
    residual = rhs - matrix @ x
    target = _CG_TOLERANCE * float(np.linalg.norm(rhs))
    z = inverse_diagonal * residual
    direction = z.copy()
    rz = float(residual @ z)
    for _ in range(_CG_MAX_ITERATIONS):
        if float(np.linalg.norm(residual)) <= target:
            break
        product = matrix @ direction
        step = rz / float(direction @ product)
        x += step * direction
        residual -= step * product
        z = inverse_diagonal * residual
        rz, previous = float(residual @ z), rz
        direction = z + (rz / previous) * direction
    return x


def _draw_log_sd(count: int, squares: float, rng: np.random.Generator) -> float:
    """log(sd) from its full conditional given `count` scores whose squared deviations from the
    centre sum to `squares`: density exp(-count s - squares e^-2s / 2) times its prior, which is
    log-concave, drawn from a fine grid over its bulk (found by Newton's method)."""
    low, high = (math.log(b) for b in SD_BOUNDS)
    mean, spread = SD_PRIOR_LOG_MEAN, SD_PRIOR_LOG_SD
    s = mean
    curvature = -1.0 / spread**2
    for _ in range(50):
        decay = squares * math.exp(-2.0 * s)
        gradient = -count + decay - (s - mean) / spread**2
        curvature = -2.0 * decay - 1.0 / spread**2
        move = gradient / curvature
        s = min(high, max(low, s - move))
        if abs(move) < 1e-10:
            break
    grid = s + _GRID / math.sqrt(-curvature)
    grid = grid[(grid >= low) & (grid <= high)]
    log_density = (
        -count * grid - 0.5 * squares * np.exp(-2.0 * grid) - 0.5 * ((grid - mean) / spread) ** 2
    )
    weights = np.exp(log_density - log_density.max())
    cell = int(rng.choice(grid.size, p=weights / weights.sum()))
    width = float(grid[1] - grid[0]) if grid.size > 1 else 0.0
    return float(min(high, max(low, grid[cell] + (rng.random() - 0.5) * width)))
