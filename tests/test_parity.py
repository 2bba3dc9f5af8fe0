"""The compiled and eager framework models against the NumPy reference, on small synthetic data (see parity.py),
and on their devices: backend=jax, backend=torch (eager and through torch.compile), and Keras on JAX and on
PyTorch. Each model needs only its own framework installed (skipped otherwise, a failure in CI). What is one
framework's own (its probabilities where sigmoids saturate, a missing install) is in test_jax_backend.py,
test_torch_backend.py and test_keras_jax.py; backend=tf and Keras on TensorFlow are in test_tf_backends.py."""

from __future__ import annotations

import numpy as np
import pytest
from needs import import_extra
from parity import SUMMED_GRADIENT, assert_learns, assert_same_training, config, fit, labelled

from mnist_bench import machine
from mnist_bench.backends import get
from mnist_bench.config import ConfigError

# Each model, and the framework (module, extra) it needs. torch.compile compiles each batch shape of each
# test (15-30 s each on 2 cores): its cases run with the slow tests.
FRAMEWORKS = {"jax": ("jax", "jax"), "keras[jax]": ("jax", "jax"), "torch": ("torch", "torch")}
FRAMEWORKS |= {"torch+compile": ("torch", "torch"), "keras[torch]": ("torch", "torch")}
MODELS = [pytest.param(m, marks=pytest.mark.slow) if m == "torch+compile" else m for m in FRAMEWORKS]
LIBRARY = {"jax": "JAX", "torch": "PyTorch"}  # as each framework's one-line errors name it


def _importable(model: str) -> str:
    import_extra(*FRAMEWORKS[model])
    if model.startswith("keras"):
        import_extra("keras", FRAMEWORKS[model][1])
    return model


@pytest.fixture(params=MODELS)
def model(request: pytest.FixtureRequest) -> str:
    return _importable(request.param)


@pytest.fixture(params=[m for m in FRAMEWORKS if m != "torch+compile"])
def model_but_torch_compile(request: pytest.FixtureRequest) -> str:
    """The models, less torch+compile where a test would only pay its compilations again to show what the
    others show (its dtype, stopping and devices are torch's)."""
    return _importable(request.param)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_matches_numpy_full_batch(model: str, activation: str) -> None:
    """20 full-batch float64 epochs: every curve and the final parameters within 1e-9 relative."""
    expected = fit(config("numpy", activation=activation))
    actual = fit(labelled(model, activation=activation))
    assert_learns(expected)
    assert_same_training(actual, expected)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_momentum_cosine_shuffled_minibatches(model: str, activation: str) -> None:
    """Momentum, a per-step schedule, shuffled batches and a last partial batch (512 = 5 x 100 + 12):
    the same curves, and accuracies identical to the row."""
    options = {"activation": activation, "batch_size": 100, "momentum": 0.9, "lr_schedule": "cosine", "epochs": 5}
    expected = fit(config("numpy", **options))
    actual = fit(labelled(model, **options))
    assert_learns(expected)
    assert_same_training(actual, expected)
    for column in ("train_accuracy", "tied_prediction_fraction", "test_accuracy"):
        np.testing.assert_array_equal(actual.curves[column], expected.curves[column], err_msg=column)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_summed_weight_gradient_on_raw_pixels(model: str, activation: str) -> None:
    """The weight gradient is the batch's row count times the mean one (parity.SUMMED_GRADIENT)."""
    options = {"activation": activation, **SUMMED_GRADIENT}
    expected = fit(config("numpy", **options))
    actual = fit(labelled(model, **options))
    assert_learns(expected)
    assert_same_training(actual, expected)
    mean = fit(labelled(model, **{**options, "grad_reduction": "mean"}))
    assert not np.allclose(mean.result.weights, actual.result.weights, rtol=1e-3)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_probabilities_rule_matches_numpy_on_raw_pixels(model: str, activation: str) -> None:
    """The tutorial's rule, from weights large enough (raw pixels) that outputs tie."""
    options = {"activation": activation, "predict_from": "probabilities", "normalize": False, "lr": 1e-3}
    expected = fit(config("numpy", **options))
    if activation == "sigmoid":
        assert expected.curves["tied_prediction_fraction"].max() > 0.1
    assert_same_training(fit(labelled(model, **options)), expected)


def test_each_run_keeps_its_dtype(model_but_torch_compile: str) -> None:
    """x64 mode (and Keras' floatx) are the process's: a float32 run after a float64 one still trains in float32."""
    model = model_but_torch_compile
    for dtype in ("float64", "float32"):
        run = fit(labelled(model, dtype=dtype, batch_size=128, epochs=1))
        assert run.result.weights.dtype == run.result.bias.dtype == np.dtype(dtype)


def test_on_epoch_true_stops_after_that_epoch(model_but_torch_compile: str) -> None:
    model = model_but_torch_compile
    run = fit(labelled(model, batch_size=128, epochs=10), stop=lambda m: m.epoch == 3)
    assert run.result.epochs_run == 3
    assert len(run.curves["train_loss"]) == 3


def test_warmup_changes_nothing(model: str) -> None:
    options = {"batch_size": 100, "momentum": 0.9, "lr_schedule": "linear", "epochs": 2}
    cold = fit(labelled(model, warmup_epochs=0, **options))
    warm = fit(labelled(model, warmup_epochs=2, **options))
    assert warm.result.warmup_seconds > cold.result.warmup_seconds
    assert_same_training(warm, cold, rtol=0)


# --- device --------------------------------------------------------------------------------------


def sees_gpu(model: str) -> bool:
    """Whether the model's framework sees a GPU."""
    if FRAMEWORKS[model][0] == "torch":
        import torch

        return torch.cuda.is_available()
    import jax

    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:  # no CUDA-enabled jaxlib, or no GPU visible to it
        return False


def test_cpu_and_auto_devices(model_but_torch_compile: str) -> None:
    model = model_but_torch_compile
    expected_auto = "gpu" if sees_gpu(model) else "cpu"
    backend = get(labelled(model).backend.name)
    assert backend.resolve_device(labelled(model, device="auto").spec())[0] == expected_auto
    on_cpu = backend.resolve_device(labelled(model, device="cpu").spec())
    assert on_cpu == ("cpu", machine.cpu_model())


def test_gpu_without_one_is_a_one_line_config_error(model_but_torch_compile: str) -> None:
    model = model_but_torch_compile
    if sees_gpu(model):
        pytest.skip(f"{model}'s framework sees a GPU on this machine")
    with pytest.raises(ConfigError) as info:
        get(labelled(model).backend.name).resolve_device(labelled(model, device="gpu").spec())
    message = str(info.value)
    assert message.startswith(f"device=gpu but {LIBRARY[FRAMEWORKS[model][0]]} sees no GPU"), message
    assert "device=cpu" in message and "\n" not in message


@pytest.mark.gpu
def test_gpu_matches_cpu(model: str) -> None:
    if not sees_gpu(model):
        pytest.skip(f"{model}'s framework sees no GPU on this machine")
    options = {"batch_size": 64, "momentum": 0.9, "epochs": 3}
    gpu, cpu = fit(labelled(model, device="gpu", **options)), fit(labelled(model, device="cpu", **options))
    assert_same_training(gpu, cpu, rtol=1e-7)
