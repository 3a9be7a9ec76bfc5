"""The diagnostics runner in all three modes against a real LPS."""

from __future__ import annotations

import asyncio
import importlib.machinery
import importlib.util
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType

import pytest
from opentelemetry.sdk.trace import TracerProvider

from lps_server.app import LpsApp
from lps_server.core.domain import ProcessingMode
from tests.helpers import metric

ROOT = Path(__file__).resolve().parent.parent
ESSAYS = ROOT / "examples" / "essays"


async def diagnose(*args: str, expect: int = 0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "scripts" / "diagnose"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == expect, err.decode()
    assert "Traceback" not in err.decode()
    return proc.returncode, out.decode(), err.decode()


async def test_plan_has_no_side_effects(tmp_path: Path) -> None:
    _, out, _ = await diagnose(
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
    # No --metrics-url: the server reports its own metrics port (GetQueueStats.metrics_port).
    _, text, err = await diagnose(
        "execute",
        str(ESSAYS),
        "--mode",
        "serial_bundle",
        "--budget",
        "40",
        "--target",
        f"127.0.0.1:{app.grpc_port}",
        "--json",
        str(out),
    )
    assert err == ""
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


def _load_diagnose() -> ModuleType:
    """scripts/diagnose as a module, to run its main() in this process (a subprocess costs
    seconds of imports)."""
    loader = importlib.machinery.SourceFileLoader(
        "diagnose_script", str(ROOT / "scripts" / "diagnose")
    )
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


DIAGNOSE = _load_diagnose()


async def _diagnose_here(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(DIAGNOSE.main, list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


async def test_a_server_without_metrics_is_one_line_before_anything_runs(
    start_lps: Callable[..., Awaitable[LpsApp]], capsys: pytest.CaptureFixture[str]
) -> None:
    app = await start_lps(serve_metrics=False)
    target = f"127.0.0.1:{app.grpc_port}"
    code, _, err = await _diagnose_here(capsys, "execute", str(ESSAYS), "--target", target)
    assert code == 2
    assert err.strip() == (
        f"diagnose: the server at {target} reports no /metrics port (metrics off, or a release "
        "before GetQueueStats.metrics_port); pass --metrics-url"
    )
    unreachable = "http://127.0.0.1:1/metrics"
    code, _, err = await _diagnose_here(
        capsys, "execute", str(ESSAYS), "--target", target, "--metrics-url", unreachable
    )
    assert code == 2
    assert err.strip().splitlines() == [
        f"diagnose: cannot read metrics at {unreachable}: [Errno 111] Connection refused"
    ]
    assert metric(app.registry, "llm_provider_requests_total") == 0  # the batch never ran


async def test_a_bundling_diagnosis_against_a_per_request_server_says_so(
    start_lps: Callable[..., Awaitable[LpsApp]], capsys: pytest.CaptureFixture[str]
) -> None:
    app = await start_lps(serve_metrics=True)
    code, text, err = await _diagnose_here(
        capsys, "execute", str(ESSAYS), "--mode", "serial_bundle", "--budget", "8",
        "--target", f"127.0.0.1:{app.grpc_port}",
    )  # fmt: skip
    assert code == 0
    assert "bundle_calls" in text
    assert "processes per_request, so nothing was bundled" in err


def test_help_is_complete_and_input_mistakes_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        DIAGNOSE.main(["--help"])
    text = capsys.readouterr().out
    assert "Exit codes: 0 done" in text
    assert text.rstrip().endswith("--json JSON           also write the summary as JSON here")
    assert DIAGNOSE.main(["plan", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"diagnose: {tmp_path / 'nope'}: no such file or directory"


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--server-timeout", "inf"], "--server-timeout"),
        (["--server-timeout", "-1"], "--server-timeout"),
        (["--budget", "0"], "--budget"),
        (["--max-failed-share", "nan"], "--max-failed-share"),
    ],
)
def test_a_bad_number_is_one_line_naming_its_flag(
    flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        DIAGNOSE.main(["plan", str(ESSAYS), *flags])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert named in err[0]


def test_a_requests_file_that_cannot_be_written_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    where = blocked / "requests.jsonl"  # its directory would have to be a file
    assert DIAGNOSE.main(["dry-run", str(ESSAYS), "--requests", str(where)]) == 2
    out, err = capsys.readouterr()
    assert err.strip() == f"diagnose: --requests {where}: {blocked} is not a directory"
    assert out == ""  # checked before the requests were built
