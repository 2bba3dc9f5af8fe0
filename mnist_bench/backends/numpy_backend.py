"""The tutorial's linear model written from scratch in NumPy.

    z = x @ W + b                     logits, one row per image
    sigmoid: p = 1 / (1 + e^-z)       loss = sum_k BCE(y_k, p_k)    (one-vs-rest, the tutorial's)
    softmax: p = e^z / sum_k e^z_k    loss = -log p_label           (categorical cross-entropy)
    predicted class: argmax_k z_k, or argmax_k p_k with predict_from=probabilities (the tutorial's)

Both losses, averaged over a batch of B rows, have the same gradient with respect to z:
(p - y) / B. So one update serves both:  W -= lr * x.T @ (p - y) / B,  b -= lr * sum(p - y) / B.

Speed comes from the matrix products, so the loop feeds OpenBLAS the shapes it runs fastest: the
weight gradient as (dz.T @ x).T, and a full batch in blocks of BLOCK_ROWS rows whose forward and
backward products read the block from cache (see README, "Benchmarks and CI gates").
"""

from __future__ import annotations

import functools
import time
import weakref
from contextlib import AbstractContextManager

import numpy as np
from threadpoolctl import ThreadpoolController

from mnist_bench import machine, timing
from mnist_bench.backends.base import (
    EpochCallback,
    EpochMetrics,
    FitResult,
    TrainData,
    WeightScores,
    batch_plan,
    classes_first,
    epoch_order,
    initial_parameters,
    learning_rates,
    predicted_class,
    row_max,
    tied_rows,
    weight_grad_scale,
)
from mnist_bench.config import TrainingSpec

# Rows per block of a large batch: 1024 x 784 float32 (3 MB) stays in cache between the block's forward
# and backward products, which makes full-batch epochs faster than one 60000-row product pair (docs/performance.md).
BLOCK_ROWS = 1024

# The arrays this process last ran warm-up epochs on (held weakly), and the (batch size, threads) it ran them with.
_warmed: tuple[weakref.ref[TrainData], set[tuple[int, int | None]]] | None = None


@functools.cache
def _blas_controller() -> ThreadpoolController:
    """The process's BLAS libraries as threadpoolctl finds them: finding them reads every loaded library."""
    return ThreadpoolController()


def _blas_threads(cfg: TrainingSpec) -> AbstractContextManager:
    """OpenBLAS's threads set to the run's for the duration, then put back."""
    return _blas_controller().limit(limits=cfg.backend.threads, user_api="blas")


def warm_up_epochs(data: TrainData, cfg: TrainingSpec, batch_size: int) -> int:
    """How many untimed epochs this fit runs first: ``backend.warmup_epochs``, or none where this process has
    already run them on the same arrays, batch size and thread count. What they warm, OpenBLAS's threads and
    the arrays' pages, outlives a job, so a sweep's later jobs in one process (the basic launcher, a reused
    joblib worker) start warm: their first timed epoch was no slower without a warm-up of their own than with
    one, and the warm-up was a quarter of each job's cost outside training (docs/performance.md)."""
    global _warmed
    if _warmed is None or _warmed[0]() is not data:
        _warmed = (weakref.ref(data), set())
    done = _warmed[1]
    key = (batch_size, cfg.backend.threads)
    if key in done:
        return 0
    done.add(key)
    return cfg.backend.warmup_epochs


def probabilities_and_loss(z: np.ndarray, y: np.ndarray, activation: str) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and the per-row loss, computed stably from the logits z.

    The sigmoid is the tutorial's 1 / (1 + e^-z): whether it rounds to exactly 1.0 (z above about 36.7)
    turns on 1 + e^-z, which a last-bit difference in e^-z practically never changes, so TensorFlow's
    probabilities (_tf_common.probabilities) saturate, and tie, on the same entries. Probabilities below
    the smallest normal float are 0, as TensorFlow on a CPU flushes them, so rows of tiny outputs tie alike.
    """
    if activation == "sigmoid":
        with np.errstate(over="ignore"):  # e^-z = inf for z < -709.8 gives p = 0, as it should
            p = 1.0 / (1.0 + np.exp(-z))
        loss = (np.logaddexp(0, z) - y * z).sum(axis=1)  # BCE from logits: softplus(z) - y z
    else:
        shifted = z - row_max(z)
        log_norm = np.log(np.exp(shifted).sum(axis=1, keepdims=True))  # log-sum-exp
        log_p = shifted - log_norm
        # one nonzero term a row (y is one-hot), so the sum is exact in any order: taken the faster way
        p, loss = np.exp(log_p), -classes_first(log_p * y).sum(axis=0)
    p[p < np.finfo(p.dtype).tiny] = 0.0
    return p, loss


def summed_gradients(
    x: np.ndarray, y_onehot: np.ndarray, weights: np.ndarray, bias: np.ndarray, activation: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Logits, probabilities, per-row loss, and the gradients of the rows' summed loss w.r.t. W and b.

    x.T @ dz is computed as (dz.T @ x).T: the same numbers, 20-30% faster in OpenBLAS for x of N x 784.
    """
    z = x @ weights + bias
    p, loss = probabilities_and_loss(z, y_onehot, activation)
    dz = p - y_onehot  # d(summed loss)/dz for both activations
    return z, p, loss, (dz.T @ x).T, dz.sum(axis=0)


class NumpyBackend:
    """Full-batch gradient descent or minibatch SGD, with optional momentum."""

    def resolve_device(self, cfg: TrainingSpec) -> tuple[str, str]:
        return "cpu", machine.cpu_model()

    def fit(self, data: TrainData, cfg: TrainingSpec, on_epoch: EpochCallback) -> FitResult:
        weights, bias = initial_parameters(cfg, data.n_features)
        batch_size, steps = batch_plan(cfg, len(data.x_train))
        lrs = learning_rates(cfg, steps).astype(cfg.dtype)
        y_train = data.one_hot(data.y_train)
        y_test = data.one_hot(data.y_test)
        # BLAS threads are set around each epoch, not the whole fit: OpenBLAS's count is the process's, and
        # a sweep in rounds trains other cells, with threads of their own, between this one's epochs.
        with np.errstate(over="ignore", invalid="ignore"):
            with _blas_threads(cfg):
                warm_ups, start = warm_up_epochs(data, cfg, batch_size), time.perf_counter()
                for _ in range(warm_ups):  # on copies: warms BLAS, changes nothing
                    self._train_epoch(data, y_train, weights.copy(), bias.copy(), lrs[0], None, batch_size, cfg)
                warmup_seconds = time.perf_counter() - start if warm_ups else 0.0

            velocity = (np.zeros_like(weights), np.zeros_like(bias)) if cfg.momentum else None
            epochs_run = 0
            for epoch in range(cfg.epochs):
                # Full batch: the epoch's numbers describe the weights it starts with (see EpochMetrics).
                described = (weights.copy(), bias.copy()) if steps == 1 else (weights, bias)
                with _blas_threads(cfg):
                    timer = timing.EpochTimer()
                    order = epoch_order(cfg, len(data.x_train), epoch)
                    train_loss, train_accuracy, tied = self._train_epoch(
                        data, y_train, weights, bias, lrs[epoch], order, batch_size, cfg, velocity
                    )
                    took = timer.stop()
                    test_loss, test_accuracy = evaluate(data.x_test, data.y_test, y_test, *described, cfg)
                epochs_run = epoch + 1
                metrics = EpochMetrics(epochs_run, train_loss, train_accuracy, tied, test_loss, test_accuracy, *took)
                if on_epoch(metrics):
                    weights, bias = described  # a stop keeps the weights its numbers describe
                    break
        return FitResult(weights, bias, epochs_run, warmup_seconds)

    @staticmethod
    def _train_epoch(
        data: TrainData,
        y_onehot: np.ndarray,
        weights: np.ndarray,
        bias: np.ndarray,
        lrs: np.ndarray,
        order: np.ndarray | None,
        batch_size: int,
        cfg: TrainingSpec,
        velocity: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[float, float, float]:
        """One pass over the training set, updating weights and bias in place: its loss, accuracy and tied fraction."""
        x, n = data.x_train, len(data.x_train)
        losses, predictions, tied = np.empty(n, x.dtype), np.empty(n, np.intp), np.empty(n, bool)  # reduced once
        for step, start in enumerate(range(0, n, batch_size)):
            stop = min(start + batch_size, n)
            if order is None:
                xb, yb = x[start:stop], y_onehot[start:stop]
            else:  # take is 15% faster than x[rows] here
                xb, yb = x.take(order[start:stop], axis=0), y_onehot.take(order[start:stop], axis=0)
            for block in range(0, len(xb), BLOCK_ROWS):  # one block unless the batch is larger
                part = slice(block, block + BLOCK_ROWS)
                z, p, loss, block_w, block_b = summed_gradients(xb[part], yb[part], weights, bias, cfg.activation)
                if block == 0:
                    grad_w, grad_b = block_w, block_b
                else:
                    grad_w += block_w
                    grad_b += block_b
                done = slice(start + block, start + block + len(z))
                losses[done] = loss
                predictions[done] = predicted_class(z, p, cfg.predict_from)
                tied[done] = tied_rows(p)
            step_w = lrs[step] * weight_grad_scale(cfg, len(xb)) / len(xb)  # mean gradient, or summed
            step_b = lrs[step] / len(xb)
            if velocity is None:
                weights -= step_w * grad_w
                bias -= step_b * grad_b
            else:  # heavy-ball momentum, the same form as keras.optimizers.SGD
                vel_w, vel_b = velocity
                vel_w *= cfg.momentum
                vel_w -= step_w * grad_w
                vel_b *= cfg.momentum
                vel_b -= step_b * grad_b
                weights += vel_w
                bias += vel_b
        labels = data.y_train if order is None else data.y_train[order]
        return float(losses.mean(dtype=np.float64)), float((predictions == labels).mean()), float(tied.mean())


def losses_and_predictions(
    x: np.ndarray, y_onehot: np.ndarray, weights: np.ndarray, bias: np.ndarray, cfg: TrainingSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's loss and predicted class under the given parameters."""
    z = x @ weights + bias
    p, loss = probabilities_and_loss(z, y_onehot, cfg.activation)
    return loss, predicted_class(z, p, cfg.predict_from)


def evaluate(
    x: np.ndarray, labels: np.ndarray, y_onehot: np.ndarray, weights: np.ndarray, bias: np.ndarray, cfg: TrainingSpec
) -> tuple[float, float]:
    """Mean loss and accuracy of the given parameters on one split, in one pass."""
    loss, predicted = losses_and_predictions(x, y_onehot, weights, bias, cfg)
    return float(loss.mean()), float((predicted == labels).mean())


def score(data: TrainData, weights: np.ndarray, bias: np.ndarray, cfg: TrainingSpec) -> WeightScores:
    """The loss and accuracy of the given parameters on both splits: a run's final metrics, of the weights
    it keeps, scored by this one rule whichever backend trained them."""
    train = evaluate(data.x_train, data.y_train, data.one_hot(data.y_train), weights, bias, cfg)
    test = evaluate(data.x_test, data.y_test, data.one_hot(data.y_test), weights, bias, cfg)
    return WeightScores(*train, *test)


def create() -> NumpyBackend:
    return NumpyBackend()
