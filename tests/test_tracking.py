"""mnist_bench.tracking against real SQLite stores: URIs, run statuses on every way out, signals,
reaping, and many processes opening a brand-new store at once."""

from __future__ import annotations

import base64
import contextlib
import multiprocessing
import os
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from mnist_bench import machine, tracking
from mnist_bench.schema import Tag
from mnist_bench.tracking.store import LOCK_NOTICE_S

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "mnist-bench"


# --- resolve_uri and redact ----------------------------------------------------------------------


def test_default_uri_is_sqlite_in_the_launch_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_relative_sqlite_path_is_made_absolute_from_the_launch_dir(tmp_path: Path) -> None:
    assert tracking.resolve_uri("sqlite:///runs/m.db", tmp_path) == f"sqlite:///{tmp_path.resolve()}/runs/m.db"
    absolute = tmp_path.resolve() / "elsewhere" / "x.db"
    assert tracking.resolve_uri(f"sqlite:///{absolute}", Path("/")) == f"sqlite:///{absolute}"


def test_the_store_stays_in_a_launch_folder_of_any_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """'?', '#' and '%' in a folder name stay part of the store's path: not a query (before, the store went
    to a file named after the text before '?'), a fragment, or an escape ('%41' opened folder 'A')."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    launch = tmp_path / "q?x=1 #h %41"
    launch.mkdir()
    tracking.open_store(tracking.resolve_uri(None, launch), "e")
    assert (launch / "mlflow.db").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [launch.name]
    with_query = tracking.resolve_uri("sqlite:///m.db?timeout=30", launch)
    assert with_query.endswith("/q%3Fx=1 #h %2541/m.db?timeout=30")


def test_plain_folder_is_a_file_store_under_the_launch_dir(tmp_path: Path) -> None:
    assert tracking.resolve_uri("mlruns", tmp_path) == str(tmp_path.resolve() / "mlruns")


def test_mlflow_tracking_uri_env_is_respected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking.resolve_uri(None, tmp_path) == "http://tracking.example:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
    assert tracking.resolve_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/from-env.db"
    # An explicit tracking.uri wins over the environment.
    assert tracking.resolve_uri("sqlite:///given.db", tmp_path) == f"sqlite:///{tmp_path.resolve()}/given.db"


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "https://user:pw@mlflow.example/path", "file:///srv/mlruns"])
def test_uris_with_a_scheme_are_left_untouched(uri: str, tmp_path: Path) -> None:
    assert tracking.resolve_uri(uri, tmp_path) == uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("https://alice:s3cret@mlflow.example:8443/api", "https://mlflow.example:8443/api"),
        ("http://token@127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("https://mlflow.example/", "https://mlflow.example/"),
        ("sqlite:////tmp/x/mlflow.db", "sqlite:////tmp/x/mlflow.db"),
    ],
)
def test_redact_removes_credentials(uri: str, expected: str) -> None:
    assert tracking.redact(uri) == expected
    assert "s3cret" not in tracking.redact(uri) and "alice" not in tracking.redact(uri)


# --- check_reachable: a busy tracking server is waited for, a missing one fails at once -----------


@pytest.fixture
def health_server(serve_loopback) -> tuple[str, list[str], dict[str, object]]:
    """A /health endpoint on 127.0.0.1 that answers its first ``struggles`` requests with ``how``:
    ``"late"`` (after ``delay_s``) or a 503. Returns its URI, the requests seen, and the knobs."""
    knobs: dict[str, object] = {"struggles": 0, "how": "late", "delay_s": 1.0}
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            knobs["authorization"] = self.headers.get("Authorization")
            if len(seen) <= knobs["struggles"]:
                if knobs["how"] == "503":
                    self.send_error(503)
                    return
                time.sleep(knobs["delay_s"])
            with contextlib.suppress(ConnectionError):  # a late answer finds the client gone
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    return serve_loopback(Handler), seen, knobs


@pytest.mark.parametrize("how", ["late", "503"])
def test_a_server_that_struggles_at_first_is_asked_again(health_server, how: str) -> None:
    uri, seen, knobs = health_server
    knobs.update(struggles=2, how=how)
    tracking.check_reachable(uri + "/", attempt_s=0.3, patience_s=30)
    assert seen == ["/health"] * 3


def test_a_server_that_never_answers_in_time_fails_naming_the_timeout(health_server) -> None:
    uri, seen, knobs = health_server
    knobs.update(struggles=100, delay_s=0.5)
    with pytest.raises(
        tracking.TrackingError, match=r"tracking server http://127\.0\.0\.1:\d+ is unreachable \(timed out\)"
    ):
        tracking.check_reachable(uri, attempt_s=0.2, patience_s=0.5)
    assert 1 <= len(seen) <= 4


def test_a_uri_with_user_and_password_is_asked_with_basic_auth(health_server) -> None:
    """urllib took "alice:s3cret@127.0.0.1" for a host name: "Name or service not known", though the server
    answered at that URL."""
    uri, seen, knobs = health_server
    tracking.check_reachable(uri.replace("http://", "http://alice:s%40cret@") + "/?x=1")
    assert seen == ["/health"]
    assert knobs["authorization"] == "Basic " + base64.b64encode(b"alice:s@cret").decode()


def test_a_refused_connection_fails_without_asking_again(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[str] = []
    real_urlopen = urllib.request.urlopen

    def counting_urlopen(request: urllib.request.Request, timeout: float):
        attempts.append(request.full_url)
        return real_urlopen(request, timeout=timeout)

    monkeypatch.setattr(urllib.request, "urlopen", counting_urlopen)
    with pytest.raises(tracking.TrackingError, match=r"unreachable .*refused.*; start it or set tracking\.uri="):
        tracking.check_reachable("http://127.0.0.1:9", patience_s=60)
    assert attempts == ["http://127.0.0.1:9/health"]


# --- tracked_run: the final status on every way out ----------------------------------------------


def _status(client, run_id: str) -> str:
    return client.get_run(run_id).info.status


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize(
    ("raised", "status", "error"),
    [
        (None, "FINISHED", None),
        (Boom("exploded at epoch 3"), "FAILED", "Boom: exploded at epoch 3"),
        (KeyboardInterrupt(), "KILLED", "interrupted"),
        (tracking.Terminated("terminated by signal 15"), "KILLED", "terminated by signal 15"),
        (SystemExit(0), "FINISHED", None),
        (SystemExit(None), "FINISHED", None),
        (SystemExit(1), "FAILED", None),
    ],
    ids=["success", "exception", "ctrl-c", "terminated", "exit-0", "exit-none", "exit-1"],
)
def test_tracked_run_status(store, raised: BaseException | None, status: str, error: str | None) -> None:
    client, experiment_id = tracking.open_store(store.uri, EXPERIMENT)
    params = {"lr": 0.1, "backend.name": "numpy"}
    try:
        with tracking.tracked_run(client, experiment_id, "a-run", params, {"backend": "numpy"}) as run:
            run_id = run.run_id
            assert _status(client, run_id) == "RUNNING"
            run.log({"train_loss": 1.5}, step=1, tags={"diverged": "false"})  # one batch: metrics and tags
            if raised is not None:
                raise raised
    except BaseException as err:
        assert err is raised  # re-raised unchanged
    else:
        assert raised is None
    found = client.get_run(run_id)
    assert found.info.status == status
    assert found.data.params == {"lr": "0.1", "backend.name": "numpy"}
    assert found.data.metrics == {"train_loss": 1.5}
    assert found.data.tags["backend"] == "numpy" and found.data.tags["diverged"] == "false"
    assert found.data.tags[Tag.PID] == str(os.getpid())
    if error is None:
        assert Tag.ERROR not in found.data.tags
    else:
        assert error in found.data.tags[Tag.ERROR]


def lock_store(path: Path, seconds: float) -> threading.Timer:
    """Another connection holds the SQLite store's write lock for ``seconds`` from now, as a second process
    writing to it would; join the returned timer to wait for the release. Past 20 s (MLflow's busy timeout),
    an attempt to write fails."""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")

    def release() -> None:
        holder.rollback()
        holder.close()

    timer = threading.Timer(seconds, release)
    timer.start()
    return timer


@pytest.mark.slow
def test_a_run_is_ended_once_the_store_lets_go(store) -> None:
    client, experiment_id = tracking.open_store(store.uri, EXPERIMENT)
    start = time.monotonic()
    with tracking.tracked_run(client, experiment_id, "a-run", {}, {}) as run:
        run_id = run.run_id
        released = lock_store(store.path, 25)
    assert time.monotonic() - start > 25  # it was ended after the lock's release, by a retry
    released.join()
    assert _status(client, run_id) == "FINISHED"


@pytest.mark.slow
def test_a_store_that_never_lets_go_is_one_line_and_the_run_is_left_to_the_reaper(
    store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracking.runs, "CLOSE_RETRY_DELAYS_S", ())  # one attempt of 20 s, not the ~90 s of four
    client, experiment_id = tracking.open_store(store.uri, EXPERIMENT)
    with (
        pytest.raises(tracking.TrackingError) as info,
        tracking.tracked_run(client, experiment_id, "a-run", {}, {}) as run,
    ):
        run_id = run.run_id
        released = lock_store(store.path, 22)
    released.join()
    message = str(info.value)
    assert message.startswith(f"run {run_id} could not be ended as FINISHED") and "mnist-bench reap" in message
    assert "\n" not in message
    assert _status(client, run_id) == "RUNNING"


def test_a_deleted_experiment_is_one_line_naming_how_to_restore_it(store) -> None:
    """MLflow refuses runs in a deleted experiment with a traceback, and a sweep used to end that way."""
    client, experiment_id = tracking.open_store(store.uri, EXPERIMENT)
    client.delete_experiment(experiment_id)
    for opening in (tracking.open_store, tracking.open_existing):
        with pytest.raises(tracking.TrackingError) as info:
            opening(store.uri, EXPERIMENT)
        message = str(info.value)
        assert "is deleted" in message and f"restore --experiment-id {experiment_id}" in message
        assert "\n" not in message


def test_a_store_locked_by_another_process_is_one_line_saying_so(store) -> None:
    """A store held by another writer used to be "cannot be opened (... database is locked [SQL: ...]); fix or
    move it": the wrong advice for a store that is fine. SQLite's timeout is cut to 1 s here (its URI's)."""
    tracking.open_store(store.uri, EXPERIMENT)
    holder = sqlite3.connect(store.path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for opening in (tracking.open_store, tracking.open_existing):
            with pytest.raises(tracking.TrackingError) as info:
                opening(f"{store.uri}?timeout=1", EXPERIMENT)
            message = str(info.value)
            assert f"{store.uri}?timeout=1 is locked by another process" in message, message
            assert "wait for that process" in message and "\n" not in message
    finally:
        holder.close()


def test_a_lock_file_that_is_a_folder_is_one_line_naming_it(store) -> None:
    """It was an IsADirectoryError traceback from the sweep, the single run and the report."""
    lock = Path(f"{store.path}.lock")
    lock.mkdir()
    for opening in (tracking.open_store, tracking.open_existing):
        with pytest.raises(tracking.TrackingError) as info:
            opening(store.uri, EXPERIMENT)
        assert str(info.value) == (
            f"tracking store {store.uri}: its lock file {lock} is a folder: remove it (rmdir {lock}) and run this again"
        )


def test_a_held_store_lock_is_named_within_seconds_and_the_wait_ends_at_the_patience(
    store, caplog: pytest.LogCaptureFixture
) -> None:
    """A lock held by another process made the sweep wait in silence (150 s and counting)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import filelock, time; lock = filelock.FileLock('{store.path}.lock'); lock.acquire(); "
         "print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        start = time.time()
        with pytest.raises(tracking.TrackingError) as info:
            tracking.open_store(store.uri, EXPERIMENT, patience_s=7)
        waited = time.time() - start
    finally:
        holder.kill()
        holder.wait()
    [notice] = [r for r in caplog.records if "waiting for its lock" in r.getMessage()]
    assert notice.created - start < LOCK_NOTICE_S + 1  # said within seconds
    assert f"held by pid {holder.pid} (" in notice.getMessage() and "giving up after 7 s" in notice.getMessage()
    assert 7 <= waited < 9, waited
    message = str(info.value)
    assert f"stayed held by pid {holder.pid}" in message and "tracking.patience_s" in message and "\n" not in message


def test_a_servers_experiment_opened_through_its_database_is_one_line_naming_the_fix(store) -> None:
    """A sweep pointed at the PostgreSQL database behind mnist-bench server ended in an MlflowException
    traceback about mlflow-artifacts URIs: the experiment is the server's, whose artifacts it keeps."""
    store.client.create_experiment(EXPERIMENT, artifact_location="mlflow-artifacts:/1")
    for opening in (tracking.open_store, tracking.open_existing):
        with pytest.raises(tracking.TrackingError) as info:
            opening(store.uri, EXPERIMENT)
        assert str(info.value) == (
            f"experiment {EXPERIMENT!r} in {store.uri} belongs to a tracking server, which keeps its artifacts: log"
            " through the server, with its http URI as tracking.uri (mnist-bench server prints it)"
        )


def test_metrics_logged_within_the_flush_interval_wait_and_are_all_stored_before_the_run_is_finished(store) -> None:
    client, experiment_id = tracking.open_store(store.uri, EXPERIMENT)
    with tracking.tracked_run(client, experiment_id, "many-epochs", {}, {}) as run:
        for epoch in range(1, 201):  # short epochs: well within FLUSH_INTERVAL_S of the run's start
            run.log({"train_loss": 1 / epoch, "test_accuracy": epoch / 200}, step=epoch)
        assert client.get_metric_history(run.run_id, "train_loss") == []  # no store call between them
    assert client.get_run(run.run_id).info.status == "FINISHED"
    for key in ("train_loss", "test_accuracy"):
        assert sorted(p.step for p in client.get_metric_history(run.run_id, key)) == list(range(1, 201))


def test_an_epoch_ending_a_flush_interval_after_the_last_store_is_stored_at_once(store) -> None:
    """Long epochs reach the store as each ends, so that MLflow's UI follows the run."""
    client, experiment_id = tracking.open_store(store.uri, EXPERIMENT)
    with tracking.tracked_run(client, experiment_id, "long-epochs", {}, {}) as run:
        run.log({"train_loss": 2.0}, step=1)
        time.sleep(tracking.FLUSH_INTERVAL_S)
        run.log({"train_loss": 1.0}, step=2, tags={"diverged": "false"})
        assert [p.value for p in client.get_metric_history(run.run_id, "train_loss")] == [2.0, 1.0]
        assert client.get_run(run.run_id).data.tags["diverged"] == "false"
        assert client.get_run(run.run_id).info.status == "RUNNING"


def test_a_metric_the_store_refuses_fails_the_run_and_is_raised(store) -> None:
    from mlflow.exceptions import MlflowException

    client, experiment_id = tracking.open_store(store.uri, EXPERIMENT)
    refused = pytest.raises(MlflowException, match="Step must be a valid long")
    with refused, tracking.tracked_run(client, experiment_id, "refused", {}, {}) as run:
        run.log({"train_loss": 1.0}, step=1)
        run.flush()  # as after a long epoch
        run.log({"train_loss": 2.0}, step="not a step")  # type: ignore[arg-type]
    assert client.get_run(run.run_id).info.status == "FAILED"
    assert [p.value for p in client.get_metric_history(run.run_id, "train_loss")] == [1.0]


def test_tracked_run_links_its_parent(store) -> None:
    client, experiment_id = tracking.open_store(store.uri, EXPERIMENT)
    parent = client.create_run(experiment_id).info.run_id
    with tracking.tracked_run(client, experiment_id, "child", {}, {}, parent_run_id=parent) as run:
        pass
    assert client.get_run(run.run_id).data.tags[Tag.PARENT] == parent


def test_a_sweeps_shared_view_finds_its_jobs_not_its_parent_and_draws_them_all(store) -> None:
    """The view a sweep's printed link names, as MLflow's UI reads it: an experiment tag holding JSON."""
    import json

    client, experiment_id = tracking.open_store(store.uri, EXPERIMENT)
    for name in ("it's", 'say "hi"'):
        parent = client.create_run(experiment_id, run_name=name, tags={Tag.SWEEP_NAME: name}).info.run_id
        jobs = [
            client.create_run(experiment_id, tags={Tag.SWEEP_NAME: name, Tag.PARENT: parent}).info.run_id
            for _ in range(2)
        ]
        key = tracking.share_sweep_view(client, experiment_id, name)
        assert tracking.share_sweep_view(client, experiment_id, name) == key  # a sweep re-launched: the same view
        view = json.loads(client.get_experiment(experiment_id).tags[Tag.SHARED_VIEW + key])
        assert view["runsHiddenMode"] == "SHOW_ALL" and view["orderByKey"] == "tags.`mlflow.runName`"
        found = client.search_runs([experiment_id], view["searchFilter"])
        assert sorted(run.info.run_id for run in found) == sorted(jobs), view["searchFilter"]


# --- signals and the reaper ----------------------------------------------------------------------

VICTIM = """
import sys, time
from mnist_bench import tracking
client, experiment_id = tracking.open_store(sys.argv[1], "mnist-bench")
with tracking.tracked_run(client, experiment_id, "victim", {"lr": 0.1}, {}) as run:
    print(run.run_id, flush=True)
    time.sleep(300)
"""


def start_victim(uri: str) -> tuple[subprocess.Popen, str]:
    """A process that opens a tracked run and sleeps in it; returns it and its run id."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, "-c", VICTIM, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    line = proc.stdout.readline().strip() if ready else ""
    if not line:
        proc.kill()
        _, stderr = proc.communicate(timeout=30)
        pytest.fail(f"the victim process never opened its run: {stderr[-2000:]}")
    return proc, line


def test_sigterm_ends_the_run_killed(store) -> None:
    proc, run_id = start_victim(store.uri)
    assert _status(store.client, run_id) == "RUNNING"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    run = store.client.get_run(run_id)
    assert run.info.status == "KILLED", stderr[-2000:]
    assert f"signal {int(signal.SIGTERM)}" in run.data.tags[Tag.ERROR]


def test_sigkill_leaves_the_run_running_until_reaped(store) -> None:
    proc, victim = start_victim(store.uri)
    proc.kill()
    proc.communicate(timeout=60)  # waited for: the pid is gone, not a zombie
    client, experiment_id = tracking.open_store(store.uri, EXPERIMENT)
    assert _status(client, victim) == "RUNNING"  # nobody was left to close it

    with tracking.tracked_run(client, experiment_id, "alive", {}, {}) as mine:
        assert tracking.reap(client, experiment_id) == [victim]
        assert _status(client, mine.run_id) == "RUNNING"  # this live process's run is left alone
        assert tracking.reap(client, experiment_id) == []  # nothing left to reap
    assert _status(client, mine.run_id) == "FINISHED"

    reaped = client.get_run(victim)
    assert reaped.info.status == "KILLED"
    assert "process gone" in reaped.data.tags[Tag.ERROR]


def test_reap_leaves_runs_of_other_hosts_alone(store) -> None:
    client, experiment_id = tracking.open_store(store.uri, EXPERIMENT)
    tags = {Tag.HOST: machine.hostname() + "-elsewhere", Tag.PID: "999999999"}
    other = client.create_run(experiment_id, tags=tags).info.run_id
    assert tracking.reap(client, experiment_id) == []
    assert _status(client, other) == "RUNNING"


# --- a brand-new store opened by several processes at once ----------------------------------------

PROCESSES, ROUNDS = 4, 3


def open_rounds(uris: list[str], barrier, results, reader: bool) -> None:
    """In a spawned process: for each store, wait for the others, then open it at the same moment,
    as a sweep job does (creating it) or as a report does (polling until a sweep has created it)."""
    for uri in uris:
        barrier.wait(timeout=240)
        try:
            experiment_id = _read_once_created(uri) if reader else tracking.open_store(uri, EXPERIMENT)[1]
            results.put((uri, experiment_id))
        except Exception as err:
            results.put((uri, f"error: {type(err).__name__}: {err}"))


def _read_once_created(uri: str) -> str:
    deadline = time.monotonic() + 120
    while True:
        try:
            return tracking.open_existing(uri, EXPERIMENT)[1]
        except tracking.TrackingError:  # no store or no experiment yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


@pytest.mark.parametrize("readers", [0, 2], ids=["creators", "creators-and-readers"])
def test_parallel_processes_open_a_brand_new_store(tmp_path: Path, readers: int) -> None:
    uris = [f"sqlite:///{tmp_path}/round{k}/mlflow.db" for k in range(ROUNDS)]
    for k in range(ROUNDS):
        (tmp_path / f"round{k}").mkdir()
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=open_rounds, args=(uris, barrier, results, k < readers)) for k in range(PROCESSES)]
    for proc in procs:
        proc.start()
    try:
        outcomes = [results.get(timeout=300) for _ in range(PROCESSES * ROUNDS)]
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
    assert [proc.exitcode for proc in procs] == [0] * PROCESSES
    errors = [f"{uri}: {outcome}" for uri, outcome in outcomes if outcome.startswith("error")]
    assert not errors
    from mlflow.tracking import MlflowClient

    for uri in uris:
        ids = {outcome for u, outcome in outcomes if u == uri}
        assert len(ids) == 1  # every process got the one experiment
        path = uri.removeprefix("sqlite:///")
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        experiments = MlflowClient(uri).search_experiments(filter_string=f"name = '{EXPERIMENT}'")
        assert [e.experiment_id for e in experiments] == list(ids)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tracking.uri=https://alice:s3cret@mlflow.example:5000", "tracking.uri=https://mlflow.example:5000"),
        ("tracking.uri='postgresql+psycopg2://bob:s3cret@db:5432/m'", "tracking.uri='postgresql+psycopg2://db:5432/m'"),
        ("postgresql://bob:p@ss@db/m lr=0.1", "postgresql://db/m lr=0.1"),  # an @ in the password
        ("sqlite:////tmp/m.db?password=s3cret&timeout=3", "sqlite:////tmp/m.db?password=***&timeout=3"),
        ("https://h/x?a=1&Token=s3cret#f", "https://h/x?a=1&Token=***#f"),
        ("mirrors:\n- https://bob:s3cret@mirror.example/mnist/\n", "mirrors:\n- https://mirror.example/mnist/\n"),
        ("tracking.uri=sqlite:////tmp/m.db lr=0.1,0.5", "tracking.uri=sqlite:////tmp/m.db lr=0.1,0.5"),
        # as Hydra writes an unquoted override (launch line, .hydra files, a sweep's planned cells)
        (
            "#0 : tracking.uri=postgresql+psycopg2\\://bob\\:s3cret@db/m",
            "#0 : tracking.uri=postgresql+psycopg2\\://db/m",
        ),
        ("dataset.mirrors=[https\\://bob\\:s3cret@m.example/mnist/]", "dataset.mirrors=[https\\://m.example/mnist/]"),
        (
            "- tracking.uri=sqlite\\:////tmp/m.db?password\\=s3cret",
            "- tracking.uri=sqlite\\:////tmp/m.db?password\\=***",
        ),
    ],
)
def test_one_redaction_for_every_text(text: str, expected: str) -> None:
    """URIs, overrides (quoted or not), command lines and config files: user:password@ and password or
    token query values never survive."""
    assert tracking.redact(text) == expected
