"""The command line.

``python -m mnist_bench [overrides]`` (or ``mnist-bench run [overrides]``) is the Hydra app;
``mnist-bench report|check|reap|roofline|bench|server ...`` are the tools around it. Bad input of any
kind ends with one line on stderr naming what is wrong and what is allowed, and exit status 2.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.errors import HydraException
from omegaconf import DictConfig

from mnist_bench.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, UserError, one_line
from mnist_bench.paths import conf_dir
from mnist_bench.schema import RunStatus, Tag

if TYPE_CHECKING:
    from mnist_bench.config import Config

log = logging.getLogger("mnist_bench")

# Read-side tools: each module has main(argv) -> int.
SUBCOMMANDS = {
    "report": "mnist_bench.report",
    "check": "mnist_bench.check",
    "reap": "mnist_bench.reaper",
    "roofline": "mnist_bench.roofline",
    "bench": "mnist_bench.bench",  # every backend side by side against the roofline and Keras+Adam
    "server": "mnist_bench.server",  # the cluster's MLflow server (PostgreSQL store, proxied artifacts)
}


def _user_errors() -> tuple[type[BaseException], ...]:
    """Ours, and Hydra's and OmegaConf's for a bad override or config file."""
    from omegaconf.errors import OmegaConfBaseException

    return UserError, HydraException, OmegaConfBaseException


def _sweep_parent(config: Config, hydra_cfg: DictConfig, launch_dir: Path) -> str | None:
    """The RUNNING parent run tagged with this job's sweep folder: for a launcher that drops hydra.job.env_set."""
    from mnist_bench import sweep, tracking

    folder = sweep.sweep_dir(hydra_cfg)
    if "'" in folder:
        return None
    client, experiment_id = tracking.open_store(
        tracking.resolve_uri(config.tracking.uri, launch_dir), config.tracking.experiment
    )
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{Tag.SWEEP_DIR}` = '{folder}' and attributes.status = '{RunStatus.RUNNING}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def _job(cfg: DictConfig):
    """Hydra's task function: validate, then run; in a sweep a failing job never stops the others."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from mnist_bench import experiment
    from mnist_bench.config import run_name, validate
    from mnist_bench.tracking import Terminated

    hydra_cfg = HydraConfig.get()
    launch_dir = Path(hydra_cfg.runtime.cwd)
    if hydra_cfg.mode != RunMode.MULTIRUN:
        try:
            return experiment.run(validate(cfg), launch_dir)
        except _user_errors() as err:  # one line, not Hydra's "Error executing job" report
            print(f"mnist-bench: error: {one_line(err)}", file=sys.stderr)
            raise SystemExit(EXIT_BAD_INPUT) from None
    config = validate(cfg)  # a sweep validated every job before launching
    try:
        # Set in the job's own process by hydra.job.env_set (see SweepCallback), else found in MLflow.
        parent = os.environ.get(experiment.PARENT_RUN_ENV) or _sweep_parent(config, hydra_cfg, launch_dir)
        return experiment.run(config, launch_dir, experiment.parallel_jobs(hydra_cfg.launcher), parent)
    except (KeyboardInterrupt, Terminated):
        raise
    except Exception as err:
        log.error("%s: FAILED: %s", run_name(config), one_line(err))  # recorded in MLflow; the summary counts it
        return None


def run_app(argv: list[str]) -> int:
    """Run the Hydra app with ``argv`` as its overrides and flags; returns the exit status."""
    import hydra

    from mnist_bench import config, sweep
    from mnist_bench.tracking import FAILED, Terminated

    full_errors = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us instead of Hydra's multi-line report
    config.register()
    app = hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")(_job)
    sys.argv = [sys.argv[0], *argv]
    try:
        app()
    except (KeyboardInterrupt, Terminated) as err:
        sweep.abort_active_sweep()
        print(f"mnist-bench: {'interrupted' if isinstance(err, KeyboardInterrupt) else err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _user_errors() as err:
        sweep.abort_active_sweep(FAILED)
        if full_errors:
            raise
        print(f"mnist-bench: error: {one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SystemExit as err:
        return err.code if isinstance(err.code, int) else EXIT_FAILED
    except BaseException as err:
        sweep.abort_active_sweep(FAILED)
        if type(err).__module__.startswith("ray."):  # hydra/launcher=ray lost a job with its worker or node
            print(
                f"mnist-bench: error: a sweep job was lost ({one_line(err)});"
                " run the same sweep again to resume it: FINISHED cells are skipped",
                file=sys.stderr,
            )
            return EXIT_FAILED
        raise
    return 0


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[args[0]])
        sys.exit(module.main(args[1:]))
    if args and args[0] == "run":
        args = args[1:]
    sys.exit(run_app(args))
