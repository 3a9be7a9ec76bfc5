"""A run's judgements as arrays: who won, who lost, where the winner sat, which judge."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray


@dataclass(frozen=True)
class Outcome:
    """Result of one comparison.

    ``winner_was_a`` says whether the winner was shown in position A (None: not recorded, so the
    judgement says nothing about position bias); ``judge`` names who judged it.
    """

    winner: str
    loser: str
    winner_was_a: bool | None = None
    judge: str = ""


@dataclass(frozen=True)
class Design:
    """Judgements indexed by essay and judge.

    Every judgement is read from the winner's side: the model's logit that the winner beats the
    loser is ``theta[winner] - theta[loser] + side * bias[judge]``, with side +1 when the winner
    was in position A, -1 when it was in B and 0 when the position is unknown.
    """

    essay_ids: tuple[str, ...]
    judges: tuple[str, ...]
    winners: NDArray[np.intp]
    losers: NDArray[np.intp]
    sides: NDArray[np.float64]
    judge_index: NDArray[np.intp]

    @classmethod
    def build(cls, essay_ids: Sequence[str], outcomes: Sequence[Outcome]) -> Design:
        """Index the outcomes by essay and judge.

        Raises:
            ValueError: an essay id is repeated or unknown, or an essay is compared with itself.
        """
        ids = tuple(essay_ids)
        index = {essay: i for i, essay in enumerate(ids)}
        if len(index) != len(ids):
            raise ValueError("essay ids must be unique")
        judges: dict[str, int] = {}
        winners, losers, sides, judge_index = [], [], [], []
        for outcome in outcomes:
            for essay in (outcome.winner, outcome.loser):
                if essay not in index:
                    raise ValueError(f"unknown essay id: {essay!r}")
            if outcome.winner == outcome.loser:
                raise ValueError(f"essay compared with itself: {outcome.winner!r}")
            winners.append(index[outcome.winner])
            losers.append(index[outcome.loser])
            side = outcome.winner_was_a
            sides.append(0.0 if side is None else (1.0 if side else -1.0))
            judge_index.append(judges.setdefault(outcome.judge, len(judges)))
        return cls(
            essay_ids=ids,
            judges=tuple(judges),
            winners=np.asarray(winners, dtype=np.intp),
            losers=np.asarray(losers, dtype=np.intp),
            sides=np.asarray(sides, dtype=np.float64),
            judge_index=np.asarray(judge_index, dtype=np.intp),
        )

    @property
    def essays(self) -> int:
        """Number of essays."""
        return len(self.essay_ids)

    @property
    def size(self) -> int:
        """Number of judgements."""
        return int(self.winners.size)

    def counts(self) -> NDArray[np.intp]:
        """Comparisons per essay."""
        n = self.essays
        both = np.bincount(self.winners, minlength=n) + np.bincount(self.losers, minlength=n)
        return both.astype(np.intp)

    def subset(self, rows: NDArray[np.intp] | NDArray[np.bool_]) -> Design:
        """The same essays and judges with only the selected judgements."""
        return Design(
            essay_ids=self.essay_ids,
            judges=self.judges,
            winners=self.winners[rows],
            losers=self.losers[rows],
            sides=self.sides[rows],
            judge_index=self.judge_index[rows],
        )

    def matrix(self) -> sp.csr_matrix:
        """Rows: judgements; columns: essays, then one position-bias column per judge."""
        k = self.size
        rows = np.repeat(np.arange(k), 3)
        cols = np.column_stack((self.winners, self.losers, self.essays + self.judge_index)).ravel()
        values = np.column_stack((np.ones(k), -np.ones(k), self.sides)).ravel()
        shape = (k, self.essays + len(self.judges))
        return sp.csr_matrix((values, (rows, cols)), shape=shape)
