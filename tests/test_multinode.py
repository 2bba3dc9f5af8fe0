"""A sweep on a Ray cluster of two nodes (Ray's own multi-node test cluster, a head and a worker node of 1 CPU
each, both on 127.0.0.1) loses its worker node mid-job: that cell is killed within the heartbeat timeout, the
other jobs finish, the sweep exits 1, and running it again trains exactly the missing cell.

Where this machine allows it, the sweep runs in a PID namespace of its own, as a sweep on another host would:
its jobs' pids mean nothing to it, and only their heartbeats tell it the lost one is dead. (It keeps this
machine's /proc: Ray's driver finds its local node by looking for the node's processes there.)

Every node is a process of this test's, stopped by ``Cluster.shutdown`` (never ``ray stop``, which would end
every Ray on the machine).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import EXPERIMENT, REPO, fetch_runs
from needs import import_extra, pid_namespace_prefix
from test_cluster import sweep_command

from mnist_bench.schema import KIND_SWEEP, Tag

HEARTBEAT_TIMEOUT_S = 10
SWEEP_TIMEOUT_S = 300
# 8 cells of a tiny slice; 300 epochs (a few seconds a job) keep the worker node's first job running while
# the test sees it start and removes its node.
CELLS = ["lr=0.1,0.2,0.3,0.4", "seed=0,1", "epochs=300"]
# Ray's single-machine mode (otherwise a driver swaps 127.0.0.1 for the machine's outward address), no usage stats.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture
def two_nodes(mnist_dir: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple]:
    """A Ray head and a worker node, 1 CPU each, on 127.0.0.1; yields the cluster and the worker node. The
    nodes' workers inherit this environment: this checkout, the data and the session's cache."""
    import_extra("ray", "cluster")
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MNIST_BENCH_DATA_DIR", str(mnist_dir))
    monkeypatch.setenv("MNIST_BENCH_CACHE_DIR", str(cache_dir))
    for key, value in RAY_ENV.items():
        monkeypatch.setenv(key, value)
    temp = tempfile.mkdtemp(prefix="mbray-")  # short: Ray's socket paths must fit in 107 bytes
    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "temp_dir": temp}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    try:
        worker = cluster.add_node(**node)
        cluster.wait_for_nodes()
        yield cluster, worker
    finally:
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def sweep(address: str, uri: str, folder: Path) -> list[str]:
    """The sweep's command, in a PID namespace of its own where this machine allows one."""
    overrides = ["backend=numpy", f"tracking.heartbeat_timeout_s={HEARTBEAT_TIMEOUT_S}", *CELLS]
    command = sweep_command(address, uri, EXPERIMENT, folder / "multirun", *overrides)
    return [*(pid_namespace_prefix(own_proc=False) or []), *command]


def poll(check, timeout: float, what: str, process: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if result := check():
            return result
        time.sleep(0.2)
    pytest.fail(f"{what} did not happen within {timeout:.0f} s\n{log.read_text(errors='replace')[-4000:]}")


@pytest.mark.slow
def test_a_lost_node_kills_one_cell_the_others_finish_and_a_relaunch_trains_just_that_cell(
    two_nodes, cli_env: dict[str, str], tmp_path: Path
) -> None:
    cluster, worker = two_nodes
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    command = sweep(cluster.address, uri, tmp_path)
    env = {**cli_env, **RAY_ENV}
    log = tmp_path / "first.log"
    with log.open("w") as out:
        first = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:

        def on_the_worker():
            running = [r for r in fetch_runs(uri) if r.info.status == "RUNNING" and Tag.RAY_NODE in r.data.tags]
            return next((r for r in running if r.data.tags[Tag.RAY_NODE] == worker.node_id), None)

        victim = poll(on_the_worker, SWEEP_TIMEOUT_S, "a job on the worker node", first, log)
        cluster.remove_node(worker, allow_graceful=False)
        removed = time.monotonic()

        def marked():
            return next(
                (r for r in fetch_runs(uri) if r.info.run_id == victim.info.run_id and r.info.status != "RUNNING"), None
            )

        lost = poll(marked, HEARTBEAT_TIMEOUT_S + 10, "the lost job's run marked", first, log)
        marked_s = time.monotonic() - removed
        first.wait(timeout=SWEEP_TIMEOUT_S)
        ended_s = time.monotonic() - removed
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    output = log.read_text(errors="replace")
    why = lost.data.tags.get(Tag.ERROR, "")
    print(f"node removed -> run marked KILLED {marked_s:.1f} s -> sweep ended {ended_s:.1f} s ({why})")
    assert why.startswith("no heartbeat for" if pid_namespace_prefix(own_proc=False) else "process gone"), why
    assert lost.info.status == "KILLED", lost.data.tags.get(Tag.ERROR)
    assert first.returncode == 1, output[-3000:]
    assert "sweep summary: finished 7, killed 1" in output, output[-3000:]
    assert f"  killed: {lost.info.run_name} [" in output, output[-3000:]  # the lost cell, named
    assert "lost with its Ray worker or node" in output and "Traceback" not in output, output[-3000:]

    jobs = [r for r in fetch_runs(uri) if r.data.tags.get(Tag.KIND) != KIND_SWEEP]
    assert sorted(r.info.status for r in jobs) == ["FINISHED"] * 7 + ["KILLED"]
    nodes = {r.data.tags[Tag.RAY_NODE] for r in jobs}
    assert len(nodes) == 2 and worker.node_id in nodes, nodes  # the jobs ran on both nodes

    again = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "sweep summary: finished 1, skipped 7" in again.stdout, again.stdout[-3000:]
    jobs = [r for r in fetch_runs(uri) if r.data.tags.get(Tag.KIND) != KIND_SWEEP]
    by_cell: dict[str, list[str]] = {}
    for job in jobs:
        by_cell.setdefault(job.data.tags[Tag.CONFIG_HASH], []).append(job.info.status)
    assert len(by_cell) == 8 and all(statuses.count("FINISHED") == 1 for statuses in by_cell.values()), by_cell
    assert sorted(by_cell[lost.data.tags[Tag.CONFIG_HASH]]) == ["FINISHED", "KILLED"]  # the one retrained cell


def test_a_null_ray_option_is_left_to_rays_default() -> None:
    """An explicit num_cpus=None asks Ray for no CPU: every job of a sweep then ran at once on one node."""
    from omegaconf import OmegaConf

    from mnist_bench.hydra_app.ray_launcher import ray_options

    remote = OmegaConf.create({"num_cpus": None, "num_gpus": 0, "max_retries": 0})
    assert ray_options(remote) == {"num_gpus": 0, "max_retries": 0}
