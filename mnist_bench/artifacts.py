"""Files a finished run leaves behind: its config, curves, confusion matrix and weights."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from mnist_bench.backends.base import NUM_CLASSES, EpochMetrics, FitResult
from mnist_bench.backends.numpy_backend import losses_and_predictions
from mnist_bench.config import Config


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Counts of (true class, predicted class) pairs."""
    counts = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    np.add.at(counts, (labels, predicted), 1)
    return counts


def write(folder: Path, cfg: Config, history: list[EpochMetrics], fit: FitResult, x_test, y_test) -> None:
    """Write config.yaml, curves.png, confusion_matrix.{csv,png} and weights.npz into ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    np.savez(folder / "weights.npz", weights=fit.weights, bias=fit.bias)

    labels = np.asarray(y_test, dtype=np.int64)
    _, predicted = losses_and_predictions(x_test, np.eye(NUM_CLASSES)[labels], fit.weights, fit.bias, cfg)
    counts = confusion_matrix(labels, predicted)
    header = "true\\predicted," + ",".join(str(k) for k in range(NUM_CLASSES))
    rows = [f"{k}," + ",".join(str(v) for v in row) for k, row in enumerate(counts)]
    (folder / "confusion_matrix.csv").write_text("\n".join([header, *rows]) + "\n")

    fig, ax = plt.subplots(figsize=(5, 4.5))
    fig.subplots_adjust(left=0.12, right=0.98, bottom=0.11, top=0.93)
    ax.imshow(counts, cmap="Blues")
    for (i, j), value in np.ndenumerate(counts):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=6)
    ax.set(xlabel="predicted", ylabel="true", xticks=range(NUM_CLASSES), yticks=range(NUM_CLASSES))
    ax.set_title("test-set confusion matrix")
    fig.savefig(folder / "confusion_matrix.png", dpi=100)
    plt.close(fig)

    columns = {key: [asdict(m)[key] for m in history] for key in asdict(history[0])} if history else {}
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.14, top=0.91, wspace=0.25)
    for split in ("train", "test"):
        loss_ax.plot(columns.get("epoch", []), columns.get(f"{split}_loss", []), label=split)
        acc_ax.plot(columns.get("epoch", []), columns.get(f"{split}_accuracy", []), label=split)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.savefig(folder / "curves.png", dpi=100)
    plt.close(fig)
