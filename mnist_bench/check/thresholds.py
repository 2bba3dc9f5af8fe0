"""conf/thresholds.yaml, read and checked: each problem is one CheckError naming the entry and the fix
(sklearn-style), and what comes out is frozen dataclasses: the gate's sweeps, run thresholds (a metric of the
runs whose params match) and benchmark thresholds (a ratio of two benchmarks' fastest rounds)."""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mnist_bench import paths
from mnist_bench.errors import UserError
from mnist_bench.schema import flatten

ROOFLINE = "roofline"  # a ratio's denominator: extra_info.roofline_floor_seconds of the numerator itself
PEER = "peer"  # a ratio's denominator: extra_info.peer_epoch_seconds, its peer's epochs (test_peer_ratio.py)
# Denominators a benchmark carries itself, measured right before each of its rounds: the extra_info list each reads.
OWN_DENOMINATORS = {ROOFLINE: "roofline_floor_seconds", PEER: "peer_epoch_seconds"}


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
    denominator ``roofline`` is the numerator's own epoch floor, probed before each of its rounds, and
    ``peer`` its hand-written peer's epoch, run before each of its rounds)."""

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


def shown(value: object) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _run_threshold(where: str, entry: dict) -> Threshold:
    bound, limit, reason, requires = _bound(where, entry, _RUN_KEYS)
    selected = {key: value for key, value in _mapping(f"{where}: where", entry.get("where", {})).items()}
    words = [f"{key}={shown(value)}" for key, value in selected.items()]
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
