"""End-to-end Hydra multiruns on a slice of real MNIST, checked in the MLflow store they log to:
one parent run per sweep, one child per cell with its params, curves, summary, artifacts and tags;
resuming skips finished cells; a failing cell is reported without stopping the others."""

from __future__ import annotations

import itertools
import json
import math
import shlex
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from needs import import_extra
from omegaconf import OmegaConf

from mnist_bench import artifacts
from mnist_bench.schema import KIND_SWEEP, PREDICTIONS_ARTIFACT, SYSTEM_METRIC_PREFIX, Tag

pytestmark = pytest.mark.slow

EPOCHS = 3
TRAIN_LIMIT, TEST_LIMIT = 2000, 500
ACTIVATIONS = ("sigmoid", "softmax")
LRS = ("0.01", "0.1")
GRID = [
    "-m",
    "backend=numpy",
    f"activation={','.join(ACTIVATIONS)}",
    f"lr={','.join(LRS)}",
    f"epochs={EPOCHS}",
    f"dataset.train_limit={TRAIN_LIMIT}",
    f"dataset.test_limit={TEST_LIMIT}",
]
PER_EPOCH = (
    *("train_loss", "train_accuracy", "tied_prediction_fraction", "test_loss", "test_accuracy"),
    *("epoch_seconds", "epoch_cpu_seconds"),
)
SUMMARY = (  # what a user compares: the only other metrics on a run page's "Model metrics" tab
    "final_test_accuracy",
    "final_train_accuracy",
    "best_test_accuracy",
    "epochs_run",
    "train_seconds",
    "samples_per_second",
    "seconds_per_epoch",
    "roofline_ratio",
)
SYSTEM = tuple(  # how the run was measured: its "System metrics" tab
    SYSTEM_METRIC_PREFIX + key
    for key in (
        "timing_stable",
        "load_average_start",
        "load_average_end",
        "other_cpu_share",
        "cpu_steal_share",
        "epoch_spread",
        "warmup_seconds",
        "wall_seconds",
        "peak_rss_mb",
    )
)
TAGS = (
    Tag.BACKEND,
    Tag.ACTIVATION,
    Tag.DEVICE,
    Tag.DATASET,
    Tag.SWEEP_NAME,
    Tag.GIT_COMMIT,
    Tag.CPU_MODEL,
    Tag.CPU_COUNT,
    Tag.BLAS,
    Tag.CONFIG_HASH,
    Tag.HOST,
    Tag.PID,
)
ARTIFACTS = {"config.yaml", "confusion_matrix.csv", "test_predictions.csv", "weights.npz"}  # figures are the report's


def parents(runs: list) -> list:
    return [r for r in runs if r.data.tags.get(Tag.KIND) == KIND_SWEEP]


def children_of(runs: list, parent_id: str) -> list:
    return [r for r in runs if r.data.tags.get(Tag.PARENT) == parent_id]


@dataclass
class Sweep:
    folder: Path
    store: object
    proc: subprocess.CompletedProcess
    runs: list  # every run of the experiment right after the sweep
    parent: object
    children: list


# Cell 1 asks for more test images than MNIST has: it fails when its data is loaded, before its run.
# Cell 2 (lr=1e36 on raw pixels) overflows float32 in its first epoch: a diverged run, not a failure.
# One cell diverges; the other fails in its job, where validation cannot see it: device=gpu on a machine whose
# TensorFlow sees no GPU (as on CI's). A bad data limit used to be that cell: it now stops the sweep at validation.
FAILING = [
    "-m",
    "normalize=false",
    "lr=1e36",
    "epochs=5",
    f"dataset.train_limit={TRAIN_LIMIT}",
    "dataset.test_limit=500",
    "backend=tf",
    "activation=sigmoid",
    "device=auto,gpu",
]


@dataclass
class Background:
    folder: Path
    store: object
    result: Future


@pytest.fixture(scope="module")
def failing(mnist_dir, tmp_path_factory, run_cli, make_store, hydra_args) -> Iterator[Background]:
    """The sweep with a failing cell, started in the background: it runs beside the grid on another core."""
    import_extra("tensorflow", "tf")
    folder = tmp_path_factory.mktemp("failing")
    store = make_store(folder)
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield Background(
            folder, store, pool.submit(run_cli, [*FAILING, f"tracking.uri={store.uri}", *hydra_args(folder)], folder)
        )


@pytest.fixture(scope="module")
def grid(failing, mnist_dir, tmp_path_factory, run_cli, make_store, hydra_args, runs_of) -> Sweep:
    """The 2x2 sweep, run once for the module; its runs are snapshotted before any other test relaunches it."""
    folder = tmp_path_factory.mktemp("grid")
    store = make_store(folder)
    proc = run_cli([*GRID, f"tracking.uri={store.uri}", *hydra_args(folder)], folder)
    runs = runs_of(store.uri)
    found = parents(runs)
    parent = found[0] if len(found) == 1 else None
    children = children_of(runs, parent.info.run_id) if parent else []
    return Sweep(folder, store, proc, runs, parent, children)


def cell(run) -> tuple[str, str]:
    return run.data.params["activation"], run.data.params["lr"]


def test_grid_exits_0_with_one_parent_and_four_finished_children(grid: Sweep) -> None:
    assert grid.proc.returncode == 0, grid.proc.stderr[-4000:]
    assert len(parents(grid.runs)) == 1
    assert grid.parent.info.status == "FINISHED"
    assert len(grid.children) == 4
    assert len(grid.runs) == 5  # nothing else was logged
    assert all(r.info.status == "FINISHED" for r in grid.children)
    assert sorted(cell(r) for r in grid.children) == sorted(itertools.product(ACTIVATIONS, LRS))
    assert "sweep summary: finished 4" in grid.proc.stdout


def test_the_report_command_a_sweep_prints_reports_that_sweep(grid: Sweep, run_cli) -> None:
    sweep_name = grid.parent.data.tags[Tag.SWEEP_NAME]
    [line] = [line for line in grid.proc.stdout.splitlines() if line.startswith("report: ")]
    command = shlex.split(line.removeprefix("report: "))
    assert command[:2] == ["mnist-bench", "report"] and sweep_name in command
    done = run_cli([*command[1:], "--out", str(grid.folder / "printed-report")], grid.folder)
    assert done.returncode == 0, done.stderr
    page = grid.folder / "printed-report" / "report.html"
    assert f"report of sweep {sweep_name}: {page} (open it in a browser;" in done.stdout, done.stdout
    assert "; 4 runs;" in done.stdout and page.is_file()
    [runs] = [line for line in grid.proc.stdout.splitlines() if line.startswith("runs: ")]
    link = urllib.parse.urlsplit(runs.rpartition(" ")[2])  # the UI's route and query follow its '#'
    route, _, query = link.fragment.partition("?")
    assert route == f"/experiments/{grid.parent.info.experiment_id}/runs"
    (key,) = urllib.parse.parse_qs(query)["viewStateShareKey"]
    experiment = grid.store.client.get_experiment(grid.parent.info.experiment_id)
    search = json.loads(experiment.tags[Tag.SHARED_VIEW + key])["searchFilter"]
    found = grid.store.client.search_runs([experiment.experiment_id], search)
    assert sorted(run.info.run_id for run in found) == sorted(run.info.run_id for run in grid.children), search


def test_grid_children_params_match_their_cell(grid: Sweep) -> None:
    assert len(grid.children) == 4
    for run in grid.children:
        params = run.data.params
        assert params["backend.name"] == "numpy"
        assert params["epochs"] == str(EPOCHS)
        assert params["dataset.train_limit"] == str(TRAIN_LIMIT)
        assert params["activation"] == run.data.tags["activation"]
        assert float(params["lr"]) in {float(lr) for lr in LRS}
        assert run.info.run_name == f"numpy-{params['activation']}-lr{params['lr']}-s0-e{EPOCHS}"
        assert params["sweep_name"] == run.data.tags[Tag.SWEEP_NAME]  # the name it has, not the null given
        assert "backend.threads" not in params and int(run.data.tags[Tag.THREADS]) >= 1  # null: the tag says


def test_grid_children_log_every_epoch_and_a_summary(grid: Sweep) -> None:
    client = grid.store.client
    assert len(grid.children) == 4
    for run in grid.children:
        history = {key: client.get_metric_history(run.info.run_id, key) for key in PER_EPOCH}
        for key, points in history.items():
            assert sorted(p.step for p in points) == [1, 2, 3], key
            assert all(math.isfinite(p.value) for p in points), key
        test_accuracy = [p.value for p in sorted(history["test_accuracy"], key=lambda p: p.step)]
        metrics = run.data.metrics
        model_metrics = {key for key in metrics if not key.startswith(SYSTEM_METRIC_PREFIX)}
        assert model_metrics == set(SUMMARY) | set(PER_EPOCH)  # no target set: no time_to_target_seconds
        assert set(SYSTEM) <= set(metrics)
        assert metrics["epochs_run"] == EPOCHS
        # Full batch: epoch k describes the weights after k - 1 updates; final_* the weights kept, after the last.
        assert metrics["best_test_accuracy"] == max([*test_accuracy, metrics["final_test_accuracy"]])
        assert metrics["train_seconds"] == pytest.approx(sum(p.value for p in history["epoch_seconds"]))
        epoch_seconds = [p.value for p in history["epoch_seconds"]]
        assert metrics["seconds_per_epoch"] == pytest.approx(np.median(epoch_seconds))  # one definition
        assert metrics["samples_per_second"] == pytest.approx(TRAIN_LIMIT / metrics["seconds_per_epoch"])
        assert metrics["system/timing_stable"] == float(Tag.TIMING_UNSTABLE not in run.data.tags)
        assert 0 < metrics["train_seconds"] <= metrics["system/wall_seconds"]
        assert 50 < metrics["system/peak_rss_mb"] < 4096  # MiB: a Python process with NumPy, MLflow and the data
        assert all(0 <= v <= 1 for v in test_accuracy)
        assert all(v * TEST_LIMIT == pytest.approx(round(v * TEST_LIMIT)) for v in test_accuracy)  # k of 500


def test_grid_children_have_their_artifacts(grid: Sweep, tmp_path: Path) -> None:
    client = grid.store.client
    assert len(grid.children) == 4
    for run in grid.children:
        run_id = run.info.run_id
        assert {a.path for a in client.list_artifacts(run_id)} == ARTIFACTS
        local = Path(client.download_artifacts(run_id, "", str(tmp_path / run_id)))
        with np.load(local / "weights.npz", allow_pickle=False) as npz:
            assert npz["weights"].shape == (784, 10) and npz["bias"].shape == (10,)
            assert np.isfinite(npz["weights"]).all()
        counts = np.loadtxt(local / "confusion_matrix.csv", delimiter=",", skiprows=1, dtype=np.int64)[:, 1:]
        assert counts.shape == (10, 10) and counts.sum() == TEST_LIMIT
        assert np.trace(counts) / TEST_LIMIT == pytest.approx(run.data.metrics["final_test_accuracy"])
        predictions = artifacts.parse_predictions((local / PREDICTIONS_ARTIFACT).read_text())
        labels, predicted = predictions[:, 0], predictions[:, 1]
        assert len(predictions) == TEST_LIMIT and set(predicted) <= set(range(10))
        np.testing.assert_array_equal(artifacts.confusion_matrix(labels, predicted), counts)  # the same predictions
        saved = OmegaConf.load(local / "config.yaml")
        assert (saved.activation, str(saved.lr), saved.epochs) == (*cell(run), EPOCHS)


def test_grid_children_record_their_dataset_and_a_description(grid: Sweep) -> None:
    """The Datasets column of MLflow's UI: the data as a dataset input; params keep to the settings."""
    for run in grid.children:
        (dataset_input,) = run.inputs.dataset_inputs
        dataset = dataset_input.dataset
        assert dataset.name == "mnist" and len(dataset.digest) == 16
        profile = json.loads(dataset.profile)
        assert (profile["train_rows"], profile["test_rows"]) == (TRAIN_LIMIT, TEST_LIMIT)
        assert set(profile["sha256"]) == {"train_images", "train_labels", "test_images", "test_labels"}
        assert not [key for key in run.data.params if key.endswith(".sha256") or key == "dataset.mirrors"]
        keys = list(run.data.params)  # as logged, which is how MLflow's UI lists them: the settings a user sets first
        assert keys == sorted(keys, key=lambda key: "." in key) and keys.index("lr") < 5, keys
        description = run.data.tags[Tag.DESCRIPTION]
        assert description.startswith(f"numpy {run.data.params['activation']} model on mnist (2,000 train / 500 test")
    assert len({run.inputs.dataset_inputs[0].dataset.digest for run in grid.children}) == 1


def test_only_the_processs_first_job_carries_its_start_up(grid: Sweep) -> None:
    """The basic launcher runs the four jobs in one process: its start-up is the first job's alone, and
    wall_seconds means the same (the job, from its own start) for every job."""
    first = min(grid.children, key=lambda run: run.info.start_time)
    assert [run for run in grid.children if "system/startup_seconds" in run.data.metrics] == [first]
    startup = first.data.metrics["system/startup_seconds"]  # Python, Hydra and MLflow's import: seconds
    assert all(run.data.metrics["system/wall_seconds"] < startup for run in grid.children)  # a small job: far less


# Runs the CLI with config.validate counted, before hydra_app imports it; prints the count at exit.
_COUNT_VALIDATIONS = """
import atexit, sys
import mnist_bench.config as config
calls, validate = [], config.validate
config.validate = lambda cfg: calls.append(cfg) or validate(cfg)
atexit.register(lambda: print(f"validations: {len(calls)}", file=sys.stderr))
from mnist_bench import cli
cli.main(sys.argv[1:])
"""


@pytest.mark.usefixtures("mnist_dir")
def test_a_basic_sweep_validates_each_cell_once_and_its_jobs_run_what_was_validated(
    tmp_path: Path, cli_env, make_store, hydra_args, runs_of
) -> None:
    store = make_store(tmp_path)
    args = ["-m", "lr=0.1,0.5", "epochs=1", "dataset.train_limit=2000", "dataset.test_limit=500", "progress=none"]
    done = subprocess.run(
        [sys.executable, "-c", _COUNT_VALIDATIONS, *args, f"tracking.uri={store.uri}", *hydra_args(tmp_path)],
        cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "validations: 2" in done.stderr, done.stderr[-3000:]  # by the sweeper; the jobs take its configs
    from mlflow.tracking import MlflowClient

    from mnist_bench import tracking

    runs = runs_of(store.uri)
    (parent,), jobs = parents(runs), [run for run in runs if Tag.PARENT in run.data.tags]
    planned = tracking.sweep_cells(MlflowClient(store.uri), parent.info.run_id)
    assert sorted(run.data.params["lr"] for run in jobs) == ["0.1", "0.5"]
    assert sorted(run.data.tags[Tag.CONFIG_HASH] for run in jobs) == sorted(c.config_hash for c in planned)


def test_grid_children_are_tagged(grid: Sweep) -> None:
    assert len(grid.children) == 4
    sweep_name = grid.parent.data.tags[Tag.SWEEP_NAME]
    assert sweep_name.startswith("sweep-")  # sweep_name was not set: a time stamp
    hashes = set()
    for run in grid.children:
        tags = run.data.tags
        missing = [t for t in TAGS if not tags.get(t)]
        assert not missing
        assert (tags["backend"], tags["device"], tags["dataset"]) == ("numpy", "cpu", "mnist")
        assert tags["activation"] == run.data.params["activation"]
        assert tags[Tag.SWEEP_NAME] == sweep_name  # the same name as its parent
        assert tags[Tag.HOST] == socket.gethostname()
        assert tags[Tag.PID].isdigit() and int(tags["cpu_count"]) >= 1
        assert tags["diverged"] == "false"
        floor = float(tags[Tag.ROOFLINE_FLOOR_SECONDS])  # a CPU run: the machine's figures are tags
        ratio = run.data.metrics["seconds_per_epoch"] / floor
        assert run.data.metrics["roofline_ratio"] == pytest.approx(ratio, rel=1e-3)
        assert float(tags[Tag.ROOFLINE_READ_GB_PER_S]) > 0 and float(tags[Tag.ROOFLINE_SGEMM_GFLOP_PER_S]) > 0
        assert not {"roofline_floor_seconds", "machine_read_gb_per_s"} & set(run.data.metrics)
        hashes.add(tags[Tag.CONFIG_HASH])
    assert len(hashes) == 4


def test_relaunch_skips_every_cell_and_resume_false_reruns_them(grid: Sweep, run_cli, hydra_args, runs_of) -> None:
    assert grid.proc.returncode == 0, grid.proc.stderr[-4000:]
    args = [*GRID, f"tracking.uri={grid.store.uri}", *hydra_args(grid.folder)]

    again = run_cli(args, grid.folder)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "sweep summary: skipped 4" in again.stdout
    runs = runs_of(grid.store.uri)
    new_parents = [p for p in parents(runs) if p.info.run_id != grid.parent.info.run_id]
    assert len(new_parents) == 1 and new_parents[0].info.status == "FINISHED"
    assert children_of(runs, new_parents[0].info.run_id) == []
    assert len(runs) == len(grid.runs) + 1  # only the new parent

    rerun = run_cli([*args, "resume=false"], grid.folder)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert "sweep summary: finished 4" in rerun.stdout
    runs = runs_of(grid.store.uri)
    known = {p.info.run_id for p in parents(grid.runs)} | {new_parents[0].info.run_id}
    latest = [p for p in parents(runs) if p.info.run_id not in known]
    assert len(latest) == 1 and latest[0].info.status == "FINISHED"
    rerun_children = children_of(runs, latest[0].info.run_id)
    assert sorted(cell(r) for r in rerun_children) == sorted(itertools.product(ACTIVATIONS, LRS))
    assert all(r.info.status == "FINISHED" for r in rerun_children)
    assert len(runs) == len(grid.runs) + 1 + 5


def test_failing_cell_is_reported_the_others_run_and_divergence_is_not_a_failure(failing: Background, runs_of) -> None:
    proc = failing.result.result()
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "device=gpu but TensorFlow sees no GPU" in output
    summary = proc.stdout[proc.stdout.index("sweep summary:") :]
    assert "diverged 1" in summary and "missing 1" in summary
    assert "missing: tf-sigmoid-lr1e+36-s0-e5 [" in summary and "device=gpu" in summary

    runs = runs_of(failing.store.uri)
    [parent] = parents(runs)
    assert parent.info.status == "FAILED"
    [diverged] = children_of(runs, parent.info.run_id)
    assert len(runs) == 2
    assert diverged.info.status == "FINISHED"
    assert diverged.data.tags["diverged"] == "true"
    assert diverged.data.params["dataset.test_limit"] == "500"
    assert diverged.data.metrics["epochs_run"] < 5  # divergence stops the run


def test_no_password_reaches_the_store_the_files_or_the_terminal(
    mnist_dir: Path, tmp_path: Path, run_cli, make_store, hydra_args
) -> None:
    """A mirror URL with user:password@ is logged as a param, saved in config.yaml, Hydra's multirun.yaml
    and .hydra/ files, and printed in the launcher's job lines: everywhere without the password."""
    secret = "s3cret-8d1f"
    folder = tmp_path / "launch"
    store = make_store(folder)
    args = [
        "-m",
        "backend=numpy",
        "lr=0.1,0.5",
        "epochs=1",
        "dataset.train_limit=500",
        "dataset.test_limit=200",
        f"dataset.mirrors=['https://bob:{secret}@mirror.example/mnist/']",
        f"tracking.uri={store.uri}",
        *hydra_args(folder),
    ]
    done = run_cli(args, folder)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mirror.example" in done.stdout + done.stderr and secret not in done.stdout + done.stderr
    written = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    assert any(path.name == "multirun.yaml" for path in written) and any(path.name == "config.yaml" for path in written)
    configs = [content for path, content in written.items() if path.name == "config.yaml"]
    assert all(b"https://mirror.example/mnist/" in content for content in configs)  # there, redacted
    leaks = [str(path.relative_to(folder)) for path, content in written.items() if secret.encode() in content]
    assert not leaks, f"the password was written to {leaks}"
