"""Wilson intervals against published values."""

from __future__ import annotations

import math

import pytest

from bench.audit.stats import mcnemar, paired, wilson


@pytest.mark.parametrize(
    "k,n,low,high",
    [
        # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (Wilson score)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_newcombes_table(k, n, low, high):
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_wilson_is_symmetric_and_stays_in_the_unit_interval():
    lo, hi = wilson(3, 10)
    lo2, hi2 = wilson(7, 10)
    assert lo == pytest.approx(1 - hi2) and hi == pytest.approx(1 - lo2)
    assert wilson(10, 10)[1] == 1.0 and wilson(0, 10)[0] == 0.0


def test_wilson_of_nothing_is_undefined():
    assert all(math.isnan(v) for v in wilson(0, 0))


@pytest.mark.parametrize(
    "b,c,p",
    [
        # exact binomial tails: 2 · P(X <= 1), X ~ Bin(10, 1/2) = 2 · 11/1024
        (1, 9, 22 / 1024),
        (9, 1, 22 / 1024),
        # 2 · P(X <= 0), X ~ Bin(5, 1/2) = 2/32
        (0, 5, 2 / 32),
        # R: mcnemar.exact / binom.test(3, 15): p = 0.03516
        (3, 12, 0.03515625),
        (4, 4, 1.0),
        (0, 0, 1.0),
    ],
)
def test_mcnemar_is_the_exact_two_sided_binomial_tail(b, c, p):
    assert mcnemar(b, c) == pytest.approx(p, rel=1e-12)


def test_mcnemar_never_exceeds_one_and_rejects_negative_counts():
    assert mcnemar(7, 8) == 1.0
    with pytest.raises(ValueError):
        mcnemar(-1, 2)


def test_paired_counts_only_the_discordant_images():
    first = [True, True, False, False, True, True]
    second = [True, False, True, False, False, False]
    b, c, p = paired(first, second)
    assert (b, c) == (3, 1) and p == pytest.approx(mcnemar(3, 1))
    with pytest.raises(ValueError):
        paired([True], [True, False])
