"""What the report says, in order: the header, the headline and its one-sentence answers, the measurement
conditions, the problems, the summary table and the plots, as blocks that mnist_bench.report.render writes out."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from mnist_bench import timing, tracking
from mnist_bench.report import accuracy, plots
from mnist_bench.report.plots import Plot
from mnist_bench.report.reading import METRICS, Selection
from mnist_bench.report.render import Block, to_csv, to_html, to_markdown
from mnist_bench.report.tables import REFERENCE, ROUNDS_BASIS, compared_with, comparisons_table, summary_table
from mnist_bench.schema import CELLS_ARTIFACT, COUNTED, PREDICTIONS_ARTIFACT, SweepParam

PROBLEMS_TITLE = "Incomplete or failed cells"


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
    """The configuration columns as a reader wants them."""
    return _full_batch_named(frame[list(columns)])


def _full_batch_named(frame: pd.DataFrame) -> pd.DataFrame:
    """batch_size None is the full batch: written "full" in every table and CSV alike."""
    return frame.replace({"batch_size": {"None": "full"}})


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
            f"Δ acc = final test accuracy minus {REFERENCE}'s (means over seeds). The accuracy verdict pairs the "
            "two models image by image on the test set (each run's "
            f"{PREDICTIONS_ARTIFACT}): McNemar's exact test, two-sided mid-p, on the images exactly one of the "
            "two got right. With one seed that test decides, for the two trained models (it cannot see how "
            "another seed would have trained them); with several, each seed's runs are paired, the test "
            "is pooled over the seeds, and the seed-to-seed spread must agree: every seed's difference of the "
            f"same sign, or from {accuracy.SIGN_TEST_SEEDS} seeds a sign test over them. More or less accurate "
            f"when p < {accuracy.ALPHA:g}, within noise otherwise; comparisons.csv names the rule that decided. "
            f"Speed ratio = {REFERENCE}'s s/epoch ÷ this "
            "row's (> 1: faster), s/epoch being the median of a run's timed epochs, with a 95% bootstrap "
            "interval over runs and their epochs (widened by √(n/(n−1)) for n runs, which a plain "
            "bootstrap over few runs understates). The speed verdict is faster or slower only when the "
            "interval excludes 1 and every run on both sides was timed under stable conditions "
            "(see Measurement conditions), within noise when it includes 1, and unreliable otherwise; with one "
            "run a side the interval holds only that run's epochs, so a faster or slower call is said as that "
            "run's, not as the models'. Where both sides trained in the same rounds of one sweep (speed basis "
            "paired rounds in comparisons.csv), the ratio, interval and verdict are the round-by-round ones "
            "described under Measurement conditions instead.",
        )
    )
    blocks += [("p", sentence) for sentence in _answers(table, columns)]
    settings = [
        "device",
        *[c for c in plots.varying(table, columns) if c not in ("backend", "activation", "device")],
    ]
    records = table.to_dict("records")
    shown = _shown_config(table, settings).assign(
        model=table["model"],
        n=table["n"],
        **{
            "test acc": [mean_std(row, "final_test_accuracy") for row in records],
            "s/epoch": [mean_std(row, "seconds_per_epoch") for row in records],
            f"Δ acc vs {REFERENCE}": table["accuracy_diff"].map(lambda d: "" if pd.isna(d) else f"{d:+.4f}"),
            "accuracy verdict": [_accuracy_verdict(row) for row in records],
            "speed ratio (95% interval)": [_ratio(row) for row in records],
            "speed verdict": table["speed_verdict"].fillna(""),
        },
    )
    return [*blocks, ("table", shown)]


CONDITION_METRICS = ["load_average_start", "load_average_end", "other_cpu_share", "cpu_steal_share", "epoch_spread"]


def conditions_blocks(sel: Selection) -> list[Block]:
    """Under what conditions the timings were taken, per backend-activation-device: the figures a speed
    verdict rests on, and every run whose timings were not stable, with the reason."""
    finished = sel.runs[sel.runs["status"].isin(COUNTED)]
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
    if finished["rounds"].ne("").any():
        blocks.append(("p", ROUNDS_RULE))
    shaky = finished[finished["timing_unstable"].ne("")]
    if not shaky.empty:
        blocks.append(("ul", [f"`{r.run_name}`: {r.timing_unstable}" for r in shaky.itertuples()]))
    return blocks


ROUNDS_RULE = (
    "This sweep trained its cells in rounds: epoch k of every cell, then epoch k + 1, one cell at a time; "
    "between turns the process's own threads settle, and after an epoch that other processes disturbed the "
    "next waits up to a second for them to go quiet. Two "
    "models whose runs all trained in the same rounds are compared round by round (speed basis: paired "
    "rounds): each round's ratio is the reference's epoch over the candidate's (medians where a side has "
    "several seeds). A round is dropped when other processes used more than timing.max_other_cpu_share of "
    "the CPU during any of those epochs (the run's limit, logged per epoch as epoch_other_cpu_share); the "
    "ratio is the median of the clean rounds' ratios, and its 95% interval runs from one order statistic to "
    "another (for 10 rounds the 2nd and 9th smallest), assuming nothing of how foreign load is spread. "
    "The run-level stability above does not decide these verdicts: they are unreliable only when fewer "
    f"than {timing.MIN_CLEAN_ROUNDS} clean rounds remain."
)


HEADLINE_CANDIDATE = "tf-softmax"  # the tutorial's question: its TF-softmax model against its NumPy-sigmoid one


def _answers(table: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The tutorial's question answered in one sentence for each setting where both of its models ran: which
    is more accurate (by the paired accuracy verdict) and which is faster (by the speed verdict)."""
    shown = [c for c in plots.varying(table, columns) if c not in ("backend", "activation")]
    answers = []
    for row in table[table["model"].eq(HEADLINE_CANDIDATE) & table["accuracy_diff"].notna()].to_dict("records"):
        where = ", ".join(f"{c}={row[c]}" for c in shown)
        answers.append(
            f"**{HEADLINE_CANDIDATE} vs {REFERENCE}**{f' ({where})' if where else ''}: "
            f"{_more_accurate(row)}, and {_faster(row)}."
        )
    return answers


def _more_accurate(row: Mapping[str, object]) -> str:
    """Which of the two is more accurate, as far as the paired verdict allows, with both accuracies, the
    evidence, and what would tell where it cannot."""
    verdict = row.get("accuracy_verdict")
    if pd.isna(verdict) or verdict == accuracy.UNKNOWN:
        reason = "" if pd.isna(verdict) else f": {row['accuracy_rule']}"
        return f"whether either is more accurate cannot be said{reason}"
    candidate = (HEADLINE_CANDIDATE, row["final_test_accuracy_mean"])
    reference = (REFERENCE, row["final_test_accuracy_mean_ref"])
    if verdict != accuracy.WITHIN_NOISE:
        (ahead, ahead_score), (behind, behind_score) = (
            (reference, candidate) if verdict == accuracy.LESS_ACCURATE else (candidate, reference)
        )
        return (
            f"{ahead} is more accurate than {behind} ({ahead_score:.4f} against {behind_score:.4f}, {_evidence(row)})"
        )
    scores = ", ".join(f"{name} {score:.4f}" for name, score in (candidate, reference))
    if row["reference_only_right"] == row["candidate_only_right"] == 0:
        return f"neither is more accurate: both got the same test images right ({scores})"
    if row["accuracy_rule"] == accuracy.ONE_SEED:
        advice = "; add seeds (seed=0,1,2) to tell a smaller difference"
    elif accuracy.SEEDS_DISAGREE in row["accuracy_rule"]:
        advice = "; more seeds would tell"
    else:
        advice = ""
    return f"neither is more accurate beyond chance ({scores}, {_evidence(row)}{advice})"


def _evidence(row: Mapping[str, object]) -> str:
    """The paired test behind a verdict: its p-value, the rule, and on how many test images."""
    images = f"{int(row['test_images']):,} test images"
    if row["accuracy_rule"] == accuracy.ONE_SEED:
        return f"McNemar {_p(row)} on the {images}"
    return f"{_p(row)} by {row['accuracy_rule']}, on {images} a seed"


def _p(row: Mapping[str, object]) -> str:
    """The accuracy test's p-value as said: to two significant digits, and below 0.001 only as such."""
    p_value = row["accuracy_p_value"]
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.2g}"


def _accuracy_verdict(row: Mapping[str, object]) -> str:
    """The headline table's cell: the verdict with its p-value, or why there is none."""
    verdict = row.get("accuracy_verdict")
    if pd.isna(verdict):
        return ""
    if verdict == accuracy.UNKNOWN:
        return f"{verdict}: {row['accuracy_rule']}"
    return f"{verdict} ({_p(row)})"


def _faster(row: Mapping[str, object]) -> str:
    """Which of the two is faster, said only when the speed verdict allows it."""
    verdict = row.get("speed_verdict")
    if pd.isna(verdict):
        return "their speeds were not compared (no timed epochs on one side)"
    ratio = f"speed ratio {_ratio(row)}"
    if verdict in (timing.FASTER, timing.SLOWER):
        faster = HEADLINE_CANDIDATE if verdict == timing.FASTER else REFERENCE
        in_rounds = str(row.get("speed_basis", "")).startswith(ROUNDS_BASIS)
        if row["timed_runs"] < 2 and not in_rounds:  # identical runs of the mission's command have flipped this
            return (
                f"{faster} was faster in one run a side ({ratio}, an interval over its epochs that cannot see "
                "a drift between runs: add seed=0,1,2 to tell)"
            )
        return f"{faster} is faster ({ratio})"
    if verdict == timing.WITHIN_NOISE:
        more = "epochs (more rounds)" if str(row.get("speed_basis", "")).startswith(ROUNDS_BASIS) else "seeds"
        return f"neither is faster beyond timing noise ({ratio}; more {more} would tell a smaller difference)"
    return f"which is faster cannot be said: the {ratio} is {verdict}; run it again when the machine is quieter"


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
    finished = sel.runs[sel.runs["status"].isin(COUNTED)]
    if finished.empty:
        return [], ["No plots: no run of the selection finished without failing or diverging."]
    timed = plots.accuracy_vs_time(finished, sel.histories, sel.columns)
    results = [
        *plots.curves(finished, sel.histories, sel.columns),
        *(timed if isinstance(timed, list) else [timed]),
        plots.accuracy_vs_lr(summary, sel.columns),
        plots.seconds_per_epoch_bars(finished, sel.columns),
        plots.heatmap(summary, sel.columns),
        plots.confusion_matrices(sel.confusion_matrices),
    ]
    return [r for r in results if isinstance(r, Plot)], [r for r in results if isinstance(r, str)]


def csv_files(
    summary: pd.DataFrame,
    runs: pd.DataFrame,
    histories: pd.DataFrame,
    predictions: dict[str, np.ndarray],
    columns: Sequence[str],
) -> dict[str, bytes]:
    """summary.csv and comparisons.csv: the report's tables unrounded, settings written as its tables write them."""
    comparisons = comparisons_table(summary, runs, histories, predictions, columns)
    return {
        "summary.csv": to_csv(_full_batch_named(summary)),
        "comparisons.csv": to_csv(_full_batch_named(comparisons)),
    }


def render(sel: Selection) -> dict[str, bytes]:
    """Every file of the report, in memory: nothing touches the disk until all of it exists."""
    summary = summary_table(sel.runs, sel.columns)
    headline = compared_with(REFERENCE, summary, sel.runs, sel.histories, sel.predictions, sel.columns)
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
        **csv_files(summary, sel.runs, sel.histories, sel.predictions, sel.columns),
    }
    return files | {plot.name: plot.png for plot in plots}
