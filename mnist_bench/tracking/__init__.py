"""Everything MLflow, one module per concern; the names the rest of the harness uses are re-exported here.

- ``uris``: where runs are kept (a store's URI) and the one redaction of secrets;
- ``patience``: a tracking server's calls kept within ``tracking.patience_s``, and one line while it is silent;
- ``store``: opening a store (reachable, writable, created once under a lock), its errors as one line;
- ``runs``: a run's lifecycle with the final status ours to decide, and its heartbeat;
- ``liveness``: whether a RUNNING run is alive, from any host (heartbeat, or pid where it means something),
  and the reaper;
- ``sweeps``: a sweep's parent run, and the one way every reader finds and reads a sweep.

Names (tags, statuses, metrics, which runs count) are in ``mnist_bench.schema``.
"""

from mnist_bench.tracking.liveness import HEARTBEAT_TIMEOUT_S, Watchdog, beat_interval, reap, reap_lost
from mnist_bench.tracking.patience import SERVER_NOTICE_EVERY_S, bound_server_waits, spend_patience
from mnist_bench.tracking.runs import (
    FAILED,
    FINISHED,
    FLUSH_INTERVAL_S,
    KILLED,
    Terminated,
    TrackedRun,
    close,
    error_text,
    find_finished,
    has_failed_child,
    log_dataset,
    process_tags,
    sigterm_raises,
    tracked_run,
)
from mnist_bench.tracking.store import (
    TrackingError,
    check_reachable,
    error_line,
    import_store,
    open_existing,
    open_store,
    store_failure,
)
from mnist_bench.tracking.sweeps import (
    CellOutcome,
    SweepReading,
    SweepRecord,
    add_store_options,
    cell_outcomes,
    children,
    earlier_sweep,
    find_sweep,
    job_sweep_name,
    log_sweep_plan,
    metric_history,
    open_sweep,
    read_artifact,
    read_sweep,
    read_sweeps,
    share_sweep_view,
    sweep_cells,
    sweep_name,
)
from mnist_bench.tracking.uris import holds_password, is_server, redact, resolve_uri, sqlite_uri

__all__ = [
    "FAILED", "FINISHED", "FLUSH_INTERVAL_S", "HEARTBEAT_TIMEOUT_S", "KILLED", "SERVER_NOTICE_EVERY_S", "CellOutcome",
    "SweepReading", "SweepRecord", "Terminated", "TrackedRun", "TrackingError", "Watchdog", "add_store_options",
    "beat_interval", "bound_server_waits", "cell_outcomes", "check_reachable", "children", "close", "earlier_sweep",
    "error_line", "error_text", "find_finished", "find_sweep", "has_failed_child", "holds_password", "import_store",
    "is_server", "job_sweep_name", "log_dataset", "log_sweep_plan", "metric_history", "open_existing", "open_store",
    "open_sweep", "process_tags", "read_artifact", "read_sweep", "read_sweeps", "reap", "reap_lost", "redact",
    "resolve_uri", "share_sweep_view", "sigterm_raises", "spend_patience", "sqlite_uri", "store_failure",
    "sweep_cells", "sweep_name", "tracked_run",
]  # fmt: skip
