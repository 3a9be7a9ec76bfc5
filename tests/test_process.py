"""`lps serve` as a real process: ports logged, buf curl through reflection, clean SIGTERM."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture
def lps_process() -> Iterator[tuple[subprocess.Popen[str], int]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LPS_GRPC_HOST": "127.0.0.1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lps_server.cli", "serve", "--port", "0", "--metrics-port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.stderr is not None
    port = 0
    for line in proc.stderr:
        match = re.search(r"lps listening grpc=127\.0\.0\.1:(\d+)", line)
        if match:
            port = int(match.group(1))
            assert json.loads(line)["metrics_port"] > 0
            break
    assert port, "the server never logged its ports"
    yield proc, port
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    proc.stderr.close()


def test_buf_curl_submit_through_reflection_then_sigterm_exits_0(
    lps_process: tuple[subprocess.Popen[str], int],
) -> None:
    proc, port = lps_process
    buf = shutil.which("buf", path=str(BIN)) or shutil.which("buf")
    assert buf, "buf is installed by make test (buf-bin)"
    body = {
        "request": {
            "essayA": {"id": "a", "text": "short essay"},
            "essayB": {"id": "b", "text": "a longer and richer essay"},
            "overrides": {"provider": "PROVIDER_MOCK"},
        }
    }
    out = subprocess.run(
        [
            buf,
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "--reflect",
            f"http://127.0.0.1:{port}/lps.v1.LlmProviderService/SubmitComparison",
            "-d",
            json.dumps(body),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    reply = json.loads(out.stdout)
    assert re.fullmatch(r"[0-9a-f-]{36}", reply["requestId"])
    assert reply["status"] == "REQUEST_STATUS_QUEUED"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
