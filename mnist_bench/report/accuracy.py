"""Whether one model is more accurate than another on the same test images: McNemar's exact test (mid-p)
on one seed's pair of runs, and with several seeds the test pooled over them plus the seeds agreeing.

Pure numerics on each image's right or wrong, small enough to check line by line: no store, no pandas,
no scipy. The one test used for two classifiers scored on one test set (Dietterich 1998) looks only at the
discordant images, those exactly one of the two got right: if neither model is better, each of them is a
fair coin between the two, so the candidate's share of them is Binomial(n, 1/2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05  # a difference is called when its two-sided p-value is below this
# From this many seeds a sign test over them can reach ALPHA: all 5 agreeing give mid-p 2 * 0.5**5 - 0.5**5 = 0.031
# (4 give 0.0625). Below it, the rule asks every seed to agree instead.
SIGN_TEST_SEEDS = 5

MORE_ACCURATE, LESS_ACCURATE, WITHIN_NOISE, UNKNOWN = "more accurate", "less accurate", "within noise", "unknown"
ONE_SEED, SEEDS_DISAGREE = "McNemar on one seed", "seeds disagreeing"  # rules the headline words its advice on


def at_most(successes: int, trials: int) -> float:
    """P(X <= successes) for X ~ Binomial(trials, 1/2), exactly: the sum of C(trials, i) for i <= successes,
    over 2**trials. Python's integers hold every term exactly (C(n, i + 1) = C(n, i) * (n - i) / (i + 1),
    always a whole number), so the one rounding is the final division, which underflows to 0.0 rather than
    failing; floats or lgamma would lose the tail's digits for the thousands of discordant images two
    clearly different models have."""
    term = total = 1
    for i in range(successes):
        term = term * (trials - i) // (i + 1)
        total += term
    return total / 2**trials


def exactly(successes: int, trials: int) -> float:
    """P(X = successes) for X ~ Binomial(trials, 1/2)."""
    return math.comb(trials, successes) / 2**trials


def mcnemar_mid_p(reference_only: int, candidate_only: int) -> float:
    """McNemar's exact test, two-sided, mid-p variant: twice the probability of a split of the discordant
    images at least as uneven as this one, the observed split counted at half weight, at most 1. The plain
    exact test counts it fully and rejects less often than ALPHA says; the mid-p comes closer to ALPHA
    (Fagerland, Lydersen and Laake 2013). Also the sign test, given counts of seeds instead of images."""
    trials, fewer = reference_only + candidate_only, min(reference_only, candidate_only)
    if trials == 0:
        return 1.0
    return min(1.0, 2 * at_most(fewer, trials) - exactly(fewer, trials))


@dataclass(frozen=True)
class Pair:
    """One seed's two runs, scored on the same images: how many images each of them alone got right."""

    seed: str
    images: int
    reference_only: int  # right by the reference, wrong by the candidate
    candidate_only: int  # right by the candidate, wrong by the reference

    @property
    def lead(self) -> int:
        """Images the candidate is ahead by: > 0 when it got more right."""
        return self.candidate_only - self.reference_only


def paired(seed: str, reference: np.ndarray, candidate: np.ndarray) -> Pair | None:
    """A pair from two runs' (label, predicted) rows; None when they were not scored on the same images
    (their labels differ)."""
    if reference.shape != candidate.shape or not np.array_equal(reference[:, 0], candidate[:, 0]):
        return None
    reference_right = reference[:, 1] == reference[:, 0]
    candidate_right = candidate[:, 1] == candidate[:, 0]
    both_differ = reference_right != candidate_right
    return Pair(
        seed, len(reference), int((both_differ & reference_right).sum()), int((both_differ & candidate_right).sum())
    )


@dataclass(frozen=True)
class Verdict:
    """The candidate against the reference: the call, its p-value, and the rule that decided it (or, for
    UNKNOWN, why none could)."""

    verdict: str
    p_value: float
    rule: str
    pairs: tuple[Pair, ...] = ()

    @property
    def reference_only(self) -> int:
        return sum(pair.reference_only for pair in self.pairs)

    @property
    def candidate_only(self) -> int:
        return sum(pair.candidate_only for pair in self.pairs)


def unknown(reason: str) -> Verdict:
    return Verdict(UNKNOWN, math.nan, reason)


def judge(pairs: Sequence[Pair]) -> Verdict:
    """The verdict over one or more seeds' pairs. One seed: McNemar on its images. Several: McNemar on their
    discordant images pooled, which must be significant, and the seed-to-seed spread must agree with it:
    every seed's lead has its sign, or, from SIGN_TEST_SEEDS seeds on, a sign test over the seeds' leads is
    significant too (the p-value is then the larger of the two, since both must pass)."""
    if not pairs:
        raise ValueError("judge needs at least one pair of runs")
    reference_only = sum(pair.reference_only for pair in pairs)
    candidate_only = sum(pair.candidate_only for pair in pairs)
    p_value = mcnemar_mid_p(reference_only, candidate_only)
    direction = MORE_ACCURATE if candidate_only > reference_only else LESS_ACCURATE
    if len(pairs) == 1:
        rule, spread_agrees = ONE_SEED, True
    elif len(pairs) >= SIGN_TEST_SEEDS:
        ahead = sum(pair.lead > 0 for pair in pairs)
        behind = sum(pair.lead < 0 for pair in pairs)
        sign_p = mcnemar_mid_p(behind, ahead)
        rule = f"McNemar pooled over {len(pairs)} seeds, and a sign test over them (p = {sign_p:.2g})"
        spread_agrees = sign_p < ALPHA and (ahead > behind) == (candidate_only > reference_only)
        p_value = max(p_value, sign_p)
    else:
        sign = np.sign(candidate_only - reference_only)
        spread_agrees = all(np.sign(pair.lead) == sign for pair in pairs)
        rule = f"McNemar pooled over {len(pairs)} seeds, " + (
            "every seed agreeing" if spread_agrees else "seeds disagreeing"
        )
    called = p_value < ALPHA and spread_agrees and candidate_only != reference_only
    return Verdict(direction if called else WITHIN_NOISE, p_value, rule, tuple(pairs))
