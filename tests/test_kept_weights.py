"""Which weights each number describes, on every backend alike (base.EpochMetrics): a full-batch epoch's
train and test numbers describe the weights it starts with, and a stop keeps them; a minibatch epoch's test
numbers describe the weights after it, which a stop keeps. On small synthetic data (parity.py), float64."""

from __future__ import annotations

import numpy as np
import pytest
from needs import import_extra
from parity import config, fit, labelled

from mnist_bench.backends import base
from mnist_bench.backends.numpy_backend import score
from mnist_bench.config import Config

# Each model, and the framework (module, extra) it needs beyond NumPy.
MODELS = {
    "numpy": None,
    "tf": ("tensorflow", "tf"),
    "keras": ("tensorflow", "tf"),
    "jax": ("jax", "jax"),
    "keras[jax]": ("jax", "jax"),
    "torch": ("torch", "torch"),
    "keras[torch]": ("torch", "torch"),
}
STOP_AT = 4


def model_config(model: str, **options: object) -> Config:
    """The model's float64 parity config; skipped (a failure in CI) where its framework is not installed."""
    if MODELS[model]:
        import_extra(*MODELS[model])
    return labelled(model, **options)


def scored(cfg: Config, weights: np.ndarray, bias: np.ndarray) -> base.WeightScores:
    """The given weights scored on parity's data, as a run scores the weights it keeps."""
    from parity import X_TEST, X_TRAIN, Y_TEST, Y_TRAIN

    return score(base.prepare(X_TRAIN, Y_TRAIN, X_TEST, Y_TEST, cfg.spec()), weights, bias, cfg.spec())


def assert_describes(metrics: dict[str, float], scores: base.WeightScores) -> None:
    for name in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
        assert metrics[name] == pytest.approx(getattr(scores, name), rel=1e-9), name


@pytest.mark.parametrize("model", MODELS)
def test_a_full_batch_stop_keeps_the_weights_its_numbers_describe(model: str) -> None:
    """Stopping at epoch 4 keeps the weights after 3 updates (NumPy's, run 3 epochs without a stop), and
    epoch 4's train and test numbers are both those weights' own."""
    options = {"activation": "sigmoid", "epochs": 10}
    run = fit(model_config(model, **options), stop=lambda m: m.epoch == STOP_AT)
    three_updates = fit(config("numpy", **{**options, "epochs": STOP_AT - 1})).result
    assert run.result.epochs_run == STOP_AT
    np.testing.assert_allclose(run.result.weights, three_updates.weights, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(run.result.bias, three_updates.bias, rtol=1e-9, atol=1e-12)
    at_stop = {name: values[-1] for name, values in run.curves.items()}
    assert_describes(at_stop, scored(config("numpy", **options), run.result.weights, run.result.bias))


@pytest.mark.parametrize("model", MODELS)
def test_a_full_batch_run_without_a_stop_keeps_its_last_update(model: str) -> None:
    """Epoch k describes the weights after k - 1 updates: the first epoch the initial ones; the weights kept
    at the end are one update past the last epoch's numbers."""
    options = {"activation": "softmax", "epochs": 3}
    cfg = model_config(model, **options)
    run = fit(cfg)
    first = {name: values[0] for name, values in run.curves.items()}
    assert_describes(first, scored(cfg, *base.initial_parameters(cfg.spec(), 784)))
    kept = scored(cfg, run.result.weights, run.result.bias)
    assert kept.test_loss < run.curves["test_loss"][-1]  # one more update on a problem that is still learning


@pytest.mark.parametrize("model", MODELS)
def test_a_minibatch_stop_keeps_the_weights_its_test_numbers_describe(model: str) -> None:
    """Keras' convention: running train numbers; the test numbers are the weights after the epoch's last batch."""
    options = {"activation": "softmax", "batch_size": 100, "momentum": 0.9, "epochs": 10}
    run = fit(model_config(model, **options), stop=lambda m: m.epoch == STOP_AT)
    kept = scored(config("numpy", **options), run.result.weights, run.result.bias)
    assert run.result.epochs_run == STOP_AT
    assert run.curves["test_loss"][-1] == pytest.approx(kept.test_loss, rel=1e-9)
    assert run.curves["test_accuracy"][-1] == kept.test_accuracy
