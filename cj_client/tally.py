"""A CJ run's running state: what was asked, what came back, what to retry."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from cj_client.journal import PlannedComparison, PlannedWave
from cj_client.judges import judge_label
from cj_client.models import ComparisonOutcome
from cj_client.pairing import Pair, PairPlanner
from cj_client.scoring import Outcome

MAX_ATTEMPTS_PER_PAIR = 3


@dataclass(slots=True)
class RunTally:
    """Counts and results of a run, and the pairs to retry in the next wave."""

    requested: int = 0
    outcomes: list[Outcome] = field(default_factory=list)
    results: list[ComparisonOutcome] = field(default_factory=list)
    attempts: dict[Pair, int] = field(default_factory=dict)  # failed attempts of open pairs
    retry: list[Pair] = field(default_factory=list)

    def absorb(
        self, wave: PlannedWave, done: dict[str, ComparisonOutcome], planner: PairPlanner
    ) -> int:
        """Record a wave's results; pairs without a judgement are retried, up to a limit.
        Returns how many comparisons of the wave were judged."""
        self.retry = []
        judged = 0
        for planned in wave.comparisons:
            pair = Pair(planned.essay_a, planned.essay_b)
            outcome = done.get(planned.request_id)
            if outcome is not None:
                self.results.append(outcome)
            verdict = judgement(planned, outcome)
            if verdict is not None:
                # A later comparison of the same pair is a new comparison, not a retry.
                self.attempts.pop(pair, None)
                planner.record(pair)
                self.outcomes.append(verdict)
                judged += 1
                continue
            self.attempts[pair] = self.attempts.get(pair, 0) + 1
            if self.attempts[pair] < MAX_ATTEMPTS_PER_PAIR:
                self.retry.append(pair)
        return judged

    def failure_verdict(self, max_share: float, *, budget: int | None) -> str:
        """Why the run has failed too often, or "".

        With `budget` (while the run goes on) the failures so far must exceed `max_share` of the
        whole budget, which means the final share will exceed it too; without it (at the end),
        of the comparisons that ended. A run that ends without a single judgement has failed
        whatever `max_share` allows (even 1): it has nothing to rank by.
        """
        failures = Counter(
            r.error_code or r.status for r in self.results if r.status != "completed"
        )
        failed = sum(failures.values())
        ended = len(self.results)
        nothing_judged = budget is None and not self.outcomes
        if not failed or (
            not nothing_judged and failed <= max_share * (ended if budget is None else budget)
        ):
            return ""
        common = ", ".join(f"{code} x{n}" for code, n in failures.most_common(3))
        verdict = (
            f"{failed} of {ended} comparisons failed ({failed / ended:.0%}); most common: {common}"
        )
        return f"no comparison was judged: {verdict}" if nothing_judged else verdict


def judgement(planned: PlannedComparison, outcome: ComparisonOutcome | None) -> Outcome | None:
    """Winner and loser of a planned comparison, or None when it has no judgement."""
    if outcome is None or outcome.status != "completed" or not outcome.winner:
        return None
    a, b = planned.essay_a, planned.essay_b
    a_won = outcome.winner == "essay_a"
    winner, loser = (a, b) if a_won else (b, a)
    # Which side won and who judged feed the position-bias and per-judge statistics.
    judge = judge_label(outcome.provider, outcome.model)
    return Outcome(winner, loser, winner_was_a=a_won, judge=judge)
