"""A sweep's runs as frames, read from MLflow only: the parent, its selected child runs (params, tags and
summary metrics), their per-epoch histories, their test-set predictions, the confusion matrices worth drawing,
and the cells or runs that did not finish cleanly."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from mnist_bench import artifacts, timing, tracking
from mnist_bench.config import backend_label, changes_numbers
from mnist_bench.errors import UserError
from mnist_bench.schema import (
    CONFUSION_ARTIFACT,
    COUNTED,
    PREDICTIONS_ARTIFACT,
    SYSTEM_METRIC_PREFIX,
    Cell,
    Status,
    Tag,
    metric_name,
    normalise,
    status_of,
)

BASE_CONFIG = ["backend", "activation", "device", "lr", "epochs", "batch_size"]


# Params that get no configuration column of their own: shown as backend/device already (Keras' engine as
# keras[jax], torch.compile as torch+compile, a backend's options), or averaged over (seed). Params that never
# change a run's numbers (config.changes_numbers) get none either.
NOT_CONFIG = {"backend.name", "backend.keras_backend", "backend.compile", "device.name", "seed"}
OPTIONS = "backend.options."  # an installed backend's own keys: shown in its backend label too


METRICS = {  # per-run value -> heading in the main table
    "final_test_accuracy": "final test acc",
    "best_test_accuracy": "best test acc",
    "final_train_accuracy": "final train acc",
    "seconds_per_epoch": "s/epoch",
    "time_to_target_seconds": "time to target (s)",
    "samples_per_second": "samples/s",
}


HISTORY = ["train_loss", "train_accuracy", "test_loss", "test_accuracy", "epoch_seconds"]
# How each epoch was timed, for pairing runs trained in rounds (timing.compare_rounds), as logged.
TIMING_HISTORY = ["epoch_cpu_seconds", SYSTEM_METRIC_PREFIX + "epoch_other_cpu_share", SYSTEM_METRIC_PREFIX + "round"]


MACHINE_TAGS = [Tag.CPU_MODEL, Tag.CPU_COUNT, Tag.DEVICE_NAME]


PROBLEM_COLUMNS = ["status", "cell", "run_id", "overrides", "error"]


class ReportError(UserError):
    """Nothing (valid) to report: one line on stderr, exit status 2, and no file written."""


def _run_row(run: Run) -> dict[str, object]:
    """One child run as a flat record: params as logged (strings), summary metrics, the tags we report.
    Status is the cell vocabulary's (schema.status_of)."""
    tags, params = run.data.tags, run.data.params
    return {
        **params,
        **{metric_name(key): value for key, value in run.data.metrics.items()},
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": status_of(run).value,
        "error": tags.get(Tag.ERROR, ""),
        "timing_unstable": tags.get(Tag.TIMING_UNSTABLE, ""),
        "rounds": tags.get(Tag.ROUNDS, ""),  # the rounds it trained in, if a sweep trained it in rounds
        "threads": tags.get(Tag.THREADS, ""),  # as resolved for the run (the param may be null)
        "blas": tags.get(Tag.BLAS, ""),
        "backend": backend_label(  # keras[jax], torch+compile: each a model of its own beside keras, torch
            params.get("backend.name") or tags.get(Tag.BACKEND, ""),
            tags.get(Tag.KERAS_BACKEND) or params.get("backend.keras_backend"),
            normalise(params.get("backend.compile")) == "true",
            {k.removeprefix(OPTIONS): v for k, v in params.items() if k.startswith(OPTIONS)},
        ),
        "device": tags.get(Tag.DEVICE) or params.get("device.name", ""),  # resolved: auto shows as cpu or gpu
        **{key: tags.get(key, "") for key in MACHINE_TAGS},
    }


def load_runs(sweep_runs: Sequence[Run]) -> tuple[pd.DataFrame, list[str]]:
    """A sweep's runs, one row each, and the names of their params (what --filter may name)."""
    params = sorted({key for run in sweep_runs for key in run.data.params})
    runs = pd.DataFrame([_run_row(run) for run in sweep_runs])
    text = list(dict.fromkeys([*params, *BASE_CONFIG]))
    runs = runs.reindex(columns=list(dict.fromkeys([*runs.columns, *text, *METRICS])))
    runs[text] = runs[text].fillna("")
    return runs, params


def apply_filters(
    runs: pd.DataFrame, params: Sequence[str], filters: Sequence[tuple[str, str]], name: str
) -> pd.DataFrame:
    """The runs whose params equal every KEY=VALUE; an unknown key, or no run left, is an error naming what exists."""
    for done, (key, value) in enumerate(filters):
        if key not in params:
            known = ", ".join(params)
            raise ReportError(
                f"--filter {key}={value}: the runs of sweep {name!r} have no param {key!r}; params: {known}"
            )
        matching = runs[runs[key].map(normalise) == normalise(value)]
        if matching.empty:
            before = " with " + " ".join(f"{k}={v}" for k, v in filters[:done]) if done else ""
            values = ", ".join(sorted(set(runs[key])))
            raise ReportError(f"--filter {key}={value} matches no run of sweep {name!r}{before}; {key} there: {values}")
        runs = matching
    return runs


def load_histories(client: MlflowClient, run_ids: Sequence[str]) -> pd.DataFrame:
    """Per-epoch metrics, one row per (run, epoch): the histories MLflow keeps with step = epoch."""
    records = [
        (run_id, key, epoch, value)
        for run_id in run_ids
        for key in [*HISTORY, *TIMING_HISTORY]
        for epoch, value in tracking.metric_history(client, run_id, key).items()
    ]
    long = pd.DataFrame(records, columns=["run_id", "metric", "epoch", "value"]).assign(
        metric=lambda f: f["metric"].map(metric_name)
    )
    wide = long.pivot(index=["run_id", "epoch"], columns="metric", values="value")
    wide = wide.reindex(columns=[*HISTORY, *map(metric_name, TIMING_HISTORY)])
    return wide.rename_axis(columns=None).reset_index()


def load_confusion_matrices(client: MlflowClient, runs: pd.DataFrame) -> dict[str, np.ndarray]:
    """The test-set confusion matrix of each backend-activation's most accurate finished run, keyed by a
    label naming the run, in table order. Runs are drawn here, not when they finish: a figure per run cost
    every job about a second. A run without the artifact (logged by an older harness) is left out."""
    finished = runs[runs["status"].isin(COUNTED)]
    ranked = finished.sort_values("final_test_accuracy", ascending=False, kind="stable")
    best = finished[finished["run_id"].isin(ranked.drop_duplicates(["backend", "activation"])["run_id"])]
    matrices = {}
    for row in best.itertuples():
        text = tracking.read_artifact(client, row.run_id, CONFUSION_ARTIFACT)
        if text is not None:
            label = f"{row.backend}-{row.activation}: {row.run_name} (test accuracy {row.final_test_accuracy:.4f})"
            matrices[label] = artifacts.parse_confusion_matrix(text)
    return matrices


def load_predictions(client: MlflowClient, runs: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each finished run's (label, predicted) rows of the test set, by run id: what the paired accuracy test
    compares. A run without the artifact (logged by an older harness) is left out."""
    predictions = {}
    for run_id in runs.loc[runs["status"].isin(COUNTED), "run_id"]:
        text = tracking.read_artifact(client, run_id, PREDICTIONS_ARTIFACT)
        if text is not None:
            predictions[run_id] = artifacts.parse_predictions(text)
    return predictions


def config_columns(runs: pd.DataFrame, params: Sequence[str]) -> list[str]:
    """The columns that define a configuration: the base ones, then any other param that varies
    across the runs (seed excepted: it is what the means are taken over)."""
    extra = [
        p
        for p in params
        if p not in BASE_CONFIG
        and p not in NOT_CONFIG
        and not p.startswith(OPTIONS)
        and changes_numbers(p)
        and runs[p].nunique() > 1
    ]
    return [*BASE_CONFIG, *extra]


def sort_key(column: pd.Series) -> pd.Series:
    """Numbers in numeric order (full batch, "None", after every batch size), text alphabetically."""
    numbers = pd.to_numeric(column, errors="coerce")
    return numbers.fillna(math.inf) if numbers.notna().any() else column


def problem_cells(outcomes: Sequence[tracking.CellOutcome], runs: pd.DataFrame) -> pd.DataFrame:
    """Every planned cell that did not finish cleanly (missing, failed, killed, diverged, running), then
    every selected run that did not and is not listed yet, with the error tag where there is one. A skipped
    cell is no problem: the FINISHED run it reused is one of the sweep's runs."""
    errors = runs.set_index("run_id")["error"]
    rows = []
    for outcome in outcomes:
        cell, status, run_id = outcome.cell, outcome.status, outcome.run_id
        # A missing cell has no run to filter on: always listed.
        if status not in (Status.FINISHED, Status.SKIPPED) and (run_id in errors.index or status is Status.MISSING):
            rows.append((status.value, cell.name, run_id, " ".join(cell.overrides), errors.get(run_id, "")))
    listed = {row[2] for row in rows}
    unlisted = runs[~runs["status"].isin(COUNTED) & ~runs["run_id"].isin(listed)]
    rows += [(r.status, r.run_name, r.run_id, "", r.error) for r in unlisted.itertuples(index=False)]
    return pd.DataFrame(rows, columns=PROBLEM_COLUMNS).sort_values(["status", "cell"]).reset_index(drop=True)


@dataclass
class Selection:
    """What one report is about, all of it read from MLflow: the sweep's parent run, its selected child runs
    with their per-epoch histories, and the cells or runs that did not finish cleanly."""

    uri: str
    experiment: str
    parent: Run
    runs: pd.DataFrame  # the selected child runs, in table order, with seconds_per_epoch from their histories
    columns: list[str]  # the configuration columns
    filters: list[tuple[str, str]]
    cells: list[Cell] | None
    histories: pd.DataFrame  # per-epoch metrics of the finished runs
    predictions: dict[str, np.ndarray]  # each finished run's (label, predicted) test rows, by run id, where logged
    confusion_matrices: dict[str, np.ndarray]  # each model's most accurate run's, by a label naming it
    problems: pd.DataFrame
    reaped: list[str]
    reused: list[str]  # runs of earlier sweeps that this one's skipped cells reused

    @property
    def name(self) -> str:
        return tracking.sweep_name(self.parent)


def select(args: argparse.Namespace) -> tuple[MlflowClient, Selection]:
    """Open the store, reap dead runs, find the sweep and read its runs; every way of selecting nothing raises."""
    uri = tracking.resolve_uri(args.tracking_uri, Path.cwd())
    reading = tracking.read_sweeps(uri, args.experiment, [args.sweep])
    client, (sweep,) = reading.client, reading.sweeps
    parent = sweep.parent
    runs, params = load_runs(sweep.runs)
    if runs.empty:
        raise ReportError(
            f"sweep {tracking.sweep_name(parent)!r} (parent run {parent.info.run_id}) has no runs in {reading.where}"
        )
    runs = apply_filters(runs, params, args.filters, tracking.sweep_name(parent))
    columns = config_columns(runs, params)
    runs = runs.sort_values([*columns, "seed" if "seed" in params else "run_name"], key=sort_key)
    histories = load_histories(client, runs.loc[runs["status"].isin(COUNTED), "run_id"].tolist())
    per_run = histories.groupby("run_id")["epoch_seconds"].agg(timing.seconds_per_epoch)
    runs["seconds_per_epoch"] = runs["run_id"].map(per_run)
    selection = Selection(
        uri,
        args.experiment,
        parent,
        runs,
        columns,
        list(args.filters),
        sweep.cells,
        histories,
        load_predictions(client, runs),
        load_confusion_matrices(client, runs),
        problem_cells(sweep.outcomes, runs),
        reading.reaped,
        runs.loc[runs["run_id"].isin(sweep.reused), "run_id"].tolist(),  # those the filters kept
    )
    return client, selection
