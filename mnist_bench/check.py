"""``mnist-bench check``: holds MLflow sweeps or a pytest-benchmark file to ``conf/thresholds.yaml`` and
turns the verdict into an exit status for CI.

Accuracy floors are for fixed seeds, so they are tight. Time ceilings are ratios to one normaliser, the
epoch floor of ``mnist_bench.roofline`` measured on the same machine (the floor every CPU run logs, or the
one the benchmark suite probes beside each epoch), so one file holds on a laptop, on CI and on a GPU box.
A threshold that matches nothing fails as "no data": a gate never passes by checking nothing.

    python -m mnist_bench.check --quick              # CI: run the thresholds' gate sweeps, then check them
    python -m mnist_bench.check [--sweep latest|NAME|RUN_ID ...] [--tracking-uri URI] [--experiment NAME]
    python -m mnist_bench.check --benchmark-json PATH

Exit status: 0 when every threshold passes, 1 on a breach (one line each), 2 on bad input.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mnist_bench import backends, paths, tracking
from mnist_bench.errors import EXIT_BAD_INPUT, EXIT_OK, ArgumentParser, UserError, run_tool
from mnist_bench.errors import EXIT_FAILED as EXIT_BREACH
from mnist_bench.schema import RunStatus, flatten, normalise

PROG = "mnist-bench check"
PASS, FAIL, NO_DATA, SKIP = "pass", "FAIL", "no data", "skip"
ROOFLINE = "roofline"  # a ratio's denominator: extra_info.roofline_floor_seconds of the numerator itself
_TOP_KEYS = {"scope", "gate", "runs", "benchmarks"}
_RUN_KEYS = {"metric", "preset", "where", "min", "max", "requires", "reason"}
_BENCHMARK_KEYS = {"ratio", "min", "max", "requires", "reason"}
_GATE_KEYS = {"name", "backends", "overrides"}


class CheckError(UserError):
    """Bad input (thresholds, store, sweep, file): one line, exit status 2."""


@dataclass(frozen=True)
class Threshold:
    """One bound: on an MLflow metric of the runs that match ``where``, or on the ratio of the fastest
    rounds of two benchmarks (``ratio``: numerator and denominator name patterns, ``*`` = any text; the
    denominator ``roofline`` is the numerator's own epoch floor, probed before each of its rounds)."""

    metric: str
    selection: str
    bound: str  # "min" (a floor) or "max" (a ceiling)
    limit: float
    reason: str
    requires: str | None = None  # a backend: skipped where it does not import
    where: dict[str, object] = field(default_factory=dict)
    ratio: tuple[str, str] | None = None

    def passes(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        return value >= self.limit if self.bound == "min" else value <= self.limit

    @property
    def shown_limit(self) -> str:
        return f"{'>=' if self.bound == 'min' else '<='} {self.limit:g}"


@dataclass(frozen=True)
class GateSweep:
    """One sweep of the quick gate: ``python -m mnist_bench -m backend=<those that import> <overrides>``; a backend
    is a label (``keras[jax]``: whose engine must import), and the overrides set what the label says."""

    name: str
    backends: list[str]
    overrides: list[str]


@dataclass(frozen=True)
class Thresholds:
    scope: dict[str, object]  # what every run threshold's runs must also match
    gate: list[GateSweep]
    runs: list[Threshold]
    benchmarks: list[Threshold]


@dataclass(frozen=True)
class Row:
    threshold: Threshold
    result: str
    value: float | None = None
    count: int = 0
    note: str = ""


# ---------------------------------------------------------------- thresholds file


def _number(where: str, entry: dict, key: str) -> float:
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CheckError(f"{where}: {key} must be a finite number, not {value!r}")
    return float(value)


def _text(where: str, entry: dict, key: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise CheckError(f"{where}: {key} must be a non-empty string")
    return value.strip()


def _mapping(where: str, value: object) -> dict:
    if not isinstance(value, dict):
        raise CheckError(f"{where} must be a mapping, not {type(value).__name__}")
    return value


def _bound(where: str, entry: dict, allowed: set[str]) -> tuple[str, float, str, str | None]:
    """The (bound, limit, reason, requires) every threshold has, after checking its keys."""
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise CheckError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
    bounds = [key for key in ("min", "max") if key in entry]
    if len(bounds) != 1:
        raise CheckError(f"{where}: give exactly one of min (a floor) or max (a ceiling)")
    requires = entry.get("requires")
    if requires is not None and not isinstance(requires, str):
        raise CheckError(f"{where}: requires must be a backend name")
    return bounds[0], _number(where, entry, bounds[0]), _text(where, entry, "reason"), requires


def _preset(where: str, name: object) -> dict[str, object]:
    """The keys a ``+experiment=NAME`` preset sets, as run params to match."""
    path = paths.conf_dir() / "experiment" / f"{name}.yaml"
    try:
        return flatten(_mapping(f"{where}: preset {name!r}", yaml.safe_load(path.read_text())))
    except OSError:
        raise CheckError(f"{where}: no preset {name!r} (no file {path})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        reason = " ".join(str(err).split())
        raise CheckError(f"{where}: preset {name!r} in {path} is not valid YAML: {reason}") from None


def _shown(value: object) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _run_threshold(where: str, entry: dict) -> Threshold:
    bound, limit, reason, requires = _bound(where, entry, _RUN_KEYS)
    selected = {key: value for key, value in _mapping(f"{where}: where", entry.get("where", {})).items()}
    words = [f"{key}={_shown(value)}" for key, value in selected.items()]
    if "preset" in entry:
        selected = _preset(where, entry["preset"]) | selected
        words.insert(0, f"+experiment={entry['preset']}")
    if not selected:
        raise CheckError(f"{where}: give where (run params to match) or preset")
    return Threshold(_text(where, entry, "metric"), " ".join(words), bound, limit, reason, requires, selected)


def _benchmark_threshold(where: str, entry: dict) -> Threshold:
    bound, limit, reason, requires = _bound(where, entry, _BENCHMARK_KEYS)
    ratio = entry.get("ratio")
    if not (isinstance(ratio, list) and len(ratio) == 2 and all(isinstance(n, str) and n for n in ratio)):
        raise CheckError(f"{where}: ratio must be [numerator, denominator], two benchmark names")
    return Threshold("time ratio (min)", " / ".join(ratio), bound, limit, reason, requires, ratio=tuple(ratio))


def _gate_sweep(where: str, entry: dict) -> GateSweep:
    unknown = sorted(set(_mapping(where, entry)) - _GATE_KEYS)
    if unknown:
        raise CheckError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(_GATE_KEYS))}")
    backends = entry.get("backends")
    if not (isinstance(backends, list) and backends and all(isinstance(b, str) for b in backends)):
        raise CheckError(f"{where}: backends must be a list of backend labels (numpy, tf, keras[jax], ...)")
    try:
        overrides = shlex.split(_text(where, entry, "overrides"))
    except ValueError as err:  # an unbalanced quote
        raise CheckError(f"{where}: overrides cannot be split into words ({err}); balance its quotes") from None
    return GateSweep(_text(where, entry, "name"), backends, overrides)


def _entries(top: dict, key: str) -> list[tuple[str, dict]]:
    entries = top.get(key) or []
    if not isinstance(entries, list):
        raise CheckError(f"{key} must be a list")
    return [(f"{key}[{i}]", _mapping(f"{key}[{i}]", entry)) for i, entry in enumerate(entries)]


def load_thresholds(path: Path) -> Thresholds:
    """The thresholds file, checked: every problem is a CheckError naming the entry and the fix."""
    try:
        top = yaml.safe_load(path.read_text())
    except OSError as err:
        raise CheckError(f"cannot read thresholds {path}: {err.strerror or err}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise CheckError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    try:
        top = _mapping("the thresholds file", top)
        unknown = sorted(set(top) - _TOP_KEYS)
        if unknown:
            raise CheckError(f"unknown top-level key {unknown[0]!r}; allowed: {', '.join(sorted(_TOP_KEYS))}")
        thresholds = Thresholds(
            scope=dict(_mapping("scope", top.get("scope") or {})),
            gate=[_gate_sweep(where, entry) for where, entry in _entries(top, "gate")],
            runs=[_run_threshold(where, entry) for where, entry in _entries(top, "runs")],
            benchmarks=[_benchmark_threshold(where, entry) for where, entry in _entries(top, "benchmarks")],
        )
    except CheckError as err:
        raise CheckError(f"{path}: {err}") from None
    if not thresholds.runs and not thresholds.benchmarks:
        raise CheckError(f"{path} holds no thresholds (runs: or benchmarks:)")
    return thresholds


# ---------------------------------------------------------------- evaluation


@functools.cache
def _same(param: str | None, wanted: object) -> bool:
    """Whether a run's param (absent: None) is the wanted config value."""
    return param is not None and normalise(param) == normalise(wanted)


def evaluate_runs(thresholds: Thresholds, runs: Sequence) -> list[Row]:
    """Each run threshold on the FINISHED runs it selects: the worst value among them must pass."""
    rows = []
    for t in thresholds.runs:
        if t.requires and (why := backends.unavailable(t.requires)):
            rows.append(Row(t, SKIP, note=why))
            continue
        wanted = thresholds.scope | t.where
        matched = [r for r in runs if all(_same(r.data.params.get(k), v) for k, v in wanted.items())]
        values = [
            r.data.metrics[t.metric]
            for r in matched
            if r.info.status == RunStatus.FINISHED and t.metric in r.data.metrics
        ]
        if not values:
            note = f"{len(matched)} matching runs, none FINISHED with {t.metric}" if matched else "no run matches"
            rows.append(Row(t, NO_DATA, count=len(matched), note=note))
            continue
        worst = _worst(values, t.bound)
        rows.append(Row(t, PASS if t.passes(worst) else FAIL, worst, len(values)))
    return rows


def _worst(values: Sequence[float], bound: str) -> float:
    if any(math.isnan(v) for v in values):
        return math.nan
    return min(values) if bound == "min" else max(values)


def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in text.split("*")))


@dataclass(frozen=True)
class Timing:
    """A benchmark's fastest round, and the lowest of the roofline floors probed beside its rounds (if any)."""

    fastest: float
    floor: float | None


def evaluate_benchmarks(thresholds: Thresholds, timings: dict[str, Timing]) -> list[Row]:
    """Each ratio threshold on the fastest rounds; with several numerators, the worst ratio must pass."""
    rows = []
    for t in thresholds.benchmarks:
        if t.requires and (why := backends.unavailable(t.requires)):
            rows.append(Row(t, SKIP, note=why))
            continue
        top, bottom = t.ratio
        numerators = [timing for name, timing in timings.items() if _pattern(top).fullmatch(name)]
        if bottom == ROOFLINE:
            ratios = [n.fastest / n.floor for n in numerators if n.floor]
        else:
            denominators = [timing.fastest for name, timing in timings.items() if _pattern(bottom).fullmatch(name)]
            ratios = [n.fastest / min(denominators) for n in numerators] if denominators else []
        if not ratios:
            rows.append(Row(t, NO_DATA, note=f"no benchmarks for {top} / {bottom}"))
            continue
        rows.append(Row(t, PASS if t.passes(max(ratios)) else FAIL, max(ratios), len(ratios)))
    return rows


# ---------------------------------------------------------------- sources


def read_benchmarks(path: Path) -> dict[str, Timing]:
    """Benchmark name -> its timings, from a pytest-benchmark ``--benchmark-json`` file."""
    try:
        report = json.loads(path.read_text())
        timings = {}
        for bench in report["benchmarks"]:
            floors = bench.get("extra_info", {}).get("roofline_floor_seconds")
            timing = Timing(float(bench["stats"]["min"]), float(min(floors)) if floors else None)
            if not all(math.isfinite(t) and t > 0 for t in (timing.fastest, timing.floor) if t is not None):
                raise ValueError(f"benchmark {bench['name']!r} has a timing that is not a number > 0")
            timings[bench["name"]] = timing
        return timings
    except OSError as err:
        raise CheckError(f"cannot read benchmark file {path}: {err.strerror or err}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckError(f"{path} is not a pytest-benchmark JSON file ({type(err).__name__}: {err})") from None


# ---------------------------------------------------------------- the quick gate


def run_gate(gate: list[GateSweep], workdir: Path) -> tuple[str, list[str]]:
    """Run the gate's sweeps into a new store in ``workdir``; returns its URI and the sweeps that ran.

    The gate's processes get a roofline cache of their own, so the roofline its runs are held to is measured
    during the gate, under the same load as their epochs; the dataset cache stays the usual one.
    """
    uri = tracking.sqlite_uri((workdir / "mlflow.db").resolve())
    env = {**os.environ, paths.CACHE_DIR_ENV: str(workdir / "cache")}
    data_cache = paths.cache_dir()  # where data.load would keep it without the override above
    ran = []
    for entry in gate:
        usable = [b for b in entry.backends if not backends.unavailable(b)]
        for name in sorted(set(entry.backends) - set(usable)):
            print(f"gate {entry.name}: without {name}: {backends.unavailable(name)}", flush=True)
        if not usable:
            continue
        command = [
            sys.executable, "-m", "mnist_bench", "-m",
            f"backend={','.join(dict.fromkeys(backends.split_label(label)[0] for label in usable))}", *entry.overrides,
            f"sweep_name={entry.name}", f"tracking.uri={uri}", f"hydra.sweep.dir={workdir / entry.name}",
            f"dataset.cache_dir={data_cache}", "progress=none",
        ]  # fmt: skip
        print(f"gate {entry.name}: {shlex.join(command[1:])}", flush=True)
        status = subprocess.run(command, env=env, check=False).returncode
        if status == EXIT_BAD_INPUT:
            raise CheckError(f"gate sweep {entry.name}: python -m mnist_bench rejected its overrides (exit 2)")
        ran.append(entry.name)  # a sweep with failed cells still ran: their thresholds show "no data"
    if not ran:
        raise CheckError("the gate ran no sweep: no backend it names is available here")
    return uri, ran


# ---------------------------------------------------------------- report


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def print_table(rows: list[Row]) -> None:
    header = ("metric", "selection", "n", "value", "threshold", "result")
    table = [header] + [
        (r.threshold.metric, r.threshold.selection, str(r.count), _value(r.value), r.threshold.shown_limit, r.result)
        for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1)]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)) + "  " + line[-1])


def verdict(rows: list[Row], section: str) -> int:
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


# ---------------------------------------------------------------- command line


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog=PROG, description="Check MLflow sweeps or a benchmark file against thresholds.")
    parser.add_argument(
        "--thresholds",
        type=Path,
        default=paths.conf_dir() / "thresholds.yaml",
        help="default: conf/thresholds.yaml",
    )
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here")
    parser.add_argument("--experiment", default="mnist-bench")
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
    client, experiment_id = tracking.open_existing(uri, experiment)
    where = f"experiment {experiment!r} of {tracking.redact(uri)}"
    parents = [tracking.find_sweep(client, experiment_id, name, where) for name in wanted]
    runs = [run for parent in parents for run in tracking.read_sweep(client, experiment_id, parent).runs]
    scope = " ".join(f"{k}={_shown(v)}" for k, v in thresholds.scope.items())
    print(
        f"check: sweeps {', '.join(wanted)} in {where}" + (f"; every run threshold also needs {scope}" if scope else "")
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


if __name__ == "__main__":
    raise SystemExit(main())
