"""The report's figures: PNG bytes rendered by matplotlib's Agg through its object API (no pyplot, so no
global figure state and no GUI backend is ever touched).

Each function takes the frames ``mnist_bench.report`` builds (runs, per-epoch histories, the
per-configuration summary) and returns the plot, or a one-line note saying why it was skipped, so
the report can tell its reader what is not there and why.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

COLORS = matplotlib.colormaps["tab10"].colors
PER_FIGURE = 8  # configurations per curves figure: more lines than this are unreadable
PLAIN = ("backend", "activation", "device")  # shown by value ("numpy-sigmoid-cpu"), the rest as key=value
SHORT = {"epochs": "e", "batch_size": "batch"}


@dataclass
class Plot:
    """A rendered figure: its file name, PNG bytes and the caption the report shows under it, and the figure
    itself (for looking at what was drawn, not only at the pixels)."""

    name: str
    png: bytes
    caption: str
    figure: Figure | None = field(default=None, repr=False, compare=False)


def varying(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The columns that take more than one value: the only ones worth naming in a label."""
    return [c for c in columns if frame[c].nunique(dropna=False) > 1]


def config_label(row: Mapping[str, object], columns: Sequence[str]) -> str:
    """A short name for a configuration from the given columns, e.g. ``numpy-sigmoid lr=0.1 e=3``."""
    plain = "-".join(str(row[c]) for c in columns if c in PLAIN)
    keyed = [f"{SHORT.get(c, c)}={'full' if row[c] == 'None' else row[c]}" for c in columns if c not in PLAIN]
    return " ".join([plain, *keyed] if plain else keyed) or "all runs"


def _png(fig: Figure) -> bytes:
    """The figure as PNG bytes, without the Software metadata (it carries a URL)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _panels(count: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    """A figure with ``count`` axes on a grid at most three wide; the spare cells are hidden."""
    cols = min(count, 3)
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, axes.flat[:count]


def curves(runs: pd.DataFrame, histories: pd.DataFrame, columns: Sequence[str]) -> list[Plot]:
    """Loss and accuracy per epoch for each configuration (``runs`` in table order, finished runs only).

    Mean over seeds, with a min-max band for the test curves; at most PER_FIGURE configurations per
    figure so that the colours stay tellable apart.
    """
    names = varying(runs, columns) or [c for c in ("backend", "activation") if c in columns]
    labels = pd.Series([config_label(row, names) for row in runs.to_dict("records")], index=runs.index)
    data = histories.merge(runs[["run_id"]].assign(config=labels), on="run_id")
    stats = data.groupby(["config", "epoch"])[["train_loss", "test_loss", "train_accuracy", "test_accuracy"]].agg(
        ["mean", "min", "max"]
    )
    order = [label for label in dict.fromkeys(labels) if label in stats.index]
    chunks = [order[start : start + PER_FIGURE] for start in range(0, len(order), PER_FIGURE)]
    plots = []
    for number, chunk in enumerate(chunks, 1):
        fig = Figure(figsize=(11, 4.6), layout="constrained")
        axes = dict(zip(("loss", "accuracy"), fig.subplots(1, 2), strict=True))
        for color, config in zip(COLORS, chunk, strict=False):
            curve = stats.loc[config]
            for metric, ax in axes.items():
                test = curve[f"test_{metric}"]
                ax.plot(curve.index, test["mean"], color=color, marker="o", markersize=3, label=config)
                ax.fill_between(curve.index, test["min"], test["max"], color=color, alpha=0.2, linewidth=0)
                ax.plot(curve.index, curve[f"train_{metric}"]["mean"], color=color, linestyle="--", linewidth=1)
        for metric, ax in axes.items():
            ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} (solid: test, dashed: train)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        fig.legend(*axes["loss"].get_legend_handles_labels(), loc="outside lower center", ncol=4, fontsize=8)
        name = "curves.png" if len(chunks) == 1 else f"curves_{number}.png"
        caption = (
            "Loss and accuracy per epoch: mean over seeds, band = min-max over seeds (test); "
            "failed, killed and diverged runs are not drawn."
        )
        plots.append(
            Plot(name, _png(fig), caption + (f" Part {number} of {len(chunks)}." if len(chunks) > 1 else ""), fig)
        )
    return plots


def accuracy_vs_lr(summary: pd.DataFrame, columns: Sequence[str]) -> Plot | str:
    """Final test accuracy against the learning rate, one panel per backend x activation (log x axis)."""
    done = summary[summary["n"] > 0]
    if done["lr"].nunique() < 2:
        return f"Test accuracy against lr: skipped, the selection has {done['lr'].nunique()} lr value (needs 2+)."
    others = [c for c in varying(done, columns) if c not in ("backend", "activation", "lr")]
    pairs = list(done.groupby(["backend", "activation"], sort=False))
    fig, axes = _panels(len(pairs), 4.6, 3.6)
    for ax, ((backend, activation), pair) in zip(axes, pairs, strict=True):
        lines = pair.groupby(others, sort=False) if others else [((), pair)]
        for color, (_, line) in zip(COLORS, lines, strict=False):
            line = line.assign(x=line["lr"].astype(float)).sort_values("x")
            ax.errorbar(
                line["x"],
                line["final_test_accuracy_mean"],
                yerr=line["final_test_accuracy_std"].fillna(0),
                marker="o",
                capsize=3,
                color=color,
                label=config_label(line.iloc[0], others) if others else None,
            )
        ax.set_xscale("log")
        lrs = sorted(set(pair["lr"]), key=float)
        ax.set_xticks([float(lr) for lr in lrs], lrs)  # ticks at the swept values, not at powers of ten
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel="learning rate", ylabel="final test accuracy", title=f"{backend}-{activation}")
        ax.grid(alpha=0.3)
        if others:
            ax.legend(fontsize=7)
    caption = "Final test accuracy against learning rate: mean over seeds, error bar = std (none where n=1)."
    return Plot("accuracy_vs_lr.png", _png(fig), caption, fig)


def seconds_per_epoch(runs: pd.DataFrame, columns: Sequence[str]) -> Plot | str:
    """Seconds per epoch per backend x device, pooled over lr, epochs and activation (they barely change the
    work of an epoch); other varying settings such as batch_size get bars of their own."""
    timed = runs.dropna(subset=["seconds_per_epoch"])
    if timed.empty:
        return "Seconds per epoch: skipped, no finished run has epoch timings."
    workload = [c for c in varying(timed, columns) if c not in ("backend", "device", "lr", "epochs", "activation")]
    keys = ["backend", "device", *workload]
    bars = timed.groupby(keys, sort=False)["seconds_per_epoch"].agg(["mean", "std", "count"]).reset_index()
    backends = list(dict.fromkeys(bars["backend"]))
    fig = Figure(figsize=(7.5, 1.4 + 0.42 * len(bars)), layout="constrained")
    ax = fig.subplots()
    ax.barh(
        range(len(bars)),
        bars["mean"],
        xerr=bars["std"].fillna(0),
        capsize=3,
        color=[COLORS[backends.index(b) % len(COLORS)] for b in bars["backend"]],
    )
    # Each value to the right of its bar's error bar, in the axes' own colour: a label centred in a short
    # bar spills over the tick labels, and white text over the error bar cannot be read.
    ends = bars["mean"] + bars["std"].fillna(0)
    for y, (end, mean, count) in enumerate(zip(ends, bars["mean"], bars["count"], strict=True)):
        ax.annotate(f"{mean:.3g} s (n={count})", (end, y), xytext=(4, 0), textcoords="offset points", va="center")
    ax.set_xlim(0, ends.max() * 1.4)  # room for the longest label after the longest bar
    ax.set_yticks(range(len(bars)), [config_label(row, keys) for row in bars.to_dict("records")])
    ax.invert_yaxis()
    ax.set(xlabel="seconds per epoch", title="seconds per epoch by backend and device")
    ax.grid(alpha=0.3, axis="x")
    caption = (
        "Seconds per epoch: the median epoch of each finished run, then mean over runs (error bar = std), "
        "runs pooled over lr, epochs and activation."
    )
    return Plot("seconds_per_epoch.png", _png(fig), caption, fig)


def heatmap(summary: pd.DataFrame, columns: Sequence[str]) -> Plot | str:
    """Final test accuracy over lr x epochs, one panel per combination of the other settings."""
    done = summary[summary["n"] > 0]
    n_lr, n_epochs = done["lr"].nunique(), done["epochs"].nunique()
    if n_lr < 2 or n_epochs < 2:
        return (
            f"Heatmap of test accuracy over lr x epochs: skipped, the selection has {n_lr} lr and "
            f"{n_epochs} epochs value(s); both must vary."
        )
    others = [c for c in columns if c not in ("lr", "epochs")]
    names = varying(done, others)
    panels = list(done.groupby(others, sort=False))
    low, high = done["final_test_accuracy_mean"].min(), done["final_test_accuracy_mean"].max()
    fig, axes = _panels(len(panels), 4.2, 3.4)
    for ax, (_, panel) in zip(axes, panels, strict=True):
        grid = panel.pivot_table(index="epochs", columns="lr", values="final_test_accuracy_mean", aggfunc="mean")
        grid = grid.sort_index(key=pd.to_numeric).sort_index(axis=1, key=pd.to_numeric)
        image = ax.imshow(grid.to_numpy(), vmin=low, vmax=high, cmap="viridis", aspect="auto")
        for (i, j), value in np.ndenumerate(grid.to_numpy()):
            if np.isfinite(value):
                dark = value < (low + high) / 2
                ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=8, color="w" if dark else "k")
        ax.set_xticks(range(len(grid.columns)), grid.columns)
        ax.set_yticks(range(len(grid.index)), grid.index)
        ax.set(xlabel="learning rate", ylabel="epochs", title=config_label(panel.iloc[0], names))
    fig.colorbar(image, ax=list(axes), label="final test accuracy")
    caption = "Final test accuracy (mean over seeds) over learning rate x epochs; blank = no finished run."
    return Plot("heatmap_lr_epochs.png", _png(fig), caption, fig)


def confusion_matrices(matrices: Mapping[str, np.ndarray]) -> Plot | str:
    """One panel per labelled confusion matrix: the counts written in each cell, the colour the share of the
    true class (row) that cell holds, so that the diagonal reads at once and errors stand out."""
    if not matrices:
        return "Confusion matrices: skipped, no finished run has a confusion_matrix.csv artifact."
    fig, axes = _panels(len(matrices), 5.2, 4.6)
    for ax, (label, counts) in zip(axes, matrices.items(), strict=True):
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for (true, predicted), count in np.ndenumerate(counts):
            if count:
                color = "white" if share[true, predicted] > 0.5 else "black"
                ax.text(predicted, true, str(count), ha="center", va="center", fontsize=7, color=color)
        classes = range(len(counts))
        ax.set(xlabel="predicted class", ylabel="true class", xticks=classes, yticks=classes)
        ax.set_title(label, fontsize=8)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="share of the true class")
    caption = (
        "Test-set confusion matrix of each backend-activation's most accurate finished run (named above it): "
        "the count in each cell, coloured by its share of the true class's images."
    )
    return Plot("confusion_matrices.png", _png(fig), caption, fig)
