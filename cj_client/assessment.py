"""`Assessment`: a comparative-judgement run of a set of essays through LPS, wave by wave."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from opentelemetry import trace
from prometheus_client import CollectorRegistry

from cj_client.batching import (
    BatchConfig,
    BatchTags,
    CjSettings,
    LLMBatchingMode,
    request_metadata,
    resolve_batching_mode,
)
from cj_client.client import LpsClient
from cj_client.errors import LpsClientError
from cj_client.metrics import CjMetrics
from cj_client.models import Ack, ComparisonOutcome, ComparisonSubmission, EssayInput
from cj_client.pairing import Pair, PairPlanner
from cj_client.scoring import Outcome, Scores, fit_bradley_terry, max_score_change
from cj_client.stopping import StoppingRule

DEFAULT_INSTRUCTIONS = (
    "You are an experienced teacher. Judge which essay is the better piece of writing: "
    "argument, evidence, organisation and language."
)
MAX_ATTEMPTS_PER_PAIR = 3
MAX_FAILED_WAVES = 3
SCORE_FEEDBACK_AFTER_WAVES = 2


@dataclass(frozen=True, slots=True)
class AssessmentOptions:
    """Options of one CJ run; `budget` defaults to five comparisons per essay (ten per essay
    counting both sides)."""

    budget: int | None = None
    batch: BatchConfig = field(default_factory=BatchConfig)
    provider: str = "mock"
    model: str = ""
    instructions: str = DEFAULT_INSTRUCTIONS
    stability_threshold: float = 0.05
    ssr_target: float | None = None
    min_waves: int = 3
    seed: int = 0
    cj_batch_id: str = ""
    bos_batch_id: str = ""
    cj_source: str = "cj_assess"

    def budget_for(self, essays: int) -> int:
        """The comparison budget for a run over `essays` essays."""
        return self.budget or 5 * essays


@dataclass(frozen=True, slots=True)
class AssessmentReport:
    """What a run produced: scores best first, and the run's accounting."""

    scores: Scores
    effective_mode: LLMBatchingMode
    batching_mode_override: LLMBatchingMode | None
    cj_batch_id: str
    requested: int
    completed: int
    failed: int
    provider_calls: int
    tokens: int
    cost_usd: float
    elapsed_s: float
    waves: int
    stop_reason: str
    outcomes: tuple[ComparisonOutcome, ...]


Progress = Callable[[int, int], None]


def new_cj_batch_id() -> str:
    """A fresh `cj_batch_id`, for runs that are not given one."""
    return f"cj-{uuid.uuid4().hex[:12]}"


class Assessment:
    """Ranks essays by asking LPS for pairwise judgements and fitting Bradley-Terry scores.

    Args:
        essays: the essays (ids must be unique).
        client: a connected LpsClient.
        options: the run's options.
        settings: CJ_* settings (batching mode, batch-API providers).
        registry: where CJ metrics go (a private registry by default).
        progress: called with (comparisons finished, budget) as results arrive.
        tracer_provider: where the run's spans go (the global provider by default): one trace
            per run, `cj.assess` with a `cj.wave` child per wave, which LPS's spans join.
        on_wave: called after every wave (e.g. to push metrics).
    """

    def __init__(
        self,
        essays: Sequence[EssayInput],
        *,
        client: LpsClient,
        options: AssessmentOptions | None = None,
        settings: CjSettings | None = None,
        registry: CollectorRegistry | None = None,
        metrics: CjMetrics | None = None,
        progress: Progress | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        on_wave: Callable[[], None] = lambda: None,
    ) -> None:
        ids = [e.id for e in essays]
        if len(set(ids)) != len(ids):
            raise ValueError("essay ids must be unique")
        if len(essays) < 2:
            raise ValueError("an assessment needs at least two essays")
        self._essays = {e.id: e for e in essays}
        self._client = client
        self._options = options or AssessmentOptions()
        self._settings = settings or CjSettings()
        self._metrics = metrics or CjMetrics(registry or CollectorRegistry())
        self._progress = progress or (lambda done, total: None)
        self._tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer("cj_client")
        self._on_wave = on_wave
        self.mode = resolve_batching_mode(
            self._settings, self._options.batch, provider=self._options.provider
        )
        self.cj_batch_id = self._options.cj_batch_id or new_cj_batch_id()
        self.budget = self._options.budget_for(len(essays))

    async def run(self) -> AssessmentReport:
        """Run waves until the stopping rule says stop; failed comparisons are retried later."""
        attributes = {"cj.batch_id": self.cj_batch_id, "cj.batching_mode": self.mode.value}
        with self._tracer.start_as_current_span("cj.assess", attributes=attributes) as span:
            report = await self._run_waves()
            span.set_attributes({"cj.waves": report.waves, "cj.stop_reason": report.stop_reason})
            return report

    async def _run_waves(self) -> AssessmentReport:
        started = time.monotonic()
        opts = self._options
        ids = list(self._essays)
        planner = PairPlanner(ids, seed=opts.seed)
        rule = StoppingRule(
            max_comparisons=self.budget,
            stability_threshold=opts.stability_threshold,
            ssr_target=opts.ssr_target,
            min_waves=opts.min_waves,
        )
        bos_batch_id = opts.bos_batch_id or self.cj_batch_id
        tags = BatchTags(self.cj_batch_id, bos_batch_id, opts.cj_source, self.mode)
        self._metrics.batch_started(self.cj_batch_id, self.mode)
        tally = _Tally()
        scores = fit_bradley_terry(ids, [])
        failed_waves = waves = 0
        stop_reason = "budget"
        while True:
            feedback = scores.as_mapping() if waves >= SCORE_FEEDBACK_AFTER_WAVES else None
            remaining = self.budget - tally.requested
            wave = planner.next_wave(scores=feedback, max_pairs=remaining, retry=tally.retry)
            if not wave:
                break
            waves += 1
            subs = [(self._submission(p, tags, waves, len(wave), tally), p) for p in wave]
            tally.requested += len(subs)
            self._metrics.requests_submitted(self.mode, len(subs))
            with self._tracer.start_as_current_span(
                "cj.wave", attributes={"cj.wave": waves, "cj.wave.size": len(subs)}
            ) as wave_span:
                done = await self._run_wave([sub for sub, _ in subs])
                wave_span.set_attribute("cj.wave.results", len(done))
            failed_waves = 0 if done else failed_waves + 1
            if failed_waves >= MAX_FAILED_WAVES:
                message = f"{MAX_FAILED_WAVES} waves in a row got no result; giving up"
                raise LpsClientError(message, code="UNAVAILABLE")
            tally.absorb(subs, done, planner)
            self._progress(tally.requested, self.budget)
            self._on_wave()
            previous, scores = scores, fit_bradley_terry(ids, tally.outcomes)
            change = max_score_change(previous.as_mapping(), scores.as_mapping())
            reason = rule.should_stop(
                comparisons_done=tally.requested,
                waves_done=waves,
                score_change=change if waves > 1 else None,
                ssr=scores.ssr,
            )
            if reason is not None:
                stop_reason = reason
                break
        return self._report(scores, tally, waves, stop_reason, started)

    def _submission(
        self, pair: Pair, tags: BatchTags, wave: int, wave_size: int, tally: _Tally
    ) -> ComparisonSubmission:
        opts = self._options
        attempt = tally.attempts.get(pair, 0)
        return ComparisonSubmission(
            essay_a=self._essays[pair.essay_a],
            essay_b=self._essays[pair.essay_b],
            request_id=f"{self.cj_batch_id}:{wave}:{pair.essay_a}:{pair.essay_b}:{attempt}",
            correlation_id=f"{self.cj_batch_id}:{pair.essay_a}:{pair.essay_b}",
            instructions=opts.instructions,
            provider=opts.provider,
            model=opts.model,
            metadata=request_metadata(
                tags,
                essay_a_id=pair.essay_a,
                essay_b_id=pair.essay_b,
                iteration=wave,
                wave_size=wave_size,
                retry=attempt > 0,
            ),
        )

    async def _run_wave(self, subs: list[ComparisonSubmission]) -> dict[str, ComparisonOutcome]:
        """Submit one wave on one stream; a rejected or lost request simply has no result."""
        done: dict[str, ComparisonOutcome] = {}
        try:
            async for event in self._client.submit_many(subs):
                if isinstance(event, ComparisonOutcome):
                    done[event.request_id] = event
                elif isinstance(event, Ack) and not event.accepted:
                    continue
        except LpsClientError:
            # The stream broke: what arrived counts, the rest is retried in a later wave.
            return done
        return done

    def _report(
        self, scores: Scores, tally: _Tally, waves: int, stop_reason: str, started: float
    ) -> AssessmentReport:
        results = tally.results
        completed = [r for r in results if r.status == "completed"]
        bundles = {r.bundle_id for r in completed if r.bundle_id}
        unbundled = sum(1 for r in completed if not r.bundle_id)
        return AssessmentReport(
            scores=scores,
            effective_mode=self.mode,
            batching_mode_override=self._options.batch.llm_batching_mode_override,
            cj_batch_id=self.cj_batch_id,
            requested=tally.requested,
            completed=len(completed),
            failed=tally.requested - len(completed),
            provider_calls=len(bundles) + unbundled,
            tokens=sum(r.prompt_tokens + r.completion_tokens for r in results),
            cost_usd=sum(r.cost_usd for r in results),
            elapsed_s=time.monotonic() - started,
            waves=waves,
            stop_reason=stop_reason,
            outcomes=tuple(results),
        )


@dataclass(slots=True)
class _Tally:
    """A run's running state: what was asked, what came back, what to retry."""

    requested: int = 0
    outcomes: list[Outcome] = field(default_factory=list)
    results: list[ComparisonOutcome] = field(default_factory=list)
    attempts: dict[Pair, int] = field(default_factory=dict)  # failed attempts of open pairs
    retry: list[Pair] = field(default_factory=list)

    def absorb(
        self,
        wave: list[tuple[ComparisonSubmission, Pair]],
        done: dict[str, ComparisonOutcome],
        planner: PairPlanner,
    ) -> None:
        """Record a wave's results; pairs without a judgement are retried, up to a limit."""
        self.retry = []
        for sub, pair in wave:
            outcome = done.get(sub.request_id)
            if outcome is not None:
                self.results.append(outcome)
            if outcome is not None and outcome.status == "completed" and outcome.winner:
                # A later comparison of the same pair is a new comparison, not a retry.
                self.attempts.pop(pair, None)
                planner.record(pair)
                a_won = outcome.winner == "essay_a"
                first, second = (pair.essay_a, pair.essay_b)
                self.outcomes.append(Outcome(first, second) if a_won else Outcome(second, first))
                continue
            self.attempts[pair] = self.attempts.get(pair, 0) + 1
            if self.attempts[pair] < MAX_ATTEMPTS_PER_PAIR:
                self.retry.append(pair)
