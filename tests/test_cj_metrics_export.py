"""`cj assess`'s metrics flags: a gateway or port that cannot be used stops the run before any work,
with one line naming the cause; a gateway lost mid-run costs one warning, not the run."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from cj_client import LpsClient
from cj_client.cli import main as cj_main
from lps_server.app import LpsApp
from tests.helpers import GatedMock, metric, running_app
from tests.prometheus_rig import PushgatewayProcess, http_get
from tests.redis_server import free_port

ESSAYS = Path(__file__).resolve().parent.parent / "examples" / "essays"


def assess(target: str, out: Path, *extra: str) -> list[str]:
    return ["assess", str(ESSAYS), "--out", str(out), "--quiet", "--target", target, *extra]


async def test_an_unreachable_pushgateway_stops_the_run_before_lps_hears_of_it(
    lps: LpsApp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = f"http://127.0.0.1:{free_port()}"
    argv = assess(f"127.0.0.1:{lps.grpc_port}", tmp_path, "--pushgateway", gateway)
    assert await asyncio.to_thread(cj_main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"cj: cannot push metrics to the Pushgateway at {gateway}: ")
    assert metric(lps.registry, "llm_provider_grpc_requests_total") == 0
    assert not (tmp_path / "summary.json").exists()


async def test_a_metrics_port_in_use_stops_the_run_naming_the_address(
    lps: LpsApp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = assess(
            f"127.0.0.1:{lps.grpc_port}",
            tmp_path,
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(port),
        )
        assert await asyncio.to_thread(cj_main, argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"cj: cannot serve metrics on 127.0.0.1:{port}: ")
    assert metric(lps.registry, "llm_provider_grpc_requests_total") == 0


@pytest.mark.parametrize("url", ["ftp://gateway:9091", "http://", "gateway:port"])
def test_a_pushgateway_flag_that_is_not_an_http_url_is_refused(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cj_main(assess("127.0.0.1:1", tmp_path, "--pushgateway", url))
    assert exited.value.code == 2
    assert "--pushgateway" in capsys.readouterr().err


@pytest.mark.slow
async def test_a_gateway_lost_mid_run_costs_one_warning_and_the_run_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = PushgatewayProcess()
    gateway.start()
    provider = GatedMock()
    try:
        async with running_app(provider=provider) as app:
            argv = assess(f"127.0.0.1:{app.grpc_port}", tmp_path, "--budget", "24")
            run = asyncio.create_task(
                asyncio.to_thread(cj_main, [*argv, "--pushgateway", gateway.url])
            )
            async with asyncio.timeout(10):
                await provider.entered.wait()  # the start push is done: the first wave is held
            body = await asyncio.to_thread(http_get, gateway.url + "/metrics")
            assert b'cj_llm_requests_total{batching_mode="per_request"' in body
            await asyncio.to_thread(gateway.close)
            provider.gate.set()
            async with asyncio.timeout(30):
                assert await run == 0
            async with LpsClient(target=f"127.0.0.1:{app.grpc_port}") as client:
                assert (await client.queue_stats()).completed == 24
    finally:
        gateway.close()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"cj: warning: metrics push to {gateway.url} failed: ")
    assert (tmp_path / "summary.json").exists()
