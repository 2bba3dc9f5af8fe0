"""The linear model in JAX: numpy_backend's maths, differentiated by jax.grad, one jitted function per epoch.

    z = x @ W + b,  loss = mean over the batch of the per-row loss (row_losses)
    plain SGD:  W -= lr * dW,  b -= lr * db
    momentum:   v = momentum * v - lr * g,  w += v       (as numpy_backend and keras.optimizers.SGD)

An epoch is a ``lax.scan`` over its full batches (and one more step for a last, partial batch) on data
already on the device, compiled by XLA in the warm-up epoch: the timing measures XLA's code, not Python.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from mnist_bench import timing
from mnist_bench.backends.base import (
    BackendUnavailable,
    EpochCallback,
    EpochMetrics,
    FitResult,
    Params,
    State,
    TrainData,
    batch_plan,
    epoch_order,
    initial_parameters,
    learning_rates,
    weight_grad_scale,
)
from mnist_bench.config import TrainingSpec

try:
    from mnist_bench.backends import _jax_common as common
except ModuleNotFoundError as err:
    raise BackendUnavailable(
        "backend=jax needs JAX, which is not installed: pip install 'mnist-bench[jax]' (or '.[jax]' in a checkout)"
    ) from err

import jax  # after _jax_common, which enables float64
import jax.numpy as jnp
from jax import lax

# Per-epoch sums: the loss (float64, as every backend sums it), the rows predicted right, the rows tied.
Totals = tuple[jax.Array, jax.Array, jax.Array]


def row_losses(z: jax.Array, y: jax.Array, activation: str) -> jax.Array:
    """The loss of each row from its logits: BCE summed over the classes (sigmoid) or cross-entropy (softmax)."""
    if activation == "sigmoid":
        return (jax.nn.softplus(z) - y * z).sum(axis=1)
    return -(jax.nn.log_softmax(z) * y).sum(axis=1)


def probabilities(z: jax.Array, activation: str) -> jax.Array:
    """The activated outputs by numpy_backend's formulas (1 / (1 + e^-z), not jax.nn.sigmoid), so that they
    saturate and tie on the same entries; outputs below the smallest normal float are 0, as there."""
    p = 1 / (1 + jnp.exp(-z)) if activation == "sigmoid" else jnp.exp(jax.nn.log_softmax(z))
    return jnp.where(p < jnp.finfo(p.dtype).tiny, jnp.zeros_like(p), p)


def row_counts(z: jax.Array, y: jax.Array, cfg: TrainingSpec) -> tuple[jax.Array, jax.Array]:
    """How many rows are predicted right (base.predicted_class's rule) and how many have a tied top output."""
    p = probabilities(z, cfg.activation)
    predicted = (p if cfg.predict_from == "probabilities" else z).argmax(axis=1)  # the lowest class wins a tie
    tied = (p == p.max(axis=1, keepdims=True)).sum(axis=1) > 1
    return (predicted == y.argmax(axis=1)).sum(), tied.sum()


def epoch_function(cfg: TrainingSpec, n_samples: int, batch_size: int) -> Callable[..., tuple[State, Totals]]:
    """One training epoch, jitted: ``(state, x, y, order, lrs) -> (state after it, its Totals)``.

    ``order`` is the epoch's sample order (None: stored order) and ``lrs`` the rate of each step. Each
    row's numbers come from its batch's forward pass, before that batch's update.
    """
    full_batches, rest = divmod(n_samples, batch_size)

    def mean_loss(params: Params, x: jax.Array, y: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        z = x @ params.weights + params.bias
        losses = row_losses(z, y, cfg.activation)
        return losses.mean(), (z, losses)

    def step(state: State, x: jax.Array, y: jax.Array, lr: jax.Array) -> tuple[State, Totals]:
        (_, (z, losses)), grads = jax.value_and_grad(mean_loss, has_aux=True)(state.params, x, y)
        grads = grads._replace(weights=grads.weights * weight_grad_scale(cfg, x.shape[0]))
        if state.velocity is None:
            velocity = None
            params = jax.tree.map(lambda param, grad: param - lr * grad, state.params, grads)
        else:
            velocity = jax.tree.map(lambda v, grad: cfg.momentum * v - lr * grad, state.velocity, grads)
            params = jax.tree.map(jnp.add, state.params, velocity)
        correct, tied = row_counts(z, y, cfg)
        return State(params, velocity), (losses.sum(dtype=jnp.float64), correct, tied)

    def batch(data: jax.Array, order: jax.Array | None, start: jax.Array | int, rows: int) -> jax.Array:
        if order is None:
            return lax.dynamic_slice_in_dim(data, start, rows)
        return data[lax.dynamic_slice_in_dim(order, start, rows)]

    def add(totals: Totals, more: Totals) -> Totals:
        return tuple(a + b for a, b in zip(totals, more, strict=True))

    @jax.jit
    def train_epoch(
        state: State, x: jax.Array, y: jax.Array, order: jax.Array | None, lrs: jax.Array
    ) -> tuple[State, Totals]:
        def full_batch(carry: tuple[State, Totals], index_and_lr: tuple[jax.Array, jax.Array]):
            (state, totals), (index, lr) = carry, index_and_lr
            start = index * batch_size
            state, sums = step(state, batch(x, order, start, batch_size), batch(y, order, start, batch_size), lr)
            return (state, add(totals, sums)), None

        zero = jnp.zeros((), jnp.int64)
        totals = (jnp.zeros((), jnp.float64), zero, zero)
        steps = (jnp.arange(full_batches), lrs[:full_batches])
        (state, totals), _ = lax.scan(full_batch, (state, totals), steps)
        if rest:
            start = full_batches * batch_size
            state, sums = step(state, batch(x, order, start, rest), batch(y, order, start, rest), lrs[full_batches])
            totals = add(totals, sums)
        return state, totals

    return train_epoch


def evaluation_function(cfg: TrainingSpec) -> Callable[[Params, jax.Array, jax.Array], tuple[float, float]]:
    """Mean loss and accuracy of the given parameters on one split, in one jitted pass."""

    @jax.jit
    def sums(params: Params, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        z = x @ params.weights + params.bias
        return row_losses(z, y, cfg.activation).sum(dtype=jnp.float64), row_counts(z, y, cfg)[0]

    def evaluate(params: Params, x: jax.Array, y: jax.Array) -> tuple[float, float]:
        loss_sum, correct = sums(params, x, y)
        return float(loss_sum) / len(x), int(correct) / len(x)

    return evaluate


class JaxBackend:
    """Full-batch gradient descent or minibatch SGD, with optional momentum, one jitted call per epoch."""

    def resolve_device(self, cfg: TrainingSpec) -> tuple[str, str]:
        _, kind, name = common.resolve_device(cfg)
        return kind, name

    def fit(self, data: TrainData, cfg: TrainingSpec, on_epoch: EpochCallback) -> FitResult:
        device, _, _ = common.resolve_device(cfg)
        n_samples = len(data.x_train)
        batch_size, steps = batch_plan(cfg, n_samples)
        lrs = jax.device_put(learning_rates(cfg, steps).astype(cfg.dtype), device)
        x_train, x_test = (jax.device_put(x, device) for x in (data.x_train, data.x_test))
        y_train, y_test = (jax.device_put(data.one_hot(labels), device) for labels in (data.y_train, data.y_test))

        def order(epoch: int) -> jax.Array | None:
            indices = epoch_order(cfg, n_samples, epoch)
            return None if indices is None else jax.device_put(indices, device)

        params = Params(*(jax.device_put(a, device) for a in initial_parameters(cfg, data.n_features)))
        zeros = jax.tree.map(jnp.zeros_like, params)
        state = State(params, zeros if cfg.momentum > 0 else None)
        train_epoch, evaluate = epoch_function(cfg, n_samples, batch_size), evaluation_function(cfg)

        start = time.perf_counter()
        for _ in range(cfg.backend.warmup_epochs):  # compiles; JAX arrays are immutable, so it changes nothing
            jax.block_until_ready(train_epoch(state, x_train, y_train, order(0), lrs[0]))
        warmup_seconds = time.perf_counter() - start

        epochs_run = 0
        for epoch in range(cfg.epochs):
            epoch_rows, epoch_lrs = order(epoch), lrs[epoch]
            starting = state.params  # immutable: full batch, the weights the epoch's numbers describe
            timer = timing.EpochTimer()
            state, (loss_sum, correct, tied) = train_epoch(state, x_train, y_train, epoch_rows, epoch_lrs)
            train_loss = float(loss_sum) / n_samples  # waits for the epoch
            took = timer.stop()
            train_accuracy, tied_fraction = int(correct) / n_samples, int(tied) / n_samples
            described = starting if steps == 1 else state.params  # see EpochMetrics
            test_loss, test_accuracy = evaluate(described, x_test, y_test)
            epochs_run = epoch + 1
            metrics = EpochMetrics(
                epochs_run, train_loss, train_accuracy, tied_fraction, test_loss, test_accuracy, *took
            )
            if on_epoch(metrics):
                break  # keeping the weights its numbers describe
        else:
            described = state.params  # no stop: the weights after the last update
        weights, bias = (np.array(a) for a in described)
        return FitResult(weights, bias, epochs_run, warmup_seconds)


def create() -> JaxBackend:
    return JaxBackend()
