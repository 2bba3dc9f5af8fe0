"""The linear model in TensorFlow 2 primitives: tf.Variable, GradientTape, and a hand-written update.

    z = x @ W + b,  loss = mean over the batch of the per-row loss (see _tf_common.row_losses)
    plain SGD:  W -= lr * dW,  b -= lr * db
    momentum:   v = momentum * v - lr * g,  w += v       (as numpy_backend and keras.optimizers.SGD)

A whole epoch is one tf.function call (optionally XLA-compiled): the loop over batches runs inside
TensorFlow on data that is already on the device, so the timing measures TF, not Python.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from mnist_bench import timing
from mnist_bench.backends.base import (
    NUM_CLASSES,
    BackendUnavailable,
    EpochCallback,
    EpochMetrics,
    FitResult,
    TrainData,
    batch_plan,
    epoch_order,
    initial_parameters,
    learning_rates,
    weight_grad_scale,
)
from mnist_bench.config import TrainingSpec

try:
    from mnist_bench.backends import _tf_common as common
except ModuleNotFoundError as err:
    raise BackendUnavailable(
        "backend=tf needs TensorFlow, which is not installed: pip install 'mnist-bench[tf]' (or '.[tf]' in a checkout)"
    ) from err

import tensorflow as tf  # after _tf_common, which sets TF's log level first


class Variables(NamedTuple):
    """What an epoch updates: the parameters and, with momentum, their velocities."""

    weights: tf.Variable
    bias: tf.Variable
    velocity: tuple[tf.Variable, tf.Variable] | None

    @classmethod
    def create(cls, weights: np.ndarray, bias: np.ndarray, with_velocity: bool) -> Variables:
        """New variables on the current device holding copies of the given values (velocities start at 0)."""
        velocity = (tf.Variable(np.zeros_like(weights)), tf.Variable(np.zeros_like(bias))) if with_velocity else None
        return cls(tf.Variable(weights), tf.Variable(bias), velocity)


def epoch_function(
    cfg: TrainingSpec, n_samples: int, batch_size: int
) -> Callable[..., tuple[tf.Tensor, tf.Tensor, tf.Tensor]]:
    """One training epoch as a tf.function: ``(x, y, order, lrs, variables) -> (loss sum, correct, tied rows)``.

    ``order`` is the epoch's sample order (None: stored order) and ``lrs`` the rate of each step. The
    returned sums are over every row, each taken in its batch's forward pass before the update.
    Full batches run in a TF loop with one fixed batch shape (what XLA needs); the last, partial batch
    (if any) runs once after it with its own shape.
    """
    full_batches, rest = divmod(n_samples, batch_size)

    def sgd_step(
        variables: Variables, x: tf.Tensor, y: tf.Tensor, lr: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        params = (variables.weights, variables.bias)
        with tf.GradientTape() as tape:
            logits = x @ variables.weights + variables.bias
            losses = common.row_losses(logits, y, cfg.activation)
            loss = tf.reduce_mean(losses)
        grad_w, grad_b = tape.gradient(loss, params)
        grads = (grad_w * weight_grad_scale(cfg, x.shape[0]), grad_b)
        if variables.velocity is None:
            for param, grad in zip(params, grads, strict=True):
                param.assign_sub(lr * grad)
        else:
            for param, velocity, grad in zip(params, variables.velocity, grads, strict=True):
                velocity.assign(cfg.momentum * velocity - lr * grad)
                param.assign_add(velocity)
        hits, ties = common.hits_and_ties(logits, y, cfg.activation, cfg.predict_from)
        return tf.reduce_sum(tf.cast(losses, tf.float64)), common.count(hits), common.count(ties)

    @tf.function(jit_compile=cfg.backend.xla)
    def train_epoch(
        x: tf.Tensor, y: tf.Tensor, order: tf.Tensor | None, lrs: tf.Tensor, variables: Variables
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        def batch(data: tf.Tensor, start: tf.Tensor | int, rows: int) -> tf.Tensor:
            if order is None:
                return tf.slice(data, [start, 0], [rows, data.shape[1]])
            return tf.gather(data, tf.slice(order, [start], [rows]))

        loss_sum, correct, tied = tf.constant(0.0, tf.float64), tf.constant(0, tf.int32), tf.constant(0, tf.int32)
        for step in tf.range(full_batches):
            start = step * batch_size
            step_loss, step_correct, step_tied = sgd_step(
                variables, batch(x, start, batch_size), batch(y, start, batch_size), lrs[step]
            )
            loss_sum += step_loss
            correct += step_correct
            tied += step_tied
        if rest:
            start = full_batches * batch_size
            last_lr = lrs[full_batches]
            step_loss, step_correct, step_tied = sgd_step(
                variables, batch(x, start, rest), batch(y, start, rest), last_lr
            )
            loss_sum += step_loss
            correct += step_correct
            tied += step_tied
        return loss_sum, correct, tied

    return train_epoch


def _order(cfg: TrainingSpec, n_samples: int, epoch: int) -> tf.Tensor | None:
    """The epoch's sample order as a tensor on the current device (None: stored order)."""
    order = epoch_order(cfg, n_samples, epoch)
    return None if order is None else tf.constant(order)


class TensorFlowBackend:
    """Full-batch gradient descent or minibatch SGD, with optional momentum, one tf.function per epoch."""

    def resolve_device(self, cfg: TrainingSpec) -> tuple[str, str]:
        return common.resolve_device(cfg)

    def fit(self, data: TrainData, cfg: TrainingSpec, on_epoch: EpochCallback) -> FitResult:
        device, _ = common.resolve_device(cfg)
        n_samples = len(data.x_train)
        batch_size, steps = batch_plan(cfg, n_samples)
        lrs = learning_rates(cfg, steps).astype(cfg.dtype)
        weights, bias = initial_parameters(cfg, data.n_features)
        with common.placement(device):
            x_train, y_train = common.one_hot_tensors(data.x_train, data.y_train, NUM_CLASSES)
            x_test, y_test = common.one_hot_tensors(data.x_test, data.y_test, NUM_CLASSES)
            train_epoch = epoch_function(cfg, n_samples, batch_size)
            start = time.perf_counter()
            for _ in range(cfg.backend.warmup_epochs):  # traces and compiles; on copies, so it changes nothing
                copies = Variables.create(weights, bias, cfg.momentum > 0)
                loss_sum, _, _ = train_epoch(x_train, y_train, _order(cfg, n_samples, 0), tf.constant(lrs[0]), copies)
                loss_sum.numpy()  # waits for it
            warmup_seconds = time.perf_counter() - start

            variables = Variables.create(weights, bias, cfg.momentum > 0)
            epochs_run = 0
            for epoch in range(cfg.epochs):
                order, epoch_lrs = _order(cfg, n_samples, epoch), tf.constant(lrs[epoch])
                # Full batch: the epoch's numbers describe the weights it starts with (see EpochMetrics).
                described = (variables.weights, variables.bias)
                if steps == 1:
                    described = tuple(tf.identity(variable) for variable in described)  # their values now
                timer = timing.EpochTimer()
                loss_sum, correct, tied = train_epoch(x_train, y_train, order, epoch_lrs, variables)
                train_loss = float(loss_sum.numpy()) / n_samples  # waits for the epoch
                took = timer.stop()
                train_accuracy, tied_fraction = int(correct) / n_samples, int(tied) / n_samples
                test_loss, test_accuracy = common.evaluate(x_test, y_test, *described, cfg)
                epochs_run = epoch + 1
                metrics = EpochMetrics(
                    epochs_run, train_loss, train_accuracy, tied_fraction, test_loss, test_accuracy, *took
                )
                if on_epoch(metrics):
                    break  # keeping the weights its numbers describe
            else:
                described = (variables.weights, variables.bias)  # no stop: the weights after the last update
        return FitResult(described[0].numpy(), described[1].numpy(), epochs_run, warmup_seconds)


def create() -> TensorFlowBackend:
    return TensorFlowBackend()
