"""Tests for mnist_bench.report on a sweep recorded through the harness's own writers (tracking's parent and
run, experiment's params, tags, epoch observer and summary) with scripted epochs instead of training, into a
temporary SQLite store; and one slow end-to-end test that runs a tiny real sweep and the report through the CLI."""

from __future__ import annotations

import csv
import dataclasses
import functools
import html
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from mlflow.tracking import MlflowClient
from needs import import_extra

from mnist_bench import artifacts, experiment, hydra_app, machine, timing, tracking
from mnist_bench.backends.base import EpochMetrics, FitResult, WeightScores
from mnist_bench.config import Config, config_hash, run_name
from mnist_bench.report import accuracy as acc
from mnist_bench.report import cli, document, plots, reading, render, tables
from mnist_bench.schema import CELLS_ARTIFACT, CONFUSION_ARTIFACT, PREDICTIONS_ARTIFACT, Cell, normalise

EXPERIMENT = "mnist-bench"
REPO = Path(__file__).resolve().parents[1]
SWEEP = "sweep-test"
N_TRAIN = 2000
EPOCHS = 3
TARGET = 0.86  # target_accuracy: most runs reach it, so time_to_target_seconds is logged
N_TEST = 500  # test images each scripted run is scored on
TEST_LABELS = np.random.default_rng(7).integers(0, 10, N_TEST)
CONFIGS = [
    (backend, activation, lr, EPOCHS)
    for backend in ("numpy", "tf")
    for activation in ("sigmoid", "softmax")
    for lr in ("0.1", "0.5")
]
SEEDS = (0, 1)
FAILED = ("tf", "softmax", "0.5", EPOCHS, 1)  # raised in its second epoch: FAILED, with an error tag
MISSING = ("numpy", "softmax", "0.5", EPOCHS, 1)  # planned, never started: no run at all
DIVERGED = ("tf", "sigmoid", "0.5", EPOCHS, 0)  # FINISHED, but its losses went to NaN
DEAD = ("numpy", "softmax", "0.1", EPOCHS, 1)  # left RUNNING by a process that is gone: the reaper kills it
ERROR = "ValueError: boom | in epoch 2"  # the pipe must survive Markdown
CONFIG_DTYPES = dict.fromkeys(reading.BASE_CONFIG, str)
SWEEP_ARGUMENTS = ["backend=numpy,tf", "activation=sigmoid,softmax", "lr=0.1,0.5", f"epochs={EPOCHS}"]
QUIET = timing.Conditions(0.1, 0.1, 0.0, 0.0, 0.0)  # the machine as the runs' conditions say it was


def overrides(key: tuple, keras_backend: str | None = None) -> list[str]:
    """The command-line overrides of a cell, as a sweep of this key's settings would give them."""
    backend, activation, lr, epochs, seed = key
    engine = [f"backend.keras_backend={keras_backend}"] if keras_backend else []
    settings = [f"backend={backend}", f"activation={activation}", f"lr={lr}", f"epochs={epochs}", f"seed={seed}"]
    return [*settings, *engine, "batch_size=256", f"target_accuracy={TARGET}"]


@functools.cache
def _composed(*cell: str) -> Config:
    return hydra_app.compose(*cell)


def config_of(key: tuple, keras_backend: str | None = None) -> Config:
    """The config ``python -m mnist_bench`` composes for the key (composed once per setting, seeds replaced)."""
    without_seed = [o for o in overrides(key, keras_backend) if not o.startswith("seed=")]
    return dataclasses.replace(_composed(*without_seed), seed=key[4])


def cell_name(key: tuple) -> str:
    return run_name(config_of(key))


def cell_of(key: tuple) -> Cell:
    """The key's cell as the sweeper plans it."""
    cfg = config_of(key)
    return Cell(overrides(key), config_hash(cfg), run_name(cfg))


@dataclass
class LoggedSweep:
    """The recorded sweep: where it is, and every number logged, to check the report against."""

    uri: str
    client: MlflowClient
    experiment_id: str
    parent_id: str
    old_parent_id: str
    logged: dict[tuple, dict] = field(default_factory=dict)  # (backend, activation, lr, epochs, seed) -> run


def scripted_run(key: tuple, rng: np.random.Generator) -> dict:
    """Plausible per-epoch curves (epochs a few percent apart, so that timings are stable), the summary the
    harness derives from them, a confusion matrix, and test predictions that score the final test accuracy
    (right on a random subset of the images)."""
    backend, activation, lr, epochs, _ = key
    base = 0.80 + 0.03 * (activation == "softmax") + 0.02 * (lr == "0.5") + rng.normal(0, 0.004)
    test_acc = base + 0.01 * np.arange(1, epochs + 1) + rng.normal(0, 0.002, epochs)
    right = rng.permutation(N_TEST) < round(test_acc[-1] * N_TEST)
    test_acc[-1] = right.mean()
    predicted = np.where(right, TEST_LABELS, (TEST_LABELS + rng.integers(1, 10, N_TEST)) % 10)
    seconds = (0.4 if backend == "numpy" else 0.15) * (1 + rng.uniform(0, 0.1, epochs))
    history = {
        "train_loss": 1.0 / np.arange(2, epochs + 2) + rng.uniform(0, 0.01, epochs),
        "test_loss": 1.1 / np.arange(2, epochs + 2) + rng.uniform(0, 0.01, epochs),
        "train_accuracy": test_acc + 0.01,
        "test_accuracy": test_acc,
        "epoch_seconds": seconds,
    }
    if key == DIVERGED:
        history["train_loss"][-1] = history["test_loss"][-1] = np.nan
        history["test_accuracy"][-1] = 0.098
    summary = {
        "final_test_accuracy": history["test_accuracy"][-1],
        "final_train_accuracy": history["train_accuracy"][-1],
        "best_test_accuracy": np.nanmax(history["test_accuracy"]),
        "samples_per_second": N_TRAIN / np.median(seconds),
    }
    reached = np.flatnonzero(test_acc >= TARGET)
    if reached.size:
        summary["time_to_target_seconds"] = seconds[: reached[0] + 1].sum()
    confusion = rng.integers(0, 6, (10, 10)) + np.diag(rng.integers(80, 120, 10))
    predictions = np.column_stack([TEST_LABELS, predicted])
    return {"history": history, "summary": summary, "confusion": confusion, "predictions": predictions}


def epoch_metrics(history: dict, epoch: int) -> EpochMetrics:
    """Epoch ``epoch`` (1-based) of a scripted history, as a backend hands it to the run's observer."""
    values = {name: float(history[name][epoch - 1]) for name in reading.HISTORY}
    return EpochMetrics(epoch=epoch, tied_prediction_fraction=0.0, **values)


def recording(
    history: dict, confusion: np.ndarray, predictions: np.ndarray | None = None, failing_epoch: int | None = None
) -> experiment.Recording:
    """How a scripted run is recorded by experiment.record: its epochs replayed in place of training (raising
    in ``failing_epoch``), its confusion matrix and (label, predicted) rows as the artifacts, and quiet
    measurement conditions."""
    epochs = len(history["epoch_seconds"])

    def write_artifacts(folder: Path, _: FitResult) -> None:
        artifacts.write_confusion_matrix(folder / CONFUSION_ARTIFACT, confusion)
        if predictions is not None:
            artifacts.write_predictions(folder / PREDICTIONS_ARTIFACT, *predictions.T)

    def fit(callback: Callable[[EpochMetrics], bool]) -> FitResult:
        for epoch in range(1, epochs + 1):
            if epoch == failing_epoch:
                raise ValueError(ERROR.removeprefix("ValueError: "))
            if callback(epoch_metrics(history, epoch)):
                break
        return FitResult(np.zeros((784, 10)), np.zeros(10), epochs_run=epoch, warmup_seconds=0.5)

    def score(fit: FitResult) -> WeightScores:  # the kept weights are those the last epoch replayed describes
        return WeightScores(
            *(float(history[name][fit.epochs_run - 1]) for name in (f.name for f in dataclasses.fields(WeightScores)))
        )

    conditions = dataclasses.replace(QUIET, epoch_spread=timing.epoch_spread(history["epoch_seconds"]))
    return experiment.Recording(
        fit=fit,
        write_artifacts=write_artifacts,
        score=score,
        rows={"train": N_TRAIN, "test": N_TEST},
        n_features=784,
        device="cpu",
        data_source="scripted",
        probe=lambda: ScriptedProbe(conditions),
    )


@dataclass
class ScriptedProbe:
    """The machine's conditions as a scripted run says they were."""

    conditions: timing.Conditions

    def finish(self, epoch_seconds: list[float]) -> timing.Conditions:
        return self.conditions


# Run in a process of its own, which is SIGKILLed after its first epoch is stored: the run stays RUNNING with
# its process gone.
_DIES_MID_RUN = """
import json, os, signal, sys
import numpy as np
import test_report
from mnist_bench import experiment, hydra_app, machine, tracking
from mnist_bench.config import config_hash

uri, experiment_name, parent_id, sweep_name, history, *overrides = sys.argv[1:]
cfg = hydra_app.compose(*overrides)
client, experiment_id = tracking.open_existing(uri, experiment_name)
tags = experiment.run_tags(cfg, config_hash(cfg), "cpu", machine.cpu_model(), sweep_name)
tracking.runs.FLUSH_INTERVAL_S = 0  # each epoch is stored as it ends


def dies(callback):
    callback(test_report.epoch_metrics(json.loads(history), 1))
    os.kill(os.getpid(), signal.SIGKILL)


recording = test_report.recording(json.loads(history), np.eye(10))
recording = test_report.dataclasses.replace(recording, fit=dies)
experiment.record(client, experiment_id, cfg, experiment.run_params(cfg, sweep_name), tags, parent_id, recording)
"""


def log_child(
    client: MlflowClient,
    experiment_id: str,
    parent_id: str,
    key: tuple,
    run: dict,
    keras_backend: str | None = None,
    with_predictions: bool = True,
) -> None:
    """One child run as experiment.run records it (through experiment.record), with the scripted epochs in
    place of training and the ending the key calls for: FAILED raises in its second epoch, DEAD's process is
    killed after its first. Without predictions, as a harness logged it before runs stored them."""
    cfg = config_of(key, keras_backend)
    sweep_name = tracking.sweep_name(client.get_run(parent_id))
    if key == DEAD:
        history = json.dumps({name: list(map(float, values)) for name, values in run["history"].items()})
        args = [client.tracking_uri, EXPERIMENT, parent_id, sweep_name, history, *overrides(key, keras_backend)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}
        subprocess.run([sys.executable, "-c", _DIES_MID_RUN, *args], cwd=REPO, env=env, check=False, timeout=120)
        return
    tags = experiment.run_tags(cfg, config_hash(cfg), "cpu", machine.cpu_model(), sweep_name)
    predictions = run["predictions"] if with_predictions else None
    scripted = recording(run["history"], run["confusion"], predictions, failing_epoch=2 if key == FAILED else None)
    try:
        experiment.record(client, experiment_id, cfg, experiment.run_params(cfg, sweep_name), tags, parent_id, scripted)
    except ValueError as err:
        assert key == FAILED and tracking.error_text(err) == ERROR


def log_parent(client: MlflowClient, experiment_id: str, name: str, cells: list[Cell] | None) -> str:
    """A sweep's parent run as the sweeper opens it, with its planned cells unless cells is None (a sweep
    logged by a harness older than sweep_cells.json)."""
    parent_id = tracking.open_sweep(client, experiment_id, name, Path("multirun") / name, cells or []).info.run_id
    if cells is not None:
        tracking.log_sweep_plan(client, parent_id, SWEEP_ARGUMENTS, cells)
    return parent_id


@pytest.fixture(scope="module", autouse=True)
def _session_cache(cache_dir: Path) -> Iterator[None]:
    """The roofline probe that a run's summary reads comes from the session's cache, not the user's."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MNIST_BENCH_CACHE_DIR", str(cache_dir))
        yield


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory: pytest.TempPathFactory, make_store: Callable) -> LoggedSweep:
    """An older sweep whose only run failed (and no sweep_cells.json), then the sweep under test: 2 seeds of
    8 configurations, one run failed, one diverged, one left RUNNING by a dead process, and one cell missing."""
    uri = make_store(tmp_path_factory.mktemp("store")).uri  # conftest's copy of a migrated empty store
    client, experiment_id = tracking.open_store(uri, EXPERIMENT)
    old_parent = log_parent(client, experiment_id, "sweep-old", None)
    log_child(client, experiment_id, old_parent, FAILED, scripted_run(FAILED, np.random.default_rng(99)))
    client.set_terminated(old_parent, tracking.FINISHED)

    keys = [(*config, seed) for config in CONFIGS for seed in SEEDS]
    parent_id = log_parent(client, experiment_id, SWEEP, [cell_of(key) for key in keys])
    result = LoggedSweep(uri, client, experiment_id, parent_id, old_parent)
    for index, key in enumerate(keys):
        if key != MISSING:
            result.logged[key] = scripted_run(key, np.random.default_rng(index))
            log_child(client, experiment_id, parent_id, key, result.logged[key])
    client.set_terminated(parent_id, tracking.FAILED)
    return result


def run_report(sweep_store: LoggedSweep, out: Path, *args: str) -> int:
    return cli.main(["--tracking-uri", sweep_store.uri, "--out", str(out), *args])


@pytest.fixture(scope="module")
def full_report(sweep_store: LoggedSweep, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of the latest sweep (the default), unfiltered."""
    out = tmp_path_factory.mktemp("full") / "report"
    assert run_report(sweep_store, out) == 0
    return out


def ok_runs(sweep_store: LoggedSweep, config: tuple) -> list[dict]:
    """The runs of a configuration that count in the means: finished and not diverged."""
    return [run for key, run in sweep_store.logged.items() if key[:4] == config and key not in (FAILED, DIVERGED, DEAD)]


def section(text: str, title: str) -> str:
    return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def read_summary(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "summary.csv", dtype=CONFIG_DTYPES, keep_default_na=False, na_values=[""])


def assert_self_contained(folder: Path) -> None:
    """Every PNG embedded once as a data: URI, and nothing the page would fetch from elsewhere."""
    page = (folder / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(list(folder.glob("*.png")))
    assert not re.search(r"https?://", page)
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', page))
    assert not re.search(r"<script|<link|@import|url\(", page, re.IGNORECASE)


# --- the full report --------------------------------------------------------------------------------


def test_summary_numbers_equal_the_logged_metrics(sweep_store: LoggedSweep, full_report: Path) -> None:
    summary = read_summary(full_report).set_index(["backend", "activation", "lr", "epochs"])
    assert len(summary) == len(CONFIGS)
    for backend, activation, lr, epochs in CONFIGS:
        row = summary.loc[(backend, activation, lr, str(epochs))]
        runs = ok_runs(sweep_store, (backend, activation, lr, epochs))
        assert row["n"] == len(runs)
        assert row["device"] == "cpu" and row["batch_size"] == "256"
        values = {
            name: [run["summary"].get(name) for run in runs] for name in reading.METRICS if name != "seconds_per_epoch"
        }
        values["seconds_per_epoch"] = [np.median(run["history"]["epoch_seconds"]) for run in runs]
        for name, logged in values.items():
            logged = [v for v in logged if v is not None]
            assert row[f"{name}_n"] == len(logged), name
            if logged:
                assert row[f"{name}_mean"] == pytest.approx(np.mean(logged), rel=1e-9), name
            if len(logged) > 1:
                assert row[f"{name}_std"] == pytest.approx(np.std(logged, ddof=1), rel=1e-9), name
            else:
                assert np.isnan(row[f"{name}_std"]), f"{name}: one run has no spread"


def test_failed_killed_and_diverged_runs_are_excluded_but_counted(full_report: Path) -> None:
    summary = read_summary(full_report).set_index(["backend", "activation", "lr", "epochs"])
    for key in (FAILED, DIVERGED, DEAD):
        row = summary.loc[(key[0], key[1], key[2], str(key[3]))]
        assert (row["n"], row["excluded"]) == (1, 1)
    missing = summary.loc[(MISSING[0], MISSING[1], MISSING[2], str(MISSING[3]))]
    assert (missing["n"], missing["excluded"]) == (1, 0)


def test_incomplete_and_failed_cells_are_listed(sweep_store: LoggedSweep, full_report: Path) -> None:
    markdown = (full_report / "report.md").read_text()
    listed = section(markdown, document.PROBLEMS_TITLE)
    rows = {line.split(" | ")[1]: line for line in listed.splitlines() if line.startswith("| ") and " | " in line}
    assert set(rows) - {"cell"} == {cell_name(key) for key in (FAILED, MISSING, DIVERGED, DEAD)}
    assert rows[cell_name(FAILED)].startswith("| failed") and ERROR.replace("|", "\\|") in rows[cell_name(FAILED)]
    assert rows[cell_name(MISSING)].startswith("| missing")
    assert rows[cell_name(DIVERGED)].startswith("| diverged")
    assert rows[cell_name(DEAD)].startswith("| killed") and "process gone" in rows[cell_name(DEAD)]
    assert html.escape(ERROR) in (full_report / "report.html").read_text()
    dead_run_id = rows[cell_name(DEAD)].split(" | ")[2]
    assert sweep_store.client.get_run(dead_run_id).info.status == "KILLED", "reaped before the report read it"


def test_header_names_sweep_store_machine_and_command(sweep_store: LoggedSweep, full_report: Path) -> None:
    header = (full_report / "report.md").read_text().split("\n## ", 1)[0]
    assert f"`{SWEEP}`" in header and sweep_store.parent_id in header
    assert sweep_store.uri in header and machine.cpu_model() in header and f"({machine.cpu_count()} cores)" in header
    assert "Runs: 15 (1 diverged, 1 failed, 12 finished, 1 killed) of 16 cells planned" in header
    assert "`python -m mnist_bench -m backend=numpy,tf activation=sigmoid,softmax" in header


def test_files_exist_and_html_is_self_contained(full_report: Path) -> None:
    names = {path.name for path in full_report.iterdir()}
    assert names == {
        "report.md",
        "report.html",
        "summary.csv",
        "comparisons.csv",
        "curves.png",
        "accuracy_vs_time.png",
        "accuracy_vs_lr.png",
        "seconds_per_epoch.png",
        "confusion_matrices.png",
    }
    assert all((full_report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in names if name.endswith(".png"))
    assert_self_contained(full_report)
    assert "Heatmap of test accuracy over lr x epochs: skipped" in (full_report / "report.md").read_text()


def test_headline_compares_each_pair_with_numpy_sigmoid(sweep_store: LoggedSweep, full_report: Path) -> None:
    headline = tables.headline_table(read_summary(full_report), reading.BASE_CONFIG).set_index(["model", "lr"])

    def mean_accuracy(config: tuple) -> float:
        return np.mean([run["summary"]["final_test_accuracy"] for run in ok_runs(sweep_store, config)])

    numpy_sigmoid, tf_softmax = ("numpy", "sigmoid", "0.1", EPOCHS), ("tf", "softmax", "0.1", EPOCHS)
    row = headline.loc[("tf-softmax", "0.1")]
    assert row["final_test_accuracy_mean_ref"] == pytest.approx(mean_accuracy(numpy_sigmoid))
    assert row["accuracy_diff"] == pytest.approx(mean_accuracy(tf_softmax) - mean_accuracy(numpy_sigmoid))
    order = list(headline.xs("0.1", level="lr").index)
    assert order == ["numpy-sigmoid", "tf-softmax", "numpy-softmax", "tf-sigmoid"]
    text = section((full_report / "report.md").read_text(), "Headline")
    assert "McNemar's exact test, two-sided mid-p" in text and f"from {acc.SIGN_TEST_SEEDS} seeds a sign test" in text


def test_comparisons_give_each_accuracy_verdict_from_the_images_each_seeds_runs_got_right(
    sweep_store: LoggedSweep, full_report: Path
) -> None:
    comparisons = pd.read_csv(full_report / "comparisons.csv", dtype=CONFIG_DTYPES, keep_default_na=False)
    by_pair = comparisons.set_index(["reference", "candidate", "lr"])

    def discordant(reference: tuple, candidate: tuple, seeds: tuple[int, ...]) -> list[tuple[int, int]]:
        """Per seed: images only the reference's run got right, and only the candidate's."""
        counts = []
        for seed in seeds:
            right = [
                np.equal(*sweep_store.logged[(*config, seed)]["predictions"].T) for config in (reference, candidate)
            ]
            counts.append((int((right[0] & ~right[1]).sum()), int((right[1] & ~right[0]).sum())))
        return counts

    numpy_sigmoid, tf_softmax = ("numpy", "sigmoid", "0.1", EPOCHS), ("tf", "softmax", "0.1", EPOCHS)
    seeds = discordant(numpy_sigmoid, tf_softmax, SEEDS)
    row = by_pair.loc[("numpy-sigmoid", "tf-softmax", "0.1")]
    reference_only, candidate_only = (sum(counts) for counts in zip(*seeds, strict=True))
    assert (row["reference_only_right"], row["candidate_only_right"], row["test_images"]) == (
        str(reference_only),
        str(candidate_only),
        str(N_TEST),
    )
    assert float(row["accuracy_p_value"]) == pytest.approx(acc.mcnemar_mid_p(reference_only, candidate_only))
    agree = len({np.sign(c - b) for b, c in seeds} | {np.sign(candidate_only - reference_only)}) == 1
    assert (
        row["accuracy_rule"]
        == f"McNemar pooled over 2 seeds, {'every seed agreeing' if agree else 'seeds disagreeing'}"
    )
    called = agree and float(row["accuracy_p_value"]) < acc.ALPHA
    direction = acc.MORE_ACCURATE if candidate_only > reference_only else acc.LESS_ACCURATE
    assert row["accuracy_verdict"] == (direction if called else acc.WITHIN_NOISE)
    # tf-softmax lr=0.5 has one finished run (seed 1 failed): it is paired with numpy-sigmoid's seed 0 alone.
    ((b, c),) = discordant(("numpy", "sigmoid", "0.5", EPOCHS), ("tf", "softmax", "0.5", EPOCHS), (0,))
    row = by_pair.loc[("numpy-sigmoid", "tf-softmax", "0.5")]
    assert row["accuracy_rule"] == acc.ONE_SEED
    assert (row["reference_only_right"], row["candidate_only_right"]) == (str(b), str(c))
    assert float(row["accuracy_p_value"]) == pytest.approx(acc.mcnemar_mid_p(b, c))


def test_comparisons_give_each_speed_ratio_with_its_interval_and_verdict(
    sweep_store: LoggedSweep, full_report: Path
) -> None:
    comparisons = pd.read_csv(full_report / "comparisons.csv", dtype=CONFIG_DTYPES, keep_default_na=False)
    order = ["numpy-sigmoid", "tf-softmax", "numpy-softmax", "tf-sigmoid"]  # the headline's
    at_01 = comparisons[comparisons["lr"] == "0.1"]
    pairs = list(zip(at_01["reference"], at_01["candidate"], strict=True))
    assert sorted(pairs) == sorted((a, b) for i, a in enumerate(order) for b in order[i + 1 :])  # each pair once
    by_pair = comparisons.set_index(["reference", "candidate", "lr"])
    row = by_pair.loc[("numpy-sigmoid", "tf-softmax", "0.1")]

    def epochs(config: tuple) -> np.ndarray:
        return np.concatenate([run["history"]["epoch_seconds"] for run in ok_runs(sweep_store, config)])

    def accuracy(config: tuple) -> float:
        return np.mean([run["summary"]["final_test_accuracy"] for run in ok_runs(sweep_store, config)])

    expected = np.median(epochs(("numpy", "sigmoid", "0.1", EPOCHS))) / np.median(
        epochs(("tf", "softmax", "0.1", EPOCHS))
    )
    assert row["speed_ratio"] == pytest.approx(expected)  # the medians of the timed epochs, pooled per side
    tf_sigmoid, numpy_softmax = ("tf", "sigmoid", "0.1", EPOCHS), ("numpy", "softmax", "0.1", EPOCHS)
    other = by_pair.loc[("numpy-softmax", "tf-sigmoid", "0.1")]  # a pair without numpy-sigmoid in it
    assert other["speed_ratio"] == pytest.approx(np.median(epochs(numpy_softmax)) / np.median(epochs(tf_sigmoid)))
    assert float(other["accuracy_diff"]) == pytest.approx(accuracy(tf_sigmoid) - accuracy(numpy_softmax))
    assert row["speed_ratio_low"] <= row["speed_ratio"] <= row["speed_ratio_high"]
    verdict = "faster" if row["speed_ratio_low"] > 1 else "slower" if row["speed_ratio_high"] < 1 else "within noise"
    assert row["speed_verdict"] == verdict  # the logged runs carry no timing_unstable tag
    assert row["timed_runs"] == len(SEEDS)
    headline = section((full_report / "report.md").read_text(), "Headline")
    faster = {"faster": "tf-softmax is faster", "slower": "numpy-sigmoid is faster"}.get(verdict, "neither is faster")
    assert "**tf-softmax vs numpy-sigmoid** (lr=0.1" in headline and f"{faster} (speed ratio " in headline


FRESH_RUN = "tf-softmax-lr0.1-s0-e3"
UNLOGGED = (
    f"no test_predictions.csv on {FRESH_RUN} (logged by a harness that did not store predictions): run the sweep "
    "again with resume=false"
)


def judged(verdict: str, p_value: float, rule: str, only_right: tuple[int, int], means: tuple[float, float]) -> dict:
    """An accuracy verdict's fields as compared_with gives them: only_right = (reference's, candidate's)
    discordant images, means = (candidate's, reference's) mean test accuracy."""
    counts = dict(zip(["reference_only_right", "candidate_only_right"], only_right, strict=True))
    scores = dict(zip(["final_test_accuracy_mean", "final_test_accuracy_mean_ref"], means, strict=True))
    fields = {"accuracy_verdict": verdict, "accuracy_p_value": p_value, "accuracy_rule": rule, "test_images": 10_000}
    return fields | counts | scores


POOLED = "McNemar pooled over 3 seeds, "
# (the accuracy verdict's fields, the speed verdict, fewer timed runs of the two sides, what the sentence must say)
ANSWERS = {
    "candidate-wins-both": (
        judged(acc.MORE_ACCURATE, 2e-5, acc.ONE_SEED, (100, 319), (0.9213, 0.8994)), "faster", 2,
        "tf-softmax is more accurate than numpy-sigmoid (0.9213 against 0.8994, McNemar p < 0.001 on the 10,000 test "
        "images), and tf-softmax is faster (speed ratio 1.50×"),
    "reference-wins-both": (
        judged(acc.LESS_ACCURATE, 0.0123, POOLED + "every seed agreeing", (360, 300), (0.8994, 0.9213)), "slower", 2,
        "numpy-sigmoid is more accurate than tf-softmax (0.9213 against 0.8994, p = 0.012 by McNemar pooled over 3 "
        "seeds, every seed agreeing, on 10,000 test images a seed), and numpy-sigmoid is faster"),
    "within-noise-on-one-seed": (
        judged(acc.WITHIN_NOISE, 0.4149, acc.ONE_SEED, (40, 45), (0.9005, 0.9)), "within noise", 2,
        "neither is more accurate beyond chance (tf-softmax 0.9005, numpy-sigmoid 0.9000, McNemar p = 0.41 on the "
        "10,000 test images; add seeds (seed=0,1,2) to tell a smaller difference), and neither is faster beyond "
        "timing noise (speed ratio 1.50× (1.20–1.80); more seeds would tell a smaller difference)"),
    "seeds-disagree": (
        judged(acc.WITHIN_NOISE, 2e-5, POOLED + acc.SEEDS_DISAGREE, (300, 360), (0.906, 0.9)), "faster", 2,
        "neither is more accurate beyond chance (tf-softmax 0.9060, numpy-sigmoid 0.9000, p < 0.001 by McNemar "
        "pooled over 3 seeds, seeds disagreeing, on 10,000 test images a seed; more seeds would tell)"),
    "identical": (
        judged(acc.WITHIN_NOISE, 1.0, acc.ONE_SEED, (0, 0), (0.9, 0.9)), "faster", 2,
        "neither is more accurate: both got the same test images right (tf-softmax 0.9000, numpy-sigmoid 0.9000), "
        "and tf-softmax is faster"),
    "unknowns": (
        judged(acc.UNKNOWN, np.nan, UNLOGGED, (np.nan, np.nan), (0.9, 0.9)), f"unreliable: {FRESH_RUN}: other", 1,
        f"whether either is more accurate cannot be said: {UNLOGGED}, and which is faster cannot be said: the speed "
        f"ratio 1.50× (1.20–1.80) is unreliable: {FRESH_RUN}: other; run it again when the machine is quieter"),
    "one-run-a-side": (
        judged(acc.MORE_ACCURATE, 0.002, acc.ONE_SEED, (10, 30), (0.902, 0.9)), "slower", 1,
        "and numpy-sigmoid was faster in one run a side (speed ratio 1.50× (1.20–1.80), an interval over its epochs "
        "that cannot see a drift between runs: add seed=0,1,2 to tell)"),
}  # fmt: skip


@pytest.mark.parametrize(("paired", "verdict", "runs", "expected"), ANSWERS.values(), ids=ANSWERS.keys())
def test_the_headline_says_which_is_more_accurate_and_which_is_faster_as_far_as_the_verdicts_allow(
    paired: dict, verdict: str, runs: int, expected: str
) -> None:
    row = {"backend": "tf", "activation": "softmax", "model": "tf-softmax", "accuracy_diff": 0.0} | paired
    row |= {"speed_verdict": verdict, "speed_ratio": 1.5, "timed_runs": runs}
    row |= {"speed_ratio_low": 1.2, "speed_ratio_high": 1.8}
    (sentence,) = document._answers(pd.DataFrame([row]), ["backend", "activation"])
    assert sentence.startswith("**tf-softmax vs numpy-sigmoid**: ") and sentence.endswith(".")
    assert expected in sentence


def test_a_verdict_from_paired_rounds_is_said_of_the_models_even_with_one_run_a_side() -> None:
    """Paired rounds time both models under the same conditions, epoch by epoch: no hedge about one run."""
    row = {"backend": "tf", "activation": "softmax", "model": "tf-softmax", "accuracy_diff": 0.003}
    row |= {"beyond_spread": "unknown (n=1: spread unknown)", "speed_verdict": "faster", "timed_runs": 1}
    row |= {"speed_ratio": 1.5, "speed_ratio_low": 1.2, "speed_ratio_high": 1.8}
    row |= {"speed_basis": "paired rounds: 9 of 10 clean"}
    (sentence,) = document._answers(pd.DataFrame([row]), ["backend", "activation"])
    assert sentence.endswith("and tf-softmax is faster (speed ratio 1.50× (1.20–1.80)).")
    row |= {"speed_verdict": "within noise", "speed_ratio_low": 0.9}
    (sentence,) = document._answers(pd.DataFrame([row]), ["backend", "activation"])
    assert sentence.endswith("(0.90–1.80); more epochs (more rounds) would tell a smaller difference).")


def test_confusion_matrices_are_each_models_most_accurate_finished_run(sweep_store: LoggedSweep) -> None:
    _, selection = reading.select(cli.parse_args(["--tracking-uri", sweep_store.uri]))
    expected = {}
    for model in dict.fromkeys(config[:2] for config in CONFIGS):
        finished = [(k, run) for k, run in sweep_store.logged.items() if k[:2] == model and k not in (FAILED, DEAD)]
        finished = [(k, run) for k, run in finished if k != DIVERGED]  # diverged runs are not "finished"
        best, run = max(finished, key=lambda item: item[1]["summary"]["final_test_accuracy"])
        expected[cell_name(best)] = run["confusion"]
    shown = {label.split(": ")[1].split(" ")[0]: counts for label, counts in selection.confusion_matrices.items()}
    assert list(shown) == list(expected)  # one per backend-activation, in table order
    for name, counts in shown.items():
        np.testing.assert_array_equal(counts, expected[name])


def test_runs_logged_without_predictions_get_an_unknown_accuracy_verdict_with_the_reason(
    tmp_path: Path, make_store: Callable
) -> None:
    """A sweep logged by a harness older than test_predictions.csv still reports: the accuracy verdict is
    unknown, naming the runs without it and what to do, in comparisons.csv, the table and the headline."""
    uri = make_store(tmp_path).uri
    client, experiment_id = tracking.open_store(uri, EXPERIMENT)
    keys = [("numpy", "sigmoid", "0.1", EPOCHS, 0), ("tf", "softmax", "0.1", EPOCHS, 0)]
    parent_id = log_parent(client, experiment_id, SWEEP, [cell_of(key) for key in keys])
    for index, key in enumerate(keys):
        run = scripted_run(key, np.random.default_rng(index))
        log_child(client, experiment_id, parent_id, key, run, with_predictions=key[0] == "numpy")
    client.set_terminated(parent_id, tracking.FINISHED)

    out = tmp_path / "report"
    assert cli.main(["--tracking-uri", uri, "--out", str(out)]) == 0
    (row,) = pd.read_csv(out / "comparisons.csv", keep_default_na=False).to_dict("records")
    assert row["accuracy_verdict"] == acc.UNKNOWN and row["accuracy_p_value"] == ""
    reason = f"no test_predictions.csv on {cell_name(keys[1])} (logged by a harness that did not store predictions)"
    assert row["accuracy_rule"] == f"{reason}: run the sweep again with resume=false"
    assert row["reference_only_right"] == row["candidate_only_right"] == ""
    headline = section((out / "report.md").read_text(), "Headline")
    assert f"whether either is more accurate cannot be said: {reason}" in headline
    assert f"| unknown: {reason}" in headline  # the table's accuracy verdict


def test_keras_on_jax_is_a_model_of_its_own(tmp_path: Path, make_store: Callable) -> None:
    """Keras on JAX and Keras on TensorFlow, at otherwise equal settings, are two rows beside numpy-sigmoid:
    backend.keras_backend shows in the model's name, not as a setting that would part them from NumPy's."""
    client, experiment_id = tracking.open_store(make_store(tmp_path).uri, EXPERIMENT)
    parent_id = log_parent(client, experiment_id, "sweep-keras", None)
    engines = [("numpy", "sigmoid", "tensorflow"), ("keras", "softmax", "tensorflow"), ("keras", "softmax", "jax")]
    for seed, (backend, activation, engine) in enumerate(engines):
        key = (backend, activation, "0.1", EPOCHS, seed)
        log_child(client, experiment_id, parent_id, key, scripted_run(key, np.random.default_rng(seed)), engine)
    runs, params = reading.load_runs(tracking.children(client, experiment_id, parent_id))
    assert sorted(runs["backend"]) == ["keras", "keras[jax]", "numpy"]
    columns = reading.config_columns(runs, params)
    assert "backend.keras_backend" in params and "backend.keras_backend" not in columns
    headline = tables.headline_table(tables.summary_table(runs, columns), columns)
    assert headline["model"].tolist() == ["numpy-sigmoid", "keras-softmax", "keras[jax]-softmax"]
    assert headline["final_test_accuracy_mean_ref"].notna().all()


def test_artifacts_are_logged_to_the_parent_run(sweep_store: LoggedSweep, full_report: Path) -> None:
    logged = {
        item.path.removeprefix("report/") for item in sweep_store.client.list_artifacts(sweep_store.parent_id, "report")
    }
    assert {path.name for path in full_report.iterdir()} <= logged
    assert not list(full_report.glob(".*")), "no temporary file is left behind"


# --- selection and filters --------------------------------------------------------------------------


def test_filters_narrow_the_rows(sweep_store: LoggedSweep, tmp_path: Path) -> None:
    out = tmp_path / "numpy"
    assert run_report(sweep_store, out, "--sweep", SWEEP, "--filter", "backend.name=numpy", "--filter", "lr=0.10") == 0
    summary = read_summary(out)
    assert list(summary["activation"]) == ["sigmoid", "softmax"]
    assert set(summary["backend"]) == {"numpy"} and set(summary["lr"]) == {"0.1"}
    markdown = (out / "report.md").read_text()
    assert "Test accuracy against lr: skipped" in markdown
    assert "Filters: `backend.name=numpy`, `lr=0.10`" in markdown
    assert_self_contained(out)
    logged = sweep_store.client.list_artifacts(sweep_store.parent_id, "report/filtered/backend.name=numpy,lr=0.10")
    assert {item.path.rsplit("/", 1)[1] for item in logged} == {path.name for path in out.iterdir()}


def test_the_default_folder_is_reports_sweep_which_git_ignores(
    sweep_store: LoggedSweep, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--tracking-uri", sweep_store.uri, "--sweep", "sweep-old"]) == 0
    assert (tmp_path / "reports" / "sweep-old" / "report.md").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["reports"]
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: no .gitignore to check")
    ignored = ["git", "check-ignore", "--quiet", "--no-index"]
    assert subprocess.run([*ignored, "reports/sweep-old/report.md"], cwd=REPO).returncode == 0
    assert subprocess.run([*ignored, "results/example/report.md"], cwd=REPO).returncode == 1  # the examples stay


def test_a_sweep_whose_runs_all_failed_is_still_reported(sweep_store: LoggedSweep, tmp_path: Path) -> None:
    out = tmp_path / "old"
    assert run_report(sweep_store, out, "--sweep", "sweep-old") == 0
    summary = read_summary(out)
    assert (list(summary["n"]), list(summary["excluded"])) == ([0], [1])
    markdown = (out / "report.md").read_text()
    assert "No configuration has a finished run" in markdown and "No plots: no run" in markdown
    listed = section(markdown, document.PROBLEMS_TITLE)
    assert f"has no {CELLS_ARTIFACT}" in listed and ERROR.replace("|", "\\|") in listed
    assert not list(out.glob("*.png"))
    assert_self_contained(out)


def test_a_relaunched_finished_sweep_reports_the_runs_its_cells_reused(tmp_path: Path, make_store: Callable) -> None:
    """Launching a finished named sweep again trains nothing (resume skips every finished cell) and makes a
    newer parent of the same name: its report is the earlier runs, said to be reused, not "has no runs"."""
    uri = make_store(tmp_path).uri
    client, experiment_id = tracking.open_store(uri, EXPERIMENT)
    keys = [(backend, "sigmoid", "0.1", EPOCHS, 0) for backend in ("numpy", "tf")]
    cells = [cell_of(key) for key in keys]
    first = log_parent(client, experiment_id, SWEEP, cells)
    for index, key in enumerate(keys):
        log_child(client, experiment_id, first, key, scripted_run(key, np.random.default_rng(index)))
    client.set_terminated(first, tracking.FINISHED)
    never_run = Cell(["backend=jax"], "hash-never-run", "jax-sigmoid")
    relaunch = log_parent(client, experiment_id, SWEEP, [*cells, never_run])
    client.set_terminated(relaunch, tracking.FINISHED)

    out = tmp_path / "report"
    assert cli.main(["--tracking-uri", uri, "--out", str(out), "--sweep", SWEEP]) == 0
    header = (out / "report.md").read_text().split("\n## ", 1)[0]
    assert relaunch in header and "Runs: 2 (2 finished) of 3 cells planned" in header
    assert "Reused: 2 run(s) trained by an earlier sweep" in header
    assert sorted(read_summary(out)["backend"]) == ["numpy", "tf"]
    listed = section((out / "report.md").read_text(), document.PROBLEMS_TITLE)
    problems = [line for line in listed.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(problems) == 1 and problems[0].startswith("| missing | jax-sigmoid"), listed


def test_a_run_logged_before_the_system_prefix_reads_as_one_logged_with_it(store) -> None:
    """The measurement conditions moved under ``system/``: the report's columns keep one name for both."""
    client, experiment_id = tracking.open_store(store.uri, "mnist-bench")
    rows = []
    for prefix in ("", "system/"):
        run_id = client.create_run(experiment_id).info.run_id
        for key, value in {"final_test_accuracy": 0.9, f"{prefix}load_average_start": 1.5}.items():
            client.log_metric(run_id, key, value)
        rows.append(reading._run_row(client.get_run(run_id)))
    assert [(row["final_test_accuracy"], row["load_average_start"]) for row in rows] == [(0.9, 1.5)] * 2


def test_find_sweep_by_name_id_and_latest(sweep_store: LoggedSweep) -> None:
    def found(wanted: str) -> str:
        return tracking.find_sweep(sweep_store.client, sweep_store.experiment_id, wanted, "here").info.run_id

    assert found("latest") == found(SWEEP) == found(sweep_store.parent_id) == sweep_store.parent_id
    assert found("sweep-old") == sweep_store.old_parent_id


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--sweep", "nope"], ["'nope'", SWEEP, "sweep-old"]),
        (["--filter", "lr=0.3"], ["lr=0.3", "0.1, 0.5"]),
        (["--filter", "backend.name=numpy", "--filter", "activation=relu"], ["activation=relu", "sigmoid, softmax"]),
        (["--filter", "colour=red"], ["'colour'", "backend.name", "lr"]),
        (["--filter", "lr"], ["KEY=VALUE"]),
        (["--experiment", "other"], ["'other'", EXPERIMENT]),
    ],
)
def test_nothing_selected_is_one_line_exit_2_and_writes_nothing(
    sweep_store: LoggedSweep,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    args,
    expected,
) -> None:
    monkeypatch.chdir(tmp_path)  # the default --out is relative: reports/<sweep>/

    def artifacts() -> list[tuple]:
        return [(item.path, item.file_size) for item in sweep_store.client.list_artifacts(sweep_store.parent_id)]

    before = artifacts()
    assert cli.main(["--tracking-uri", sweep_store.uri, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mnist-bench report: error: ") and err.count("\n") == 1
    assert all(text in err for text in expected), err
    assert not list(tmp_path.iterdir())
    assert artifacts() == before


def test_out_naming_a_file_is_one_line_exit_2(sweep_store: LoggedSweep, tmp_path: Path, capsys) -> None:
    taken = tmp_path / "a-file"
    taken.write_text("mine")
    assert cli.main(["--tracking-uri", sweep_store.uri, "--out", str(taken)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mnist-bench report: error: cannot write the report to {taken} (") and err.count("\n") == 1
    assert taken.read_text() == "mine"


@pytest.mark.parametrize("fault", ["full_disk", "unwritable_folder"])
def test_a_report_it_cannot_write_is_one_line_exit_2_and_leaves_no_file(
    sweep_store: LoggedSweep, fault: str, request: pytest.FixtureRequest, capsys
) -> None:
    """On a full disk it was a traceback, and a report folder holding only report.md."""
    place = request.getfixturevalue(fault)
    before = sorted(place.iterdir())
    out = place / "reports" / "sweep"
    assert run_report(sweep_store, out) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mnist-bench report: error: cannot write the report to {out} (") and err.count("\n") == 1
    assert err.endswith(" (or choose another --out)\n"), err
    assert sorted(place.iterdir()) == before


def test_a_report_written_again_replaces_its_files_and_keeps_others(sweep_store: LoggedSweep, tmp_path: Path) -> None:
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "report.md").write_text("an older report")
    assert run_report(sweep_store, out) == 0
    assert (out / "notes.txt").read_text() == "mine" and "an older report" not in (out / "report.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_a_long_sweep_name_makes_a_bounded_folder_name_that_stays_its_own() -> None:
    """File systems allow 255 bytes a name: a 300-character sweep name broke the report ("File name too long")."""
    first, second = cli._slug("x" * 300), cli._slug("x" * 299 + "y")
    assert len(first) == len(second) == cli.SLUG_MAX and first != second
    assert cli._slug("sweep-20261202") == "sweep-20261202"


def test_missing_store_is_reported_and_not_created(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = tmp_path / "nowhere.db"
    assert cli.main(["--tracking-uri", f"sqlite:///{db}", "--out", str(tmp_path / "out")]) == 2
    assert "no tracking store at" in capsys.readouterr().err
    assert not db.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("a", "b"), [("0.1", "0.10"), ("0.1", "1e-1"), ("256", "256.0"), ("None", "null"), ("True", "true")]
)
def test_normalise_makes_equal_values_equal(a: str, b: str) -> None:
    assert normalise(a) == normalise(b)
    assert normalise("0.1") != normalise("0.5")


def test_heatmap_when_lr_and_epochs_both_vary() -> None:
    grid = [
        ("numpy", "sigmoid", lr, epochs, seed)
        for lr in ("0.01", "0.1", "1")
        for epochs in ("5", "10")
        for seed in (0, 1)
    ]
    runs = pd.DataFrame(grid, columns=["backend", "activation", "lr", "epochs", "seed"]).assign(
        device="cpu", batch_size="None", status="finished", seconds_per_epoch=0.5
    )
    runs = runs.assign(**{metric: 0.9 for metric in reading.METRICS if metric != "seconds_per_epoch"})
    summary = tables.summary_table(runs, reading.BASE_CONFIG)
    assert list(summary["lr"]) == ["0.01", "0.01", "0.1", "0.1", "1", "1"]  # numeric order
    assert list(summary["epochs"])[:2] == ["5", "10"] and set(summary["n"]) == {2}
    plot = plots.heatmap(summary, reading.BASE_CONFIG)
    assert plot.name == "heatmap_lr_epochs.png" and plot.png.startswith(b"\x89PNG")
    assert "skipped" in plots.heatmap(summary[summary["lr"] == "0.1"], reading.BASE_CONFIG)


# --- plots ------------------------------------------------------------------------------------------


def hand_made(backends: dict[str, float], activations: tuple[str, ...] = ("sigmoid", "softmax")) -> tuple:
    """Runs and histories of one seed per backend x activation, lr=0.1, 3 epochs: the same curves for every
    backend, each shifted by its offset, and each backend as fast as its position in the dict says."""
    runs, epochs = [], []
    for index, (backend, offset) in enumerate(backends.items()):
        for activation in activations:
            run_id = f"{backend}-{activation}"
            runs.append((run_id, backend, activation, "cpu", "0.1", "3", "256"))
            for epoch in (1, 2, 3):
                loss = (3.0 if activation == "sigmoid" else 1.0) / epoch + offset
                accuracy = 0.8 + 0.02 * epoch + offset
                epochs.append((run_id, epoch, loss, accuracy, loss * 1.1, accuracy - 0.01, 0.1 * (index + 1)))
    runs = pd.DataFrame(runs, columns=["run_id", *reading.BASE_CONFIG])
    histories = pd.DataFrame(epochs, columns=["run_id", "epoch", *reading.HISTORY])
    return runs, histories


def texts(figure) -> list:
    """The visible, non-empty texts of a drawn figure: titles, axis and tick labels, annotations, legends."""
    found = list(figure.texts)
    for ax in figure.axes:
        if ax.get_visible():
            found += [ax.title, ax.xaxis.label, ax.yaxis.label]
            for axis in (ax.xaxis, ax.yaxis):  # the ticks in view: matplotlib keeps, but does not draw, the rest
                low, high = sorted(axis.get_view_interval())
                ticks = zip(axis.get_majorticklocs(), axis.get_major_ticks(), strict=False)
                slack = 1e-9 * (high - low)
                found += [tick.label1 for loc, tick in ticks if low - slack <= loc <= high + slack]
            found += ax.texts + (ax.get_legend().get_texts() if ax.get_legend() else [])
    for legend in figure.legends:
        found += legend.get_texts()
    return [t for t in found if t.get_visible() and t.get_text().strip()]


def overlapping_texts(figure) -> list[tuple[str, str]]:
    """Pairs of texts whose drawn boxes overlap, and texts that stick out of the figure: a label over a label."""
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts(figure)]
    bad = [(name, "outside the figure") for name, box in boxes if not figure.bbox.contains(box.x0, box.y0)]
    bad += [(name, "outside the figure") for name, box in boxes if not figure.bbox.contains(box.x1, box.y1)]
    for i, (name, box) in enumerate(boxes):
        bad += [(name, other) for other, box2 in boxes[i + 1 :] if box.shrunk(0.98, 0.9).overlaps(box2)]
    return bad


def test_an_unreliable_speed_verdict_names_each_unstable_run_once() -> None:
    """The verdict said "numpy-sigmoid numpy-sigmoid-lr0.1-s0-e3: ..." and "(and 1 more runs)" without naming
    that run: now each unstable run of either side by its name (which names the model), with its reason."""
    runs, histories = hand_made({"numpy": 0.0, "tf": 0.0})
    busy = "other processes used 35% of the CPU (timing.max_other_cpu_share=0.2)"
    runs = runs.assign(status="finished", run_name=runs["run_id"] + "-lr0.1-s0-e3", timing_unstable="")
    runs.loc[runs["run_id"].isin(["numpy-sigmoid", "tf-softmax"]), "timing_unstable"] = busy
    speed = tables.speed_table(runs, histories, reading.BASE_CONFIG).set_index("model")["speed_verdict"]
    both = f"unreliable: numpy-sigmoid-lr0.1-s0-e3: {busy}; tf-softmax-lr0.1-s0-e3: {busy}"
    assert (speed["tf-softmax"], speed["numpy-softmax"]) == (both, f"unreliable: numpy-sigmoid-lr0.1-s0-e3: {busy}")


def test_the_csvs_write_the_full_batch_as_full_as_the_report_does() -> None:
    runs, histories = hand_made({"numpy": 0.0, "tf": 0.001})
    metrics = dict.fromkeys(reading.METRICS, 0.9)
    runs = runs.assign(batch_size="None", status="finished", run_name=runs["run_id"], timing_unstable="", **metrics)
    summary = tables.summary_table(runs, reading.BASE_CONFIG)
    files = document.csv_files(summary, runs, histories, {}, reading.BASE_CONFIG)
    for name in ("summary.csv", "comparisons.csv"):
        written = pd.read_csv(io.BytesIO(files[name]), dtype=str, keep_default_na=False)
        assert len(written) and set(written["batch_size"]) == {"full"}, name


def test_coinciding_backends_are_named_and_drawn_apart() -> None:
    runs, histories = hand_made({"numpy": 0.0, "tf": 0.0, "jax": 0.03})
    (plot,) = plots.curves(runs, histories, reading.BASE_CONFIG)
    assert "Coinciding series" in plot.caption and "numpy and tf (at every setting drawn)" in plot.caption
    assert "jax" not in plot.caption.split("Coinciding series", 1)[1]
    assert all("coincide: numpy = tf" in ax.get_title() for ax in plot.figure.axes)
    styles = {
        line.get_label(): (line.get_marker(), str(line.get_linestyle()))
        for line in plot.figure.axes[0].get_lines()
        if not line.get_label().startswith("_")
    }
    assert len(set(styles.values())) == len(styles) == 3, styles  # numpy, tf and jax each look different

    runs, histories = hand_made({"numpy": 0.0, "tf": 0.001})  # 0.001 apart: not drawn on top of each other
    (plot,) = plots.curves(runs, histories, reading.BASE_CONFIG)
    assert "Coinciding" not in plot.caption and not any("coincide" in ax.get_title() for ax in plot.figure.axes)


def test_the_full_report_names_no_coincidence_where_there_is_none(full_report: Path) -> None:
    markdown = (full_report / "report.md").read_text()  # scripted_run draws every run's curves apart
    assert "curves.png" in markdown and "Coinciding series" not in markdown


def test_loss_curves_of_different_activations_never_share_an_axis(sweep_store: LoggedSweep) -> None:
    _, selection = reading.select(cli.parse_args(["--tracking-uri", sweep_store.uri]))
    drawn, _ = document.make_plots(selection, tables.summary_table(selection.runs, selection.columns))
    (curves,) = [plot for plot in drawn if plot.name.startswith("curves")]
    loss_axes = [ax for ax in curves.figure.axes if ": loss" in ax.get_title()]
    assert [ax.get_title().split(":")[0] for ax in loss_axes] == ["sigmoid", "softmax"]
    assert "BCE summed" in loss_axes[0].get_ylabel() and "cross-entropy" in loss_axes[1].get_ylabel()
    for ax, activation in zip(loss_axes, ("sigmoid", "softmax"), strict=True):
        drawn = {line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")}
        assert drawn == {"numpy lr=0.1", "numpy lr=0.5", "tf lr=0.1", "tf lr=0.5"}, activation
        numpy_lines = [line for line in ax.get_lines() if line.get_label() == "numpy lr=0.1"]
        expected = np.mean(
            [run["history"]["test_loss"] for run in ok_runs(sweep_store, ("numpy", activation, "0.1", EPOCHS))], axis=0
        )
        np.testing.assert_allclose(numpy_lines[0].get_ydata(), expected)  # this activation's runs, no other


def test_accuracy_against_cumulative_seconds(sweep_store: LoggedSweep, full_report: Path) -> None:
    markdown = (full_report / "report.md").read_text()
    assert "![accuracy_vs_time.png](accuracy_vs_time.png)" in markdown
    assert "Test accuracy against the training seconds spent so far" in markdown
    _, selection = reading.select(cli.parse_args(["--tracking-uri", sweep_store.uri]))
    finished = selection.runs[selection.runs["status"].eq("finished")]
    (plot,) = plots.accuracy_vs_time(finished, selection.histories, selection.columns)
    (ax,) = [ax for ax in plot.figure.axes if ax.get_title().startswith("softmax")]
    (line,) = [line for line in ax.get_lines() if line.get_label() == "tf lr=0.1"]
    runs = ok_runs(sweep_store, ("tf", "softmax", "0.1", EPOCHS))
    assert len(runs) == 2
    np.testing.assert_allclose(line.get_xdata(), np.mean([np.cumsum(r["history"]["epoch_seconds"]) for r in runs], 0))
    np.testing.assert_allclose(line.get_ydata(), np.mean([r["history"]["test_accuracy"] for r in runs], 0))
    runs, histories = hand_made({"numpy": 0.0})
    assert "skipped" in plots.accuracy_vs_time(runs, histories.assign(epoch_seconds=np.nan), reading.BASE_CONFIG)


def test_accuracy_vs_lr_is_one_panel_with_a_line_per_model(full_report: Path, sweep_store: LoggedSweep) -> None:
    _, selection = reading.select(cli.parse_args(["--tracking-uri", sweep_store.uri]))
    plot = plots.accuracy_vs_lr(tables.summary_table(selection.runs, selection.columns), selection.columns)
    assert len([ax for ax in plot.figure.axes if ax.get_visible()]) == 1
    labels = [text.get_text() for legend in plot.figure.legends for text in legend.get_texts()]
    assert sorted(labels) == ["numpy-sigmoid", "numpy-softmax", "tf-sigmoid", "tf-softmax"]


@pytest.mark.parametrize(("count", "grid"), [(1, (1, 1)), (3, (1, 3)), (4, (2, 2)), (6, (2, 3)), (8, (4, 2))])
def test_panel_grids_leave_no_orphan(count: int, grid: tuple[int, int]) -> None:
    assert plots._grid(count) == grid


def test_no_label_is_drawn_over_another(sweep_store: LoggedSweep) -> None:
    _, selection = reading.select(cli.parse_args(["--tracking-uri", sweep_store.uri]))
    drawn, _ = document.make_plots(selection, tables.summary_table(selection.runs, selection.columns))
    runs = pd.DataFrame(
        {"run_id": ["a", "b", "c"], "backend": ["numpy", "tf", "keras"], "seconds_per_epoch": [1.0, 0.004, 0.3]}
    ).assign(activation="sigmoid", device="cpu", lr="0.1", epochs="3", batch_size="256")
    short_bar = plots.seconds_per_epoch_bars(runs, reading.BASE_CONFIG)  # tf's bar is too short for its label
    for plot in [*drawn, short_bar]:
        assert overlapping_texts(plot.figure) == [], plot.name


def test_markdown_points_mlflow_readers_to_the_html(full_report: Path) -> None:
    assert render.MLFLOW_NOTE in (full_report / "report.md").read_text()
    assert "Markdown preview" not in (full_report / "report.html").read_text()


def test_report_html_shows_the_prose_markdown_rendered_not_as_its_markers(full_report: Path) -> None:
    page = (full_report / "report.html").read_text()
    assert "<strong>tf-softmax vs numpy-sigmoid</strong> (lr=0.1" in page  # the headline's sentence
    assert "<code>python -m mnist_bench -m backend=numpy,tf" in page  # the header's command
    assert "**" not in page and "`" not in page


def test_html_inline_markup_is_escaped_and_code_spans_keep_their_stars() -> None:
    page = render.to_html("t", [("p", "**a & b** call `f(**kw)` on <x>, and **c**")])
    assert "<p><strong>a &amp; b</strong> call <code>f(**kw)</code> on &lt;x&gt;, and <strong>c</strong></p>" in page


# --- end to end ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_sweep_then_report_through_the_cli(
    tmp_path: Path, mnist_dir: Path, run_cli: Callable, hydra_args: Callable
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [
        "backend=numpy",
        "activation=sigmoid,softmax",
        "lr=0.1,0.5",
        "epochs=2",
        "batch_size=256",
        "dataset.train_limit=2000",
        "dataset.test_limit=500",
        f"tracking.uri={uri}",
        *hydra_args(tmp_path),
    ]
    env = {"MNIST_BENCH_DATA_DIR": str(mnist_dir)}
    done = run_cli(["-m", *overrides], tmp_path, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = tmp_path / "report"
    done = run_cli(["report", "--tracking-uri", uri, "--out", str(out)], tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = read_summary(out)
    assert len(summary) == 4 and set(summary["n"]) == {1}
    assert set(summary["activation"]) == {"sigmoid", "softmax"} and set(summary["lr"]) == {"0.1", "0.5"}
    assert summary["final_test_accuracy_mean"].between(0, 1).all()  # how well 2 epochs train is not our business
    assert summary["seconds_per_epoch_mean"].gt(0).all()
    markdown = (out / "report.md").read_text()
    assert "None: every cell of the selection finished without diverging." in markdown
    assert_self_contained(out)


@pytest.mark.slow
def test_a_real_sweep_calls_a_clear_gap_on_one_seed_and_identical_predictions_within_noise(
    tmp_path: Path, mnist_dir: Path, run_cli: Callable, hydra_args: Callable
) -> None:
    """The mission's command on a slice, in float64, where NumPy and TensorFlow predict every image alike: at
    lr=0.5 after two full-batch epochs on 2,000 images the softmax leads the sigmoid by about 8 points on
    1,000 test images, which one seed tells apart; the same activation on the two backends is within noise."""
    import_extra("tensorflow", "tf")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = ["dtype=float64", "lr=0.5", "epochs=2", "dataset.train_limit=2000", "dataset.test_limit=1000"]
    overrides = ["backend=numpy,tf", "activation=sigmoid,softmax", *settings, f"tracking.uri={uri}"]
    env = {"MNIST_BENCH_DATA_DIR": str(mnist_dir)}
    done = run_cli(["-m", *overrides, *hydra_args(tmp_path)], tmp_path, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = tmp_path / "report"
    done = run_cli(["report", "--tracking-uri", uri, "--out", str(out)], tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]

    client, experiment_id = tracking.open_existing(uri, EXPERIMENT)
    parent = tracking.find_sweep(client, experiment_id, "latest", uri)
    right = {}  # model -> whether its run got each test image right, from the run's own artifact
    for run in tracking.read_sweep(client, experiment_id, parent).runs:
        rows = artifacts.parse_predictions(tracking.read_artifact(client, run.info.run_id, PREDICTIONS_ARTIFACT))
        model = run.info.run_name.split("-lr")[0]
        right[model] = rows[:, 0] == rows[:, 1]
        assert len(rows) == 1000 and len(set(rows[:, 1])) > 1
        assert right[model].mean() == run.data.metrics["final_test_accuracy"]
    comparisons = pd.read_csv(out / "comparisons.csv").set_index(["reference", "candidate"])
    assert len(comparisons) == 6
    for (reference, candidate), row in comparisons.iterrows():
        only = [int((right[a] & ~right[b]).sum()) for a, b in ((reference, candidate), (candidate, reference))]
        assert [row["reference_only_right"], row["candidate_only_right"]] == only
        assert row["accuracy_rule"] == acc.ONE_SEED and row["test_images"] == 1000
    gap = comparisons.loc[("numpy-sigmoid", "tf-softmax")]
    assert gap["accuracy_verdict"] == acc.MORE_ACCURATE and gap["accuracy_p_value"] < 0.001
    assert comparisons.loc[("numpy-softmax", "tf-sigmoid"), "accuracy_verdict"] == acc.LESS_ACCURATE
    for same in (("numpy-sigmoid", "tf-sigmoid"), ("tf-softmax", "numpy-softmax")):
        row = comparisons.loc[same]
        assert (row["accuracy_verdict"], row["accuracy_p_value"], row["reference_only_right"]) == (
            acc.WITHIN_NOISE,
            1,
            0,
        )
    accuracies = f"({right['tf-softmax'].mean():.4f} against {right['numpy-sigmoid'].mean():.4f}"
    sentence = (
        f"tf-softmax is more accurate than numpy-sigmoid {accuracies}, McNemar p < 0.001 on the 1,000 test images)"
    )
    assert sentence in section((out / "report.md").read_text(), "Headline")


def test_names_with_newlines_and_pipes_keep_report_md_structure() -> None:
    """A sweep or run name is user text: a newline in it must not start a heading, an item or a table row."""
    table = pd.DataFrame({"run": ["a\n# injected", "b|c"], "accuracy": [0.9, 0.8]})
    text = render.to_markdown("sweep\n## x", [("p", "name\n- item"), ("ul", ["one\ntwo"]), ("table", table)])
    lines = text.splitlines()
    assert [line for line in lines if line.startswith("#")] == ["# sweep ## x"]
    assert "- one two" in lines and "name - item" in lines
    assert "| a # injected | 0.9 |" in lines and "| b\\|c | 0.8 |" in lines


def test_csv_cells_that_start_like_formulas_are_text_and_figures_stay_figures() -> None:
    table = pd.DataFrame(
        {
            "model": ['=HYPERLINK("http://x")', "@SUM(A1)", "-2+3", "numpy-sigmoid"],
            "diff": ["-0.3%", "+1.2x", "0.5", "-1"],
        }
    )
    rows = list(csv.reader(io.StringIO(render.to_csv(table).decode())))
    assert rows[1:] == [
        ['\'=HYPERLINK("http://x")', "-0.3%"],
        ["'@SUM(A1)", "+1.2x"],
        ["'-2+3", "0.5"],
        ["numpy-sigmoid", "-1"],
    ]
