"""A backend's training, one epoch at a time on request: what lets a benchmark alternate backends epoch by
epoch (A B C A B C ...) so that a drift in the machine's speed hits them all alike, whatever each
backend's own training loop looks like."""

from __future__ import annotations

import threading

from mnist_bench.backends import base
from mnist_bench.config import TrainingSpec


class EpochStepper:
    """Runs ``backend.fit`` in a thread that halts after every epoch, so each ``step()`` runs exactly one
    epoch as the backend runs it (with the test-set evaluation it does after each) and returns the seconds
    the backend timed it at. The first epoch runs on creation, untimed: tracing, compiling, first touch of
    the data. ``cfg.epochs`` must cover the steps asked for."""

    def __init__(self, backend: base.Backend, train: base.TrainData, cfg: TrainingSpec) -> None:
        self.epoch_seconds: list[float] = []  # as the backend itself measured them
        self._go, self._done = threading.Semaphore(0), threading.Semaphore(0)
        self._stop, self._ended, self._error = False, False, None
        self._thread = threading.Thread(target=self._fit, args=(backend, train, cfg), daemon=True)
        self._thread.start()
        self._wait()

    def _fit(self, backend: base.Backend, train: base.TrainData, cfg: TrainingSpec) -> None:
        try:
            backend.fit(train, cfg, self._on_epoch)
        except BaseException as err:  # handed to the stepping thread by _wait
            self._error = err
        finally:
            self._ended = True
            self._done.release()

    def _on_epoch(self, metrics: base.EpochMetrics) -> bool:
        self.epoch_seconds.append(metrics.epoch_seconds)
        self._done.release()
        self._go.acquire()
        return self._stop

    def _wait(self) -> None:
        self._done.acquire()
        if self._error is not None:
            raise self._error
        if self._ended:
            raise RuntimeError("fit ended before the last step asked of it: raise cfg.epochs")

    def step(self) -> float:
        self._go.release()
        self._wait()
        return self.epoch_seconds[-1]

    def close(self) -> None:
        """Ends the fit after its current epoch and waits for its thread."""
        self._stop = True
        self._go.release()
        self._thread.join()
