"""Thresholds against what was measured: run thresholds on a sweep's runs that count
(schema.Status.counts: finished, not diverged; the worst value must pass),
benchmark thresholds on a pytest-benchmark JSON file (ratios of fastest rounds, or to each one's roofline floor
or peer epoch)."""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mnist_bench import backends
from mnist_bench.check.thresholds import OWN_DENOMINATORS, CheckError, Threshold, Thresholds
from mnist_bench.schema import counted, normalise

PASS, FAIL, NO_DATA, SKIP = "pass", "FAIL", "no data", "skip"


@dataclass(frozen=True)
class ThresholdResult:
    """One threshold checked: pass, FAIL, no data or skip, the value it was held to and how many it covered."""

    threshold: Threshold
    result: str
    value: float | None = None
    count: int = 0
    note: str = ""


@functools.cache
def _same(param: str | None, wanted: object) -> bool:
    """Whether a run's param (absent: None) is the wanted config value."""
    return param is not None and normalise(param) == normalise(wanted)


def evaluate_runs(thresholds: Thresholds, runs: Sequence) -> list[ThresholdResult]:
    """Each run threshold on the counted runs it selects: the worst value among them must pass."""
    rows = []
    for t in thresholds.runs:
        if t.requires and (why := backends.unavailable(t.requires)):
            rows.append(ThresholdResult(t, SKIP, note=why))
            continue
        wanted = thresholds.scope | t.where
        matched = [r for r in runs if all(_same(r.data.params.get(k), v) for k, v in wanted.items())]
        values = [r.data.metrics[t.metric] for r in matched if counted(r) and t.metric in r.data.metrics]
        if not values:
            note = (
                f"{len(matched)} matching runs, none finished (and not diverged) with {t.metric}"
                if matched
                else "no run matches"
            )
            rows.append(ThresholdResult(t, NO_DATA, count=len(matched), note=note))
            continue
        worst = _worst(values, t.bound)
        rows.append(ThresholdResult(t, PASS if t.passes(worst) else FAIL, worst, len(values)))
    return rows


def _worst(values: Sequence[float], bound: str) -> float:
    if any(math.isnan(v) for v in values):
        return math.nan
    return min(values) if bound == "min" else max(values)


def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in text.split("*")))


@dataclass(frozen=True)
class Timing:
    """A benchmark's fastest round, and the lowest of each of its own denominators measured beside its rounds
    (OWN_DENOMINATORS: the roofline floor, the peer's epoch), by denominator name."""

    fastest: float
    own: dict[str, float]


def evaluate_benchmarks(thresholds: Thresholds, timings: dict[str, Timing]) -> list[ThresholdResult]:
    """Each ratio threshold on the fastest rounds; with several numerators, the worst ratio must pass."""
    rows = []
    for t in thresholds.benchmarks:
        if t.requires and (why := backends.unavailable(t.requires)):
            rows.append(ThresholdResult(t, SKIP, note=why))
            continue
        top, bottom = t.ratio
        numerators = [timing for name, timing in timings.items() if _pattern(top).fullmatch(name)]
        if bottom in OWN_DENOMINATORS:
            ratios = [n.fastest / n.own[bottom] for n in numerators if bottom in n.own]
        else:
            denominators = [timing.fastest for name, timing in timings.items() if _pattern(bottom).fullmatch(name)]
            ratios = [n.fastest / min(denominators) for n in numerators] if denominators else []
        if not ratios:
            rows.append(ThresholdResult(t, NO_DATA, note=f"no benchmarks for {top} / {bottom}"))
            continue
        rows.append(ThresholdResult(t, PASS if t.passes(max(ratios)) else FAIL, max(ratios), len(ratios)))
    return rows


def read_benchmarks(path: Path) -> dict[str, Timing]:
    """Benchmark name -> its timings, from a pytest-benchmark ``--benchmark-json`` file."""
    try:
        report = json.loads(path.read_text())
        timings = {}
        for bench in report["benchmarks"]:
            extra = bench.get("extra_info", {})
            own = {name: float(min(extra[key])) for name, key in OWN_DENOMINATORS.items() if extra.get(key)}
            timing = Timing(float(bench["stats"]["min"]), own)
            if not all(math.isfinite(t) and t > 0 for t in (timing.fastest, *own.values())):
                raise ValueError(f"benchmark {bench['name']!r} has a timing that is not a number > 0")
            timings[bench["name"]] = timing
        return timings
    except OSError as err:
        raise CheckError(f"cannot read benchmark file {path}: {err.strerror or err}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckError(f"{path} is not a pytest-benchmark JSON file ({type(err).__name__}: {err})") from None
