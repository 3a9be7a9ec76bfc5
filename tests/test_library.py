"""The library's public surface is pinned, and the example in docs/library.md runs as written."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import cj_client
from lps_server.app import LpsApp

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = [
    "Ack",
    "AlreadyExistsError",
    "Assessment",
    "AssessmentError",
    "AssessmentOptions",
    "AssessmentReport",
    "BatchConfig",
    "BatchJobView",
    "CjSettings",
    "CollectorLimits",
    "ComparisonOutcome",
    "ComparisonSubmission",
    "DeadlineExceededError",
    "EssayInput",
    "EssayScore",
    "FieldViolation",
    "InputError",
    "InvalidRequestError",
    "JournalContents",
    "JournalError",
    "JournalWriteError",
    "LLMBatchingMode",
    "LimitExceededError",
    "LpsClient",
    "LpsClientError",
    "NotFoundError",
    "PermissionDeniedError",
    "QueueFullError",
    "QueueStatsView",
    "ResourceExhaustedError",
    "RunProgress",
    "RunRefusedError",
    "Scores",
    "ServerLostError",
    "TooManyFailuresError",
    "UnauthenticatedError",
    "UnavailableError",
    "journaled_options",
    "load_essays",
    "read_journal",
]


def test_the_public_surface_is_pinned() -> None:
    assert cj_client.__all__ == PUBLIC
    for name in PUBLIC:
        assert getattr(cj_client, name) is not None


async def test_the_documented_example_runs(lps: LpsApp, tmp_path: Path) -> None:
    text = (ROOT / "docs" / "library.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    # The example names the default port; this test's server has a free one.
    assert '"127.0.0.1:50051"' in example
    script = tmp_path / "example.py"
    script.write_text(example.replace("127.0.0.1:50051", f"127.0.0.1:{lps.grpc_port}"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0] == "one comparison: completed essay_b"
    assert lines[1] == "stop reason: budget"
    assert lines[2].split()[:2] == ["1", "rich"]
    assert len(lines) == 6
