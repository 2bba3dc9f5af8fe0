"""What every backend shares: the interface, the per-epoch record, and the choices that must
be identical across backends for a fair comparison (initial weights, batch order, learning
rates), computed once here in NumPy and handed to each backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

from mnist_bench.config import ConfigError, TrainingSpec
from mnist_bench.data import cast
from mnist_bench.errors import UserError
from mnist_bench.schema import SYSTEM_METRIC_PREFIX

NUM_CLASSES = 10
MAX_UPDATES = 50_000_000  # learning_rates holds one rate per update: 400 MB of float64 at most


class BackendUnavailable(UserError, ImportError):
    """A backend whose libraries are not installed; the message says which extra to install."""


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch's numbers, the same way on every backend.

    Full-batch GD (one update an epoch): every number describes the weights the epoch starts with. The
    train loss and accuracy come from the forward pass that computes the epoch's update, the test loss and
    accuracy from those same weights; ``on_epoch`` sees them before the update is kept, and a stop keeps
    those weights, as the tutorial's loop checked its accuracy, then broke, before updating.

    Minibatch SGD (Keras' convention): train loss and accuracy are running figures, averaged over the
    epoch's batches, each taken in the forward pass just before that batch's update; the test numbers
    describe the weights after the epoch's last update, which a stop keeps.

    ``epoch_seconds`` is training compute only, timed by ``timing.EpochTimer`` as every backend times it,
    with the process's CPU seconds over the same span and the share of the CPU other processes used
    meanwhile (``*timer.stop()`` fills the three). ``tied_prediction_fraction`` is the share of training rows
    (in the same forward passes as the train numbers) whose largest activated output is shared by two or
    more classes: see ``tied_rows``.
    """

    epoch: int
    train_loss: float
    train_accuracy: float
    tied_prediction_fraction: float
    test_loss: float
    test_accuracy: float
    epoch_seconds: float
    epoch_cpu_seconds: float | None = None
    epoch_other_cpu_share: float | None = None

    def cpu_metrics(self) -> dict[str, float]:
        """The epoch's CPU seconds, beside its seconds, and other processes' CPU share, with how the run was
        measured (MLflow's system prefix): those that were measured, as the run logs them."""
        measured = {
            "epoch_cpu_seconds": self.epoch_cpu_seconds,
            SYSTEM_METRIC_PREFIX + "epoch_other_cpu_share": self.epoch_other_cpu_share,
        }
        return {key: value for key, value in measured.items() if value is not None}


@dataclass(frozen=True)
class WeightScores:
    """One set of weights scored on both splits: a run's final metrics, of the weights it keeps."""

    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float


# Called after every epoch; returns True to stop training (target reached, divergence).
EpochCallback = Callable[[EpochMetrics], bool]


@dataclass
class FitResult:
    """What a backend hands back: the learned parameters and where it ran."""

    weights: np.ndarray  # (784, 10)
    bias: np.ndarray  # (10,)
    epochs_run: int
    warmup_seconds: float


class Params(NamedTuple):
    """The model's parameters as one framework's arrays: a pytree to jax.grad and torch.func alike."""

    weights: Any  # (n_features, 10)
    bias: Any  # (10,)


class State(NamedTuple):
    """What a functional backend's epoch updates: the parameters and, with momentum, their velocities."""

    params: Params
    velocity: Params | None


@dataclass(frozen=True)
class TrainData:
    """Model-ready arrays: inputs scaled and cast once, labels as integers and one-hot."""

    x_train: np.ndarray
    y_train: np.ndarray  # int64 class ids
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    def one_hot(self, labels: np.ndarray) -> np.ndarray:
        return np.eye(NUM_CLASSES, dtype=self.x_train.dtype)[labels]


class Backend(Protocol):
    """A training implementation: ``fit`` runs ``cfg.epochs`` epochs and reports each one."""

    def resolve_device(self, cfg: TrainingSpec) -> tuple[str, str]:
        """The device ("cpu" or "gpu") and its name; raises ConfigError when it is not available."""
        ...

    def fit(self, data: TrainData, cfg: TrainingSpec, on_epoch: EpochCallback) -> FitResult:
        """Train for ``cfg.epochs`` epochs (fewer when ``on_epoch`` returns True)."""
        ...


def predicted_class(logits: np.ndarray, probabilities: np.ndarray, predict_from: str) -> np.ndarray:
    """Each row's predicted class: where its largest logit is, or (``predict_from=probabilities``, the
    tutorial's rule) its largest activated output, the lowest class winning a tie (as np.argmax does).

    The two differ only where outputs round to the same value: a float64 sigmoid is exactly 1.0 for
    logits above 36.7 (and 0 below -709.8), so on raw pixels many rows tie that their logits tell apart.
    backend=tf computes the same rule in TensorFlow (``_tf_common.predicted_class``), Keras in keras.ops
    (``_keras_model.hits_and_ties``), backend=jax in jax.numpy (``jax_backend.row_counts``).
    """
    return (probabilities if predict_from == "probabilities" else logits).argmax(axis=1)


def tied_rows(probabilities: np.ndarray) -> np.ndarray:
    """Whether each row's largest activated output appears more than once: the rows whose class the
    probabilities rule picks by a tie-break."""
    columns = classes_first(probabilities)
    return (columns == columns.max(axis=0)).sum(axis=0) > 1


def row_max(values: np.ndarray) -> np.ndarray:
    """Each row's largest value, as a column (a max is the same in any order)."""
    return classes_first(values).max(axis=0)[:, np.newaxis]


def classes_first(values: np.ndarray) -> np.ndarray:
    """A (rows, classes) array as a contiguous (classes, rows) copy: NumPy reduces along a 10-long axis 5-10x
    slower than down 10 long columns, which on a minibatch of 256 rows costs more than the copy."""
    return np.ascontiguousarray(values.T)


def initial_parameters(cfg: TrainingSpec, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """W (n_features x 10) and b (10,) drawn from the run's seed, the same for every backend."""
    rng = np.random.default_rng([cfg.seed, 0])
    shape = (n_features + 1, NUM_CLASSES)
    if cfg.init == "zeros":
        wb = np.zeros(shape)
    elif cfg.init == "uniform":
        wb = rng.uniform(-cfg.init_scale, cfg.init_scale, size=shape)
    else:
        wb = rng.normal(0.0, cfg.init_scale, size=shape)
    wb = wb.astype(cfg.dtype)
    return wb[:-1].copy(), wb[-1].copy()


def batch_plan(cfg: TrainingSpec, n_samples: int) -> tuple[int, int]:
    """(batch size, batches per epoch); full-batch GD is one batch of every sample."""
    size = n_samples if cfg.batch_size is None else min(cfg.batch_size, n_samples)
    return size, -(-n_samples // size)


def epoch_order(cfg: TrainingSpec, n_samples: int, epoch: int) -> np.ndarray | None:
    """The sample order of an epoch (0-based), or None to keep the stored order.

    Seeded by (seed, epoch) so every backend sees the same batches.
    """
    if cfg.batch_size is None or not cfg.shuffle:
        return None
    return np.random.default_rng([cfg.seed, 1, epoch]).permutation(n_samples)


def check_updates(epochs: int, steps_per_epoch: int) -> None:
    """The update cap (MAX_UPDATES), checked where a config is validated and where the rates are made."""
    if epochs * steps_per_epoch > MAX_UPDATES:
        raise ConfigError(
            f"epochs={epochs} with {steps_per_epoch:,} batches an epoch is {epochs * steps_per_epoch:,} updates,"
            f" more than {MAX_UPDATES:,}: lower epochs or raise batch_size"
        )


def learning_rates(cfg: TrainingSpec, steps_per_epoch: int) -> np.ndarray:
    """The learning rate of every update, shape (epochs, steps_per_epoch)."""
    check_updates(cfg.epochs, steps_per_epoch)
    total = cfg.epochs * steps_per_epoch
    progress = np.arange(total) / total
    if cfg.lr_schedule == "constant":
        factor = np.ones(total)
    elif cfg.lr_schedule == "linear":
        factor = 1.0 - progress
    else:
        factor = 0.5 * (1.0 + np.cos(np.pi * progress))
    return (cfg.lr * factor).reshape(cfg.epochs, steps_per_epoch)


def weight_grad_scale(cfg: TrainingSpec, batch_rows: int) -> float:
    """Factor on the mean-reduced weight gradient: 1, or the batch size for a summed gradient."""
    return float(batch_rows) if cfg.grad_reduction == "sum" else 1.0


def prepare(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, cfg: TrainingSpec
) -> TrainData:
    """Cast the uint8 images once to the run's dtype (scaled to [0, 1] when ``normalize``)."""

    def inputs(images: np.ndarray) -> np.ndarray:
        x = cast(images, cfg.dtype)
        if cfg.normalize:
            x *= np.asarray(1 / 255, dtype=cfg.dtype)
        return x

    return TrainData(inputs(x_train), y_train.astype(np.int64), inputs(x_test), y_test.astype(np.int64))
