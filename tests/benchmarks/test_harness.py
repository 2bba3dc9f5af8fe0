"""What the harness costs, as whole processes: a one-epoch run through Hydra and MLflow against a bare NumPy
script that trains the same epoch (bare_epoch.py); an 8-job sweep against that one run (what each further
job adds); and the same sweep on joblib's two workers against the basic launcher.

Every process gets a fresh store, a copy of one whose schema MLflow has already created: that one-time
migration (seconds of CPU) is paid once per store, not per run, and would otherwise be most of what this
measures. BLAS uses one thread in all of them, so that two joblib workers fill the two cores as one
basic-launcher job would not."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mnist_bench.config import DatasetConfig

from .conftest import REPO, THREADS

WARMUP, ROUNDS = 1, 3
MODEL = ["activation=softmax", "batch_size=256", "lr=0.5", "init=zeros", "epochs=1"]  # bare_epoch.py's
OVERRIDES = [*MODEL, f"backend.threads={THREADS}", "progress=none", "resume=false"]
JOBS = 8
LAUNCHERS = {"basic": [], "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]}


def run(command: list[str]) -> None:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(THREADS)}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False, env=env)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture
def fresh_store(tmp_path: Path) -> Callable[[], list[str]]:
    """Overrides that send one process to a new copy of a migrated store, and its outputs beside it."""
    from mlflow.tracking import MlflowClient

    template = tmp_path / "template.db"
    MlflowClient(f"sqlite:///{template}").search_experiments()  # creates the schema
    folders: Iterator[Path] = (tmp_path / str(i) for i in itertools.count())

    def overrides() -> list[str]:
        folder = next(folders)
        folder.mkdir()
        shutil.copyfile(template, folder / "m.db")
        outputs = [f"hydra.run.dir={folder}/out", f"hydra.sweep.dir={folder}/multi"]
        return [f"tracking.uri=sqlite:///{folder}/m.db", *outputs]

    return overrides


def test_harness_run(benchmark, fresh_store: Callable[[], list[str]]) -> None:
    def command() -> tuple[tuple[list[str]], dict]:
        return ([sys.executable, "-m", "mnist_bench", *OVERRIDES, *fresh_store()],), {}

    benchmark.pedantic(run, setup=command, warmup_rounds=WARMUP, rounds=ROUNDS)


def test_bare_script(benchmark, mnist_spec: DatasetConfig, source_dir: str) -> None:
    script = Path(__file__).with_name("bare_epoch.py")
    command = [sys.executable, str(script), str(Path(source_dir) / mnist_spec.folder)]
    benchmark.pedantic(run, args=(command,), warmup_rounds=WARMUP, rounds=ROUNDS)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_sweep(benchmark, fresh_store: Callable[[], list[str]], launcher: str) -> None:
    seeds = "seed=" + ",".join(str(seed) for seed in range(JOBS))

    def command() -> tuple[tuple[list[str]], dict]:
        sweep = [sys.executable, "-m", "mnist_bench", "-m", seeds, *OVERRIDES, *LAUNCHERS[launcher]]
        return ([*sweep, *fresh_store()],), {}

    benchmark.pedantic(run, setup=command, warmup_rounds=WARMUP, rounds=ROUNDS)
