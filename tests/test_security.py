"""Authentication (bearer tokens), TLS and mutual TLS, and a metrics endpoint bound to localhost."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cj_client import LpsClient, UnauthenticatedError, UnavailableError
from lps_server.app import LpsApp
from tests.certs import Certs, make_certs
from tests.helpers import metric, submission

ROOT = Path(__file__).resolve().parent.parent
TOKENS = ("tok-alpha-123", "tok-beta-456")
Start = Callable[..., Awaitable[LpsApp]]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
async def secured(start_lps: Start) -> LpsApp:
    return await start_lps(auth_tokens=TOKENS)


def target(app: LpsApp, host: str = "127.0.0.1") -> str:
    return f"{host}:{app.grpc_port}"


# --- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize("token", TOKENS)
async def test_each_configured_token_is_accepted(secured: LpsApp, token: str) -> None:
    async with LpsClient(target=target(secured), token=token, timeout=10) as client:
        assert (await client.submit(submission(1)))[0] == "req-1"
        assert (await client.queue_stats()).backend == "local"


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (None, "missing credentials"),
        ("tok-alpha-12", "not valid"),  # a prefix of a real token
        ("tok-alpha-1234", "not valid"),  # a real token plus one character
        ("WRONG-token-zzz", "not valid"),
    ],
)
async def test_calls_without_a_valid_token_are_unauthenticated(
    secured: LpsApp, token: str | None, message: str
) -> None:
    async with LpsClient(target=target(secured), token=token, timeout=10) as client:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: client.submit(submission(1)),
            lambda: client.get("req-1"),
            lambda: client.queue_stats(),
            lambda: _drain(client.submit_many([submission(2)])),
            lambda: _drain(client.stream_results("channel")),
        ]
        for call in calls:
            with pytest.raises(UnauthenticatedError, match=message) as caught:
                await call()
            assert token is None or token not in str(caught.value)
    assert metric(secured.registry, "llm_provider_grpc_requests_total", code="OK") == 0
    for method in ("SubmitComparison", "SubmitComparisons", "StreamResults", "GetQueueStats"):
        assert (
            metric(
                secured.registry,
                "llm_provider_grpc_requests_total",
                method=method,
                code="UNAUTHENTICATED",
            )
            == 1
        ), method


async def _drain(events: AsyncIterator[object]) -> None:
    async for _ in events:
        pass


@pytest.mark.parametrize("value", ["Basic dG9rOmFscGhh", "Bearer", "tok-alpha-123", "bearer  "])
async def test_malformed_authorization_is_refused(secured: LpsApp, value: str) -> None:
    async with grpc.aio.insecure_channel(target(secured)) as channel:
        stats = channel.unary_unary("/lps.v1.LlmProviderService/GetQueueStats")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stats(b"", metadata=(("authorization", value),), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "malformed credentials" in (caught.value.details() or "")


async def test_bearer_scheme_is_case_insensitive(secured: LpsApp) -> None:
    async with grpc.aio.insecure_channel(target(secured)) as channel:
        stats = channel.unary_unary("/lps.v1.LlmProviderService/GetQueueStats")
        await stats(b"", metadata=(("authorization", f"bearer {TOKENS[0]}"),), timeout=5)


async def test_health_is_open_but_reflection_needs_a_token(secured: LpsApp) -> None:
    async with grpc.aio.insecure_channel(target(secured)) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in reflection.ServerReflectionInfo(ask()):
                pass
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

        metadata = (("authorization", f"Bearer {TOKENS[1]}"),)
        async for answer in reflection.ServerReflectionInfo(ask(), metadata=metadata):
            assert "lps.v1.LlmProviderService" in {
                s.name for s in answer.list_services_response.service
            }
            break


async def test_unknown_methods_do_not_reveal_themselves_without_a_token(secured: LpsApp) -> None:
    async with grpc.aio.insecure_channel(target(secured)) as channel:
        for path in ("/lps.v1.LlmProviderService/DropQueue", "/no.such.Service/Call"):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary(path)(b"", timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, path
        metadata = (("authorization", f"Bearer {TOKENS[0]}"),)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary("/no.such.Service/Call")(b"", metadata=metadata, timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_without_configured_tokens_any_or_no_token_is_accepted(start_lps: Start) -> None:
    app = await start_lps()
    for token in (None, "anything"):
        async with LpsClient(target=target(app), token=token, timeout=10) as client:
            await client.queue_stats()


async def _cj(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    # A subprocess, awaited without blocking: the server runs on this test's event loop.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cj_client.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# --- TLS and mutual TLS ------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_tls_serves_clients_that_trust_the_ca(
    start_lps: Start, certs: Certs, host: str
) -> None:
    app = await start_lps(tls_cert=certs.server_cert, tls_key=certs.server_key)
    async with LpsClient(target=target(app, host), tls_ca=certs.ca, timeout=10) as client:
        assert (await client.submit(submission(1)))[0] == "req-1"


async def test_tls_refuses_plaintext_and_untrusting_clients(start_lps: Start, certs: Certs) -> None:
    app = await start_lps(tls_cert=certs.server_cert, tls_key=certs.server_key)
    async with LpsClient(target=target(app), timeout=3) as plaintext:
        with pytest.raises(UnavailableError):
            await plaintext.queue_stats()
    # Trusting another CA than the one that signed the server's certificate.
    wrong_ca = certs.stranger_cert.replace("stranger.pem", "other-ca.pem")
    async with LpsClient(target=target(app), tls_ca=wrong_ca, timeout=3) as untrusting:
        with pytest.raises(UnavailableError):
            await untrusting.queue_stats()


async def test_mutual_tls_requires_a_client_certificate_from_the_ca(
    start_lps: Start, certs: Certs
) -> None:
    app = await start_lps(
        tls_cert=certs.server_cert, tls_key=certs.server_key, tls_client_ca=certs.ca
    )
    async with LpsClient(
        target=target(app),
        tls_ca=certs.ca,
        tls_cert=certs.client_cert,
        tls_key=certs.client_key,
        timeout=10,
    ) as client:
        assert (await client.submit(submission(1)))[0] == "req-1"
    async with LpsClient(target=target(app), tls_ca=certs.ca, timeout=3) as anonymous:
        with pytest.raises(UnavailableError):
            await anonymous.queue_stats()
    async with LpsClient(
        target=target(app),
        tls_ca=certs.ca,
        tls_cert=certs.stranger_cert,
        tls_key=certs.stranger_key,
        timeout=3,
    ) as stranger:
        with pytest.raises(UnavailableError):
            await stranger.queue_stats()


async def test_mutual_tls_and_tokens_together_through_the_cli(
    start_lps: Start, certs: Certs
) -> None:
    app = await start_lps(
        tls_cert=certs.server_cert,
        tls_key=certs.server_key,
        tls_client_ca=certs.ca,
        auth_tokens=TOKENS,
    )
    args = [
        "submit",
        "--text",
        "one essay",
        "another longer essay",
        "--target",
        f"localhost:{app.grpc_port}",
    ]
    tls = ["--tls-ca", certs.ca, "--tls-cert", certs.client_cert, "--tls-key", certs.client_key]
    code, out, err = await _cj(*args, *tls, "--token", TOKENS[0])
    assert (code, err) == (0, "")
    assert "completed" in out
    code, _, err = await _cj(*args, *tls)
    assert code == 3  # refused: retrying cannot cure a missing token
    assert "UNAUTHENTICATED" in err


# --- the metrics endpoint ----------------------------------------------------------------------


@pytest.mark.parametrize(("host", "loopback_only"), [("127.0.0.1", True), ("0.0.0.0", False)])
async def test_metrics_host_sets_the_listening_address(
    start_lps: Start, host: str, loopback_only: bool
) -> None:
    app = await start_lps(serve_metrics=True, metrics_host=host)
    assert app.metrics_port
    with socket.create_connection(("127.0.0.1", app.metrics_port), timeout=5):
        pass
    assert _listening_address(app.metrics_port) == ("127.0.0.1" if loopback_only else "0.0.0.0")


def _listening_address(port: int) -> str:
    """The local address of the TCP socket listening on `port`, from the kernel's table."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if int(port_hex, 16) == port and state == "0A":  # 0A: LISTEN
            return socket.inet_ntoa(bytes.fromhex(address)[::-1])
    raise AssertionError(f"nothing listens on port {port}")
