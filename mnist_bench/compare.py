"""``mnist-bench compare BASELINE CANDIDATE``: did anything get slower or less accurate between two sweeps?

Each side is a sweep named by its name or parent run id (``latest`` for the newest), or several
repeats of one, comma-separated, in one store or two. Its finished runs are grouped into configurations
by every param that changes what a run computes, seeds and repeats pooled; the configurations both sides
ran are compared the way the report compares backends (mnist_bench.timing): the baseline's seconds per
epoch over the candidate's (> 1: the candidate is faster), a 95% bootstrap interval, and a verdict that
is ``faster`` or ``slower`` only when the interval excludes 1 and every run on both sides was timed under
stable conditions. Only repeats put a drift in the machine's speed between sweeps into the interval: run
them in turns (baseline, candidate, baseline, candidate) and pass each side's as ``A1,A2``.

Exit status, for CI between two commits: 1 when a configuration is significantly slower than
``--max-slowdown`` (the whole interval beyond it) or less accurate than ``--max-accuracy-drop``; 2 on bad
input; 0 otherwise.

    python -m mnist_bench.compare BASELINE[,REPEAT...] CANDIDATE[,REPEAT...] [--tracking-uri URI]
        [--candidate-tracking-uri URI] [--json PATH]
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from mnist_bench import atomic, timing, tracking
from mnist_bench.config import changes_numbers
from mnist_bench.errors import EXIT_FAILED, EXIT_OK, ArgumentParser, UserError, run_tool, write_failure
from mnist_bench.schema import Metric, Tag, counted, normalise

PROG = "mnist-bench compare"
NOT_IDENTITY = {"seed"}  # pooled over: a configuration is everything else that changes the numbers


@dataclass(frozen=True)
class Side:
    """One side's finished runs of one configuration, over its repeated sweeps."""

    accuracies: list[float]
    sweeps: list[list[list[float]]]  # each sweep's runs' timed epoch seconds
    unstable: list[str]  # "run name: reason" for each run whose timings were not stable

    def __add__(self, other: Side) -> Side:
        return Side(self.accuracies + other.accuracies, self.sweeps + other.sweeps, self.unstable + other.unstable)


@dataclass(frozen=True)
class ConfigurationComparison:
    """One configuration both sweeps ran, as --json writes it."""

    configuration: str
    n_baseline: int  # runs, over all of the side's sweeps
    n_candidate: int
    n_baseline_sweeps: int
    n_candidate_sweeps: int
    accuracy_diff: float  # candidate's mean final test accuracy minus the baseline's
    speed_ratio: float  # baseline's seconds per epoch over the candidate's: > 1 is faster
    speed_ratio_low: float
    speed_ratio_high: float
    speed_verdict: str
    regression: str  # why this configuration fails the comparison; "" when it does not


def configuration(params: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """What makes two runs the same experiment, seeds aside: every param that changes the numbers. A null
    param is one left out: runs leave backend.threads out where null, where older runs logged None."""
    return tuple(
        sorted(
            (k, normalise(v))
            for k, v in params.items()
            if changes_numbers(k) and k not in NOT_IDENTITY and normalise(v) != normalise(None)
        )
    )


def label(config: tuple[tuple[str, str], ...], varying: set[str]) -> str:
    return " ".join(f"{k}={v}" for k, v in config if k in varying) or "(one configuration)"


def load(uri: str, experiment: str, wanted: str) -> tuple[str, str, dict[tuple, Side]]:
    """A sweep's name, its parent run's id and its finished runs, grouped by configuration."""
    reading = tracking.read_sweeps(uri, experiment, [wanted])
    client, (sweep,) = reading.client, reading.sweeps
    parent = sweep.parent
    grouped: dict[tuple, list] = {}
    for run in sweep.runs:
        if counted(run):
            grouped.setdefault(configuration(run.data.params), []).append(run)
    sides = {}
    for config, runs in grouped.items():
        epochs = [list(tracking.metric_history(client, r.info.run_id, Metric.EPOCH_SECONDS).values()) for r in runs]
        timed = [e for e in epochs if e]
        sides[config] = Side(
            [r.data.metrics.get(Metric.FINAL_TEST_ACCURACY, math.nan) for r in runs],
            [timed] if timed else [],
            [
                f"{r.info.run_name}: {r.data.tags[Tag.TIMING_UNSTABLE]}"
                for r in runs
                if Tag.TIMING_UNSTABLE in r.data.tags
            ],
        )
    if not sides:
        raise UserError(f"sweep {tracking.sweep_name(parent)!r} has no finished run to compare")
    return tracking.sweep_name(parent), parent.info.run_id, sides


def load_side(uri: str, experiment: str, wanted: Sequence[str]) -> tuple[str, dict[tuple, Side]]:
    """One side's sweeps (one, or repeats of it), their names joined, their runs pooled by configuration. A
    sweep named twice (by name, id or latest) is refused: its runs counted twice would narrow the interval."""
    names, pooled, seen = [], {}, {}
    for given, (name, parent_id, sides) in ((one, load(uri, experiment, one)) for one in wanted):
        if parent_id in seen:
            raise UserError(
                f"{seen[parent_id]!r} and {given!r} are the same sweep ({name}, parent run {parent_id}): counted twice"
                " it would narrow the interval; name each sweep of a side once (repeats are different sweeps)"
            )
        seen[parent_id] = given
        names.append(name)
        for config, side in sides.items():
            pooled[config] = pooled[config] + side if config in pooled else side
    return ", ".join(names), pooled


def compare(
    baseline: dict[tuple, Side], candidate: dict[tuple, Side], max_slowdown: float, max_accuracy_drop: float
) -> list[ConfigurationComparison]:
    common = [config for config in baseline if config in candidate]
    if not common:
        raise UserError("the two sweeps share no configuration: nothing to compare (same settings, seeds aside)")
    keys = {k for config in common for k, _ in config}
    varying = {k for k in keys if len({dict(config).get(k) for config in common}) > 1}
    rows = []
    for config in common:
        base, cand = baseline[config], candidate[config]
        unstable = "; ".join(base.unstable[:1] + cand.unstable[:1])
        speed = timing.compare_sweeps(base.sweeps, cand.sweeps, unstable)
        diff = sum(cand.accuracies) / len(cand.accuracies) - sum(base.accuracies) / len(base.accuracies)
        reasons = []
        if speed.verdict == timing.SLOWER and speed.high < 1 / max_slowdown:
            drift_hint = (
                ", unless the machine drifted between the sweeps: repeat each side in turns (A B A B) to tell"
                if len(base.sweeps) == 1 or len(cand.sweeps) == 1
                else ""
            )
            reasons.append(
                f"slower by more than {max_slowdown:g}x"
                f" (interval {1 / speed.high:.2f}-{1 / speed.low:.2f}x){drift_hint}"
            )
        if diff < -max_accuracy_drop:
            reasons.append(f"test accuracy {diff:+.4f} (allowed -{max_accuracy_drop:g})")
        rows.append(
            ConfigurationComparison(
                label(config, varying),
                len(base.accuracies),
                len(cand.accuracies),
                len(base.sweeps),
                len(cand.sweeps),
                diff,
                speed.ratio,
                speed.low,
                speed.high,
                speed.verdict,
                "; ".join(reasons),
            )
        )
    return sorted(rows, key=lambda row: row.configuration)


def _sweeps(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise UserError(f"{text!r} names an empty sweep: give sweeps as NAME or NAME1,NAME2 (no empty names)")
    return names


def parse_args(argv: Sequence[str]):
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "baseline", type=_sweeps, help="sweep name or parent run id (latest: the newest sweep); repeats A1,A2,..."
    )
    parser.add_argument(
        "candidate", type=_sweeps, help="sweep name or parent run id, in the candidate's store; repeats B1,B2,..."
    )
    tracking.add_store_options(parser)
    tracking.add_store_options(parser, side="candidate-")
    parser.add_argument("--max-slowdown", type=float, default=1.10, help="slowdown that fails (default 1.10)")
    parser.add_argument(
        "--max-accuracy-drop", type=float, default=0.002, help="test accuracy drop that fails (default 0.002)"
    )
    parser.add_argument("--json", type=Path, help="also write the comparison here, one object per configuration")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.max_slowdown) and args.max_slowdown >= 1):
        raise UserError(f"--max-slowdown {args.max_slowdown} must be a number >= 1 (1.10: 10% slower fails)")
    if not (math.isfinite(args.max_accuracy_drop) and args.max_accuracy_drop >= 0):
        raise UserError(f"--max-accuracy-drop {args.max_accuracy_drop} must be a number >= 0")
    if args.json is not None and not args.json.parent.is_dir():
        raise UserError(f"--json {args.json}: folder {args.json.parent} does not exist")
    if args.json is not None and args.json.is_dir():
        raise UserError(f"--json {args.json} is a folder: name a file, e.g. --json {args.json / 'compare.json'}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool(PROG, lambda: _main(sys.argv[1:] if argv is None else argv))


def _main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    uri = tracking.resolve_uri(args.tracking_uri, Path.cwd())
    candidate_uri = (
        tracking.resolve_uri(args.candidate_tracking_uri, Path.cwd()) if args.candidate_tracking_uri else uri
    )
    base_name, baseline = load_side(uri, args.experiment, args.baseline)
    cand_name, candidate = load_side(candidate_uri, args.candidate_experiment or args.experiment, args.candidate)
    rows = compare(baseline, candidate, args.max_slowdown, args.max_accuracy_drop)
    print(f"compare: baseline {base_name} -> candidate {cand_name}; speed ratio = baseline s/epoch / candidate's")
    if min(len(args.baseline), len(args.candidate)) == 1:
        print(
            "  one sweep on a side: a change in the machine's speed between sweeps is not in the intervals;"
            " repeat each side in turns (A B A B) and compare A1,A2 B1,B2 to include it"
        )
    width = max(len(row.configuration) for row in rows)
    for row in rows:
        ratio = f"{row.speed_ratio:.2f}x ({row.speed_ratio_low:.2f}-{row.speed_ratio_high:.2f})"
        print(
            f"  {row.configuration:{width}s}  n {row.n_baseline}/{row.n_candidate}  Δacc {row.accuracy_diff:+.4f}"
            f"  {ratio:22s}  {row.speed_verdict}"
        )
    only = len(set(baseline) - set(candidate)), len(set(candidate) - set(baseline))
    if any(only):
        print(f"  not compared: {only[0]} configuration(s) only in the baseline, {only[1]} only in the candidate")
    if args.json is not None:
        try:
            atomic.write(args.json, json.dumps([asdict(row) for row in rows], indent=2).encode())
        except OSError as err:
            why = write_failure(err, f"--json {args.json}") or f"cannot write --json {args.json} ({err})"
            raise UserError(f"{why} (or choose another --json)") from None
    regressions = [row for row in rows if row.regression]
    for row in regressions:
        print(f"REGRESSION {row.configuration}: {row.regression}", file=sys.stderr)
    return EXIT_FAILED if regressions else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
