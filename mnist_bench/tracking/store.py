"""Opening a store: reachable and writable first, created once under a file lock, its errors as one line.

Readers (report, check, compare) open an existing store and create nothing; jobs and sweeps create it.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

from mnist_bench.config import SERVER_PATIENCE_S
from mnist_bench.errors import UserError
from mnist_bench.tracking.patience import (
    bound_server_waits,
    patience_spent,
    renew_patience,
    unreachable,
)
from mnist_bench.tracking.uris import SQLITE, is_server, local_store, redact, sqlite_path

if TYPE_CHECKING:  # mlflow is imported where a store is opened: bad input is reported without its ~3 s import
    from mlflow.entities import Experiment
    from mlflow.tracking import MlflowClient

log = logging.getLogger("mnist_bench")
SEARCH_LIMIT = 50000  # the SQL store's limit for one search: every query of a sweep's runs uses it


class TrackingError(UserError, RuntimeError):
    """The tracking store cannot be used; raised before any training starts."""


class _RaisedAnyway(logging.Filter):
    """MLflow's SQL store logs every database error with its traceback (a disk that fills gave 1,400 lines)
    and then raises it; the harness reports what was raised in one line, so the log record goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("SQLAlchemy database error.")


def _quiet_store_errors() -> None:
    store_log = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _RaisedAnyway) for f in store_log.filters):
        store_log.addFilter(_RaisedAnyway())


HEALTH_ATTEMPT_S = 10.0  # one request to a tracking server's /health
HEALTH_PATIENCE_S = 60.0  # how long a server that answers slowly is asked again before we give up
SPENT_ATTEMPT_S = 2.0  # one request to a server this process already gave up on: a later job fails at once


def check_reachable(uri: str, attempt_s: float = HEALTH_ATTEMPT_S, patience_s: float = HEALTH_PATIENCE_S) -> None:
    """Fail fast, before training, on an unwritable store path or a server that does not answer. A server
    whose patience this process spent (an earlier job gave up on it) is asked once, briefly: a frozen one
    made each later job wait out the health check's whole patience (65 s a job)."""
    db = sqlite_path(uri)
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
        if patience_spent(uri):
            attempt_s, patience_s = min(attempt_s, SPENT_ATTEMPT_S), 0.0
        _await_health(uri, attempt_s, patience_s)
        renew_patience(uri)


def _await_health(uri: str, attempt_s: float, patience_s: float) -> None:
    """A refused connection or an unknown host fails at once. A timeout or a 5xx is asked again until
    patience runs out: a sweep's jobs all start at once, and on a few busy cores the server answers late."""
    request = _health_request(uri)
    deadline = time.monotonic() + patience_s
    while True:
        try:
            timeout = max(0.1, min(attempt_s, deadline - time.monotonic())) if patience_s else attempt_s
            with urllib.request.urlopen(request, timeout=timeout) as response:
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


LOCK_NOTICE_S = 5.0  # a wait for the store's lock longer than this says what it waits for


def _health_request(uri: str) -> urllib.request.Request:
    """GET of the server's /health, a URI's user:password@ sent as basic auth (as MLflow's requests sends it):
    urllib took "user:password@host" for the host name ("Name or service not known")."""
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.netloc.rpartition("@")[2]
    url = parts._replace(netloc=netloc, query="", fragment="").geturl().rstrip("/") + "/health"
    request = urllib.request.Request(url)
    if parts.username is not None:
        login = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
    return request


@contextlib.contextmanager
def _store_lock(uri: str, patience_s: float) -> Iterator[None]:
    """Held while MLflow opens a SQLite store: opening runs its schema creation and migrations, which
    race when two processes do it at once (jobs die, the file can become unopenable). Opening holds it for
    seconds: a wait for it says within LOCK_NOTICE_S what it waits for and ends after ``patience_s``."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    path = Path(f"{db}.lock")
    if path.exists() and not path.is_file():
        raise TrackingError(
            f"tracking store {redact(uri)}: its lock file {path} is a folder: "
            f"remove it (rmdir {path}) and run this again"
        )
    new = not path.exists()
    lock = FileLock(path)
    try:
        lock.acquire(timeout=min(LOCK_NOTICE_S, patience_s))
    except Timeout:
        log.warning(
            "tracking store %s: waiting for its lock %s, held by %s; giving up after %g s",
            redact(uri), path, _lock_holder(path), patience_s,
        )  # fmt: skip
        try:
            lock.acquire(timeout=max(0.0, patience_s - LOCK_NOTICE_S))
        except Timeout:
            raise TrackingError(
                f"tracking store {redact(uri)}: its lock {path} stayed held by {_lock_holder(path)} for"
                f" {patience_s:g} s (tracking.patience_s): let that process end (or stop it) and run this again"
            ) from None
    except OSError as err:
        raise TrackingError(
            f"tracking store {redact(uri)}: its lock file {path} cannot be opened ({error_line(err)}); "
            "remove it or choose another store with tracking.uri= (or --tracking-uri)"
        ) from err
    try:
        yield
    finally:
        lock.release()
        if new and not db.exists():  # the store was not created: its lock file goes too
            path.unlink(missing_ok=True)


def _lock_holder(path: Path) -> str:
    """Which process holds the flock on ``path``, from /proc/locks: "pid N (its command)", or words that
    say we cannot tell."""
    try:
        inode = path.stat().st_ino
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
                command = Path(f"/proc/{fields[4]}/cmdline").read_bytes().decode(errors="replace")
                return f"pid {fields[4]} ({redact(' '.join(command.replace(chr(0), ' ').split()))[:120]})"
    except OSError:
        pass
    return "another process"


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
    check_reachable(uri, min(HEALTH_ATTEMPT_S, patience_s), min(HEALTH_PATIENCE_S, patience_s))
    bound_server_waits(uri, patience_s)
    _quiet_store_errors()
    from mlflow.tracking import MlflowClient

    with _store_lock(uri, patience_s), _store_errors(uri), _no_stray_folder(uri), _no_half_created_store(uri):
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return client, _active(found, uri)
        # Artifacts beside the database, not in whatever directory the process happens to be in.
        db = sqlite_path(uri)
        location = (db.parent / "mlruns").as_uri() if db is not None else None
        return client, client.create_experiment(experiment, artifact_location=location)


def import_store(uri: str) -> None:
    """Imports what opening this store needs (about 4 s of MLflow, and SQLAlchemy for a database) without
    opening it: a process can pay that ahead of its first job, and no store is touched before it is created."""
    from mlflow.tracking import MlflowClient  # noqa: F401

    if "://" in uri and not (is_server(uri) or uri.startswith("file:")):
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401


@contextlib.contextmanager
def _no_half_created_store(uri: str) -> Iterator[None]:
    """A SQLite store this call creates is deleted if creating it fails (a full disk left a 0-byte mlflow.db):
    it holds nothing, and a half-migrated one would fail every later opening. Entered under the store's lock."""
    db = sqlite_path(uri)
    new = db is not None and not db.exists()
    try:
        yield
    except BaseException:
        if new:
            for leftover in (db, Path(f"{db}-journal")):
                leftover.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _no_stray_folder(uri: str) -> Iterator[None]:
    """Removes the empty folder MLflow makes from a quoted sqlite URI's text ("q%3Fx" beside "q?x"): its
    _make_parent_dirs_if_sqlite does not unquote the path."""
    raw = Path(uri.removeprefix(SQLITE).partition("?")[0]).parent if uri.startswith(SQLITE) else None
    stray = raw is not None and raw != sqlite_path(uri).parent and not raw.exists()
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
    local = local_store(uri)
    if local is not None and not local.exists():
        raise TrackingError(
            f"no tracking store at {redact(uri)}: run a sweep first, or pass --tracking-uri or set MLFLOW_TRACKING_URI"
        )
    check_reachable(uri)  # also: writable, since the readers log their results back
    bound_server_waits(uri)
    _quiet_store_errors()
    from mlflow.tracking import MlflowClient

    with _store_lock(uri, SERVER_PATIENCE_S), _store_errors(uri), _no_stray_folder(uri):
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise TrackingError(f"no experiment {experiment!r} in {redact(uri)} (experiments: {names}); pass --experiment")
    return client, _active(found, uri)


def _active(experiment: Experiment, uri: str) -> str:
    """The id of an experiment that is not deleted (MLflow refuses runs in a deleted one, with a traceback) and
    whose artifacts this store can reach: a server's experiment keeps them behind the server (mlflow-artifacts:),
    which its database alone cannot write (MLflow's traceback said so about the URI scheme, not the fix)."""
    if experiment.artifact_location.startswith("mlflow-artifacts:") and not is_server(uri):
        raise TrackingError(
            f"experiment {experiment.name!r} in {redact(uri)} belongs to a tracking server, which keeps its"
            " artifacts: log through the server, with its http URI as tracking.uri (mnist-bench server prints it)"
        )
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"experiment {experiment.name!r} in {redact(uri)} is deleted: restore it (MLFLOW_TRACKING_URI={redact(uri)}"
            f" mlflow experiments restore --experiment-id {experiment.experiment_id}) or choose another experiment"
        )
    return experiment.experiment_id


def store_failure(err: BaseException, uri: str) -> str | None:
    """Why the store at ``uri`` refused a call, in words a user can act on; None where we do not know them."""
    if unreachable(err):
        return f"tracking server {redact(uri)} is not answering"
    if "database or disk is full" in str(err):
        return f"the disk holding {redact(uri)} is full: free space on it"
    if "database is locked" in str(err):
        return (
            f"tracking store {redact(uri)} is locked by another process (SQLite waited its timeout): wait for that "
            "process to let go, or choose another store with tracking.uri= (or --tracking-uri)"
        )
    return None
