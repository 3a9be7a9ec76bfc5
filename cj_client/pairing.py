"""Pair selection for comparative judgement, planned in waves of disjoint pairs."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# A rematch costs as much as this many score SDs of distance, so the same two essays meet
# again only when every fresh partner is much further away on the scale.
_REPEAT_PENALTY = 1.0
# Noise (in score SDs) added before sorting so that neighbours vary from wave to wave;
# without it the same adjacent essays would be re-paired every wave.
_SCORE_JITTER = 0.3
# Two essays with the same nonzero A-minus-B excess cannot both be rebalanced by one pairing,
# so such a pairing costs this much (in score SDs) per unit of excess.
_ORIENTATION_PENALTY = 0.5


@dataclass(frozen=True)
class Pair:
    """Two essays to compare; ``essay_a`` is presented first."""

    essay_a: str
    essay_b: str


class PairPlanner:
    """Plans waves of pairs, balancing comparison counts and favouring close scores."""

    def __init__(self, essay_ids: Sequence[str], *, seed: int = 0) -> None:
        ids = list(essay_ids)
        if len(set(ids)) != len(ids):
            raise ValueError("essay ids must be unique")
        self._ids = ids
        self._rng = random.Random(seed)
        self._comparisons = dict.fromkeys(ids, 0)
        self._times_a = dict.fromkeys(ids, 0)
        self._pair_counts: dict[frozenset[str], int] = {}

    def comparisons(self, essay_id: str) -> int:
        """Number of completed comparisons the essay took part in."""
        return self._comparisons[essay_id]

    def record(self, pair: Pair) -> None:
        """Count a completed comparison."""
        self._check(pair)
        self._comparisons[pair.essay_a] += 1
        self._comparisons[pair.essay_b] += 1
        self._times_a[pair.essay_a] += 1
        key = frozenset((pair.essay_a, pair.essay_b))
        self._pair_counts[key] = self._pair_counts.get(key, 0) + 1

    def next_wave(
        self,
        *,
        scores: Mapping[str, float] | None,
        max_pairs: int | None = None,
        retry: Sequence[Pair] = (),
    ) -> list[Pair]:
        """Plan the next wave: retries first, then fresh pairs; each essay at most once."""
        if max_pairs is not None and max_pairs < 0:
            raise ValueError("max_pairs must be non-negative")
        limit = len(self._ids) // 2
        if max_pairs is not None:
            limit = min(limit, max_pairs)

        wave: list[Pair] = []
        busy: set[str] = set()
        for pair in retry:
            self._check(pair)
            if len(wave) >= limit:
                break
            if pair.essay_a in busy or pair.essay_b in busy:
                continue
            # Retries keep their orientation: the caller asked for exactly that comparison.
            wave.append(pair)
            busy.update((pair.essay_a, pair.essay_b))

        free = [essay for essay in self._ids if essay not in busy]
        self._rng.shuffle(free)
        # Stable sort after the shuffle: least-compared first, ties in random order, so with an
        # odd count or a pair cap the essays that sit out are the most-compared ones.
        free.sort(key=self._comparisons.__getitem__)
        chosen = free[: 2 * (limit - len(wave))]
        wave.extend(self._orient(a, b) for a, b in self._match(chosen, scores))
        return wave

    def _match(
        self, chosen: list[str], scores: Mapping[str, float] | None
    ) -> list[tuple[str, str]]:
        if scores is None:
            order = chosen
            position = dict.fromkeys(chosen, 0.0)
        else:
            # Essays missing from the map sit at the centre of the (mean-zero) scale.
            raw = {essay: scores.get(essay, 0.0) for essay in chosen}
            spread = statistics.pstdev(raw.values()) if len(raw) > 1 else 0.0
            spread = spread or 1.0
            position = {
                essay: value / spread + self._rng.gauss(0.0, _SCORE_JITTER)
                for essay, value in raw.items()
            }
            order = sorted(chosen, key=position.__getitem__)

        def cost(a: str, b: str) -> float:
            repeats = self._pair_counts.get(frozenset((a, b)), 0)
            excess = self._excess_a(a)
            clash = abs(excess) if excess == self._excess_a(b) else 0
            return (
                abs(position[a] - position[b])
                + _REPEAT_PENALTY * repeats
                + _ORIENTATION_PENALTY * clash
            )

        # Greedy from one end of the order: each essay takes its cheapest remaining partner,
        # which for a sorted order is a near neighbour unless that would be a rematch.
        remaining = list(order)
        pairs: list[tuple[str, str]] = []
        while len(remaining) >= 2:
            first = remaining.pop(0)
            best, best_cost = 0, math.inf
            for k, other in enumerate(remaining):
                # Positions only grow along the order and every penalty is non-negative, so
                # no partner further on can cost less than the distance alone: stop there.
                # (Exactly the first cheapest partner, without scanning all n of them.)
                if position[other] - position[first] >= best_cost:
                    break
                candidate = cost(first, other)
                if candidate < best_cost:
                    best, best_cost = k, candidate
            pairs.append((first, remaining.pop(best)))
        return pairs

    def _orient(self, a: str, b: str) -> Pair:
        # Balance on (times A - times B) rather than raw A counts, so essays with different
        # comparison totals are still compared fairly.
        excess_a = self._excess_a(a)
        excess_b = self._excess_a(b)
        if excess_a == excess_b:
            return Pair(a, b) if self._rng.random() < 0.5 else Pair(b, a)
        return Pair(a, b) if excess_a < excess_b else Pair(b, a)

    def _excess_a(self, essay: str) -> int:
        return 2 * self._times_a[essay] - self._comparisons[essay]

    def _check(self, pair: Pair) -> None:
        for essay in (pair.essay_a, pair.essay_b):
            if essay not in self._comparisons:
                raise ValueError(f"unknown essay id: {essay!r}")
        if pair.essay_a == pair.essay_b:
            raise ValueError(f"essay compared with itself: {pair.essay_a!r}")
