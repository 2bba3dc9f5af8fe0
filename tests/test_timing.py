"""mnist_bench.timing: one definition of seconds per epoch, the conditions of a timing, the stability rule,
and the verdict of a speed comparison; the busy case uses real processes beside the probe."""

from __future__ import annotations

import multiprocessing
import time

import numpy as np
import pytest

from mnist_bench import timing
from mnist_bench.config import TimingConfig

LIMITS = TimingConfig(max_other_cpu_share=0.2, max_cpu_steal_share=0.05, max_epoch_spread=0.25)


def runs(rng: np.random.Generator, median: float, noise: float, n_runs: int = 3, epochs: int = 5) -> list[list[float]]:
    """Timed epochs of several runs: lognormal around ``median``, as epoch times on a busy machine are."""
    return [list(median * rng.lognormal(0.0, noise, size=epochs)) for _ in range(n_runs)]


def test_seconds_per_epoch_is_the_median_and_spread_is_iqr_over_median() -> None:
    epochs = [0.10, 0.11, 0.12, 0.13, 2.0]  # one epoch a neighbour slowed down
    assert timing.seconds_per_epoch(epochs) == pytest.approx(0.12)
    assert timing.epoch_spread(epochs) == pytest.approx((0.13 - 0.11) / 0.12)
    assert timing.epoch_spread([0.1] * 4) == 0


@pytest.mark.parametrize(
    ("conditions", "reasons"),
    [
        (timing.Conditions(0.1, 0.2, 0.05, 0.0, 0.1), []),
        (timing.Conditions(0.1, 0.2, None, None, 0.1), []),  # not Linux: only the spread is judged
        (timing.Conditions(3.0, 3.5, 0.6, 0.0, 0.1), ["other processes used 60% of the CPU"]),
        (timing.Conditions(0.1, 0.2, 0.0, 0.2, 0.1), ["the hypervisor stole 20% of the CPU"]),
        (timing.Conditions(0.1, 0.2, 0.3, 0.0, 0.5), ["other processes used 30%", "epoch times spread 0.50"]),
    ],
)
def test_a_run_is_stable_only_within_every_limit(conditions: timing.Conditions, reasons: list[str]) -> None:
    found = timing.unstable_reasons(conditions, LIMITS)
    assert len(found) == len(reasons)
    for reason, text in zip(reasons, found, strict=True):
        assert text.startswith(reason) and "timing." in text  # names the limit to change


def test_a_to_a_comparisons_are_within_noise() -> None:
    rng = np.random.default_rng(0)
    verdicts = [timing.compare(runs(rng, 0.1, 0.1), runs(rng, 0.1, 0.1), seed=i).verdict for i in range(20)]
    assert verdicts.count(timing.WITHIN_NOISE) >= 19, verdicts  # a 95% interval: about 1 in 20 may miss


def test_two_runs_a_side_call_identical_code_different_about_5_percent_of_the_time() -> None:
    """Two runs a side, each 3% off by itself and its epochs 5% noisy: a plain percentile bootstrap over
    two runs called 21 of these 200 A/A pairs different; stretched by sqrt(n / (n - 1)) it calls 5."""
    rng = np.random.default_rng(0)

    def side() -> list[list[float]]:
        return [list(0.15 * rng.lognormal(0, 0.03) * rng.lognormal(0, 0.05, 4)) for _ in range(2)]

    verdicts = [timing.compare(side(), side(), seed=i).verdict for i in range(200)]
    assert len(verdicts) - verdicts.count(timing.WITHIN_NOISE) <= 10


def test_a_real_difference_is_faster_or_slower_with_an_interval_that_excludes_1() -> None:
    rng = np.random.default_rng(1)
    slow, fast = runs(rng, 0.5, 0.1), runs(rng, 0.1, 0.1)
    faster = timing.compare(slow, fast)
    assert faster.verdict == timing.FASTER and faster.low > 1 and faster.low <= faster.ratio <= faster.high
    assert faster.ratio == pytest.approx(np.median(np.concatenate(slow)) / np.median(np.concatenate(fast)))
    assert timing.compare(fast, slow).verdict == timing.SLOWER


def test_the_bootstrap_draws_runs_then_each_drawn_runs_own_epochs_even_when_lengths_differ() -> None:
    """One run of 60 epochs at 1.0 s and three of 5 epochs at 1.6 s. A resample draws 4 runs, then each drawn
    run's own number of epochs: its median is 1.6 s only when no long run is drawn, with probability
    (3/4)^4 = 0.316. Drawing every run as often as the longest (a padding mistake) would make it 0.74."""
    rng = np.random.default_rng(3)
    runs = [list(rng.normal(1.0, 0.01, 60)), *[list(rng.normal(1.6, 0.01, 5)) for _ in range(3)]]
    medians = timing._resampled_medians([runs], np.random.default_rng(0))
    assert len(medians) == timing.BOOTSTRAP_RESAMPLES
    assert np.mean(medians > 1.3) == pytest.approx((3 / 4) ** 4, abs=0.04)


def test_repeated_sweeps_put_a_drift_between_sweeps_into_the_interval() -> None:
    """The same code swept four times, A B A B, on a machine 1.3x slower for the first pair: each sweep is
    steady within itself, so one sweep a side calls the drift a speed-up, while the two repeats a side,
    resampled sweep by sweep, call it noise. A real 2x difference survives the same drift."""
    rng = np.random.default_rng(4)
    slow_a, slow_b = runs(rng, 0.13, 0.02, n_runs=2), runs(rng, 0.13, 0.02, n_runs=2)
    fast_a, fast_b = runs(rng, 0.10, 0.02, n_runs=2), runs(rng, 0.10, 0.02, n_runs=2)
    assert timing.compare(slow_a, fast_b).verdict == timing.FASTER
    repeated = timing.compare_sweeps([slow_a, fast_a], [slow_b, fast_b])
    assert repeated.verdict == timing.WITHIN_NOISE and repeated.low < 0.85 and repeated.high > 1.15, repeated
    twice_as_fast = [[[t / 2 for t in run] for run in sweep] for sweep in (slow_b, fast_b)]
    assert timing.compare_sweeps([slow_a, fast_a], twice_as_fast).verdict == timing.FASTER


def test_each_drawn_sweep_brings_as_many_runs_as_the_sweep_it_stands_in_for() -> None:
    """Sweeps of 1 run at 1.0 s and of 3 runs at 2.0 s: a resample draws 2 sweeps, and its median is 1.0 s
    only when the one-run sweep fills the three-run slot, i.e. when it is drawn for both (probability 1/4)
    or for the second slot alone (another 1/4)."""
    sweeps = [[[1.0] * 5], [[2.0] * 5, [2.0] * 5, [2.0] * 5]]
    medians = timing._resampled_medians(sweeps, np.random.default_rng(0))
    assert set(np.unique(medians)) == {1.0, 2.0}
    assert np.mean(medians == 1.0) == pytest.approx(1 / 2, abs=0.04)


def test_an_unstable_side_makes_any_verdict_unreliable() -> None:
    rng = np.random.default_rng(2)
    result = timing.compare(runs(rng, 0.5, 0.1), runs(rng, 0.1, 0.1), unstable="numpy-sigmoid s0: other processes")
    assert result.verdict == "unreliable: numpy-sigmoid s0: other processes" and result.low > 1


def test_alternating_rounds_pair_each_round_so_a_drifting_machine_hits_both_sides_alike() -> None:
    """A slows down 3x halfway (a neighbour arrives): B is 1.5x faster in every round, and the paired
    interval, which resamples whole rounds, still says so; pooling the epochs as separate runs would not."""
    rng = np.random.default_rng(3)
    machine_speed = np.r_[np.ones(5), np.full(5, 3.0)] * rng.lognormal(0, 0.02, 10)
    first, second = 0.15 * machine_speed, 0.10 * machine_speed
    paired = timing.compare_paired(first, second)
    assert paired.verdict == timing.FASTER and 1.4 < paired.low <= paired.ratio <= paired.high < 1.6
    assert timing.compare([first], [second]).verdict == timing.WITHIN_NOISE  # unpaired, the drift swamps it
    assert timing.compare_paired(second, first).verdict == timing.SLOWER
    same = [timing.compare_paired(first, first * rng.lognormal(0, 0.05, 10), seed=i).verdict for i in range(20)]
    assert same.count(timing.WITHIN_NOISE) >= 18, same
    assert timing.compare_paired(first, second, unstable="numpy: load").verdict == "unreliable: numpy: load"
    with pytest.raises(ValueError, match="same number of rounds"):
        timing.compare_paired(first, second[:3])


def sides_in_rounds(
    reference: np.ndarray, candidate: np.ndarray, shares: np.ndarray
) -> tuple[list[timing.RoundEpoch], list[timing.RoundEpoch]]:
    """One run a side, epoch k in round k + 1, both epochs of a round seeing the same other processes' share."""
    return tuple(
        [
            timing.RoundEpoch(k + 1, float(v), float(share))
            for k, (v, share) in enumerate(zip(side, shares, strict=True))
        ]
        for side in (reference, candidate)
    )


def test_the_order_statistic_interval_of_a_median_reaches_95_percent() -> None:
    assert timing.order_interval(list(range(10, 0, -1))) == (2, 9)  # 97.9%: 1 - 2 * P(Binomial(10, 0.5) <= 1)
    assert timing.order_interval([5.0, 1.0, 3.0, 2.0, 4.0, 6.0]) == (1.0, 6.0)  # 96.9% needs all 6
    assert timing.order_interval(list(range(12))) == (2, 9)


def test_rounds_a_neighbour_disturbed_are_dropped_and_the_rest_decide() -> None:
    """B is 1.5x faster; in 3 of 10 rounds a neighbour slowed one side 3x: those rounds go, 7 clean decide."""
    rng = np.random.default_rng(4)
    reference, candidate = 0.15 * rng.lognormal(0, 0.03, 10), 0.10 * rng.lognormal(0, 0.03, 10)
    shares = np.full(10, 0.05)
    shares[[1, 4, 8]] = 0.5
    reference[[1, 8]] *= 3
    candidate[4] *= 3
    result, clean = timing.compare_rounds(*sides_in_rounds(reference, candidate, shares), max_other_cpu_share=0.2)
    assert clean == 7 and result.verdict == timing.FASTER and 1.4 < result.low <= result.ratio <= result.high < 1.6
    slower, _ = timing.compare_rounds(*sides_in_rounds(candidate, reference, shares), max_other_cpu_share=0.2)
    assert slower.verdict == timing.SLOWER


def test_with_too_few_clean_rounds_the_verdict_is_unreliable_and_says_how_many() -> None:
    rng = np.random.default_rng(5)
    shares = np.r_[np.full(5, 0.05), np.full(5, 0.9)]  # a neighbour saturating the machine from round 6
    result, clean = timing.compare_rounds(
        *sides_in_rounds(0.15 * rng.lognormal(0, 0.03, 10), 0.1 * rng.lognormal(0, 0.03, 10), shares), 0.2
    )
    assert clean == 5 and result.verdict.startswith("unreliable: 5 of 10 paired rounds clean, 6 needed")


def test_paired_rounds_call_identical_sides_different_at_most_about_1_in_20() -> None:
    """A/A: both sides the same code, the machine drifting 2x over the rounds and each epoch 5% noisy."""
    rng = np.random.default_rng(6)
    verdicts = []
    for _ in range(200):
        drift = np.linspace(1, 2, 10)
        same = [0.1 * drift * rng.lognormal(0, 0.05, 10) for _ in range(2)]
        verdicts.append(timing.compare_rounds(*sides_in_rounds(*same, np.zeros(10)), 0.2)[0].verdict)
    assert verdicts.count(timing.WITHIN_NOISE) >= 190, verdicts.count(timing.WITHIN_NOISE)


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_busy_processes_beside_a_probe_make_its_run_unstable() -> None:
    probe = timing.ConditionsProbe()
    busy = [multiprocessing.Process(target=_spin, args=(2.0,)) for _ in range(multiprocessing.cpu_count())]
    for process in busy:
        process.start()
    for process in busy:
        process.join()
    conditions = probe.finish([0.1, 0.1, 0.1])
    assert conditions.other_cpu_share is not None and conditions.other_cpu_share > 0.5, conditions
    assert timing.unstable_reasons(conditions, LIMITS)[0].startswith("other processes used")
