"""The Hydra application: the job (Hydra's task function), the sweeper, and the only code that knows the
shape of a launcher's config.

``python -m mnist_bench [overrides]`` runs one job. With ``-m``, Hydra hands the overrides to
``ValidatingSweeper``, a Sweeper on Hydra's public plugin API (registered by the shim in
``hydra_plugins/mnist_bench_sweeper``). Before any job starts it composes and validates every cell,
creates the store and the experiment once in this process (parallel jobs that create one SQLite store
race in MLflow's migrations), reaps dead runs and opens the sweep's parent run. It then launches the
cells with whichever launcher is configured (basic, joblib, Ray), each job carrying the parent's id,
and ends with a summary read from MLflow: exit status 1 when a cell failed, was killed, is missing or
was left running. Because it is the sweeper, not a callback, its errors stop the sweep: Hydra turns an
exception raised in a callback into a warning.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import os
import shlex
import sys
import threading
import time
import urllib.parse
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.config_loader import ConfigLoader
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from mnist_bench import config, machine
from mnist_bench.config import Config, ConfigError, config_hash, run_name, validate
from mnist_bench.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UserError, one_line
from mnist_bench.schema import Cell, Tag

log = logging.getLogger("mnist_bench")

WORKERS_STOP_S = 10.0  # how long a stopped sweep waits for its parallel workers to go before closing their runs
PARENT_RUN_ENV = "MNIST_BENCH_PARENT_RUN_ID"  # the sweep's parent run, set in each job's process by Hydra
# Each cell's config as the sweeper validated it, by the cell's task overrides, for the jobs a launcher runs
# in the sweeper's own process (the basic one): validating again cost each job 15 ms. Emptied when the sweep
# ends; a job in another process (joblib, Ray) finds it empty and validates its cell itself.
_validated_cells: dict[tuple[str, ...], Config] = {}
# Hydra's own long flags (as its argument parser, hydra._internal.utils.get_args_parser, defines them).
HYDRA_FLAGS = {
    "--cfg", "--config-dir", "--config-name", "--config-path", "--experimental-rerun", "--help", "--hydra-help",
    "--info", "--multirun", "--package", "--resolve", "--run", "--shell-completion", "--version",
}  # fmt: skip


def register() -> None:
    """What the app's configs need before Hydra composes them: the schema, the sweeper, the launcher's resolver."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.mnist_bench_sweeper import MnistBenchSweeper

    config.register()
    # Hydra finds plugins by scanning the hydra_plugins namespace, which misses it in an editable install.
    Plugins.instance().register(MnistBenchSweeper)
    # The GPUs a job asks Ray for (conf/hydra/launcher/ray.yaml): one for device=gpu, none otherwise.
    OmegaConf.register_new_resolver("mnist_bench.gpus", lambda device: int(device == "gpu"), replace=True)
    # conf/hydra/launcher/ray.yaml extends the Ray plugin's schema on purpose: Hydra's warning about it is noise.
    warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/ray' is validated against ConfigStore schema")


def compose(*overrides: str) -> Config:
    """One job's config exactly as ``python -m mnist_bench OVERRIDES`` composes and validates it from conf/:
    the one way a preset (``+experiment=fast``) is read, by runs and by bench alike. Outside a Hydra app."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from mnist_bench.paths import conf_dir

    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir())):
        return validate(hydra_compose("config", overrides=list(overrides)))


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


# ---------------------------------------------------------------- the job


def job(cfg: DictConfig) -> str | None:
    """Hydra's task function: validate, then run; in a sweep a failing job never stops the others."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from mnist_bench import experiment, tracking

    hydra_cfg = HydraConfig.get()
    launch_dir = Path(hydra_cfg.runtime.cwd)
    if hydra_cfg.output_subdir is not None:
        _redact_files((Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir).glob("*.yaml"))
    if hydra_cfg.mode != RunMode.MULTIRUN:
        try:
            return experiment.run(validate(cfg), launch_dir)
        except UserError as err:  # one line, not Hydra's "Error executing job" report
            print(f"mnist-bench: error: {one_line(err)}", file=sys.stderr)
            raise SystemExit(EXIT_BAD_INPUT) from None
    job_config = _validated_cells.get(tuple(hydra_cfg.overrides.task)) or validate(cfg)
    try:
        parent = os.environ[PARENT_RUN_ENV]
        return experiment.run(job_config, launch_dir, parallel_jobs(hydra_cfg.launcher), parent)
    except (KeyboardInterrupt, tracking.Terminated):
        raise
    except Exception as err:  # recorded in MLflow (as far as the store allows); the summary counts it
        store = tracking.resolve_uri(job_config.tracking.uri, launch_dir)
        log.error("%s: FAILED: %s", run_name(job_config), tracking.store_failure(err, store) or one_line(err))
        return None


def _redact_files(paths: Iterable[Path]) -> None:
    """Rewrites what Hydra saved (the job's config, overrides, its own config) through the harness's one
    redaction: Hydra writes them before the job starts, with any password given in an override."""
    from mnist_bench.tracking import redact

    for path in paths:
        text = path.read_text()
        if (clean := redact(text)) != text:
            path.write_text(clean)


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


# ---------------------------------------------------------------- the sweep


def grid(overrides: Sequence[Override]) -> list[list[str]]:
    """Every combination of the sweep's overrides (``a=1,2 b=range(3)``), one list of overrides per job."""
    choices: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise ConfigError(
                f"{override.input_line}: a sweep takes a list or a range (lr=0.1,0.5 or seed=range(5)), not an interval"
            )
    return [list(job) for job in itertools.product(*choices.values())]


class CellComposer:
    """Composes a sweep's cells as Hydra's ``load_sweep_config`` does, but in full only once per choice of
    config groups (``backend=tf``, ``+experiment=fast``). A cell that differs from such a one only in plain
    values (``lr=0.1`` against ``lr=0.5``) is a copy of it with those values set, as Hydra sets them after
    composing: 0.01 s a cell against Hydra's 0.2-0.3 s, which a sweep of many cells paid before it began.
    Each cell composed for validation is kept until its job asks for it, so that a launcher composing in this
    process (the basic one) does not compose it a second time; a copy sent to another process leaves them."""

    def __init__(self, loader: ConfigLoader, master: DictConfig) -> None:
        self.loader, self.master = loader, master
        self.parser = OverridesParser.create(config_loader=loader)
        self.composed: dict[tuple[str, ...], DictConfig] = {}
        self.groups: dict[str, bool] = {}  # Hydra's lookup of a group copies its config repository: 50 ms
        self.kept: dict[tuple[str, ...], DictConfig] = {}  # validated cells no job has taken yet

    def __getstate__(self) -> dict[str, Any]:
        """A joblib job carries this composer: without the kept cells, one per cell of the sweep."""
        return {**self.__dict__, "kept": {}}

    def is_group(self, key: str) -> bool:
        if key not in self.groups:
            self.groups[key] = bool(self.loader.get_group_options(key))
        return self.groups[key]

    def is_plain_value(self, override: Override) -> bool:
        """Set on the composed config (Hydra's config overrides): not a group, an add or a delete, not Hydra's
        own settings, and a scalar (a dict or list merges with what a copy already holds)."""
        return (
            override.type == OverrideType.CHANGE
            and override.package is None
            and not override.is_hydra_override()
            and not self.is_group(override.key_or_group)
            and not isinstance(override.value(), (dict, list))
        )

    def __call__(self, overrides: list[str]) -> DictConfig:
        """The cell's config: the one kept from its validation, handed over once, else composed now."""
        kept = self.kept.pop(tuple(overrides), None)
        return kept if kept is not None else self.compose(overrides)

    def keep(self, overrides: list[str], cell: DictConfig) -> None:
        self.kept[tuple(overrides)] = cell

    def compose(self, overrides: list[str]) -> DictConfig:
        parsed = self.parser.parse_overrides(overrides)
        # A copy keeps what its cell set: cells share one only if they set the same plain keys.
        shape = tuple(o.key_or_group if self.is_plain_value(o) else o.input_line or "" for o in parsed)
        if shape not in self.composed:
            self.composed[shape] = self.loader.load_sweep_config(self.master, overrides)
            return copy.deepcopy(self.composed[shape])
        cell = copy.deepcopy(self.composed[shape])
        for override in filter(self.is_plain_value, parsed):
            OmegaConf.update(cell, override.key_or_group, override.value(), merge=True)
        task = [o for o in parsed if not o.is_hydra_override()]
        cell.hydra.overrides.task = [o.input_line for o in task]
        cell.hydra.job.override_dirname = override_dirname(task, cell.hydra.job.config.override_dirname)
        return cell


def override_dirname(overrides: Sequence[Override], settings: DictConfig) -> str:
    """``hydra.job.override_dirname`` for these task overrides, as Hydra's config loader writes it."""
    lines = sorted(o.input_line or "" for o in overrides if o.key_or_group not in settings.exclude_keys)
    return settings.item_sep.join(lines).replace("=", settings.kv_sep)


class ComposedCells(ConfigLoader):
    """The config loader a sweep's launcher gets: each cell's config comes from the sweeper's CellComposer,
    which already holds the cells it composed in full, with the parent run's id set for the job's process.
    A parallel launcher sends this loader with every job: it carries those few cells, not one config per
    cell of the sweep (every job of a 100-cell sweep would carry 100). Everything else is Hydra's own."""

    def __init__(self, compose_cell: CellComposer, parent_run_id: str):
        self.loader, self.compose_cell, self.parent_run_id = compose_cell.loader, compose_cell, parent_run_id

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        cell = self.compose_cell(sweep_overrides)
        with open_dict(cell):
            cell.hydra.job.env_set[PARENT_RUN_ENV] = self.parent_run_id
        return cell

    def load_configuration(self, *args: Any, **kwargs: Any) -> DictConfig:
        return self.loader.load_configuration(*args, **kwargs)

    def get_search_path(self) -> Any:
        return self.loader.get_search_path()

    def get_sources(self) -> Any:
        return self.loader.get_sources()

    def list_groups(self, parent_name: str) -> list[str]:
        return self.loader.list_groups(parent_name)

    def get_group_options(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.loader.get_group_options(*args, **kwargs)

    def compute_defaults_list(self, *args: Any, **kwargs: Any) -> Any:
        return self.loader.compute_defaults_list(*args, **kwargs)


class ValidatingSweeper(Sweeper):
    """The basic sweeper's grid, with every cell validated up front and one MLflow parent run per sweep."""

    def __init__(self, max_batch_size: int | None = None, params: Mapping[str, str] | None = None) -> None:
        self.max_batch_size = max_batch_size
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
        _validated_cells.clear()  # an earlier sweep's in this process, stopped by a bad cell
        cells = []
        for overrides in grid(compose_cell.parser.parse_overrides(given)):
            cell = compose_cell.compose(overrides)
            try:
                cells.append((overrides, validate(cell)))
            except ConfigError as err:
                raise ConfigError(f"sweep job [{' '.join(overrides)}]: {err}") from err
            compose_cell.keep(overrides, cell)
            _validated_cells[tuple(cell.hydra.overrides.task)] = cells[-1][1]
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
        workers = JoblibWorkers.start(self.config.hydra.launcher, [cfg for _, cfg in cells], uri)
        client, experiment_id = tracking.open_store(uri, first.tracking.experiment, first.tracking.patience_s)
        # Probe the machine once here, not in every parallel job at the same moment (it is cached).
        roofline.cached(experiment.resolve_threads(first, parallel_jobs(self.config.hydra.launcher)))
        for run_id in tracking.reap(client, experiment_id):
            log.warning("marked run %s KILLED: its process is gone", run_id)

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
                size = self.max_batch_size or len(jobs)
                for start in range(0, len(jobs), size):
                    for result in launcher.launch(jobs[start : start + size], initial_job_idx=start):
                        _ = result.return_value  # raises what a job raised past its own isolation (Ctrl-C)
            failures = summarise(tracking.cell_outcomes(client, experiment_id, parent_id, planned))
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
            _validated_cells.clear()
            tracking.close(client, parent_id, status)
        if failures:
            raise SystemExit(EXIT_FAILED)


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


def check_flags(argv: Sequence[str]) -> None:
    """A ``--name`` that is not Hydra's is a setting written as an option: say how to write it."""
    for position, arg in enumerate(argv):
        flag, equals, value = arg.partition("=")
        if flag.startswith("--") and flag not in HYDRA_FLAGS:
            given = value if equals else next(iter(argv[position + 1 : position + 2]), "VALUE")
            raise UserError(f"{flag} is not an option: settings are key=value overrides, write {flag[2:]}={given}")


def main(argv: list[str]) -> int:
    """Run the Hydra app with ``argv`` as its overrides and flags; returns the exit status."""
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from mnist_bench.paths import conf_dir
    from mnist_bench.tracking import Terminated

    full_errors = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us instead of Hydra's multi-line report
    register()
    app = hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")(job)
    sys.argv = [sys.argv[0], *argv]
    try:
        check_flags(argv)
        app()
    except (KeyboardInterrupt, Terminated) as err:
        print(f"mnist-bench: {'interrupted' if isinstance(err, KeyboardInterrupt) else err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UserError, HydraException, OmegaConfBaseException) as err:  # ours; Hydra's for a bad override or file
        if full_errors:
            raise
        print(f"mnist-bench: error: {one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SystemExit as err:
        return err.code if isinstance(err.code, int) else EXIT_FAILED
    except BaseException as err:
        if type(err).__module__.startswith("ray."):  # hydra/launcher=ray lost a job with its worker or node
            print(
                f"mnist-bench: error: a sweep job was lost ({one_line(err)});"
                " run the same sweep again to resume it: FINISHED cells are skipped",
                file=sys.stderr,
            )
            return EXIT_FAILED
        raise
    return EXIT_OK
