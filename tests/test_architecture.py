"""The import contract (pyproject.toml, `lint-imports`) holds, and fails when a layer is broken."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("lps_server", "cj_client", "generated")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200"},  # one line per contract in the report
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the packages and the contract, to break on purpose."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")


def broken(result: subprocess.CompletedProcess[str]) -> set[str]:
    return {line.removesuffix(" BROKEN") for line in result.stdout.splitlines() if "BROKEN" in line}


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    result = lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_grpc_in_a_core_module_breaks_the_contract(tree: Path) -> None:
    append(tree / "lps_server" / "core" / "domain.py", "import grpc")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert any("nothing reaches gRPC" in name for name in broken(result)), result.stdout


def test_generated_code_in_the_client_engine_breaks_the_contract(tree: Path) -> None:
    append(tree / "cj_client" / "assessment.py", "from generated.lps.v1 import comparison_pb2")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert any(name.startswith("Only the edge") for name in broken(result)), result.stdout
    assert "cj_client.assessment -> generated.lps.v1.comparison_pb2" in result.stdout


def test_the_queue_importing_a_provider_breaks_the_layers(tree: Path) -> None:
    append(tree / "lps_server" / "queue" / "ordering.py", "from lps_server.providers import base")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert any(name.startswith("Server layers") for name in broken(result)), result.stdout


def test_the_domain_importing_the_project_breaks_the_contract(tree: Path) -> None:
    append(tree / "lps_server" / "core" / "domain.py", "from lps_server.core import errors")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert any(name.startswith("The domain imports nothing") for name in broken(result))


def test_an_import_cycle_breaks_the_contract(tree: Path) -> None:
    append(tree / "cj_client" / "models.py", "from cj_client import assessment")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert any(name.startswith("No import cycles") for name in broken(result)), result.stdout
