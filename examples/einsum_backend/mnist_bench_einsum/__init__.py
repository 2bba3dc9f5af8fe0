"""backend=einsum: an mnist-bench backend installed as a package of its own, without forking mnist-bench.

What a backend needs (README, "Your own backend"):
- an entry point in the group ``mnist_bench.backends`` naming this module (pyproject.toml);
- ``create()`` returning an object with ``resolve_device(spec)`` and ``fit(data, spec, on_epoch)``;
- ``conf/backend/NAME.yaml`` beside the module: its name, default activation and ``options``;
- optionally ``Options``, a dataclass of its own keys, which mnist-bench checks like its own.

It trains the harness's model with what every backend shares from ``mnist_bench.backends.base`` (initial
weights, batch order, per-step learning rates, which weights each epoch's numbers describe: EpochMetrics), so
its runs compare with the built-in backends' to the last digit: the products are np.einsum, the gradient is
the logits' error (p - y) taken by hand, one batch at a time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from mnist_bench import machine, timing
from mnist_bench.backends import base, options
from mnist_bench.backends.numpy_backend import probabilities_and_loss
from mnist_bench.config import ConfigError, TrainingSpec


@dataclass
class Options:
    """``backend.options``: this backend's own keys."""

    optimize: bool = True  # np.einsum's optimize: BLAS for the products


def _epoch(
    data: base.TrainData, y_onehot: np.ndarray, params: list[np.ndarray], velocity: list[np.ndarray] | None,
    rates: np.ndarray, order: np.ndarray | None, size: int, cfg: TrainingSpec, optimize: bool,
) -> tuple[float, int, int]:  # fmt: skip
    """One pass over the training set, updating ``params`` (weights, bias) in place: the summed row losses, the
    rows predicted right and the rows whose top output is tied, each row's from the forward pass before its update."""
    weights, bias = params
    loss_sum, right, tied = 0.0, 0, 0
    for step, start in enumerate(range(0, len(data.x_train), size)):
        rows = slice(start, start + size) if order is None else order[start : start + size]
        x, y, labels = data.x_train[rows], y_onehot[rows], data.y_train[rows]
        z = np.einsum("ij,jk->ik", x, weights, optimize=optimize) + bias
        p, losses = probabilities_and_loss(z, y, cfg.activation)
        loss_sum += float(losses.sum(dtype=np.float64))
        right += int((base.predicted_class(z, p, cfg.predict_from) == labels).sum())
        tied += int(base.tied_rows(p).sum())
        error = (p - y) / len(x)  # d(mean loss)/dz for both activations
        grads = [
            np.einsum("ij,ik->jk", x, error, optimize=optimize) * base.weight_grad_scale(cfg, len(x)),
            error.sum(0),
        ]
        for i, grad in enumerate(grads):
            if velocity is None:
                params[i] -= rates[step] * grad
            else:  # heavy-ball momentum, as the built-in backends have it
                velocity[i] *= cfg.momentum
                velocity[i] -= rates[step] * grad
                params[i] += velocity[i]
    return loss_sum, right, tied


class EinsumBackend:
    """Full-batch gradient descent or minibatch SGD, with optional momentum, on the CPU."""

    def resolve_device(self, cfg: TrainingSpec) -> tuple[str, str]:
        if cfg.device.name == "gpu":
            raise ConfigError("device=gpu is not allowed with backend=einsum: it runs on the CPU (use device=cpu)")
        return "cpu", machine.cpu_model()

    def fit(self, data: base.TrainData, cfg: TrainingSpec, on_epoch: base.EpochCallback) -> base.FitResult:
        optimize = options(cfg.backend).optimize
        n = len(data.x_train)
        size, steps = base.batch_plan(cfg, n)
        rates = base.learning_rates(cfg, steps).astype(cfg.dtype)
        y_train = data.one_hot(data.y_train)
        params = list(base.initial_parameters(cfg, data.n_features))

        start = time.perf_counter()
        for _ in range(cfg.backend.warmup_epochs):  # on copies: changes nothing
            _epoch(data, y_train, [p.copy() for p in params], None, rates[0], None, size, cfg, optimize)
        warmup_seconds = time.perf_counter() - start

        velocity = [np.zeros_like(p) for p in params] if cfg.momentum else None
        epochs_run = 0
        with np.errstate(over="ignore"):
            for epoch in range(cfg.epochs):
                order = base.epoch_order(cfg, n, epoch)
                starting = [p.copy() for p in params] if steps == 1 else params  # see base.EpochMetrics
                timer = timing.EpochTimer()
                loss_sum, right, tied = _epoch(
                    data, y_train, params, velocity, rates[epoch], order, size, cfg, optimize
                )
                took = timer.stop()
                z = np.einsum("ij,jk->ik", data.x_test, starting[0], optimize=optimize) + starting[1]
                p, losses = probabilities_and_loss(z, data.one_hot(data.y_test), cfg.activation)
                test_accuracy = float((base.predicted_class(z, p, cfg.predict_from) == data.y_test).mean())
                epochs_run = epoch + 1
                metrics = base.EpochMetrics(
                    epochs_run, loss_sum / n, right / n, tied / n, float(losses.mean()), test_accuracy, *took
                )
                if on_epoch(metrics):
                    params = starting  # a full-batch stop keeps the weights its numbers describe
                    break
        return base.FitResult(params[0], params[1], epochs_run, warmup_seconds)


def create() -> EinsumBackend:
    return EinsumBackend()
