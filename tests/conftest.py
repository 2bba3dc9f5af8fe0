"""Shared fixtures: real MNIST (when CI provides it), the CLI as a subprocess, real SQLite MLflow stores,
and HTTP servers on 127.0.0.1.

Nothing here mocks MLflow, Hydra or NumPy, and nothing is written into the repository: stores,
caches and Hydra output folders all live under pytest's tmp dirs.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from needs import DATA_DIR, NO_DATA, missing

from mnist_bench import tracking
from mnist_bench.schema import KIND_SWEEP, Tag

if TYPE_CHECKING:  # mlflow is imported lazily: tests that never touch a store skip its import time
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient


REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "mnist-bench"
CLI_TIMEOUT_S = 300


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed ``subprocess.run(..., check=True)`` shows what the child printed, not just its exit status."""
    report = yield
    error = call.excinfo.value if call.excinfo is not None else None
    if isinstance(error, subprocess.CalledProcessError):
        for name, output in (("stdout", error.stdout), ("stderr", error.stderr)):
            if output:
                text = output.decode(errors="replace") if isinstance(output, bytes) else output
                report.sections.append((f"{name} of {error.cmd!r}", text[-5000:]))
    return report


@dataclass
class Store:
    """A real MLflow SQLite store in a tmp folder."""

    path: Path
    uri: str

    @functools.cached_property
    def client(self) -> MlflowClient:
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The folder CI puts the real MNIST files in (it or its mnist/ subfolder holds them)."""
    if not DATA_DIR:
        missing(NO_DATA)
    return Path(DATA_DIR)


@pytest.fixture(scope="session")
def mnist_overrides(mnist_dir: Path, cache_dir: Path) -> list[str]:
    """Overrides that make a composed config (see compose_config) read the real MNIST, never download it."""
    return [f"dataset.dir={mnist_dir}", f"dataset.cache_dir={cache_dir}", "dataset.download=false"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of decoded arrays (and the roofline probe) for the session, never the user's own."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def cli_env(cache_dir: Path) -> dict[str, str]:
    """The environment of a CLI child: this checkout first on the path, the session's cache, no stray settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "MLFLOW_TRACKING_URI")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env["MNIST_BENCH_CACHE_DIR"] = str(cache_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


RunCli = Callable[..., subprocess.CompletedProcess]


@pytest.fixture(scope="session")
def run_cli(cli_env: dict[str, str]) -> RunCli:
    """``run_cli(args, cwd, env=None, timeout=300)``: ``python -m mnist_bench *args`` in cwd; env entries set to None
    are unset."""

    def run(
        args: list[str], cwd: Path, env: Mapping[str, str | None] | None = None, timeout: float = CLI_TIMEOUT_S
    ) -> subprocess.CompletedProcess:
        child_env = dict(cli_env)
        for key, value in (env or {}).items():
            if value is None:
                child_env.pop(key, None)
            else:
                child_env[key] = value
        return subprocess.run(
            [sys.executable, "-m", "mnist_bench", *args],
            cwd=cwd,
            env=child_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture(scope="session")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty store with MLflow's schema already created: copying it saves every test the migrations."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("store-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # creates and migrates the schema
    return path


MakeStore = Callable[[Path], Store]


@pytest.fixture(scope="session")
def make_store(store_template: Path) -> MakeStore:
    """``make_store(folder)``: a fresh store at folder/mlflow.db (no experiment, no runs yet)."""

    def make(folder: Path) -> Store:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "mlflow.db"
        shutil.copyfile(store_template, path)
        uri = f"sqlite:///{path}"
        return Store(path, uri)

    return make


@pytest.fixture
def store(tmp_path: Path, make_store: MakeStore) -> Store:
    """A fresh real SQLite store in tmp_path: its URI and a client."""
    return make_store(tmp_path)


def fetch_runs(uri: str, experiment: str = EXPERIMENT) -> list[Run]:
    """Every run of the experiment in the store at uri (any status); [] if the store or experiment does not exist.

    Opens the store the way the product's readers do (creating nothing, under the store's lock), so a
    test may poll a store that a running sweep is still creating.
    """
    from mlflow.entities import ViewType

    try:
        client, experiment_id = tracking.open_existing(uri, experiment)
    except tracking.TrackingError:
        return []
    return client.search_runs([experiment_id], run_view_type=ViewType.ALL, max_results=10000)


def job_runs(uri: str) -> list[Run]:
    """The runs of the store's jobs: every run but the sweeps' parents."""
    return [run for run in fetch_runs(uri) if run.data.tags.get(Tag.KIND) != KIND_SWEEP]


@pytest.fixture(scope="session")
def runs_of() -> Callable[[str], list[Run]]:
    """``runs_of(uri)``: the runs of experiment mnist-bench in that store."""
    return fetch_runs


def hydra_dirs(folder: Path) -> list[str]:
    """Overrides that keep Hydra's output folders under folder (never in the repository)."""
    return [f"hydra.run.dir={folder}/outputs", f"hydra.sweep.dir={folder}/multirun"]


@pytest.fixture(scope="session")
def hydra_args() -> Callable[[Path], list[str]]:
    """``hydra_args(folder)``: hydra.run.dir and hydra.sweep.dir under folder."""
    return hydra_dirs


@pytest.fixture
def serve_loopback() -> Iterator[Callable[[type[BaseHTTPRequestHandler]], str]]:
    """``serve_loopback(Handler)``: serves Handler on 127.0.0.1 (never another address) in a thread until
    the test ends; returns its base URL."""
    servers: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def serve(handler: type[BaseHTTPRequestHandler]) -> str:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        servers.append((httpd, thread))
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield serve
    for httpd, thread in servers:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@contextlib.contextmanager
def mounted(folder: Path, *mount_args: str) -> Iterator[Path]:
    """``folder`` with a filesystem mounted on it for the block (``mount *mount_args folder``), unmounted after.
    Mounting needs root: elsewhere the test skips (fails in CI, whose .ci/run runs as root)."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *mount_args, str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        missing(f"cannot mount here ({done.stderr.strip() or 'mount failed'}): run the test as root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB filesystem (tmpfs), so that what is written there can run out of space."""
    with mounted(tmp_path / "disk", "-t", "tmpfs", "-o", "size=8m", "tmpfs") as disk:
        yield disk


def fill(disk: Path, leave_bytes: int = 0) -> None:
    """Fill ``disk`` until ``leave_bytes`` are left free."""
    free = os.statvfs(disk)
    (disk / "filler").write_bytes(bytes(max(0, free.f_bavail * free.f_frsize - leave_bytes)))


@pytest.fixture
def full_disk(small_disk: Path) -> Path:
    """A filesystem with no space left: writing any file's content there fails with ENOSPC."""
    fill(small_disk)
    return small_disk


@pytest.fixture
def unwritable_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder nothing can be written in: without write permission, or, for root (whom permissions do not
    stop), a read-only bind mount."""
    folder = tmp_path / "unwritable"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    with mounted(folder, "--bind", "-o", "ro", str(folder)):
        yield folder
