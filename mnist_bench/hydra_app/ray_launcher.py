"""``hydra/launcher=ray``: every job of a sweep as a Ray task, as Hydra's Ray launcher runs them (same config
keys, ``ray.init`` and ``ray.remote``), but with every job's outcome collected. Hydra's launcher waits for
its jobs in turn and raises at the first one lost with its worker or node, which ended the sweep and
stopped the jobs still queued. Here a lost job is one line and one failed cell: the other jobs run on, the
sweep's watchdog marks the lost run KILLED once its heartbeat stops (``tracking.liveness``), and the
summary counts it. Built on Hydra's public Launcher API; Ray is imported only when a sweep launches.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from mnist_bench.errors import one_line

log = logging.getLogger("mnist_bench")


def run_job_on_node(
    hydra_context: HydraContext, sweep_config: DictConfig, task_function: TaskFunction, singleton_state: Any
) -> JobReturn:
    """One job, in a Ray worker: Hydra's state as the sweep's process had it, the node's id for the run's
    tags, then Hydra's own run_job."""
    import ray
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals

    from mnist_bench.tracking.runs import RAY_NODE_ENV

    os.environ[RAY_NODE_ENV] = ray.get_runtime_context().get_node_id()
    setup_globals()
    Singleton.set_state(singleton_state)
    HydraConfig.instance().set_config(sweep_config)
    return run_job(
        hydra_context=hydra_context,
        task_function=task_function,
        config=sweep_config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


class RayLauncher(Launcher):
    """Hydra's Ray launcher's config (``ray.init``, ``ray.remote``), each job's outcome collected."""

    def __init__(self, ray: DictConfig) -> None:
        self.ray_cfg = ray
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import ray
        from hydra.core.singleton import Singleton
        from hydra.core.utils import configure_log, filter_overrides, setup_globals

        assert self.hydra_context is not None and self.task_function is not None and self.config is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("Ray launcher is launching %d jobs, sweep output dir: %s", len(job_overrides), sweep_dir)
        if not ray.is_initialized():
            ray.init(**OmegaConf.to_container(self.ray_cfg.init, resolve=True))
        remote = ray.remote(**ray_options(self.ray_cfg.remote))(run_job_on_node)
        jobs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            shown = " ".join(filter_overrides(overrides))
            log.info("\t#%d : %s", idx, shown)
            cell = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cell):
                cell.hydra.job.id, cell.hydra.job.num = f"job_id_for_{idx}", idx
            task = remote.remote(self.hydra_context, cell, self.task_function, Singleton.get_state())
            jobs.append((idx, shown, overrides, task))
        return [outcome(idx, shown, overrides, task) for idx, shown, overrides, task in jobs]


def ray_options(remote: DictConfig) -> dict[str, Any]:
    """``ray.remote``'s options, those left null left out: Ray's default then applies (1 CPU a job), where an
    explicit ``num_cpus=None`` asks for no CPU at all, and every job of the sweep then ran at once."""
    options = OmegaConf.to_container(remote, resolve=True)
    assert isinstance(options, dict)
    return {key: value for key, value in options.items() if value is not None}


def outcome(idx: int, shown: str, overrides: Sequence[str], task: Any) -> JobReturn:
    """A job's own return; for a job lost with its worker or node, one line and what ``job.job`` returns
    for a failed job (None): its run's status, read from MLflow, is what the sweep's summary counts."""
    import ray
    from ray.exceptions import RayError

    try:
        return ray.get(task)
    except RayError as err:
        log.error(
            "#%d : %s: lost with its Ray worker or node (%s); its run is marked KILLED once its heartbeat"
            " stops, and running the sweep again runs this cell again",
            idx,
            shown,
            one_line(err),
        )
        return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=None)
