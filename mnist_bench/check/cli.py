"""``mnist-bench check``: load the thresholds, run the gate or find the sweeps (or read a benchmark file),
print the table and one line per breach, and exit 0 (pass), 1 (a breach) or 2 (bad input)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mnist_bench import paths, tracking
from mnist_bench.check.evaluate import (
    FAIL,
    NO_DATA,
    SKIP,
    ThresholdResult,
    evaluate_benchmarks,
    evaluate_runs,
    read_benchmarks,
)
from mnist_bench.check.gate import run_gate
from mnist_bench.check.thresholds import CheckError, Thresholds, load_thresholds, shown
from mnist_bench.errors import EXIT_FAILED as EXIT_BREACH
from mnist_bench.errors import EXIT_OK, ArgumentParser, run_tool

PROG = "mnist-bench check"


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def print_table(rows: list[ThresholdResult]) -> None:
    header = ("metric", "selection", "n", "value", "threshold", "result")
    table = [header] + [
        (r.threshold.metric, r.threshold.selection, str(r.count), _value(r.value), r.threshold.shown_limit, r.result)
        for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1)]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)) + "  " + line[-1])


def verdict(rows: list[ThresholdResult], section: str) -> int:
    """Print the table and one line per breach; the exit status."""
    if not rows:
        raise CheckError(f"the thresholds file has no {section}: thresholds, so there is nothing to check")
    print_table(rows)
    bad = [r for r in rows if r.result in (FAIL, NO_DATA)]
    skipped = [r for r in rows if r.result == SKIP]
    for r in skipped:
        print(f"skipped: {r.threshold.metric} [{r.threshold.selection}]: {r.note}")
    if len(skipped) == len(rows):
        print("BREACH every threshold was skipped: nothing was checked", file=sys.stderr)
        return EXIT_BREACH
    if not bad:
        print(
            f"check: all {len(rows) - len(skipped)} thresholds pass" + (f" ({len(skipped)} skipped)" if skipped else "")
        )
        return EXIT_OK
    print(f"check: {len(bad)} of {len(rows)} thresholds breached:", file=sys.stderr)
    for r in bad:
        t = r.threshold
        what = f"no data ({r.note})" if r.result == NO_DATA else f"{_value(r.value)}, allowed {t.shown_limit}"
        print(f"BREACH {t.metric} [{t.selection}]: {what}; {t.reason}", file=sys.stderr)
    return EXIT_BREACH


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog=PROG, description="Check MLflow sweeps or a benchmark file against thresholds.")
    parser.add_argument(
        "--thresholds",
        type=Path,
        default=paths.conf_dir() / "thresholds.yaml",
        help="default: conf/thresholds.yaml",
    )
    tracking.add_store_options(parser)
    parser.add_argument(
        "--sweep", action="append", help="parent run id, sweep name or latest (default); repeat to pool sweeps"
    )
    parser.add_argument("--benchmark-json", type=Path, help="check a pytest-benchmark JSON file instead of sweeps")
    parser.add_argument("--quick", action="store_true", help="run the thresholds' gate sweeps, then check them")
    parser.add_argument("--workdir", type=Path, help="--quick: keep its store and outputs here (default: temporary)")
    args = parser.parse_args(argv)
    if args.benchmark_json and (args.sweep or args.quick or args.tracking_uri):
        parser.error("--benchmark-json checks a file: it takes no --sweep, --quick or --tracking-uri")
    if args.quick and (args.sweep or args.tracking_uri):
        parser.error("--quick checks the sweeps it runs itself: it takes no --sweep or --tracking-uri")
    if args.workdir and not args.quick:
        parser.error("--workdir is for --quick")
    return args


def _check_sweeps(thresholds: Thresholds, uri: str, experiment: str, wanted: list[str]) -> int:
    reading = tracking.read_sweeps(uri, experiment, wanted)
    runs = [run for sweep in reading.sweeps for run in sweep.runs]
    scope = " ".join(f"{k}={shown(v)}" for k, v in thresholds.scope.items())
    print(
        f"check: sweeps {', '.join(wanted)} in {reading.where}"
        + (f"; every run threshold also needs {scope}" if scope else "")
    )
    return verdict(evaluate_runs(thresholds, runs), "runs")


def _quick(thresholds: Thresholds, workdir: Path | None, experiment: str) -> int:
    if not thresholds.gate:
        raise CheckError("--quick needs a gate: section in the thresholds file")
    with tempfile.TemporaryDirectory(prefix="mnist-bench-gate-") as temporary:
        folder = (workdir or Path(temporary)).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        uri, ran = run_gate(thresholds.gate, folder)
        return _check_sweeps(thresholds, uri, experiment, ran)


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool(PROG, lambda: _main(sys.argv[1:] if argv is None else argv))


def _main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    thresholds = load_thresholds(args.thresholds)
    if args.benchmark_json:
        timings = read_benchmarks(args.benchmark_json)
        print(f"check: {args.benchmark_json} ({len(timings)} benchmarks; ratios of their fastest rounds)")
        return verdict(evaluate_benchmarks(thresholds, timings), "benchmarks")
    if args.quick:
        return _quick(thresholds, args.workdir, args.experiment)
    uri = tracking.resolve_uri(args.tracking_uri, Path.cwd())
    return _check_sweeps(thresholds, uri, args.experiment, args.sweep or ["latest"])
