"""The benchmark's processes: a private redis-server, `lps serve`, the echo server."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
from prometheus_client.parser import text_string_to_metric_families

from benchkit.common import ROOT, SCRIPT, BenchError, Sizes

# Children get SIGTERM when the benchmark dies, even by SIGKILL (Linux PR_SET_PDEATHSIG survives
# exec). Set in the child before exec rather than in a preexec_fn, which would make subprocess
# fork this gRPC-using process instead of using vfork.
_EXEC_DYING_WITH_PARENT = (
    "import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


def dying_with_parent(argv: list[str]) -> list[str]:
    """`argv`, run so that it ends when this process ends."""
    return [sys.executable, "-c", _EXEC_DYING_WITH_PARENT, *argv]


def child_env(**lps: object) -> dict[str, str]:
    """This environment without LPS_/OTEL_ variables (so tracing is off), plus `lps` as LPS_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LPS_", "OTEL_"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update({f"LPS_{k.upper()}": str(v) for k, v in lps.items()})
    return env


class Child:
    """A child process with its output in `<logdir>/<name>.log`."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.log = logdir / f"{name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                dying_with_parent(argv), env=env, cwd=ROOT, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def status_kb(self, name: str) -> int:
        """A field of /proc/PID/status in kB (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
        raise BenchError(f"{name} is not in /proc/{self.proc.pid}/status")

    def cpu_s(self) -> float:
        """CPU seconds (user + system, all threads) used so far."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        utime, stime = stat[stat.rindex(")") + 2 :].split()[11:13]
        return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")

    def tail(self, lines: int = 15) -> str:
        """The last lines of the output."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def wait_for_line(self, needle: str, timeout: float = 30.0) -> str:
        """The first output line containing `needle`, once the process has written it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text(errors="replace").splitlines():
                if needle in line:
                    return line
            if not self.alive():
                raise BenchError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            time.sleep(0.02)  # a log file offers nothing to wait on
        raise BenchError(f"{self.name} did not log {needle!r} in {timeout}s:\n{self.tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class Server:
    """A running child server; `target` is host:port, or the URL for Redis."""

    child: Child
    target: str
    metrics_url: str = ""

    def metric_sums(self) -> dict[str, float]:
        """Every sample of /metrics summed over its labels, by sample name."""
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            families = text_string_to_metric_families(response.read().decode())
        sums: dict[str, float] = {}
        for family in families:
            for sample in family.samples:
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
        return sums


def redis_calls(url: str) -> dict[str, int]:
    """Commands Redis has served so far, by name (INFO commandstats), INFO itself left out."""
    with redis.Redis.from_url(url) as client:
        stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items() if "info" not in k}


def calls_per(before: dict[str, int], after: dict[str, int], n: int) -> dict[str, float]:
    """Redis commands per request between two `redis_calls` readings."""
    return {
        k: round((v - before.get(k, 0)) / n, 2) for k, v in after.items() if v > before.get(k, 0)
    }


@contextlib.contextmanager
def redis_server(logdir: Path) -> Iterator[Server]:
    """A private redis-server on a free port, without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not installed (`make redis-server` installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [binary, "--port", str(port), "--dir", str(logdir), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--protected-mode", "no"]  # fmt: skip
    child = Child("redis", argv, env=dict(os.environ), logdir=logdir)
    try:
        child.wait_for_line("Ready to accept connections", timeout=10)
        yield Server(child, f"redis://127.0.0.1:{port}/0")
    finally:
        child.stop()


@contextlib.contextmanager
def lps_serve(name: str, run: Run, **settings: object) -> Iterator[Server]:
    """`lps serve` on ports it picks, with `settings` as LPS_* variables."""
    argv = [sys.executable, "-m", "lps_server.cli", "serve", "--log-level", run.log_level,
            "--host", "127.0.0.1", "--port", "0", "--metrics-host", "127.0.0.1",
            "--metrics-port", "0"]  # fmt: skip
    child = Child(name, argv, env=child_env(**settings), logdir=run.logdir)
    try:
        ports = json.loads(child.wait_for_line('"lps listening'))
        yield Server(
            child,
            f"127.0.0.1:{ports['grpc_port']}",
            f"http://127.0.0.1:{ports['metrics_port']}/metrics",
        )
    finally:
        child.stop()


@contextlib.contextmanager
def echo_serve(run: Run) -> Iterator[Server]:
    """The echo server (`--role echo`) in its own process."""
    argv = [sys.executable, str(SCRIPT), "--role", "echo"]
    child = Child("echo", argv, env=child_env(), logdir=run.logdir)
    try:
        yield Server(child, "127.0.0.1:" + child.wait_for_line("echo listening").split()[-1])
    finally:
        child.stop()


@dataclass(frozen=True)
class Run:
    """What every measurement shares: sizes, the private Redis, the log directory, LPS log level."""

    sizes: Sizes
    redis: Server
    logdir: Path
    log_level: str
