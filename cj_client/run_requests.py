"""The requests of a CJ run: one per planned comparison, rebuilt identically on resume."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from cj_client.batching import BatchTags, request_metadata
from cj_client.errors import JournalError
from cj_client.journal import PlannedComparison, PlannedWave
from cj_client.judges import Judge
from cj_client.models import ComparisonSubmission, EssayInput
from cj_client.pairing import Pair
from cj_client.request_ids import comparison_correlation_id, comparison_request_id


@dataclass(frozen=True, slots=True)
class RunRequests:
    """What every request of a run shares, and how one comparison becomes a request."""

    essays: Mapping[str, EssayInput]
    tags: BatchTags
    instructions: str
    provider: str
    model: str
    ttl_s: float
    # Several judges take the comparisons in turn, by comparison number (so a resumed run asks
    # the same judge); empty: `provider` and `model` judge every comparison.
    judges: tuple[Judge, ...] = ()

    def planned(self, pair: Pair, *, number: int, retry: bool) -> PlannedComparison:
        """Comparison `number` of the run, as the journal records it."""
        sub = self.submission(pair, number=number, wave=0, wave_size=1, retry=retry)
        return PlannedComparison(sub.request_id, number, pair.essay_a, pair.essay_b, retry)

    def submissions(self, wave: PlannedWave) -> list[ComparisonSubmission]:
        """The requests of a planned wave."""
        return [
            self.submission(
                Pair(c.essay_a, c.essay_b),
                number=c.number,
                wave=wave.number,
                wave_size=len(wave.comparisons),
                retry=c.retry,
            )
            for c in wave.comparisons
        ]

    def submission(
        self, pair: Pair, *, number: int, wave: int, wave_size: int, retry: bool
    ) -> ComparisonSubmission:
        """The request of comparison `number` (its id depends on neither wave nor retry).

        Raises:
            JournalError: the pair names an essay the run does not have (a journal of others).
        """
        for essay in (pair.essay_a, pair.essay_b):
            if essay not in self.essays:
                raise JournalError(
                    f"the journal names essay {essay!r}, which the run does not have"
                )
        batch_id = self.tags.cj_batch_id
        judge = (
            self.judges[number % len(self.judges)]
            if self.judges
            else Judge(self.provider, self.model)
        )
        sub = ComparisonSubmission(
            essay_a=self.essays[pair.essay_a],
            essay_b=self.essays[pair.essay_b],
            correlation_id=comparison_correlation_id(batch_id, pair.essay_a, pair.essay_b),
            instructions=self.instructions,
            provider=judge.provider,
            model=judge.model,
            ttl_seconds=self.ttl_s,
            metadata=request_metadata(
                self.tags,
                essay_a_id=pair.essay_a,
                essay_b_id=pair.essay_b,
                iteration=wave,
                wave_size=wave_size,
                retry=retry,
            ),
        )
        return dataclasses.replace(sub, request_id=comparison_request_id(batch_id, number, sub))
