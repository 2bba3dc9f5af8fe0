"""What a run and a sweep look like in MLflow: every tag name, every status, and a param's comparable value.

The job runner writes this schema and the read-side tools (report, check, the sweep's summary) read it:
a tag or status is named here once and nowhere else.
"""

from __future__ import annotations

import contextlib
import enum
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.entities import Run

PREFIX = "mnist_bench."  # the harness's own bookkeeping tags
# Metrics of how a run was measured (load, steal, memory, the harness's own seconds), not of the model:
# MLflow's UI shows metrics under this prefix in a run's "System metrics" tab, apart from the results.
SYSTEM_METRIC_PREFIX = "system/"


def metric_name(key: str) -> str:
    """A logged metric's name as the readers know it, for runs logged with or without the system prefix."""
    return key.removeprefix(SYSTEM_METRIC_PREFIX)


class Metric:
    """Metric names: those logged every epoch (step = epoch), then a run's summary, the results a user compares.
    How a run was measured is logged under SYSTEM_METRIC_PREFIX (see experiment.system_metrics)."""

    TRAIN_LOSS = "train_loss"
    TRAIN_ACCURACY = "train_accuracy"
    TIED_PREDICTION_FRACTION = "tied_prediction_fraction"
    TEST_LOSS = "test_loss"
    TEST_ACCURACY = "test_accuracy"
    EPOCH_SECONDS = "epoch_seconds"
    FINAL_TEST_ACCURACY = "final_test_accuracy"
    FINAL_TRAIN_ACCURACY = "final_train_accuracy"
    BEST_TEST_ACCURACY = "best_test_accuracy"
    EPOCHS_RUN = "epochs_run"
    TRAIN_SECONDS = "train_seconds"
    SECONDS_PER_EPOCH = "seconds_per_epoch"
    SAMPLES_PER_SECOND = "samples_per_second"
    TIME_TO_TARGET_SECONDS = "time_to_target_seconds"
    ROOFLINE_RATIO = "roofline_ratio"


# Every epoch's metrics, as backends.base.EpochMetrics names its fields.
EPOCH_METRICS = (
    Metric.TRAIN_LOSS,
    Metric.TRAIN_ACCURACY,
    Metric.TIED_PREDICTION_FRACTION,
    Metric.TEST_LOSS,
    Metric.TEST_ACCURACY,
    Metric.EPOCH_SECONDS,
)


class Tag:
    """Tag names. The plain ones are what a user filters on in MLflow's UI; the prefixed ones are bookkeeping."""

    PARENT = "mlflow.parentRunId"  # MLflow's own: nests a job under its sweep's parent run
    DESCRIPTION = "mlflow.note.content"  # MLflow's own: the run's description in its UI
    SHARED_VIEW = "mlflow.sharedViewState."  # MLflow's own, on an experiment: + a key, a runs-page view a link names
    BACKEND = "backend"
    KERAS_BACKEND = "keras_backend"  # keras runs only: the engine Keras ran on (tensorflow or jax)
    ACTIVATION = "activation"
    DATASET = "dataset"
    DEVICE = "device"  # the device actually used: device=auto resolves to cpu or gpu
    DEVICE_NAME = "device_name"
    GIT_COMMIT = "git_commit"
    CPU_MODEL = "cpu_model"
    CPU_COUNT = "cpu_count"
    BLAS = "blas"
    THREADS = "backend.threads"  # as resolved for this job (config: null = cores / parallel jobs)
    ROOFLINE_FLOOR_SECONDS = "roofline.floor_seconds"  # CPU runs: the epoch floor roofline_ratio divides by
    ROOFLINE_READ_GB_PER_S = "roofline.read_gb_per_s"  # the machine's probed memory read bandwidth
    ROOFLINE_SGEMM_GFLOP_PER_S = "roofline.sgemm_gflop_per_s"  # and its probed peak sgemm
    DIVERGED = "diverged"  # "true" when a loss became NaN or infinite
    TIMING_UNSTABLE = "timing_unstable"  # why a run's timings cannot be trusted (mnist_bench.timing)
    SWEEP_NAME = "sweep_name"  # on a sweep's parent and each of its jobs
    VERSION_PREFIX = "version."  # version.numpy, version.mlflow, ...
    KIND = PREFIX + "kind"  # "sweep" on a sweep's parent run
    CONFIG_HASH = PREFIX + "config_hash"  # what resume matches a job by (config.config_hash)
    ERROR = PREFIX + "error"  # why a run FAILED or was KILLED
    ROUNDS = PREFIX + "rounds"  # the rounds a sweep's job trained in (mnist_bench.rounds): same value, paired
    SWEEP_DIR = PREFIX + "sweep_dir"  # the sweep's output folder: a job finds its parent by it
    CELLS_DIGEST = PREFIX + "cells_digest"  # on a sweep's parent: its cells' config hashes, hashed (any order)
    HOST = PREFIX + "host"  # host, pid and pid_start let the reaper tell a live run from a dead one
    PID = PREFIX + "pid"
    PID_START = PREFIX + "pid_start"
    PID_NAMESPACE = PREFIX + "pid_namespace"  # where the pid means this process: the reaper trusts it only there
    HEARTBEAT = PREFIX + "heartbeat"  # the wall-clock time (unix seconds) of the run's last beat
    HEARTBEAT_TIMEOUT_S = PREFIX + "heartbeat_timeout_s"  # how long a silence after that beat is still alive
    RAY_NODE = "ray_node"  # the id of the Ray node a job of hydra/launcher=ray ran on
    HARNESS_VERSION = PREFIX + "version"


class SweepParam:
    """Params a sweep's parent run adds to those of a job (a job's params are its config, flattened)."""

    SWEEP_OVERRIDES = "sweep.overrides"  # the sweep's command line, redacted
    SWEEP_CELLS = "sweep.cells"  # how many cells it planned


KIND_SWEEP = "sweep"
CELLS_ARTIFACT = "sweep_cells.json"  # on a sweep's parent: the cells it set out to run
CONFUSION_ARTIFACT = "confusion_matrix.csv"  # on every finished run: its test-set confusion matrix
PREDICTIONS_ARTIFACT = "test_predictions.csv"  # on every finished run: each test image's label and predicted class


class RunStatus:
    """MLflow's terminal run statuses, as the harness sets them (tracking.tracked_run decides which)."""

    RUNNING, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"


class Status(str, enum.Enum):
    """How a cell of a sweep ended, as the summary, the report and check show it."""

    FINISHED = "finished"
    DIVERGED = "diverged"  # finished, but its loss became NaN or infinite: a property of the config
    FAILED = "failed"
    KILLED = "killed"
    RUNNING = "running"  # still open: its process is alive, or it died and has not been reaped yet
    SKIPPED = "skipped"  # resume found an earlier FINISHED run of the same config and reused it
    MISSING = "missing"  # never started

    @property
    def is_failure(self) -> bool:
        """Whether a sweep with a cell in this state has failed (a cell left RUNNING at the end has)."""
        return self in (Status.FAILED, Status.KILLED, Status.RUNNING, Status.MISSING)

    @property
    def counts(self) -> bool:
        """The one rule for which runs the report's means, check's thresholds and compare use: finished runs.
        A diverged run (its losses NaN) is listed as a problem instead; failed, killed and running runs never
        count."""
        return self is Status.FINISHED


def status_of(run: Run) -> Status:
    """A run's status in the cell vocabulary: MLflow's, with DIVERGED for a finished run that diverged."""
    status = Status(run.info.status.lower()) if run.info.status != "SCHEDULED" else Status.RUNNING
    if status is Status.FINISHED and run.data.tags.get(Tag.DIVERGED) == "true":
        return Status.DIVERGED
    return status


COUNTED = frozenset(status.value for status in Status if status.counts)  # status_of's values that count


def counted(run: Run) -> bool:
    """Whether a run's numbers count (Status.counts)."""
    return status_of(run).counts


@dataclass
class Cell:
    """One point of a sweep's grid, as stored in the parent's CELLS_ARTIFACT."""

    overrides: list[str]
    config_hash: str
    name: str


def flatten(node: dict, prefix: str = "") -> dict[str, object]:
    """A nested config as dotted keys (``backend.name``): how params are named."""
    flat: dict[str, object] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def normalise(value: object) -> str:
    """A param value in comparable form (MLflow stores str(value)): 0.1, 0.10 and 1e-1 are one number,
    True/true one word, and None/null one word."""
    text = str(value).strip().lower()
    with contextlib.suppress(ValueError):
        number = float(text)
        if math.isfinite(number):
            return repr(number)
    return "none" if text == "null" else text
