"""A backend installed as a package of its own (examples/einsum_backend) works as a built-in one does: found
through its entry point, its conf/backend/einsum.yaml on Hydra's search path, its options checked, its runs
beside numpy's in a sweep with the same numbers, compared in the report, and skipped by resume."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, hydra_dirs, job_runs

pytestmark = pytest.mark.slow

EXAMPLE = REPO / "examples" / "einsum_backend"
SMALL = ["epochs=2", "batch_size=128", "dataset.train_limit=2000", "dataset.test_limit=500", "backend.threads=1"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The example pip-installed into a folder of its own, offline (its dependency, mnist-bench, is this
    checkout): the environment entries that put it on the CLI's path, as a virtualenv's site-packages would."""
    site = tmp_path_factory.mktemp("einsum-site")
    install = ["install", "--quiet", "--no-deps", "--no-build-isolation", "--target", site, EXAMPLE]
    done = subprocess.run([sys.executable, "-m", "pip", *install], capture_output=True, text=True, cwd=site)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"PYTHONPATH": f"{site}:{REPO}"}


def test_the_installed_backend_runs_beside_numpy_and_reaches_the_report(
    installed: dict[str, str], run_cli, mnist_overrides: list[str], tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep = ["-m", "backend=numpy,einsum", *SMALL, *mnist_overrides, f"tracking.uri={uri}", *hydra_dirs(tmp_path)]
    done = run_cli(sweep, tmp_path, env=installed)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {r.data.tags["backend"]: r for r in job_runs(uri)}
    assert set(runs) == {"numpy", "einsum"} and {r.info.status for r in runs.values()} == {"FINISHED"}
    assert runs["einsum"].data.params["backend.options.optimize"] == "True"  # its yaml's default, logged
    for metric in ("final_test_accuracy", "final_train_accuracy"):  # the same model, batches and rates
        assert runs["einsum"].data.metrics[metric] == runs["numpy"].data.metrics[metric], metric
    assert "timing_unstable" in runs["einsum"].data.tags or runs["einsum"].data.metrics["seconds_per_epoch"] > 0

    again = run_cli(sweep, tmp_path, env=installed)
    assert again.returncode == 0 and "skipped, already FINISHED" in again.stderr + again.stdout
    assert len(job_runs(uri)) == 2

    report = run_cli(["report", "--tracking-uri", uri, "--out", str(tmp_path / "report")], tmp_path, env=installed)
    assert report.returncode == 0, report.stderr[-3000:]
    with (tmp_path / "report" / "comparisons.csv").open() as file:
        rows = list(csv.DictReader(file))
    [row] = [r for r in rows if r["candidate"].startswith("einsum")]
    assert row["reference"].startswith("numpy") and row["candidate"].startswith("einsum{optimize=True}")
    assert float(row["accuracy_diff"]) == 0.0 and float(row["speed_ratio"]) > 0


def test_its_options_are_checked_as_the_harness_checks_its_own(
    installed: dict[str, str], run_cli, tmp_path: Path
) -> None:
    bad = run_cli(["backend=einsum", "+backend.options.optimise=true", "epochs=1"], tmp_path, env=installed)
    assert bad.returncode == 2 and "\n" not in bad.stderr.strip()
    assert "backend.options.optimise" in bad.stderr and "allowed: optimize" in bad.stderr
    bad = run_cli(["backend=einsum", "backend.options.optimize=maybe", "epochs=1"], tmp_path, env=installed)
    assert bad.returncode == 2 and "backend.options.optimize" in bad.stderr and "\n" not in bad.stderr.strip()
    shown = run_cli(["backend=einsum", "backend.options.optimize=false", "--cfg", "job"], tmp_path, env=installed)
    assert shown.returncode == 0 and "optimize: false" in shown.stdout
