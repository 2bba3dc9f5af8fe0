"""Hydra's task function: one job, validated, then run; in a sweep a failing job never stops the others."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
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
        with _job_log_kept() if turn is not None else contextlib.nullcontext():
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


class _JobLogFile(logging.Handler):
    """Hydra points the process's logging at one job's log file at a time, the job it is launching: a job in
    rounds, which goes on training after its launch, would log its later lines (its FINISHED line) to the
    terminal only. This hands the records of the job's own thread to its file once Hydra has moved on."""

    def __init__(self, job_files: list[logging.Handler]) -> None:
        super().__init__()
        self.job_files, self.thread = job_files, threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            for handler in self.job_files:
                if handler not in logging.getLogger().handlers:  # else Hydra's own handler writes it
                    handler.handle(record)


@contextlib.contextmanager
def _job_log_kept() -> Iterator[None]:
    """The mnist_bench records of this thread go to the job's log file (Hydra's, as set for it now) throughout."""
    handler = _JobLogFile([h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)])
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)


def _redact_files(paths: Iterable[Path]) -> None:
    """Rewrites what Hydra saved (the job's config, overrides, its own config) through the harness's one
    redaction: Hydra writes them before the job starts, with any password given in an override."""
    from mnist_bench.tracking import redact

    for path in paths:
        text = path.read_text()
        if (clean := redact(text)) != text:
            path.write_text(clean)
