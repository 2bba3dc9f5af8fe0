"""backend=keras's model, on whichever engine Keras was loaded with (keras_backend.py chooses it first).

The linear model as most Keras users write it: Sequential([Dense(10)]), SGD, compile, fit. Everything
here is keras and keras.ops, so the same code trains, scores and evaluates on TensorFlow, JAX and PyTorch.
These choices keep its numbers those of the other backends:
- The Dense layer outputs logits and the loss applies the activation (``from_logits=True``). The
  accuracy is not Keras' own, which takes the argmax of whatever the model outputs, but the harness's
  predicted class (``predict_from``), from probabilities computed by numpy_backend's formulas
  (``probabilities``), with the tied fraction beside it.
- The learning rate of every step comes from ``learning_rates()`` through a schedule indexed by the
  optimizer's step counter, and batches come in ``epoch_order()``: one ``fit`` call per epoch on the
  rows in that order, with ``shuffle=False``.
- The run's dtype is given to every layer and loss, and is Keras' floatx while the model is built and
  trained: Keras casts float inputs to floatx and keeps its loss tracker in it. The accuracy and tied
  shares are kept in float64 (see ``_row_metrics``).
- grad_reduction=sum multiplies the kernel gradient by the batch's row count inside the layer
  (``_AdjustedDense``), leaving fit's training step as it is; so does a float64 product on PyTorch.
- The test set is scored after each epoch by ``model.evaluate`` with the same loss and metrics, in one batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import keras
import numpy as np

from mnist_bench import timing
from mnist_bench.backends.base import (
    NUM_CLASSES,
    EpochCallback,
    EpochMetrics,
    FitResult,
    TrainData,
    batch_plan,
    epoch_order,
    initial_parameters,
    learning_rates,
)
from mnist_bench.config import TrainingSpec

ops = keras.ops


# Keras on JAX computes some ops of float64 tensors in float32: its type promotion maps float64 to float32
# on every engine but TensorFlow, as JAX does without x64 mode (keras-team/keras#18482). In Keras 3.15
# ops.mean is one (it moved a float64 run's sigmoid loss by 2e-8 relative) and ops.argmax on a CPU another
# (it ranks 1 + 1e-12 level with 1.0), so the functions below use neither on float tensors: ops.sum, and
# the first column equal to the row's max.


def row_losses(y, logits, activation: str):
    """The loss of each row: BCE summed over the 10 one-vs-rest outputs (whose gradient is then (p - y) / B,
    as elsewhere) or cross-entropy."""
    if activation == "sigmoid":
        return ops.sum(ops.binary_crossentropy(y, logits, from_logits=True), axis=-1)
    return ops.categorical_crossentropy(y, logits, from_logits=True)


def probabilities(logits, activation: str):
    """The activated outputs by numpy_backend's formulas, so that they round, saturate and tie alike.

    The sigmoid is 1 / (1 + e^-z), as in NumPy, not a library sigmoid (see _tf_common.probabilities for
    what those round differently). Outputs below the smallest normal float are 0, on every device.
    """
    p = 1 / (1 + ops.exp(-logits)) if activation == "sigmoid" else ops.exp(ops.log_softmax(logits, axis=-1))
    return ops.where(p < np.finfo(ops.dtype(p)).tiny, ops.zeros_like(p), p)


def _top(values):
    """Per row: whether each column holds the row's largest value (-0.0 and 0.0 are equal, as in NumPy)."""
    return ops.cast(ops.equal(values, ops.max(values, axis=1, keepdims=True)), "int32")


def hits_and_ties(y, logits, activation: str, predict_from: str):
    """Per row (bool): whether the predicted class is the label, and whether the row's top output is tied.

    The predicted class is base.predicted_class's: the first of the largest logits or outputs (an argmax of
    integers, which no engine casts), so a tie goes to the lowest class; ties are base.tied_rows'.
    """
    p = probabilities(logits, activation)
    predicted = ops.argmax(_top(p if predict_from == "probabilities" else logits), axis=1)
    hits = ops.equal(predicted, ops.argmax(_top(y), axis=1))
    return hits, ops.sum(_top(p), axis=1) > 1


class _RowLoss(keras.losses.Loss):
    """The batch mean of ``row_losses``, as each row's loss over the row count, summed ("sum" reduction):
    Keras' own mean divides by ops.divide_no_nan, which on PyTorch computes a float64 loss, and so its
    gradient, in float32 (keras.backend.result_type maps float64 to float32 on every engine but TensorFlow)."""

    def __init__(self, activation: str, dtype: str) -> None:
        super().__init__(reduction="sum", dtype=dtype)
        self.activation = activation

    def call(self, y_true, y_pred):
        losses = row_losses(y_true, y_pred, self.activation)
        return losses / ops.cast(ops.shape(losses)[0], losses.dtype)


class _StepRates(keras.optimizers.schedules.LearningRateSchedule):
    """The rate of every update from ``learning_rates()``, looked up by the optimizer's step counter.

    Past the end (a warm-up longer than the run) the last rate holds.
    """

    def __init__(self, rates: np.ndarray) -> None:
        self.rates = rates.ravel()

    def __call__(self, step):
        return ops.take(self.rates, ops.minimum(step, len(self.rates) - 1))


class _AdjustedDense(keras.layers.Dense):
    """A Dense layer for the two runs plain Dense cannot give the other backends' numbers:

    - ``summed_kernel_gradient`` (grad_reduction=sum): the kernel gradient summed over the batch's rows, not
      averaged. The product uses  k0 + rows * (k - k0)  with k0 = stop_gradient(k): its value is exactly k
      (k - k0 is 0) and its derivative with respect to k is rows, so the mean loss's kernel gradient comes out
      times rows. The bias gradient stays a mean.
    - ``einsum`` (float64 on PyTorch): the product as ops.einsum, since Keras' matmul on PyTorch computes
      float64 in float32 (its result_type, see _RowLoss); einsum keeps the inputs' dtype.
    """

    def __init__(self, units: int, summed_kernel_gradient: bool, einsum: bool, **kwargs) -> None:
        super().__init__(units, **kwargs)
        self.summed_kernel_gradient, self.einsum = summed_kernel_gradient, einsum

    def call(self, inputs, training=None):
        kernel = self.kernel
        if self.summed_kernel_gradient:
            rows = ops.cast(ops.shape(inputs)[0], self.compute_dtype)
            frozen = ops.stop_gradient(kernel)
            kernel = frozen + rows * (kernel - frozen)
        product = ops.einsum("ij,jk->ik", inputs, kernel) if self.einsum else ops.matmul(inputs, kernel)
        return product + self.bias


def _dense(cfg: TrainingSpec) -> keras.layers.Dense:
    """The model's one layer: keras.layers.Dense as users write it, or _AdjustedDense where a run needs it."""
    summed = cfg.grad_reduction == "sum"
    einsum = cfg.dtype == "float64" and keras.config.backend() == "torch"
    if summed or einsum:
        return _AdjustedDense(NUM_CLASSES, summed_kernel_gradient=summed, einsum=einsum, dtype=cfg.dtype)
    return keras.layers.Dense(NUM_CLASSES, dtype=cfg.dtype)


def build_model(cfg: TrainingSpec, n_features: int, steps_per_epoch: int) -> keras.Sequential:
    """The compiled model, holding the run's initial parameters.

    Every part gets ``cfg.dtype`` explicitly: Keras fixes its default dtype policy at its first use in
    the process, so an earlier run's floatx would otherwise stick. On JAX, Keras' fit is always jitted
    (XLA): without it every step would run op by op.
    """
    model = keras.Sequential([keras.Input((n_features,), dtype=cfg.dtype), _dense(cfg)])
    model.set_weights(initial_parameters(cfg, n_features))
    loss = _RowLoss(cfg.activation, cfg.dtype)
    rates = learning_rates(cfg, steps_per_epoch).astype(cfg.dtype)
    # momentum as a float64 scalar: Keras casts a Python float to the variables' dtype through float32,
    # which in a float64 run would make it 0.899999976 instead of 0.9.
    optimizer = keras.optimizers.SGD(learning_rate=_StepRates(rates), momentum=np.float64(cfg.momentum))
    jit = keras.config.backend() == "jax" or cfg.backend.xla
    model.compile(optimizer=optimizer, loss=loss, metrics=_row_metrics(cfg), jit_compile=jit)
    return model


def _row_metrics(cfg: TrainingSpec) -> list[keras.metrics.Metric]:
    """``row_loss``, ``accuracy`` and ``tied``: the mean row loss, and the shares of rows whose predicted class
    is the label and whose top output is tied (fit's epoch logs average them over the epoch's rows). Kept in
    float64 whatever the run's dtype, so that a share of n rows is k / n exactly and the loss is summed in
    float64, as the other backends report them. The row loss is not fit's own ``loss``, whose tracker weights
    each batch's mean by its size in float32 on PyTorch (see _RowLoss)."""

    def mean(column: int, name: str) -> keras.metrics.Metric:
        def rows(y_true, logits):
            if column < 0:
                return row_losses(y_true, logits, cfg.activation)
            return hits_and_ties(y_true, logits, cfg.activation, cfg.predict_from)[column]

        return keras.metrics.MeanMetricWrapper(rows, name=name, dtype="float64")

    return [mean(-1, "row_loss"), mean(0, "accuracy"), mean(1, "tied")]


class _EpochReporter(keras.callbacks.Callback):
    """Times each epoch, evaluates the test set, hands the EpochMetrics to ``on_epoch`` and stops training
    when that returns True. Keras' epoch logs average the loss and accuracy over the epoch's rows, each
    batch's taken before its update: the same train numbers as the other backends. A full-batch epoch's
    numbers describe the weights it started with (EpochMetrics): they are put back to be tested, and kept on
    a stop; otherwise the updated weights return."""

    def __init__(self, on_epoch: EpochCallback, x_test: np.ndarray, y_test: np.ndarray, full_batch: bool) -> None:
        super().__init__()
        self.on_epoch, self.x_test, self.y_test, self.full_batch = on_epoch, x_test, y_test, full_batch
        self.epochs_run = 0
        self._timer = timing.EpochTimer()
        self._starting: list[np.ndarray] = []

    def test_scores(self, model: keras.Sequential) -> dict[str, float]:
        """``model.evaluate`` on the test set, in one batch: its row metrics, as ``_means`` reads them."""
        model.evaluate(self.x_test, self.y_test, batch_size=len(self.x_test), verbose=0)
        return _means(model)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._starting = self.model.get_weights() if self.full_batch else []
        self._timer = timing.EpochTimer()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        train = _means(self.model)
        took = self._timer.stop()  # after the values above, which wait for the last step
        updated = self.model.get_weights() if self.full_batch else []
        if self.full_batch:
            self.model.set_weights(self._starting)
        test = self.test_scores(self.model)
        self.epochs_run = epoch + 1
        metrics = EpochMetrics(
            epoch + 1, train["row_loss"], train["accuracy"], train["tied"], test["row_loss"], test["accuracy"], *took
        )
        if self.on_epoch(metrics):
            self.model.stop_training = True  # keeping the weights its numbers describe
        elif self.full_batch:
            self.model.set_weights(updated)


def _means(model: keras.Sequential) -> dict[str, float]:
    """The row metrics of the last fit or evaluate, each its total over its count divided here: a metric's
    own result() divides in float32 on PyTorch (see _RowLoss), which would round a float64 run's."""
    metrics = [inner for metric in model.metrics for inner in getattr(metric, "metrics", [metric])]
    values = {m.name: [float(ops.convert_to_numpy(v)) for v in (m.total, m.count)] for m in metrics}
    return {name: total / count for name, (total, count) in values.items()}


def fit(data: TrainData, cfg: TrainingSpec, on_epoch: EpochCallback, placement: AbstractContextManager) -> FitResult:
    """Train as backend=keras does, with the run's tensors and variables made under ``placement``."""
    n_samples = len(data.x_train)
    batch_size, steps = batch_plan(cfg, n_samples)
    x_train, y_train = data.x_train, data.one_hot(data.y_train)
    with placement, _floatx(cfg.dtype):
        model = build_model(cfg, data.n_features, steps)
        reporter = _EpochReporter(on_epoch, data.x_test, data.one_hot(data.y_test), full_batch=steps == 1)
        warmup_seconds = _warm_up(model, x_train, y_train, batch_size, cfg.backend.warmup_epochs, reporter)
        for epoch in range(cfg.epochs):
            order = epoch_order(cfg, n_samples, epoch)
            rows = slice(None) if order is None else order
            with _floatx(cfg.dtype):  # again each epoch: a sweep in rounds trains other cells in between
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
    weights, bias = model.layers[0].get_weights()
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


def _warm_up(
    model: keras.Sequential, x: np.ndarray, y: np.ndarray, batch_size: int, epochs: int, reporter: _EpochReporter
) -> float:
    """Seconds to fit ``epochs`` epochs and score the test set as ``reporter`` does after each epoch: all
    that Keras traces and compiles (fit's training step, evaluate's test step), so that none of it falls
    between timed epochs. Then the parameters and the optimizer (step counter, momentum) are put back."""
    if epochs == 0:
        return 0.0
    parameters = model.get_weights()
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0)
    reporter.test_scores(model)
    seconds = time.perf_counter() - start
    model.set_weights(parameters)
    for variable in model.optimizer.variables:
        variable.assign(ops.zeros(variable.shape, variable.dtype))
    return seconds
