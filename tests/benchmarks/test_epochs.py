"""One training epoch per backend x activation x batch plan on full MNIST, each round right after a fresh
roofline probe (``mnist_bench.roofline``, the one normaliser runs and ``mnist-bench bench`` use too), in the
same process under the same load: ``extra_info.roofline_floor_seconds`` holds the epoch floor each probe
gives. ``mnist-bench check --benchmark-json`` holds each epoch to a multiple of its floor, a ratio that
carries from one machine to another and means what a run's ``roofline_ratio`` means."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from needs import missing

from mnist_bench import backends, bench, roofline
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


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
@pytest.mark.parametrize(
    "name", ["numpy", "tf", "keras", "keras[jax]", "jax", "torch", "torch+compile", "keras[torch]"]
)
def test_epoch(benchmark, train_data: base.TrainData, name: str, activation: str, batch: str) -> None:
    backend = backend_or_skip(name)
    backend_config = dataclasses.replace(bench.backend_config(name, THREADS), warmup_epochs=0)
    spec = Config(backend=backend_config, activation=activation, batch_size=BATCHES[batch], epochs=100).spec()
    backend.resolve_device(spec)  # sets TF's thread pools before its runtime starts, as a run does
    time_epochs(
        benchmark,
        EpochStepper(backend, train_data, spec),
        lambda: roofline.measure(THREADS, repeats=1).epoch_floor_for(train_data.x_train),
        "roofline_floor_seconds",
    )


def time_epochs(
    benchmark, stepper: EpochStepper, before_each: Callable[[], float], key: str, rounds: int = ROUNDS
) -> None:
    """One epoch a round, ``before_each`` run right before every round (untimed by the benchmark) so that what
    it measures sits next to each epoch, kept in ``extra_info[key]`` beside the backend's own epoch timings."""
    measured: list[float] = []

    def setup() -> tuple[tuple, dict]:
        measured.append(before_each())
        return (), {}

    try:
        benchmark.pedantic(stepper.step, setup=setup, warmup_rounds=WARMUP, rounds=rounds)
    finally:
        stepper.close()
    benchmark.extra_info[key] = measured
    benchmark.extra_info["backend_epoch_seconds"] = stepper.epoch_seconds[1:]
