"""One training epoch per backend x activation x batch plan on full MNIST, each round right after its
calibration: the bare matrix products of the same epoch, timed in the same process under the same load
(``extra_info.calibration_seconds``). ``mnist-bench check --benchmark-json`` holds each epoch to a multiple
of its calibration, a ratio that carries from one machine to another."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np
import pytest
from needs import missing
from threadpoolctl import threadpool_limits

from mnist_bench import backends, bench
from mnist_bench.backends import base
from mnist_bench.config import Config
from mnist_bench.stepper import EpochStepper

from .conftest import THREADS

WARMUP, ROUNDS = 1, 3
BATCHES = {"full": None, "b128": 128}


def backend_or_skip(label: str) -> base.Backend:
    """The backend a label names (``keras[jax]``: Keras on JAX); a missing extra skips (fails in CI)."""
    if why := backends.unavailable(label):
        missing(why)
    return backends.get(backends.split_label(label)[0])


def bare_products(x: np.ndarray, batch_size: int) -> Callable[[], None]:
    """One epoch's matrix products and nothing else: per batch of contiguous rows, the forward ``x @ W``
    and the weight gradient ``dz.T @ x`` (the faster of its two forms in OpenBLAS). No epoch of the linear
    model can do less work."""
    weights = np.zeros((x.shape[1], base.NUM_CLASSES), x.dtype)
    dz = np.zeros((batch_size, base.NUM_CLASSES), x.dtype)

    def epoch() -> None:
        for start in range(0, len(x), batch_size):
            rows = x[start : start + batch_size]
            rows @ weights
            dz[: len(rows)].T @ rows

    return epoch


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
@pytest.mark.parametrize("name", ["numpy", "tf", "keras", "keras[jax]", "jax"])
def test_epoch(benchmark, train_data: base.TrainData, name: str, activation: str, batch: str) -> None:
    backend = backend_or_skip(name)
    backend_config = dataclasses.replace(bench.backend_config(name, THREADS), warmup_epochs=0)
    cfg = Config(backend=backend_config, activation=activation, batch_size=BATCHES[batch], epochs=100)
    backend.resolve_device(cfg)  # sets TF's thread pools before its runtime starts, as a run does
    products = bare_products(train_data.x_train, BATCHES[batch] or len(train_data.x_train))
    calibration: list[float] = []

    def calibrate() -> tuple[tuple, dict]:
        """Runs (untimed by the benchmark) before every round, so each epoch has a calibration next to it."""
        with threadpool_limits(limits=THREADS, user_api="blas"):
            start = time.perf_counter()
            products()
            calibration.append(time.perf_counter() - start)
        return (), {}

    stepper = EpochStepper(backend, train_data, cfg)
    try:
        benchmark.pedantic(stepper.step, setup=calibrate, warmup_rounds=WARMUP, rounds=ROUNDS)
    finally:
        stepper.close()
    benchmark.extra_info["calibration_seconds"] = calibration
    benchmark.extra_info["backend_epoch_seconds"] = stepper.epoch_seconds[1:]
