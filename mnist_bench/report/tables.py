"""The report's tables as pure pandas: a configuration's mean and spread over its seeds, and each pair of
models compared at equal settings, accuracy image by image (mnist_bench.report.accuracy) and speed with its
interval and verdict (mnist_bench.timing)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mnist_bench import timing
from mnist_bench.config import TimingConfig
from mnist_bench.report import accuracy
from mnist_bench.report.reading import METRICS, sort_key
from mnist_bench.schema import COUNTED, PREDICTIONS_ARTIFACT

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


def _model_rank(model: str) -> int:
    """Where a backend-activation model sits in tables: the tutorial's pair first, unknown models last."""
    return MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER)


def headline_table(summary: pd.DataFrame, columns: Sequence[str], reference: str = REFERENCE) -> pd.DataFrame:
    """Each backend-activation pair beside the reference (numpy-sigmoid) on the same device with otherwise-
    equal settings: both mean accuracies and their difference (verdicts: accuracy_table and speed_table)."""
    settings = [c for c in columns if c not in ("backend", "activation")]
    done = summary[summary["n"] > 0]
    done = done.assign(model=done["backend"] + "-" + done["activation"])
    kept = ["final_test_accuracy_mean", "final_test_accuracy_std", "final_test_accuracy_n"]
    table = done.merge(
        done.loc[done["model"] == reference, [*settings, *kept]], on=settings, how="left", suffixes=("", "_ref")
    )
    table["accuracy_diff"] = table["final_test_accuracy_mean"] - table["final_test_accuracy_mean_ref"]
    table["rank"] = table["model"].map(_model_rank)
    return table.sort_values([*settings, "rank", "model"], key=sort_key).reset_index(drop=True)


ACCURACY_COLUMNS = [
    *["accuracy_verdict", "accuracy_p_value", "accuracy_rule"],
    *["test_images", "reference_only_right", "candidate_only_right"],
]


def accuracy_table(
    runs: pd.DataFrame, predictions: dict[str, np.ndarray], columns: Sequence[str], reference: str = REFERENCE
) -> pd.DataFrame:
    """Each configuration's accuracy against the reference's with the same other settings, image by image
    (accuracy.judge): each of its finished runs paired with the reference's run of the same seed. The
    verdict, its p-value and the rule that decided (or why none could), the test images a pair shares, and
    how many of them only the reference, or only this model, got right (summed over the seeds)."""
    settings = [c for c in columns if c not in ("backend", "activation")]
    finished = runs[runs["status"].isin(COUNTED)]
    finished = finished.assign(model=finished["backend"] + "-" + finished["activation"], seed=finished.get("seed", ""))
    kept = [*settings, "seed", "run_id", "run_name"]
    on_reference = finished.loc[finished["model"].eq(reference), kept].drop_duplicates([*settings, "seed"])
    candidates = finished[finished["model"].ne(reference)].merge(
        on_reference, on=[*settings, "seed"], how="left", suffixes=("", "_ref")
    )
    rows = []
    for key, group in candidates.groupby([*settings, "model"], sort=False):
        verdict = _paired_verdict(group, predictions, reference)
        counted = (
            (verdict.pairs[0].images, verdict.reference_only, verdict.candidate_only) if verdict.pairs else (None,) * 3
        )
        figures = (verdict.verdict, verdict.p_value, verdict.rule, *counted)
        rows.append(
            dict(zip([*settings, "model"], key, strict=True)) | dict(zip(ACCURACY_COLUMNS, figures, strict=True))
        )
    counts = ACCURACY_COLUMNS[3:]  # whole numbers, left empty where no pair was judged
    return pd.DataFrame(rows, columns=[*settings, "model", *ACCURACY_COLUMNS]).astype(dict.fromkeys(counts, "Int64"))


def _paired_verdict(group: pd.DataFrame, predictions: dict[str, np.ndarray], reference: str) -> accuracy.Verdict:
    """The verdict over one model's runs at one setting, each beside the reference's run of its seed; unknown,
    with the reason and what to do, when no pair has both runs' predictions on the same images."""
    pairs, unlogged, scored_apart = [], [], []
    for row in group.itertuples(index=False):
        if pd.isna(row.run_id_ref):
            continue
        absent = [
            name
            for run_id, name in [(row.run_id_ref, row.run_name_ref), (row.run_id, row.run_name)]
            if run_id not in predictions
        ]
        if absent:
            unlogged += absent
            continue
        pair = accuracy.paired(str(row.seed), predictions[row.run_id_ref], predictions[row.run_id])
        if pair is None:
            scored_apart.append(f"{row.run_name_ref} and {row.run_name}")
        else:
            pairs.append(pair)
    if pairs:
        return accuracy.judge(pairs)
    if unlogged:
        return accuracy.unknown(
            f"no {PREDICTIONS_ARTIFACT} on {', '.join(dict.fromkeys(unlogged))} (logged by a harness that did not "
            "store predictions): run the sweep again with resume=false"
        )
    if scored_apart:
        return accuracy.unknown(f"scored on different test images: {'; '.join(scored_apart)}")
    return accuracy.unknown(f"no seed has a finished run on both sides (no {reference} run of the same seed)")


SPEED_COLUMNS = ["speed_ratio", "speed_ratio_low", "speed_ratio_high", "speed_verdict", "timed_runs", "speed_basis"]
RUNS_BASIS, ROUNDS_BASIS = "runs", "paired rounds"  # speed_basis: whole runs, or "paired rounds: C of R clean"


def speed_table(
    runs: pd.DataFrame, histories: pd.DataFrame, columns: Sequence[str], reference: str = REFERENCE
) -> pd.DataFrame:
    """Each configuration's speed beside the reference's with the same other settings: the reference's
    seconds per epoch over this one's (> 1: faster), its 95% interval, the verdict, the fewer timed runs of
    the two sides, and the basis. Where every run of both sides trained in the same rounds of one sweep, the
    basis is paired rounds (timing.compare_rounds: the median of the clean rounds' ratios, "unreliable" only
    with too few clean rounds). Otherwise it is whole runs (timing.compare over their timed epochs:
    "unreliable" when a run on either side was not stable; with one run a side, the interval sees only its
    epochs, not run-to-run drift)."""
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
            timed = [[epochs[i] for i in each["run_id"] if i in epochs.index] for each in (sides[reference], side)]
            if _in_one_rounds(both, histories):
                result, clean = timing.compare_rounds(
                    *(_round_epochs(each, histories) for each in (sides[reference], side)), _max_other_share(both)
                )
                rounds = histories.loc[histories["run_id"].isin(both["run_id"]), "round"].nunique()
                basis = f"{ROUNDS_BASIS}: {clean} of {rounds} clean"
            else:
                result, basis = timing.compare(*timed, _unstable(both)), RUNS_BASIS
            speed = (result.ratio, result.low, result.high, result.verdict, min(map(len, timed)), basis)
            rows.append(
                {**dict(zip(settings, key, strict=True)), "model": model} | dict(zip(SPEED_COLUMNS, speed, strict=True))
            )
    return pd.DataFrame(rows, columns=[*settings, "model", *SPEED_COLUMNS])


def _unstable(runs: pd.DataFrame) -> str:
    """Why the runs' timings cannot be trusted as whole runs: every unstable run's reason."""
    return "; ".join(f"{r.run_name}: {r.timing_unstable}" for r in runs.itertuples() if r.timing_unstable)


def _in_one_rounds(runs: pd.DataFrame, histories: pd.DataFrame) -> bool:
    """Whether every one of these runs trained in the same rounds of a sweep, with each epoch's round logged."""
    sessions = set(runs["rounds"]) if "rounds" in runs else {""}  # no column: none in rounds
    timed = histories[histories["run_id"].isin(runs["run_id"])].dropna(subset=["epoch_seconds"])
    return len(sessions) == 1 and "" not in sessions and not timed.empty and timed["round"].notna().all()


def _round_epochs(runs: pd.DataFrame, histories: pd.DataFrame) -> list[timing.RoundEpoch]:
    """The runs' timed epochs with their rounds and other processes' CPU share, for timing.compare_rounds."""
    timed = histories[histories["run_id"].isin(runs["run_id"])].dropna(subset=["epoch_seconds"])
    return [
        timing.RoundEpoch(
            int(r.round), r.epoch_seconds, None if pd.isna(r.epoch_other_cpu_share) else r.epoch_other_cpu_share
        )
        for r in timed.itertuples()
    ]


def _max_other_share(runs: pd.DataFrame) -> float:
    """The runs' timing.max_other_cpu_share (the strictest where they differ; the default where unlogged)."""
    given = pd.to_numeric(runs.get("timing.max_other_cpu_share", pd.Series(dtype=float)), errors="coerce").dropna()
    return float(given.min()) if not given.empty else TimingConfig().max_other_cpu_share


def compared_with(
    reference: str,
    summary: pd.DataFrame,
    runs: pd.DataFrame,
    histories: pd.DataFrame,
    predictions: dict[str, np.ndarray],
    columns: Sequence[str],
) -> pd.DataFrame:
    """Every model beside ``reference`` at equal settings: mean accuracies (headline_table), the paired
    accuracy verdict (accuracy_table) and speed (speed_table)."""
    settings = [c for c in columns if c not in ("backend", "activation")]
    paired = accuracy_table(runs, predictions, columns, reference)
    speed = speed_table(runs, histories, columns, reference)
    table = headline_table(summary, columns, reference).merge(paired, on=[*settings, "model"], how="left")
    return table.merge(speed, on=[*settings, "model"], how="left")


def comparisons_table(
    summary: pd.DataFrame,
    runs: pd.DataFrame,
    histories: pd.DataFrame,
    predictions: dict[str, np.ndarray],
    columns: Sequence[str],
) -> pd.DataFrame:
    """comparisons.csv: every pair of models at equal settings, accuracy and speed side by side. Each pair is
    listed once, with the model that comes first in the headline's order as the reference (numpy-sigmoid
    first of all), so the tutorial's pair reads as in the headline."""
    settings = [c for c in columns if c not in ("backend", "activation")]
    done = summary[summary["n"] > 0]
    models = sorted(set(done["backend"] + "-" + done["activation"]), key=lambda m: (_model_rank(m), m))
    tables = []
    for index, reference in enumerate(models[:-1]):
        table = compared_with(reference, summary, runs, histories, predictions, columns)
        later = table["model"].isin(models[index + 1 :]) & table["final_test_accuracy_mean_ref"].notna()
        tables.append(table[later].assign(reference=reference, candidate=table["model"]))
    names = ["reference", "candidate", *settings, "accuracy_diff", *ACCURACY_COLUMNS, *SPEED_COLUMNS]
    return pd.concat(tables, ignore_index=True)[names] if tables else pd.DataFrame(columns=names)
