"""What `cj assess` leaves behind: its files in --out, its report on stdout, its last lines.

A run that ends (by its stopping rule, or with too many failures) writes its files before its
journal records the end (`Assessment(before_end=...)`): a file that cannot be written (a full
disk, a directory made read-only, a directory where the file goes) leaves the run unfinished in
its journal, so `--resume` writes the files once they can be, asking nothing again. The files are
written all or none (cj_client.whole_files), so none is ever left cut short. A run that stopped
unfinished writes what it has so far after the run; its journal already allows a resume.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cj_client.cli import exit_codes
from cj_client.cli.common import say, stdout_may_close
from cj_client.errors import AssessmentError, InputError, OutputWriteError
from cj_client.journal import JOURNAL_NAME, journal_path, journal_started
from cj_client.outputs import ranking_rows, summary, write_outputs
from cj_client.run_options import AssessmentReport

OUTPUT_NAMES = ("ranking.csv", "ranking.json", "summary.json", "scores.png", JOURNAL_NAME)


def check_output_paths(out: Path) -> None:
    """Refuse, before anything is sent, an --out holding a directory where a file of the run goes.

    Raises:
        InputError: one of the run's files is a directory.
    """
    for name in OUTPUT_NAMES:
        if (out / name).is_dir():
            raise InputError(f"--out {out}: {name} is a directory, not a file; remove it first")


class RunFiles:
    """The files of one run in `out`, and what became of them.

    Args:
        out: the run's output directory.
        plot: also write scores.png.
    """

    def __init__(self, out: Path, *, plot: bool) -> None:
        self.out = out
        self.plot = plot
        self.written: list[Path] = []
        self.failures: list[OutputWriteError] = []
        # The report of the run's end as given to `at_end`, and whether its files were written.
        self.ended: AssessmentReport | None = None
        self._ended_written = False

    def at_end(self, report: AssessmentReport) -> None:
        """`Assessment(before_end=...)`: write the files of the run that has ended.

        Raises:
            OutputWriteError: a file could not be written; the journal then records no end.
        """
        self.ended = report
        self.written = write_outputs(report, self.out, plot=self.plot)
        self._ended_written = True

    def after_run(self, report: AssessmentReport) -> AssessmentReport:
        """Write the files of a run that stopped without `at_end` writing them (unfinished,
        or its journal's end record failed after them); returns the report they hold.

        A failure is kept in `failures`, not raised: the run's own ending is reported too.
        """
        ended = self.ended
        if self._ended_written and ended is not None and ended.stop_reason == report.stop_reason:
            return ended  # written at the end, before the journal recorded it
        try:
            self.written = write_outputs(report, self.out, plot=self.plot)
        except OutputWriteError as exc:
            self.written = []
            self.failures.append(exc)
        return report

    def unwritten_at_end(self, exc: OutputWriteError) -> tuple[AssessmentReport, int, str]:
        """The run ended but `at_end` could not write its files: (report, exit code, cause).

        The exit code and cause are the run's own ending's (0, or 5 with its reason), which
        `report_and_exit` turns into exit 7.
        """
        assert self.ended is not None, "an output failure without the end that wrote it"
        self.failures.append(exc)
        # A too-many-failures verdict was being recorded when the files failed: Python chains
        # it as the context of what was raised while handling it.
        context = exc.__context__
        while context is not None and not isinstance(context, AssessmentError):
            context = context.__context__
        if context is not None:
            return self.ended, exit_codes.for_error(context), f"{context.reason}: {context}"
        return self.ended, exit_codes.OK, ""

    @property
    def unwritten_end(self) -> bool:
        """True when the run ended but its files were not written (its journal records no end)."""
        return self.ended is not None and not self._ended_written


def report_and_exit(
    report: AssessmentReport,
    args: argparse.Namespace,
    *,
    code: int,
    cause: str,
    files: RunFiles,
    essays: int,
) -> int:
    """Print the report on stdout and the lines that end the run on stderr; the exit code.

    The files come first (`files.after_run`, by the caller): a reader of stdout that has gone
    (`| head -1`) must not cost them.
    """
    try:
        with stdout_may_close():
            print_report(report, args, written=files.written, essays=essays)
    except OutputWriteError as exc:
        files.failures.append(exc)
    resumable = files.unwritten_end or (bool(cause) and code != exit_codes.TOO_MANY_FAILURES)
    if cause:
        say(f"cj assess: {cause}")
    for failure in files.failures:
        say(f"cj assess: {failure}")
    if files.failures and code in (exit_codes.OK, exit_codes.TOO_MANY_FAILURES):
        code = exit_codes.OUTPUTS_UNWRITABLE  # not 0: a script would read files that are not there
    # --plot is not one of the options a journal keeps: the command must ask for it again.
    command = f"cj assess --resume --out {args.out}{' --plot' if args.plot else ''}"
    if files.unwritten_end:
        say(
            f"cj assess: the run's results are in {journal_path(args.out)}; once its files can "
            f"be written, write them with: {command}"
        )
    elif resumable and journal_started(args.out):  # not when its header could not be written
        say(f"cj assess: continue the run with: {command}")
    return code


def print_report(
    report: AssessmentReport, args: argparse.Namespace, *, written: list[Path], essays: int
) -> None:
    """The run's report on stdout: the best essays, the summary, the files written."""
    if args.show_results:
        for outcome in report.outcomes:
            meta = outcome.metadata
            verdict = outcome.winner or f"{outcome.status}: {outcome.error_message}"
            print(
                f"  {meta.get('essay_a_id', '?'):>10} vs {meta.get('essay_b_id', '?'):<10} "
                f"-> {verdict:<8} confidence {outcome.confidence}  "
                f"bundle {outcome.bundle_index + 1}/{outcome.bundle_size}"
            )
    facts = summary(report)
    if report.complete:
        print(f"ranked {essays} essays (best first):")
        for row in ranking_rows(report)[:5]:
            print(
                f"  {row['rank']:>2}. {row['id']:<12} score {row['score']:+.2f} ± {row['se']:.2f}"
            )
    else:
        print(f"partial ranking of {essays} essays: the run stopped ({report.stop_reason})")
    print("summary:")
    for key in (
        "effective_batching_mode",
        "comparisons_requested",
        "comparisons_completed",
        "comparisons_failed",
        "provider_calls",
        "tokens",
        "ssr",
        "split_half_reliability",
        "position_bias_logit",
        "stop_reason",
        "elapsed_seconds",
    ):
        print(f"  {key:<24} {facts.get(key)}")
    print(f"  {'misfit_essays':<24} {len(facts.get('misfit_essays', []))} (flags in ranking.csv)")
    if len(facts.get("judges", [])) > 1:
        for judge in facts["judges"]:
            print(
                f"  judge {judge['judge']:<18} infit {judge['infit']}  agreement "
                f"{judge['agreement_with_consensus']}  position bias {judge['position_bias_logit']}"
            )
    for path in [*written, journal_path(args.out)]:
        print(f"wrote {path}")
    sys.stdout.flush()  # before any line on stderr, so that the cause of a failure comes last
