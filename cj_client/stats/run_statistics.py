"""What a finished run reports beyond the scores: fit, split-half reliability, position bias,
and how each judge fared."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from cj_client.stats.fit import Fit, FitProblem, fit_scale
from cj_client.stats.fit_statistics import essay_mean_squares, judge_mean_squares, misfits
from cj_client.stats.reliability import split_half_reliability
from cj_client.stats.uncertainty import StandardErrors


@dataclass(frozen=True)
class PositionBias:
    """A judge's estimated advantage, in logits, for the essay shown in position A."""

    logit: float
    se: float


@dataclass(frozen=True)
class EssayFit:
    """An essay's mean-square fit (None without judgements) and whether it is flagged."""

    infit: float | None
    outfit: float | None
    misfit: bool


@dataclass(frozen=True)
class JudgeReport:
    """One judge's judgements measured against the model and against the other judges.

    ``agreement`` is the share of its judgements whose winner the other judges' consensus scale
    (fitted without this judge) ranks higher; None when there is no other judge.
    """

    judge: str
    comparisons: int
    infit: float | None
    outfit: float | None
    agreement: float | None
    position_bias: PositionBias | None


@dataclass(frozen=True)
class RunStatistics:
    """Fit per essay, reliability from split halves, position bias overall and per judge."""

    essays: Mapping[str, EssayFit]
    split_half_reliability: float | None
    position_bias: PositionBias | None
    judges: tuple[JudgeReport, ...]
    anchored: frozenset[str]


def run_statistics(
    problem: FitProblem, fit: Fit, errors: StandardErrors, *, seed: int
) -> RunStatistics:
    """Everything a finished run reports about its judgements besides the scores."""
    design = problem.design
    essay_squares = essay_mean_squares(design, fit)
    flagged = misfits(essay_squares.infit)
    essays = {
        essay: EssayFit(
            infit=_known(essay_squares.infit[i]),
            outfit=_known(essay_squares.outfit[i]),
            misfit=bool(flagged[i]),
        )
        for i, essay in enumerate(design.essay_ids)
    }
    judges = _judge_reports(problem, fit, errors)
    return RunStatistics(
        essays=essays,
        split_half_reliability=split_half_reliability(problem, fit, seed=seed),
        position_bias=_pooled_bias([j.position_bias for j in judges]),
        judges=judges,
        anchored=frozenset(design.essay_ids[i] for i in problem.anchors),
    )


def _judge_reports(
    problem: FitProblem, fit: Fit, errors: StandardErrors
) -> tuple[JudgeReport, ...]:
    design = problem.design
    squares = judge_mean_squares(design, fit)
    reports = []
    for j, name in enumerate(design.judges):
        rows = design.judge_index == j
        signed = bool(np.any(design.sides[rows] != 0.0))
        bias = (
            PositionBias(float(fit.bias[j]), float(errors.bias[j]))
            if problem.estimate_bias and signed
            else None
        )
        reports.append(
            JudgeReport(
                judge=name,
                comparisons=int(rows.sum()),
                infit=_known(squares.infit[j]),
                outfit=_known(squares.outfit[j]),
                agreement=_agreement_with_others(problem, fit, rows),
                position_bias=bias,
            )
        )
    return tuple(reports)


def _agreement_with_others(problem: FitProblem, fit: Fit, rows: np.ndarray) -> float | None:
    design = problem.design
    if rows.all() or not rows.any():
        return None
    others = fit_scale(
        replace(problem, design=design.subset(~rows)), start_scores=fit.scores, start_bias=fit.bias
    ).scores
    gap = others[design.winners[rows]] - others[design.losers[rows]]
    # A tie on the consensus scale is half an agreement.
    return float(np.mean(np.where(gap > 0, 1.0, np.where(gap < 0, 0.0, 0.5))))


def _pooled_bias(estimates: list[PositionBias | None]) -> PositionBias | None:
    """The judges' biases pooled with inverse-variance weights (the one judge's, if one)."""
    known = [e for e in estimates if e is not None]
    if not known:
        return None
    weights = np.array([1.0 / (e.se * e.se) for e in known])
    logits = np.array([e.logit for e in known])
    return PositionBias(
        float(np.sum(weights * logits) / weights.sum()), float(1.0 / np.sqrt(weights.sum()))
    )


def _known(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
