"""``mnist-bench reap``: mark KILLED every RUNNING run whose process is gone or whose heartbeat stopped.

MLflow leaves a run RUNNING forever when its process is SIGKILLed or its machine dies. Sweeps
and reports reap automatically; this command does it on demand, from any host (e.g. from cron).
"""

from __future__ import annotations

from pathlib import Path

from mnist_bench import tracking
from mnist_bench.errors import EXIT_OK, ArgumentParser, run_tool

PROG = "mnist-bench reap"


def main(argv: list[str] | None = None) -> int:
    return run_tool(PROG, lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    tracking.add_store_options(parser)
    args = parser.parse_args(argv)
    uri = tracking.resolve_uri(args.tracking_uri, Path.cwd())
    client, experiment_id = tracking.open_store(uri, args.experiment)
    reaped = tracking.reap(client, experiment_id)
    for run_id in reaped:
        print(f"marked KILLED: {run_id}")
    print(f"{len(reaped)} run(s) reaped in {tracking.redact(uri)}, experiment {args.experiment}")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
