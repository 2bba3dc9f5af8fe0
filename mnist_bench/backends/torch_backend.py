"""The linear model in PyTorch: numpy_backend's maths, its gradient included, one step per batch.

    z = x @ W + b,  loss = mean over the batch of the per-row loss (row_losses)
    plain SGD:  W -= lr * dW,  b -= lr * db
    momentum:   v = momentum * v - lr * g,  w += v       (as numpy_backend and keras.optimizers.SGD)

Each step is a pure function of (state, running totals, batch, rate), as jax_backend's: the gradient is
(p - y) / B taken by hand, as numpy_backend takes it (torch.func's autograd made the epoch 2.2x a hand-written
loop's at batch 128), and the update makes new tensors, so a warm-up epoch on the initial state changes
nothing. ``backend.compile=true`` runs that step through ``torch.compile`` (one compilation per batch shape,
made in the warm-up epoch); otherwise it runs eagerly, op by op, as most PyTorch loops do.
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
    from mnist_bench.backends import _torch_common as common
except ModuleNotFoundError as err:
    raise BackendUnavailable(
        "backend=torch needs PyTorch, which is not installed: pip install 'mnist-bench[torch]' (or '.[torch]' in a"
        " checkout)"
    ) from err

import torch

# Running sums over an epoch's batches: the loss (float64, as every backend sums it), rows right, rows tied.
Totals = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Step = Callable[[State, Totals, torch.Tensor, torch.Tensor, torch.Tensor], tuple[State, Totals]]


def row_losses(z: torch.Tensor, y: torch.Tensor, activation: str) -> torch.Tensor:
    """The loss of each row from its logits: BCE summed over the classes (sigmoid, with numpy_backend's
    logaddexp(0, z) for softplus: torch's softplus returns z itself above 20) or cross-entropy (softmax)."""
    if activation == "sigmoid":
        return (torch.logaddexp(torch.zeros_like(z), z) - y * z).sum(dim=1)
    return -(torch.log_softmax(z, dim=1) * y).sum(dim=1)


def probabilities(z: torch.Tensor, activation: str) -> torch.Tensor:
    """The activated outputs by numpy_backend's formulas (1 / (1 + e^-z), not torch.sigmoid), so that they
    saturate and tie on the same entries; outputs below the smallest normal float are 0, as there."""
    p = 1 / (1 + torch.exp(-z)) if activation == "sigmoid" else torch.exp(torch.log_softmax(z, dim=1))
    return torch.where(p < torch.finfo(p.dtype).tiny, torch.zeros_like(p), p)


def row_counts(
    z: torch.Tensor, p: torch.Tensor, y: torch.Tensor, cfg: TrainingSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """How many rows are predicted right (base.predicted_class's rule) and how many have a tied top output,
    from the logits and their ``probabilities``."""
    predicted = (p if cfg.predict_from == "probabilities" else z).argmax(dim=1)  # the lowest class wins a tie
    tied = (p == p.amax(dim=1, keepdim=True)).sum(dim=1) > 1
    return (predicted == y.argmax(dim=1)).sum(), tied.sum()


def step_function(cfg: TrainingSpec) -> Step:
    """One update on one batch: ``(state, totals, x, y, lr) -> (state after it, totals with its sums added)``,
    its numbers taken in the forward pass before the update; compiled when ``backend.compile``.

    The gradient is numpy_backend's: both losses' derivative by the logits is (p - y) / B, so the
    probabilities the scores need give it too, without autograd's bookkeeping at every small step."""

    def step(state: State, totals: Totals, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor) -> tuple[State, Totals]:
        z = x @ state.params.weights + state.params.bias
        losses, p = row_losses(z, y, cfg.activation), probabilities(z, cfg.activation)
        error = (p - y) / x.shape[0]  # d(mean loss)/dz
        grads = Params((x.T @ error) * weight_grad_scale(cfg, x.shape[0]), error.sum(dim=0))
        if state.velocity is None:
            velocity = None
            params = Params(*(param - lr * grad for param, grad in zip(state.params, grads, strict=True)))
        else:
            velocity = Params(*(cfg.momentum * v - lr * g for v, g in zip(state.velocity, grads, strict=True)))
            params = Params(*(param + v for param, v in zip(state.params, velocity, strict=True)))
        correct, tied = row_counts(z, p, y, cfg)
        loss_sum, correct_sum, tied_sum = totals
        return State(params, velocity), (
            loss_sum + losses.sum(dtype=torch.float64),
            correct_sum + correct,
            tied_sum + tied,
        )

    if not cfg.backend.compile:
        return step
    # Dynamo keys compiled code by the step's code, the same in every fit, and after a few fits' guards fail it
    # runs the step eagerly without a word: a sweep's later jobs in one process would time no compiled code.
    torch.compiler.reset()
    return torch.compile(step, dynamic=False)


def train_epoch(
    step: Step, state: State, x: torch.Tensor, y: torch.Tensor, order: torch.Tensor | None, lrs: torch.Tensor, size: int
) -> tuple[State, Totals]:
    """One pass over the training set in batches of ``size`` (in ``order``, or as stored), one rate a step."""
    zero = torch.zeros((), dtype=torch.int64, device=x.device)
    totals: Totals = (torch.zeros((), dtype=torch.float64, device=x.device), zero, zero)
    for start, lr in zip(range(0, len(x), size), lrs.unbind(), strict=True):
        if order is None:
            xb, yb = x[start : start + size], y[start : start + size]
        else:
            rows = order[start : start + size]
            xb, yb = x[rows], y[rows]
        state, totals = step(state, totals, xb, yb, lr)
    return state, totals


@torch.no_grad()
def evaluate(params: Params, x: torch.Tensor, y: torch.Tensor, cfg: TrainingSpec) -> tuple[float, float]:
    """Mean loss and accuracy of the given parameters on one split, in one pass."""
    z = x @ params.weights + params.bias
    loss_sum = row_losses(z, y, cfg.activation).sum(dtype=torch.float64)
    return float(loss_sum) / len(x), int(row_counts(z, probabilities(z, cfg.activation), y, cfg)[0]) / len(x)


class TorchBackend:
    """Full-batch gradient descent or minibatch SGD, with optional momentum, eager or through torch.compile."""

    def resolve_device(self, cfg: TrainingSpec) -> tuple[str, str]:
        _, kind, name = common.resolve_device(cfg)
        return kind, name

    def fit(self, data: TrainData, cfg: TrainingSpec, on_epoch: EpochCallback) -> FitResult:
        device, _, _ = common.resolve_device(cfg)
        n_samples = len(data.x_train)
        batch_size, steps = batch_plan(cfg, n_samples)

        def tensor(array: np.ndarray) -> torch.Tensor:  # a copy on the device: nothing here writes to the data
            return torch.tensor(array, device=device)

        lrs = tensor(learning_rates(cfg, steps).astype(cfg.dtype))
        x_train, x_test = tensor(data.x_train), tensor(data.x_test)
        y_train, y_test = tensor(data.one_hot(data.y_train)), tensor(data.one_hot(data.y_test))

        def order(epoch: int) -> torch.Tensor | None:
            indices = epoch_order(cfg, n_samples, epoch)
            return None if indices is None else tensor(indices)

        params = Params(*(tensor(a) for a in initial_parameters(cfg, data.n_features)))
        velocity = Params(*(torch.zeros_like(p) for p in params)) if cfg.momentum > 0 else None
        state = State(params, velocity)
        step = step_function(cfg)

        start = time.perf_counter()
        for _ in range(cfg.backend.warmup_epochs):  # compiles, if asked; every step makes new tensors: changes nothing
            float(train_epoch(step, state, x_train, y_train, order(0), lrs[0], batch_size)[1][0])
        warmup_seconds = time.perf_counter() - start

        epochs_run = 0
        for epoch in range(cfg.epochs):
            epoch_rows, epoch_lrs = order(epoch), lrs[epoch]
            starting = state.params  # never written to: full batch, the weights the epoch's numbers describe
            timer = timing.EpochTimer()
            state, (loss_sum, correct, tied) = train_epoch(
                step, state, x_train, y_train, epoch_rows, epoch_lrs, batch_size
            )
            train_loss = float(loss_sum) / n_samples  # waits for the epoch
            took = timer.stop()
            train_accuracy, tied_fraction = int(correct) / n_samples, int(tied) / n_samples
            described = starting if steps == 1 else state.params  # see EpochMetrics
            test_loss, test_accuracy = evaluate(described, x_test, y_test, cfg)
            epochs_run = epoch + 1
            metrics = EpochMetrics(
                epochs_run, train_loss, train_accuracy, tied_fraction, test_loss, test_accuracy, *took
            )
            if on_epoch(metrics):
                break  # keeping the weights its numbers describe
        else:
            described = state.params  # no stop: the weights after the last update
        weights, bias = (p.cpu().numpy() for p in described)
        return FitResult(weights, bias, epochs_run, warmup_seconds)


def create() -> TorchBackend:
    return TorchBackend()
