"""The hand-written same-work epochs a backend's minibatch epoch is held to (issue 36): one short file per
framework in a checkout's tests/benchmarks/peers/ (``<backend>_peer.py``; see its __init__.py), loaded by
path, so that ``mnist-bench bench`` and the benchmark suite time the same files a reviewer reads. An
installed package has no peers; Keras has none either: ``model.fit`` is itself the framework's idiom.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from mnist_bench import backends
from mnist_bench.backends import base

PEER_DIR = Path(__file__).resolve().parent.parent / "tests" / "benchmarks" / "peers"


def peer_file(label: str) -> Path | None:
    """The peer of the backend a label names (``tf+xla``: tf's, compiled with XLA), or None where it has none."""
    path = PEER_DIR / f"{backends.split_label(label)[0]}_peer.py"
    return path if path.is_file() else None


def create(label: str, train: base.TrainData, batch_size: int, lr: float) -> object:
    """The peer of the backend ``label`` names, holding zero weights, ready to train on ``train``."""
    path = peer_file(label)
    if path is None:
        raise ValueError(f"backend {label} has no peer in {PEER_DIR}")
    spec = importlib.util.spec_from_file_location(f"mnist_bench_peer_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    compiler = backends.split_label(label)[2]  # tf+xla: xla=True; torch+compile: compile=True
    options = {compiler: True} if compiler else {}
    return module.Peer(train.x_train, train.y_train, batch_size, lr, **options)


class PeerStepper:
    """A peer's epochs, one per ``step()``, timed as a backend times its own minibatch epoch, plus the
    epoch's shuffle: a permutation, the training, and the mean loss and accuracy read back (which waits for
    the framework). The first epoch runs on creation, untimed (tracing, compiling), as EpochStepper's does."""

    def __init__(self, label: str, train: base.TrainData, batch_size: int, lr: float, threads: int | None) -> None:
        self._threads, self._rows = threads, len(train.x_train)
        self._rng = np.random.default_rng(0)
        with threadpool_limits(limits=threads, user_api="blas"):
            self.peer = create(label, train, batch_size, lr)
        self.step()

    def step(self) -> float:
        with threadpool_limits(limits=self._threads, user_api="blas"):
            start = time.perf_counter()
            self.peer.epoch(self._rng.permutation(self._rows))
            return time.perf_counter() - start
