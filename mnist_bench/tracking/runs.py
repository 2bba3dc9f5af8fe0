"""A run's lifecycle, with the final status ours to decide (whether one left RUNNING is alive: ``liveness``).

We use ``MlflowClient`` rather than the fluent ``mlflow.start_run``: the fluent API's exit hook
records a crash as FINISHED and SIGTERM leaves a run RUNNING. Here a run ends FINISHED only on
success, FAILED (with the error as a tag) on an exception, KILLED on Ctrl-C or SIGTERM; a run
whose process died without a word (SIGKILL, a lost node) is marked KILLED by ``liveness.reap``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from mnist_bench import machine
from mnist_bench.schema import RunStatus, Tag
from mnist_bench.tracking.liveness import HEARTBEAT_TIMEOUT_S, Heartbeat
from mnist_bench.tracking.patience import patience_spent, spend_patience, unreachable
from mnist_bench.tracking.store import TrackingError, error_line, store_failure
from mnist_bench.tracking.uris import redact

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

FINISHED, FAILED, KILLED = RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED
T = TypeVar("T")
_BATCH = 100  # MLflow's limit of params per log_batch call


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so the run is closed as KILLED."""


# MLflow's store looks for a dataset, then inserts it: jobs that start together can all miss it, and every
# insert but one breaks a unique key. Retried, the losers find the winner's row and link to it.
DATASET_RETRY_DELAYS_S = (0.2, 1.0)


def log_dataset(
    client: MlflowClient, run_id: str, name: str, source: str, checksums: Mapping[str, str], rows: Mapping[str, int]
) -> None:
    """The run's data as an MLflow dataset input, so the UI's Datasets column and filter show it: the digest
    is of the files' sha256s (one per dataset version), the profile holds the rows each split used."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    digest = hashlib.sha256(json.dumps(dict(checksums), sort_keys=True).encode()).hexdigest()[:16]
    dataset = Dataset(
        name=name,
        digest=digest,
        source_type="http" if "://" in source else "local",
        source=json.dumps({"uri": redact(source)}),
        profile=json.dumps({**{f"{split}_rows": n for split, n in rows.items()}, "sha256": dict(checksums)}),
    )
    inputs = [DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "train")])]
    retried(lambda: client.log_inputs(run_id, datasets=inputs), DATASET_RETRY_DELAYS_S)


# Set in a job's process by hydra/launcher=ray: the id of the Ray node it runs on.
RAY_NODE_ENV = "MNIST_BENCH_RAY_NODE"


def process_tags() -> dict[str, str]:
    """Who runs this, and where: lets the reaper tell a live run from one whose process is gone."""
    pid = os.getpid()
    tags = {
        Tag.HOST: machine.hostname(),
        Tag.PID: str(pid),
        Tag.PID_START: machine.process_start_ticks(pid) or "",
        Tag.PID_NAMESPACE: machine.pid_namespace(),
        Tag.HARNESS_VERSION: machine.harness_version(),
    }
    if node := os.environ.get(RAY_NODE_ENV):
        tags[Tag.RAY_NODE] = node
    return tags


# How long metrics given to ``TrackedRun.log`` may wait, between epochs, before they are stored.
FLUSH_INTERVAL_S = 1.0


@dataclass
class TrackedRun:
    """An open MLflow run. What ``log`` is given is stored in the thread that calls it, between epochs,
    never beside one: a store call in a background thread while an epoch was timed made that epoch 5-7%
    slower (it holds the GIL that a NumPy minibatch loop needs; docs/performance.md). To keep the store's
    cost small, metrics and tags wait and go in one ``log_batch`` once FLUSH_INTERVAL_S has passed since the
    last one (long epochs: every epoch, so MLflow's UI follows a run live) and at ``flush``, which the end
    of a run calls before its status is set. The run's heartbeat rides on those same calls (``liveness``)."""

    client: MlflowClient
    run_id: str
    heartbeat: Heartbeat = field(default_factory=Heartbeat)
    _metrics: list = field(default_factory=list)
    _tags: dict[str, str] = field(default_factory=dict)
    _last_flush: float = field(default_factory=time.monotonic)

    def log(self, metrics: Mapping[str, float], step: int = 0, tags: Mapping[str, str] | None = None) -> None:
        """Metrics at ``step``, and tags: stored now if the last store was FLUSH_INTERVAL_S ago, else later."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self._metrics += [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
        self._tags |= {k: str(v) for k, v in (tags or {}).items()}
        self.heartbeat.epoch_ended()
        if time.monotonic() - self._last_flush >= FLUSH_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        """Store everything ``log`` holds in one transaction; raises what the store raises."""
        metrics, tags, self._metrics, self._tags = self._metrics, self._tags | self.heartbeat.due(), [], {}
        self._store(metrics, tags)
        self._last_flush = time.monotonic()

    def beat_if_due(self) -> None:
        """A heartbeat alone, if one is due: for a run waiting its turn in a sweep's rounds."""
        self._store([], self.heartbeat.due())

    def _store(self, metrics: list, tags: Mapping[str, str]) -> None:
        """One ``log_batch`` of these metrics and tags, if there are any."""
        from mlflow.entities import RunTag

        if metrics or tags:
            self.client.log_batch(self.run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_artifacts(self, folder: Path) -> None:
        self.client.log_artifacts(self.run_id, str(folder))


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into an exception while a run is open (main thread only)."""

    def handler(signum: int, frame: object) -> None:
        raise Terminated(f"terminated by signal {signum}")

    if threading.current_thread() is not threading.main_thread():  # a cell in rounds: signals stay the sweep's
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:5000]


@contextlib.contextmanager
def tracked_run(
    client: MlflowClient,
    experiment_id: str,
    name: str,
    params: Mapping[str, object],
    tags: Mapping[str, str],
    parent_run_id: str | None = None,
    heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
) -> Iterator[TrackedRun]:
    """Open a run and close it with the status the harness decides, whatever happens inside; the run beats
    (``liveness``) until then, judged dead after a silence of ``heartbeat_timeout_s`` plus its longest epochs."""
    from mlflow.entities import Param

    heartbeat = Heartbeat(heartbeat_timeout_s)
    all_tags = {**tags, **process_tags(), **heartbeat.beat()}
    if parent_run_id:
        all_tags[Tag.PARENT] = parent_run_id
    run_id = client.create_run(experiment_id, run_name=name, tags=all_tags).info.run_id
    active = TrackedRun(client, run_id, heartbeat)
    status = FAILED
    try:
        items = [Param(k, str(v)) for k, v in params.items()]
        for start in range(0, len(items), _BATCH):
            client.log_batch(run_id, params=items[start : start + _BATCH])
        with sigterm_raises():
            yield active
        active.flush()  # the run is FINISHED only once all its metrics are stored
        status = FINISHED
    except (KeyboardInterrupt, Terminated) as err:
        status = KILLED
        client.set_tag(run_id, Tag.ERROR, error_text(err) if str(err) else "interrupted (Ctrl-C)")
        raise
    except SystemExit as err:
        status = FINISHED if err.code in (0, None) else FAILED
        raise
    except BaseException as err:
        if unreachable(err):  # the patience is spent: the error tag and the end status try once each
            spend_patience(client.tracking_uri)
        with contextlib.suppress(Exception):  # a store that fails here must not hide the run's own error
            client.set_tag(run_id, Tag.ERROR, error_text(err))
        raise
    finally:
        with contextlib.suppress(Exception):  # what was logged lands before the end status, as far as it can
            active.flush()
        close(client, run_id, status)


def retried(call: Callable[[], T], delays: Sequence[float]) -> T:
    """``call()``, and again after each delay while it raises; the last attempt's error propagates."""
    for delay in delays:
        try:
            return call()
        except Exception:
            time.sleep(delay)
    return call()


# After each failed attempt to end a run. An attempt on a locked SQLite store itself waits MLflow's 20 s busy
# timeout: at most about 90 s in all.
CLOSE_RETRY_DELAYS_S = (1.0, 2.0, 4.0)


def close(client: MlflowClient, run_id: str, status: str) -> None:
    """End a run with ``status``, retrying with bounded backoff while the store refuses (a lock held by
    another process, a server restarting). If it never accepts, a one-line TrackingError says so: the run
    stays RUNNING until ``mnist-bench reap`` (or the next sweep) finds its process gone and marks it KILLED."""
    delays = () if patience_spent(client.tracking_uri) else CLOSE_RETRY_DELAYS_S  # the server is given up
    try:
        retried(lambda: client.set_terminated(run_id, status), delays)
    except Exception as err:
        why = store_failure(err, client.tracking_uri) or error_line(err)
        raise TrackingError(
            f"run {run_id} could not be ended as {status} ({why}); "
            "once this process has exited and the store can be written again, mnist-bench reap marks it KILLED"
        ) from err


def find_finished(client: MlflowClient, experiment_id: str, config_hash: str) -> str | None:
    """The id of a FINISHED run with this config hash, if the experiment has one."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{Tag.CONFIG_HASH}` = '{config_hash}' and attributes.status = '{FINISHED}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def has_failed_child(client: MlflowClient, experiment_id: str, parent_run_id: str) -> bool:
    """Whether a job of this sweep has already failed (for fail_fast)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{Tag.PARENT}` = '{parent_run_id}' and attributes.status = '{FAILED}'",
        max_results=1,
    )
    return bool(runs)
