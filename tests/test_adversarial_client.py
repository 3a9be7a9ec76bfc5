"""An adversary's tests of the CJ client: what a new user or a careful operator does to `cj` that
the other `test_cj_*` modules do not try. Each xfail test names a bug it demonstrates; the others
guard a promise that had no test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from cj_client import (
    Assessment,
    AssessmentOptions,
    CollectorLimits,
    ComparisonSubmission,
    DeadlineExceededError,
    EssayInput,
    LpsClient,
)
from cj_client.cli import main as cj_main
from cj_client.errors import ServerLostError
from cj_client.journal import read_journal
from cj_client.progress import RunProgress
from cj_client.request_ids import comparison_request_id
from lps_server.app import LpsApp
from tests.cj_support import (
    ESSAYS,
    ROOT,
    CountingProvider,
    finish,
    serving,
    start_cj,
    target,
)
from tests.redis_proxy import ReplyDroppingProxy

Start = Callable[..., Awaitable[LpsApp]]


def essays(count: int, *, seed: int = 7) -> list[EssayInput]:
    """`count` essays of different richness (distinct words), so the mock judge tells them apart."""
    rng = random.Random(seed)
    return [
        EssayInput(f"e{i:03d}", " ".join(f"w{rng.randrange(10_000)}" for _ in range(5 + i % 40)))
        for i in range(count)
    ]


def _cj(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`cj` in this process (its own event loop): exit code, stdout, stderr."""
    code = cj_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def _cj_beside(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`cj` in a worker thread, beside a server on this test's event loop."""
    code = await asyncio.to_thread(cj_main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- Never hang: a frozen server -------------------------------------------------------------


class BlackHoleProxy(ReplyDroppingProxy):
    """A TCP proxy (ReplyDroppingProxy's plumbing, for any protocol) that, once `freeze()` is
    called, forwards nothing in either direction and answers nothing, keeping every connection
    open: a frozen server (SIGSTOP) or a network black hole, as the client sees it."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self._frozen = False

    def freeze(self) -> None:
        self._frozen = True

    async def _pipe_up(
        self,
        client_r: asyncio.StreamReader,
        server_w: asyncio.StreamWriter,
        client_w: asyncio.StreamWriter,
    ) -> None:
        await self._forward(client_r, server_w)

    async def _pipe_down(
        self, server_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        await self._forward(server_r, client_w)

    async def _forward(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            if self._frozen:
                continue  # swallowed: nothing gets through, nothing is closed
            sink.write(data)
            await sink.drain()


async def test_a_frozen_server_is_given_up_by_the_server_timeout_however_much_is_pending() -> None:
    provider = CountingProvider()
    provider.gate = asyncio.Event()  # nothing completes: the whole wave stays pending
    limits = CollectorLimits(server_timeout_s=1.0, stall_s=0.3, lookup_timeout_s=0.5)
    # Stall, the server timeout and one lookup's deadline, with a second to spare.
    bound = limits.stall_s + limits.server_timeout_s + limits.lookup_timeout_s + 1.0
    try:
        async with (
            serving(provider) as app,
            BlackHoleProxy(app.grpc_port) as proxy,
            LpsClient(target=f"127.0.0.1:{proxy.port}", timeout=5) as client,
        ):
            assessment = Assessment(
                essays(320),  # one wave of 160 comparisons
                client=client,
                options=AssessmentOptions(budget=160),
                limits=limits,
            )
            run = asyncio.create_task(assessment.run())
            async with asyncio.timeout(30):
                await provider.entered.wait()
            proxy.freeze()
            frozen_at = time.monotonic()
            try:
                async with asyncio.timeout(bound):
                    with pytest.raises(ServerLostError):
                        await run
            finally:
                run.cancel()
                with contextlib.suppress(BaseException):
                    await run
                provider.gate.set()
            assert time.monotonic() - frozen_at < bound
    finally:
        provider.gate.set()


async def test_one_comparison_against_a_black_hole_ends_at_its_deadline() -> None:
    async with serving(CountingProvider()) as app, BlackHoleProxy(app.grpc_port) as proxy:
        proxy.freeze()  # connections are taken, nothing ever comes back
        async with LpsClient(target=f"127.0.0.1:{proxy.port}", timeout=5) as client:
            started = time.monotonic()
            with pytest.raises(DeadlineExceededError, match=r"within 1 s"):
                await client.submit_and_wait(essay_pair(), timeout=1.0)
            # The call's time, not the server's stop after it: that may wait its whole grace
            # (5 s) for the call the black hole holds (it failed so about one run in three).
            elapsed = time.monotonic() - started
    assert elapsed < 3.0


def essay_pair() -> ComparisonSubmission:
    first, second = essays(2)
    return ComparisonSubmission(first, second)


# --- Resume: the journal after a crash --------------------------------------------------------


def _crash(out: Path, *, lost_results: int, cut_last: bool) -> None:
    """Make a finished run's journal look like that of a process killed near its end: no end
    record, the last `lost_results` results never written and, with `cut_last`, the result before
    them cut short mid-line (a write the crash interrupted)."""
    path = out / "journal.jsonl"
    lines = [
        line for line in path.read_text().splitlines(keepends=True) if '"kind": "end"' not in line
    ]
    assert all('"kind": "result"' in line for line in lines[-lost_results - 1 :])
    lines = lines[: len(lines) - lost_results]
    if cut_last:
        lines[-1] = lines[-1][: len(lines[-1]) // 2]
    path.write_text("".join(lines))


async def test_a_resumed_run_after_a_line_cut_short_leaves_a_readable_journal(
    lps: LpsApp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["assess", str(ESSAYS), "--out", str(out), "--target", target(lps), "--quiet"]
    code, _, err = await _cj_beside(capsys, *argv, "--budget", "24")
    assert code == 0, err
    _crash(out, lost_results=2, cut_last=True)
    code, _, err = await _cj_beside(capsys, *argv[:1], "--resume", *argv[2:])
    assert code == 0, err
    # Appended after the cut line, the first new record was glued to it: "not a journal line".
    contents = read_journal(out)
    assert contents.finished
    assert len(contents.results) == 24


async def test_a_resumed_run_keeps_the_batching_mode_it_began_with(
    lps: LpsApp,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "run"
    monkeypatch.setenv("CJ_LLM_BATCHING_MODE", "per_request")
    argv = ["assess", str(ESSAYS), "--out", str(out), "--target", target(lps), "--quiet"]
    code, _, err = await _cj_beside(capsys, *argv, "--budget", "24")
    assert code == 0, err
    _crash(out, lost_results=2, cut_last=False)
    monkeypatch.setenv("CJ_LLM_BATCHING_MODE", "serial_bundle")
    code, _, err = await _cj_beside(capsys, *argv[:1], "--resume", *argv[2:])
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["effective_batching_mode"] == "per_request"


async def test_a_resume_over_changed_essays_is_refused_and_changes_nothing(
    lps: LpsApp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "essays"
    folder.mkdir()
    for e in essays(6):
        (folder / f"{e.id}.txt").write_text(e.text)
    out = tmp_path / "run"
    argv = ["assess", str(folder), "--out", str(out), "--target", target(lps), "--quiet"]
    code, _, err = await _cj_beside(capsys, *argv, "--budget", "9")
    assert code == 0, err
    _crash(out, lost_results=2, cut_last=False)
    before = (out / "journal.jsonl").read_bytes()
    (folder / "e003.txt").write_text("Rewritten after the run began.")
    code, _, err = await _cj_beside(capsys, *argv[:1], "--resume", *argv[2:])
    assert code == 2
    assert err.strip().splitlines() == [
        f"cj assess: {out}: the essays differ from those the journaled run began with "
        "(changed, added or removed); start a new run instead"
    ]
    assert (out / "journal.jsonl").read_bytes() == before


@pytest.mark.slow
async def test_a_crashed_run_resumed_pays_for_every_comparison_once(tmp_path: Path) -> None:
    """SIGKILL, not Ctrl-C: nothing of cj's own runs at the end, only what the journal holds."""
    provider = CountingProvider(latency_ms=50)
    out = tmp_path / "run"
    budget = 48
    async with serving(provider) as app:
        argv = ["assess", str(ESSAYS), "--out", str(out), "--target", target(app), "--quiet"]
        cj = await start_cj(*argv, "--budget", str(budget))
        async with asyncio.timeout(30):
            await provider.reached(20).wait()
        cj.kill()
        code, _, _ = await finish(cj)
        assert code == -9
        assert not (out / "summary.json").exists()
        code, _, err = await finish(
            await start_cj(
                "assess", "--resume", "--out", str(out), "--target", target(app), "--quiet"
            )
        )
        assert code == 0, err
    contents = read_journal(out)
    assert contents.finished
    assert len(contents.results) == budget
    # Those in flight at the crash were sent again under their ids and answered from the store.
    assert set(provider.asked) == set(contents.results)
    assert set(provider.asked.values()) == {1}


def _small_files() -> None:
    # In the child, before exec: a file-size limit, as a full disk or a quota would be.
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


@pytest.mark.slow
async def test_a_journal_that_cannot_be_written_is_named_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    async with serving(CountingProvider()) as app:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cj_client.cli", "assess", str(ESSAYS), "--out", str(out),
            "--budget", "48", "--target", target(app), "--quiet",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=_small_files,
        )  # fmt: skip
        code, _, err = await finish(proc)
    assert code != 0
    assert "Traceback" not in err, err
    assert "journal.jsonl" in err
    assert "File too large" in err  # the cause, as the system gave it


@pytest.mark.slow
async def test_a_run_stopped_by_its_unwritable_journal_resumes_to_the_end_paying_once(
    tmp_path: Path,
) -> None:
    # Exit 6 says "resumable once there is room": the journal it leaves must be readable and
    # --resume must finish the run, the comparisons answered but not yet journaled at the
    # failure answered again from the server's store, not by the provider.
    out = tmp_path / "run"
    provider = CountingProvider()
    budget = 48
    async with serving(provider) as app:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cj_client.cli", "assess", str(ESSAYS), "--out", str(out),
            "--budget", str(budget), "--target", target(app), "--quiet",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=_small_files,
        )  # fmt: skip
        code, _, err = await finish(proc)
        assert code == 6, err
        read_journal(out)  # still a whole journal
        code, _, err = await finish(
            await start_cj(
                "assess", "--resume", "--out", str(out), "--target", target(app), "--quiet"
            )
        )
        assert code == 0, err
    contents = read_journal(out)
    assert contents.finished
    assert len(contents.results) == budget
    assert set(provider.asked) == set(contents.results)
    assert set(provider.asked.values()) == {1}, "a comparison was paid for twice"


# --- Input mistakes found before anything is sent -------------------------------------------


async def test_a_batch_id_too_long_for_lps_is_an_input_mistake(
    lps: LpsApp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = await _cj_beside(
        capsys, "assess", str(ESSAYS), "--out", str(tmp_path / "run"), "--target", target(lps),
        "--quiet", "--batch-id", "b" * 250,
    )  # fmt: skip
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "--batch-id" in err


async def test_long_essay_ids_are_ranked(
    lps: LpsApp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        {"id": f"{i}-" + "long-file-name-" * 8, "text": e.text} for i, e in enumerate(essays(4))
    ]
    source = tmp_path / "essays.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "run"
    code, _, err = await _cj_beside(
        capsys, "assess", str(source), "--out", str(out), "--target", target(lps), "--quiet",
        "--budget", "6",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["comparisons_completed"] == 6


def _not_utf8_name(tmp: Path) -> list[str]:
    folder = tmp / "essays"
    folder.mkdir()
    for e in essays(3):
        (folder / f"{e.id}.txt").write_text(e.text)
    # A name from an archive made where file names are Latin-1 ("Zoë" as one byte 0xEB).
    with open(os.fsencode(folder) + b"/Zo\xeb.txt", "w") as handle:
        handle.write("An essay whose file name is not UTF-8.")
    return [str(folder)]


def _lone_surrogate(tmp: Path) -> list[str]:
    source = tmp / "essays.jsonl"
    # JSON written by a tool that cut a UTF-16 string in the middle of an emoji.
    source.write_text(
        '{"id": "a", "text": "A complete essay."}\n{"id": "b", "text": "Cut short \\ud83d"}\n'
    )
    return [str(source)]


@pytest.mark.parametrize("setup", [_not_utf8_name, _lone_surrogate], ids=["file name", "jsonl"])
def test_essays_that_are_not_utf8_are_one_line_input_mistakes(
    setup: Callable[[Path], list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*setup(tmp_path), "--out", str(tmp_path / "run"), "--quiet"]
    code, out, err = _cj(
        capsys, "assess", *argv, "--target", "127.0.0.1:1", "--server-timeout", "1"
    )
    assert code == 2, err
    assert "Traceback" not in out + err
    assert len(err.strip().splitlines()) == 1, err


def test_a_target_port_out_of_range_is_an_input_mistake(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _cj(
        capsys, "assess", str(ESSAYS), "--out", str(tmp_path / "run"), "--quiet",
        "--target", "127.0.0.1:99999", "--server-timeout", "1",
    )  # fmt: skip
    assert code == 2, err
    assert "--target" in err
    assert "99999" in err


# --- The embedded LPS --------------------------------------------------------------------------


@pytest.fixture
def lps_logger() -> Iterator[None]:
    """Puts the `lps_server` logger back as it was: the embedded LPS of an in-process `cj assess`
    takes it over for the rest of the process (its own handler, no propagation to the root), which
    would hide LPS's logs from every later test."""
    logger = logging.getLogger("lps_server")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers, logger.level, logger.propagate = saved


@pytest.mark.redis
@pytest.mark.usefixtures("lps_logger")
async def test_the_embedded_lps_keeps_to_a_local_queue_whatever_the_shell_exports(
    redis_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import redis.asyncio as aioredis

    monkeypatch.setenv("LPS_QUEUE_BACKEND", "redis")
    monkeypatch.setenv("LPS_REDIS_URL", redis_url)
    code, _, err = await _cj_beside(
        capsys, "assess", str(ESSAYS), "--out", str(tmp_path / "run"), "--budget", "8", "--quiet"
    )
    assert code == 0, err
    store = aioredis.from_url(redis_url)
    try:
        assert await store.dbsize() == 0  # nothing of this run's went through that Redis
    finally:
        await store.aclose()


@pytest.mark.usefixtures("lps_logger")
def test_the_embedded_lps_ignores_a_servers_limits_on_its_clients(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A shell that runs `lps serve` for many clients may cap what each sends. The embedded
    # server has one client, cj, which sends 64 requests a message: taken over, such a cap
    # refused the whole run (exit 3, nothing compared).
    monkeypatch.setenv("LPS_MAX_REQUESTS_PER_MESSAGE", "2")
    monkeypatch.setenv("LPS_MAX_STREAMS_PER_CLIENT", "1")
    monkeypatch.setenv("LPS_RATE_LIMIT_PER_SECOND", "1")
    monkeypatch.setenv("LPS_RATE_LIMIT_BURST", "1")
    out = tmp_path / "run"
    code, _, err = _cj(capsys, "assess", str(ESSAYS), "--out", str(out), "--quiet", "--budget", "8")
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["comparisons_completed"] == 8


@pytest.mark.usefixtures("lps_logger")
def test_a_bad_lps_setting_for_the_embedded_lps_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LPS_MOCK_ERROR_RATE", "abc")
    code, out, err = _cj(capsys, "assess", str(ESSAYS), "--out", str(tmp_path / "run"), "--quiet")
    assert code == 2, err
    assert "Traceback" not in out + err
    assert len(err.strip().splitlines()) == 1
    assert "LPS_MOCK_ERROR_RATE" in err


@pytest.mark.usefixtures("lps_logger")
def test_the_embedded_lps_takes_the_mock_settings_and_ignores_a_servers_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a shell that runs `lps serve` exports: each would make the embedded server refuse
    # cj (tokens, TLS files that are not there), leave the process (Redis) or spend money.
    monkeypatch.setenv("LPS_AUTH_TOKENS", "secret")
    monkeypatch.setenv("LPS_TLS_CERT", str(tmp_path / "missing.pem"))
    monkeypatch.setenv("LPS_TLS_KEY", str(tmp_path / "missing.key"))
    monkeypatch.setenv("LPS_QUEUE_BACKEND", "redis")
    monkeypatch.setenv("LPS_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("LPS_OPENAI_API_KEY", "sk-not-to-be-used")
    monkeypatch.setenv("LPS_MOCK_MODEL", "mock-from-the-shell")  # honoured: it tunes the mock
    out = tmp_path / "run"
    code, _, err = _cj(capsys, "assess", str(ESSAYS), "--out", str(out), "--budget", "8", "--quiet")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["comparisons_completed"] == 8
    assert [j["judge"] for j in summary["judges"]] == ["mock:mock-from-the-shell"]


@pytest.mark.usefixtures("lps_logger")  # only a safety net for later tests, should this fail
def test_an_in_process_cj_assess_leaves_the_lps_server_logger_as_it_found_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("lps_server")
    before = (list(logger.handlers), logger.level, logger.propagate)
    code, _, err = _cj(
        capsys, "assess", str(ESSAYS), "--out", str(tmp_path / "run"), "--budget", "8", "--quiet"
    )
    assert code == 0, err
    assert (list(logger.handlers), logger.level, logger.propagate) == before
    # And so a program that embeds cj still sees LPS's logs through its own handlers.
    with caplog.at_level(logging.WARNING):
        logging.getLogger("lps_server.app").warning("after the run")
    assert [r.getMessage() for r in caplog.records] == ["after the run"]


def test_request_ids_of_runs_whose_ids_split_alike_at_their_colons_differ() -> None:
    # Batch and essay ids may hold ':' (file names do): run "x", comparison 1 of essays "2" and
    # "b:c" reads "x:1:2:b:c:..." like run "x:1", comparison 2 of "b" and "c". Sharing one LPS,
    # the second would be answered the first's verdict; the digest of the pair's ids keeps them
    # apart. (Correlation ids may coincide so: results are never matched by them, docs/cj.md.)
    def of(batch: str, n: int, a: str, b: str) -> str:
        sub = ComparisonSubmission(
            essay_a=EssayInput(a, "same text"), essay_b=EssayInput(b, "same text"),
            request_id="", instructions="Which is better?",
        )  # fmt: skip
        return comparison_request_id(batch, n, sub)

    first, second = of("x", 1, "2", "b:c"), of("x:1", 2, "b", "c")
    assert first.rsplit(":", 1)[0] == second.rsplit(":", 1)[0]  # alike but for the digest
    assert first != second


# --- Never lie ---------------------------------------------------------------------------------


async def test_a_run_without_a_single_judgement_never_ends_as_a_ranking(
    start_lps: Start, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = await start_lps(mock_error_rate=1.0, queue_max_retries=0)
    out = tmp_path / "run"
    code, stdout, _ = await _cj_beside(
        capsys, "assess", str(ESSAYS), "--out", str(out), "--target", target(app), "--quiet",
        "--max-failed-share", "1",
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["comparisons_completed"] == 0
    assert code != 0, stdout
    assert not summary["complete"]
    assert "ranked 16 essays" not in stdout


async def test_a_rate_limited_run_reports_its_refusals_at_most_once_a_wave() -> None:
    provider = CountingProvider()
    notices: list[str] = []

    def progress(snapshot: RunProgress) -> None:
        if snapshot.notice:
            notices.append(snapshot.notice)

    async with (
        serving(provider, rate_limit_per_second=100.0, rate_limit_burst=8) as app,
        LpsClient(target=target(app), timeout=10) as client,
    ):
        report = await Assessment(
            essays(64), client=client, options=AssessmentOptions(budget=96), progress=progress
        ).run()
    assert report.completed == 96
    assert sum(provider.asked.values()) == 96  # paid once, however often it was refused
    assert notices
    assert all("rate limit" in n for n in notices)
    assert len(notices) <= report.waves, notices


# --- Output -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_closed_stdout_loses_neither_the_outputs_nor_a_clean_exit(tmp_path: Path) -> None:
    out = tmp_path / "run"
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (`head`) has gone before cj prints anything
    try:
        done = subprocess.run(
            [sys.executable, "-m", "cj_client.cli", "assess", str(ESSAYS), "--out", str(out),
             "--budget", "8", "--quiet", "--show-results"],
            stdout=write_end, stderr=subprocess.PIPE, cwd=ROOT, timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
    finally:
        os.close(write_end)
    err = done.stderr.decode()
    assert (out / "ranking.csv").exists(), err
    assert (out / "summary.json").exists(), err
    assert "Traceback" not in err


# --- scripts/diagnose ---------------------------------------------------------------------------


def _diagnose(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "diagnose"), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout,
    )  # fmt: skip


@pytest.mark.slow
def test_diagnose_refuses_a_server_timeout_that_is_not_a_number() -> None:
    try:
        done = _diagnose(
            "execute", str(ESSAYS), "--target", "127.0.0.1:1", "--server-timeout", "nan",
            timeout=5,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("diagnose still waiting after 5 s for a server that is down")
    assert done.returncode == 2, done.stderr
    assert "--server-timeout" in done.stderr


@pytest.mark.slow
async def test_diagnose_names_an_output_file_it_cannot_write(start_lps: Start) -> None:
    app = await start_lps(serve_metrics=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "scripts" / "diagnose"), "execute", str(ESSAYS),
        "--budget", "8", "--target", target(app), "--json", "/dev/null/summary.json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    _, raw = await asyncio.wait_for(proc.communicate(), 60)
    err = raw.decode()
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    assert "/dev/null/summary.json" in err


async def test_diagnose_tells_too_many_failures_from_a_refusal(start_lps: Start) -> None:
    app = await start_lps(mock_error_rate=1.0, queue_max_retries=0, serve_metrics=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "scripts" / "diagnose"), "execute", str(ESSAYS),
        "--budget", "8", "--target", target(app),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    _, raw = await asyncio.wait_for(proc.communicate(), 60)
    err = raw.decode()
    assert "too_many_failures" in err
    assert proc.returncode == 5, err
