"""Files a finished run leaves behind: its config, confusion matrix, test predictions and weights."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import yaml
from threadpoolctl import threadpool_limits

from mnist_bench.backends.base import NUM_CLASSES, FitResult
from mnist_bench.config import Config
from mnist_bench.schema import CONFUSION_ARTIFACT, PREDICTIONS_ARTIFACT
from mnist_bench.tracking import redact


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Counts of (true class, predicted class) pairs."""
    counts = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    np.add.at(counts, (labels, predicted), 1)
    return counts


def config_yaml(cfg: Config) -> str:
    """The run's config as YAML, credentials redacted: OmegaConf.to_yaml's text without OmegaConf validating
    every field again (its cost is in docs/performance.md)."""
    return redact(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))


def write(folder: Path, cfg: Config, fit: FitResult, x_test, y_test) -> None:
    """Write config.yaml, the confusion matrix (CONFUSION_ARTIFACT), each test image's label and predicted
    class (PREDICTIONS_ARTIFACT, what the report's paired accuracy test reads) and weights.npz into ``folder``.

    No figures: drawing them here cost every job about a second (matplotlib). MLflow's UI draws the
    per-epoch curves from the logged metrics, and the report draws curves and confusion matrices.
    """
    from mnist_bench.backends.numpy_backend import losses_and_predictions  # here: the report reads this module

    (folder / "config.yaml").write_text(config_yaml(cfg))
    np.savez(folder / "weights.npz", weights=fit.weights, bias=fit.bias)

    labels = np.asarray(y_test, dtype=np.int64)
    targets = np.eye(NUM_CLASSES, dtype=x_test.dtype)[labels]
    # On the job's BLAS threads, as it trained: a thread OpenBLAS wakes for the first time here brings its
    # own buffer, 12 MiB that were the peak of a one-epoch minibatch run.
    with threadpool_limits(limits=cfg.backend.threads, user_api="blas"):
        _, predicted = losses_and_predictions(x_test, targets, fit.weights, fit.bias, cfg.spec())
    write_confusion_matrix(folder / CONFUSION_ARTIFACT, confusion_matrix(labels, predicted))
    write_predictions(folder / PREDICTIONS_ARTIFACT, labels, predicted)


def write_confusion_matrix(path: Path, counts: np.ndarray) -> None:
    """A CSV with a header row of predicted classes and one row per true class, each led by its class."""
    header = "true\\predicted," + ",".join(str(k) for k in range(len(counts)))
    rows = [f"{k}," + ",".join(str(v) for v in row) for k, row in enumerate(counts)]
    path.write_text("\n".join([header, *rows]) + "\n")


def parse_confusion_matrix(text: str) -> np.ndarray:
    """The counts ``write_confusion_matrix`` stored: rows are true classes, columns predicted ones."""
    return np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)[:, 1:]


def write_predictions(path: Path, labels: np.ndarray, predicted: np.ndarray) -> None:
    """A CSV with one row per test image, in the test set's order: its true class and the predicted one.
    The labels travel with the predictions so that a reader of the store alone can tell right from wrong,
    and check that two runs were scored on the same images."""
    rows = (f"{label},{guess}" for label, guess in zip(labels.tolist(), predicted.tolist(), strict=True))
    path.write_text("\n".join(["label,predicted", *rows]) + "\n")


def parse_predictions(text: str) -> np.ndarray:
    """The rows ``write_predictions`` stored, as an (images, 2) array: column 0 the label, 1 the prediction."""
    return np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
