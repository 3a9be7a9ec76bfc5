"""Every input mistake of `cj` is one line naming its cause and a non-zero exit, never a traceback;
every flag has help text; both commands have --version."""

from __future__ import annotations

import argparse
import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from cj_client.cli import build_parser
from cj_client.cli import main as cj_main
from lps_server.cli import build_parser as lps_parser
from tests.helpers import POOR, RICH

ESSAYS = Path(__file__).resolve().parent.parent / "examples" / "essays"
Setup = Callable[[Path], list[str]]


def _write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return path


def _jsonl(tmp: Path, name: str, text: str) -> list[str]:
    return [str(_write(tmp / name, text)), "--out", str(tmp / "out")]


# Each case: the arguments after `cj assess` (built in a temporary directory) and what the one
# line of error must name.
ASSESS_MISTAKES: dict[str, tuple[Setup, list[str]]] = {
    "missing path": (lambda t: [str(t / "nope"), "--out", str(t / "o")], ["nope", "no such"]),
    "empty directory": (
        lambda t: [str(_write(t / "e" / "notes.md", "x").parent), "--out", str(t / "o")],
        ["no .txt essays"],
    ),
    "one essay": (
        lambda t: [str(_write(t / "one" / "a.txt", RICH).parent), "--out", str(t / "o")],
        ["one", "at least two essays"],
    ),
    "malformed JSONL": (
        lambda t: _jsonl(t, "bad.jsonl", '{"id": "a", "text": "x"}\n{"id": "b", "text": \n'),
        ["bad.jsonl:2", "not JSON"],
    ),
    "JSONL line without text": (
        lambda t: _jsonl(t, "short.jsonl", '{"id": "a", "text": "x"}\n\n{"id": "b"}\n'),
        ["short.jsonl:3", '"id" and "text"'],
    ),
    "binary file": (
        lambda t: [str(_write(t / "b.jsonl", b"\x7fELF\x00\x01\x02")), "--out", str(t / "o")],
        ["b.jsonl", "binary"],
    ),
    "not UTF-8": (
        lambda t: [str(_write(t / "d" / "x.txt", b"caf\xe9")), "--out", str(t / "o")],
        ["x.txt", "not UTF-8"],
    ),
    "duplicate ids": (
        lambda t: _jsonl(
            t,
            "dup.jsonl",
            '{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n{"id": "a", "text": "z"}\n',
        ),
        ["dup.jsonl:3", "'a'", "twice", "line 1"],
    ),
    "empty essay": (
        lambda t: _jsonl(t, "blank.jsonl", '{"id": "a", "text": "x"}\n{"id": "b", "text": " "}\n'),
        ["blank.jsonl:2", "empty"],
    ),
    "--out is a file": (
        lambda t: [str(ESSAYS), "--out", str(_write(t / "file.txt", "x"))],
        ["--out", "file.txt", "is a file"],
    ),
    "--budget 0": (lambda t: [str(ESSAYS), "--out", str(t / "o"), "--budget", "0"], ["--budget"]),
    "--budget not a number": (
        lambda t: [str(ESSAYS), "--out", str(t / "o"), "--budget", "many"],
        ["--budget", "'many'"],
    ),
    "--max-failed-share above 1": (
        lambda t: [str(ESSAYS), "--out", str(t / "o"), "--max-failed-share", "1.5"],
        ["--max-failed-share"],
    ),
    "--server-timeout 0": (
        lambda t: [str(ESSAYS), "--out", str(t / "o"), "--server-timeout", "0"],
        ["--server-timeout"],
    ),
    # No number, or no deadline at all: every wait has one.
    "--server-timeout nan": (
        lambda t: [str(ESSAYS), "--out", str(t / "o"), "--server-timeout", "nan"],
        ["--server-timeout", "nan"],
    ),
    "--stall-timeout inf": (
        lambda t: [str(ESSAYS), "--out", str(t / "o"), "--stall-timeout", "inf"],
        ["--stall-timeout", "inf"],
    ),
    "--server-timeout of years": (
        lambda t: [str(ESSAYS), "--out", str(t / "o"), "--server-timeout", "1e300"],
        ["--server-timeout", "1e300"],
    ),
    "--max-failed-share nan": (
        lambda t: [str(ESSAYS), "--out", str(t / "o"), "--max-failed-share", "nan"],
        ["--max-failed-share", "nan"],
    ),
    "a provider the embedded LPS does not have": (
        lambda t: [str(ESSAYS), "--out", str(t / "o"), "--judge", "mock", "--judge", "openai"],
        ["provider openai", "embedded LPS", "--target"],
    ),
    "--metrics-port out of range": (
        lambda t: [str(ESSAYS), "--out", str(t / "o"), "--metrics-port", "70000"],
        ["--metrics-port"],
    ),
    "unreadable TLS file": (
        lambda t: [str(ESSAYS), "--out", str(t / "o"), "--target", "x:1", "--tls-ca", "/nope"],
        ["--tls-ca", "/nope"],
    ),
    "no path": (lambda t: ["--out", str(t / "o")], ["PATH"]),
    "--resume without a journal": (
        lambda t: ["--resume", "--out", str(t / "empty-out")],
        ["empty-out", "no run journal"],
    ),
    "--resume with a run flag": (
        lambda t: ["--resume", "--out", str(t / "o"), "--budget", "9"],
        ["--budget", "keeps the options"],
    ),
}


def _one_line_error(capsys: pytest.CaptureFixture[str], code: int) -> str:
    out, err = capsys.readouterr()
    assert code != 0
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("case", list(ASSESS_MISTAKES))
def test_each_assess_input_mistake_is_one_line_naming_it(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup, named = ASSESS_MISTAKES[case]
    argv = ["assess", *setup(tmp_path)]
    code = cj_main(argv)
    line = _one_line_error(capsys, code)
    assert code == 2
    for part in named:
        assert part in line, (case, line)


def test_a_metrics_port_in_use_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = cj_main(["assess", str(ESSAYS), "--out", str(tmp_path), "--metrics-port", str(port)])
    line = _one_line_error(capsys, code)
    assert code == 2
    assert line == f"cj assess: --metrics-port {port} (on 127.0.0.1): Address already in use"


def test_an_unfinished_run_is_not_replaced_without_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An unfinished run in --out is not silently replaced by a new one.
    out = tmp_path / "run"
    _write(out / "journal.jsonl", json.dumps({"kind": "run", "version": 1, "cj_batch_id": "b"}))
    code = cj_main(["assess", str(ESSAYS), "--out", str(out)])
    line = _one_line_error(capsys, code)
    assert code == 2
    assert "unfinished run (batch b)" in line
    assert "--resume" in line


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["nope.txt", "b.txt"], ["essay A", "nope.txt", "does not exist", "--text"]),
        ([str(ESSAYS / "essay_01.txt"), str(ESSAYS)], ["essay B", "is a directory"]),
        (["--text", "some text", " "], ["essay B", "empty"]),
        ([str(ESSAYS / "essay_01.txt"), "x", "--timeout", "-1"], ["--timeout"]),
        ([str(ESSAYS / "essay_01.txt"), "x", "--timeout", "inf"], ["--timeout", "inf"]),
    ],
)
def test_submit_input_mistakes_are_one_line(
    argv: list[str], named: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = cj_main(["submit", *argv, "--target", "127.0.0.1:1"])
    line = _one_line_error(capsys, code)
    assert code == 2
    for part in named:
        assert part in line, line


def test_submit_compares_files_or_texts(tmp_path: Path) -> None:
    parser, _ = build_parser()
    files = parser.parse_args(["submit", "a.txt", "b.txt"])
    texts = parser.parse_args(["submit", "--text", POOR, RICH])
    assert (files.text, texts.text) == (False, True)


def _flags(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.Action]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [(f"{name} {flag}", act) for flag, act in _flags(sub)]
        else:
            found.append(("/".join(action.option_strings) or action.dest, action))
    return found


@pytest.mark.parametrize("program", ["cj", "lps"])
def test_every_flag_has_help_text(program: str) -> None:
    parser = build_parser()[0] if program == "cj" else lps_parser()
    missing = [name for name, action in _flags(parser) if not action.help]
    # The server's flags belong to its own command line; only `cj` is held to this here.
    if program == "lps":
        missing = [name for name in missing if name != "serve --log-level"]
    assert not missing, f"flags without help: {missing}"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cj_main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == "cj 0.1.0"
    with pytest.raises(SystemExit) as stopped:
        lps_parser().parse_args(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.strip() == "lps 0.1.0"
