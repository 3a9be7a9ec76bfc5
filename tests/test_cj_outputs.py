"""`cj assess` on a disk that will not take its files: a full filesystem, a directory made read-only
during the run, a directory where a file goes, a full stdout. Each ends in one line naming the
file and the system's reason with a documented exit code, leaves no file cut short, and (when the
run had ended) stays resumable: `--resume` writes the files, asking the provider nothing again.

The full disks are real: a small tmpfs mounted for the test (skipped where mounting is not
allowed), a file-size limit, /dev/full. A read-only directory is a real chmod; a root test process
runs `cj` without CAP_DAC_OVERRIDE so that the mode binds it as it binds any user.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cj_client.cli import main as cj_main
from cj_client.journal import read_journal
from lps_server.app import LpsApp
from tests.cj_support import ESSAYS, ROOT, CountingProvider, finish, serving, target

WAIT_S = 60.0
OUTPUTS = ("ranking.csv", "ranking.json", "summary.json", "scores.png")


class SmallDisk:
    """A tmpfs of a few pages mounted at `path`: a disk that really fills up."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        path.mkdir()
        self._mount("-o", f"size={size}", "-t", "tmpfs", "tmpfs", str(path))

    def resize(self, size: str) -> None:
        """Grow (or shrink) the disk in place; its files stay."""
        self._mount("-o", f"remount,size={size}", str(self.path))

    def free_bytes(self) -> int:
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True)

    @staticmethod
    def _mount(*args: str) -> None:
        done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise OSError(f"mount {' '.join(args)}: {done.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 1 MiB tmpfs under tmp_path; the test skips where this process may not mount one."""
    try:
        disk = SmallDisk(tmp_path / "disk", "1m")
    except (OSError, FileNotFoundError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield disk
    finally:
        disk.unmount()


async def _cj(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`cj` in a worker thread, beside a server on this test's event loop."""
    code = await asyncio.to_thread(cj_main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _assess(out: Path, app: LpsApp, *extra: str) -> list[str]:
    return ["assess", str(ESSAYS), "--out", str(out), "--target", target(app), "--quiet", *extra]


def _resume(out: Path, app: LpsApp, *extra: str) -> list[str]:
    return ["assess", "--resume", "--out", str(out), "--target", target(app), "--quiet", *extra]


def _leftovers(out: Path) -> list[str]:
    """Temporary files of a write that failed (none may stay)."""
    return sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp"))


def _paid_once(provider: CountingProvider, out: Path, budget: int) -> None:
    contents = read_journal(out)
    assert contents.finished
    assert len(contents.results) == budget
    assert set(provider.asked) == set(contents.results)
    assert set(provider.asked.values()) == {1}, "a comparison was paid for twice"


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err, err
    assert "Exception ignored" not in err, err


# --- A full disk ----------------------------------------------------------------------------------


async def test_a_full_disk_met_by_the_files_leaves_the_old_ones_whole_and_resumes(
    small_disk: SmallDisk, capsys: pytest.CaptureFixture[str]
) -> None:
    out = small_disk.path / "run"
    provider = CountingProvider()
    async with serving(provider) as app:
        code, _, err = await _cj(capsys, *_assess(out, app, "--budget", "8"))
        assert code == 0, err
        first = json.loads((out / "summary.json").read_text())["cj_batch_id"]
        # Room for a new journal like the first and the small files, not for the plot (~50 KB).
        filler = small_disk.path / "filler"
        filler.write_bytes(b"\0" * (small_disk.free_bytes() - 28 * 1024))
        provider.calls.clear()
        code, stdout, err = await _cj(capsys, *_assess(out, app, "--budget", "8", "--plot"))
        _no_traceback(err)
        assert code == 7, err
        lines = err.strip().splitlines()
        assert f"cj assess: {out / 'scores.png'}: cannot write it: No space left on device" in lines
        assert lines[-1].endswith(f"cj assess --resume --out {out} --plot"), err
        assert "wrote " + str(out / "summary.json") not in stdout
        # All or none: the first run's files are as they were, whole, and no temporary is left.
        assert json.loads((out / "summary.json").read_text())["cj_batch_id"] == first
        assert not (out / "scores.png").exists()
        assert _leftovers(out) == []
        second = read_journal(out)
        assert not second.finished  # the run ended, but the end waits for its files
        filler.unlink()
        code, _, err = await _cj(capsys, *_resume(out, app, "--plot"))
        assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cj_batch_id"] == second.header["cj_batch_id"] != first
    assert summary["complete"] is True
    assert (out / "scores.png").read_bytes().startswith(b"\x89PNG")
    _paid_once(provider, out, 8)


async def test_a_journal_and_files_on_a_full_disk_end_in_lines_not_a_traceback(
    small_disk: SmallDisk, capsys: pytest.CaptureFixture[str]
) -> None:
    # The journal fills the disk first (exit 6); then the files meet the same full disk.
    small_disk.resize("8k")
    out = small_disk.path / "run"
    provider = CountingProvider()
    async with serving(provider) as app:
        code, _, err = await _cj(capsys, *_assess(out, app, "--budget", "48"))
        _no_traceback(err)
        assert code == 6, err
        lines = err.strip().splitlines()
        assert any("journal.jsonl: cannot write the run journal: No space left" in x for x in lines)
        failed = [x for x in lines if "cannot write it: No space left on device" in x]
        assert len(failed) == 1, err
        assert any(name in failed[0] for name in OUTPUTS), failed
        assert lines[-1] == f"cj assess: continue the run with: cj assess --resume --out {out}"
        assert [p.name for p in out.iterdir()] == ["journal.jsonl"]  # nothing cut short
        small_disk.resize("1m")
        code, _, err = await _cj(capsys, *_resume(out, app))
        assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["comparisons_completed"] == 48
    _paid_once(provider, out, 48)


async def test_a_disk_too_full_for_the_journals_header_is_not_offered_a_resume(
    small_disk: SmallDisk, capsys: pytest.CaptureFixture[str]
) -> None:
    out = small_disk.path / "run"
    out.mkdir()
    filler = small_disk.path / "filler"
    filler.write_bytes(b"\0" * small_disk.free_bytes())
    async with serving(CountingProvider()) as app:
        code, _, err = await _cj(capsys, *_assess(out, app, "--budget", "8"))
        _no_traceback(err)
        assert code == 6, err
        lines = err.strip().splitlines()
        assert lines[0].endswith(
            "journal.jsonl: cannot write the run journal: No space left on device (make room, "
            "or lift the quota or file-size limit)"
        )
        assert "--resume" not in err  # nothing was journaled: there is nothing to continue
        filler.unlink()
        code, _, err = await _cj(capsys, *_assess(out, app, "--budget", "8"))
        assert code == 0, err


def _file_size_limit() -> None:
    # In the child, before exec: large enough for the journal, not for the plot.
    resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))


@pytest.mark.slow
async def test_a_file_size_limit_met_by_the_plot_is_named_and_resumable(tmp_path: Path) -> None:
    # The same ending as a full disk, for any user: a quota or file-size limit.
    out = tmp_path / "run"
    provider = CountingProvider()
    async with serving(provider) as app:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cj_client.cli", *_assess(out, app, "--budget", "8", "--plot"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=_file_size_limit,
        )  # fmt: skip
        code, _, err = await finish(proc)
        _no_traceback(err)
        assert code == 7, err
        assert f"{out / 'scores.png'}: cannot write it: File too large" in err
        assert sorted(p.name for p in out.iterdir()) == ["journal.jsonl"]
        code, _, err = await _cj_process(*_resume(out, app, "--plot"))
        assert code == 0, err
    assert (out / "scores.png").exists()
    _paid_once(provider, out, 8)


# --- A directory made read-only, a directory where a file goes -----------------------------------

_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2


def _bound_by_file_modes() -> None:
    # In the child, before exec: root without the capabilities that ignore file modes.
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _skip_unless_file_modes_bind_children(probe: Path) -> None:
    probe.mkdir(mode=0o555)
    try:
        done = subprocess.run(
            ["sh", "-c", f"touch {probe}/x"], capture_output=True, check=False,
            preexec_fn=_bound_by_file_modes if os.geteuid() == 0 else None,
        )  # fmt: skip
    except subprocess.SubprocessError as exc:  # the capability could not be dropped
        pytest.skip(f"file modes cannot be made to bind a child process here: {exc}")
    if done.returncode == 0:
        pytest.skip("file modes do not bind a child process here")


async def _cj_process(*argv: str) -> tuple[int, str, str]:
    """`cj` as its own process, held to file modes even when the test runs as root."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cj_client.cli", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=_bound_by_file_modes if os.geteuid() == 0 else None,
    )  # fmt: skip
    return await finish(proc)


@pytest.mark.slow
async def test_an_output_directory_made_read_only_during_the_run_is_named_and_resumable(
    tmp_path: Path,
) -> None:
    _skip_unless_file_modes_bind_children(tmp_path / "probe")
    out = tmp_path / "run"
    provider = CountingProvider()
    provider.gate = asyncio.Event()  # the run's calls wait until the directory is read-only
    async with serving(provider) as app:
        run = asyncio.create_task(_cj_process(*_assess(out, app, "--budget", "24")))
        async with asyncio.timeout(WAIT_S):
            await provider.entered.wait()
        out.chmod(0o555)  # the journal, open already, is still written; no new file can be made
        provider.gate.set()
        try:
            code, _, err = await run
        finally:
            out.chmod(0o755)
        _no_traceback(err)
        assert code == 7, err
        lines = err.strip().splitlines()
        assert lines[0] == f"cj assess: {out / 'ranking.csv'}: cannot write it: Permission denied"
        assert lines[-1].endswith(f"cj assess --resume --out {out}"), err
        assert sorted(p.name for p in out.iterdir()) == ["journal.jsonl"]
        code, _, err = await _cj_process(*_resume(out, app))
        assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["complete"] is True
    _paid_once(provider, out, 24)


async def test_a_directory_put_where_a_file_goes_during_the_run_is_named_and_resumable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    provider = CountingProvider()
    provider.gate = asyncio.Event()
    async with serving(provider) as app:
        run = asyncio.create_task(_cj(capsys, *_assess(out, app, "--budget", "24")))
        async with asyncio.timeout(WAIT_S):
            await provider.entered.wait()
        (out / "summary.json").mkdir()
        provider.gate.set()
        code, _, err = await run
        _no_traceback(err)
        assert code == 7, err
        assert f"cj assess: {out / 'summary.json'}: cannot write it: Is a directory" in err
        # Found before any file was renamed into place: none of them is written.
        assert sorted(p.name for p in out.iterdir()) == ["journal.jsonl", "summary.json"]
        (out / "summary.json").rmdir()
        code, _, err = await _cj(capsys, *_resume(out, app))
        assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["complete"] is True
    _paid_once(provider, out, 24)


@pytest.mark.parametrize("name", ["summary.json", "journal.jsonl"])
async def test_a_directory_where_a_file_goes_is_refused_before_anything_is_sent(
    lps: LpsApp, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    out = tmp_path / "run"
    (out / name).mkdir(parents=True)
    code, _, err = await _cj(capsys, *_assess(out, lps, "--budget", "8"))
    assert code == 2, err
    assert err.strip().splitlines() == [
        f"cj assess: --out {out}: {name} is a directory, not a file; remove it first"
    ]
    assert sorted(p.name for p in out.iterdir()) == [name]


# --- stdout ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_report_that_cannot_be_written_to_stdout_is_named_and_the_files_are_kept(
    tmp_path: Path,
) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    out = tmp_path / "run"
    with open("/dev/full", "wb") as full:  # every write: No space left on device
        done = subprocess.run(
            [sys.executable, "-m", "cj_client.cli", "assess", str(ESSAYS), "--out", str(out),
             "--budget", "8", "--quiet"],
            stdout=full, stderr=subprocess.PIPE, cwd=ROOT, timeout=WAIT_S,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
    err = done.stderr.decode()
    _no_traceback(err)
    assert done.returncode == 7, err
    assert err.strip().splitlines()[-1] == (
        "cj assess: stdout: cannot write it: No space left on device"
    )
    # Only the report is lost: the files were written first, and the run is finished.
    for name in OUTPUTS[:3]:
        assert (out / name).exists(), name
    assert read_journal(out).finished
