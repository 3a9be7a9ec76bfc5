"""The diagnostics runner in all three modes against a real LPS."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider

from lps_server.app import LpsApp
from lps_server.core.domain import ProcessingMode
from tests.helpers import metric

ROOT = Path(__file__).resolve().parent.parent
ESSAYS = ROOT / "examples" / "essays"


async def diagnose(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "scripts" / "diagnose"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return proc.returncode, out.decode()


async def test_plan_has_no_side_effects(tmp_path: Path) -> None:
    _, out = await diagnose(
        "plan", str(ESSAYS), "--mode", "serial_bundle", "--json", str(tmp_path / "p.json")
    )
    summary = json.loads((tmp_path / "p.json").read_text())
    assert summary["effective_batching_mode"] == "serial_bundle"
    assert summary["batching_mode_override"] == "serial_bundle"
    assert summary["essays"] == 16
    assert summary["wave_size"] == 8
    assert "first_wave_pairs" in out
    written = await asyncio.to_thread(lambda: sorted(p.name for p in tmp_path.iterdir()))
    assert written == ["p.json"]


async def test_dry_run_writes_requests_and_sends_nothing(tmp_path: Path) -> None:
    requests = tmp_path / "requests.jsonl"
    await diagnose("dry-run", str(ESSAYS), "--budget", "24", "--requests", str(requests))
    lines = [json.loads(line) for line in requests.read_text().splitlines()]
    assert len(lines) == 24
    assert {line["metadata"]["cj_llm_batching_mode"] for line in lines} == {"per_request"}
    assert {line["metadata"]["preferred_bundle_size"] for line in lines} == {"8"}
    assert len({line["request_id"] for line in lines}) == 24


async def test_execute_reports_the_servers_bundle_figures_for_the_run(
    start_lps: Callable[..., Awaitable[LpsApp]], tmp_path: Path
) -> None:
    app = await start_lps(
        queue_processing_mode=ProcessingMode.SERIAL_BUNDLE,
        serve_metrics=True,
        tracer_provider=TracerProvider(),
    )
    out = tmp_path / "execute.json"
    _, text = await diagnose(
        "execute",
        str(ESSAYS),
        "--mode",
        "serial_bundle",
        "--budget",
        "40",
        "--target",
        f"127.0.0.1:{app.grpc_port}",
        "--metrics-url",
        f"http://127.0.0.1:{app.metrics_port}/metrics",
        "--json",
        str(out),
    )
    summary = json.loads(out.read_text())
    assert summary["queue_processing_mode"] == "serial_bundle"
    assert summary["effective_batching_mode"] == "serial_bundle"
    assert (summary["submitted"], summary["completed"], summary["failed"]) == (40, 40, 0)
    recorded_calls = metric(app.registry, "llm_provider_serial_bundle_calls_total")
    recorded_items = metric(app.registry, "llm_provider_serial_bundle_items_per_call_sum")
    assert summary["bundle_calls"] == recorded_calls == 5
    assert summary["bundle_items"] == recorded_items == 40
    assert summary["items_per_call_histogram"]["8.0"] == 5
    assert summary["correlation_ids_matched"] is True
    assert summary["trace_ids_present"] is True
    assert summary["cj_counters"]["cj_llm_requests_total{batching_mode=serial_bundle}"] == 40
    assert "bundle_calls" in text
