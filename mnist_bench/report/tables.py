"""The report's tables as pure pandas: a configuration's mean and spread over its seeds, and each pair of
models compared at equal settings, accuracy against the seed spread and speed with its interval and verdict
(mnist_bench.timing)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from mnist_bench import timing
from mnist_bench.report.reading import METRICS, sort_key
from mnist_bench.schema import COUNTED

REFERENCE = "numpy-sigmoid"


MODEL_ORDER = [
    *[REFERENCE, "tf-softmax", "numpy-softmax", "tf-sigmoid", "keras-sigmoid", "keras-softmax"],
    *["keras[jax]-sigmoid", "keras[jax]-softmax"],
]


def summary_table(runs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """One row per configuration: n finished runs, how many were excluded (failed, killed, diverged,
    still running), and the mean, std (ddof=1: NaN for one run) and count of each metric over the finished ones."""
    finished = runs["status"].isin(COUNTED)
    counts = runs.assign(n=finished, excluded=~finished).groupby(columns)[["n", "excluded"]].sum()
    stats = runs[finished].groupby(columns)[list(METRICS)].agg(["mean", "std", "count"])
    stats.columns = [f"{metric}_{'n' if stat == 'count' else stat}" for metric, stat in stats.columns]
    table = counts.join(stats).reset_index()
    counted = [f"{metric}_n" for metric in METRICS]
    table[counted] = table[counted].fillna(0).astype(int)
    return table.sort_values(columns, key=sort_key).reset_index(drop=True)


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
    return table.sort_values([*settings, "rank", "model"], key=sort_key).reset_index(drop=True)


SPEED_COLUMNS = ["speed_ratio", "speed_ratio_low", "speed_ratio_high", "speed_verdict", "timed_runs"]


def speed_table(
    runs: pd.DataFrame, histories: pd.DataFrame, columns: Sequence[str], reference: str = REFERENCE
) -> pd.DataFrame:
    """Each configuration's speed beside the reference's with the same other settings (timing.compare over
    their finished runs' timed epochs): the reference's seconds per epoch over this one's (> 1: faster),
    its 95% interval, the verdict, which is "unreliable" when a run on either side was not stable, and the
    fewer timed runs of the two sides (with one, the interval sees only its epochs, not run-to-run drift)."""
    settings = [c for c in columns if c not in ("backend", "activation")]
    finished = runs[runs["status"].isin(COUNTED)]
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
            timed = [[epochs[i] for i in each["run_id"] if i in epochs.index] for each in (sides[reference], side)]
            result = timing.compare(*timed, unstable)
            speed = (result.ratio, result.low, result.high, result.verdict, min(map(len, timed)))
            rows.append(
                {**dict(zip(settings, key, strict=True)), "model": model} | dict(zip(SPEED_COLUMNS, speed, strict=True))
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
