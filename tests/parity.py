"""The parity harness every backend's tests share: small synthetic data, a float64 config, and checks.

Parity runs are float64, where the backends differ only in the order of floating-point sums: their
curves agree to ~1e-15, so the tolerances below (1e-9) are far from noise yet would catch any
difference in the maths (a wrong gradient scale, learning rate, batch or momentum is >= 1e-3).
Importing this module imports no framework: each backend is imported when a test fits with it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mnist_bench.backends import base, get, split_label
from mnist_bench.config import BackendConfig, Config, DeviceConfig

RTOL = 1e-9
COLUMNS = ("train_loss", "train_accuracy", "tied_prediction_fraction", "test_loss", "test_accuracy")


def _images(rng: np.random.Generator, projection: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Random 0..255 "images" labelled by a fixed linear map, so that a linear model can learn them."""
    x = rng.integers(0, 256, (n, 784), dtype=np.uint8)
    return x, (x @ projection).argmax(axis=1)


_RNG = np.random.default_rng(0)
_PROJECTION = _RNG.normal(size=(784, base.NUM_CLASSES))
X_TRAIN, Y_TRAIN = _images(_RNG, _PROJECTION, 512)
X_TEST, Y_TEST = _images(_RNG, _PROJECTION, 128)


def labelled(label: str, **options) -> Config:
    """``config`` for the model a label names, as bench names them: ``jax``, ``keras[torch]``, ``torch+compile``."""
    name, engine, compiler = split_label(label)
    engine_option = {"keras_backend": engine} if engine else {}
    return config(name, xla=compiler == "xla", compile=compiler == "compile", **engine_option, **options)


def saturating_logits() -> np.ndarray:
    """Logits around 37, where a float64 sigmoid starts to round to exactly 1.0 (on half the classes; the
    others anywhere), and on the first 100 rows below -708.4, where it is a subnormal float."""
    rng = np.random.default_rng(0)
    z = rng.normal(36.0, 1.5, (20000, base.NUM_CLASSES))
    z[:, ::2] = rng.normal(0.0, 30.0, (20000, base.NUM_CLASSES // 2))
    z[:100] = rng.uniform(-709.7, -708.5, (100, base.NUM_CLASSES))
    return z


def config(
    backend: str,
    warmup_epochs: int = 0,
    xla: bool = False,
    device: str = "cpu",
    keras_backend: str = "tensorflow",
    compile: bool = False,
    **overrides,
) -> Config:
    return Config(
        backend=BackendConfig(
            name=backend,
            threads=1,
            warmup_epochs=warmup_epochs,
            xla=xla,
            keras_backend=keras_backend,
            compile=compile,
        ),
        device=DeviceConfig(device),
        # uniform(-1, 1) init: weights far from the optimum, so every test run visibly learns
        **{"dtype": "float64", "epochs": 20, "init": "uniform", "init_scale": 1.0, **overrides},
    )


@dataclasses.dataclass
class Run:
    curves: dict[str, np.ndarray]  # each of COLUMNS, one value per epoch
    result: base.FitResult


def fit(cfg: Config, stop: base.EpochCallback = lambda m: False, train: base.TrainData | None = None) -> Run:
    """Train with ``cfg``; ``on_epoch`` asks to stop when ``stop`` says so."""
    train = train or base.prepare(X_TRAIN, Y_TRAIN, X_TEST, Y_TEST, cfg.spec())
    history: list[base.EpochMetrics] = []

    def on_epoch(metrics: base.EpochMetrics) -> bool:
        history.append(metrics)
        return stop(metrics)

    result = get(cfg.backend.name).fit(train, cfg.spec(), on_epoch)
    assert [m.epoch for m in history] == list(range(1, result.epochs_run + 1))
    assert all(m.epoch_seconds > 0 for m in history)
    return Run({c: np.array([getattr(m, c) for m in history]) for c in COLUMNS}, result)


def assert_same_training(actual: Run, expected: Run, rtol: float = RTOL) -> None:
    for column in COLUMNS:
        np.testing.assert_allclose(actual.curves[column], expected.curves[column], rtol=rtol, err_msg=column)
    np.testing.assert_allclose(actual.result.weights, expected.result.weights, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(actual.result.bias, expected.result.bias, rtol=rtol, atol=rtol)
    assert actual.result.weights.dtype == expected.result.weights.dtype


def assert_learns(run: Run) -> None:
    """The case is not trivial: the train loss falls."""
    assert run.curves["train_loss"][-1] < 0.9 * run.curves["train_loss"][0]


# The summed weight gradient (grad_reduction=sum): the batch's row count times the mean one, 60, and 32 for
# the last batch of 512 = 8 x 60 + 32. Raw pixels make it large, hence the small learning rate and weights.
SUMMED_GRADIENT = {
    "normalize": False,
    "grad_reduction": "sum",
    "lr": 3e-9,
    "init_scale": 0.001,
    "batch_size": 60,
    "epochs": 3,
}
