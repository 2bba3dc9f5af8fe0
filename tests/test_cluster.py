"""The cluster set-up end to end: a throwaway PostgreSQL, ``mnist-bench server`` (MLflow) on it, a Ray
head, and sweeps with ``hydra/launcher=ray`` that log to the server over HTTP.

Everything listens on 127.0.0.1 only and every process started here is stopped by its fixture, by
its own pid or process group (never by name: ``ray stop`` would end every Ray on the machine).
The quick tests at the end check the server's input handling without any of it.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from needs import DATA_DIR, NO_DATA, POSTGRESQL, import_extra, missing

from mnist_bench import server, tracking
from mnist_bench.schema import Tag

EPOCH_METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "epoch_seconds")
ARTIFACTS = {"config.yaml", "weights.npz", "confusion_matrix.csv", "test_predictions.csv"}
SMALL = ["batch_size=256", "dataset.train_limit=2000", "dataset.test_limit=500", "progress=none"]
SWEEP_TIMEOUT_S = 240


def _initdb() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1])
    which = shutil.which("initdb")
    return Path(which) if which else None


def _missing() -> str | None:
    """Why the cluster tests cannot run here, or None."""
    for module, package in (
        ("ray", "ray[default]"),
        ("hydra_plugins.hydra_ray_launcher", "hydra-ray-launcher"),
        ("psycopg2", "psycopg2-binary"),
    ):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed (pip install -e '.[cluster]')"
    if _initdb() is None:
        return f"PostgreSQL server binaries are missing (/usr/lib/postgresql/*/bin/initdb): {POSTGRESQL}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run initdb as"
    if not DATA_DIR:
        return NO_DATA
    return None


@pytest.fixture
def cluster() -> None:
    """Skips a test that needs the whole cluster stack where part of it is absent (fails in CI)."""
    reason = _missing()
    if reason is not None:
        missing(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(uri: str) -> bool:
    """Whether an MLflow server at ``uri`` says it is healthy."""
    try:
        with urllib.request.urlopen(uri + "/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_for(check, timeout: float, what: str, process: subprocess.Popen | None = None, log: Path | None = None):
    """Poll ``check`` until it returns something truthy; fail with the log if the process dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-4000:] if log is not None and log.exists() else ""
    pytest.fail(f"{what} did not happen within {timeout:.0f} s\n{tail}")


def stop(process: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM, then SIGKILL to the process's whole group (it was started in a session of its own)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@dataclass
class Postgres:
    port: int
    user: str
    password: str
    database: str

    @property
    def uri(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL cluster in a temporary folder on 127.0.0.1 only, with a password-protected user."""
    bindir = _initdb().parent
    as_owner: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="mnist-bench-pg-"))  # not under pytest's root-only tmp: postgres reads it
    if os.geteuid() == 0:  # initdb refuses root
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_owner = ["runuser", "-u", "postgres", "--"]
    data, log = root / "data", root / "postgres.log"
    port = free_port()
    initdb = [*as_owner, bindir / "initdb", "-D", data, "-U", "postgres", "-E", "UTF8"]
    subprocess.run([*initdb, "--auth-local=trust", "--auth-host=scram-sha-256"], check=True, capture_output=True)
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=60"
    subprocess.run(
        [*as_owner, bindir / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "-t", "60", "start"],
        check=True,
        capture_output=True,
    )
    try:
        db = Postgres(port, "mnist", secrets.token_hex(16), "mlflow")
        sql = f"CREATE ROLE {db.user} LOGIN PASSWORD '{db.password}';\nCREATE DATABASE {db.database} OWNER {db.user};\n"
        psql = [*as_owner, bindir / "psql", "-h", root, "-p", str(port), "-U", "postgres", "-v", "ON_ERROR_STOP=1"]
        subprocess.run([*psql, "-q", "-d", "postgres"], input=sql, text=True, check=True, capture_output=True)
        yield db
    finally:
        subprocess.run([*as_owner, bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``mnist-bench server`` on the PostgreSQL store; yields its URI and its artifacts folder."""
    folder = tmp_path_factory.mktemp("server")
    artifacts, log = folder / "artifacts", folder / "server.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "MLFLOW_TRACKING_URI")}
    env[server.PASSWORD_ENV] = postgres.password
    command = [sys.executable, "-m", "mnist_bench", "server", "--db", postgres.uri, "--port", str(port)]
    command += ["--artifacts-destination", str(artifacts), "--workers", "2"]
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(uri), 120, "the MLflow server's /health", process, log)
        assert postgres.password not in " ".join(command)
        yield uri, artifacts
    finally:
        stop(process)
    assert postgres.password not in log.read_text(errors="replace"), "the database password was logged"


@dataclass
class RayHead:
    process: subprocess.Popen
    address: str
    env: dict[str, str]
    log: Path


@pytest.fixture(scope="session")
def ray_started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    """``ray start --head`` with 2 CPUs on 127.0.0.1 (token auth on), not yet waited for: it starts
    while the MLflow server does."""
    temp = Path(tempfile.mkdtemp(prefix="mbray-"))  # short: Ray's socket paths must fit in 107 bytes
    log = tmp_path_factory.mktemp("ray") / "head.log"
    port = free_port()
    env = dict(os.environ)
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(16),
        RAY_USAGE_STATS_ENABLED="0",
        # Ray's single-machine mode: otherwise it swaps 127.0.0.1 for the machine's outward address.
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        MNIST_BENCH_DATA_DIR=str(DATA_DIR),  # jobs run in the workers' environment, not the sweep's
    )
    env.setdefault("MNIST_BENCH_CACHE_DIR", str(temp / "cache"))
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block"]  # `ray`, PATH or not
    command += [
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--num-cpus=2",
        "--num-gpus=0",
        "--include-dashboard=false",
        f"--temp-dir={temp}",
    ]
    command += ["--disable-usage-stats"]
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield RayHead(process, f"127.0.0.1:{port}", env, log)
    finally:
        stop(process)  # `ray start --block` stops its cluster on SIGTERM; the group kill catches stragglers
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_head(ray_started: RayHead) -> tuple[str, dict[str, str]]:
    """The Ray head once it runs: its address and the environment that reaches it."""
    log = ray_started.log
    started = lambda: "Ray runtime started" in log.read_text(errors="replace")  # noqa: E731
    wait_for(started, 120, "ray start", ray_started.process, log)
    return ray_started.address, ray_started.env


def sweep_command(address: str, uri: str, experiment: str, sweep_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mnist_bench",
        "-m",
        "hydra/launcher=ray",
        f"hydra.launcher.ray.init.address={address}",
        f"tracking.uri={uri}",
        f"tracking.experiment={experiment}",
        f"hydra.sweep.dir={sweep_dir}",
        *SMALL,
        *overrides,
    ]


def runs_of(client, experiment_id: str, filter_string: str = "") -> list:
    return client.search_runs([experiment_id], filter_string=filter_string, max_results=1000)


@pytest.mark.usefixtures("cluster")
@pytest.mark.slow
def test_ray_sweep_logs_every_run_point_and_artifact_to_the_server(
    ray_started, mlflow_server, ray_head, tmp_path: Path
) -> None:
    uri, artifacts = mlflow_server
    address, env = ray_head
    command = sweep_command(address, uri, "cluster-sweep", tmp_path / "sweep")
    command += ["lr=0.05,0.1,0.2,0.5", "activation=sigmoid,softmax", "epochs=2"]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S)
    (tmp_path / "sweep.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "sweep summary: finished 8" in done.stdout

    client, experiment_id = tracking.open_existing(uri, "cluster-sweep")
    (parent,) = runs_of(client, experiment_id, "tags.`mnist_bench.kind` = 'sweep'")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[Tag.SWEEP_DIR] == str(tmp_path / "sweep")
    children = runs_of(client, experiment_id, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 8
    assert {(c.data.params["lr"], c.data.params["activation"]) for c in children} == {
        (lr, act) for lr in ("0.05", "0.1", "0.2", "0.5") for act in ("sigmoid", "softmax")
    }
    launcher_pid = str(os.getpid())
    for child in children:
        run_id = child.info.run_id
        assert child.info.status == "FINISHED", child.data.tags.get(Tag.ERROR)
        assert child.data.tags[Tag.PID] != launcher_pid  # ran in a Ray worker
        assert child.data.tags[Tag.THREADS] == "1"  # the one CPU each job asked Ray for
        for metric in EPOCH_METRICS:
            steps = [m.step for m in client.get_metric_history(run_id, metric)]
            assert len(steps) == len(set(steps)) == 2, (metric, steps)
        assert {a.path for a in client.list_artifacts(run_id)} >= ARTIFACTS
        # Proxied: the bytes went through the server into its own artifacts folder.
        stored = list(artifacts.rglob(f"{run_id}/artifacts/weights.npz"))
        assert len(stored) == 1 and stored[0].stat().st_size > 0
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"sweep_cells.json"}


@pytest.mark.usefixtures("cluster")
@pytest.mark.slow
def test_killed_ray_job_is_reported_and_a_relaunch_finishes_every_cell(
    ray_started, mlflow_server, ray_head, tmp_path: Path
) -> None:
    uri, _ = mlflow_server
    address, env = ray_head
    experiment = "cluster-kill"
    # The long cell is launched last, so the short one is done when its worker dies. 3,000 epochs of 3 ms keep
    # it training for seconds after its first epochs reach the store (at most a second after they end).
    command = sweep_command(address, uri, experiment, tmp_path / "sweep", "lr=0.3", "epochs=2,3000")
    log = tmp_path / "first.log"
    with log.open("w") as out:
        first = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:

        def long_run_training():
            try:
                client, experiment_id = tracking.open_existing(uri, experiment)
            except tracking.TrackingError:  # no experiment yet
                return None
            for run in runs_of(client, experiment_id, "params.epochs = '3000' and attributes.status = 'RUNNING'"):
                if client.get_metric_history(run.info.run_id, "train_loss"):
                    return run
            return None

        run = wait_for(long_run_training, SWEEP_TIMEOUT_S, "the long job's first epoch", first, log)
        pid = int(run.data.tags[Tag.PID])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert "ray" in cmdline and pid != first.pid, cmdline  # a Ray worker of ours, nothing else
        os.kill(pid, signal.SIGKILL)
        first.wait(timeout=SWEEP_TIMEOUT_S)
    finally:
        if first.poll() is None:
            stop(first)
    output = log.read_text(errors="replace")
    assert first.returncode == 1, output[-3000:]  # one killed cell, not a lost sweep
    assert "lost with its Ray worker or node (The worker died unexpectedly" in output, output[-3000:]
    assert "sweep summary: finished 1, killed 1" in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]

    client, experiment_id = tracking.open_existing(uri, experiment)
    (parent,) = runs_of(client, experiment_id, "tags.`mnist_bench.kind` = 'sweep'")
    assert parent.info.status == "FAILED"

    again = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    by_cell: dict[str, list[str]] = {}
    for job in runs_of(client, experiment_id):
        if Tag.CONFIG_HASH in job.data.tags:  # every run but the two sweeps' parents
            by_cell.setdefault(job.data.tags[Tag.CONFIG_HASH], []).append(job.info.status)
    assert len(by_cell) == 2
    for statuses in by_cell.values():
        assert statuses.count("FINISHED") == 1, by_cell
        assert "RUNNING" not in statuses, by_cell  # the killed run was closed as KILLED
    assert sorted(s for statuses in by_cell.values() for s in statuses) == ["FINISHED", "FINISHED", "KILLED"]


@pytest.mark.usefixtures("cluster")
@pytest.mark.slow
def test_jobs_that_start_together_share_one_dataset_input(mlflow_server) -> None:
    """MLflow looks for a dataset and then inserts it: jobs that log the same one at the same moment
    can all miss it, and every insert but one breaks a unique key. Each run must still get its input."""
    uri, _ = mlflow_server
    jobs = 8
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.create_experiment(f"dataset-race-{secrets.token_hex(4)}")
    run_ids = [client.create_run(experiment_id).info.run_id for _ in range(jobs)]
    checksums = {"train_images": secrets.token_hex(32)}  # a dataset version this server has not seen
    start = threading.Barrier(jobs)
    errors: list[BaseException] = []

    def job(run_id: str) -> None:
        start.wait()
        try:
            tracking.log_dataset(MlflowClient(uri), run_id, "mnist", "/data/mnist", checksums, {"train": 60000})
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=job, args=(run_id,)) for run_id in run_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, tracking.error_line(errors[0])
    for run_id in run_ids:
        (logged,) = client.get_run(run_id).inputs.dataset_inputs
        assert json.loads(logged.dataset.profile)["sha256"] == checksums


def plain_server(folder: Path, port: int) -> subprocess.Popen:
    """``mlflow server`` on a SQLite store in ``folder`` (its log: folder/server.log), once it answers."""
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = folder / "server.log"
    with log.open("a") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: answers(f"http://127.0.0.1:{port}"), 120, "mlflow server's /health", server, log)
    return server


def metrics_logged(uri: str) -> bool:
    from mlflow.tracking import MlflowClient

    return any(r.data.metrics for r in MlflowClient(uri).search_runs(["1"], max_results=10))


class Gate:
    """The server's address as workers see it: a port on 127.0.0.1 that forwards to the server while open and
    refuses connections while closed (nothing listens there), with the connections it carried cut. A server
    stopped and started again, without the minute its start-up takes on a loaded machine."""

    def __init__(self, server_port: int) -> None:
        self.port, self.server_port = free_port(), server_port
        self.carried: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.open()

    def open(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def close(self) -> None:
        assert self.listener is not None
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() that close() alone leaves listening
        self.listener.close()
        for connection in self.carried:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def _accept(self, listener: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                server = socket.create_connection(("127.0.0.1", self.server_port))
                self.carried += [client, server]
                for source, sink in ((client, server), (server, client)):
                    threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@pytest.mark.slow
@pytest.mark.usefixtures("mnist_dir")
def test_a_server_stopped_and_started_within_the_patience_loses_no_job(tmp_path: Path) -> None:
    """Refused connections used up MLflow's retries in 30-37 s whatever tracking.patience_s said: a server
    back after 37 s still failed the job."""
    server_port = free_port()
    server = plain_server(tmp_path, server_port)
    gate = Gate(server_port)
    uri = f"http://127.0.0.1:{gate.port}"
    run_log = tmp_path / "run.log"
    job = [sys.executable, "-m", "mnist_bench", f"tracking.uri={uri}", "epochs=3000", *SMALL]  # patience: 120 s
    with run_log.open("w") as out:
        run = subprocess.Popen(job, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: metrics_logged(uri), 120, "the run's first epochs", run, run_log)
        gate.close()  # refused from now on
        time.sleep(37)
        gate.open()
        run.wait(timeout=300)
    finally:
        gate.close()
        stop(server)
        if run.poll() is None:
            run.kill()
    output = run_log.read_text()
    assert run.returncode == 0, output[-3000:]
    assert f"tracking server {uri} is not answering" in output and "Traceback" not in output, output[-3000:]
    from mlflow.tracking import MlflowClient

    [finished] = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_runs(["1"])
    assert finished.info.status == "FINISHED" and finished.data.metrics["epochs_run"] == 3000


@pytest.mark.slow
@pytest.mark.usefixtures("mnist_dir")
def test_a_frozen_server_fails_the_later_jobs_at_once_and_the_summary_in_one_line(tmp_path: Path) -> None:
    """With a server frozen (SIGSTOP) and tracking.patience_s=10, each later job waited about 65 s on /health,
    and the sweep's summary died in a 141-line MlflowException with its parent run left RUNNING."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    run_log = tmp_path / "run.log"
    server = plain_server(tmp_path, port)
    sweep = [sys.executable, "-m", "mnist_bench", "-m", "lr=0.1,0.2,0.3", "epochs=100000", f"tracking.uri={uri}",
             "tracking.patience_s=10", f"hydra.sweep.dir={tmp_path}/multirun", *SMALL]  # fmt: skip
    with run_log.open("w") as out:
        run = subprocess.Popen(sweep, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: metrics_logged(uri), 120, "the first job's epochs", run, run_log)
        os.killpg(server.pid, signal.SIGSTOP)
        frozen = time.monotonic()
        run.wait(timeout=120)
        gave_up_s = time.monotonic() - frozen
        os.killpg(server.pid, signal.SIGCONT)
        reaped = subprocess.run(
            [sys.executable, "-m", "mnist_bench", "reap", "--tracking-uri", uri], capture_output=True, text=True
        )
        from mlflow.tracking import MlflowClient

        statuses = sorted(r.info.status for r in MlflowClient(uri).search_runs(["1"]))
    finally:
        os.killpg(server.pid, signal.SIGCONT)
        stop(server)
        if run.poll() is None:
            run.kill()
    output = run_log.read_text()
    assert run.returncode == 2, output[-3000:]
    assert "Traceback" not in output and "MlflowException" not in output, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith("mnist-bench: error: ") and f"tracking server {uri} is not answering" in last, last
    assert "reap" in last, last
    # the first job's patience, then the later two jobs and the sweep's end a few seconds each
    assert gave_up_s < 10 + 3 * 8, (gave_up_s, output[-3000:])
    assert output.count("FAILED: ") == 3, output[-3000:]
    assert reaped.returncode == 0, reaped.stderr
    assert "RUNNING" not in statuses, statuses


@pytest.mark.slow
@pytest.mark.usefixtures("mnist_dir")
def test_a_server_killed_mid_sweep_is_named_within_10_s_and_the_sweep_gives_up_within_its_patience(
    tmp_path: Path,
) -> None:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    run_log = tmp_path / "run.log"
    server = plain_server(tmp_path, port)
    run = None
    try:
        # A sweep: its jobs log through the record factory that redacts what they print (hydra_app).
        job = [sys.executable, "-m", "mnist_bench", "-m", "lr=0.1,0.2", f"tracking.uri={uri}", "tracking.patience_s=10"]
        job += ["epochs=100000"]
        with run_log.open("w") as out:
            run = subprocess.Popen([*job, *SMALL], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)

        wait_for(lambda: metrics_logged(uri), 120, "the run's first epochs", run, run_log)
        os.killpg(server.pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: "is not answering" in run_log.read_text(), 10, "a line naming the server", run, run_log)
        run.wait(timeout=60)  # MLflow's own retries would take about 4 minutes a call
        gave_up_s = time.monotonic() - killed
    finally:
        stop(server)
        if run is not None and run.poll() is None:
            run.kill()
    output = run_log.read_text()
    assert run.returncode == 2, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith("mnist-bench: error: run ") and f"tracking server {uri} is not answering" in last, last
    assert "reap marks it KILLED" in last
    assert "Traceback" not in output and "Retrying (Retry(" not in output, output[-3000:]
    # notices, at most one per 10 s; each job's FAILED line (both train in rounds, so both meet the server gone);
    # the last line
    notices = 1 + gave_up_s // tracking.SERVER_NOTICE_EVERY_S
    assert output.count("is not answering") <= notices + 2 + 1, output[-3000:]


@pytest.mark.usefixtures("cluster")
@pytest.mark.slow
def test_no_password_reaches_any_file_param_tag_or_line_of_a_sweep(postgres: Postgres, tmp_path: Path) -> None:
    """An unquoted tracking.uri with user:password@ reached Hydra's "#0 :" launch line, .hydra/overrides.yaml,
    hydra.yaml and the sweep's sweep_cells.json; a dataset.mirrors entry with one reached all but params."""
    store = f"postgresql+psycopg2://{postgres.user}:{postgres.password}@127.0.0.1:{postgres.port}/{postgres.database}"
    mirror_secret = secrets.token_hex(8)
    experiment = f"secrets-{secrets.token_hex(4)}"
    args = ["-m", "lr=0.1,0.2", "epochs=1", *SMALL, f"tracking.uri={store}", f"tracking.experiment={experiment}",
            f"dataset.mirrors=[https://mirror:{mirror_secret}@mirror.invalid/mnist/]",
            f"hydra.sweep.dir={tmp_path}/multirun", f"hydra.run.dir={tmp_path}/outputs"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "mnist_bench", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    said = done.stdout + done.stderr
    assert "#0 : " in said and "sweep summary: finished 2" in said, said[-3000:]
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert any(path.name == "sweep_cells.json" for path in written) and any(p.name == "hydra.yaml" for p in written)
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    recorded = [json.dumps([run.data.params, run.data.tags]) for run in runs]
    for secret in (postgres.password, mirror_secret):
        assert secret not in said
        assert not [path for path in written if secret.encode() in path.read_bytes()]
        assert not [text for text in recorded if secret in text]


# Quick checks of the server's input handling: no database needed.


@pytest.mark.parametrize(
    "uri", ["postgresql://mnist:s3cret@127.0.0.1:5432/mlflow", "postgresql://mnist@127.0.0.1/mlflow?password=s3cret"]
)
def test_server_refuses_a_password_in_the_store_uri(uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert server.main(["--db", uri, "--no-check"]) == 2
    err = capsys.readouterr().err
    assert "must not hold the password" in err and "s3cret" not in err


def test_server_refuses_a_port_it_cannot_listen_on(capsys: pytest.CaptureFixture[str]) -> None:
    """Before it prints the URI workers should use: a port out of range, or one already taken."""
    db = "postgresql://mnist@127.0.0.1:5432/mlflow"
    assert server.main(["--db", db, "--no-check", "--port", "99999"]) == 2
    assert "'99999' is not a port" in capsys.readouterr().err
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert server.main(["--db", db, "--no-check", "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port} (Address already in use)" in err


def test_server_refuses_a_store_that_is_not_postgresql(capsys: pytest.CaptureFixture[str]) -> None:
    assert server.main(["--db", "sqlite:///mlflow.db", "--no-check"]) == 2
    assert "must be PostgreSQL" in capsys.readouterr().err


def test_server_refuses_an_artifacts_destination_it_cannot_write(
    unwritable_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It ended in a traceback from mkdir."""
    db = "postgresql://mnist@127.0.0.1:5432/mlflow"
    for destination in (unwritable_folder / "artifacts", unwritable_folder):
        assert server.main(["--db", db, "--no-check", "--artifacts-destination", str(destination)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1, err
        assert err.startswith(f"mnist-bench server: error: cannot write --artifacts-destination {destination} (")
        assert "(or choose another --artifacts-destination)" in err
    assert list(unwritable_folder.iterdir()) == []


def test_server_command_binds_loopback_and_proxies_artifacts(tmp_path: Path) -> None:
    args = server.parse_args(["--db", "postgresql://u@db:5432/m", "--artifacts-destination", str(tmp_path)])
    command = server.mlflow_command(args, server.check_store_uri(args.db), str(tmp_path))
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert "--serve-artifacts" in command and command[command.index("--artifacts-destination") + 1] == str(tmp_path)
    assert "--allowed-hosts" not in command
    assert server.tracking_uri("127.0.0.1", 5000) == "http://127.0.0.1:5000"
    assert server.tracking_uri("0.0.0.0", 5000) == f"http://{socket.getfqdn()}:5000"


def test_server_passes_extra_arguments_to_mlflow() -> None:
    args = server.parse_args(["--db", "postgresql://u@db/m", "--host", "0.0.0.0", "--", "--gunicorn-opts", "-t 60"])
    command = server.mlflow_command(args, args.db, "/srv/artifacts")
    assert command[-2:] == ["--gunicorn-opts", "-t 60"]
    assert socket.gethostname() in command[command.index("--allowed-hosts") + 1]


@pytest.mark.parametrize(
    ("overrides", "remote"),
    [
        ([], {"num_cpus": None, "num_gpus": 0, "max_retries": 0}),
        (["backend=keras", "device=gpu", "backend.threads=3"], {"num_cpus": 3, "num_gpus": 1, "max_retries": 0}),
    ],
)
@pytest.mark.filterwarnings("ignore:\\s*'hydra/launcher/ray' is validated against ConfigStore schema:UserWarning")
def test_ray_launcher_asks_for_the_jobs_threads_and_gpu(overrides: list[str], remote: dict) -> None:
    import_extra("hydra_plugins.hydra_ray_launcher", "cluster")
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from mnist_bench import hydra_app, machine, paths
    from mnist_bench.hydra_app.launchers import parallel_jobs

    hydra_app.register()
    with initialize_config_dir(config_dir=str(paths.conf_dir()), version_base="1.3"):
        cfg = compose("config", ["hydra/launcher=ray", *overrides], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert OmegaConf.to_container(launcher.ray.remote, resolve=True) == remote
    assert launcher.ray.init.address is None  # a local Ray instance unless told otherwise
    threads = remote["num_cpus"] or 1
    assert parallel_jobs(launcher) == max(1, machine.cpu_count() // threads)
