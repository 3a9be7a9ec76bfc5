"""What every part of the benchmark shares: targets, sizes, the CJ-like workload."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cj_client.models import ComparisonSubmission, EssayInput
from lps_server.core.domain import ProcessingMode

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench"
FIGURES = {
    "ceiling": ("ceiling_ratio", "ceiling_ratio_local", "e2e_per_s", "e2e_local_per_s",
                "echo_per_s"),
    "bundling": ("bundling_gain", "fill_ratio", "fill_ratio_interleaved"),
    "dispatch": ("dispatch_p50_ms", "dispatch_p99_ms", "dispatch_beside_slow_p99_ms"),
    "rss": ("rss_mb_100k",),
    "streams": ("streams_per_replica", "streams_rss_mb"),
    "cj": ("cj_2000_seconds", "cj_2000_scoring_share"),
    "economics": ("rate_limit_utilization", "rate_limited_share",
                  "rate_limit_utilization_headers", "rate_limited_share_headers", "cost_ratio"),
}  # fmt: skip
TARGETS = {
    "ceiling_ratio": (">=", 0.5),
    "ceiling_ratio_local": (">=", 0.5),
    "bundling_gain": (">=", 10.0),
    "fill_ratio": (">=", 0.9),
    "fill_ratio_interleaved": (">=", 0.9),
    "dispatch_p99_ms": ("<=", 5.0),
    "dispatch_beside_slow_p99_ms": ("<=", 5.0),
    "rss_mb_100k": ("<=", 150.0),
    "streams_per_replica": (">=", 1000.0),
    "cj_2000_seconds": ("<=", 120.0),
    "cj_2000_scoring_share": ("<=", 0.2),
    "rate_limit_utilization": (">=", 0.9),
    "rate_limited_share": ("<=", 0.01),
    "rate_limit_utilization_headers": (">=", 0.9),
    "rate_limited_share_headers": ("<=", 0.01),
    "cost_ratio": ("<=", 0.6),
}
BUNDLE_MAX = 16
BUNDLED = {
    "queue_processing_mode": ProcessingMode.SERIAL_BUNDLE,
    "serial_bundle_max_requests_per_call": BUNDLE_MAX,
}
SLOW_MOCK = {"mock_latency_ms": 200, "mock_latency_per_item_ms": 5, "max_concurrent_calls": 4}
CJ_METADATA = {
    "cj_source": "bench",
    "cj_request_type": "cj_comparison",
    "comparison_iteration": "1",
    "cj_llm_batching_mode": "serial_bundle",
}
INSTRUCTIONS = (
    "Compare the two essays. Judge the quality of the argument, the use of evidence, the "
    "organisation and the command of language. Answer with the better essay and a short reason."
)
JUSTIFICATION = (
    "Essay A is preferred: essay A uses 241 distinct words and essay B 198, and the richer "
    "vocabulary carries a more developed argument."
)


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does."""

    ceiling_n: int = 4_000
    ceiling_rounds: int = 7
    warmup_n: int = 200
    bundling_n: int = 1_000
    dispatch_n: int = 1_000
    dispatch_low_n: int = 250
    rss_n: int = 100_000
    streams_n: int = 2_000
    cj_essays: int = 2_000
    economics_quick: bool = False


QUICK = Sizes(ceiling_n=200, ceiling_rounds=1, warmup_n=32, bundling_n=32, dispatch_n=100,
              dispatch_low_n=25, rss_n=1_000, streams_n=500,
              cj_essays=100, economics_quick=True)  # fmt: skip


class BenchError(RuntimeError):
    """A measurement could not be taken."""


def workload(n: int, *, tag: str, models: Sequence[str] = ("",)) -> list[ComparisonSubmission]:
    """`n` CJ-like comparisons of the example essays (1.2-1.8 KB each), ids `<tag>-<i>`; the
    model alternates through `models`."""
    pool = [EssayInput(f.stem, f.read_text()) for f in sorted(ROOT.glob("examples/essays/*.txt"))]
    if len(pool) < 2:
        raise BenchError("examples/essays/*.txt is missing")
    k = len(pool)
    subs = []
    for i in range(n):
        a, b = pool[i % k], pool[(i + 1 + (i // k) % (k - 1)) % k]
        metadata = dict(CJ_METADATA, essay_a_id=a.id, essay_b_id=b.id, cj_batch_id=tag)
        subs.append(
            ComparisonSubmission(
                essay_a=a,
                essay_b=b,
                request_id=f"{tag}-{i}",
                correlation_id=tag,
                instructions=INSTRUCTIONS,
                model=models[i % len(models)],
                metadata=metadata,
            )
        )
    return subs


def new_tag(name: str) -> str:
    """A tag unique to this run, so request ids and Redis prefixes never collide."""
    return f"{name}-{uuid.uuid4().hex[:8]}"
