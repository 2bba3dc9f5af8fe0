"""One job: config -> data -> backend.fit (each epoch out through a callback) -> MLflow.

Everything that can be wrong with the input (config values, missing backend, no GPU, data files,
tracking store) is checked before the MLflow run is created, so bad input never leaves a run.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mnist_bench import artifacts, data, machine, roofline, timing, tracking
from mnist_bench.backends import base, get, numpy_backend, ready
from mnist_bench.callbacks import Callbacks, History, MetricLogger, ProgressBar, StopAtTarget, StopOnDivergence
from mnist_bench.config import Config, ConfigError, as_flat_dict, config_hash, is_data_provenance, run_name
from mnist_bench.rounds import Turn
from mnist_bench.schema import SYSTEM_METRIC_PREFIX, Metric, Tag

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

_first_job_started = False


def _startup_seconds() -> float | None:
    """For a process's first job, the seconds from the process's start to the job's (interpreter, imports,
    Hydra); None for its later jobs, which have no such cost, and where /proc cannot say."""
    global _first_job_started
    if _first_job_started:
        return None
    _first_job_started = True
    ticks = machine.process_start_ticks(os.getpid())
    if ticks is None:
        return None
    boot = time.time() - float(Path("/proc/uptime").read_text().split()[0])
    return time.time() - (boot + int(ticks) / os.sysconf("SC_CLK_TCK"))


def _taking_turns(
    callbacks: Callbacks, run: tracking.TrackedRun, turn: Turn, max_other_cpu_share: float
) -> base.EpochCallback:
    """The callbacks, with the round of each epoch logged beside them and the turn handed on after them."""

    def on_epoch(m: base.EpochMetrics) -> bool:
        run.log(system_metrics({"round": turn.round}), step=m.epoch)
        stop = callbacks(m)
        turn.next_epoch(m.epoch_other_cpu_share, max_other_cpu_share)
        return stop

    return on_epoch


def resolve_threads(cfg: Config, jobs_at_once: int) -> int:
    """Threads per job: as configured, else the cores shared among the jobs that run at once.

    NumPy and PyTorch (Keras on it too) minibatches get one thread: OpenBLAS's threading of small GEMMs
    costs more than it saves on 2 cores, and collapses under outside load (docs/performance.md has the
    figures); so does PyTorch's OpenMP pool, whose threads spin at each of a step's small ops (a 10,000-row
    epoch of batch 200 measured 15 s on 2 threads against 1.0 s on 1 at load 15).
    """
    if cfg.backend.threads:
        return cfg.backend.threads
    on_torch = cfg.backend.name == "torch" or cfg.backend.keras_backend == "torch"
    if (cfg.backend.name == "numpy" or on_torch) and cfg.batch_size is not None:
        return 1
    return max(1, machine.cpu_count() // max(1, jobs_at_once))


def with_threads(cfg: Config, jobs_at_once: int) -> Config:
    """The config with backend.threads resolved (resolve_threads): what a job trains with."""
    return replace(cfg, backend=replace(cfg.backend, threads=resolve_threads(cfg, jobs_at_once)))


def _progress_bar(cfg: Config, name: str, in_sweep: bool):
    show = cfg.progress == "bar" or (cfg.progress == "auto" and not in_sweep and sys.stderr.isatty())
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.epochs, desc=name, unit="epoch", leave=True)


# Null in a config, these name a value the run chose: the param is left out, where a tag holds the value.
_LEFT_OUT_WHEN_NULL = ("backend.threads", "sweep_name")


def run_params(cfg: Config, sweep_name: str | None) -> dict[str, str]:
    """A run's params: the config as given, without where it is logged or where its data came from (the
    dataset input holds that). No param says None where the run used a value: backend.threads null ("as
    many as fit") is left out, the THREADS tag holding the count used (a param "auto (2)" would split one
    setting by machine in compare); sweep_name is the run's sweep's name, and left out outside a sweep.

    The top-level keys (activation, lr, epochs, seed, ...) come first: MLflow's UI lists params as logged."""
    flat = as_flat_dict(cfg) | {"sweep_name": sweep_name}
    params = {
        k: tracking.redact(str(flat[k]))
        for k in sorted(flat, key=lambda k: "." in k)
        if not k.startswith("tracking.")
        and not is_data_provenance(k)
        and not (k in _LEFT_OUT_WHEN_NULL and flat[k] is None)
    }
    params["tracking.experiment"] = cfg.tracking.experiment
    return params


def run_tags(cfg: Config, cell_hash: str, device: str, device_name: str, sweep_name: str | None) -> dict[str, str]:
    """A run's tags as it opens: what it is, where it ran, and which sweep and cell it belongs to."""
    tags = {
        Tag.BACKEND: cfg.backend.name,
        Tag.ACTIVATION: cfg.activation,
        Tag.DATASET: cfg.dataset.name,
        Tag.DEVICE: device,
        Tag.DEVICE_NAME: device_name,
        Tag.GIT_COMMIT: machine.git_commit(),
        Tag.CPU_MODEL: machine.cpu_model(),
        Tag.CPU_COUNT: str(machine.cpu_count()),
        Tag.BLAS: machine.blas_library(),
        Tag.CONFIG_HASH: cell_hash,
        Tag.THREADS: str(cfg.backend.threads),  # as resolved: the backend.threads param is left out where null
    }
    if cfg.backend.name == "keras":
        tags[Tag.KERAS_BACKEND] = cfg.backend.keras_backend
    tags.update({Tag.VERSION_PREFIX + k: v for k, v in machine.package_versions().items()})
    if sweep_name:
        tags[Tag.SWEEP_NAME] = sweep_name
    return tags


def run(
    cfg: Config, launch_dir: Path, jobs_at_once: int = 1, parent_run_id: str | None = None, turn: Turn | None = None
) -> str | None:
    """Train and log one run; its id, or None when it was skipped. Raises on bad input before a run exists;
    a failure inside the run is recorded in MLflow (FAILED, error tag) and re-raised. With a ``turn``, the
    run trains in a sweep's rounds (mnist_bench.rounds): it hands the turn on after each epoch."""
    startup_seconds, wall_start = _startup_seconds(), time.time()
    name = run_name(cfg)
    in_sweep = parent_run_id is not None
    cell_hash = config_hash(cfg)
    given = cfg
    cfg = with_threads(cfg, jobs_at_once)
    spec = cfg.spec()

    uri = tracking.resolve_uri(cfg.tracking.uri, launch_dir)
    client, experiment_id = tracking.open_store(uri, cfg.tracking.experiment, cfg.tracking.patience_s)
    if cfg.resume:
        done = tracking.find_finished(client, experiment_id, cell_hash)
        if done:
            log.info("%s: skipped, already FINISHED as run %s (resume=false re-runs it)", name, done)
            return None
    if in_sweep and cfg.fail_fast and tracking.has_failed_child(client, experiment_id, parent_run_id):
        log.info("%s: skipped, an earlier job of this sweep failed and fail_fast=true", name)
        return None

    backend, device, device_name, import_seconds = ready(spec)
    train, data_source = _prepared(cfg)
    check_data_limits(cfg, len(train.x_train))
    settle_heap()

    sweep_name = tracking.job_sweep_name(client, parent_run_id) if parent_run_id else None
    params = run_params(given, sweep_name)
    tags = run_tags(cfg, cell_hash, device, device_name, sweep_name) | {
        Tag.DESCRIPTION: _description(cfg, train, device)
    }
    recording = Recording(
        fit=lambda callback: backend.fit(train, spec, callback),
        write_artifacts=lambda folder, fit: artifacts.write(folder, cfg, fit, train.x_test, train.y_test),
        score=lambda fit: numpy_backend.score(train, fit.weights, fit.bias, spec),
        rows={"train": len(train.x_train), "test": len(train.x_test)},
        n_features=train.n_features,
        device=device,
        data_source=data_source,
        turn=turn,
    )
    if turn is not None:
        tags[Tag.ROUNDS] = turn.session
    # The framework's first import in this process is start-up, not the job's: out of its wall time, into
    # its startup_seconds (with the process's own, for its first job).
    if startup_seconds is not None or import_seconds:
        startup_seconds = (startup_seconds or 0.0) + import_seconds
    wall_start += import_seconds
    return record(client, experiment_id, cfg, params, tags, parent_run_id, recording, startup_seconds, wall_start)


@dataclass(frozen=True)
class Recording:
    """What a run records beside its config: how it trains (``fit`` calls the epoch callback it is given),
    what it keeps, the data's size and source, and how the machine's conditions are probed while it trains."""

    fit: Callable[[base.EpochCallback], base.FitResult]
    write_artifacts: Callable[[Path, base.FitResult], None]
    score: Callable[[base.FitResult], base.WeightScores]  # the weights kept, on both splits: the final metrics
    rows: dict[str, int]  # rows of each split: "train" and "test"
    n_features: int
    device: str
    data_source: str
    probe: Callable[[], timing.ConditionsProbe] = timing.ConditionsProbe
    turn: Turn | None = None  # its turn in a sweep's rounds (mnist_bench.rounds): handed on after each epoch


def record(
    client: MlflowClient,
    experiment_id: str,
    cfg: Config,
    params: Mapping[str, str],
    tags: Mapping[str, str],
    parent_run_id: str | None,
    recording: Recording,
    startup_seconds: float | None = None,
    wall_start: float | None = None,
) -> str:
    """Train and record one MLflow run: its dataset input, each epoch through the callbacks, the summary, the
    closing tags and the artifacts; returns its id. The one way a run is recorded, by ``run`` and by the
    report's tests alike (with scripted epochs), so that the two cannot drift apart."""
    wall_start = time.time() if wall_start is None else wall_start
    name = run_name(cfg)
    beat_timeout_s = cfg.tracking.heartbeat_timeout_s
    with tracking.tracked_run(client, experiment_id, name, params, tags, parent_run_id, beat_timeout_s) as active:
        files = ("train_images", "train_labels", "test_images", "test_labels")
        checksums = {file: getattr(cfg.dataset, file).sha256 for file in files}
        tracking.log_dataset(client, active.run_id, cfg.dataset.name, recording.data_source, checksums, recording.rows)
        bar = _progress_bar(cfg, name, in_sweep=parent_run_id is not None)
        history = History()
        target = StopAtTarget(history, cfg.target_accuracy, cfg.target_metric, cfg.stop_at_target)
        shown = [ProgressBar(bar)] if bar is not None else []
        callbacks = Callbacks(history, StopOnDivergence(), target, [MetricLogger(active), *shown])
        probe = recording.probe()
        turn = recording.turn
        if turn is not None:
            turn.keep_alive = active.beat_if_due
        try:
            fit = recording.fit(
                callbacks if turn is None else _taking_turns(callbacks, active, turn, cfg.timing.max_other_cpu_share)
            )
        finally:
            if bar is not None:
                bar.close()
        conditions = probe.finish([m.epoch_seconds for m in history.epochs])
        unstable = timing.unstable_reasons(conditions, cfg.timing)
        shape = (recording.rows["train"], recording.n_features)
        kept = recording.score(fit)  # untimed: what final_* say of weights.npz
        summary, closing_tags = run_summary(cfg, callbacks, fit, kept, recording.device, shape, conditions, unstable)
        with tempfile.TemporaryDirectory(prefix="mnist-bench-") as folder:
            recording.write_artifacts(Path(folder), fit)
            active.log_artifacts(Path(folder))
        # The job, from its start to its artifacts stored, less its waits for its turns in rounds; a process's
        # first job also has its start-up.
        clock = {"wall_seconds": time.time() - wall_start - (turn.waited_seconds if turn is not None else 0.0)}
        if startup_seconds is not None:
            clock["startup_seconds"] = startup_seconds
        active.log(summary | system_metrics(clock), tags=closing_tags)  # one transaction for the store
        log.info(
            "%s: %s after %d epochs, test accuracy %.4f, %.3f s/epoch (median of the timed epochs)%s",
            name,
            "DIVERGED" if callbacks.divergence.diverged else "FINISHED",
            fit.epochs_run,
            kept.test_accuracy,
            timing.seconds_per_epoch([m.epoch_seconds for m in history.epochs]),
            f"; timing unstable: {'; '.join(unstable)}" if unstable else "",
        )
    return active.run_id


def prepare_process(backends: Sequence[str], cfg: Config, uri: str) -> int:
    """What a job's process pays once, before its first job: the backends' and the store's imports (seconds
    each) and the arrays of ``cfg``'s data. Returns the process's id. A parallel launcher's workers run this
    while the sweep's own process is still setting up, so that none of it falls in their first jobs."""
    for name in backends:
        get(name)
    tracking.import_store(uri)
    _prepared(cfg)
    settle_heap()
    return os.getpid()


_heap_settled = False


def settle_heap() -> None:
    """Once a process has its modules, store and arrays, which live as long as it does: collect once, then
    freeze all of it out of the garbage collector's reach (gc.freeze). A full collection walked the ~290,000
    objects of MLflow, SQLAlchemy and Hydra in 0.3 s, which loky's workers paid after nearly every job (they
    collect when a job ends), every process paid at exit, and one could pay inside a timed epoch."""
    global _heap_settled
    if not _heap_settled:
        gc.collect()
        gc.freeze()
        _heap_settled = True


_last_prepared: tuple[str, base.TrainData, str] | None = None


def _prepared(cfg: Config) -> tuple[base.TrainData, str]:
    """The run's model-ready arrays, and where the data was found. Consecutive jobs of a sweep in one process
    (the basic launcher, a reused joblib worker) share them, rather than cast full MNIST every job. One set
    is kept, so memory stays that of one run; the arrays are read-only, so no backend can change what the
    next job gets."""
    global _last_prepared
    key = json.dumps([asdict(cfg.dataset), cfg.dtype, cfg.normalize], sort_keys=True)
    if _last_prepared is None or _last_prepared[0] != key:
        _last_prepared = None  # the old arrays can go before the new ones are made
        dataset = data.load(cfg.dataset)
        train = base.prepare(dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, cfg.spec())
        for array in (train.x_train, train.y_train, train.x_test, train.y_test):
            array.flags.writeable = False
        _last_prepared = (key, train, dataset.source)
    return _last_prepared[1], _last_prepared[2]


def _description(cfg: Config, train: base.TrainData, device: str) -> str:
    """One line for the run's page in MLflow's UI: what was trained, on what, how."""
    batch = f"batches of {cfg.batch_size}" if cfg.batch_size else "full-batch GD"
    epochs = f"{cfg.epochs} epoch" + "s" * (cfg.epochs != 1)
    return (
        f"{cfg.backend.name} {cfg.activation} model on {cfg.dataset.name} ({len(train.x_train):,} train /"
        f" {len(train.x_test):,} test images, {cfg.dtype}, {device}): {batch}, lr {cfg.lr:g}, {epochs}, seed {cfg.seed}"
    )


def check_data_limits(cfg: Config, n_train: int) -> None:
    """The limits only known with the training set's size: a batch no larger than it, and the update cap
    (base.MAX_UPDATES). Checked before any run: a sweep checks every cell's before its first job."""
    if cfg.batch_size is not None and cfg.batch_size > n_train:
        limit = f" (dataset.train_limit={cfg.dataset.train_limit})" if cfg.dataset.train_limit else ""
        raise ConfigError(
            f"batch_size={cfg.batch_size} is not allowed: the training set has {n_train} images{limit}; "
            f"batch_size must be an integer <= {n_train} or null (full batch)"
        )
    base.check_updates(cfg.epochs, base.batch_plan(cfg.spec(), n_train)[1])


def train_rows(cfg: Config) -> int:
    """How many training images a run of ``cfg`` uses: its data found (downloaded, verified) and sliced."""
    return len(data.load(cfg.dataset).x_train)


def system_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """How a run was measured, under MLflow's system prefix: its UI shows them apart from the results."""
    return {SYSTEM_METRIC_PREFIX + key: value for key, value in metrics.items()}


def run_summary(
    cfg: Config,
    callbacks: Callbacks,
    fit: base.FitResult,
    kept: base.WeightScores,
    device: str,
    train_shape: tuple[int, int],
    conditions: timing.Conditions,
    unstable: list[str],
) -> tuple[dict[str, float], dict[str, str]]:
    """The run's summary metrics (results, and how they were measured) and closing tags, derived from the
    epochs its callbacks saw; the final accuracies are ``kept``'s, the weights the run stores."""
    n_train, n_features = train_shape
    epochs, train_seconds = callbacks.history.epochs, callbacks.history.train_seconds
    epoch_seconds = timing.seconds_per_epoch([m.epoch_seconds for m in epochs])
    finite = [a for a in (*(m.test_accuracy for m in epochs), kept.test_accuracy) if math.isfinite(a)]
    summary = {
        Metric.FINAL_TEST_ACCURACY: kept.test_accuracy,
        Metric.FINAL_TRAIN_ACCURACY: kept.train_accuracy,
        Metric.BEST_TEST_ACCURACY: max(finite) if finite else float("nan"),
        Metric.EPOCHS_RUN: fit.epochs_run,
        Metric.TRAIN_SECONDS: train_seconds,
        Metric.SECONDS_PER_EPOCH: epoch_seconds,
        Metric.SAMPLES_PER_SECOND: n_train / epoch_seconds if epoch_seconds else 0.0,  # at seconds_per_epoch
    }
    system = {
        "timing_stable": float(not unstable),
        **conditions.metrics(),
        "warmup_seconds": fit.warmup_seconds,
        "peak_rss_mb": machine.peak_rss_mb(),
    }
    if callbacks.target.seconds_to_target is not None:
        summary[Metric.TIME_TO_TARGET_SECONDS] = callbacks.target.seconds_to_target
    tags = {Tag.DIVERGED: str(callbacks.divergence.diverged).lower()}
    if device == "cpu":  # how far from what this machine can do (see mnist_bench.roofline)
        roof = roofline.cached(cfg.backend.threads)
        floor = roof.epoch_floor_seconds(n_train, n_features, np.dtype(cfg.dtype).itemsize)
        summary[Metric.ROOFLINE_RATIO] = epoch_seconds / floor
        # facts of the machine, not results of the run: tags, so they add no chart to every run's page
        tags |= {
            Tag.ROOFLINE_FLOOR_SECONDS: f"{floor:.4g}",
            Tag.ROOFLINE_READ_GB_PER_S: f"{roof.read_gb_per_s:.3g}",
            Tag.ROOFLINE_SGEMM_GFLOP_PER_S: f"{roof.sgemm_gflop_per_s:.3g}",
        }
    if unstable:
        tags[Tag.TIMING_UNSTABLE] = "; ".join(unstable)
    return summary | system_metrics(system), tags
