"""What only a launcher's config knows: how many jobs it runs at once, whether they run in this process, and
joblib's workers prepared ahead (hydra/launcher=ray is ``ray_launcher``)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence

from mnist_bench import machine
from mnist_bench.config import Config
from mnist_bench.errors import EXIT_INTERRUPTED, one_line

log = logging.getLogger("mnist_bench")

SWEEP_PID_ENV = "MNIST_BENCH_SWEEP_PID"  # the sweep's own process, which its parallel workers watch
ORPHAN_CHECK_S = 1.0  # how often a worker looks whether the sweep's process is still its parent
ORPHAN_GRACE_S = 5.0  # how long a worker told to stop may take to close its run before it exits anyway
_watching = False
_orphaned = threading.Event()  # the sweep's process is gone: this worker stops


def parallel_jobs(launcher: Mapping) -> int:
    """How many jobs the launcher runs at once (joblib's n_jobs; 1 for the basic launcher).

    On Ray: as many as fit on this node with the CPUs each asks for (default 1), so a job's threads
    default to the CPUs Ray reserved for it rather than the whole node's cores.
    """
    ray = launcher.get("ray")
    if ray is not None:
        return max(1, machine.cpu_count() // max(1, int((ray.get("remote") or {}).get("num_cpus") or 1)))
    n_jobs = launcher.get("n_jobs") or 1
    return machine.cpu_count() if n_jobs < 0 else n_jobs


class JoblibWorkers:
    """Joblib's workers, started and prepared ahead of the launch. The launcher starts its workers only when
    the launch begins, and each then imports MLflow and the backends (4-5 s, or more with TensorFlow) inside
    its first job. Started here, in a thread, on the same reusable loky executor the launch then finds
    (same size, same memmapping settings), they do it while this process opens the store and the sweep."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.thread: threading.Thread | None = None

    @classmethod
    def start(cls, launcher: Mapping, cfgs: Sequence[Config], uri: str) -> JoblibWorkers | None:
        """Workers for a joblib launcher (None for the others), preparing in the background."""
        if "joblib" not in str(launcher.get("_target_", "")):
            return None
        from mnist_bench.experiment import prepare_process

        settings = {key: launcher.get(key) for key in ("n_jobs", "max_nbytes", "mmap_mode", "temp_folder")}
        backends = sorted({cfg.backend.name for cfg in cfgs})
        workers = cls()

        def prepare() -> None:
            from joblib import Parallel, delayed

            jobs = (delayed(prepare_process)(backends, cfgs[0], uri) for _ in range(parallel_jobs(launcher)))
            try:
                workers.pids = list(Parallel(backend="loky", **settings)(jobs))
            except Exception as err:  # the jobs meet the same cause, and each reports it in its own line
                log.debug("joblib workers not prepared ahead: %s", one_line(err))

        workers.thread = threading.Thread(target=prepare, name="mnist-bench-joblib-workers", daemon=True)
        workers.thread.start()
        return workers

    def wait(self) -> None:
        assert self.thread is not None
        self.thread.join()
        if self.pids:
            log.info("joblib workers ready ahead of the launch: pids %s", ", ".join(map(str, sorted(set(self.pids)))))


# Hydra's own launcher (hydra/launcher=basic), named only to be recognised: its jobs run in the sweep's process.
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def jobs_elsewhere(launcher: Mapping) -> bool:
    """Whether the launcher runs the jobs in other processes (joblib's workers, Ray's nodes), not this one."""
    return launcher.get("_target_") != BASIC_LAUNCHER


def mark_sweep_process() -> None:
    """Called by the sweep's own process before it starts workers: they inherit its pid, to watch it."""
    os.environ[SWEEP_PID_ENV] = str(os.getpid())


def watch_sweep_process() -> None:
    """In a joblib worker of a sweep (a child of the sweep's process): once that process is gone (SIGKILL),
    stop rather than train to the end for no one. A thread sees the parent change (the worker is adopted),
    then sends this process SIGTERM, which closes an open run as KILLED between two steps of training (or
    ends an idle worker), and exits after ORPHAN_GRACE_S whatever happened; a run it could not close is the
    reaper's. Elsewhere (the sweep's own process, a Ray worker) it does nothing."""
    global _watching
    sweep_pid = int(os.environ.get(SWEEP_PID_ENV) or 0)
    if _watching or sweep_pid in (0, os.getpid()) or os.getppid() != sweep_pid:
        return
    _watching = True

    def watch() -> None:
        while os.getppid() == sweep_pid:
            time.sleep(ORPHAN_CHECK_S)
        log.error("the sweep's process (pid %d) is gone: this worker (pid %d) stops", sweep_pid, os.getpid())
        _orphaned.set()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(ORPHAN_GRACE_S)
        os._exit(EXIT_INTERRUPTED)

    threading.Thread(target=watch, name="mnist-bench-sweep-watch", daemon=True).start()


def leave_if_orphaned() -> None:
    """Once a stopped worker's job has closed its run: exit now, rather than wait for its pool to notice."""
    if _orphaned.is_set():
        os._exit(EXIT_INTERRUPTED)
