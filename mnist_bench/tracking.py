"""Everything MLflow: the store, runs whose final status we own, tags, metrics, artifacts, reaping.

We use ``MlflowClient`` rather than the fluent ``mlflow.start_run``: the fluent API's exit hook
records a crash as FINISHED and SIGTERM leaves a run RUNNING. Here a run ends FINISHED only on
success, FAILED (with the error as a tag) on an exception, KILLED on Ctrl-C or SIGTERM; a run
whose process died without a word (SIGKILL) is marked KILLED by ``reap``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import signal
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from filelock import FileLock

from mnist_bench import machine
from mnist_bench.config import SERVER_PATIENCE_S
from mnist_bench.errors import UserError
from mnist_bench.schema import CELLS_ARTIFACT, KIND_SWEEP, Cell, RunStatus, Status, SweepParam, Tag, status_of

if TYPE_CHECKING:  # mlflow is imported where a store is opened: bad input is reported without its ~3 s import
    from mlflow.entities import Experiment, Run
    from mlflow.tracking import MlflowClient

FINISHED, FAILED, KILLED = RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED
T = TypeVar("T")
_BATCH = 100  # MLflow's limit of params per log_batch call
SEARCH_LIMIT = 50000  # the SQL store's limit for one search: every query of a sweep's runs uses it


class TrackingError(UserError, RuntimeError):
    """The tracking store cannot be used; raised before any training starts."""


SQLITE = "sqlite:///"


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so the run is closed as KILLED."""


def resolve_uri(uri: str | None, launch_dir: Path) -> str:
    """The tracking URI to use, made absolute from the launch directory.

    Default: $MLFLOW_TRACKING_URI, else MLflow's own default ``sqlite:///mlflow.db`` in the
    directory the command was started from, so ``mlflow ui`` there shows the runs.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"{SQLITE}mlflow.db"
    if (path := _sqlite_path(uri)) is not None:
        query = uri.partition("?")[1:]
        return sqlite_uri((launch_dir / path).resolve()) + "".join(query)
    if "://" not in uri:  # a plain folder: MLflow's file store
        return str((launch_dir / uri).resolve())
    return uri


# A URL's user:password@ part, and the value of a query parameter that names a secret.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s'\"]*@")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pwd|secret|token|access_token|api_key|apikey|sslpassword)=)[^&;#\s'\"]*",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` (a URI, an override, a command line, a config file) with every URL's ``user:password@`` removed
    and every password or token query value replaced by ``***``: safe to print, log or store. The one
    redaction the harness applies to what it prints, logs as params and tags, and writes."""
    return _SECRET_QUERY.sub(r"\g<key>***", _USERINFO.sub(r"\g<scheme>", text))


def holds_password(uri: str) -> bool:
    """Whether a URI carries a password: in its ``user:password@`` part or as a password or token query value."""
    return urllib.parse.urlsplit(uri).password is not None or _SECRET_QUERY.search(uri) is not None


def sqlite_uri(path: Path) -> str:
    """The URI of the SQLite store at ``path``. SQLAlchemy ends the path at a ``?`` and unquotes ``%XX``, so
    those two are quoted: a folder named ``q?x`` or ``p%41`` stays the store's folder. Nothing else is, since
    MLflow creates the store's folder from the URI's text as it stands (see open_store)."""
    return SQLITE + str(path).replace("%", "%25").replace("?", "%3F")


def _sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI (its query, if any, left out), or None for any other store."""
    if not uri.startswith(SQLITE):
        return None
    return Path(urllib.parse.unquote(uri.removeprefix(SQLITE).partition("?")[0]))


SERVER_NOTICE_EVERY_S = 10.0  # while a tracking server does not answer, say so this often at most
SERVER_ATTEMPT_S = 8  # one attempt of a call to a tracking server, at most: the first notice comes within 10 s


def is_server(uri: str) -> bool:
    """Whether the store is a tracking server (MLflow's REST API), not a database or a folder."""
    return uri.startswith(("http://", "https://"))


def bound_server_waits(uri: str, patience_s: float = SERVER_PATIENCE_S) -> None:
    """Keep each call to a tracking server within ``patience_s`` and say, in one line, when it does not answer.

    MLflow retries a call for about 4 minutes (7 retries, pauses from 2 s doubling, 120 s an attempt), and
    urllib3 logs every retry with its internals. Here the pauses (0, 2, 4, ... s) take at most half the
    patience and the attempts the other half. Set through MLflow's variables, which it reads at every call,
    so the workers this process starts inherit them."""
    if not is_server(uri):
        return
    retries = int(math.log2(patience_s / 2 + 2))  # the pauses add up to 2**retries - 2 s
    os.environ.update(
        MLFLOW_HTTP_REQUEST_MAX_RETRIES=str(retries),
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
        MLFLOW_HTTP_REQUEST_BACKOFF_JITTER="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT=str(max(1, min(SERVER_ATTEMPT_S, int(patience_s / 2 / (retries + 1))))),
    )
    retrying = logging.getLogger("urllib3.connectionpool")
    for old in [f for f in retrying.filters if isinstance(f, _ServerNotice)]:
        retrying.removeFilter(old)
    retrying.addFilter(_ServerNotice(redact(uri), patience_s))


# urllib3's line for each retry of a call; a sweep's record factory (hydra_app) has already formatted it.
_RETRYING = re.compile(r"Retrying \(.*?\) after connection broken by '(?P<error>.*)': \S*", re.DOTALL)


@dataclass
class _ServerNotice(logging.Filter):
    """urllib3's warning for each retry of a call, as one line of ours at most every SERVER_NOTICE_EVERY_S."""

    uri: str
    patience_s: float
    said_at: float = -math.inf

    def filter(self, record: logging.LogRecord) -> bool:
        retry = _RETRYING.fullmatch(record.getMessage())
        if retry is None:
            return True
        if time.monotonic() - self.said_at < SERVER_NOTICE_EVERY_S:
            return False
        self.said_at = time.monotonic()
        # NewConnectionError("HTTPConnection(...): Failed to establish a new connection: [Errno 111] Connection
        # refused") says "[Errno 111] Connection refused"; RemoteDisconnected('Remote end closed ...') its text.
        reason = re.sub(r"^\w+\(['\"]?|['\"]?\)$", "", retry["error"]).rsplit(": ", 1)[-1]
        record.msg = (
            f"tracking server {self.uri} is not answering ({reason}); "
            f"each call is tried for up to {self.patience_s:g} s (tracking.patience_s)"
        )
        record.args = ()
        return True


class _RaisedAnyway(logging.Filter):
    """MLflow's SQL store logs every database error with its traceback (a disk that fills gave 1,400 lines)
    and then raises it; the harness reports what was raised in one line, so the log record goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("SQLAlchemy database error.")


def _quiet_store_errors() -> None:
    store_log = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _RaisedAnyway) for f in store_log.filters):
        store_log.addFilter(_RaisedAnyway())


def _unreachable(err: BaseException) -> bool:
    """Whether a call failed because the tracking server did not answer (MLflow wraps requests' error)."""
    import requests

    return isinstance(err.__cause__ or err.__context__, requests.RequestException)


HEALTH_ATTEMPT_S = 10.0  # one request to a tracking server's /health
HEALTH_PATIENCE_S = 60.0  # how long a server that answers slowly is asked again before we give up


def check_reachable(uri: str, attempt_s: float = HEALTH_ATTEMPT_S, patience_s: float = HEALTH_PATIENCE_S) -> None:
    """Fail fast, before training, on an unwritable store path or a server that does not answer."""
    db = _sqlite_path(uri)
    if db is not None:
        target = db if db.exists() else db.parent
        if not target.is_dir() and not db.exists():
            raise TrackingError(
                f"tracking store {uri}: folder {db.parent} does not exist; create it or set tracking.uri"
            )
        if not os.access(target, os.W_OK):
            raise TrackingError(f"tracking store {uri} is not writable; choose a writable path with tracking.uri=")
        return
    if is_server(uri):
        _await_health(uri, attempt_s, patience_s)


def _await_health(uri: str, attempt_s: float, patience_s: float) -> None:
    """A refused connection or an unknown host fails at once. A timeout or a 5xx is asked again until
    patience runs out: a sweep's jobs all start at once, and on a few busy cores the server answers late."""
    url = uri.rstrip("/") + "/health"
    deadline = time.monotonic() + patience_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=attempt_s) as response:
                response.read()
            return
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            struggling = isinstance(reason, TimeoutError) or getattr(err, "code", 0) >= 500
            if not struggling or time.monotonic() >= deadline:
                raise TrackingError(
                    f"tracking server {redact(uri)} is unreachable ({reason}); start it or set tracking.uri="
                ) from err
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def _local_store(uri: str) -> Path | None:
    """The database file or folder of a local store; None for a tracking server."""
    if (db := _sqlite_path(uri)) is not None:
        return db
    if uri.startswith("file://") or "://" not in uri:
        return Path(uri.removeprefix("file://"))
    return None


def _store_lock(uri: str) -> contextlib.AbstractContextManager:
    """Held while MLflow opens a SQLite store: opening runs its schema creation and migrations, which
    race when two processes do it at once (jobs die, the file can become unopenable)."""
    db = _sqlite_path(uri)
    return FileLock(f"{db}.lock") if db is not None else contextlib.nullcontext()


def error_line(err: BaseException) -> str:
    """An error from MLflow, SQLAlchemy or the OS as part of one line: its type and its text, whitespace folded."""
    return f"{type(err).__name__}: {' '.join(str(err).split())[:300] or type(err).__name__}"


@contextlib.contextmanager
def _store_errors(uri: str) -> Iterator[None]:
    """What MLflow, SQLAlchemy or the OS raise when a store cannot be opened, as one TrackingError line."""
    try:
        yield
    except TrackingError:
        raise
    except Exception as err:
        raise TrackingError(
            store_failure(err, uri)
            or f"tracking store {redact(uri)} cannot be opened ({error_line(err)}); "
            "fix or move it, or choose another with tracking.uri= (or --tracking-uri)"
        ) from err


def open_store(uri: str, experiment: str, patience_s: float = SERVER_PATIENCE_S) -> tuple[MlflowClient, str]:
    """A client and the experiment's id, creating (and migrating) the store once, under a file lock.

    Parallel jobs that open a brand-new SQLite store at the same moment race in MLflow's schema
    creation; the lock makes the first one create it while the others wait. A tracking server's calls
    keep to ``patience_s`` each (bound_server_waits).
    """
    check_reachable(uri)
    bound_server_waits(uri, patience_s)
    _quiet_store_errors()
    from mlflow.tracking import MlflowClient

    with _store_lock(uri), _store_errors(uri), _no_stray_folder(uri):
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return client, _active(found, uri)
        # Artifacts beside the database, not in whatever directory the process happens to be in.
        db = _sqlite_path(uri)
        location = (db.parent / "mlruns").as_uri() if db is not None else None
        return client, client.create_experiment(experiment, artifact_location=location)


def import_store(uri: str) -> None:
    """Imports what opening this store needs (about 4 s of MLflow, and SQLAlchemy for a database) without
    opening it: a process can pay that ahead of its first job, and no store is touched before it is created."""
    from mlflow.tracking import MlflowClient  # noqa: F401

    if "://" in uri and not (is_server(uri) or uri.startswith("file:")):
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401


@contextlib.contextmanager
def _no_stray_folder(uri: str) -> Iterator[None]:
    """Removes the empty folder MLflow makes from a quoted sqlite URI's text ("q%3Fx" beside "q?x"): its
    _make_parent_dirs_if_sqlite does not unquote the path."""
    raw = Path(uri.removeprefix(SQLITE).partition("?")[0]).parent if uri.startswith(SQLITE) else None
    stray = raw is not None and raw != _sqlite_path(uri).parent and not raw.exists()
    try:
        yield
    finally:
        if stray and raw.is_dir() and not any(raw.iterdir()):
            raw.rmdir()


def open_existing(uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """A client and the id of an existing experiment, for the tools that read a store.

    Creates nothing, so a mistyped URI or experiment leaves no empty store behind; and it opens the
    store under open_store's lock, so reading while a sweep creates the store cannot corrupt it.
    """
    local = _local_store(uri)
    if local is not None and not local.exists():
        raise TrackingError(
            f"no tracking store at {redact(uri)}: run a sweep first, or pass --tracking-uri or set MLFLOW_TRACKING_URI"
        )
    check_reachable(uri)  # also: writable, since the readers log their results back
    bound_server_waits(uri)
    _quiet_store_errors()
    from mlflow.tracking import MlflowClient

    with _store_lock(uri), _store_errors(uri), _no_stray_folder(uri):
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise TrackingError(f"no experiment {experiment!r} in {redact(uri)} (experiments: {names}); pass --experiment")
    return client, _active(found, uri)


def _active(experiment: Experiment, uri: str) -> str:
    """The id of an experiment that is not deleted (MLflow refuses runs in a deleted one, with a traceback)."""
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"experiment {experiment.name!r} in {redact(uri)} is deleted: restore it (MLFLOW_TRACKING_URI={redact(uri)}"
            f" mlflow experiments restore --experiment-id {experiment.experiment_id}) or choose another experiment"
        )
    return experiment.experiment_id


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


def process_tags() -> dict[str, str]:
    """Who runs this: lets the reaper tell a live run from one whose process is gone."""
    pid = os.getpid()
    return {
        Tag.HOST: machine.hostname(),
        Tag.PID: str(pid),
        Tag.PID_START: machine.process_start_ticks(pid) or "",
        Tag.HARNESS_VERSION: machine.harness_version(),
    }


# How long metrics given to ``TrackedRun.log`` may wait, between epochs, before they are stored.
FLUSH_INTERVAL_S = 1.0


@dataclass
class TrackedRun:
    """An open MLflow run. What ``log`` is given is stored in the thread that calls it, between epochs,
    never beside one: a store call in a background thread while an epoch was timed made that epoch 5-7%
    slower (it holds the GIL that a NumPy minibatch loop needs; docs/performance.md). To keep the store's
    cost small, metrics and tags wait and go in one ``log_batch`` once FLUSH_INTERVAL_S has passed since the
    last one (long epochs: every epoch, so MLflow's UI follows a run live) and at ``flush``, which the end
    of a run calls before its status is set."""

    client: MlflowClient
    run_id: str
    _metrics: list = field(default_factory=list)
    _tags: dict[str, str] = field(default_factory=dict)
    _last_flush: float = field(default_factory=time.monotonic)

    def log(self, metrics: Mapping[str, float], step: int = 0, tags: Mapping[str, str] | None = None) -> None:
        """Metrics at ``step``, and tags: stored now if the last store was FLUSH_INTERVAL_S ago, else later."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self._metrics += [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
        self._tags |= {k: str(v) for k, v in (tags or {}).items()}
        if time.monotonic() - self._last_flush >= FLUSH_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        """Store everything ``log`` holds in one transaction; raises what the store raises."""
        from mlflow.entities import RunTag

        metrics, tags, self._metrics, self._tags = self._metrics, self._tags, [], {}
        if metrics or tags:
            self.client.log_batch(self.run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
        self._last_flush = time.monotonic()

    def log_artifacts(self, folder: Path) -> None:
        self.client.log_artifacts(self.run_id, str(folder))


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into an exception while a run is open (main thread only)."""

    def handler(signum: int, frame: object) -> None:
        raise Terminated(f"terminated by signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
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
) -> Iterator[TrackedRun]:
    """Open a run and close it with the status the harness decides, whatever happens inside."""
    from mlflow.entities import Param

    all_tags = {**tags, **process_tags()}
    if parent_run_id:
        all_tags[Tag.PARENT] = parent_run_id
    run_id = client.create_run(experiment_id, run_name=name, tags=all_tags).info.run_id
    active = TrackedRun(client, run_id)
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
        if _unreachable(err):  # the patience is spent: the error tag and the end status try once each
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
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
    try:
        retried(lambda: client.set_terminated(run_id, status), CLOSE_RETRY_DELAYS_S)
    except Exception as err:
        why = store_failure(err, client.tracking_uri) or error_line(err)
        raise TrackingError(
            f"run {run_id} could not be ended as {status} ({why}); "
            "once this process has exited and the store can be written again, mnist-bench reap marks it KILLED"
        ) from err


def store_failure(err: BaseException, uri: str) -> str | None:
    """Why the store at ``uri`` refused a call, in words a user can act on; None where we do not know them."""
    if _unreachable(err):
        return f"tracking server {redact(uri)} is not answering"
    if "database or disk is full" in str(err):
        return f"the disk holding {redact(uri)} is full: free space on it"
    if "database is locked" in str(err):
        return (
            f"tracking store {redact(uri)} is locked by another process (SQLite waited its timeout): wait for that "
            "process to let go, or choose another store with tracking.uri= (or --tracking-uri)"
        )
    return None


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


def reap(client: MlflowClient, experiment_id: str, parent_run_id: str | None = None, wait_s: float = 0.0) -> list[str]:
    """Mark KILLED every RUNNING run of this host whose process is gone (of one sweep, given its parent run);
    returns their ids. ``wait_s``: how long processes still alive get to go first (a stopped sweep's
    parallel workers are being shut down, and a worker killed outright cannot close its own run).

    A pid alone can be reused, so the process's start time (tagged at creation) must match too.
    """
    host = machine.hostname()
    wanted = f"attributes.status = '{RunStatus.RUNNING}'"
    if parent_run_id is not None:
        wanted += f" and tags.`{Tag.PARENT}` = '{parent_run_id}'"
    running = [
        run
        for run in client.search_runs([experiment_id], filter_string=wanted, max_results=SEARCH_LIMIT)
        if run.data.tags.get(Tag.HOST) == host and run.data.tags.get(Tag.PID, "").isdigit()
    ]

    def alive(run: Run) -> bool:
        tags = run.data.tags
        return machine.process_start_ticks(int(tags[Tag.PID])) == tags.get(Tag.PID_START)

    deadline = time.monotonic() + wait_s
    while any(alive(run) for run in running) and time.monotonic() < deadline:
        time.sleep(0.2)
    reaped = []
    for run in running:
        if alive(run):
            continue
        client.set_tag(run.info.run_id, Tag.ERROR, "process gone (killed or crashed); marked by the reaper")
        client.set_terminated(run.info.run_id, KILLED)
        reaped.append(run.info.run_id)
    return reaped


def open_sweep(client: MlflowClient, experiment_id: str, name: str, sweep_dir: Path, planned: Sequence[Cell]) -> Run:
    """A sweep's parent run, tagged so that find_sweep, earlier_sweep and the reaper know it."""
    tags = {Tag.KIND: KIND_SWEEP, Tag.SWEEP_NAME: name, Tag.SWEEP_DIR: str(sweep_dir), **process_tags()}
    tags[Tag.CELLS_DIGEST] = cells_digest(planned)
    return client.create_run(experiment_id, run_name=name, tags=tags)


def share_sweep_view(client: MlflowClient, experiment_id: str, name: str) -> str:
    """Save the runs page of a sweep's jobs as a view of the experiment, the way MLflow's UI (3.x) saves a
    shared view, and return the key a link names it by (``viewStateShareKey``). The view searches for the
    sweep's tag, less the parent (it has no metrics, and in the charts it would take a place and head every
    legend); sorts by run name (sorted by anything but creation time, the table lists the jobs flat instead of
    folded under their parent); and draws every job in the charts, where the UI otherwise draws the first 10."""
    quote = "'" if "'" not in name else '"'
    view = {
        "searchFilter": f"tags.{Tag.SWEEP_NAME} = {quote}{name}{quote} and tags.`{Tag.PARENT}` IS NOT NULL",
        "orderByKey": "tags.`mlflow.runName`",
        "orderByAsc": True,
        "runsHiddenMode": "SHOW_ALL",
    }
    text = json.dumps(view, sort_keys=True)
    key = hashlib.sha256(text.encode()).hexdigest()[:32]
    client.set_experiment_tag(experiment_id, Tag.SHARED_VIEW + key, text)
    return key


def log_sweep_plan(client: MlflowClient, parent_id: str, arguments: Sequence[str], planned: Sequence[Cell]) -> None:
    """The sweep's command line and its planned cells (sweep_cells.json), which read_sweep holds its runs to."""
    client.log_param(parent_id, SweepParam.SWEEP_OVERRIDES, redact(" ".join(arguments))[:6000])
    client.log_param(parent_id, SweepParam.SWEEP_CELLS, len(planned))
    client.log_dict(parent_id, [asdict(cell) for cell in planned], CELLS_ARTIFACT)


def cells_digest(cells: Sequence[Cell]) -> str:
    """A sweep's cells as one short hash: two sweeps of the same cells, in any order, share it."""
    return hashlib.sha256(" ".join(sorted(cell.config_hash for cell in cells)).encode()).hexdigest()[:16]


def earlier_sweep(client: MlflowClient, experiment_id: str, parent: Run) -> Run | None:
    """A RUNNING sweep of the same cells as ``parent`` that began before it (on a tie, the smaller run id).

    Asked once ``parent`` exists and dead runs are reaped: two sweeps started at the same moment then each
    find the other, and agree on which of them goes on."""
    digest = parent.data.tags[Tag.CELLS_DIGEST]
    running = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{Tag.CELLS_DIGEST}` = '{digest}' and attributes.status = '{RunStatus.RUNNING}'",
        max_results=SEARCH_LIMIT,
    )
    key = lambda run: (run.info.start_time, run.info.run_id)  # noqa: E731
    earlier = [run for run in running if key(run) < key(parent)]
    return min(earlier, key=key, default=None)


# ---------------------------------------------------------------- sweeps, as the readers find them


def sweep_name(parent: Run) -> str:
    """What a sweep is called: the sweep_name config (or a timestamp), which is its parent run's name."""
    return parent.data.tags.get(Tag.SWEEP_NAME) or parent.info.run_name or parent.info.run_id


_sweep_names: dict[str, str] = {}


def job_sweep_name(client: MlflowClient, parent_run_id: str) -> str:
    """The name of the sweep a job belongs to, read from its parent run once per process, not every job."""
    if parent_run_id not in _sweep_names:
        _sweep_names[parent_run_id] = sweep_name(client.get_run(parent_run_id))
    return _sweep_names[parent_run_id]


def find_sweep(client: MlflowClient, experiment_id: str, wanted: str, where: str) -> Run:
    """A sweep's parent run by run id, by name, or the most recent one ("latest")."""
    sweeps = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{Tag.KIND}` = '{KIND_SWEEP}'",
        order_by=["attributes.start_time DESC"],
        max_results=SEARCH_LIMIT,
    )
    for parent in sweeps:
        if wanted == "latest" or wanted in (parent.info.run_id, parent.info.run_name, sweep_name(parent)):
            return parent
    if not sweeps:
        raise TrackingError(f"no sweep in {where}; run one first, e.g. python -m mnist_bench -m lr=0.1,0.5")
    latest = ", ".join(sweep_name(parent) for parent in sweeps[:5])
    raise TrackingError(
        f"no sweep named {wanted!r} (nor a parent run with that id) in {where}; latest sweeps: {latest}"
    )


def children(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Run]:
    """Every job run of a sweep, in any status."""
    return client.search_runs(
        [experiment_id], filter_string=f"tags.`{Tag.PARENT}` = '{parent_run_id}'", max_results=SEARCH_LIMIT
    )


def sweep_cells(client: MlflowClient, parent_run_id: str) -> list[Cell] | None:
    """The cells a sweep set out to run (its CELLS_ARTIFACT); None when the parent has none."""
    text = read_artifact(client, parent_run_id, CELLS_ARTIFACT)
    return None if text is None else [Cell(**item) for item in json.loads(text)]


def read_artifact(client: MlflowClient, run_id: str, path: str) -> str | None:
    """The text of a run's top-level artifact; None when the run has no such artifact."""
    if path not in {item.path for item in client.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory(prefix="mnist-bench-") as folder, _no_progress_bar():
        return Path(client.download_artifacts(run_id, path, folder)).read_text()


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    """MLflow draws a download progress bar on stderr unless told not to; the tools print one line."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    saved = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key)
        else:
            os.environ[key] = saved


@dataclass(frozen=True)
class CellOutcome:
    """How one cell of a sweep ended, and the run that says so ("" for a missing cell)."""

    cell: Cell
    status: Status
    run_id: str


def cell_outcomes(client: MlflowClient, experiment_id: str, parent_run_id: str, cells: list[Cell]) -> list[CellOutcome]:
    """Every planned cell's outcome: its latest run in this sweep, else an earlier FINISHED run that resume
    reused (skipped), else missing."""
    return _outcomes(client, experiment_id, children(client, experiment_id, parent_run_id), cells)


def _outcomes(client: MlflowClient, experiment_id: str, jobs: list[Run], cells: list[Cell]) -> list[CellOutcome]:
    """cell_outcomes, given the sweep's job runs already read."""
    latest = {}
    for run in sorted(jobs, key=lambda r: r.info.start_time):
        latest[run.data.tags.get(Tag.CONFIG_HASH)] = run
    outcomes = []
    for cell in cells:
        run = latest.get(cell.config_hash)
        if run is not None:
            outcomes.append(CellOutcome(cell, status_of(run), run.info.run_id))
            continue
        earlier = find_finished(client, experiment_id, cell.config_hash)
        outcomes.append(CellOutcome(cell, Status.SKIPPED if earlier else Status.MISSING, earlier or ""))
    return outcomes


@dataclass(frozen=True)
class SweepRecord:
    """A sweep as report, check and compare read it, in one pass over the store."""

    parent: Run
    cells: list[Cell] | None  # what it set out to run; None when the parent has no CELLS_ARTIFACT
    runs: list[Run]  # its own job runs, then the earlier FINISHED run each skipped cell reused
    outcomes: list[CellOutcome]  # one per planned cell

    @property
    def reused(self) -> list[str]:
        """The ids of the runs that another sweep trained and this one reused (resume skipped their cells)."""
        own = self.parent.info.run_id
        return [run.info.run_id for run in self.runs if run.data.tags.get(Tag.PARENT) != own]


def read_sweep(client: MlflowClient, experiment_id: str, parent: Run) -> SweepRecord:
    """A sweep's cells, runs and cell outcomes. A sweep re-launched after it finished trains nothing: its
    results are the runs its cells reused, so a report of it is the report of those."""
    jobs = children(client, experiment_id, parent.info.run_id)
    cells = sweep_cells(client, parent.info.run_id)
    outcomes = _outcomes(client, experiment_id, jobs, cells or [])
    runs = {run.info.run_id: run for run in jobs}
    for outcome in outcomes:
        if outcome.status is Status.SKIPPED and outcome.run_id not in runs:
            runs[outcome.run_id] = client.get_run(outcome.run_id)
    return SweepRecord(parent, cells, list(runs.values()), outcomes)
