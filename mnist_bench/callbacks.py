"""The observers of a training run, in Keras's shape: each sees every epoch's numbers through ``on_epoch_end``
and may ask to stop; ``Callbacks`` composes them into the one epoch callback a backend's ``fit`` calls.

Each has one job: ``History`` keeps the epochs and their training seconds, ``MetricLogger`` sends them to
the run, ``ProgressBar`` draws them, ``StopOnDivergence`` and ``StopAtTarget`` decide when to stop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mnist_bench.backends.base import EpochMetrics
from mnist_bench.schema import EPOCH_METRICS
from mnist_bench.tracking import TrackedRun


class Callback(Protocol):
    def on_epoch_end(self, epoch: EpochMetrics) -> bool:
        """Sees one finished epoch; True asks the training to stop after it."""
        ...


@dataclass
class History:
    """Every epoch so far, and the training seconds they add up to."""

    epochs: list[EpochMetrics] = field(default_factory=list)
    train_seconds: float = 0.0

    def on_epoch_end(self, epoch: EpochMetrics) -> bool:
        self.epochs.append(epoch)
        self.train_seconds += epoch.epoch_seconds
        return False


@dataclass
class MetricLogger:
    """Each epoch's numbers, with its CPU time where measured, as the run's per-epoch metrics (step = epoch);
    the run decides when to store them."""

    run: TrackedRun

    def on_epoch_end(self, epoch: EpochMetrics) -> bool:
        numbers = {name: getattr(epoch, name) for name in EPOCH_METRICS}
        self.run.log(numbers | epoch.cpu_metrics(), step=epoch.epoch)
        return False


@dataclass
class ProgressBar:
    """A tqdm bar, one step an epoch, showing the loss and the test accuracy."""

    bar: Any

    def on_epoch_end(self, epoch: EpochMetrics) -> bool:
        self.bar.set_postfix(loss=f"{epoch.train_loss:.4g}", test_acc=f"{epoch.test_accuracy:.4f}", refresh=False)
        self.bar.update(1)
        return False


@dataclass
class StopOnDivergence:
    """Stops once a loss is NaN or infinite: the run is then FINISHED, tagged diverged."""

    diverged: bool = False

    def on_epoch_end(self, epoch: EpochMetrics) -> bool:
        self.diverged = self.diverged or not (math.isfinite(epoch.train_loss) and math.isfinite(epoch.test_loss))
        return self.diverged


@dataclass
class StopAtTarget:
    """Notes the training seconds to the first epoch whose ``metric`` reaches ``target``; stops there if told."""

    history: History
    target: float | None
    metric: str
    stop: bool
    seconds_to_target: float | None = None

    def on_epoch_end(self, epoch: EpochMetrics) -> bool:
        if self.target is not None and self.seconds_to_target is None and getattr(epoch, self.metric) >= self.target:
            self.seconds_to_target = self.history.train_seconds
        return self.stop and self.seconds_to_target is not None


@dataclass
class Callbacks:
    """The run's callbacks as the one epoch callback ``fit`` takes, with the three whose findings the run's
    summary reads. Every callback sees every epoch, in order; training stops if any asks it to."""

    history: History
    divergence: StopOnDivergence
    target: StopAtTarget
    others: Sequence[Callback] = ()

    def __call__(self, epoch: EpochMetrics) -> bool:
        # History first, so that StopAtTarget's seconds include this epoch; a diverged epoch is never counted
        # as reaching the target.
        stops = [callback.on_epoch_end(epoch) for callback in (self.history, *self.others, self.divergence)]
        return any(stops) or self.target.on_epoch_end(epoch)
