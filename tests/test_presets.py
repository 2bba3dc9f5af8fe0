"""The presets reproduce the tutorial's two results, and the modern and fast baselines reach their targets.

Each preset runs as a real sweep through the CLI on full MNIST, and the verdicts are read back
from MLflow, the way the README's reproduction table is made.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import hydra_dirs, job_runs

pytestmark = pytest.mark.slow

TUTORIAL_TF_TRAIN_ACCURACY = 0.9092
SEED_TF_FLOOR = 0.75  # the lowest seed measured anywhere: 0.7719
SEED_TF_TOP_TOLERANCE = 0.01  # the best seed measured 0.9037-0.9064 (1 and 2 threads, two kernels)
TUTORIAL_NUMPY_STOP_EPOCH = 32
SEED_NUMPY_TEST_FLOOR = 0.79  # the tutorial's code over 15 seeds: 0.803-0.850 at its stop


def sweep(run_cli, folder: Path, *overrides: str) -> list:
    """Run ``python -m mnist_bench -m *overrides`` into a fresh store; the finished child runs."""
    uri = f"sqlite:///{folder}/mlflow.db"
    args = ["-m", *overrides, f"tracking.uri={uri}", "progress=none", *hydra_dirs(folder)]
    done = run_cli(args, cwd=folder, timeout=2400)  # seed_tf: 5 x 1,000 full-batch epochs
    assert done.returncode == 0, done.stderr[-3000:]
    children = job_runs(uri)
    assert {r.info.status for r in children} == {"FINISHED"}
    return children


def test_seed_numpy_reaches_080_train_accuracy_for_every_seed_around_the_tutorials_epoch(
    mnist_dir: Path, run_cli, tmp_path: Path
) -> None:
    """Scored the tutorial's way, seeds 0-4 stop at a spread of epochs that holds the tutorial's 32."""
    runs = sweep(run_cli, tmp_path, "+experiment=seed_numpy", "seed=0,1,2,3,4")
    assert len(runs) == 5
    assert {r.data.params["grad_reduction"] for r in runs} == {"sum"}
    assert {r.data.params["predict_from"] for r in runs} == {"probabilities"}
    for run in runs:  # stopped at the target, as the tutorial did, keeping the weights that met it
        assert run.data.metrics["final_train_accuracy"] >= 0.80
        assert run.data.metrics["final_test_accuracy"] >= SEED_NUMPY_TEST_FLOOR  # measured 0.8105-0.8310
        assert "time_to_target_seconds" in run.data.metrics
    stops = sorted(int(r.data.metrics["epochs_run"]) for r in runs)
    assert stops[0] <= TUTORIAL_NUMPY_STOP_EPOCH <= stops[-1] < 100, stops


def test_seed_tf_tutorials_figure_is_the_top_of_five_seeds(mnist_dir: Path, run_cli, tmp_path: Path) -> None:
    """Full-batch GD on raw pixels is chaotic: a seed's final accuracy moves with BLAS thread count and CPU
    kernel (seed 1 measured 0.79 and 0.90 on two machines). What holds on every machine measured (1 and 2
    OpenBLAS threads, Haswell and Sandybridge kernels; see README, Reproduction) is the distribution: every
    seed trains (>= 0.75), and the best of five comes within 0.01 of the tutorial's single run. The five
    seeds run at once, on five 1-thread joblib workers: the claim holds at either thread count, and CI's
    longest test then keeps both cores busy to its end (two workers left one idle for the fifth seed)."""
    runs = sweep(
        run_cli,
        tmp_path,
        "+experiment=seed_tf",
        "backend=numpy",
        "seed=0,1,2,3,4",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=5",
        "backend.threads=1",
    )
    assert [r.data.metrics["epochs_run"] for r in runs] == [1000] * 5
    finals = sorted(r.data.metrics["final_train_accuracy"] for r in runs)
    assert finals[0] >= SEED_TF_FLOOR, finals
    assert abs(finals[-1] - TUTORIAL_TF_TRAIN_ACCURACY) <= SEED_TF_TOP_TOLERANCE, finals


def test_modern_preset_reaches_0925_test_accuracy(mnist_dir: Path, run_cli, tmp_path: Path) -> None:
    (run,) = sweep(run_cli, tmp_path, "+experiment=modern")
    assert run.data.params["batch_size"] != "None"  # minibatch SGD, as the preset promises
    assert run.data.metrics["final_test_accuracy"] >= 0.925
    assert "time_to_target_seconds" in run.data.metrics


def test_fast_preset_reaches_092_test_accuracy_in_one_epoch_for_every_seed(
    mnist_dir: Path, run_cli, tmp_path: Path
) -> None:
    runs = sweep(run_cli, tmp_path, "+experiment=fast", "seed=0,1,2")
    assert [r.data.metrics["epochs_run"] for r in runs] == [1, 1, 1]
    assert min(r.data.metrics["final_test_accuracy"] for r in runs) >= 0.92
    assert all("time_to_target_seconds" in r.data.metrics for r in runs)
