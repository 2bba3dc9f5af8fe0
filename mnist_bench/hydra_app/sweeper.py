"""The validating sweeper: before any job starts it composes and validates every cell, creates the store and
the experiment once in this process (parallel jobs that create one SQLite store race in MLflow's
migrations), reaps dead runs and opens the sweep's parent run. It then launches the cells with whichever
launcher is configured (basic, joblib, Ray), each job carrying the parent's id, and ends with a summary
read from MLflow: exit status 1 when a cell failed, was killed, is missing or was left running. Because it
is the sweeper, not a callback, its errors stop the sweep: Hydra turns an exception raised in a callback
into a warning.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from mnist_bench.config import Config, ConfigError, DatasetConfig, config_hash, run_name, validate
from mnist_bench.errors import EXIT_FAILED, UserError
from mnist_bench.hydra_app.composition import CellComposer, ComposedCells, grid, validated_cells
from mnist_bench.hydra_app.job import in_rounds
from mnist_bench.hydra_app.launchers import JoblibWorkers, jobs_elsewhere, mark_sweep_process, parallel_jobs
from mnist_bench.rounds import Rounds, cells_that_fit
from mnist_bench.schema import Cell, Tag

log = logging.getLogger("mnist_bench")

WORKERS_STOP_S = 10.0  # how long a stopped sweep waits for its parallel workers to go before closing their runs


def _redact_log_records() -> None:
    """Every log record this process makes from now on is redacted: the launchers log each job's overrides as
    given. A record factory, since Hydra replaces the handlers (and their filters) when a launch starts."""
    from mnist_bench.tracking import redact

    make = logging.getLogRecordFactory()
    if getattr(make, "redacts", False):
        return

    def redacted(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        record.msg, record.args = redact(record.getMessage()), ()
        return record

    redacted.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacted)


class ValidatingSweeper(Sweeper):
    """The basic sweeper's grid, with every cell validated up front and one MLflow parent run per sweep."""

    def __init__(
        self, max_batch_size: int | None = None, params: Mapping[str, str] | None = None, rounds: bool = False
    ) -> None:
        self.max_batch_size = max_batch_size
        self.rounds = rounds
        self.params = dict(params or {})
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def cells(self, arguments: Sequence[str]) -> tuple[CellComposer, list[tuple[list[str], Config]]]:
        """What composes the cells, and every job's overrides with its config validated; a bad value in any
        cell stops the sweep here."""
        assert self.hydra_context is not None and self.config is not None
        given = [f"{key}={value}" for key, value in self.params.items()] + list(arguments)
        compose_cell = CellComposer(self.hydra_context.config_loader, self.config)
        from mnist_bench.experiment import check_data_limits, train_rows

        validated_cells.clear()  # an earlier sweep's in this process, stopped by a bad cell
        cells, rows = [], {}
        for overrides in grid(compose_cell.parser.parse_overrides(given)):
            cell = compose_cell.compose(overrides)
            try:
                cells.append((overrides, validate(cell)))
                data_key = repr(cells[-1][1].dataset)
                rows[data_key] = rows.get(data_key) or train_rows(cells[-1][1])
                check_data_limits(cells[-1][1], rows[data_key])
            except UserError as err:  # a bad value, or data that its limits do not fit
                raise ConfigError(f"sweep job [{' '.join(overrides)}]: {err}") from err
            compose_cell.keep(overrides, cell)
            validated_cells[tuple(cell.hydra.overrides.task)] = cells[-1][1]
        return compose_cell, cells

    def launcher(self, compose_cell: CellComposer, parent_run_id: str) -> Any:
        """The configured launcher (basic, joblib, Ray), composing its jobs' configs with ``compose_cell``."""
        from hydra.core.plugins import Plugins

        assert self.hydra_context is not None and self.task_function is not None and self.config is not None
        loader = ComposedCells(compose_cell, parent_run_id)
        return Plugins.instance().instantiate_launcher(
            hydra_context=HydraContext(config_loader=loader, callbacks=self.hydra_context.callbacks),
            task_function=self.task_function,
            config=self.config,
        )

    def sweep(self, arguments: list[str]) -> Any:
        from mnist_bench import experiment, roofline, tracking

        assert self.config is not None
        compose_cell, cells = self.cells(arguments)
        first = cells[0][1]
        uri = tracking.resolve_uri(first.tracking.uri, Path(self.config.hydra.runtime.cwd))
        mark_sweep_process()
        workers = JoblibWorkers.start(self.config.hydra.launcher, [cfg for _, cfg in cells], uri)
        client, experiment_id = tracking.open_store(uri, first.tracking.experiment, first.tracking.patience_s)
        # Probe the machine once here, not in every parallel job at the same moment (it is cached).
        roofline.cached(experiment.resolve_threads(first, parallel_jobs(self.config.hydra.launcher)))
        for run_id in tracking.reap(client, experiment_id):
            log.warning("marked run %s KILLED: its process is gone or its heartbeat stopped", run_id)

        planned = [
            Cell([tracking.redact(o) for o in overrides], config_hash(cfg), run_name(cfg)) for overrides, cfg in cells
        ]
        name = first.sweep_name or time.strftime("sweep-%Y%m%d-%H%M%S")
        sweep_dir = Path(self.config.hydra.runtime.cwd) / str(self.config.hydra.sweep.dir)
        parent = tracking.open_sweep(client, experiment_id, name, sweep_dir, planned)
        parent_id = parent.info.run_id
        if first.resume and (running := tracking.earlier_sweep(client, experiment_id, parent)):
            _give_way(client, parent_id, running, len(planned))
        status = tracking.FAILED
        try:
            with tracking.sigterm_raises():
                tracking.log_sweep_plan(client, parent_id, arguments, planned)
                print(f"sweep {name}: {len(planned)} jobs, parent run {parent_id}, store {tracking.redact(uri)}")
                sweep_dir.mkdir(parents=True, exist_ok=True)
                (sweep_dir / "multirun.yaml").write_text(tracking.redact(OmegaConf.to_yaml(self.config)))
                _redact_log_records()
                launcher = self.launcher(compose_cell, parent_id)
                if workers is not None:
                    workers.wait()
                jobs = [overrides for overrides, _ in cells]
                size = self.max_batch_size or self.rounds_fitting_memory([cfg for _, cfg in cells]) or len(jobs)
                with self.lost_jobs_reaped(client, experiment_id, parent_id, first):
                    for start in range(0, len(jobs), size):
                        self.launch_batch(launcher, jobs[start : start + size], start)
            failures = summarise(outcomes(client, experiment_id, parent_id, planned, uri))
            view_key = sweep_view(client, experiment_id, name, uri)  # what the link below opens
            print("\n".join(next_steps(name, uri, first.tracking.experiment, experiment_id, view_key)))
            status = tracking.FAILED if failures else tracking.FINISHED
        except (KeyboardInterrupt, tracking.Terminated):
            status = tracking.KILLED
            # Parallel workers are shut down without closing their runs: close the ones whose process went.
            with contextlib.suppress(Exception):
                tracking.reap(client, experiment_id, parent_id, wait_s=WORKERS_STOP_S)
            raise
        finally:
            validated_cells.clear()
            tracking.close(client, parent_id, status)
        if failures:
            raise SystemExit(EXIT_FAILED)

    @contextlib.contextmanager
    def lost_jobs_reaped(self, client: Any, experiment_id: str, parent_id: str, first: Config) -> Iterator[None]:
        """Where jobs run in other processes: while they run, a thread that marks this sweep's lost runs KILLED
        (jobs run in this process could not be lost, and its store calls would sit beside their timed epochs);
        once the launcher has returned them all, the lost runs not yet marked, as soon as they are silent."""
        from mnist_bench import tracking

        assert self.config is not None
        if not jobs_elsewhere(self.config.hydra.launcher):
            yield
            return
        every_s = tracking.beat_interval(first.tracking.heartbeat_timeout_s)
        with tracking.Watchdog(client, experiment_id, parent_id, every_s, _say_lost):
            yield
        for run_id in tracking.reap_lost(client, experiment_id, parent_id):
            _say_lost(run_id)

    def rounds_fitting_memory(self, cells: Sequence[Config]) -> int | None:
        """With rounds and no max_batch_size: batches of as many cells as their data copies fit in memory
        (rounds.cells_that_fit), said in one line when that is fewer than all; None: one batch."""
        if not self.in_rounds:
            return None
        values: dict[str, int] = {}  # pixel values of each dataset the cells use, each read once
        for cfg in cells:
            if cfg.backend.name != "numpy" and repr(cfg.dataset) not in values:
                values[repr(cfg.dataset)] = _pixel_values(cfg.dataset)
        fit = cells_that_fit([_data_copy_bytes(cfg, values) for cfg in cells])
        if fit is not None:
            log.warning(
                "rounds: the %d cells' copies of their data would not fit in half the memory available; they"
                " train in batches of %d, each batch in rounds of its own (hydra.sweeper.max_batch_size=N chooses)",
                len(cells),
                fit,
            )
        return fit

    @property
    def in_rounds(self) -> bool:
        """Whether this sweep's jobs train in rounds: asked for, and run by the basic launcher in this process."""
        assert self.config is not None
        return self.rounds and not jobs_elsewhere(self.config.hydra.launcher)

    def launch_batch(self, launcher: Any, jobs: list[list[str]], start: int) -> None:
        """Launch one batch of jobs. With the basic launcher they train in rounds (mnist_bench.rounds): the
        launch starts each job, which trains its first epoch, then the remaining rounds run here; Ctrl-C or
        SIGTERM stops every job at the end of the epoch training then, each run closed as KILLED."""
        from mnist_bench.tracking import Terminated

        rounds = Rounds() if self.in_rounds else None
        try:
            with in_rounds(rounds):
                for result in launcher.launch(jobs, initial_job_idx=start):
                    _ = result.return_value  # raises what a job raised past its own isolation (Ctrl-C)
            if rounds is not None:
                rounds.run()
        except (KeyboardInterrupt, Terminated) as err:
            if rounds is not None:
                rounds.stop(err)
            raise


def _pixel_values(spec: DatasetConfig) -> int:
    """How many pixel values both splits of a dataset hold, as a run loads them (its limits applied)."""
    from mnist_bench import data

    dataset = data.load(spec)
    return (len(dataset.x_train) + len(dataset.x_test)) * dataset.x_train[0].size


def _data_copy_bytes(cfg: Config, pixel_values: Mapping[str, int]) -> int:
    """The data a cell in rounds holds beside the process's shared arrays: its framework's copy of both splits
    (TensorFlow, JAX and torch copy them to their device); NumPy cells hold none."""
    import numpy as np

    if cfg.backend.name == "numpy":
        return 0
    return pixel_values[repr(cfg.dataset)] * np.dtype(cfg.dtype).itemsize


def _say_lost(run_id: str) -> None:
    log.warning("marked run %s KILLED: its job was lost (no heartbeat, or its process is gone)", run_id)


def _give_way(client: Any, parent_id: str, running: Any, cells: int) -> None:
    """Two sweeps of the same cells at once would train every cell twice (each job finds no FINISHED run yet):
    the later one withdraws its parent run, which never ran, so that it shadows nothing, and says why."""
    from mnist_bench import tracking

    tracking.close(client, parent_id, tracking.KILLED)
    client.delete_run(parent_id)
    where = f"pid {running.data.tags.get(Tag.PID, '?')} on {running.data.tags.get(Tag.HOST, '?')}"
    raise UserError(
        f"sweep {tracking.sweep_name(running)!r} (parent run {running.info.run_id}, {where}) is already running"
        f" these {cells} cells: wait for it to end and run this again (finished cells are skipped; if it died on"
        " another host, run mnist-bench reap there), or pass resume=false to train them twice"
    )


def outcomes(client: Any, experiment_id: str, parent_id: str, planned: list[Cell], uri: str) -> list:
    """Every cell's outcome, read from the store; a store that does not answer (the server that failed the
    jobs) is one line, with what to run once it is back, where it was a 141-line MlflowException."""
    from mnist_bench import tracking

    try:
        return tracking.cell_outcomes(client, experiment_id, parent_id, planned)
    except Exception as err:
        if (why := tracking.store_failure(err, uri)) is None:
            raise
        tracking.spend_patience(uri)  # the parent's end status tries once, not the whole patience again
        raise tracking.TrackingError(
            f"the sweep's outcome could not be read ({why}); once it answers, mnist-bench reap marks the runs left"
            " RUNNING KILLED, and running this sweep again trains what did not finish"
        ) from err


def sweep_view(client: Any, experiment_id: str, name: str, uri: str) -> str | None:
    """The key of the sweep's saved runs view, or None, with one warning line, where the store refused it (a
    full disk): the view only filters the page the link opens, so the sweep's outcome stands without it."""
    from mnist_bench import tracking

    try:
        return tracking.share_sweep_view(client, experiment_id, name)
    except Exception as err:
        why = tracking.store_failure(err, uri) or tracking.error_line(err)
        log.warning("the sweep's runs view was not saved (%s): the link below opens all the experiment's runs", why)
        return None


def next_steps(name: str, uri: str, experiment: str, experiment_id: str, view_key: str | None) -> list[str]:
    """Where to look once a sweep has ended: the command for its report, and a link that opens its runs in
    MLflow's UI (with, for a local store, the command that serves that UI)."""
    from mnist_bench.tracking import is_server, redact

    store = redact(uri)
    report = ["mnist-bench", "report", "--sweep", name, "--tracking-uri", store, "--experiment", experiment]
    if is_server(store):
        base = urllib.parse.urlsplit(store)._replace(query="", fragment="").geturl()
        runs = runs_link(base, experiment_id, view_key)
    else:
        serve = ["mlflow", "ui", "--backend-store-uri", store, "--port", str(UI_PORT)]
        runs = f"{shlex.join(serve)}, then open {runs_link(f'http://127.0.0.1:{UI_PORT}', experiment_id, view_key)}"
    return [f"report: {shlex.join(report)}", f"runs: {runs}"]


UI_PORT = 5000  # mlflow ui's own default


def runs_link(server: str, experiment_id: str, view_key: str | None) -> str:
    """The address in MLflow's UI (3.x) of a sweep's runs: the experiment's runs table in its "Model training"
    view (``workflowType``; a fresh browser otherwise gets the GenAI overview), showing the view that
    tracking.share_sweep_view saved (``viewStateShareKey``; without one, the experiment's runs). The UI routes
    after ``#``; these are the query parameters its runs page reads from there."""
    view = {} if view_key is None else {"viewStateShareKey": view_key}
    query = urllib.parse.urlencode({"workflowType": "machine_learning", **view}, quote_via=urllib.parse.quote)
    return f"{server.rstrip('/')}/#/experiments/{urllib.parse.quote(experiment_id, safe='')}/runs?{query}"


def summarise(outcomes: Sequence) -> int:
    """Print the sweep's summary and each cell that failed; returns how many did."""
    counts = Counter(outcome.status.value for outcome in outcomes)
    bad = [outcome for outcome in outcomes if outcome.status.is_failure]
    print("sweep summary: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for outcome in bad:
        print(f"  {outcome.status.value}: {outcome.cell.name} [{' '.join(outcome.cell.overrides)}]")
    return len(bad)
