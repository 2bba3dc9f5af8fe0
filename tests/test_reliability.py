"""Sweeps that survive parallel workers and SIGKILL: every cell ends with exactly one FINISHED run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import fetch_runs, fill, job_runs
from mlflow.tracking import MlflowClient

from mnist_bench.schema import Tag

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("mnist_dir")]

SMALL = ["dataset.train_limit=600", "dataset.test_limit=200", "progress=none"]
METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "epoch_seconds")


def sweep_args(tmp: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mnist_bench",
        "-m",
        *overrides,
        *SMALL,
        f"tracking.uri=sqlite:///{tmp}/mlflow.db",
        f"hydra.sweep.dir={tmp}/multirun",
    ]


def child_runs(tmp: Path) -> list:
    return job_runs(f"sqlite:///{tmp}/mlflow.db")


@pytest.mark.parametrize("attempt", range(5))
def test_joblib_sweep_on_a_brand_new_store_finishes_every_job(tmp_path: Path, attempt: int) -> None:
    """Parallel jobs opening a new SQLite store at once used to race in MLflow's schema creation."""
    args = sweep_args(
        tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1", "epochs=1", "batch_size=100"
    )
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = child_runs(tmp_path)
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_eight_job_joblib_sweep_logs_every_run_and_point(tmp_path: Path) -> None:
    """Every run and point is logged, and the jobs run in the workers the sweep started and prepared ahead of
    its launch (the same reusable executor), not in fresh ones that import everything again."""
    args = sweep_args(
        tmp_path,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "lr=0.05,0.1,0.2,0.5",
        "activation=sigmoid,softmax",
        "epochs=3",
        "batch_size=100",
    )
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = child_runs(tmp_path)
    cells = {(r.data.params["lr"], r.data.params["activation"]) for r in runs}
    assert len(runs) == 8 and len(cells) == 8
    ready = re.search(r"joblib workers ready ahead of the launch: pids ([\d, ]+)", done.stdout + done.stderr)
    assert ready is not None, done.stdout[-2000:]
    assert {r.data.tags[Tag.PID] for r in runs} == set(ready.group(1).split(", "))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags[Tag.THREADS] == "1"  # 2 cores shared by 2 jobs
        for metric in METRICS:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
            assert sorted(steps) == [1, 2, 3], (run.info.run_name, metric)


def test_sigkilled_sweep_resumes_to_exactly_one_finished_run_per_cell(tmp_path: Path) -> None:
    # 1,000 epochs keep each job RUNNING about 3 s: at 40 (0.3 s) a job could finish between the poll that saw
    # it RUNNING and the kill, leaving nothing RUNNING to resume (seen once in CI). Jobs one after another, not
    # in rounds (where every cell finishes in the last round), so that the kill finds cells FINISHED and RUNNING.
    overrides = ("seed=0,1,2,3", "epochs=1000", "batch_size=50", "hydra.sweeper.rounds=false")
    launcher = subprocess.Popen(
        sweep_args(tmp_path, *overrides),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # kill it while a later job is training
            time.sleep(0.5)
            if any(r.info.status == "RUNNING" for r in _children_after_one(tmp_path)):
                break
        os.killpg(launcher.pid, signal.SIGKILL)
    finally:
        launcher.wait(timeout=60)
    before = child_runs(tmp_path)
    assert "RUNNING" in {r.info.status for r in before}, "the kill should have left a run RUNNING"

    done = subprocess.run(sweep_args(tmp_path, *overrides), cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = child_runs(tmp_path)
    finished = [r.data.params["seed"] for r in runs if r.info.status == "FINISHED"]
    assert sorted(finished) == ["0", "1", "2", "3"]  # each cell exactly once
    assert "RUNNING" not in {r.info.status for r in runs}  # the reaper closed the killed one
    assert any(r.info.status == "KILLED" for r in runs)


def test_sigterm_to_a_joblib_sweeps_main_process_leaves_no_run_running(tmp_path: Path) -> None:
    """A scheduler or a user's kill signals the sweep's main process only. Its parallel workers are then shut
    down without closing their runs: the sweep must close them (KILLED) before it exits 130."""
    # 1,000 epochs keep each job RUNNING about 3 s, past the poll that sees both running and the signal.
    sweep, workers = _two_workers_training(tmp_path, epochs=1000)
    _sigterm(sweep)
    runs = fetch_runs(f"sqlite:///{tmp_path}/mlflow.db")
    statuses = sorted(run.info.status for run in runs)
    assert statuses == ["KILLED"] * 3, statuses  # the parent and the two jobs it had started
    killed = [run for run in runs if run.data.tags.get(Tag.KIND) != "sweep"]
    assert all("process gone" in run.data.tags[Tag.ERROR] for run in killed)
    left = _outliving(workers, time.monotonic() + 15)  # loky's resource trackers go once their pipe closes
    assert workers and not left, "a worker process outlived its sweep"


def _sigterm(sweep: subprocess.Popen) -> None:
    """SIGTERM to the sweep's main process: it must exit 130, saying so in its last line."""
    try:
        sweep.send_signal(signal.SIGTERM)
        _, err = sweep.communicate(timeout=60)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "mnist-bench: terminated by signal 15", err[-2000:]


def _once_running(tmp: Path, overrides: Sequence[str], running: int) -> tuple[subprocess.Popen, list[str]]:
    """A sweep, once ``running`` of its jobs are RUNNING at once; and its child processes."""
    sweep = subprocess.Popen(
        sweep_args(tmp, *overrides), cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while sum(r.info.status == "RUNNING" for r in child_runs(tmp)) < running:
        if time.monotonic() > deadline or sweep.poll() is not None:
            sweep.kill()
            pytest.fail(f"{running} jobs never ran at once")
        time.sleep(0.5)
    return sweep, subprocess.run(["pgrep", "-P", str(sweep.pid)], capture_output=True, text=True).stdout.split()


def _two_workers_training(tmp: Path, epochs: int) -> tuple[subprocess.Popen, list[str]]:
    """A joblib sweep of 4 cells on 2 workers, once both are training; and its child processes."""
    overrides = (
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "seed=0,1,2,3",
        f"epochs={epochs}",
        "batch_size=50",
    )
    return _once_running(tmp, overrides, running=2)


def _outliving(pids: list[str], deadline: float) -> list[str]:
    """The processes still there at ``deadline`` (waited for until then)."""
    while (left := [pid for pid in pids if Path(f"/proc/{pid}").exists()]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_sigkill_to_a_joblib_sweeps_main_process_stops_its_workers(tmp_path: Path) -> None:
    """Nothing can close a SIGKILLed sweep's parent run, but its workers trained to the end (alive 90 s later).
    They see their parent gone and stop within seconds; the reaper takes what they could not close."""
    sweep, workers = _two_workers_training(tmp_path, epochs=3000)
    sweep.kill()
    killed_at = time.monotonic()
    output, err = sweep.communicate(timeout=60)
    left = _outliving(workers, killed_at + 15)
    assert workers and not left, f"workers {left} outlived their sweep by 15 s\n{output[-2000:]}\n{err[-2000:]}"
    assert output.count("the sweep's process (pid ") == 2, output[-2000:]  # each training worker says why
    # closed KILLED by the worker, or, where its last store call outlasted ORPHAN_GRACE_S, left to the reaper
    assert {r.info.status for r in child_runs(tmp_path)} <= {"KILLED", "RUNNING"}
    reaped = subprocess.run(
        [sys.executable, "-m", "mnist_bench", "reap", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert reaped.returncode == 0, reaped.stderr
    assert "RUNNING" not in {r.info.status for r in fetch_runs(f"sqlite:///{tmp_path}/mlflow.db")}


def test_sigterm_to_a_sweep_in_rounds_closes_every_cell_killed(tmp_path: Path) -> None:
    """A basic-launcher sweep in rounds has all its cells open at once: SIGTERM stops each at its
    next turn (the one training, at the end of its epoch), every run and the parent closed KILLED, exit 130."""
    overrides = ("seed=0,1,2", "epochs=1000", "batch_size=50")
    sweep, _ = _once_running(tmp_path, overrides, running=3)  # every cell
    _sigterm(sweep)
    runs = fetch_runs(f"sqlite:///{tmp_path}/mlflow.db")
    assert sorted(run.info.status for run in runs) == ["KILLED"] * 4  # the parent and its three jobs
    jobs = [run for run in runs if run.data.tags.get(Tag.KIND) != "sweep"]
    assert all(run.data.tags[Tag.ERROR] == "Terminated: terminated by signal 15" for run in jobs)


def _children_after_one(tmp: Path) -> list:
    """Child runs, once at least one job has FINISHED (so the kill lands mid-sweep)."""
    runs = child_runs(tmp)  # safe while the sweep is still creating the store: see fetch_runs
    return runs if any(r.info.status == "FINISHED" for r in runs) else []


def test_two_identical_sweeps_started_at_once_train_each_cell_once(tmp_path: Path) -> None:
    """Each job looks for a FINISHED run of its cell before training: two sweeps started together both find
    none. The later sweep must give way to the earlier, in one line, instead of training every cell again."""
    args = sweep_args(tmp_path, "lr=0.1,0.2", "epochs=1000")  # each cell trains for some seconds: they overlap
    sweeps = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    sweeps.append(subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [sweep.communicate(timeout=600) for sweep in sweeps]
    codes = sorted(sweep.returncode for sweep in sweeps)
    assert codes == [0, 2], outputs
    (refused,) = [err for sweep, (_, err) in zip(sweeps, outputs, strict=True) if sweep.returncode == 2]
    line = refused.strip().splitlines()[-1]
    assert line.startswith("mnist-bench: error: sweep ") and "is already running these 2 cells" in line, refused
    assert "Traceback" not in refused
    finished = sorted(run.data.params["lr"] for run in child_runs(tmp_path) if run.info.status == "FINISHED")
    assert finished == ["0.1", "0.2"]  # once each
    parents = [run for run in fetch_runs(f"sqlite:///{tmp_path}/mlflow.db") if run.data.tags.get(Tag.KIND) == "sweep"]
    shown = sorted((run.info.lifecycle_stage, run.info.status) for run in parents)
    assert shown == [("active", "FINISHED"), ("deleted", "KILLED")]  # the refused parent shadows nothing


def test_a_store_whose_disk_fills_fails_each_job_in_one_line_and_leaves_nothing_running(
    small_disk: Path, tmp_path: Path
) -> None:
    store = f"sqlite:///{small_disk}/mlflow.db"

    def sweep(*overrides: str) -> subprocess.CompletedProcess:
        args = [*sweep_args(tmp_path, *overrides), f"tracking.uri={store}"]
        return subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)

    assert sweep("lr=0.1", "epochs=1").returncode == 0  # the store exists, with one run
    fill(small_disk, leave_bytes=90 * 1024)
    done = sweep("lr=0.5,0.6,0.7", "epochs=3", "batch_size=256")
    output = done.stdout + done.stderr
    lines = output.strip().splitlines()
    assert done.returncode != 0, output[-3000:]
    assert "Traceback" not in output and len(lines) < 40, output[-3000:]
    full = f"the disk holding {store} is full: free space on it"
    assert f"FAILED: {full}" in output, output[-3000:]
    # Where each job meets the full disk decides how its cell ends: its run fails (failed), cannot be ended
    # (running, until reaped below) or cannot be created (missing). None of them is counted finished.
    [summary] = [line for line in lines if line.startswith("sweep summary: ")]
    assert re.fullmatch(r"sweep summary: ((failed|running|missing) \d, )*(failed|running|missing) \d", summary), summary
    # Where the parent's own end found the disk full too (how much space is left decides), one line says so.
    errors = done.stderr.strip().splitlines()
    assert all(line.startswith("mnist-bench: error: ") and full in line for line in errors), errors

    (small_disk / "filler").unlink()
    reaped = subprocess.run(
        [sys.executable, "-m", "mnist_bench", "reap", "--tracking-uri", store], capture_output=True, text=True
    )
    assert reaped.returncode == 0, reaped.stderr
    statuses = [run.info.status for run in MlflowClient(store).search_runs(["1"], max_results=100)]
    assert "RUNNING" not in statuses and statuses.count("FINISHED") == 2, statuses  # the first sweep and its job
