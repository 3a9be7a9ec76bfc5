"""`lps serve` starts honestly: a port in use, a metrics port in use or unreadable TLS material ends
it with one line naming the cause and a non-zero exit; gRPC connections age out; TLS files are
checked at start-up."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cj_client import LpsClient
from generated.lps.v1 import llm_provider_service_pb2 as svc
from generated.lps.v1 import llm_provider_service_pb2_grpc as svc_grpc
from lps_server.app import LpsApp
from lps_server.core.config import Settings
from lps_server.core.errors import ConfigurationError
from lps_server.edge.server import server_credentials
from tests.certs import Certs, make_certs
from tests.helpers import WAIT_S, metric, running_app, submission
from tests.test_metrics import eventually

ROOT = Path(__file__).resolve().parent.parent
LINE = "lps: configuration error: "


def lps_serve(*args: str, **env: str) -> subprocess.Popen[str]:
    """`lps serve` on 127.0.0.1 with `env` on top of ours, its stderr piped."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), "LPS_GRPC_HOST": "127.0.0.1", **env}
    return subprocess.Popen(
        [sys.executable, "-m", "lps_server.cli", "serve", *args],
        env=full,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )


def refused(*args: str, **env: str) -> str:
    """Run `lps serve`, expect exit code 2, and return its only line of output."""
    proc = lps_serve(*args, **env)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert err.count("\n") == 1, err
    assert err.startswith(LINE), err
    assert "Traceback" not in err
    return err.removeprefix(LINE).strip()


@pytest.fixture
def first_server() -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A running `lps serve` (local queue) and its gRPC port."""
    proc = lps_serve("--port", "0", "--metrics-port", "0", "--plain-logs")
    assert proc.stderr is not None
    port = 0
    for line in proc.stderr:  # bounded: the process logs this line or exits
        if match := re.search(r"lps listening grpc=127\.0\.0\.1:(\d+)", line):
            port = int(match[1])
            break
    assert port, "the first server never logged its port"
    yield proc, port
    proc.kill()
    proc.wait(timeout=10)
    proc.stderr.close()


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


@pytest.mark.slow
async def test_a_second_server_on_a_port_in_use_exits_and_the_first_keeps_every_connection(
    first_server: tuple[subprocess.Popen[str], int],
) -> None:
    proc, port = first_server
    line = refused("--port", str(port), "--metrics-port", "0")
    assert f"127.0.0.1:{port}" in line, line
    assert "Address already in use" in line
    assert "LPS_GRPC_PORT" in line
    # Each new connection reaches the first server: all see the one request it holds in memory
    # (another process, with its own in-process queue, would not know it).
    async with LpsClient(target=f"127.0.0.1:{port}") as client:
        await client.submit(submission(0, request_id="held"))
    for _ in range(12):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = svc_grpc.LlmProviderServiceStub(channel)
            reply = await stub.GetComparison(
                svc.GetComparisonRequest(request_id="held"), timeout=WAIT_S
            )
            assert reply.result.request_id == "held"
    assert proc.poll() is None


@pytest.mark.slow
def test_a_metrics_port_in_use_ends_the_start_in_one_line(busy_port: int) -> None:
    line = refused("--port", "0", "--metrics-port", str(busy_port))
    assert f"0.0.0.0:{busy_port}" in line, line
    assert "LPS_METRICS_PORT" in line
    assert "Address already in use" in line


@pytest.mark.slow
def test_unreadable_tls_material_ends_the_start_in_one_line(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    line = refused(
        "--port", "0", "--metrics-port", "0", LPS_TLS_CERT=str(tmp_path / "no.pem"),
        LPS_TLS_KEY=str(key),
    )  # fmt: skip
    assert (
        line
        == f"LPS_TLS_CERT={str(tmp_path / 'no.pem')!r} cannot be read: No such file or directory"
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def test_tls_files_are_checked_at_start_up(certs: Certs, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a certificate\n")
    cases = [
        ({"tls_cert": str(tmp_path), "tls_key": certs.server_key}, "LPS_TLS_CERT=", "directory"),
        ({"tls_cert": str(text), "tls_key": certs.server_key}, "LPS_TLS_CERT=", "no PEM cert"),
        ({"tls_cert": certs.server_cert, "tls_key": str(text)}, "LPS_TLS_KEY=", "no PEM private"),
        ({"tls_cert": certs.server_cert, "tls_key": certs.client_key}, "LPS_TLS_KEY=", "together"),
        (
            {
                "tls_cert": certs.server_cert,
                "tls_key": certs.server_key,
                "tls_client_ca": str(text),
            },
            "LPS_TLS_CLIENT_CA=",
            "no PEM cert",
        ),
    ]
    for values, names, says in cases:
        with pytest.raises(ConfigurationError) as caught:
            server_credentials(Settings(**values))  # type: ignore[arg-type]
        assert names in str(caught.value), caught.value
        assert says in str(caught.value), caught.value
    assert server_credentials(Settings(tls_cert=certs.server_cert, tls_key=certs.server_key))


async def test_connections_age_out_while_calls_in_progress_run_to_their_end() -> None:
    async with (
        running_app(grpc_max_connection_age_seconds=1.0) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel,
    ):
        stub = svc_grpc.LlmProviderServiceStub(channel)
        follow = stub.StreamResults(svc.StreamResultsRequest(result_channel="aging"))
        await channel.channel_ready()
        # The server ends the connection after about a second (GOAWAY): the channel leaves READY.
        async with asyncio.timeout(WAIT_S):
            while channel.get_state() == grpc.ChannelConnectivity.READY:
                await channel.wait_for_state_change(grpc.ChannelConnectivity.READY)
        # The stream opened on the old connection still runs and gets its result.
        async with LpsClient(target=f"127.0.0.1:{app.grpc_port}") as client:
            await client.submit(submission(1, request_id="late", result_channel="aging"))
        async with asyncio.timeout(WAIT_S):
            reply = await follow.read()
        assert isinstance(reply, svc.StreamResultsResponse)
        assert reply.result.request_id == "late"
        follow.cancel()


async def test_a_metrics_port_taken_after_the_check_is_named_too(busy_port: int) -> None:
    app = LpsApp(
        Settings.from_env(
            {}, grpc_host="127.0.0.1", grpc_port=0, metrics_host="127.0.0.1", metrics_port=busy_port
        )
    )
    try:
        with pytest.raises(ConfigurationError) as caught:
            await app.start()
        assert str(caught.value) == (
            f"cannot serve metrics on 127.0.0.1:{busy_port} (LPS_METRICS_HOST/LPS_METRICS_PORT): "
            "Address already in use"
        )
    finally:
        await app.stop(grace=0)


FROZEN_CLIENT = """
import asyncio, sys
import grpc
from generated.lps.v1 import llm_provider_service_pb2 as svc
from generated.lps.v1 import llm_provider_service_pb2_grpc as svc_grpc

async def main():
    async with grpc.aio.insecure_channel(sys.argv[1]) as channel:
        call = svc_grpc.LlmProviderServiceStub(channel).StreamResults(
            svc.StreamResultsRequest(result_channel="frozen"))
        await channel.channel_ready()
        print("open", flush=True)
        await call.read()  # the first result: the server surely holds the stream now
        print("following", flush=True)
        await call.read()

asyncio.run(main())
"""


@pytest.mark.slow
async def test_keepalive_ends_the_streams_of_a_client_that_stopped_answering() -> None:
    async with running_app(grpc_keepalive_seconds=1, grpc_keepalive_timeout_seconds=1) as app:
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-c", FROZEN_CLIENT, f"127.0.0.1:{app.grpc_port}", cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert client.stdout is not None
            async with asyncio.timeout(30):
                assert await client.stdout.readline() == b"open\n"
                # Frozen before its call reached the server, there would be no stream to end
                # (a loaded machine did that): one result on its channel proves it is followed.
                async with LpsClient(target=f"127.0.0.1:{app.grpc_port}") as lps:
                    await lps.submit(submission(result_channel="frozen"))
                assert await client.stdout.readline() == b"following\n"
            client.send_signal(signal.SIGSTOP)  # its kernel still acknowledges TCP; gRPC is mute
            await eventually(
                lambda: bool(
                    metric(app.registry, "llm_provider_grpc_requests_total", method="StreamResults")
                ),
                "the server to end the frozen client's stream",
            )
            ended = metric(
                app.registry,
                "llm_provider_grpc_requests_total",
                method="StreamResults",
                code="CANCELLED",
            )
            assert ended == 1
        finally:
            client.kill()
            await client.wait()
