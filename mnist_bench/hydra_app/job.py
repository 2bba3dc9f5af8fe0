"""Hydra's task function: one job, validated, then run; in a sweep a failing job never stops the others."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from omegaconf import DictConfig

from mnist_bench import errors
from mnist_bench.config import Config, run_name, validate
from mnist_bench.errors import UserError, one_line
from mnist_bench.hydra_app import PROG
from mnist_bench.hydra_app.composition import PARENT_RUN_ENV, validated_cells
from mnist_bench.hydra_app.launchers import leave_if_orphaned, parallel_jobs, watch_sweep_process
from mnist_bench.rounds import Rounds, Turn

log = logging.getLogger("mnist_bench")
started = False  # whether this process has begun a job: what Hydra wrote before one is its own to clean up


def job(cfg: DictConfig) -> str | None:
    """Hydra's task function: validate, then run; in a sweep a failing job never stops the others."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from mnist_bench import experiment

    global started
    started = True
    hydra_cfg = HydraConfig.get()
    launch_dir = Path(hydra_cfg.runtime.cwd)
    if hydra_cfg.output_subdir is not None:
        _redact_files((Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir).glob("*.yaml"))
    if hydra_cfg.mode != RunMode.MULTIRUN:
        try:
            return experiment.run(validate(cfg), launch_dir)
        except UserError as err:  # one line, not Hydra's "Error executing job" report
            raise SystemExit(errors.fail(PROG, err)) from None
    watch_sweep_process()
    job_config = validated_cells.get(tuple(hydra_cfg.overrides.task)) or validate(cfg)
    isolated = functools.partial(_isolated, job_config, launch_dir, parallel_jobs(hydra_cfg.launcher))
    if _rounds is None:
        return isolated(None)
    _rounds.launch(isolated, run_name(job_config))  # returns after the job's first epoch; run_rounds goes on
    return None


_rounds: Rounds | None = None  # the rounds the jobs this process launches now join (the basic launcher)


@contextlib.contextmanager
def in_rounds(rounds: Rounds | None) -> Iterator[None]:
    """The jobs launched meanwhile in this process train in ``rounds`` (None: each job trains to its end)."""
    global _rounds
    _rounds = rounds
    try:
        yield
    finally:
        _rounds = None


def _isolated(job_config: Config, launch_dir: Path, jobs_at_once: int, turn: Turn | None) -> str | None:
    """Run a sweep's job; a failure is recorded and logged, never raised, so the others go on (with
    fail_fast=true, jobs in rounds stop at their next turn, KILLED)."""
    from mnist_bench import experiment, tracking

    try:
        return experiment.run(job_config, launch_dir, jobs_at_once, os.environ[PARENT_RUN_ENV], turn)
    except (KeyboardInterrupt, tracking.Terminated):
        leave_if_orphaned()
        raise
    except Exception as err:  # recorded in MLflow (as far as the store allows); the summary counts it
        store = tracking.resolve_uri(job_config.tracking.uri, launch_dir)
        log.error("%s: FAILED: %s", run_name(job_config), tracking.store_failure(err, store) or one_line(err))
        if turn is not None and job_config.fail_fast:
            turn.rounds.halt(tracking.Terminated(f"stopped: {run_name(job_config)} failed and fail_fast=true"))
        return None


def _redact_files(paths: Iterable[Path]) -> None:
    """Rewrites what Hydra saved (the job's config, overrides, its own config) through the harness's one
    redaction: Hydra writes them before the job starts, with any password given in an override."""
    from mnist_bench.tracking import redact

    for path in paths:
        text = path.read_text()
        if (clean := redact(text)) != text:
            path.write_text(clean)
