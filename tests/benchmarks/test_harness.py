"""What the harness costs: a 1-epoch run through Hydra and MLflow in a fresh process and a fresh store,
against the bare ``NumpyBackend().fit`` of the same config in this process.

Each store is a copy of one whose schema MLflow has already created: that one-time migration (seconds of
CPU) is paid once per store, not per run, and would otherwise be most of what this measures."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from pathlib import Path

from mnist_bench.backends import base
from mnist_bench.backends.numpy_backend import NumpyBackend
from mnist_bench.config import BackendConfig, Config

from .conftest import REPO, THREADS

WARMUP, ROUNDS = 1, 3
OVERRIDES = ["epochs=1", "batch_size=256", f"backend.threads={THREADS}", "progress=none"]


def test_harness_run(benchmark, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    template = tmp_path / "template.db"
    MlflowClient(f"sqlite:///{template}").search_experiments()  # creates the schema
    folders = (tmp_path / str(i) for i in itertools.count())

    def fresh_store() -> tuple[tuple[list[str]], dict]:
        folder = next(folders)
        folder.mkdir()
        shutil.copyfile(template, folder / "m.db")
        where = [f"tracking.uri=sqlite:///{folder}/m.db", f"hydra.run.dir={folder}/out"]
        return ([sys.executable, "-m", "mnist_bench", *OVERRIDES, *where],), {}

    def run(command: list[str]) -> None:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-2000:]

    benchmark.pedantic(run, setup=fresh_store, warmup_rounds=WARMUP, rounds=ROUNDS)


def test_bare_fit(benchmark, train_data: base.TrainData) -> None:
    cfg = Config(backend=BackendConfig(threads=THREADS), epochs=1, batch_size=256)  # warmup epoch included, as above
    fit_args = (train_data, cfg, lambda m: False)
    result = benchmark.pedantic(NumpyBackend().fit, args=fit_args, warmup_rounds=WARMUP, rounds=5)
    assert result.epochs_run == 1
