"""Hydra multirun support: one store and one parent run per sweep, every cell validated before any
job starts, jobs isolated from each other's failures, and a closing summary from MLflow.

The launching process creates the store and the experiment (under a file lock) before any job
exists, so parallel jobs never race in MLflow's schema creation.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from mnist_bench import experiment, roofline, tracking
from mnist_bench.config import Config, ConfigError, config_hash, run_name, validate
from mnist_bench.schema import CELLS_ARTIFACT, KIND_SWEEP, Cell, SweepParam, Tag

log = logging.getLogger(__name__)

# conf/hydra/launcher/ray.yaml extends the Ray plugin's schema on purpose: Hydra's warning about it is noise.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/ray' is validated against ConfigStore schema")
# The GPUs a job asks Ray for (conf/hydra/launcher/ray.yaml): one for device=gpu, none otherwise.
OmegaConf.register_new_resolver("mnist_bench.gpus", lambda device: int(device == "gpu"), replace=True)


def sweep_dir(hydra_cfg: DictConfig) -> str:
    """The sweep's output folder as an absolute path on the launching machine: the same string in every job."""
    return str(Path(hydra_cfg.runtime.cwd) / str(hydra_cfg.sweep.dir))


def expand(config: DictConfig) -> tuple[list[Cell], Config]:
    """Every job of the sweep, composed and validated as Hydra's basic sweeper will launch them.

    Returns the cells and the first cell's config (for the tracking settings every job shares).
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    sweeper = config.hydra.sweeper
    arguments = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    arguments += list(config.hydra.overrides.task)
    parsed = OverridesParser.create().parse_overrides(arguments)
    jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    loader = GlobalHydra.instance().config_loader()
    cells, first = [], None
    for overrides in jobs:
        try:
            cfg = validate(loader.load_sweep_config(config, list(overrides)))
        except ConfigError as err:
            raise ConfigError(f"sweep job [{' '.join(overrides)}]: {err}") from err
        first = first or cfg
        cells.append(Cell([tracking.redact_override(o) for o in overrides], config_hash(cfg), run_name(cfg)))
    return cells, first


class SweepCallback(Callback):
    """Opens the sweep's parent run before its jobs and closes it with a summary after them."""

    active: tuple | None = None  # (client, parent run id) while a sweep runs; read by the CLI on Ctrl-C

    def on_multirun_start(self, config: DictConfig, **kwargs: object) -> None:
        # Hydra turns a callback's exceptions into warnings and goes on: bad input must stop here.
        try:
            self.cells, first = expand(config)
            uri = tracking.resolve_uri(first.tracking.uri, Path(config.hydra.runtime.cwd))
            self.client, self.experiment_id = tracking.open_store(uri, first.tracking.experiment)
        except (ConfigError, tracking.TrackingError) as err:
            print(f"mnist-bench: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        # Probe the machine once here, not in every parallel job at the same moment (it is cached).
        roofline.cached(experiment.resolve_threads(first, experiment.parallel_jobs(config.hydra.launcher)))
        for run_id in tracking.reap(self.client, self.experiment_id):
            log.warning("marked run %s KILLED: its process is gone", run_id)
        name = first.sweep_name or time.strftime("sweep-%Y%m%d-%H%M%S")
        tags = {Tag.KIND: KIND_SWEEP, Tag.SWEEP_NAME: name, Tag.SWEEP_DIR: sweep_dir(config.hydra)}
        tags.update(tracking.process_tags())
        self.parent_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        overrides = " ".join(tracking.redact_override(o) for o in config.hydra.overrides.task)
        self.client.log_param(self.parent_id, SweepParam.SWEEP_OVERRIDES, overrides[:6000])
        self.client.log_param(self.parent_id, SweepParam.SWEEP_CELLS, len(self.cells))
        self.client.log_dict(self.parent_id, [asdict(c) for c in self.cells], CELLS_ARTIFACT)
        os.environ[experiment.PARENT_RUN_ENV] = self.parent_id
        # Jobs may run in other processes or on other machines (Ray) that this environment never reaches:
        # every launcher composes its jobs with these overrides, and Hydra sets env_set in the job's process.
        with read_write(config.hydra.overrides):
            config.hydra.overrides.hydra.append(f"++hydra.job.env_set.{experiment.PARENT_RUN_ENV}='{self.parent_id}'")
        SweepCallback.active = (self.client, self.parent_id)
        print(f"sweep {name}: {len(self.cells)} jobs, parent run {self.parent_id}, store {tracking.redact(uri)}")

    def on_multirun_end(self, config: DictConfig, **kwargs: object) -> None:
        os.environ.pop(experiment.PARENT_RUN_ENV, None)
        SweepCallback.active = None
        outcomes = tracking.cell_outcomes(self.client, self.experiment_id, self.parent_id, self.cells)
        counts = Counter(outcome.status.value for outcome in outcomes)
        bad = [outcome for outcome in outcomes if outcome.status.is_failure]
        print("sweep summary: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        for outcome in bad:
            print(f"  {outcome.status.value}: {outcome.cell.name} [{' '.join(outcome.cell.overrides)}]")
        self.client.set_terminated(self.parent_id, tracking.FAILED if bad else tracking.FINISHED)
        if bad:
            raise SystemExit(1)


def abort_active_sweep(status: str = tracking.KILLED) -> None:
    """Close the running sweep's parent run (on Ctrl-C in the launching process)."""
    if SweepCallback.active is not None:
        client, parent_id = SweepCallback.active
        SweepCallback.active = None
        client.set_terminated(parent_id, status)
