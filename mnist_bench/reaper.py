"""``mnist-bench reap``: mark KILLED every RUNNING run whose process is gone.

MLflow leaves a run RUNNING forever when its process is SIGKILLed or the machine dies. Sweeps
and reports reap automatically; this command does it on demand (e.g. from cron).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mnist_bench import tracking


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mnist-bench reap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or ./mlflow.db")
    parser.add_argument("--experiment", default="mnist-bench")
    args = parser.parse_args(argv)
    uri = tracking.resolve_uri(args.tracking_uri, Path.cwd())
    try:
        client, experiment_id = tracking.open_store(uri, args.experiment)
    except tracking.TrackingError as err:
        print(f"mnist-bench reap: error: {err}", file=sys.stderr)
        return 2
    reaped = tracking.reap(client, experiment_id)
    for run_id in reaped:
        print(f"marked KILLED: {run_id}")
    print(f"{len(reaped)} run(s) reaped in {tracking.redact(uri)}, experiment {args.experiment}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
