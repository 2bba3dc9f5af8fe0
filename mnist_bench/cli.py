"""The command line: ``mnist-bench [run] [overrides]`` is the Hydra app (mnist_bench.hydra_app);
``mnist-bench report|check|reap|roofline|bench|server ...`` are the tools around it. Every one of them
follows the error contract of mnist_bench.errors.
"""

from __future__ import annotations

import importlib
import sys

# Each module has main(argv) -> int, its exit status.
SUBCOMMANDS = {
    "run": "mnist_bench.hydra_app",  # one job, or a sweep with -m (the default when no tool is named)
    "report": "mnist_bench.report",
    "check": "mnist_bench.check",
    "compare": "mnist_bench.compare",  # two sweeps, configuration by configuration: a regression gate
    "reap": "mnist_bench.reaper",
    "roofline": "mnist_bench.roofline",
    "bench": "mnist_bench.bench",  # every backend side by side against the roofline and Keras+Adam
    "server": "mnist_bench.server",  # the cluster's MLflow server (PostgreSQL store, proxied artifacts)
}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    tool, args = (args[0], args[1:]) if args and args[0] in SUBCOMMANDS else ("run", args)
    sys.exit(importlib.import_module(SUBCOMMANDS[tool]).main(args))
