"""`Assessment`: a comparative-judgement run of a set of essays through LPS, wave by wave."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from opentelemetry import trace
from prometheus_client import CollectorRegistry

from cj_client.batching import (
    BatchJobWatch,
    BatchTags,
    CjSettings,
    LLMBatchingMode,
    request_ttl_for,
    resolve_batching_mode,
)
from cj_client.client import LpsClient
from cj_client.collector import CollectorLimits, WaveCollector
from cj_client.errors import JournalError, TooManyFailuresError
from cj_client.journal import JournalContents, PlannedWave, RunJournal
from cj_client.metrics import CjMetrics
from cj_client.models import ComparisonOutcome, ComparisonSubmission, EssayInput
from cj_client.pairing import PairPlanner
from cj_client.progress import ProgressSink, ProgressTracker
from cj_client.request_ids import MAX_REQUEST_ID_CHARS, essays_digest
from cj_client.run_options import (
    AssessmentOptions,
    AssessmentReport,
    journaled_settings,
    new_cj_batch_id,
    options_record,
    settings_record,
)
from cj_client.run_requests import RunRequests
from cj_client.scoring import Outcome, ScaleFitter, max_score_change
from cj_client.stopping import StoppingRule
from cj_client.tally import RunTally, judgement

SCORE_FEEDBACK_AFTER_WAVES = 2
# Up to this many essays the progress display shows SSR after every wave (the reported scale
# costs O(n^3), about 0.05 s at 500 essays); beyond it only an SSR target computes it per wave.
PROGRESS_SSR_MAX_ESSAYS = 500


class Assessment:
    """Ranks essays by asking LPS for pairwise judgements and fitting Bradley-Terry scores.

    Args:
        essays: the essays (ids must be unique).
        client: a connected LpsClient.
        options: the run's options (for a resumed run: `journaled_options(resume)`).
        settings: CJ_* settings (batching mode, batch-API providers); a resumed run keeps
            those it began with, recorded in its journal.
        registry: where CJ metrics go (a private registry by default).
        progress: called with a RunProgress after every result and wave.
        limits: how long to wait for the server and for results.
        journal_dir: journal the run there as it goes (resumable after a crash or Ctrl-C).
        resume: the journal of an unfinished run in `journal_dir`, to continue it.
        source: where the essays came from (recorded in the journal for `cj assess --resume`).
        tracer_provider: where the run's spans go (the global provider by default): one trace
            per run, `cj.assess` with a `cj.wave` child per wave, which LPS's spans join.
        on_wave: called after every wave (e.g. to push metrics).
        before_end: called with the report of a run that has ended (by its stopping rule, or
            with too many failures) before its journal records the end: `cj assess` writes its
            files there, so that a run whose files could not be written (`before_end` raised)
            stays resumable.

    Raises:
        ValueError: fewer than two essays, a duplicated essay id or one too long for LPS.
        JournalError: `resume`'s record of the settings is unreadable.
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
        progress: ProgressSink | None = None,
        limits: CollectorLimits | None = None,
        journal_dir: Path | None = None,
        resume: JournalContents | None = None,
        source: str = "",
        tracer_provider: trace.TracerProvider | None = None,
        on_wave: Callable[[], None] = lambda: None,
        before_end: Callable[[AssessmentReport], None] | None = None,
    ) -> None:
        seen: set[str] = set()
        for essay in essays:
            if essay.id in seen:
                raise ValueError(f"essay id {essay.id!r} appears more than once")
            if len(essay.id) > MAX_REQUEST_ID_CHARS:
                raise ValueError(
                    f"essay id {essay.id[:40]!r}... is {len(essay.id)} characters long; LPS takes "
                    f"at most {MAX_REQUEST_ID_CHARS}"
                )
            seen.add(essay.id)
        if len(essays) < 2:
            raise ValueError(f"an assessment needs at least two essays, got {len(essays)}")
        self._essays = {e.id: e for e in essays}
        self._essays_digest = essays_digest(list(essays))
        self._client = client
        self._options = opts = options or AssessmentOptions()
        self._settings = settings or CjSettings()
        if resume is not None:
            self._settings = journaled_settings(resume, self._settings)
        self._metrics = metrics or CjMetrics(registry or CollectorRegistry())
        self.mode = resolve_batching_mode(self._settings, opts.batch, provider=opts.provider)
        self.cj_batch_id = opts.cj_batch_id or new_cj_batch_id()
        self._tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer("cj_client")
        self._on_wave = on_wave
        self._before_end = before_end
        self.budget = opts.budget_for(len(essays))
        self._journal_dir = journal_dir
        self._resume = resume
        self._source = source
        self._journal: RunJournal | None = None
        self._progress = ProgressTracker(self.budget, progress or (lambda snapshot: None))
        # LPS ends every request by its TTL: results it still holds after that (and a margin)
        # are not coming.
        ttl_s = request_ttl_for(self.mode, opts.request_ttl_s)
        limits = limits or CollectorLimits(result_deadline_s=ttl_s + 120.0)
        self._collector = WaveCollector(
            client,
            limits=limits,
            on_result=self._arrived,
            on_notice=self._progress.notice,
        )
        self._requests = RunRequests(
            essays=self._essays,
            tags=BatchTags(
                self.cj_batch_id, opts.bos_batch_id or self.cj_batch_id, opts.cj_source, self.mode
            ),
            instructions=opts.instructions,
            provider=opts.provider,
            model=opts.model,
            ttl_s=ttl_s,
            judges=opts.judges,
        )
        # A batch-API run says where its batch jobs stand (submitted, size, provider state).
        self.batch_jobs = (
            BatchJobWatch(client.get, self._progress.notice)
            if self.mode == LLMBatchingMode.PROVIDER_BATCH_API
            else None
        )
        self._planner = PairPlanner(list(self._essays), seed=opts.seed)
        self._rule = StoppingRule(
            max_comparisons=self.budget,
            stability_threshold=opts.stability_threshold,
            ssr_target=opts.ssr_target,
            min_waves=opts.min_waves,
        )
        self._tally = RunTally()
        # The wave being collected and its results so far (absorbed when it is complete).
        self._collecting: tuple[PlannedWave, dict[str, ComparisonOutcome]] | None = None
        self._fitter = ScaleFitter(list(self._essays), anchors=opts.anchors)
        self._scores = self._fitter.current()
        self._waves = self._productive_waves = 0
        self._started = time.monotonic()

    async def run(self) -> AssessmentReport:
        """Run waves until the stopping rule says stop; failed comparisons are retried later.

        Raises:
            ServerLostError, RunRefusedError: the server was lost, or refused the run.
            TooManyFailuresError: more than `max_failed_share` of the comparisons failed.
            JournalError: `resume` does not belong to these essays and options.
            JournalWriteError: the journal could not be written.
            Whatever `before_end` raises (the journal then records no end).
        """
        attributes = {"cj.batch_id": self.cj_batch_id, "cj.batching_mode": self.mode.value}
        with self._tracer.start_as_current_span("cj.assess", attributes=attributes) as span:
            report = await self._run_waves()
            span.set_attributes({"cj.waves": report.waves, "cj.stop_reason": report.stop_reason})
            return report

    async def _run_waves(self) -> AssessmentReport:
        self._open_journal()
        try:
            try:
                stop = await self._replay() if self._resume is not None else None
                while stop is None:
                    stop = await self._next_wave()
                self._check_failed_share(final=True)
            except TooManyFailuresError as exc:
                # A verdict, not an accident: resuming would only reach it again.
                if self._before_end is not None:
                    self._before_end(self.report(exc.reason))
                self._end(exc.reason)
                raise
            report = self.report(stop)
            if self._before_end is not None:
                self._before_end(report)
            self._end(stop)
            return report
        finally:
            if self._journal is not None:
                self._journal.close()

    def report(self, stop_reason: str) -> AssessmentReport:
        """The run so far; `stop_reason` other than budget, stable and ssr_target marks it
        incomplete (interrupted, server_lost, refused, too_many_failures). Results of a wave
        still being collected count too, and an incomplete run's scores include them."""
        wave, arrived = self._collecting or (PlannedWave(0, ()), {})
        results = [*self._tally.results, *arrived.values()]
        extra = [j for c in wave.comparisons if (j := judgement(c, arrived.get(c.request_id)))]
        if extra:
            self._fit([*self._tally.outcomes, *extra])
        scores = self._fitter.scores()
        statistics = self._fitter.statistics(seed=self._options.seed)
        completed = [r for r in results if r.status == "completed"]
        bundles = {r.bundle_id for r in completed if r.bundle_id}
        unbundled = sum(1 for r in completed if not r.bundle_id)
        return AssessmentReport(
            scores=scores,
            effective_mode=self.mode,
            batching_mode_override=self._options.batch.llm_batching_mode_override,
            cj_batch_id=self.cj_batch_id,
            requested=self._tally.requested,
            completed=len(completed),
            failed=len(results) - len(completed),
            provider_calls=len(bundles) + unbundled,
            tokens=sum(r.prompt_tokens + r.completion_tokens for r in results),
            cost_usd=sum(r.cost_usd for r in results),
            elapsed_s=time.monotonic() - self._started,
            waves=self._waves,
            stop_reason=stop_reason,
            outcomes=tuple(results),
            unfinished=self._tally.requested - len(results),
            complete=stop_reason in ("budget", "stable", "ssr_target"),
            statistics=statistics,
            scoring_seconds=self._fitter.seconds,
        )

    def _end(self, stop_reason: str) -> None:
        if self._journal is not None:
            self._journal.end(stop_reason=stop_reason, comparisons=self._tally.requested)

    def _open_journal(self) -> None:
        if self._resume is None:
            # A continuation (resume) is the same logical batch: it is not counted again.
            self._metrics.batch_started(self.cj_batch_id, self.mode)
        if self._journal_dir is None:
            return
        if self._resume is None:
            header = {
                "cj_batch_id": self.cj_batch_id,
                "essays_digest": self._essays_digest,
                "essays": len(self._essays),
                "source": self._source,
                "options": options_record(self._options),
                "settings": settings_record(self._settings),
            }
            self._journal = RunJournal.create(self._journal_dir, header)
            return
        header = self._resume.header
        if header.get("essays_digest") != self._essays_digest:
            raise JournalError(
                f"{self._journal_dir}: the essays differ from those the journaled run began with "
                "(changed, added or removed); start a new run instead"
            )
        if header.get("cj_batch_id") != self.cj_batch_id:
            raise JournalError(f"{self._journal_dir}: the journal is of another batch id")
        self._journal = RunJournal.append(self._journal_dir)

    async def _replay(self) -> str | None:
        """Rebuild the journaled run; the wave it was collecting is collected to the end."""
        assert self._resume is not None
        stop: str | None = None
        for wave in self._resume.waves:
            subs = self._requests.submissions(wave)
            for sub, planned in zip(subs, wave.comparisons, strict=True):
                if sub.request_id != planned.request_id:
                    raise JournalError(
                        f"{self._journal_dir}: comparison {planned.request_id} no longer matches "
                        "its essays, instructions, provider or model; start a new run instead"
                    )
            journaled = self._resume.results
            done = {
                s.request_id: journaled[s.request_id] for s in subs if s.request_id in journaled
            }
            for outcome in done.values():
                self._progress.restored(outcome)
            missing = [s for s in subs if s.request_id not in done]
            self._waves = wave.number
            self._tally.requested += len(subs)
            if missing:
                self._metrics.requests_submitted(self.mode, len(missing))
                self._collecting = (wave, dict(done))
                done |= await self._collect(wave.number, missing)
            stop = self._absorb(wave, done)
            self._on_wave()
        return stop

    async def _next_wave(self) -> str | None:
        """Plan, journal, send and absorb one wave; the stop reason, or None to go on."""
        tally = self._tally
        ready = self._productive_waves >= SCORE_FEEDBACK_AFTER_WAVES
        pairs = self._planner.next_wave(
            scores=self._scores if ready else None,
            max_pairs=self.budget - tally.requested,
            retry=tally.retry,
        )
        if not pairs:
            return "budget"
        self._waves += 1
        wave = PlannedWave(
            self._waves,
            tuple(
                self._requests.planned(
                    pair, number=tally.requested + i, retry=tally.attempts.get(pair, 0) > 0
                )
                for i, pair in enumerate(pairs)
            ),
        )
        if self._journal is not None:
            self._journal.wave(wave)
        subs = self._requests.submissions(wave)
        tally.requested += len(subs)
        self._metrics.requests_submitted(self.mode, len(subs))
        self._progress.wave(wave.number)
        self._collecting = (wave, {})
        done = await self._collect(wave.number, subs)
        stop = self._absorb(wave, done)
        self._on_wave()
        return stop

    async def _collect(
        self, number: int, subs: list[ComparisonSubmission]
    ) -> dict[str, ComparisonOutcome]:
        """Send one wave's submissions and collect their results, in a `cj.wave` span."""
        attributes = {"cj.wave": number, "cj.wave.size": len(subs)}
        with self._tracer.start_as_current_span("cj.wave", attributes=attributes) as span:
            watch = None
            if self.batch_jobs is not None and self._collecting is not None:
                ids = [s.request_id for s in subs]
                watch = asyncio.create_task(self.batch_jobs.follow(ids, self._collecting[1]))
            try:
                done = await self._collector.collect(subs)
            finally:
                if watch is not None:
                    watch.cancel()
            span.set_attribute("cj.wave.results", len(done))
        return done

    def _absorb(self, wave: PlannedWave, done: dict[str, ComparisonOutcome]) -> str | None:
        """Take in a collected wave: refit if it judged anything, then ask the stopping rule.
        Only waves with judgements count towards stability and SSR."""
        judged = self._tally.absorb(wave, done, self._planner)
        self._collecting = None
        change: float | None = None
        if judged:
            self._productive_waves += 1
            previous = self._scores
            self._scores = self._fit(self._tally.outcomes)
            if self._productive_waves > 1:
                change = max_score_change(previous, self._scores)
        self._check_failed_share(final=False)
        if self._journal is not None:
            self._journal.sync()
        # SSR needs the reported scale (O(n^3)): for an SSR target, or cheaply for the display.
        wanted = self._rule.ssr_target is not None or len(self._essays) <= PROGRESS_SSR_MAX_ESSAYS
        ssr = self._fitter.ssr() if wanted and self._productive_waves else None
        self._progress.wave(wave.number, ssr=ssr)
        return self._rule.should_stop(
            comparisons_done=self._tally.requested,
            waves_done=self._productive_waves,
            score_change=change,
            ssr=ssr if self._rule.ssr_target is not None else None,
        )

    def _fit(self, outcomes: list[Outcome]) -> dict[str, float]:
        """The one place scores are fitted (after each wave with judgements): a warm-started
        refit; the reported scale with its standard errors is computed only when asked for."""
        return self._fitter.update(outcomes)

    def _check_failed_share(self, *, final: bool) -> None:
        limit = self._options.max_failed_share
        verdict = self._tally.failure_verdict(limit, budget=None if final else self.budget)
        if verdict:
            raise TooManyFailuresError(f"{verdict} (--max-failed-share {limit:g})")

    def _arrived(self, outcome: ComparisonOutcome) -> None:
        if self._collecting is not None:
            self._collecting[1][outcome.request_id] = outcome
        if self._journal is not None:
            self._journal.result(outcome)
        self._progress.result(outcome)
