"""Every framework backend against NumPy on real MNIST images: the tutorial's rule with its ties, and
the benchmark's float32 setting. Each backend's case needs only its own framework installed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from needs import import_extra
from omegaconf import OmegaConf
from parity import assert_learns, config, fit

from mnist_bench import data
from mnist_bench.backends import base
from mnist_bench.config import Config, DatasetConfig
from mnist_bench.hydra_app import compose

FRAMEWORKS = {
    "tf": ("tensorflow", "tf"),
    "keras": ("tensorflow", "tf"),
    "jax": ("jax", "jax"),
    "torch": ("torch", "torch"),
}


@pytest.fixture(params=list(FRAMEWORKS))
def backend(request: pytest.FixtureRequest) -> str:
    """A framework backend whose framework is installed (skipped otherwise; a failure in CI)."""
    import_extra(*FRAMEWORKS[request.param])
    return request.param


def _train_data(dataset: data.Dataset, cfg: Config) -> base.TrainData:
    return base.prepare(dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, cfg.spec())


def test_seed_numpy_under_the_probabilities_rule_stops_at_the_same_epoch(
    backend: str, mnist_overrides: list[str]
) -> None:
    """The tutorial's NumPy model with its own rule on the first 5,000 MNIST images (seed 2 stops after about
    20 epochs there): the backend reports NumPy's train accuracy, tied fraction and test accuracy each
    epoch, to the image, so it stops at the same epoch."""
    runs = {}
    for name in ("numpy", backend):
        cfg = compose(
            "+experiment=seed_numpy",
            "predict_from=probabilities",
            "seed=2",
            "dataset.train_limit=5000",
            f"backend={name}",
            "backend.threads=1",
            "backend.warmup_epochs=0",
            *mnist_overrides,
        )
        train = _train_data(data.load(cfg.dataset), cfg)
        runs[name] = fit(cfg, lambda m, cfg=cfg: m.train_accuracy >= cfg.target_accuracy, train)
    expected, actual = runs["numpy"], runs[backend]
    assert expected.result.epochs_run < 100 and expected.curves["train_accuracy"][-1] >= 0.8
    assert expected.curves["tied_prediction_fraction"].min() > 0.05  # ties to break in every epoch
    assert actual.result.epochs_run == expected.result.epochs_run
    for column in ("train_accuracy", "tied_prediction_fraction", "test_accuracy"):
        np.testing.assert_array_equal(actual.curves[column], expected.curves[column], err_msg=column)


def test_real_mnist_slice_float32(backend: str, mnist_dir: Path, tmp_path: Path) -> None:
    """The benchmark's setting (float32) on the first 2000 MNIST images: losses and weights within 1e-4
    of NumPy's, accuracies within 2 images (float32 rounding can flip a near tie)."""
    yaml = OmegaConf.load(REPO / "conf" / "dataset" / "mnist.yaml")
    spec = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DatasetConfig), yaml))
    spec = dataclasses.replace(spec, cache_dir=str(tmp_path / "cache"), download=False, train_limit=2000)
    dataset = data.load(spec)
    runs = {}
    for name in ("numpy", backend):
        cfg = config(name, dtype="float32", activation="softmax", batch_size=128, epochs=3)
        runs[name] = fit(cfg, train=_train_data(dataset, cfg))
    expected, actual = runs["numpy"], runs[backend]
    assert_learns(expected)
    for column in ("train_loss", "test_loss"):
        np.testing.assert_allclose(actual.curves[column], expected.curves[column], rtol=1e-4, err_msg=column)
    for column, rows in (("train_accuracy", 2000), ("test_accuracy", 10000)):
        np.testing.assert_allclose(actual.curves[column], expected.curves[column], atol=2 / rows, err_msg=column)
    np.testing.assert_allclose(actual.result.weights, expected.result.weights, rtol=1e-4, atol=1e-5)
    assert actual.result.weights.dtype == np.float32
