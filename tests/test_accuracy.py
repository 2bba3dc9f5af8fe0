"""The paired accuracy test of mnist_bench.report.accuracy on numbers small enough to check by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mnist_bench.report import accuracy
from mnist_bench.report.accuracy import LESS_ACCURATE, MORE_ACCURATE, WITHIN_NOISE, Pair


def test_binomial_tails_are_the_counted_subsets_over_two_to_the_n() -> None:
    assert accuracy.at_most(0, 10) == 0.5**10  # only the empty subset
    assert accuracy.at_most(2, 4) == (1 + 4 + 6) / 16
    assert accuracy.at_most(10, 10) == 1.0
    assert accuracy.exactly(1, 7) == 7 / 128


@pytest.mark.parametrize(
    ("reference_only", "candidate_only", "mid_p"),
    [
        (10, 0, 2 * 0.5**10 - 0.5**10),  # exact test: 2 * 0.5**10; mid-p takes half of the observed split off
        (1, 6, 2 * (1 + 7) / 128 - 7 / 128),  # 9/128 (the exact test: 16/128)
        (5, 5, 1.0),  # an even split is as likely as it gets
        (0, 0, 1.0),  # no discordant image: nothing tells the two apart
    ],
)
def test_mcnemar_mid_p_by_hand(reference_only: int, candidate_only: int, mid_p: float) -> None:
    assert accuracy.mcnemar_mid_p(reference_only, candidate_only) == pytest.approx(mid_p, rel=1e-12)
    assert accuracy.mcnemar_mid_p(candidate_only, reference_only) == accuracy.mcnemar_mid_p(
        reference_only, candidate_only
    )


def test_mcnemar_keeps_the_tail_of_thousands_of_discordant_images() -> None:
    """8,400 discordant images split 4,000 to 4,400: the normal approximation, z = 400 / sqrt(8400), is good
    here and gives a two-sided p of 1.3e-5; the exact sum agrees. Split 100 to 8,300 the p-value is below
    any float and is 0.0, not an error."""
    z = 400 / math.sqrt(8400)
    assert accuracy.mcnemar_mid_p(4000, 4400) == pytest.approx(math.erfc(z / math.sqrt(2)), rel=0.05)
    assert accuracy.mcnemar_mid_p(100, 8300) == 0.0


def test_the_sign_test_starts_at_the_fewest_seeds_that_can_reach_alpha() -> None:
    assert accuracy.mcnemar_mid_p(0, accuracy.SIGN_TEST_SEEDS) < accuracy.ALPHA
    assert accuracy.mcnemar_mid_p(0, accuracy.SIGN_TEST_SEEDS - 1) >= accuracy.ALPHA


def test_a_pair_counts_the_images_exactly_one_run_got_right() -> None:
    labels = np.array([0, 1, 2, 3, 4, 5])
    reference = np.column_stack([labels, [0, 1, 2, 9, 9, 9]])  # right on images 0, 1, 2
    candidate = np.column_stack([labels, [0, 9, 9, 3, 4, 9]])  # right on images 0, 3, 4
    assert accuracy.paired("0", reference, candidate) == Pair("0", 6, reference_only=2, candidate_only=2)
    assert accuracy.paired("0", reference, candidate[:5]) is None  # not the same images
    shuffled = np.column_stack([labels[::-1], candidate[:, 1]])
    assert accuracy.paired("0", reference, shuffled) is None


def test_one_seed_is_mcnemar_on_its_images() -> None:
    verdict = accuracy.judge([Pair("0", 10_000, reference_only=10, candidate_only=0)])
    assert (verdict.verdict, verdict.p_value, verdict.rule) == (LESS_ACCURATE, 0.5**10, "McNemar on one seed")
    assert accuracy.judge([Pair("0", 10_000, 0, 10)]).verdict == MORE_ACCURATE
    assert accuracy.judge([Pair("0", 10_000, 3, 6)]).verdict == WITHIN_NOISE  # mid-p 2 * 130/512 - 84/512 = 0.34
    identical = accuracy.judge([Pair("0", 10_000, 0, 0)])
    assert (identical.verdict, identical.p_value) == (WITHIN_NOISE, 1.0)


def test_several_seeds_need_the_pooled_test_and_every_seed_agreeing() -> None:
    agreeing = accuracy.judge([Pair(seed, 500, 2, 8) for seed in "012"])  # 6 against 24 pooled
    assert agreeing.verdict == MORE_ACCURATE and agreeing.rule == "McNemar pooled over 3 seeds, every seed agreeing"
    assert agreeing.p_value == pytest.approx(accuracy.mcnemar_mid_p(6, 24))
    assert (agreeing.reference_only, agreeing.candidate_only) == (6, 24)
    # Pooled 10 against 40 is far beyond chance, but one seed went the other way: the spread does not agree.
    split = accuracy.judge([Pair("0", 500, 0, 20), Pair("1", 500, 0, 20), Pair("2", 500, 10, 0)])
    assert split.verdict == WITHIN_NOISE and split.rule == "McNemar pooled over 3 seeds, seeds disagreeing"
    assert split.p_value < 1e-4


def test_from_five_seeds_a_sign_test_over_them_decides_with_the_pooled_test() -> None:
    all_ahead = accuracy.judge([Pair(str(seed), 500, 0, 3) for seed in range(5)])  # sign test: 5 of 5
    assert all_ahead.verdict == MORE_ACCURATE and all_ahead.p_value == pytest.approx(2 * 0.5**5 - 0.5**5)
    assert all_ahead.rule.startswith("McNemar pooled over 5 seeds, and a sign test over them")
    # 4 of 5 seeds ahead: the sign test's mid-p is 2 * 6/32 - 5/32 = 7/32, whatever the pooled images say.
    most_ahead = accuracy.judge([*[Pair(str(seed), 500, 0, 30) for seed in range(4)], Pair("4", 500, 3, 0)])
    assert most_ahead.verdict == WITHIN_NOISE and most_ahead.p_value == pytest.approx(7 / 32)
