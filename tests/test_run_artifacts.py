"""A real sweep's own artifacts against its own metrics, as a user would check them: each run's weights.npz,
scored here on the run's slice of MNIST, is what its final accuracies say, on numpy, tf, keras and jax, with
full batches and minibatches, stopping at a target; a framework's import is start-up, not a job's wall time;
and a tampered cache of decoded arrays is never trained on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import job_runs
from needs import import_extra

from mnist_bench import data
from mnist_bench.backends import base
from mnist_bench.hydra_app import compose

pytestmark = pytest.mark.slow

TRAIN_LIMIT, TEST_LIMIT, EPOCHS = 1000, 500, 4
# Full batch reaches train accuracy 0.70 at epoch 3 (0.74 there, 0.68 at epoch 2), minibatches of 100 at epoch 2.
SETTINGS = [
    "activation=sigmoid",
    "lr=0.5",
    f"epochs={EPOCHS}",
    "target_accuracy=0.7",
    "target_metric=train_accuracy",
    "stop_at_target=true",
    f"dataset.train_limit={TRAIN_LIMIT}",
    f"dataset.test_limit={TEST_LIMIT}",
    "backend.threads=1",
    "progress=none",
]
BACKENDS = ("numpy", "tf", "keras", "jax")


@dataclass
class Sweep:
    folder: Path
    uri: str
    env: dict[str, str]
    runs: list


@pytest.fixture(scope="module")
def sweep(mnist_dir: Path, run_cli, hydra_args, tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """Every backend x (full batch, batch 100), in one process (Hydra's basic launcher), with a cache of
    decoded arrays of its own."""
    import_extra("tensorflow", "tf")
    import_extra("jax", "jax")
    folder = tmp_path_factory.mktemp("artifacts")
    uri = f"sqlite:///{folder}/mlflow.db"
    env = {"MNIST_BENCH_CACHE_DIR": str(folder / "cache")}
    grid = [f"backend={','.join(BACKENDS)}", "batch_size=null,100", *SETTINGS]
    done = run_cli(["-m", *grid, f"tracking.uri={uri}", *hydra_args(folder)], folder, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = job_runs(uri)
    assert sorted((r.data.params["backend.name"], r.data.params["batch_size"]) for r in runs) == sorted(
        (backend, batch) for backend in BACKENDS for batch in ("None", "100")
    )
    return Sweep(folder, uri, env, runs)


def stored_weights(run, store_client, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    local = store_client.download_artifacts(run.info.run_id, "weights.npz", str(folder))
    with np.load(local, allow_pickle=False) as npz:
        return npz["weights"], npz["bias"]


def accuracies(weights: np.ndarray, bias: np.ndarray, run_cache: Path) -> tuple[float, float]:
    """Train and test accuracy of the weights on the runs' slices, inputs prepared as the runs prepared them,
    the class the largest logit (predict_from's default)."""
    cfg = compose(*SETTINGS, f"dataset.cache_dir={run_cache}")
    ds = data.load(cfg.dataset)
    split = base.prepare(ds.x_train, ds.y_train, ds.x_test, ds.y_test, cfg.spec())
    train, test = (
        ((x @ weights + bias).argmax(axis=1) == y).mean()
        for x, y in ((split.x_train, split.y_train), (split.x_test, split.y_test))
    )
    return float(train), float(test)


def last(client, run, metric: str) -> float:
    return max(client.get_metric_history(run.info.run_id, metric), key=lambda point: point.step).value


def test_stored_weights_score_what_the_final_metrics_say(sweep: Sweep, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sweep.uri)
    for run in sweep.runs:
        metrics, name = run.data.metrics, run.info.run_name
        full_batch = run.data.params["batch_size"] == "None"
        weights, bias = stored_weights(run, client, tmp_path / run.info.run_id)
        train, test = accuracies(weights, bias, sweep.folder / "cache")
        assert (train, test) == (metrics["final_train_accuracy"], metrics["final_test_accuracy"]), name
        # Stopped at the target: the last epoch's numbers are the kept weights' (its backend's own arithmetic
        # may flip a near tie). Full batch: its train and test numbers both; minibatch: its test numbers.
        assert metrics["epochs_run"] == (3 if full_batch else 2), name
        assert "time_to_target_seconds" in metrics, name
        assert last(client, run, "test_accuracy") == pytest.approx(test, abs=2 / TEST_LIMIT), name
        if full_batch:
            assert last(client, run, "train_accuracy") == pytest.approx(train, abs=2 / TRAIN_LIMIT), name
            assert last(client, run, "train_accuracy") >= 0.7, name  # the weights kept met the target


def test_a_frameworks_import_is_start_up_of_its_backends_first_job(sweep: Sweep) -> None:
    """Only the first job of each backend in the process carries system/startup_seconds; the first tf job's
    wall time leaves TensorFlow's import out (it took seconds; a 1,000-row job takes about one)."""
    firsts = {}
    for run in sorted(sweep.runs, key=lambda run: run.info.start_time):
        firsts.setdefault(run.data.params["backend.name"], run)
    carrying = {run.info.run_id for run in sweep.runs if "system/startup_seconds" in run.data.metrics}
    assert carrying == {run.info.run_id for run in firsts.values()}
    tf_metrics = firsts["tf"].data.metrics
    assert tf_metrics["system/wall_seconds"] < tf_metrics["system/startup_seconds"]


def test_a_tampered_cache_is_decoded_again_not_trained_on(sweep: Sweep, run_cli, hydra_args) -> None:
    """The cached train images replaced by the same array with its rows shuffled (same shape and dtype): the
    run says so in one line, decodes the IDX files again, and trains what the sweep trained."""
    (entry,) = [
        path
        for path in (sweep.folder / "cache" / "arrays").glob("*.npy")
        if path.stem == compose().dataset.train_images.sha256
    ]
    np.save(entry, np.random.default_rng(0).permutation(np.load(entry)))
    folder = sweep.folder / "tampered"
    uri = f"sqlite:///{folder}/mlflow.db"
    job = ["backend=numpy", "batch_size=null", *SETTINGS, f"tracking.uri={uri}", *hydra_args(folder)]
    folder.mkdir()
    done = run_cli(job, folder, env=sweep.env)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = (done.stdout + done.stderr).splitlines()
    warned = [line for line in printed if "does not match the sha256" in line]
    assert len(warned) == 1 and str(entry) in warned[0] and "decoding it again from the IDX files" in warned[0]
    (again,) = job_runs(uri)
    (before,) = [
        r for r in sweep.runs if r.data.params["backend.name"] == "numpy" and r.data.params["batch_size"] == "None"
    ]
    for metric in ("final_train_accuracy", "final_test_accuracy", "epochs_run"):
        assert again.data.metrics[metric] == before.data.metrics[metric], metric
