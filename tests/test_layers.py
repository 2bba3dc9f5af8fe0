"""The seams hold: data flows one way (config -> data -> backend -> tracker -> report and check), so the read
side never loads the job runner or Hydra, only the entry point loads the CLI, and Hydra is used through its
public API alone."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from mnist_bench.config import Config, changes_numbers

PACKAGES = [REPO / "mnist_bench", REPO / "hydra_plugins"]
READ_SIDE = ["mnist_bench.report.cli", "mnist_bench.check.cli", "mnist_bench.compare", "mnist_bench.reaper"]
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


def test_a_backend_reads_what_is_computed_never_how_the_run_is_kept() -> None:
    """Backends get the data as arrays and the config's numbers: none reads where a run is tracked, how it is
    shown or resumed (config.changes_numbers' run options), or where the data came from."""
    run_options = {f.name for f in dataclasses.fields(Config) if not changes_numbers(f.name)} | {"dataset"}
    assert {"tracking", "timing", "resume", "progress"} <= run_options  # the definition this test leans on
    reads = {
        f"{path.relative_to(REPO)}:{node.lineno} .{node.attr}"
        for path in [*sorted((REPO / "mnist_bench" / "backends").glob("*.py")), REPO / "mnist_bench" / "stepper.py"]
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in run_options
    }
    assert reads == set()


def readme_module_map() -> set[str]:
    """The files the README's module table names: paths relative to each row's first one, ``{a,b}_x.py``
    expanded, a folder standing for every file in it."""
    text = (REPO / "README.md").read_text()
    table = text.split("| module | its one job |", 1)[1].split("\n\n", 1)[0]
    named = set()
    for row in table.splitlines()[2:]:
        names = re.findall(r"`([^`]+)`", row)
        folder = Path(names[0]).parent
        for name in names:
            path = name if "/" in name and not name.startswith("hydra/") else str(folder / name)
            if expanded := re.fullmatch(r"(.*)\{([^}]*)\}(.*)", path):
                named |= {expanded[1] + part + expanded[3] for part in expanded[2].split(",")}
            elif path.endswith(".py"):
                named.add(path)
            elif path.endswith("/"):
                named |= {str(p.relative_to(REPO)) for p in (REPO / path).rglob("*.py")}
    return named


def test_the_readmes_module_map_names_every_module_and_only_modules_that_exist() -> None:
    def has_code(path: Path) -> bool:  # a package's __init__ holding only its docstring is no module of its own
        return any(not isinstance(node, ast.Expr) for node in ast.parse(path.read_text()).body)

    tree = {str(path.relative_to(REPO)) for path in sources() if has_code(path)}
    named = readme_module_map()
    assert sorted(tree - named) == [], "modules the README's map does not name"
    assert sorted(named - {str(path.relative_to(REPO)) for path in sources()}) == [], "names with no module"
