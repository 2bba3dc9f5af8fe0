"""How mnist-bench times things, defined once: seconds per epoch, the conditions a timing was taken
under, whether it can be trusted, and how two sets of timings compare.

- **Seconds per epoch** is the median of the timed epochs (warm-up epochs are never timed): robust to
  the one epoch a noisy neighbour slowed down.
- **Conditions**: the 1-minute load average at the start and end of training, the share of the machine's
  CPU time that other processes used while it trained (from /proc/stat, minus this process's own CPU
  time), the share stolen by the hypervisor, and the spread of the epochs (interquartile range over
  median).
- **Stable** means all of these stayed within the limits of the ``timing`` config (conf: timing.*); an
  unstable run says why.
- **Comparing** two sets of runs gives the ratio of their seconds per epoch with a 95% bootstrap interval
  and a verdict. The bootstrap resamples runs, then epochs within each run; for sides repeated over
  several sweeps, the sweeps first, so that a drift in the machine's speed between sweeps widens it; for
  sides timed in alternating rounds, as ``bench`` does, whole rounds. The resampled values are stretched
  by sqrt(n / (n - 1)) for the n units drawn at the top level, the bootstrap's known narrowness with few
  units. The verdict is ``faster`` or ``slower`` only when the interval excludes 1 and both sides were
  stable, ``within noise`` when it includes 1, and ``unreliable: <why>`` when either side was not stable.
- **Paired rounds**: runs a sweep trained in rounds (epoch k of every cell, then epoch k + 1) compare round
  by round instead: each epoch logs its wall and CPU seconds and the share of the machine's CPU other
  processes used while it ran (``EpochTimer``). A round is clean for a pair when that share stayed within
  ``timing.max_other_cpu_share`` in each of the pair's epochs of the round; the ratio is the median of the
  clean rounds' ratios (reference's epoch over candidate's), its 95% interval the distribution-free one
  from order statistics, and the verdict ``unreliable`` only when fewer clean rounds remain than such an
  interval needs (MIN_CLEAN_ROUNDS): a burst of foreign load moves rounds out, not the median.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
RESAMPLE_CHUNK_VALUES = 1_000_000  # about 8 MB of float64 per array
CONFIDENCE = 0.95
FASTER, SLOWER, WITHIN_NOISE, UNRELIABLE = "faster", "slower", "within noise", "unreliable"


def seconds_per_epoch(epoch_seconds: Sequence[float]) -> float:
    """The harness's one figure for an epoch's cost: the median of the timed epochs."""
    return float(np.median(epoch_seconds))


def epoch_spread(epoch_seconds: Sequence[float]) -> float:
    """Interquartile range over median of the timed epochs: 0 for perfectly steady epochs."""
    q1, median, q3 = np.percentile(epoch_seconds, [25, 50, 75])
    return float((q3 - q1) / median) if median > 0 else math.inf


@dataclass(frozen=True)
class Spread:
    """Repeated timings as bench prints them: the median (seconds_per_epoch's statistic), min and max."""

    min: float
    median: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(float(np.min(values)), seconds_per_epoch(values), float(np.max(values)))

    def __str__(self) -> str:
        return f"{self.median:.3f} ({self.min:.3f}-{self.max:.3f})"


@dataclass(frozen=True)
class _CpuTimes:
    """Machine-wide CPU seconds from /proc/stat (all cores) and this process's own, at one instant."""

    busy: float
    total: float
    steal: float
    own: float

    @classmethod
    def now(cls) -> _CpuTimes | None:
        try:
            with open("/proc/stat") as stat:
                fields = [int(v) for v in stat.readline().split()[1:]]
        except (OSError, ValueError):
            return None  # not Linux: the shares are not measured
        tick = os.sysconf("SC_CLK_TCK")
        user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        total = user + nice + system + idle + iowait + irq + softirq + steal
        own = os.times()
        return cls((total - idle - iowait - steal) / tick, total / tick, steal / tick, own.user + own.system)


class EpochTime(NamedTuple):
    """One timed epoch: wall seconds, this process's CPU seconds, and the share of all cores' time that
    other processes used meanwhile (None where /proc/stat is not there); in EpochMetrics' order."""

    seconds: float
    cpu_seconds: float
    other_cpu_share: float | None


class EpochTimer:
    """Started just before an epoch's training and stopped just after it, by every backend alike."""

    def __init__(self) -> None:
        self.cpu_start = _CpuTimes.now()
        self.process_start = time.process_time()
        self.start = time.perf_counter()

    def stop(self) -> EpochTime:
        seconds = time.perf_counter() - self.start
        cpu_seconds = time.process_time() - self.process_start
        return EpochTime(seconds, cpu_seconds, _other_share(self.cpu_start, _CpuTimes.now()))


def _other_share(start: _CpuTimes | None, end: _CpuTimes | None) -> float | None:
    """The share of all cores' time between two readings that other processes used (0-1), None unmeasured."""
    if start is None or end is None or end.total <= start.total:
        return None
    busy, own = end.busy - start.busy, end.own - start.own
    return min(1.0, max(0.0, (busy - own) / (end.total - start.total)))


SETTLE_WINDOW_S = 0.005  # how often settle looks at the process's CPU time
SETTLE_IDLE_SHARE = 0.25  # of one core: below this, the process's other threads are idle
SETTLE_MAX_S = 0.25  # settle waits no longer than this: a framework's thread that never sleeps is not waited out


def settle() -> None:
    """Wait until this process's other threads stop using the CPU, at most SETTLE_MAX_S: called before an epoch
    is timed beside other work of the same process (a sweep's next cell in rounds, bench's next contender). A
    framework's worker threads spin for a while after its work: OpenBLAS's doubled TensorFlow's epochs after
    NumPy's and turned the mission's speed verdict (docs/performance.md)."""
    deadline = time.perf_counter() + SETTLE_MAX_S
    while time.perf_counter() < deadline:
        cpu = time.process_time()
        time.sleep(SETTLE_WINDOW_S)
        if time.process_time() - cpu < SETTLE_IDLE_SHARE * SETTLE_WINDOW_S:
            return


def other_cpu_share_during(seconds: float) -> float | None:
    """The share of all cores' time that other processes used while this thread slept ``seconds``."""
    start = _CpuTimes.now()
    time.sleep(seconds)
    return _other_share(start, _CpuTimes.now())


@dataclass(frozen=True)
class Conditions:
    """What the machine was doing while a run trained; logged as metrics with these names."""

    load_average_start: float
    load_average_end: float
    other_cpu_share: float | None  # of all cores' time, used by other processes; None where unmeasured
    cpu_steal_share: float | None
    epoch_spread: float

    def metrics(self) -> dict[str, float]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class ConditionsProbe:
    """Started just before training and read just after it."""

    def __init__(self) -> None:
        self.load_start = os.getloadavg()[0]
        self.cpu_start = _CpuTimes.now()
        self.started = time.monotonic()

    def finish(self, epoch_seconds: Sequence[float]) -> Conditions:
        end = _CpuTimes.now()
        other, steal = _other_share(self.cpu_start, end), None
        if other is not None:
            steal = (end.steal - self.cpu_start.steal) / (end.total - self.cpu_start.total)
        return Conditions(self.load_start, os.getloadavg()[0], other, steal, epoch_spread(epoch_seconds))


def unstable_reasons(conditions: Conditions, limits) -> list[str]:
    """Why a run's timings cannot be trusted under ``limits`` (a TimingConfig); [] when they can."""
    reasons = []
    if conditions.other_cpu_share is not None and conditions.other_cpu_share > limits.max_other_cpu_share:
        reasons.append(
            f"other processes used {conditions.other_cpu_share:.0%} of the CPU"
            f" (timing.max_other_cpu_share={limits.max_other_cpu_share:g})"
        )
    if conditions.cpu_steal_share is not None and conditions.cpu_steal_share > limits.max_cpu_steal_share:
        reasons.append(
            f"the hypervisor stole {conditions.cpu_steal_share:.0%} of the CPU"
            f" (timing.max_cpu_steal_share={limits.max_cpu_steal_share:g})"
        )
    if conditions.epoch_spread > limits.max_epoch_spread:
        reasons.append(
            f"epoch times spread {conditions.epoch_spread:.2f} (IQR/median;"
            f" timing.max_epoch_spread={limits.max_epoch_spread:g})"
        )
    return reasons


@dataclass(frozen=True)
class Comparison:
    """The reference's seconds per epoch over the candidate's (> 1: the candidate is faster), with its interval."""

    ratio: float
    low: float
    high: float
    verdict: str


def compare(
    reference: Sequence[Sequence[float]],
    candidate: Sequence[Sequence[float]],
    unstable: str = "",
    seed: int = 0,
) -> Comparison:
    """Compare two sets of runs, each given as its runs' timed epoch seconds: compare_sweeps with one sweep
    a side, so the interval holds run-to-run and epoch-to-epoch variation but not a drift between sweeps."""
    return compare_sweeps([reference], [candidate], unstable, seed)


def compare_sweeps(
    reference: Sequence[Sequence[Sequence[float]]],
    candidate: Sequence[Sequence[Sequence[float]]],
    unstable: str = "",
    seed: int = 0,
) -> Comparison:
    """Compare two sides, each given as one or more sweeps, each sweep as its runs' timed epoch seconds.

    The ratio is of the medians of all epochs pooled per side. Its interval is a percentile bootstrap
    that resamples sweeps, then runs within each drawn sweep, then epochs within each drawn run, so that
    sweep-to-sweep (the machine's speed drifting between them), run-to-run and epoch-to-epoch variation
    all widen it. ``unstable`` (why either side's timings cannot be trusted) makes the verdict
    ``unreliable`` whatever the interval says.
    """
    rng = np.random.default_rng(seed)
    medians = []
    for side in (reference, candidate):
        pooled = seconds_per_epoch(np.concatenate([run for sweep in side for run in sweep]))
        medians.append((pooled, _widened(_resampled_medians(side, rng), pooled, _top_level_units(side))))
    (reference_median, reference_resampled), (candidate_median, candidate_resampled) = medians
    return _judged(reference_median / candidate_median, reference_resampled / candidate_resampled, unstable)


def compare_paired(
    reference: Sequence[float], candidate: Sequence[float], unstable: str = "", seed: int = 0
) -> Comparison:
    """Compare two sides timed in alternating rounds (A B A B ...): the i-th epoch of each in the same round.

    The ratio is of the two medians; its interval is a percentile bootstrap that resamples whole rounds, so
    a round in which the machine slowed down weighs on both sides alike instead of widening the interval.
    """
    a, b = np.asarray(reference, dtype=float), np.asarray(candidate, dtype=float)
    if len(a) != len(b) or len(a) == 0:
        raise ValueError("paired timings need the same number of rounds on each side, at least one")
    rng = np.random.default_rng(seed)
    rounds = rng.integers(len(a), size=(BOOTSTRAP_RESAMPLES, len(a)))
    ratio = seconds_per_epoch(a) / seconds_per_epoch(b)
    ratios = _widened(np.median(a[rounds], axis=1) / np.median(b[rounds], axis=1), ratio, len(a))
    return _judged(ratio, ratios, unstable)


MIN_CLEAN_ROUNDS = 6  # the fewest for which an order-statistic interval of the median reaches 95%: 1 - 2 / 2**6


@dataclass(frozen=True)
class RoundEpoch:
    """One timed epoch of a run trained in rounds: the round it ran in, its seconds, and other processes'
    share of the CPU meanwhile (None where unmeasured)."""

    round: int
    seconds: float
    other_cpu_share: float | None


def compare_rounds(
    reference: Sequence[RoundEpoch], candidate: Sequence[RoundEpoch], max_other_cpu_share: float
) -> tuple[Comparison, int]:
    """Compare two sides trained in the same rounds, each given as its runs' epochs; also returns how many
    clean rounds decided it.

    Each round both sides ran in gives a ratio, the reference's median epoch over the candidate's. A round
    is dropped when other processes used more than ``max_other_cpu_share`` of the CPU during any of its
    epochs on either side (an epoch whose share went unmeasured, no /proc/stat or shorter than a clock
    tick, does not drop it). The ratio is the median of the clean rounds' ratios and its interval the
    order-statistic one (order_interval): neither assumes how a neighbour's load is distributed, and a
    burst that slips past the rule shifts the median by one rank, not by its size. With fewer than
    MIN_CLEAN_ROUNDS clean rounds the verdict is ``unreliable`` (the figures are then of every round).
    """
    rounds = sorted({e.round for e in reference} & {e.round for e in candidate})
    ratios, clean = [], []
    for number in rounds:
        sides = [[e for e in side if e.round == number] for side in (reference, candidate)]
        reference_seconds, candidate_seconds = ([e.seconds for e in side] for side in sides)
        ratios.append(seconds_per_epoch(reference_seconds) / seconds_per_epoch(candidate_seconds))
        shares = [e.other_cpu_share for side in sides for e in side if e.other_cpu_share is not None]
        clean.append(max(shares, default=0.0) <= max_other_cpu_share)
    kept = [ratio for ratio, ok in zip(ratios, clean, strict=True) if ok]
    unstable = ""
    if len(kept) < MIN_CLEAN_ROUNDS:
        unstable = (
            f"{len(kept)} of {len(rounds)} paired rounds clean, {MIN_CLEAN_ROUNDS} needed (in the others, other"
            f" processes used more than {max_other_cpu_share:.0%} of the CPU: timing.max_other_cpu_share)"
        )
        kept = ratios
    if not kept:
        raise ValueError("paired rounds need at least one round both sides ran in")
    low, high = order_interval(kept)
    comparison = _judged(seconds_per_epoch(kept), [], unstable, (low, high))
    return comparison, int(sum(clean))


def order_interval(values: Sequence[float]) -> tuple[float, float]:
    """The distribution-free CONFIDENCE interval of the median of ``values``: the k-th smallest and k-th
    largest, for the largest k whose binomial tails (half a chance each value falls below the median) leave
    it at least CONFIDENCE (for 10 values the 2nd and 9th, 97.9%). Below 6 values no k reaches 95%: then
    the smallest and largest."""
    ordered = sorted(values)
    n, tail, k = len(ordered), (1 - CONFIDENCE) / 2, 1
    while k < n / 2 and sum(math.comb(n, i) for i in range(k + 1)) / 2**n <= tail:
        k += 1
    return ordered[k - 1], ordered[n - k]


def _judged(
    ratio: float, resampled: Sequence[float], unstable: str, interval: tuple[float, float] | None = None
) -> Comparison:
    """The ratio with its interval (the percentile one of its resampled values unless given), and the
    verdict the rules give."""
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = (float(v) for v in (interval or np.percentile(resampled, [tail, 100 - tail])))
    if unstable:
        verdict = f"{UNRELIABLE}: {unstable}"
    elif low > 1:
        verdict = FASTER
    elif high < 1:
        verdict = SLOWER
    else:
        verdict = WITHIN_NOISE
    return Comparison(float(ratio), low, high, verdict)


def _top_level_units(side: Sequence[Sequence[Sequence[float]]]) -> int:
    """How many units the bootstrap's first varying level draws: the sweeps when there are several, else the
    one sweep's runs, else the one run's epochs."""
    if len(side) > 1:
        return len(side)
    (runs,) = side
    return len(runs) if len(runs) > 1 else len(runs[0])


def _widened(resampled: np.ndarray, point: float, units: int) -> np.ndarray:
    """Resampled values stretched about the point estimate, in log space, by sqrt(n / (n - 1)) for n units
    drawn at the bootstrap's top level: resampling n units with replacement spreads only (n - 1) / n as
    much as the statistic varies. That narrows the interval by 29% at the two runs or sweeps a side often
    has here; unstretched, it called identical sweeps different in 12 of 59 real A/A pairs, stretched in 4
    (docs/performance.md, Drift between sweeps)."""
    if units < 2:
        return resampled
    return point * (resampled / point) ** math.sqrt(units / (units - 1))


def _resampled_medians(sweeps: Sequence[Sequence[Sequence[float]]], rng: np.random.Generator) -> np.ndarray:
    """BOOTSTRAP_RESAMPLES medians, each of sweeps drawn with replacement, then within each drawn sweep as many
    runs as the sweep it stands in for has, drawn with replacement, then within each drawn run as many
    epochs as it has, drawn with replacement. Vectorised: runs are padded with NaN to one length, and
    resamples are drawn in chunks of about RESAMPLE_CHUNK_VALUES epochs to bound memory."""
    runs = [run for sweep in sweeps for run in sweep]
    run_sweep = np.repeat(np.arange(len(sweeps)), [len(sweep) for sweep in sweeps])  # each run's sweep
    sweep_sizes = np.bincount(run_sweep, minlength=len(sweeps))
    first_run = np.concatenate([[0], np.cumsum(sweep_sizes)[:-1]])  # runs are numbered sweep by sweep
    lengths = np.array([len(run) for run in runs])
    padded = np.full((len(runs), lengths.max()), np.nan)
    for row, run in zip(padded, runs, strict=True):
        row[: len(run)] = run
    position = np.arange(lengths.max())
    per_chunk = max(1, RESAMPLE_CHUNK_VALUES // padded.size)
    medians = []
    for start in range(0, BOOTSTRAP_RESAMPLES, per_chunk):
        count = min(per_chunk, BOOTSTRAP_RESAMPLES - start)
        drawn_sweep = rng.integers(len(sweeps), size=(count, len(sweeps)))[:, run_sweep]  # each run slot's sweep
        sizes = sweep_sizes[drawn_sweep]
        picked = first_run[drawn_sweep] + np.minimum((rng.random(drawn_sweep.shape) * sizes).astype(int), sizes - 1)
        length = lengths[picked][..., None]  # each drawn run's own length
        epochs = np.minimum((rng.random((*picked.shape, len(position))) * length).astype(int), length - 1)
        drawn = np.where(position < length, padded[picked[..., None], epochs], np.nan)
        medians.append(np.nanmedian(drawn.reshape(count, -1), axis=1))
    return np.concatenate(medians)
