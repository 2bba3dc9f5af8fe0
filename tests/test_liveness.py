"""Liveness from anywhere: the heartbeat a run records, the reaper's verdicts on runs of other hosts and other
PID namespaces, the wait for a sweep's lost jobs, and a live run in another PID namespace never reaped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import EXPERIMENT, hydra_dirs
from needs import NO_PID_NAMESPACE, pid_namespace_prefix

from mnist_bench import machine, tracking
from mnist_bench.schema import Tag
from mnist_bench.tracking import liveness

GONE_PID = "999999999"  # above pid_max: no process has it


def beating(age_s: float, allowed_s: float) -> dict[str, str]:
    """Tags of a run whose last heartbeat was ``age_s`` ago, allowed ``allowed_s`` of silence."""
    return {Tag.HEARTBEAT: f"{time.time() - age_s:.3f}", Tag.HEARTBEAT_TIMEOUT_S: str(allowed_s)}


def elsewhere(**tags: str) -> dict[str, str]:
    """A run's process tags on another host."""
    return {Tag.HOST: machine.hostname() + "-elsewhere", Tag.PID: str(os.getpid()), **tags}


def in_another_namespace(**tags: str) -> dict[str, str]:
    """A run's process tags on this host, in a PID namespace this process cannot see into."""
    namespace = machine.pid_namespace() + "-other"
    return {Tag.HOST: machine.hostname(), Tag.PID: GONE_PID, Tag.PID_NAMESPACE: namespace, **tags}


def status(store, run_id: str) -> str:
    return store.client.get_run(run_id).info.status


def test_a_silent_run_of_another_host_is_reaped_and_a_beating_one_is_left(store) -> None:
    client, experiment_id = tracking.open_store(store.uri, EXPERIMENT)
    silent = client.create_run(experiment_id, tags=elsewhere(**beating(30, 10))).info.run_id
    alive = client.create_run(experiment_id, tags=elsewhere(**beating(1, 10))).info.run_id
    mute = client.create_run(experiment_id, tags=elsewhere()).info.run_id  # from before heartbeats: no verdict

    assert tracking.reap(client, experiment_id) == [silent]
    assert status(store, silent) == "KILLED"
    why = client.get_run(silent).data.tags[Tag.ERROR]
    assert why.startswith("no heartbeat for 30 s (allowed 10 s") and machine.hostname() in why, why
    assert status(store, alive) == status(store, mute) == "RUNNING"


def test_a_fresh_heartbeat_overrules_a_pid_this_namespace_cannot_see(store) -> None:
    client, experiment_id = tracking.open_store(store.uri, EXPERIMENT)
    alive = client.create_run(experiment_id, tags=in_another_namespace(**beating(1, 10))).info.run_id
    silent = client.create_run(experiment_id, tags=in_another_namespace(**beating(30, 10))).info.run_id
    assert tracking.reap(client, experiment_id) == [silent]
    assert status(store, alive) == "RUNNING"


def test_a_gone_process_of_this_namespace_is_reaped_at_once_whatever_its_heartbeat(store) -> None:
    """The fast path: where the pid means the process, a missing one is dead without waiting for silence."""
    client, experiment_id = tracking.open_store(store.uri, EXPERIMENT)
    here = {Tag.HOST: machine.hostname(), Tag.PID: GONE_PID, Tag.PID_NAMESPACE: machine.pid_namespace()}
    gone = client.create_run(experiment_id, tags=here | beating(0, 60)).info.run_id
    assert tracking.reap(client, experiment_id) == [gone]
    assert client.get_run(gone).data.tags[Tag.ERROR] == liveness.PROCESS_GONE


def test_a_run_beats_between_epochs_and_its_allowed_silence_grows_with_its_longest_epoch(store) -> None:
    client, experiment_id = tracking.open_store(store.uri, EXPERIMENT)
    timeout = 6.0  # beats every 2 s
    with tracking.tracked_run(client, experiment_id, "beats", {}, {}, heartbeat_timeout_s=timeout) as run:
        opened = client.get_run(run.run_id).data.tags
        assert opened[Tag.HEARTBEAT_TIMEOUT_S] == "6.0"  # no epoch yet: the timeout alone
        assert abs(float(opened[Tag.HEARTBEAT]) - time.time()) < 5
        assert opened[Tag.PID_NAMESPACE] == machine.pid_namespace()
        run.log({"train_loss": 1.5}, step=0)  # the first epoch's end: its start has the timeout alone
        time.sleep(tracking.beat_interval(timeout))  # one long epoch
        run.log({"train_loss": 1.0}, step=1)  # stored now, with a beat
        beat = client.get_run(run.run_id).data.tags
        assert float(beat[Tag.HEARTBEAT]) > float(opened[Tag.HEARTBEAT])
        longest = float(beat[Tag.HEARTBEAT_TIMEOUT_S]) - timeout
        assert liveness.EPOCH_MARGIN * 2.0 <= longest < liveness.EPOCH_MARGIN * 4.0, beat
        run.log({"train_loss": 0.5}, step=2)
        run.flush()  # stored, but no beat is due yet
        assert client.get_run(run.run_id).data.tags[Tag.HEARTBEAT] == beat[Tag.HEARTBEAT]


def test_a_sweeps_lost_job_is_reaped_once_its_silence_runs_out(store) -> None:
    client, experiment_id = tracking.open_store(store.uri, EXPERIMENT)
    parent = client.create_run(experiment_id).info.run_id
    lost = client.create_run(experiment_id, tags=elsewhere(**{Tag.PARENT: parent}, **beating(8, 10))).info.run_id
    client.create_run(experiment_id, tags=elsewhere(**beating(30, 10)))  # another sweep's: not this one's to reap
    started = time.monotonic()
    assert tracking.reap_lost(client, experiment_id, parent) == [lost]
    waited = time.monotonic() - started
    assert 1.5 <= waited <= 6, waited  # until its 10 s ran out, not at once, and not much longer


def test_the_watchdog_reaps_a_sweeps_dead_runs_while_it_runs(store) -> None:
    client, experiment_id = tracking.open_store(store.uri, EXPERIMENT)
    parent = client.create_run(experiment_id).info.run_id
    lost = client.create_run(experiment_id, tags=elsewhere(**{Tag.PARENT: parent}, **beating(9, 10))).info.run_id
    reaped: list[str] = []
    with tracking.Watchdog(client, experiment_id, parent, every_s=0.2, on_reaped=reaped.append):
        deadline = time.monotonic() + 10
        while not reaped and time.monotonic() < deadline:
            time.sleep(0.1)
    assert reaped == [lost]


# --- a live run in another PID namespace, for real -------------------------------------------------------


def namespace_init(launcher: subprocess.Popen) -> int:
    """The pid (in this namespace) of the forked child unshare waits for: the namespace's init."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    return int(children[0])


@pytest.mark.slow
def test_a_training_run_in_another_pid_namespace_is_never_reaped_while_alive_and_is_once_silent(
    store, cli_env, mnist_dir, tmp_path: Path
) -> None:
    prefix = pid_namespace_prefix()
    if prefix is None:
        pytest.skip(NO_PID_NAMESPACE)
    timeout = 6.0
    args = ["backend=numpy", "epochs=100000", "batch_size=256", "dataset.train_limit=2000"]
    args += ["dataset.test_limit=500", "progress=none", f"tracking.uri={store.uri}"]
    args += [f"tracking.heartbeat_timeout_s={timeout:g}", *hydra_dirs(tmp_path)]
    log = tmp_path / "run.log"
    with log.open("w") as out:
        launcher = subprocess.Popen(
            [*prefix, sys.executable, "-m", "mnist_bench", *args], env=cli_env, cwd=tmp_path, stdout=out, stderr=out
        )
    try:
        client, experiment_id = None, None
        deadline = time.monotonic() + 180
        run = None
        while run is None and time.monotonic() < deadline and launcher.poll() is None:
            time.sleep(0.5)
            with contextlib.suppress(tracking.TrackingError):
                client, experiment_id = tracking.open_existing(store.uri, EXPERIMENT)
                run = next((r for r in client.search_runs([experiment_id]) if r.data.metrics), None)
        assert run is not None, log.read_text()[-3000:]
        assert run.data.tags[Tag.PID_NAMESPACE] != machine.pid_namespace()
        # Three timeouts of training, reaped from outside all along: never touched.
        watched_until = time.monotonic() + 3 * timeout
        while time.monotonic() < watched_until:
            assert tracking.reap(client, experiment_id) == [], log.read_text()[-3000:]
            time.sleep(0.5)
        assert status(store, run.info.run_id) == "RUNNING"
        allowed = float(client.get_run(run.info.run_id).data.tags[Tag.HEARTBEAT_TIMEOUT_S])

        os.kill(namespace_init(launcher), signal.SIGKILL)  # the whole namespace goes, as with a lost node
        killed = time.monotonic()
        launcher.wait(timeout=60)
        assert tracking.reap(client, experiment_id, wait_s=allowed + 10) == [run.info.run_id]
        marked_s = time.monotonic() - killed
    finally:
        if launcher.poll() is None:
            with contextlib.suppress(OSError, IndexError):
                os.kill(namespace_init(launcher), signal.SIGKILL)
            launcher.kill()
            launcher.wait(timeout=60)
    assert marked_s <= allowed + 2, (marked_s, allowed)
    assert client.get_run(run.info.run_id).data.tags[Tag.ERROR].startswith("no heartbeat for ")
