"""The one rule every verdict uses: beyond the tolerance and twice the seed noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reslab.experiments.verdicts import Gap, gap_of_rows, gap_of_values


def test_a_gap_counts_only_beyond_the_tolerance_and_twice_the_noise() -> None:
    assert Gap(5.0, 1.0, 1.0, 1.0, tolerance=1.0).exceeds()  # 4 > 2·√2 ≈ 2.83
    assert not Gap(3.5, 1.0, 1.0, 1.0, tolerance=1.0).exceeds()  # 2.5 < 2.83
    assert not Gap(1.5, 1.0, 0.0, 0.0, tolerance=1.0).exceeds()  # inside the tolerance
    assert not Gap(1.0, 5.0, 0.1, 0.1, tolerance=1.0).exceeds()  # the other way round
    assert Gap(1.0, 5.0, 0.1, 0.1, tolerance=1.0).differs()
    gap = Gap(5.0, 1.0, 3.0, 4.0, tolerance=1.0)
    assert gap.seed_noise == 5.0 and gap.noise == 10.0 and gap.bar == 10.0
    assert gap.as_json("plain") == {"plain_gap": 4.0, "plain_gap_noise": 5.0}


def test_one_seed_leaves_the_tolerance_and_says_the_noise_is_unknown() -> None:
    gap = Gap(9.0, 1.0, None, 0.5, tolerance=1.0)
    assert gap.noise is None and gap.bar == 1.0 and gap.exceeds()
    assert "one seed, so the seed noise is unknown" in gap.why()
    assert gap.as_json("x")["x_gap_noise"] is None


@pytest.mark.parametrize(
    ("gap", "words"),
    [
        (
            Gap(62.0, 0.0, 15.1, 0.0, 1.0),
            "beyond the tolerance (1) and twice the seed noise (30.2)",
        ),
        (Gap(3.0, 0.0, 2.0, 2.0, 1.0), "within twice the seed noise (5.7)"),
        (Gap(0.5, 0.0, 0.0, 0.0, 1.0), "within the tolerance (1)"),
    ],
)
def test_the_reason_names_the_numbers_compared(gap: Gap, words: str) -> None:
    assert words in gap.why() and f"a gap of {gap.value:.1f} points" in gap.why()


def test_gaps_from_values_match_numpy() -> None:
    a, b = [10.0, 12.0, 17.0], [1.0, 2.0, math.nan, 3.0]  # a NaN (a diverged seed) is ignored
    gap = gap_of_values(a, b, tolerance=0.5)
    assert gap.a == pytest.approx(np.mean(a)) and gap.b == pytest.approx(2.0)
    assert gap.a_std == pytest.approx(np.std(a, ddof=1)) and gap.b_std == pytest.approx(1.0)
    assert gap_of_values([4.0], [1.0, 2.0], 0.5).a_std is None
    with pytest.raises(ValueError, match="at least one finite value"):
        gap_of_values([math.nan], [1.0], 0.5)


def test_gaps_from_summary_rows_take_one_seed_as_unknown_noise() -> None:
    row = {"x_mean": 4.0, "x_std": 0.0, "n_seeds": 1}
    other = {"x_mean": 1.0, "x_std": 0.3, "n_seeds": 3}
    gap = gap_of_rows(row, other, "x", tolerance=1.0)
    assert (gap.value, gap.a_std, gap.b_std) == (3.0, None, 0.3)


def test_correlations_are_shown_to_two_decimals() -> None:
    gap = Gap(0.95, 0.20, 0.02, 0.03, tolerance=0.05, unit="in lag-1 correlation", digits=2)
    assert gap.why() == (
        "a gap of 0.75 in lag-1 correlation, beyond the tolerance (0.05) and twice the seed "
        "noise (0.07)"
    )
