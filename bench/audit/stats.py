"""Uncertainty of the rates in a result row: 95 % Wilson score intervals.

Wilson's interval behaves at 0 % and 100 % and for the small n of a quick suite, where the
normal approximation gives intervals outside [0, 1] or of zero width.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for ``successes`` out of ``n``; (nan, nan) when n is 0."""
    if n <= 0:
        return math.nan, math.nan
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def mcnemar(b: int, c: int) -> float:
    """McNemar's exact test (two-sided) on paired outcomes: ``b`` pairs right in the first
    measurement and wrong in the second, ``c`` the other way round. Under "no difference" each
    discordant pair goes either way with probability ½, so the p-value is the two-sided binomial
    tail of min(b, c) in b + c fair trials (1.0 when there is no discordant pair)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b}, {c}")
    n = b + c
    if n == 0:
        return 1.0
    from scipy.stats import binom

    # scipy's binomial CDF: exact to float precision, and fast for the thousands of discordant
    # images of a large data set (the integer sum of binomial coefficients is not)
    return float(min(1.0, 2 * binom.cdf(min(b, c), n, 0.5)))


def paired(first, second) -> tuple[int, int, float]:
    """McNemar's test of two boolean outcomes per image (the same images, in the same order):
    (right only in the first, right only in the second, p-value)."""
    first, second = [bool(x) for x in first], [bool(x) for x in second]
    if len(first) != len(second):
        raise ValueError(f"paired outcomes need the same images: {len(first)} and {len(second)} outcomes")
    b = sum(x and not y for x, y in zip(first, second))
    c = sum(y and not x for x, y in zip(first, second))
    return b, c, mcnemar(b, c)


def format_p(p: float | None, missing: str = "–") -> str:
    """A p-value as reports print it: three decimals, or <0.001; ``missing`` when there is none."""
    if p is None or p != p:
        return missing
    return f"{p:.3f}" if p >= 0.001 else "<0.001"
