"""Each backend's minibatch epoch beside its hand-written same-work peer (tests/benchmarks/peers/, issue 36):
the issue's setting (softmax, batch 256, lr 0.5, zero init, float32, pixels / 255, one thread), the peer's
epoch run right before each round (``extra_info.peer_epoch_seconds``), so both see the same load.
``mnist-bench check --benchmark-json`` holds the backend's fastest round to a multiple of the peer's fastest
(denominator ``peer`` in conf/thresholds.yaml): a regression in our loop fails CI."""

from __future__ import annotations

import dataclasses

import pytest

from mnist_bench import bench, peers
from mnist_bench.backends import base
from mnist_bench.config import Config
from mnist_bench.stepper import EpochStepper

from .conftest import THREADS
from .test_epochs import backend_or_skip, time_epochs

ROUNDS = 7  # fastest of 7: at load 7-17, 5 rounds put NumPy at 0.99 and 1.25 of its peer
BATCH_SIZE, LR = 256, 0.5


@pytest.mark.parametrize("name", ["numpy", "tf", "jax", "torch"])
def test_epoch_over_peer(benchmark, train_data: base.TrainData, name: str) -> None:
    backend = backend_or_skip(name)
    backend_config = dataclasses.replace(bench.backend_config(name, THREADS), warmup_epochs=0)
    options = {"activation": "softmax", "batch_size": BATCH_SIZE, "lr": LR, "init": "zeros", "epochs": 100}
    spec = Config(backend=backend_config, **options).spec()
    backend.resolve_device(spec)  # sets TF's thread pools before its runtime starts, as a run does
    peer = peers.PeerStepper(name, train_data, BATCH_SIZE, LR, THREADS)
    time_epochs(benchmark, EpochStepper(backend, train_data, spec), peer.step, "peer_epoch_seconds", ROUNDS)
