"""Reading essays for a run and writing its ranking, summary and plot."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from cj_client.errors import OutputWriteError
from cj_client.essay_files import load_essays as load_essays  # where callers found it
from cj_client.report_fields import essay_fit_fields, statistics_fields
from cj_client.run_options import AssessmentReport
from cj_client.scale_plot import scale_png
from cj_client.whole_files import write_whole

RANKING_FIELDS = ("id", "rank", "score", "se", "comparisons", "infit", "outfit", "flags")


def ranking_rows(report: AssessmentReport) -> list[dict[str, Any]]:
    """One row per essay, best first; `flags` holds `misfit` and `anchor`, `;`-separated."""
    return [
        {
            "id": e.essay_id,
            "rank": rank,
            "score": round(e.score, 4),
            "se": round(e.se, 4),
            "comparisons": e.comparisons,
            **essay_fit_fields(report.statistics, e.essay_id),
        }
        for rank, e in enumerate(report.scores.essays, start=1)
    ]


def summary(report: AssessmentReport) -> dict[str, Any]:
    """The run's accounting as written to summary.json."""
    override = report.batching_mode_override
    return {
        "cj_batch_id": report.cj_batch_id,
        "effective_batching_mode": report.effective_mode.value,
        "batching_mode_override": override.value if override else None,
        "comparisons_requested": report.requested,
        "comparisons_completed": report.completed,
        "comparisons_failed": report.failed,
        "provider_calls": report.provider_calls,
        "tokens": report.tokens,
        "cost_usd": round(report.cost_usd, 6),
        "ssr": round(report.scores.ssr, 4),
        **statistics_fields(report.statistics),
        "scoring_seconds": round(report.scoring_seconds, 3),
        "waves": report.waves,
        "stop_reason": report.stop_reason,
        "complete": report.complete,
        "comparisons_unfinished": report.unfinished,
        "elapsed_seconds": round(report.elapsed_s, 3),
    }


def write_outputs(report: AssessmentReport, out: Path, *, plot: bool = False) -> list[Path]:
    """Write ranking.csv, ranking.json, summary.json (and scores.png); returns the paths.

    The files are written all or none (cj_client.whole_files): a failure leaves every one of them
    as it was, none cut short.

    Raises:
        OutputWriteError: a file, or `out` itself, could not be written (named, with the reason).
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputWriteError(str(out), exc.strerror or str(exc)) from None
    rows = ranking_rows(report)
    csv_text = io.StringIO(newline="")
    writer = csv.DictWriter(csv_text, fieldnames=RANKING_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    files = [
        (out / "ranking.csv", csv_text.getvalue().encode("utf-8")),
        (out / "ranking.json", _json(rows)),
        (out / "summary.json", _json(summary(report))),
    ]
    if plot:
        files.append((out / "scores.png", scale_png(rows)))
    return write_whole(files)


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode("utf-8")
