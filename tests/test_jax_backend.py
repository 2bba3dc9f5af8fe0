"""backend=jax, and Keras on JAX (backend=keras backend.keras_backend=jax), against the NumPy reference, on
small synthetic data (see parity.py). test_keras_jax.py has what is Keras' own: its engine changing in a process."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from needs import import_extra
from parity import SUMMED_GRADIENT, assert_learns, assert_same_training, config, fit, saturating_logits

jax = import_extra("jax", "jax")

from mnist_bench import backends, machine  # noqa: E402  (after the skip: these tests need JAX)
from mnist_bench.backends import base, get, jax_backend  # noqa: E402
from mnist_bench.backends.numpy_backend import probabilities_and_loss  # noqa: E402
from mnist_bench.config import Config, ConfigError  # noqa: E402

# The two models trained by JAX: the harness's own jax.numpy one, and Keras' Sequential on its JAX engine.
MODELS = ["jax", "keras[jax]"]


def jax_config(model: str, **options) -> Config:
    if model == "keras[jax]":
        return config("keras", keras_backend="jax", **options)
    return config(model, **options)


# --- parity --------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_jax_matches_numpy_full_batch(model: str, activation: str) -> None:
    """20 full-batch float64 epochs: every curve and the final parameters within 1e-9 relative."""
    expected = fit(config("numpy", activation=activation))
    actual = fit(jax_config(model, activation=activation))
    assert_learns(expected)
    assert_same_training(actual, expected)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_momentum_cosine_shuffled_minibatches(model: str, activation: str) -> None:
    """Momentum, a per-step schedule, shuffled batches and a last partial batch (512 = 5 x 100 + 12):
    the same curves, and accuracies identical to the row."""
    options = {"activation": activation, "batch_size": 100, "momentum": 0.9, "lr_schedule": "cosine", "epochs": 5}
    expected = fit(config("numpy", **options))
    actual = fit(jax_config(model, **options))
    assert_learns(expected)
    assert_same_training(actual, expected)
    for column in ("train_accuracy", "tied_prediction_fraction", "test_accuracy"):
        np.testing.assert_array_equal(actual.curves[column], expected.curves[column], err_msg=column)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_summed_weight_gradient_on_raw_pixels(model: str, activation: str) -> None:
    """The weight gradient is the batch's row count times the mean one (parity.SUMMED_GRADIENT)."""
    options = {"activation": activation, **SUMMED_GRADIENT}
    expected = fit(config("numpy", **options))
    actual = fit(jax_config(model, **options))
    assert_learns(expected)
    assert_same_training(actual, expected)
    mean = fit(jax_config(model, **{**options, "grad_reduction": "mean"}))
    assert not np.allclose(mean.result.weights, actual.result.weights, rtol=1e-3)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_probabilities_rule_matches_numpy_on_raw_pixels(model: str, activation: str) -> None:
    """The tutorial's rule, from weights large enough (raw pixels) that outputs tie."""
    options = {"activation": activation, "predict_from": "probabilities", "normalize": False, "lr": 1e-3}
    expected = fit(config("numpy", **options))
    if activation == "sigmoid":
        assert expected.curves["tied_prediction_fraction"].max() > 0.1
    assert_same_training(fit(jax_config(model, **options)), expected)


def test_jax_saturates_and_ties_where_numpy_does() -> None:
    """Logits around 37, where a float64 sigmoid starts to round to exactly 1.0, and below -708.4, where it
    is subnormal: JAX's probabilities are 1.0 and 0.0 on NumPy's entries, so the same rows tie."""
    z = saturating_logits()
    p, _ = probabilities_and_loss(z, np.zeros_like(z), "sigmoid")
    jax_p = np.asarray(jax_backend.probabilities(jax.numpy.asarray(z), "sigmoid"))
    assert 0.1 < base.tied_rows(p).mean() < 0.9
    np.testing.assert_array_equal(jax_p == 1.0, p == 1.0)
    np.testing.assert_array_equal(jax_p == 0.0, p == 0.0)


@pytest.mark.parametrize("model", MODELS)
def test_each_run_keeps_its_dtype(model: str) -> None:
    """x64 mode (and Keras' floatx) are the process's: a float32 run after a float64 one still trains in float32."""
    for dtype in ("float64", "float32"):
        run = fit(jax_config(model, dtype=dtype, batch_size=128, epochs=1))
        assert run.result.weights.dtype == run.result.bias.dtype == np.dtype(dtype)


# --- stopping, warm-up ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_on_epoch_true_stops_after_that_epoch(model: str) -> None:
    run = fit(jax_config(model, batch_size=128, epochs=10), stop=lambda m: m.epoch == 3)
    assert run.result.epochs_run == 3
    assert len(run.curves["train_loss"]) == 3


@pytest.mark.parametrize("model", MODELS)
def test_warmup_changes_nothing(model: str) -> None:
    options = {"batch_size": 100, "momentum": 0.9, "lr_schedule": "linear", "epochs": 2}
    cold = fit(jax_config(model, warmup_epochs=0, **options))
    warm = fit(jax_config(model, warmup_epochs=2, **options))
    assert warm.result.warmup_seconds > cold.result.warmup_seconds
    assert_same_training(warm, cold, rtol=0)


# --- device --------------------------------------------------------------------------------------


def _has_gpu() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


@pytest.mark.parametrize("model", MODELS)
def test_cpu_and_auto_devices(model: str) -> None:
    expected_auto = "gpu" if _has_gpu() else "cpu"
    backend = get(jax_config(model).backend.name)
    assert backend.resolve_device(jax_config(model, device="auto").spec())[0] == expected_auto
    assert backend.resolve_device(jax_config(model, device="cpu").spec()) == ("cpu", machine.cpu_model())


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.skipif(_has_gpu(), reason="JAX sees a GPU on this machine")
def test_gpu_without_one_is_a_one_line_config_error(model: str) -> None:
    with pytest.raises(ConfigError) as info:
        get(jax_config(model).backend.name).resolve_device(jax_config(model, device="gpu").spec())
    message = str(info.value)
    assert message.startswith("device=gpu but JAX sees no GPU") and "device=cpu" in message
    assert "\n" not in message


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu(), reason="JAX sees no GPU on this machine")
@pytest.mark.parametrize("model", MODELS)
def test_gpu_matches_cpu(model: str) -> None:
    options = {"batch_size": 64, "momentum": 0.9, "epochs": 3}
    gpu, cpu = fit(jax_config(model, device="gpu", **options)), fit(jax_config(model, device="cpu", **options))
    assert_same_training(gpu, cpu, rtol=1e-7)


# --- imports -------------------------------------------------------------------------------------


def test_missing_jax_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jax", None)  # makes `import jax` fail
    for module in ("_jax_common", "jax_backend"):  # forget them, so that they are imported again
        monkeypatch.delitem(sys.modules, f"mnist_bench.backends.{module}", raising=False)
        monkeypatch.delattr(backends, module, raising=False)
    with pytest.raises(base.BackendUnavailable) as info:
        get("jax")
    message = str(info.value)
    assert message.startswith("backend=jax needs JAX") and "pip install 'mnist-bench[jax]'" in message
    assert "\n" not in message
