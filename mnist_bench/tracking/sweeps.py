"""A sweep in the store: its parent run as the sweeper opens it, and the one way every reader finds and
reads a sweep (report, check, compare, the sweep's own summary)."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mnist_bench.config import DEFAULT_EXPERIMENT
from mnist_bench.schema import CELLS_ARTIFACT, KIND_SWEEP, Cell, RunStatus, Status, SweepParam, Tag, status_of
from mnist_bench.tracking.liveness import reap
from mnist_bench.tracking.runs import find_finished, process_tags
from mnist_bench.tracking.store import SEARCH_LIMIT, TrackingError, open_existing
from mnist_bench.tracking.uris import redact

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient


def open_sweep(client: MlflowClient, experiment_id: str, name: str, sweep_dir: Path, planned: Sequence[Cell]) -> Run:
    """A sweep's parent run, tagged so that find_sweep, earlier_sweep and the reaper know it."""
    tags = {Tag.KIND: KIND_SWEEP, Tag.SWEEP_NAME: name, Tag.SWEEP_DIR: str(sweep_dir), **process_tags()}
    tags[Tag.CELLS_DIGEST] = cells_digest(planned)
    return client.create_run(experiment_id, run_name=name, tags=tags)


def share_sweep_view(client: MlflowClient, experiment_id: str, name: str) -> str:
    """Save the runs page of a sweep's jobs as a view of the experiment, the way MLflow's UI (3.x) saves a
    shared view, and return the key a link names it by (``viewStateShareKey``). The view searches for the
    sweep's tag, less the parent (it has no metrics, and in the charts it would take a place and head every
    legend); sorts by run name (sorted by anything but creation time, the table lists the jobs flat instead of
    folded under their parent); and draws every job in the charts, where the UI otherwise draws the first 10."""
    quote = "'" if "'" not in name else '"'
    view = {
        "searchFilter": f"tags.{Tag.SWEEP_NAME} = {quote}{name}{quote} and tags.`{Tag.PARENT}` IS NOT NULL",
        "orderByKey": "tags.`mlflow.runName`",
        "orderByAsc": True,
        "runsHiddenMode": "SHOW_ALL",
    }
    text = json.dumps(view, sort_keys=True)
    key = hashlib.sha256(text.encode()).hexdigest()[:32]
    client.set_experiment_tag(experiment_id, Tag.SHARED_VIEW + key, text)
    return key


def log_sweep_plan(client: MlflowClient, parent_id: str, arguments: Sequence[str], planned: Sequence[Cell]) -> None:
    """The sweep's command line and its planned cells (sweep_cells.json), which read_sweep holds its runs to."""
    client.log_param(parent_id, SweepParam.SWEEP_OVERRIDES, redact(" ".join(arguments))[:6000])
    client.log_param(parent_id, SweepParam.SWEEP_CELLS, len(planned))
    client.log_dict(parent_id, [asdict(cell) for cell in planned], CELLS_ARTIFACT)


def cells_digest(cells: Sequence[Cell]) -> str:
    """A sweep's cells as one short hash: two sweeps of the same cells, in any order, share it."""
    return hashlib.sha256(" ".join(sorted(cell.config_hash for cell in cells)).encode()).hexdigest()[:16]


def earlier_sweep(client: MlflowClient, experiment_id: str, parent: Run) -> Run | None:
    """A RUNNING sweep of the same cells as ``parent`` that began before it (on a tie, the smaller run id).

    Asked once ``parent`` exists and dead runs are reaped: two sweeps started at the same moment then each
    find the other, and agree on which of them goes on."""
    digest = parent.data.tags[Tag.CELLS_DIGEST]
    running = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{Tag.CELLS_DIGEST}` = '{digest}' and attributes.status = '{RunStatus.RUNNING}'",
        max_results=SEARCH_LIMIT,
    )
    key = lambda run: (run.info.start_time, run.info.run_id)  # noqa: E731
    earlier = [run for run in running if key(run) < key(parent)]
    return min(earlier, key=key, default=None)


# ---------------------------------------------------------------- sweeps, as the readers find them


def sweep_name(parent: Run) -> str:
    """What a sweep is called: the sweep_name config (or a timestamp), which is its parent run's name."""
    return parent.data.tags.get(Tag.SWEEP_NAME) or parent.info.run_name or parent.info.run_id


_sweep_names: dict[str, str] = {}


def job_sweep_name(client: MlflowClient, parent_run_id: str) -> str:
    """The name of the sweep a job belongs to, read from its parent run once per process, not every job."""
    if parent_run_id not in _sweep_names:
        _sweep_names[parent_run_id] = sweep_name(client.get_run(parent_run_id))
    return _sweep_names[parent_run_id]


def find_sweep(client: MlflowClient, experiment_id: str, wanted: str, where: str) -> Run:
    """A sweep's parent run by run id, by name, or the most recent one ("latest")."""
    sweeps = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{Tag.KIND}` = '{KIND_SWEEP}'",
        order_by=["attributes.start_time DESC"],
        max_results=SEARCH_LIMIT,
    )
    for parent in sweeps:
        if wanted == "latest" or wanted in (parent.info.run_id, parent.info.run_name, sweep_name(parent)):
            return parent
    if not sweeps:
        raise TrackingError(f"no sweep in {where}; run one first, e.g. python -m mnist_bench -m lr=0.1,0.5")
    latest = ", ".join(sweep_name(parent) for parent in sweeps[:5])
    raise TrackingError(
        f"no sweep named {wanted!r} (nor a parent run with that id) in {where}; latest sweeps: {latest}"
    )


def children(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Run]:
    """Every job run of a sweep, in any status."""
    return client.search_runs(
        [experiment_id], filter_string=f"tags.`{Tag.PARENT}` = '{parent_run_id}'", max_results=SEARCH_LIMIT
    )


def sweep_cells(client: MlflowClient, parent_run_id: str) -> list[Cell] | None:
    """The cells a sweep set out to run (its CELLS_ARTIFACT); None when the parent has none."""
    text = read_artifact(client, parent_run_id, CELLS_ARTIFACT)
    return None if text is None else [Cell(**item) for item in json.loads(text)]


def read_artifact(client: MlflowClient, run_id: str, path: str) -> str | None:
    """The text of a run's top-level artifact; None when the run has no such artifact."""
    if path not in {item.path for item in client.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory(prefix="mnist-bench-") as folder, _no_progress_bar():
        return Path(client.download_artifacts(run_id, path, folder)).read_text()


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    """MLflow draws a download progress bar on stderr unless told not to; the tools print one line."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    saved = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key)
        else:
            os.environ[key] = saved


@dataclass(frozen=True)
class CellOutcome:
    """How one cell of a sweep ended, and the run that says so ("" for a missing cell)."""

    cell: Cell
    status: Status
    run_id: str


def cell_outcomes(client: MlflowClient, experiment_id: str, parent_run_id: str, cells: list[Cell]) -> list[CellOutcome]:
    """Every planned cell's outcome: its latest run in this sweep, else an earlier FINISHED run that resume
    reused (skipped), else missing."""
    return _outcomes(client, experiment_id, children(client, experiment_id, parent_run_id), cells)


def _outcomes(client: MlflowClient, experiment_id: str, jobs: list[Run], cells: list[Cell]) -> list[CellOutcome]:
    """cell_outcomes, given the sweep's job runs already read."""
    latest = {}
    for run in sorted(jobs, key=lambda r: r.info.start_time):
        latest[run.data.tags.get(Tag.CONFIG_HASH)] = run
    outcomes = []
    for cell in cells:
        run = latest.get(cell.config_hash)
        if run is not None:
            outcomes.append(CellOutcome(cell, status_of(run), run.info.run_id))
            continue
        earlier = find_finished(client, experiment_id, cell.config_hash)
        outcomes.append(CellOutcome(cell, Status.SKIPPED if earlier else Status.MISSING, earlier or ""))
    return outcomes


@dataclass(frozen=True)
class SweepRecord:
    """A sweep as report, check and compare read it, in one pass over the store."""

    parent: Run
    cells: list[Cell] | None  # what it set out to run; None when the parent has no CELLS_ARTIFACT
    runs: list[Run]  # its own job runs, then the earlier FINISHED run each skipped cell reused
    outcomes: list[CellOutcome]  # one per planned cell

    @property
    def reused(self) -> list[str]:
        """The ids of the runs that another sweep trained and this one reused (resume skipped their cells)."""
        own = self.parent.info.run_id
        return [run.info.run_id for run in self.runs if run.data.tags.get(Tag.PARENT) != own]


def read_sweep(client: MlflowClient, experiment_id: str, parent: Run) -> SweepRecord:
    """A sweep's cells, runs and cell outcomes. A sweep re-launched after it finished trains nothing: its
    results are the runs its cells reused, so a report of it is the report of those."""
    jobs = children(client, experiment_id, parent.info.run_id)
    cells = sweep_cells(client, parent.info.run_id)
    outcomes = _outcomes(client, experiment_id, jobs, cells or [])
    runs = {run.info.run_id: run for run in jobs}
    for outcome in outcomes:
        if outcome.status is Status.SKIPPED and outcome.run_id not in runs:
            runs[outcome.run_id] = client.get_run(outcome.run_id)
    return SweepRecord(parent, cells, list(runs.values()), outcomes)


STORE_HELP = "default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the current folder"


def add_store_options(parser: argparse.ArgumentParser, side: str = "") -> None:
    """``--tracking-uri`` and ``--experiment``, as every tool declares them; ``side`` names a second pair
    (compare's ``candidate-``), whose defaults are the first pair's."""
    if side:
        parser.add_argument(f"--{side}tracking-uri", help="the candidate's store (default: --tracking-uri's)")
        parser.add_argument(f"--{side}experiment", help="the candidate's experiment (default: --experiment's)")
        return
    parser.add_argument("--tracking-uri", help=STORE_HELP)
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment (default: %(default)s)")


@dataclass(frozen=True)
class SweepReading:
    """What a reading tool opened: the store's client, where it looked (for messages), the sweeps it asked
    for, and the runs the reaper marked KILLED on the way (their processes were gone)."""

    client: MlflowClient
    where: str
    sweeps: list[SweepRecord]
    reaped: list[str]


def read_sweeps(uri: str, experiment: str, wanted: Sequence[str]) -> SweepReading:
    """The one way report, check and compare read sweeps: open the existing store (creating nothing), reap
    runs whose process is gone so that no dead run reads as running, and read each wanted sweep (a name, a
    parent run id, or ``latest``)."""
    client, experiment_id = open_existing(uri, experiment)
    reaped = reap(client, experiment_id)
    where = f"experiment {experiment!r} at {redact(uri)}"
    parents = [find_sweep(client, experiment_id, name, where) for name in wanted]
    return SweepReading(client, where, [read_sweep(client, experiment_id, parent) for parent in parents], reaped)


def metric_history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    """A per-epoch metric's values by epoch (MLflow's step), in epoch order; a step logged twice keeps its last
    value. The one reader of curves: the report's plots and compare's timed epochs."""
    by_step = {point.step: point.value for point in client.get_metric_history(run_id, key)}
    return dict(sorted(by_step.items()))
