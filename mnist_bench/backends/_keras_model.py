"""The linear model as most Keras users write it: Sequential([Dense(10)]), SGD, compile, fit.

These choices keep its numbers those of the other backends:
- The Dense layer outputs logits and the loss applies the activation (``from_logits=True``). The
  accuracy is not Keras' own, which takes the argmax of whatever the model outputs, but the harness's
  predicted class (``predict_from``) as the TF backend computes it, with the tied fraction beside it.
- The learning rate of every step comes from ``learning_rates()`` through a schedule indexed by the
  optimizer's step counter, and batches come in ``epoch_order()``: one ``fit`` call per epoch on the
  rows in that order, with ``shuffle=False``.
- The run's dtype is given to every layer, loss and metric, and is Keras' floatx while the model is
  built and trained: Keras casts float inputs to floatx and keeps its loss tracker in it.
- grad_reduction=sum multiplies the kernel gradient by the batch's row count inside the layer
  (``_SummedKernelGradientDense``), leaving fit's training step as it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

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
)
from mnist_bench.config import Config

try:
    from mnist_bench.backends import _tf_common as common
except ModuleNotFoundError as err:
    raise BackendUnavailable(
        "backend=keras needs TensorFlow, which is not installed: "
        "pip install 'mnist-bench[tf]' (or '.[tf]' in a checkout)"
    ) from err

import keras  # comes with TensorFlow (which imports it); after _tf_common, which sets TF's log level first

ops = keras.ops


class _SummedBinaryCrossentropy(keras.losses.Loss):
    """The sigmoid model's loss: BCE summed over the 10 one-vs-rest outputs. Keras' binary_crossentropy
    averages over them, so it is multiplied by 10 (which also makes its gradient (p - y) / B, as elsewhere)."""

    def call(self, y_true, y_pred):
        return NUM_CLASSES * keras.losses.binary_crossentropy(y_true, y_pred, from_logits=True)


class _StepRates(keras.optimizers.schedules.LearningRateSchedule):
    """The rate of every update from ``learning_rates()``, looked up by the optimizer's step counter.

    Past the end (a warm-up longer than the run) the last rate holds.
    """

    def __init__(self, rates: np.ndarray) -> None:
        self.rates = rates.ravel()

    def __call__(self, step):
        return ops.take(self.rates, ops.minimum(step, len(self.rates) - 1))


class _SummedKernelGradientDense(keras.layers.Dense):
    """A Dense layer whose kernel gradient is summed over the batch's rows (grad_reduction=sum), not averaged.

    The product uses  k0 + rows * (k - k0)  with k0 = stop_gradient(k): its value is exactly k (k - k0 is 0)
    and its derivative with respect to k is rows, so the mean loss's kernel gradient comes out times rows.
    The bias gradient stays a mean.
    """

    def call(self, inputs, training=None):
        rows = ops.cast(ops.shape(inputs)[0], self.compute_dtype)
        frozen = ops.stop_gradient(self.kernel)
        return ops.matmul(inputs, frozen + rows * (self.kernel - frozen)) + self.bias


def build_model(cfg: Config, n_features: int, steps_per_epoch: int) -> keras.Sequential:
    """The compiled model, holding the run's initial parameters.

    Every part gets ``cfg.dtype`` explicitly: Keras fixes its default dtype policy at its first use in
    the process, so an earlier run's floatx would otherwise stick.
    """
    dense = _SummedKernelGradientDense if cfg.grad_reduction == "sum" else keras.layers.Dense
    model = keras.Sequential([keras.Input((n_features,), dtype=cfg.dtype), dense(NUM_CLASSES, dtype=cfg.dtype)])
    model.set_weights(initial_parameters(cfg, n_features))
    if cfg.activation == "sigmoid":
        loss = _SummedBinaryCrossentropy(dtype=cfg.dtype)
    else:
        loss = keras.losses.CategoricalCrossentropy(from_logits=True, dtype=cfg.dtype)
    rates = learning_rates(cfg, steps_per_epoch).astype(cfg.dtype)
    # momentum as a float64 scalar: Keras casts a Python float to the variables' dtype through float32,
    # which in a float64 run would make it 0.899999976 instead of 0.9.
    optimizer = keras.optimizers.SGD(learning_rate=_StepRates(rates), momentum=np.float64(cfg.momentum))
    model.compile(optimizer=optimizer, loss=loss, metrics=_row_metrics(cfg), jit_compile=cfg.backend.xla)
    return model


def _row_metrics(cfg: Config) -> list[keras.metrics.Metric]:
    """``accuracy`` and ``tied``: the shares of rows whose predicted class is the label, and whose top output
    is tied, by _tf_common's rule (fit's epoch logs average them over the epoch's rows)."""

    def share(column: int, name: str) -> keras.metrics.Metric:
        def rows(y_true, logits):
            return ops.cast(common.hits_and_ties(logits, y_true, cfg.activation, cfg.predict_from)[column], cfg.dtype)

        return keras.metrics.MeanMetricWrapper(rows, name=name, dtype=cfg.dtype)

    return [share(0, "accuracy"), share(1, "tied")]


class _EpochReporter(keras.callbacks.Callback):
    """Times each epoch, evaluates the test set after it, hands the EpochMetrics to ``on_epoch`` and
    stops training when that returns True. Keras' epoch logs average the loss and accuracy over the
    epoch's rows, each batch's taken before its update: the same train numbers as the other backends."""

    def __init__(self, on_epoch: EpochCallback, evaluate: Callable[[], tuple[float, float]]) -> None:
        super().__init__()
        self.on_epoch, self.evaluate = on_epoch, evaluate
        self.epochs_run = 0
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        train_loss, train_accuracy, tied = float(logs["loss"]), float(logs["accuracy"]), float(logs["tied"])
        seconds = time.perf_counter() - self._start  # after the floats above, which wait for the last step
        test_loss, test_accuracy = self.evaluate()
        self.epochs_run = epoch + 1
        metrics = EpochMetrics(epoch + 1, train_loss, train_accuracy, tied, test_loss, test_accuracy, seconds)
        if self.on_epoch(metrics):
            self.model.stop_training = True


class KerasBackend:
    """keras.Sequential + SGD trained by model.fit, one call per epoch."""

    def resolve_device(self, cfg: Config) -> tuple[str, str]:
        return common.resolve_device(cfg)

    def fit(self, data: TrainData, cfg: Config, on_epoch: EpochCallback) -> FitResult:
        device, _ = common.resolve_device(cfg)
        n_samples = len(data.x_train)
        batch_size, steps = batch_plan(cfg, n_samples)
        x_train, y_train = data.x_train, data.one_hot(data.y_train)
        with common.placement(device), _floatx(cfg.dtype):
            model = build_model(cfg, data.n_features, steps)
            dense = model.layers[0]
            x_test, y_test = common.one_hot_tensors(data.x_test, data.y_test, NUM_CLASSES)
            warmup_seconds = _warm_up(model, x_train, y_train, batch_size, cfg.backend.warmup_epochs)
            reporter = _EpochReporter(
                on_epoch, lambda: common.evaluate(x_test, y_test, dense.kernel.value, dense.bias.value, cfg)
            )
            for epoch in range(cfg.epochs):
                order = epoch_order(cfg, n_samples, epoch)
                rows = slice(None) if order is None else order
                model.fit(
                    x_train[rows],
                    y_train[rows],
                    batch_size=batch_size,
                    initial_epoch=epoch,
                    epochs=epoch + 1,
                    shuffle=False,
                    callbacks=[reporter],
                    verbose=0,
                )
                if model.stop_training:
                    break
        weights, bias = dense.get_weights()
        return FitResult(weights, bias, reporter.epochs_run, warmup_seconds)


@contextmanager
def _floatx(dtype: str) -> Iterator[None]:
    """Keras' floatx set to ``dtype`` for the duration (it is global): fit casts float inputs to it."""
    previous = keras.config.floatx()
    keras.config.set_floatx(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(previous)


def _warm_up(model: keras.Sequential, x: np.ndarray, y: np.ndarray, batch_size: int, epochs: int) -> float:
    """Seconds to fit ``epochs`` epochs (tracing and compiling the training step), after which the
    parameters and the optimizer (step counter, momentum) are put back as they were."""
    if epochs == 0:
        return 0.0
    parameters = model.get_weights()
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0)
    seconds = time.perf_counter() - start
    model.set_weights(parameters)
    for variable in model.optimizer.variables:
        variable.assign(ops.zeros_like(variable))
    return seconds


def create() -> KerasBackend:
    return KerasBackend()
