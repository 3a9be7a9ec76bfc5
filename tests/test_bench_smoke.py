"""`scripts/bench --quick` still runs end to end and reports every figure.

A smoke run, not a timed test: it checks that each measurement produces a positive number (or
zero, for shares of refused calls) and never asserts on speed (targets are checked by
`make bench`, on a quiet machine).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIGURES = (
    "ceiling_ratio",
    "ceiling_ratio_local",
    "e2e_per_s",
    "e2e_local_per_s",
    "echo_per_s",
    "bundling_gain",
    "fill_ratio",
    "fill_ratio_interleaved",
    "dispatch_p50_ms",
    "dispatch_p99_ms",
    "dispatch_beside_slow_p99_ms",
    "rss_mb_100k",
    "streams_per_replica",
    "streams_rss_mb",
    "cj_2000_seconds",
    "cj_2000_scoring_share",
    "rate_limit_utilization",
    "rate_limited_share",
    "rate_limit_utilization_headers",
    "rate_limited_share_headers",
    "cost_ratio",
)
# Shares of refused calls are 0 when all goes well.
MAY_BE_ZERO = ("rate_limited_share", "rate_limited_share_headers")


@pytest.mark.redis
@pytest.mark.slow
def test_quick_bench_reports_every_figure_as_a_positive_number(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench"), "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["errors"] == {}
    figures = report["figures"]
    assert sorted(figures) == sorted(FIGURES)
    for name in FIGURES:
        value = figures[name]
        assert isinstance(value, float), name
        assert value >= 0 if name in MAY_BE_ZERO else value > 0, f"{name} = {value}"
    # A quick run's figures say nothing about the targets: no verdicts, and it says so.
    assert report["pass"] == {}
    assert report["comparable"] is False
    assert "NOT comparable with the targets" in proc.stdout
    assert "FAIL" not in proc.stdout
    assert " pass" not in proc.stdout
    for name in FIGURES:
        assert name in proc.stdout, f"the table lacks {name}"
