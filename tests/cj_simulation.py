"""Simulated CJ runs with a known truth, without a server.

The judge is the mock provider's model (lps_server/providers/mock.py) on its logit scale: essay A
wins with probability 1 / (1 + exp(-(t_A - t_B + bias + noise))), where t = q / T is an essay's true
score, `bias` the judge's advantage for position A and `noise` an extra Gaussian term. The run
itself is the real engine: `PairPlanner` plans the waves (random, or adaptive from the third wave
on, as `Assessment` does) and `ScaleFitter` refits after every wave.

The truth the estimates are compared with is `t` centred on the mean of the essays being scored,
because a Bradley-Terry scale is only defined up to a shift and the fitted scale sums to zero; with
anchors it is `t` shifted by the same constant that maps the anchors' truth onto their given scores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cj_client.assessment import SCORE_FEEDBACK_AFTER_WAVES
from cj_client.pairing import PairPlanner
from cj_client.scoring import Outcome, ScaleFitter, Scores
from cj_client.stats.run_statistics import RunStatistics

ERRATIC_SPREAD = 4.0


@dataclass(frozen=True)
class SimulatedJudge:
    """A judge: `discrimination` scales the true gap (below 1: noisier than the scale says)."""

    name: str = "judge"
    position_bias: float = 0.0
    discrimination: float = 1.0


@dataclass(frozen=True)
class SimulatedRun:
    """What a simulated run produced, next to the truth it was drawn from."""

    ids: list[str]
    truth: dict[str, float]
    scores: Scores
    statistics: RunStatistics
    outcomes: list[Outcome]
    waves: int

    def estimates(self) -> np.ndarray:
        by_id = self.scores.as_mapping()
        return np.array([by_id[e] for e in self.ids])

    def errors(self) -> np.ndarray:
        by_id = {e.essay_id: e.se for e in self.scores.essays}
        return np.array([by_id[e] for e in self.ids])

    def true_scores(self) -> np.ndarray:
        return np.array([self.truth[e] for e in self.ids])

    def r_squared(self) -> float:
        return float(np.corrcoef(self.estimates(), self.true_scores())[0, 1] ** 2)

    def covered(self) -> np.ndarray:
        """Whether each essay's 95% interval holds its centred true score."""
        truth = self.true_scores()
        centred = truth - truth.mean()
        return np.abs(self.estimates() - centred) <= 1.96 * self.errors()


def normal_truth(n: int, *, sd: float, seed: int) -> dict[str, float]:
    """`n` essays with true scores drawn from N(0, sd^2)."""
    rng = np.random.default_rng(seed)
    return {f"essay-{i:04d}": float(v) for i, v in enumerate(rng.normal(0.0, sd, n))}


def simulate(
    truth: Mapping[str, float],
    *,
    comparisons_per_essay: float = 10.0,
    adaptive: bool = True,
    seed: int = 0,
    judges: Sequence[SimulatedJudge] = (SimulatedJudge(),),
    anchors: Mapping[str, float] | None = None,
    prior_sd: float | None = None,
    erratic: frozenset[str] = frozenset(),
) -> SimulatedRun:
    """One run over `truth` with a budget of `comparisons_per_essay` per essay (each comparison
    counts for two essays), judges taking the comparisons in turn. An `erratic` essay is one
    judges cannot agree on: in each comparison its true score moves by +-ERRATIC_SPREAD."""
    ids = list(truth)
    rng = np.random.default_rng(seed + 1_000_003)
    planner = PairPlanner(ids, seed=seed)
    fitter = ScaleFitter(ids, anchors=anchors, prior_sd=prior_sd)
    budget = round(comparisons_per_essay * len(ids) / 2)
    outcomes: list[Outcome] = []
    waves = 0
    while len(outcomes) < budget:
        feedback = fitter.current() if adaptive and waves >= SCORE_FEEDBACK_AFTER_WAVES else None
        wave = planner.next_wave(scores=feedback, max_pairs=budget - len(outcomes))
        if not wave:
            break
        waves += 1
        for pair in wave:
            judge = judges[len(outcomes) % len(judges)]
            true_a, true_b = (
                truth[essay]
                + (rng.choice((-ERRATIC_SPREAD, ERRATIC_SPREAD)) if essay in erratic else 0.0)
                for essay in (pair.essay_a, pair.essay_b)
            )
            gap = judge.discrimination * (true_a - true_b)
            a_won = rng.random() < 1.0 / (1.0 + math.exp(-(gap + judge.position_bias)))
            winner, loser = (pair.essay_a, pair.essay_b) if a_won else (pair.essay_b, pair.essay_a)
            outcomes.append(Outcome(winner, loser, winner_was_a=a_won, judge=judge.name))
            planner.record(pair)
        fitter.update(outcomes)
    return SimulatedRun(
        ids=ids,
        truth=dict(truth),
        scores=fitter.scores(),
        statistics=fitter.statistics(seed=seed),
        outcomes=outcomes,
        waves=waves,
    )
