"""The seams hold: data flows one way (config -> data -> backend -> tracker -> report and check), so the read
side never loads the job runner or Hydra, only the entry point loads the CLI, and Hydra is used through its
public API alone."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

PACKAGES = [REPO / "mnist_bench", REPO / "hydra_plugins"]
READ_SIDE = ["mnist_bench.report.cli", "mnist_bench.check", "mnist_bench.compare", "mnist_bench.reaper"]
# What the read side must not load: Hydra, the job and its runner, the CLI, and any backend's implementation.
JOB_SIDE = ("hydra", "mnist_bench.experiment", "mnist_bench.hydra_app", "mnist_bench.cli", "mnist_bench.stepper")
BACKEND_IMPLEMENTATIONS = "mnist_bench.backends._", "mnist_bench.backends.numpy", "mnist_bench.backends.tf"


def imported_modules(source: Path) -> set[str]:
    """Every module a file imports, at any depth of its code (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def sources() -> list[Path]:
    return [path for package in PACKAGES for path in sorted(package.rglob("*.py"))]


@pytest.mark.parametrize("module", READ_SIDE)
def test_the_read_side_loads_neither_hydra_nor_the_job_runner(module: str) -> None:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    wrong = [m for m in loaded if m.startswith(JOB_SIDE) or m.startswith(BACKEND_IMPLEMENTATIONS)]
    assert wrong == [], f"importing {module} loads {wrong}"


def test_only_the_entry_point_imports_the_cli() -> None:
    importers = [str(path.relative_to(REPO)) for path in sources() if "mnist_bench.cli" in imported_modules(path)]
    assert importers == ["mnist_bench/__main__.py"]


def test_hydra_is_used_through_its_public_api_alone() -> None:
    private = {
        str(path.relative_to(REPO)): sorted(m for m in imported_modules(path) if "._internal" in m)
        for path in sources()
    }
    assert {path: modules for path, modules in private.items() if modules} == {}
