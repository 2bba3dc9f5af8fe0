"""The command line: ``mnist-bench [run] [overrides]`` is the Hydra app (mnist_bench.hydra_app);
``mnist-bench report|check|compare|reap|roofline|bench|server ...`` are the tools around it. Every one of
them follows the error contract of mnist_bench.errors.
"""

from __future__ import annotations

import difflib
import gc
import importlib
import sys

from mnist_bench.errors import EXIT_OK, UserError, fail

PROG = "mnist-bench"
# Each module has main(argv) -> int, its exit status.
SUBCOMMANDS = {
    "run": ("mnist_bench.hydra_app", "train one job, or a sweep with -m (the default: key=value overrides)"),
    "report": ("mnist_bench.report.cli", "a sweep's report: headline, speed verdicts, tables and plots"),
    "check": ("mnist_bench.check.cli", "hold runs and benchmarks to conf/thresholds.yaml: a CI verdict"),
    "compare": ("mnist_bench.compare", "two sweeps, configuration by configuration: a regression gate"),
    "reap": ("mnist_bench.reaper", "mark runs whose process is gone or heartbeat stopped KILLED"),
    "roofline": ("mnist_bench.roofline", "what this machine can do: the floor under an epoch"),
    "bench": ("mnist_bench.bench", "every backend side by side against the roofline and Keras+Adam"),
    "server": ("mnist_bench.server", "the cluster's MLflow server (PostgreSQL store, proxied artifacts)"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [f"usage: {PROG} [COMMAND] [ARGS]", "", "commands:"]
    lines += [f"  {name:<{width}}  {description}" for name, (_, description) in SUBCOMMANDS.items()]
    lines += ["", f"`{PROG} COMMAND --help` for a command's options; `{PROG} run --help` is Hydra's, with the config."]
    return "\n".join(lines)


def unknown_command(word: str) -> UserError:
    """A bare word where a command or a key=value override belongs (Hydra would call it a bad override)."""
    close = difflib.get_close_matches(word, SUBCOMMANDS, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return UserError(f"unknown command '{word}': {hint}commands: {', '.join(SUBCOMMANDS)}; overrides are key=value")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(usage())
        sys.exit(EXIT_OK)
    if args and args[0] in SUBCOMMANDS:
        tool, args = args[0], args[1:]
    elif args and not args[0].startswith(("-", "+", "~")) and "=" not in args[0]:
        sys.exit(fail(PROG, unknown_command(args[0])))
    else:
        tool = "run"
    status = importlib.import_module(SUBCOMMANDS[tool][0]).main(args)
    # All that is left is the exit, whose garbage collection walks every object the command made (MLflow's,
    # SQLAlchemy's, Hydra's): 1-1.5 s after a joblib sweep, whose own process never settled its heap.
    gc.freeze()
    sys.exit(status)
