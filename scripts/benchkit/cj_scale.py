"""cj: `cj assess` on 2,000 synthetic essays, 10,000 comparisons, embedded server, serial bundles.

The whole command is timed (start to exit, as a user waits for it); `scoring_seconds` in its
summary.json is the time spent fitting the scale, its standard errors and statistics, so the
share is scoring's part of the run. The run writes its plot too (`--plot`).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from benchkit.common import BenchError
from benchkit.processes import Run, child_env, dying_with_parent
from cj_client.synthetic_essays import generate_essays, write_jsonl

COMPARISONS_PER_ESSAY = 5


async def measure_cj(run: Run) -> dict[str, Any]:
    """Time one `cj assess` run over `run.sizes.cj_essays` essays."""
    essays = run.sizes.cj_essays
    workdir = run.logdir / "cj"
    path = write_jsonl(generate_essays(essays, seed=0), workdir / "essays.jsonl")
    out = workdir / "out"
    budget = COMPARISONS_PER_ESSAY * essays
    argv = [sys.executable, "-m", "cj_client.cli", "assess", str(path), "--out", str(out),
            "--mode", "serial_bundle", "--budget", str(budget), "--quiet", "--plot"]  # fmt: skip
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *dying_with_parent(argv), env=child_env(), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await proc.communicate()
    seconds = time.perf_counter() - started
    (workdir / "cj.log").write_bytes(output)
    if proc.returncode != 0:
        raise BenchError(f"cj assess exited {proc.returncode}: {output.decode()[-400:]}")
    summary = json.loads((out / "summary.json").read_text())
    if summary["comparisons_completed"] != budget:
        raise BenchError(f"{summary['comparisons_completed']} of {budget} comparisons completed")
    return {
        "figures": {
            "cj_2000_seconds": round(seconds, 2),
            "cj_2000_scoring_share": round(summary["scoring_seconds"] / seconds, 3),
        },
        "details": {
            "essays": essays,
            "comparisons": budget,
            "waves": summary["waves"],
            "scoring_seconds": summary["scoring_seconds"],
            "run_elapsed_seconds": summary["elapsed_seconds"],
            "ssr": summary["ssr"],
            "split_half_reliability": summary["split_half_reliability"],
        },
    }
