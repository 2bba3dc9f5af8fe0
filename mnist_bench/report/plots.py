"""The report's figures: PNG bytes rendered by matplotlib's Agg through its object API (no pyplot, so no
global figure state and no GUI backend is ever touched).

Each function takes the frames ``mnist_bench.report`` builds (runs, per-epoch histories, the
per-configuration summary) and returns the plot, or a one-line note saying why it was skipped, so
the report can tell its reader what is not there and why.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

COLORS = matplotlib.colormaps["tab10"].colors
PER_FIGURE = 12  # lines per panel of a curves figure: more settings than this get figures of their own
PLAIN = ("backend", "activation", "device")  # shown by value ("numpy-sigmoid-cpu"), the rest as key=value
SHORT = {"epochs": "e", "batch_size": "batch"}
# One look per backend, the same in every figure. The backends compute the same numbers by design, so their
# lines often lie exactly on top of each other: the markers (hollow circle, x, +, hollow square and triangle)
# still show through one another there, and the line styles tell them apart wherever they do differ.
BACKEND_STYLES: dict[str, dict[str, object]] = {
    "numpy": {"linestyle": "-", "marker": "o", "markersize": 9, "markerfacecolor": "none", "linewidth": 2.2},
    "tf": {"linestyle": (0, (5, 3)), "marker": "x", "markersize": 7},
    "jax": {"linestyle": ":", "marker": "+", "markersize": 11},
    "keras": {"linestyle": "-.", "marker": "s", "markersize": 5, "markerfacecolor": "none"},
    "torch": {"linestyle": (0, (3, 1, 1, 1)), "marker": "^", "markersize": 7, "markerfacecolor": "none"},
}
OTHER_STYLES = [{"linestyle": (0, (1, 2, 4, 2)), "marker": marker, "markersize": 7} for marker in "dv<>"]
LOSS_NAMES = {  # what each activation's loss is: per image, averaged over the images
    "sigmoid": "loss (BCE summed over the 10 outputs)",
    "softmax": "loss (cross-entropy)",
}
COINCIDE_RTOL = 1e-4  # series whose every value is within this relative difference are drawn on top of each other


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


def backend_styles(backends: Sequence[str]) -> dict[str, dict[str, object]]:
    """Line style and marker of each backend: its own where it has one, else the next spare one."""
    spare = iter(OTHER_STYLES * len(backends))
    return {b: {"markeredgewidth": 1.4, **(BACKEND_STYLES.get(b) or next(spare))} for b in backends}


def coinciding(series: Mapping[str, np.ndarray]) -> list[list[str]]:
    """The groups (two or more, in order) of the labelled series whose values are all equal within
    COINCIDE_RTOL: the lines a reader cannot see apart because one is drawn exactly over the other."""
    groups, left = [], list(series)
    while left:
        first, *rest = left
        same = [
            label
            for label in rest
            if np.shape(series[label]) == np.shape(series[first])
            and np.allclose(series[label], series[first], rtol=COINCIDE_RTOL, atol=0, equal_nan=True)
        ]
        if same:
            groups.append([first, *same])
        left = [label for label in rest if label not in same]
    return groups


def _and(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def coincidence_note(found: Mapping[tuple[str, ...], Sequence[str]], places: int) -> str:
    """One sentence naming the backends whose series coincide, and where: ``found`` maps each group of
    backends to the places (panels or settings) it coincides in, out of ``places`` where two or more backends
    were drawn. Empty when nothing coincides."""
    if not found:
        return ""
    parts = [
        f"{_and(group)} ({'at every setting drawn' if len(where) == places else 'at ' + ', '.join(where)})"
        for group, where in found.items()
    ]
    return (
        f"Coinciding series (every value equal within a relative {COINCIDE_RTOL:g}), drawn on top of each "
        f"other and told apart by their markers: {'; '.join(parts)}."
    )


def _coincide_line(groups: Iterable[str]) -> str:
    """The second line of a panel's title naming the series drawn on top of each other there, if any."""
    shown = "; ".join(groups)
    return f"\ncoincide: {shown}" if shown else ""


def _png(fig: Figure) -> bytes:
    """The figure as PNG bytes, without the Software metadata (it carries a URL)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _grid(count: int) -> tuple[int, int]:
    """Rows and columns for ``count`` panels, at most three wide, with as few empty cells as can be (four
    panels are 2 x 2, not a row of three and an orphan)."""
    if count <= 3:
        return 1, max(count, 1)
    cols = min((3, 2), key=lambda c: (math.ceil(count / c) * c - count, -c))
    return math.ceil(count / cols), cols


def _panels(count: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    """A figure with ``count`` axes on a grid (see _grid); the spare cells are hidden."""
    rows, cols = _grid(count)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, axes.flat[:count]


def _handles(axes: Iterable) -> dict[str, object]:
    """Every labelled line of the axes, once per label, in the order drawn."""
    handles: dict[str, object] = {}
    for ax in axes:
        handles |= {label: line for line, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    return handles


@dataclass
class _Lines:
    """How the runs of a curves-like figure are drawn: colour = the setting (every varying column but backend
    and activation; the backend when nothing else varies), line style and marker = the backend, one row of
    panels per activation, and figures of their own for settings beyond PER_FIGURE lines a panel."""

    runs: pd.DataFrame  # run_id, backend, activation, setting
    activations: list[str]
    backends: list[str]
    settings: list[str]  # [""] when only backend and activation vary
    styles: dict[str, dict[str, object]]

    @classmethod
    def of(cls, runs: pd.DataFrame, columns: Sequence[str]) -> _Lines:
        keyed = [c for c in varying(runs, columns) if c not in ("backend", "activation")]
        frame = pd.DataFrame(
            {
                "run_id": runs["run_id"].to_numpy(),
                "backend": runs["backend"].astype(str).to_numpy(),
                "activation": runs["activation"].astype(str).to_numpy(),
                "setting": [config_label(row, keyed) if keyed else "" for row in runs.to_dict("records")],
            }
        )
        backends = list(dict.fromkeys(frame["backend"]))
        activations, settings = list(dict.fromkeys(frame["activation"])), list(dict.fromkeys(frame["setting"]))
        return cls(frame, activations, backends, settings, backend_styles(backends))

    def color(self, backend: str, setting: str) -> tuple:
        key = self.settings.index(setting) if self.settings != [""] else self.backends.index(backend)
        return COLORS[key % len(COLORS)]

    def parts(self, drawn: set[tuple[str, str, str]]) -> list[tuple[list[str], list[str]]]:
        """Each figure's settings and the activations (its rows or panels) that have a line in it."""
        size = max(1, min(len(COLORS), PER_FIGURE // len(self.backends)))
        chunks = [self.settings[start : start + size] for start in range(0, len(self.settings), size)]
        return [
            (chunk, [a for a in self.activations if any((a, s, b) in drawn for s in chunk for b in self.backends)])
            for chunk in chunks
        ]

    def legend(self, fig: Figure, axes: Iterable) -> None:
        """One legend under the figure: a column per backend, a row per setting."""
        handles = _handles(axes)

        def place(label: str) -> tuple[int, int]:
            backend, _, setting = label.partition(" ")
            return self.backends.index(backend), self.settings.index(setting)

        order = sorted(handles, key=place)
        ncol = len(self.backends) if len(self.settings) > 1 else 4
        fig.legend([handles[label] for label in order], order, loc="outside lower center", ncol=ncol, fontsize=8)

    def key(self) -> str:
        """What colour and style stand for, for the caption."""
        shown = "Colour, line style and marker" if self.settings == [""] else "Colour = setting, line style and marker"
        return f"{shown} = backend."


def _numbered(stem: str, figures: Sequence[tuple[Figure, str]]) -> list[Plot]:
    """One Plot per figure: ``stem.png``, or ``stem_1.png``... with "Part i of n." when there are several."""
    if len(figures) == 1:
        return [Plot(f"{stem}.png", _png(figures[0][0]), figures[0][1], figures[0][0])]
    return [
        Plot(f"{stem}_{number}.png", _png(fig), f"{caption} Part {number} of {len(figures)}.", fig)
        for number, (fig, caption) in enumerate(figures, 1)
    ]


def curves(runs: pd.DataFrame, histories: pd.DataFrame, columns: Sequence[str]) -> list[Plot]:
    """Loss and accuracy per epoch for each configuration (``runs`` in table order, finished runs only), one
    row of panels per activation: the sigmoid's and the softmax's losses are different quantities and never
    share an axis. Mean over seeds, with a min-max band for the test curves; the caption, and the title of
    each row, name the backends whose curves coincide."""
    lines = _Lines.of(runs, columns)
    metrics = ["test_loss", "test_accuracy", "train_loss", "train_accuracy"]
    data = histories.merge(lines.runs, on="run_id")
    stats = data.groupby(["activation", "setting", "backend", "epoch"])[metrics].agg(["mean", "min", "max"])
    drawn = set(stats.index.droplevel("epoch"))
    figures = []
    for chunk, activations in lines.parts(drawn):
        fig = Figure(figsize=(11, 0.9 + 3.3 * len(activations) + 0.22 * len(chunk)), layout="constrained")
        axes = fig.subplots(len(activations), 2, squeeze=False)
        found: dict[tuple[str, ...], list[str]] = {}
        places = 0
        for row, activation in zip(axes, activations, strict=True):
            row_groups: dict[str, None] = {}
            for setting in chunk:
                here = {
                    b: stats.loc[(activation, setting, b)] for b in lines.backends if (activation, setting, b) in drawn
                }
                for backend, curve in here.items():
                    color, style = lines.color(backend, setting), lines.styles[backend]
                    for metric, ax in zip(("loss", "accuracy"), row, strict=True):
                        test, train = curve[f"test_{metric}"], curve[f"train_{metric}"]["mean"]
                        ax.plot(test.index, test["mean"], color=color, label=f"{backend} {setting}".strip(), **style)
                        ax.fill_between(test.index, test["min"], test["max"], color=color, alpha=0.12, linewidth=0)
                        ax.plot(train, color=color, linestyle=style["linestyle"], linewidth=0.8, alpha=0.5)
                if len(here) > 1:
                    places += 1
                    for group in coinciding({b: curve.to_numpy().ravel() for b, curve in here.items()}):
                        found.setdefault(tuple(group), []).append(f"{activation} {setting}".strip())
                        row_groups[" = ".join(group)] = None
            for metric, ax in zip(("loss", "accuracy"), row, strict=True):
                title = f"{activation}: {metric} (markers: test, thin: train)" + _coincide_line(row_groups)
                ylabel = LOSS_NAMES.get(activation, "loss") if metric == "loss" else "accuracy"
                ax.set(xlabel="epoch", ylabel=ylabel)
                ax.set_title(title, fontsize=10)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.grid(alpha=0.3)
        lines.legend(fig, axes.flat)
        caption = (
            "Test loss and accuracy per epoch (markers; thin lines: train), one row per activation, since "
            "their losses are different quantities (sigmoid: binary cross-entropy summed over the 10 outputs; "
            "softmax: cross-entropy; both per image, averaged over the images). Mean over seeds, band = min-max "
            f"over seeds (test). {lines.key()} Failed, killed and diverged runs are not drawn."
        )
        note = coincidence_note(found, places)
        figures.append((fig, f"{caption} {note}" if note else caption))
    return _numbered("curves", figures)


def accuracy_vs_time(runs: pd.DataFrame, histories: pd.DataFrame, columns: Sequence[str]) -> list[Plot] | str:
    """Test accuracy after each epoch against the training seconds spent up to it, one panel per activation:
    the fair view when implementations differ in cost per epoch (what a second buys, not an epoch)."""
    timed = histories.dropna(subset=["epoch_seconds", "test_accuracy"]).sort_values(["run_id", "epoch"])
    if timed.empty:
        return "Test accuracy against training time: skipped, no finished run has epoch timings."
    timed = timed.assign(seconds=timed.groupby("run_id")["epoch_seconds"].cumsum())
    lines = _Lines.of(runs[runs["run_id"].isin(timed["run_id"])], columns)
    data = timed.merge(lines.runs, on="run_id")
    means = data.groupby(["activation", "setting", "backend", "epoch"])[["seconds", "test_accuracy"]].mean()
    drawn = set(means.index.droplevel("epoch"))
    figures = []
    for chunk, activations in lines.parts(drawn):
        fig = Figure(figsize=(5.5 * len(activations), 4.4 + 0.22 * len(chunk)), layout="constrained")
        axes = fig.subplots(1, len(activations), squeeze=False, sharey=True)[0]
        for ax, activation in zip(axes, activations, strict=True):
            for setting, backend in [(s, b) for s in chunk for b in lines.backends if (activation, s, b) in drawn]:
                curve = means.loc[(activation, setting, backend)]
                color, style = lines.color(backend, setting), lines.styles[backend]
                ax.plot(
                    curve["seconds"], curve["test_accuracy"], color=color, label=f"{backend} {setting}".strip(), **style
                )
            ax.set(xlabel="cumulative training seconds", title=f"{activation}: test accuracy against time")
            ax.set_xlim(left=0)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("test accuracy")
        lines.legend(fig, axes)
        caption = (
            "Test accuracy against the training seconds spent so far: one point per epoch, at the sum of the "
            "timed epochs up to it (the warm-up before training, where JAX and TF compile, is not counted), "
            "mean over seeds of both. A line further left reached its accuracy sooner: the fair view when "
            f"backends differ in cost per epoch. {lines.key()}"
        )
        figures.append((fig, caption))
    return _numbered("accuracy_vs_time", figures)


def accuracy_vs_lr(summary: pd.DataFrame, columns: Sequence[str]) -> Plot | str:
    """Final test accuracy against the learning rate (log x axis), a line per backend-activation: colour =
    activation, line style and marker = backend, in one panel (one per combination of any other varying
    setting), so that every model is read against the same axes."""
    done = summary[summary["n"] > 0]
    if done["lr"].nunique() < 2:
        return f"Test accuracy against lr: skipped, the selection has {done['lr'].nunique()} lr value (needs 2+)."
    others = [c for c in varying(done, columns) if c not in ("backend", "activation", "lr")]
    panels = list(done.groupby(others, sort=False)) if others else [((), done)]
    activations = list(dict.fromkeys(done["activation"]))
    styles = backend_styles(list(dict.fromkeys(done["backend"])))
    fig, axes = _panels(len(panels), 5.6, 4.2)
    found: dict[tuple[str, ...], list[str]] = {}
    places = 0
    for ax, (_, panel) in zip(axes, panels, strict=True):
        title = config_label(panel.iloc[0], others) if others else "final test accuracy against learning rate"
        panel_groups: dict[str, None] = {}
        for activation in activations:
            series = {}
            for backend, line in panel[panel["activation"].eq(activation)].groupby("backend", sort=False):
                line = line.assign(x=line["lr"].astype(float)).sort_values("x")
                ax.errorbar(
                    line["x"],
                    line["final_test_accuracy_mean"],
                    yerr=line["final_test_accuracy_std"].fillna(0),
                    capsize=3,
                    color=COLORS[activations.index(activation) % len(COLORS)],
                    label=f"{backend}-{activation}",
                    **styles[backend],
                )
                series[backend] = line[["x", "final_test_accuracy_mean", "final_test_accuracy_std"]].to_numpy()
            if len(series) > 1:
                places += 1
                where = f"{activation} {title}" if others else activation
                for group in coinciding(series):
                    found.setdefault(tuple(group), []).append(where)
                    panel_groups[" = ".join(group)] = None
        ax.set_xscale("log")
        lrs = sorted(set(panel["lr"]), key=float)
        ax.set_xticks([float(lr) for lr in lrs], lrs)  # ticks at the swept values, not at powers of ten
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel="learning rate", ylabel="final test accuracy")
        ax.set_title(title + _coincide_line(panel_groups), fontsize=10)
        ax.grid(alpha=0.3)
    handles = _handles(axes)
    fig.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize=8)
    caption = (
        "Final test accuracy against learning rate: mean over seeds, error bar = std (none where n=1); "
        "colour = activation, line style and marker = backend."
    )
    note = coincidence_note(found, places)
    return Plot("accuracy_vs_lr.png", _png(fig), caption + (" " + note if note else ""), fig)


def seconds_per_epoch_bars(runs: pd.DataFrame, columns: Sequence[str]) -> Plot | str:
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
