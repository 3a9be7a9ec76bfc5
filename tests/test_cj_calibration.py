"""Calibration of the reported uncertainty, by simulation with a known truth (no server).

The truth: each essay's true score t on the mock judge's logit scale (q / T), drawn from
N(0, 1.8^2), the spread of the synthetic essays. A Bradley-Terry scale is defined only up to a
shift and the fitted scale's compared essays sum to zero, so an essay's true score on the
reported scale is t minus the mean of t over the run's essays: that is what a 95% interval
must hold. The reported scores are posterior estimates, shrunk towards the centre by how little
is known about each essay; shrinking does not change the squared correlation r^2 with the
truth, which is what SSR estimates.

Each size runs several seeded runs of ten comparisons per essay (the default budget), pairing at
random or adaptively as `cj assess` does; coverage is pooled over the runs' essays and SSR is
compared with r^2 run by run, on average (with 16 essays one run's r^2 is itself too noisy).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.cj_simulation import normal_truth, simulate

SPREAD = 1.8
RUNS = {16: 40, 200: 3, 1000: 1}


@pytest.mark.slow
@pytest.mark.parametrize("adaptive", [False, True], ids=["random", "adaptive"])
@pytest.mark.parametrize("essays", sorted(RUNS))
def test_intervals_cover_the_truth_and_ssr_matches_r_squared(essays: int, adaptive: bool) -> None:
    covered, ssr, r_squared, split_half = [], [], [], []
    for seed in range(RUNS[essays]):
        run = simulate(normal_truth(essays, sd=SPREAD, seed=seed), adaptive=adaptive, seed=seed)
        covered.extend(run.covered().tolist())
        ssr.append(run.scores.ssr)
        r_squared.append(run.r_squared())
        split_half.append(run.statistics.split_half_reliability or 0.0)
    coverage = float(np.mean(covered))
    gap = float(np.mean(ssr) - np.mean(r_squared))
    print(  # the figures docs/cj.md quotes (pytest -s shows them)
        f"\n{essays} essays {'adaptive' if adaptive else 'random'}: coverage {coverage:.3f}, "
        f"SSR {np.mean(ssr):.3f}, r^2 {np.mean(r_squared):.3f}, gap {gap:+.3f}, "
        f"split-half {np.mean(split_half):.3f}"
    )
    assert 0.90 <= coverage <= 0.98
    assert abs(gap) <= 0.07
