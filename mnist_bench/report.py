"""``mnist-bench report``: one sweep's results, read from MLflow only, as Markdown, self-contained HTML,
a CSV and PNG plots, written to a folder and logged to the sweep's parent run under ``report/``.

The sweep is its parent run (by id, by name, or the latest one); its child runs give the params,
tags and summary metrics, their metric histories the curves and the seconds per epoch. Runs that
failed, were killed or diverged are kept out of the means but always listed, beside the cells of the
sweep that never ran, so that a report never looks more complete than its sweep was.

    python -m mnist_bench.report [--sweep latest|NAME|RUN_ID] [--filter KEY=VALUE ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import html
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mnist_bench import artifacts, atomic, report_plots, timing, tracking
from mnist_bench.config import backend_label, changes_numbers
from mnist_bench.errors import EXIT_FAILED, EXIT_OK, ArgumentParser, UserError, run_tool
from mnist_bench.report_plots import Plot
from mnist_bench.schema import CELLS_ARTIFACT, CONFUSION_ARTIFACT, Cell, Status, SweepParam, Tag, normalise, status_of

PROG = "mnist-bench report"
REPORTS_DIR = "reports"  # under the current directory; git-ignored in this repository (results/ holds examples)
BASE_CONFIG = ["backend", "activation", "device", "lr", "epochs", "batch_size"]
# Params that get no configuration column of their own: shown as backend/device already (Keras' engine as
# keras[jax]), or averaged over (seed). Params that never change a run's numbers (config.changes_numbers)
# get none either.
NOT_CONFIG = {"backend.name", "backend.keras_backend", "device.name", "seed"}
METRICS = {  # per-run value -> heading in the main table
    "final_test_accuracy": "final test acc",
    "best_test_accuracy": "best test acc",
    "final_train_accuracy": "final train acc",
    "seconds_per_epoch": "s/epoch",
    "time_to_target_seconds": "time to target (s)",
    "samples_per_second": "samples/s",
}
HISTORY = ["train_loss", "train_accuracy", "test_loss", "test_accuracy", "epoch_seconds"]
MACHINE_TAGS = [Tag.CPU_MODEL, Tag.CPU_COUNT, Tag.DEVICE_NAME]
REFERENCE = "numpy-sigmoid"
MODEL_ORDER = [
    *[REFERENCE, "tf-softmax", "numpy-softmax", "tf-sigmoid", "keras-sigmoid", "keras-softmax"],
    *["keras[jax]-sigmoid", "keras[jax]-softmax"],
]
PROBLEM_COLUMNS = ["status", "cell", "run_id", "overrides", "error"]
PROBLEMS_TITLE = "Incomplete or failed cells"
Block = tuple[str, object]  # ("h2" | "p", str), ("ul", list[str]), ("table", DataFrame), ("plot", Plot)
CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:80em;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:.85em}"
    "th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right;vertical-align:top}"
    "th{background:#eee}code{background:#f3f3f3;padding:0 .2em}"
    "figure{margin:1.5em 0}img{max-width:100%}figcaption{font-size:.85em;color:#555}"
)


class ReportError(UserError):
    """Nothing (valid) to report: one line on stderr, exit status 2, and no file written."""


def _filter(text: str) -> tuple[str, str]:
    """One --filter value split at its first "=" (a value may hold more of them)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. --filter lr=0.1)")
    return key.strip(), value.strip()


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line; a usage error raises ReportError (one line, exit 2) like every other bad input."""
    parser = ArgumentParser(prog=PROG, description="Report one sweep's runs from MLflow: Markdown, HTML, CSV, plots.")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here")
    parser.add_argument("--experiment", default="mnist-bench", help="MLflow experiment (default: %(default)s)")
    parser.add_argument("--sweep", default="latest", help="parent run id, sweep name, or latest (default)")
    parser.add_argument(
        "--filter",
        dest="filters",
        action="append",
        default=[],
        type=_filter,
        metavar="KEY=VALUE",
        help="keep child runs whose param KEY equals VALUE (numbers compared as numbers); repeatable",
    )
    parser.add_argument(
        "--out", type=Path, help=f"default: {REPORTS_DIR}/<sweep>/ ({REPORTS_DIR}/<sweep>/filtered/<filters>/)"
    )
    return parser.parse_args(argv)


def _run_row(run: Run) -> dict[str, object]:
    """One child run as a flat record: params as logged (strings), summary metrics, the tags we report.
    Status is the cell vocabulary's (schema.status_of)."""
    tags, params = run.data.tags, run.data.params
    return {
        **params,
        **run.data.metrics,
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": status_of(run).value,
        "error": tags.get(Tag.ERROR, ""),
        "timing_unstable": tags.get(Tag.TIMING_UNSTABLE, ""),
        "threads": tags.get(Tag.THREADS, ""),  # as resolved for the run (the param may be null)
        "blas": tags.get(Tag.BLAS, ""),
        "backend": backend_label(  # keras[jax] for Keras on JAX: a model of its own beside keras (on TensorFlow)
            params.get("backend.name") or tags.get(Tag.BACKEND, ""),
            tags.get(Tag.KERAS_BACKEND) or params.get("backend.keras_backend"),
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
        (run_id, key, point.step, point.value)
        for run_id in run_ids
        for key in HISTORY
        for point in client.get_metric_history(run_id, key)
    ]
    long = pd.DataFrame(records, columns=["run_id", "metric", "epoch", "value"])
    long = long.drop_duplicates(["run_id", "metric", "epoch"], keep="last")
    wide = long.pivot(index=["run_id", "epoch"], columns="metric", values="value").reindex(columns=HISTORY)
    return wide.rename_axis(columns=None).reset_index()


def load_confusion_matrices(client: MlflowClient, runs: pd.DataFrame) -> dict[str, np.ndarray]:
    """The test-set confusion matrix of each backend-activation's most accurate finished run, keyed by a
    label naming the run, in table order. Runs are drawn here, not when they finish: a figure per run cost
    every job about a second. A run without the artifact (logged by an older harness) is left out."""
    finished = runs[runs["status"].eq("finished")]
    ranked = finished.sort_values("final_test_accuracy", ascending=False, kind="stable")
    best = finished[finished["run_id"].isin(ranked.drop_duplicates(["backend", "activation"])["run_id"])]
    matrices = {}
    for row in best.itertuples():
        text = tracking.read_artifact(client, row.run_id, CONFUSION_ARTIFACT)
        if text is not None:
            label = f"{row.backend}-{row.activation}: {row.run_name} (test accuracy {row.final_test_accuracy:.4f})"
            matrices[label] = artifacts.parse_confusion_matrix(text)
    return matrices


def config_columns(runs: pd.DataFrame, params: Sequence[str]) -> list[str]:
    """The columns that define a configuration: the base ones, then any other param that varies
    across the runs (seed excepted: it is what the means are taken over)."""
    extra = [
        p
        for p in params
        if p not in BASE_CONFIG and p not in NOT_CONFIG and changes_numbers(p) and runs[p].nunique() > 1
    ]
    return [*BASE_CONFIG, *extra]


def _sort_key(column: pd.Series) -> pd.Series:
    """Numbers in numeric order (full batch, "None", after every batch size), text alphabetically."""
    numbers = pd.to_numeric(column, errors="coerce")
    return numbers.fillna(math.inf) if numbers.notna().any() else column


def summary_table(runs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """One row per configuration: n finished runs, how many were excluded (failed, killed, diverged,
    still running), and the mean, std (ddof=1: NaN for one run) and count of each metric over the finished ones."""
    finished = runs["status"].eq("finished")
    counts = runs.assign(n=finished, excluded=~finished).groupby(columns)[["n", "excluded"]].sum()
    stats = runs[finished].groupby(columns)[list(METRICS)].agg(["mean", "std", "count"])
    stats.columns = [f"{metric}_{'n' if stat == 'count' else stat}" for metric, stat in stats.columns]
    table = counts.join(stats).reset_index()
    counted = [f"{metric}_n" for metric in METRICS]
    table[counted] = table[counted].fillna(0).astype(int)
    return table.sort_values(columns, key=_sort_key).reset_index(drop=True)


def pooled_std(std_a: pd.Series, n_a: pd.Series, std_b: pd.Series, n_b: pd.Series) -> pd.Series:
    """The seed-to-seed std two configurations share (pooled variance). NaN unless both have n >= 2:
    one run says nothing about its own spread."""
    pooled = (((n_a - 1) * std_a**2 + (n_b - 1) * std_b**2) / (n_a + n_b - 2)) ** 0.5
    return pooled.where((n_a >= 2) & (n_b >= 2))


def _verdict(row: Mapping[str, object], reference: str) -> str:
    """Whether the accuracy difference to the reference exceeds the seed spread: |diff| > 2 * pooled std."""
    if row["model"] == reference:
        return "reference"
    if pd.isna(row["final_test_accuracy_mean_ref"]):
        return f"n/a: no {reference} at these settings"
    if pd.isna(row["pooled_std"]):
        return "unknown (n=1: spread unknown)"
    return "yes" if abs(row["accuracy_diff"]) > 2 * row["pooled_std"] else "no"


def _model_rank(model: str) -> int:
    """Where a backend-activation model sits in tables: the tutorial's pair first, unknown models last."""
    return MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER)


def headline_table(summary: pd.DataFrame, columns: Sequence[str], reference: str = REFERENCE) -> pd.DataFrame:
    """Each backend-activation pair beside the reference (numpy-sigmoid) on the same device with otherwise-
    equal settings: the accuracy difference and whether it exceeds the seed spread (speed: see speed_table)."""
    settings = [c for c in columns if c not in ("backend", "activation")]
    done = summary[summary["n"] > 0]
    done = done.assign(model=done["backend"] + "-" + done["activation"])
    kept = ["final_test_accuracy_mean", "final_test_accuracy_std", "final_test_accuracy_n"]
    table = done.merge(
        done.loc[done["model"] == reference, [*settings, *kept]], on=settings, how="left", suffixes=("", "_ref")
    )
    table["accuracy_diff"] = table["final_test_accuracy_mean"] - table["final_test_accuracy_mean_ref"]
    table["pooled_std"] = pooled_std(
        table["final_test_accuracy_std"],
        table["final_test_accuracy_n"],
        table["final_test_accuracy_std_ref"],
        table["final_test_accuracy_n_ref"],
    )
    table["beyond_spread"] = [_verdict(row, reference) for row in table.to_dict("records")]
    table["rank"] = table["model"].map(_model_rank)
    return table.sort_values([*settings, "rank", "model"], key=_sort_key).reset_index(drop=True)


SPEED_COLUMNS = ["speed_ratio", "speed_ratio_low", "speed_ratio_high", "speed_verdict"]


def speed_table(
    runs: pd.DataFrame, histories: pd.DataFrame, columns: Sequence[str], reference: str = REFERENCE
) -> pd.DataFrame:
    """Each configuration's speed beside the reference's with the same other settings (timing.compare over
    their finished runs' timed epochs): the reference's seconds per epoch over this one's (> 1: faster),
    its 95% interval, and the verdict, which is "unreliable" when a run on either side was not stable."""
    settings = [c for c in columns if c not in ("backend", "activation")]
    finished = runs[runs["status"].eq(Status.FINISHED.value)]
    finished = finished.assign(model=finished["backend"] + "-" + finished["activation"])
    epochs = histories.dropna(subset=["epoch_seconds"]).groupby("run_id")["epoch_seconds"].apply(list)
    rows = []
    for key, group in finished.groupby(settings, sort=False):
        sides = {model: side for model, side in group.groupby("model") if side["run_id"].isin(epochs.index).any()}
        if reference not in sides:
            continue
        for model, side in sides.items():
            if model == reference:
                continue
            both = pd.concat([sides[reference], side])
            shaky = [f"{r.model} {r.run_name}: {r.timing_unstable}" for r in both.itertuples() if r.timing_unstable]
            unstable = f"{shaky[0]}" + (f" (and {len(shaky) - 1} more runs)" if len(shaky) > 1 else "") if shaky else ""
            result = timing.compare(
                [epochs[i] for i in sides[reference]["run_id"] if i in epochs.index],
                [epochs[i] for i in side["run_id"] if i in epochs.index],
                unstable,
            )
            rows.append(
                {**dict(zip(settings, key, strict=True)), "model": model}
                | dict(zip(SPEED_COLUMNS, (result.ratio, result.low, result.high, result.verdict), strict=True))
            )
    return pd.DataFrame(rows, columns=[*settings, "model", *SPEED_COLUMNS])


def compared_with(
    reference: str, summary: pd.DataFrame, runs: pd.DataFrame, histories: pd.DataFrame, columns: Sequence[str]
) -> pd.DataFrame:
    """Every model beside ``reference`` at equal settings: accuracy (headline_table) and speed (speed_table)."""
    settings = [c for c in columns if c not in ("backend", "activation")]
    speed = speed_table(runs, histories, columns, reference)
    return headline_table(summary, columns, reference).merge(speed, on=[*settings, "model"], how="left")


def comparisons_table(
    summary: pd.DataFrame, runs: pd.DataFrame, histories: pd.DataFrame, columns: Sequence[str]
) -> pd.DataFrame:
    """comparisons.csv: every pair of models at equal settings, accuracy and speed side by side. Each pair is
    listed once, with the model that comes first in the headline's order as the reference (numpy-sigmoid
    first of all), so the tutorial's pair reads as in the headline."""
    settings = [c for c in columns if c not in ("backend", "activation")]
    done = summary[summary["n"] > 0]
    models = sorted(set(done["backend"] + "-" + done["activation"]), key=lambda m: (_model_rank(m), m))
    tables = []
    for index, reference in enumerate(models[:-1]):
        table = compared_with(reference, summary, runs, histories, columns)
        later = table["model"].isin(models[index + 1 :]) & table["final_test_accuracy_mean_ref"].notna()
        tables.append(table[later].assign(reference=reference, candidate=table["model"]))
    names = ["reference", "candidate", *settings, "accuracy_diff", "beyond_spread", *SPEED_COLUMNS]
    return pd.concat(tables, ignore_index=True)[names] if tables else pd.DataFrame(columns=names)


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
    unlisted = runs[runs["status"].ne("finished") & ~runs["run_id"].isin(listed)]
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
    client, experiment_id = tracking.open_existing(uri, args.experiment)
    reaped = tracking.reap(client, experiment_id)
    where = f"experiment {args.experiment!r} at {tracking.redact(uri)}"
    parent = tracking.find_sweep(client, experiment_id, args.sweep, where)
    sweep = tracking.read_sweep(client, experiment_id, parent)
    runs, params = load_runs(sweep.runs)
    if runs.empty:
        raise ReportError(
            f"sweep {tracking.sweep_name(parent)!r} (parent run {parent.info.run_id}) has no runs in {where}"
        )
    runs = apply_filters(runs, params, args.filters, tracking.sweep_name(parent))
    columns = config_columns(runs, params)
    runs = runs.sort_values([*columns, "seed" if "seed" in params else "run_name"], key=_sort_key)
    histories = load_histories(client, runs.loc[runs["status"].eq("finished"), "run_id"].tolist())
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
        load_confusion_matrices(client, runs),
        problem_cells(sweep.outcomes, runs),
        reaped,
        runs.loc[runs["run_id"].isin(sweep.reused), "run_id"].tolist(),  # those the filters kept
    )
    return client, selection


def _number(value: float, metric: str) -> str:
    """Accuracies to 4 decimals (differences of 0.001 matter), times and rates to 3 significant digits."""
    if "accuracy" in metric:
        return f"{value:.4f}"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def mean_std(row: Mapping[str, object], metric: str) -> str:
    """The "mean ± std" over a configuration's seeds: the mean alone where one run has it (spread unknown),
    "—" where none does, and "(k/n)" where only k of its n finished runs have the metric."""
    n, mean, std = row[f"{metric}_n"], row[f"{metric}_mean"], row[f"{metric}_std"]
    if n == 0:
        return "—"
    text = _number(mean, metric) if n < 2 else f"{_number(mean, metric)} ± {_number(std, metric)}"
    return text if n == row["n"] else f"{text} ({n}/{row['n']})"


def _shown_config(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The configuration columns as a reader wants them: batch_size None is the full batch."""
    return frame[list(columns)].replace({"batch_size": {"None": "full"}})


def header_blocks(sel: Selection, summary: pd.DataFrame) -> list[Block]:
    """Which sweep, where from, when, on what machine, how many runs, and the command behind it."""
    parent, runs = sel.parent, sel.runs
    started = dt.datetime.fromtimestamp(parent.info.start_time / 1000).astimezone()
    statuses = ", ".join(f"{count} {status}" for status, count in runs["status"].value_counts().sort_index().items())
    planned = f" of {len(sel.cells)} cells planned" if sel.cells is not None else ""

    def distinct(column: str) -> str:
        return ", ".join(sorted({value for value in runs[column] if value})) or "unknown"

    command = tracking.redact(parent.data.params.get(SweepParam.SWEEP_OVERRIDES, "(not logged)"))
    items = [
        f"Sweep: `{sel.name}`, parent run `{parent.info.run_id}` ({parent.info.status}), started "
        f"{started:%Y-%m-%d %H:%M %Z}",
        f"Tracking store: `{tracking.redact(sel.uri)}`, experiment `{sel.experiment}`",
        f"Report generated: {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"Machine: {distinct('cpu_model')} ({distinct('cpu_count')} cores); devices: {distinct('device_name')}",
        f"Runs: {len(runs)} ({statuses}){planned}, in {len(summary)} configurations",
        f"Command: `python -m mnist_bench -m {command}`",
    ]
    if sel.filters:
        items.append("Filters: " + ", ".join(f"`{key}={value}`" for key, value in sel.filters))
    if sel.reused:
        items.append(
            f"Reused: {len(sel.reused)} run(s) trained by an earlier sweep; resume skipped their cells "
            "(`resume=false` trains them again)"
        )
    if sel.reaped:
        items.append(f"Reaped before reading: {len(sel.reaped)} run(s) of the experiment whose process was gone")
    if not sel.problems.empty:
        items.append(f"Warning: {len(sel.problems)} cell(s) or run(s) incomplete or failed, see '{PROBLEMS_TITLE}'")
    return [("ul", items)]


def headline_blocks(table: pd.DataFrame, columns: Sequence[str]) -> list[Block]:
    """The NumPy-sigmoid vs TF-softmax (and every other pair) comparison, with its rules spelled out."""
    blocks: list[Block] = [("h2", "Headline: each backend-activation beside numpy-sigmoid")]
    if table.empty:
        return [*blocks, ("p", "No configuration has a finished run: nothing to compare.")]
    blocks.append(
        (
            "p",
            f"Rows share the device and every other setting with the {REFERENCE} row they are compared to. "
            f"Δ acc = final test accuracy minus {REFERENCE}'s; speed ratio = {REFERENCE}'s s/epoch ÷ this "
            "row's (> 1: faster), s/epoch being the median of a run's timed epochs, with a 95% bootstrap "
            "interval over runs and their epochs. The speed verdict is faster or slower only when the "
            "interval excludes 1 and every run on both sides was timed under stable conditions "
            "(see Measurement conditions), within noise when it includes 1, and unreliable otherwise. "
            "Beyond seed spread applies the rule |Δ acc| > 2 × pooled std (the seed-to-seed std pooled "
            "over both configurations); it needs n ≥ 2 on both sides, so with n = 1 the spread is "
            "unknown and so is the answer.",
        )
    )
    if (table["n"] < 2).all():
        blocks.append(("p", "Every configuration here has one finished run: no difference can be called real."))
    blocks += [("p", sentence) for sentence in _answers(table, columns)]
    settings = [
        "device",
        *[c for c in report_plots.varying(table, columns) if c not in ("backend", "activation", "device")],
    ]
    records = table.to_dict("records")
    shown = _shown_config(table, settings).assign(
        model=table["model"],
        n=table["n"],
        **{
            "test acc": [mean_std(row, "final_test_accuracy") for row in records],
            "s/epoch": [mean_std(row, "seconds_per_epoch") for row in records],
            f"Δ acc vs {REFERENCE}": table["accuracy_diff"].map(lambda d: "" if pd.isna(d) else f"{d:+.4f}"),
            "speed ratio (95% interval)": [_ratio(row) for row in records],
            "speed verdict": table["speed_verdict"].fillna(""),
            "beyond seed spread": table["beyond_spread"],
        },
    )
    return [*blocks, ("table", shown)]


CONDITION_METRICS = ["load_average_start", "load_average_end", "other_cpu_share", "cpu_steal_share", "epoch_spread"]


def conditions_blocks(sel: Selection) -> list[Block]:
    """Under what conditions the timings were taken, per backend-activation-device: the figures a speed
    verdict rests on, and every run whose timings were not stable, with the reason."""
    finished = sel.runs[sel.runs["status"].eq(Status.FINISHED.value)]
    blocks: list[Block] = [("h2", "Measurement conditions")]
    if finished.empty:
        return [*blocks, ("p", "No finished run: no timing to qualify.")]
    blocks.append(
        (
            "p",
            "Per run: the 1-minute load average at the start and end of training, the share of all cores' time "
            "other processes used while it trained (parallel jobs of the same sweep included), the share the "
            "hypervisor stole, and the spread of its timed epochs (IQR ÷ median). A run is stable when these "
            "stay within the run's timing.* limits. Shown: median (max) over the runs.",
        )
    )
    frame = finished.reindex(columns=list(dict.fromkeys([*finished.columns, *CONDITION_METRICS, "timing_stable"])))
    rows = []
    for (backend, activation, device), group in frame.groupby(["backend", "activation", "device"], sort=False):

        def median_max(metric: str, percent: bool = False, group: pd.DataFrame = group) -> str:
            values = group[metric].dropna()
            if values.empty:
                return "—"
            shown = (lambda v: f"{v:.0%}") if percent else (lambda v: f"{v:.2f}")
            return f"{shown(values.median())} ({shown(values.max())})"

        stable = group["timing_stable"].dropna()
        rows.append(
            {
                "model": f"{backend}-{activation}",
                "device": device,
                "threads": ", ".join(sorted({str(t) for t in group["threads"] if t})) or "?",
                "BLAS": ", ".join(sorted({b for b in group["blas"] if b})) or "?",
                "load avg at start": median_max("load_average_start"),
                "load avg at end": median_max("load_average_end"),
                "other processes' CPU": median_max("other_cpu_share", percent=True),
                "steal": median_max("cpu_steal_share", percent=True),
                "epoch spread": median_max("epoch_spread"),
                "stable runs": f"{int(stable.sum())}/{len(stable)}" if len(stable) else "not recorded",
            }
        )
    blocks.append(("table", pd.DataFrame(rows)))
    shaky = finished[finished["timing_unstable"].ne("")]
    if not shaky.empty:
        blocks.append(("ul", [f"`{r.run_name}`: {r.timing_unstable}" for r in shaky.itertuples()]))
    return blocks


HEADLINE_CANDIDATE = "tf-softmax"  # the tutorial's question: its TF-softmax model against its NumPy-sigmoid one


def _answers(table: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The tutorial's question answered in one sentence for each setting where both of its models ran: which
    is more accurate (by the seed-spread rule) and which is faster (by the speed verdict)."""
    shown = [c for c in report_plots.varying(table, columns) if c not in ("backend", "activation")]
    answers = []
    for row in table[table["model"].eq(HEADLINE_CANDIDATE) & table["accuracy_diff"].notna()].to_dict("records"):
        where = ", ".join(f"{c}={row[c]}" for c in shown)
        answers.append(
            f"**{HEADLINE_CANDIDATE} vs {REFERENCE}**{f' ({where})' if where else ''}: "
            f"{_more_accurate(row)}, and {_faster(row)}."
        )
    return answers


def _more_accurate(row: Mapping[str, object]) -> str:
    """Which of the two is more accurate, said only as far as the seed spread allows."""
    diff = row["accuracy_diff"]
    ahead, behind = (HEADLINE_CANDIDATE, REFERENCE) if diff >= 0 else (REFERENCE, HEADLINE_CANDIDATE)
    by = f"{abs(diff):.4f}"
    lead = "they tie" if float(by) == 0 else f"{ahead} leads by {by}"
    if row["beyond_spread"] == "yes":
        return f"{ahead} is more accurate than {behind} by {by} test accuracy, beyond the seed spread"
    if row["beyond_spread"] == "no":
        return f"neither is more accurate beyond the seed spread ({lead})"
    return f"whether either is more accurate cannot be said with n = 1 ({lead})"


def _faster(row: Mapping[str, object]) -> str:
    """Which of the two is faster, said only when the speed verdict allows it."""
    verdict = row.get("speed_verdict")
    if pd.isna(verdict):
        return "their speeds were not compared (no timed epochs on one side)"
    ratio = f"speed ratio {_ratio(row)}"
    if verdict == timing.FASTER:
        return f"{HEADLINE_CANDIDATE} is faster ({ratio})"
    if verdict == timing.SLOWER:
        return f"{REFERENCE} is faster ({ratio})"
    if verdict == timing.WITHIN_NOISE:
        return f"neither is faster beyond timing noise ({ratio})"
    return f"which is faster cannot be said: the {ratio} is {verdict}"


def _ratio(row: Mapping[str, object]) -> str:
    if pd.isna(row["speed_ratio"]):
        return ""
    return f"{row['speed_ratio']:.2f}× ({row['speed_ratio_low']:.2f}–{row['speed_ratio_high']:.2f})"


def problem_blocks(sel: Selection) -> list[Block]:
    """The cells and runs that are not in the means, each with its status and error."""
    blocks: list[Block] = [("h2", PROBLEMS_TITLE)]
    if sel.cells is None:
        blocks.append(("p", f"The parent run has no {CELLS_ARTIFACT}: cells that never started cannot be seen."))
    problems = sel.problems
    if problems.empty:
        return [*blocks, ("p", "None: every cell of the selection finished without diverging.")]
    blocks.append(
        (
            "p",
            "Not in the means and curves: failed, killed (including runs the reaper found dead), diverged and "
            "still-running runs, and missing cells (planned, never started)."
            + (" Missing cells have no run to filter on: all are listed." if sel.filters else ""),
        )
    )
    shown = problems.assign(error=problems["error"].map(lambda e: " ".join(e.split())[:300]))
    return [*blocks, ("table", shown)]


def summary_blocks(summary: pd.DataFrame, columns: Sequence[str]) -> list[Block]:
    """The main table: every configuration, mean ± std over seeds of each metric, n and what was excluded."""
    blocks: list[Block] = [
        ("h2", "All configurations"),
        (
            "p",
            "Mean ± std over seeds (sample std, ddof = 1) of the finished, non-diverged runs; n = runs in the "
            "mean; excluded = failed, killed, diverged or running runs of the configuration (listed under "
            f"'{PROBLEMS_TITLE}'). With n = 1 no std is shown: the spread is unknown. s/epoch = median epoch "
            "of each run, then the mean over runs. (k/n): only k of the n runs have the value (time to "
            "target: runs that reached it). The same numbers, unrounded, are in summary.csv.",
        ),
    ]
    shown = [m for m in METRICS if summary[f"{m}_n"].any()]
    if "time_to_target_seconds" not in shown:
        blocks.append(("p", "Time to target: not measured (no run reached target_accuracy, or none was set)."))
    records = summary.to_dict("records")
    table = _shown_config(summary, columns).assign(
        n=summary["n"],
        **{METRICS[m]: [mean_std(row, m) for row in records] for m in shown},
        excluded=summary["excluded"],
    )
    return [*blocks, ("table", table)]


def make_plots(sel: Selection, summary: pd.DataFrame) -> tuple[list[Plot], list[str]]:
    """All plots of the finished runs, and a note for each plot that had to be skipped."""
    finished = sel.runs[sel.runs["status"].eq("finished")]
    if finished.empty:
        return [], ["No plots: no run of the selection finished without failing or diverging."]
    timed = report_plots.accuracy_vs_time(finished, sel.histories, sel.columns)
    results = [
        *report_plots.curves(finished, sel.histories, sel.columns),
        *(timed if isinstance(timed, list) else [timed]),
        report_plots.accuracy_vs_lr(summary, sel.columns),
        report_plots.seconds_per_epoch(finished, sel.columns),
        report_plots.heatmap(summary, sel.columns),
        report_plots.confusion_matrices(sel.confusion_matrices),
    ]
    return [r for r in results if isinstance(r, Plot)], [r for r in results if isinstance(r, str)]


def _one_line(text: object) -> str:
    """Text on one line: a newline in a name or an error message must not start a heading, item or row."""
    return " ".join(str(text).split())


def _markdown_table(table: pd.DataFrame) -> str:
    """A pipe table; a "|" inside a cell is escaped and newlines are spaces, so that no cell splits its row."""
    cells = table.astype(str).map(lambda cell: _one_line(cell).replace("|", "\\|"))
    lines = ["| " + " | ".join(map(_one_line, cells.columns)) + " |", "|" + "---|" * len(cells.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)])


# MLflow 3's artifact view renders Markdown, but writes an image whose address has no scheme (``curves.png``) as
# the text "[alt](curves.png)", and its URL filter drops data: URIs; its HTML view shows report.html in an
# iframe, data: images included. (Read in mlflow/server/js/build: the markdown view's img component and
# urlTransform.) So the Markdown keeps plain relative links, right on GitHub and in editors, and says where to look.
MLFLOW_NOTE = (
    "Viewing this in MLflow's UI? Open `report.html` beside it instead: MLflow's Markdown preview shows the "
    "plots below as text links, while `report.html` carries them inside itself."
)


def to_markdown(title: str, blocks: Sequence[Block]) -> str:
    """report.md: the images beside it, referred to by file name, and a pointer to report.html for MLflow."""
    parts = [f"# {_one_line(title)}", MLFLOW_NOTE]
    for kind, content in blocks:
        match kind:
            case "h2":
                parts.append(f"## {_one_line(content)}")
            case "p":
                parts.append(_one_line(content))
            case "ul":
                parts.append("\n".join(f"- {_one_line(item)}" for item in content))
            case "table":
                parts.append(_markdown_table(content))
            case "plot":
                parts.append(f"![{content.name}]({content.name})\n\n{_one_line(content.caption)}")
    return "\n\n".join(parts) + "\n"


_FORMULA_START = re.compile(r"[=+\-@\t\r]")
_SIGNED_NUMBER = re.compile(r"[+-]\d*\.?\d+(e[+-]?\d+)?[%x]?", re.IGNORECASE)  # "-0.3%", "+1.2x": figures


def to_csv(table: pd.DataFrame) -> bytes:
    """The table as CSV that a spreadsheet shows as text: a text cell that starts like a formula (= + - @, tab
    or carriage return) gets a leading apostrophe (OWASP's advice against CSV injection); figures stay as they are."""

    def defused(cell: object) -> object:
        formula = isinstance(cell, str) and _FORMULA_START.match(cell) and not _SIGNED_NUMBER.fullmatch(cell)
        return f"'{cell}" if formula else cell

    return table.map(defused).to_csv(index=False).encode()


def _inline(text: str) -> str:
    """Escaped text with `code` spans, the only Markdown the report's prose uses."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def to_html(title: str, blocks: Sequence[Block]) -> str:
    """One page that opens offline: inline CSS, PNGs as data: URIs, no script, font or external link."""
    parts = [f"<h1>{_inline(title)}</h1>"]
    for kind, content in blocks:
        match kind:
            case "h2":
                parts.append(f"<h2>{_inline(content)}</h2>")
            case "p":
                parts.append(f"<p>{_inline(content)}</p>")
            case "ul":
                parts.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in content) + "</ul>")
            case "table":
                parts.append(content.to_html(index=False, border=0, na_rep=""))
            case "plot":
                data = base64.b64encode(content.png).decode("ascii")
                parts.append(
                    f'<figure><img alt="{html.escape(content.name)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{_inline(content.caption)}</figcaption></figure>"
                )
    head = f'<meta charset="utf-8"><title>{html.escape(title)}</title><style>{CSS}</style>'
    return f"<!DOCTYPE html>\n<html><head>{head}</head><body>\n" + "\n".join(parts) + "\n</body></html>\n"


def render(sel: Selection) -> dict[str, bytes]:
    """Every file of the report, in memory: nothing touches the disk until all of it exists."""
    summary = summary_table(sel.runs, sel.columns)
    headline = compared_with(REFERENCE, summary, sel.runs, sel.histories, sel.columns)
    plots, notes = make_plots(sel, summary)
    blocks = [
        *header_blocks(sel, summary),
        *headline_blocks(headline, sel.columns),
        *conditions_blocks(sel),
        *problem_blocks(sel),
        *summary_blocks(summary, sel.columns),
        ("h2", "Plots"),
        *[("plot", plot) for plot in plots],
        *[("p", note) for note in notes],
    ]
    title = f"MNIST benchmark report: {sel.name}"
    files = {
        "report.md": to_markdown(title, blocks).encode(),
        "report.html": to_html(title, blocks).encode(),
        "summary.csv": to_csv(summary),
        "comparisons.csv": to_csv(comparisons_table(summary, sel.runs, sel.histories, sel.columns)),
    }
    return files | {plot.name: plot.png for plot in plots}


SLUG_MAX = 100  # characters of a folder name made from a sweep's name or filters (file systems allow 255 bytes)


def _slug(text: str) -> str:
    """Text made safe as one path component (sweep names and filters go into folder names); a long one is cut,
    with a hash of the whole so that two long names stay two folders."""
    slug = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", text).strip("_") or "_"
    if len(slug) <= SLUG_MAX:
        return slug
    return f"{slug[: SLUG_MAX - 13]}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def destinations(sel: Selection, out: Path | None) -> tuple[Path, str]:
    """The local folder and the parent run's artifact folder: report/ for the whole sweep, and
    report/filtered/<filters>/ for a filtered one, so that it never overwrites the full report."""
    sub = "filtered/" + _slug(",".join(f"{key}={value}" for key, value in sel.filters)) if sel.filters else ""
    return out or Path(REPORTS_DIR) / _slug(sel.name) / sub, f"report/{sub}".rstrip("/")


def main(argv: Sequence[str] | None = None) -> int:
    """Write the report and log it to the sweep's parent run; 2 with one line on stderr when there is nothing
    (valid) to report, 1 when the files were written but could not be logged."""
    return run_tool(PROG, lambda: _main(sys.argv[1:] if argv is None else argv))


def _main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    client, sel = select(args)
    files = render(sel)
    folder, artifact_path = destinations(sel, args.out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # --out names a file, or a folder it cannot create
        raise ReportError(f"cannot write the report to {folder}: {err.strerror or err}; choose another --out") from None
    for name, content in files.items():
        atomic.write(folder / name, content)
    try:
        for name in files:
            client.log_artifact(sel.parent.info.run_id, str(folder / name), artifact_path)
    except (MlflowException, OSError) as err:
        print(
            f"{PROG}: error: wrote {folder} but could not log it to run {sel.parent.info.run_id}: {err}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(
        f"report of sweep {sel.name}: {folder / 'report.md'} ({len(sel.runs)} runs; also {artifact_path}/ "
        f"of run {sel.parent.info.run_id})"
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
