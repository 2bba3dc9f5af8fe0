"""Whether a RUNNING run is alive, judged from anywhere, and the reaper that marks the dead ones KILLED.

A run beats: the tag ``mnist_bench.heartbeat`` holds the wall-clock time of its last beat, and
``mnist_bench.heartbeat_timeout_s`` how long a silence after it still means alive. The beat rides on the
store calls the run already makes between epochs (``TrackedRun.flush``), at most every few seconds, so no
store call is ever made beside a timed epoch; instead, the silence allowed grows with the run's own longest
epoch (``tracking.heartbeat_timeout_s`` plus EPOCH_MARGIN of them), so a long epoch never looks dead.

The reaper trusts a pid only where it means something: a run of this host and this PID namespace whose
process is gone is dead at once (the fast path); anywhere else (another host, a container or
``unshare --pid`` sharing this hostname) the heartbeat decides. A host's clock that is off adds to, or
takes from, the timeout (keep clocks in step, as NTP does).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mnist_bench import machine
from mnist_bench.config import HEARTBEAT_TIMEOUT_S
from mnist_bench.schema import RunStatus, Tag
from mnist_bench.tracking.store import SEARCH_LIMIT

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

log = logging.getLogger("mnist_bench")

MAX_BEAT_INTERVAL_S = 5.0
EPOCH_MARGIN = 3  # the silence allowed is the timeout plus this many of the run's longest epochs
POLL_S = 0.5  # how often a waiting reaper looks again
PROCESS_GONE = "process gone (killed or crashed); marked by the reaper"


def beat_interval(timeout_s: float) -> float:
    """How often a run beats: every few seconds, and at least three times within its timeout."""
    return min(MAX_BEAT_INTERVAL_S, timeout_s / 3)


@dataclass
class Heartbeat:
    """A run's side: the beat tags, due once ``beat_interval`` has passed; ``epoch_ended`` measures the
    longest time between two epochs' ends so far, which the silence the run is allowed grows with. Its start
    (the warm-up and first epoch) has the timeout alone."""

    timeout_s: float = HEARTBEAT_TIMEOUT_S
    _last_beat: float = field(default_factory=time.monotonic)
    _last_epoch: float | None = None
    _longest_epoch_s: float = 0.0
    _sent_allowance: str = ""

    def epoch_ended(self) -> None:
        now = time.monotonic()
        if self._last_epoch is not None:
            self._longest_epoch_s = max(self._longest_epoch_s, now - self._last_epoch)
        self._last_epoch = now

    def beat(self) -> dict[str, str]:
        """A beat now: its time, and how long a silence after it is still alive when that has changed since the
        last beat (each tag costs the store about as much again as the rest of a flush)."""
        self._last_beat = time.monotonic()
        tags = {Tag.HEARTBEAT: f"{time.time():.3f}"}
        allowed = f"{self.timeout_s + EPOCH_MARGIN * self._longest_epoch_s:.1f}"
        if allowed != self._sent_allowance:
            tags[Tag.HEARTBEAT_TIMEOUT_S] = self._sent_allowance = allowed
        return tags

    def due(self) -> dict[str, str]:
        """A beat if one is due, else nothing."""
        return self.beat() if time.monotonic() - self._last_beat >= beat_interval(self.timeout_s) else {}


def silence(run: Run, now: float) -> tuple[float, float] | None:
    """How long a run has been silent and how long it may be, or None for a run that does not beat."""
    tags = run.data.tags
    try:
        return now - float(tags[Tag.HEARTBEAT]), float(tags[Tag.HEARTBEAT_TIMEOUT_S])
    except (KeyError, ValueError):
        return None


def pid_decides(run: Run) -> bool:
    """Whether this reaper can see the run's process: the same host and PID namespace (a run from before
    heartbeats, without a namespace tag, is judged by its pid on its host, as then)."""
    tags = run.data.tags
    if tags.get(Tag.HOST) != machine.hostname() or not tags.get(Tag.PID, "").isdigit():
        return False
    namespace = tags.get(Tag.PID_NAMESPACE)
    return namespace == machine.pid_namespace() != "" if namespace is not None else Tag.HEARTBEAT not in tags


def why_dead(run: Run, now: float) -> str | None:
    """Why a RUNNING run is dead, or None while it may be alive (or nothing here can tell)."""
    tags = run.data.tags
    if pid_decides(run):
        started = machine.process_start_ticks(int(tags[Tag.PID]))
        return None if started is not None and started == tags.get(Tag.PID_START) else PROCESS_GONE
    heard = silence(run, now)
    if heard is None or heard[0] <= heard[1]:
        return None
    return (
        f"no heartbeat for {heard[0]:.0f} s (allowed {heard[1]:.0f} s: tracking.heartbeat_timeout_s plus"
        f" {EPOCH_MARGIN} of its longest epochs): its process or node is gone; marked by the reaper on"
        f" {machine.hostname()}"
    )


def running_runs(client: MlflowClient, experiment_id: str, parent_run_id: str | None) -> list[Run]:
    wanted = f"attributes.status = '{RunStatus.RUNNING}'"
    if parent_run_id is not None:
        wanted += f" and tags.`{Tag.PARENT}` = '{parent_run_id}'"
    return client.search_runs([experiment_id], filter_string=wanted, max_results=SEARCH_LIMIT)


def reap(client: MlflowClient, experiment_id: str, parent_run_id: str | None = None, wait_s: float = 0.0) -> list[str]:
    """Mark KILLED, with the reason as the error tag, every RUNNING run (of one sweep, given its parent run)
    that is dead (``why_dead``), on any host; returns their ids. ``wait_s``: how long runs still alive get
    to end or be found dead first (a stopped sweep's parallel workers are being shut down, and a worker
    killed outright cannot close its own run)."""
    deadline = time.monotonic() + wait_s
    while True:
        now = time.time()
        verdicts = [(run, why_dead(run, now)) for run in running_runs(client, experiment_id, parent_run_id)]
        if all(why for _, why in verdicts) or time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    reaped = []
    for run, why in verdicts:
        # Read again just before: a run that ended meanwhile keeps its own status (MLflow has no compare-and-set).
        if why is not None and client.get_run(run.info.run_id).info.status == RunStatus.RUNNING:
            client.set_tag(run.info.run_id, Tag.ERROR, why)
            client.set_terminated(run.info.run_id, RunStatus.KILLED)
            reaped.append(run.info.run_id)
    return reaped


PROCESS_WAIT_S = 10.0  # how long a run judged by its pid gets to end once its sweep's jobs have all returned


def reap_lost(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[str]:
    """Once a sweep's launcher has returned every job, a job still RUNNING lost its worker or node (or is
    closing): wait for each until it ends or is found dead, at most the silence its heartbeat allows, and
    mark the dead KILLED; returns their ids. A run that still beats then is alive and stays RUNNING."""
    running = running_runs(client, experiment_id, parent_run_id)
    if not running:
        return []
    now = time.time()
    wait_s = max(_time_to_verdict(run, now) for run in running)
    return reap(client, experiment_id, parent_run_id, wait_s=wait_s + POLL_S)


def _time_to_verdict(run: Run, now: float) -> float:
    """How long until a run that is alive now can be found dead: its process's grace on this host, the rest
    of its allowed silence elsewhere, nothing for a run that cannot be judged."""
    if pid_decides(run):
        return PROCESS_WAIT_S
    heard = silence(run, now)
    return 0.0 if heard is None else max(0.0, heard[1] - heard[0])


@dataclass
class Watchdog:
    """While a sweep's jobs run in other processes (joblib's workers, Ray's nodes), a thread that reaps the
    sweep's dead runs every ``every_s``, so that a job lost with its node is marked KILLED within its
    heartbeat timeout, not only when its launcher notices. Never with jobs in this process: its store
    calls would run beside their timed epochs."""

    client: MlflowClient
    experiment_id: str
    parent_run_id: str
    every_s: float
    on_reaped: Callable[[str], None]
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Watchdog:
        self._thread = threading.Thread(target=self._watch, name="mnist-bench-watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                reaped = reap(self.client, self.experiment_id, self.parent_run_id)
            except Exception as err:  # a store that fails now is the jobs' to report; try again later
                log.debug("watchdog: %s", err)
                continue
            for run_id in reaped:
                self.on_reaped(run_id)
