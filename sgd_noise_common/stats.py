"""Critical values of families of z-tests: the one home of the thresholds that the checks, the experiments and the
tests judge their z-scores by; and the comparison of an estimate with a threshold, given its standard error, on which
the experiments' claims rest (``compare``: holds, fails, or not settled).

A family of ``tests`` two-sided z-tests passes as a whole with probability at least ``confidence`` under the null
when each test uses the critical value of ``bonferroni_z`` (any dependence between the tests) or, slightly smaller,
of ``sidak_z`` (independent tests, exactly ``confidence``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["bonferroni_z", "sidak_z", "Comparison", "compare", "within", "all_of", "mean_and_stderr", "mean_above",
           "block_means", "batch_means", "ratio_of_means"]


def _check(confidence: float, tests: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    if int(tests) != tests or tests < 1:
        raise ValueError(f"tests must be an integer >= 1, got {tests!r}")


def bonferroni_z(confidence: float, tests: int) -> float:
    """Two-sided critical |z| with P(|Z| > z) = (1 − confidence)/tests: ``tests`` z-tests all pass with probability
    >= ``confidence`` under the null, however they depend on each other (Bonferroni).

    >>> round(bonferroni_z(0.95, 1), 3)
    1.96
    >>> round(bonferroni_z(0.99, 10), 3)
    3.291
    """
    from scipy.stats import norm

    _check(confidence, max(int(tests), 1))
    return float(norm.isf((1.0 - confidence) / max(int(tests), 1) / 2.0))


def sidak_z(confidence: float, tests: int) -> float:
    """Two-sided critical |z| so that ``tests`` independent z-tests all pass with probability exactly
    ``confidence`` under the null (Šidák): P(|Z| > z) = 1 − confidence^(1/tests).

    >>> round(sidak_z(0.95, 1), 3)
    1.96
    >>> sidak_z(0.99, 10) < bonferroni_z(0.99, 10)
    True
    """
    from scipy.stats import norm

    _check(confidence, tests)
    return float(norm.isf((1.0 - confidence ** (1.0 / tests)) / 2.0))


@dataclass(frozen=True)
class Comparison:
    """An estimate compared with a threshold, given its standard error: what a claim's verdict rests on.

    Attributes:
        holds: the estimate lies on the claimed side of the threshold.
        settled: the whole two-sided ``confidence`` interval (Student t with ``dof`` degrees of freedom; the normal
            when ``dof`` is None) lies on one side: the data decide. An interval that straddles the threshold, or
            an unknown (NaN) standard error, such as from a single seed, is not settled.
        low, high: the interval.
    """

    holds: bool
    settled: bool
    low: float
    high: float

    def words(self) -> str:
        """``"yes"``, ``"no"`` or ``"not settled"``."""
        return "not settled" if not self.settled else ("yes" if self.holds else "no")


def compare(estimate: float, stderr: float, threshold: float, *, above: bool, confidence: float = 0.95,
            dof: int | None = None) -> Comparison:
    """Whether ``estimate`` is above (``above=True``) or below ``threshold``, and whether its interval decides it.

    >>> c = compare(0.5, 0.1, 0.0, above=True)
    >>> c.holds, c.settled, c.words()
    (True, True, 'yes')
    >>> compare(0.1, 0.1, 0.0, above=True).words()
    'not settled'
    >>> compare(0.1, float("nan"), 0.0, above=True).words()
    'not settled'
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    from scipy import stats

    q = 0.5 + confidence / 2.0
    crit = float(stats.norm.ppf(q) if dof is None else stats.t.ppf(q, dof))
    half = crit * stderr if math.isfinite(stderr) else math.inf
    low, high = estimate - half, estimate + half
    holds = bool(estimate > threshold) if above else bool(estimate < threshold)
    settled = bool(math.isfinite(estimate) and (low > threshold or high < threshold))
    return Comparison(holds=holds, settled=settled, low=float(low), high=float(high))


def within(estimate: float, stderr: float, low: float, high: float, *, confidence: float = 0.95,
           dof: int | None = None) -> Comparison:
    """Whether ``estimate`` lies inside (``low``, ``high``), settled when its whole interval lies inside or wholly
    outside that band (``compare``'s interval).

    >>> within(1.0, 0.05, 0.5, 1.5).words(), within(1.0, 0.4, 0.5, 1.5).words(), within(3.0, 0.1, 0.5, 1.5).words()
    ('yes', 'not settled', 'no')
    """
    lo_side = compare(estimate, stderr, low, above=True, confidence=confidence, dof=dof)
    hi_side = compare(estimate, stderr, high, above=False, confidence=confidence, dof=dof)
    holds = lo_side.holds and hi_side.holds
    settled = (lo_side.settled and hi_side.settled) if holds else \
        ((lo_side.settled and not lo_side.holds) or (hi_side.settled and not hi_side.holds))
    return Comparison(holds=holds, settled=settled, low=lo_side.low, high=lo_side.high)


def all_of(*parts: Comparison) -> Comparison:
    """A claim made of several comparisons: it holds when every part holds; a "yes" is settled when every part's
    is, a "no" when some failing part's is (its interval is that part's)."""
    holds = all(p.holds for p in parts)
    if holds:
        return Comparison(holds=True, settled=all(p.settled for p in parts), low=parts[0].low, high=parts[0].high)
    failing = [p for p in parts if not p.holds]
    decided = [p for p in failing if p.settled]
    first = (decided or failing)[0]
    return Comparison(holds=False, settled=bool(decided), low=first.low, high=first.high)


def mean_and_stderr(values) -> tuple[float, float, int]:
    """The mean of independent replicates (e.g. one value per seed), its standard error and its degrees of freedom
    (NaN error and 0 with fewer than two values: a single seed has no scatter to judge by)."""
    import numpy as np

    x = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, 0
    if x.size < 2:
        return float(x[0]), math.nan, 0
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size)), int(x.size - 1)


def mean_above(values, threshold: float = 0.0, *, confidence: float = 0.95) -> Comparison:
    """Whether the mean of independent replicates (one value per seed) lies above ``threshold``, judged by their
    scatter (Student t; one replicate: not settled).

    >>> mean_above([0.3, 0.31, 0.29]).words(), mean_above([0.3]).words()
    ('yes', 'not settled')
    """
    m, se, dof = mean_and_stderr(values)
    return compare(m, se, threshold, above=True, confidence=confidence, dof=dof or None)


def block_means(x, blocks: int):
    """The means of ``blocks`` consecutive blocks of a time series along its first axis: the batch means that
    absorb its autocorrelation when each block is much longer than the correlation time. Block ``j`` holds steps
    ``[j·T//blocks, (j+1)·T//blocks)``. (``sde.simulate``'s kernels accumulate their own block sums inside numba,
    step by step, without keeping the series.)

    >>> block_means([0.0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 3).tolist()
    [1.0, 4.0, 7.5]
    """
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    t = x.shape[0]
    if not 1 <= blocks <= t:
        raise ValueError(f"blocks must lie in [1, {t}] (the series' length), got {blocks}")
    edges = (np.arange(blocks + 1) * t) // blocks
    return np.stack([x[a:b].mean(axis=0) for a, b in zip(edges[:-1], edges[1:])])


def batch_means(x, batches: int = 10) -> tuple[float, float]:
    """The mean of a (correlated) time series and its standard error from ``batches`` consecutive batch means
    (``block_means``; at most one per point); NaN error for fewer than 2 points.

    >>> batch_means([1.0, 2.0, 3.0, 4.0], 2)
    (2.5, 1.0)
    """
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    if x.size < 2:
        return (float(x.mean()) if x.size else math.nan), math.nan
    k = min(batches, x.size)
    means = block_means(x, k)
    return float(x.mean()), float(means.std(ddof=1) / math.sqrt(k))


def ratio_of_means(numerator, denominator, blocks: int | None = None):
    """The ratio of means r = ū/v̄ of two paired series and its standard error by the delta method,
    √Var(ū − r v̄)/|v̄| (as ``sde.diagnostics.FDRMonitor`` gives its ratio ⟨O_L⟩/⟨O_R⟩).

    ``blocks=None``: the pairs (u_t, v_t) are independent draws, and the error is that of their i.i.d. mean. An
    integer: they form a correlated time series, and the error is that of its ``blocks`` batch means
    (``block_means``), reliable when each block is much longer than the correlation time. Arrays of shape
    ``(T, ...)`` give one ratio per trailing index (e.g. per direction); NaN error with fewer than 2 pairs or blocks,
    and NaN ratio and error where v̄ = 0.

    >>> r, se = ratio_of_means([1.0, 2.0, 3.0, 6.0], [1.0, 1.0, 2.0, 2.0])
    >>> r, round(se, 4)
    (2.0, 0.4714)
    >>> r, se = ratio_of_means([1.0, 3.0, 2.0, 8.0], [1.0, 1.0, 2.0, 2.0], blocks=2)  # block means 2, 5 over 1, 2
    >>> round(r, 4), round(se, 4)
    (2.3333, 0.2222)
    """
    import numpy as np

    u = np.asarray(numerator, dtype=np.float64)
    v = np.asarray(denominator, dtype=np.float64)
    if u.shape != v.shape or u.ndim < 1:
        raise ValueError(f"numerator and denominator must be paired series of one shape, got {u.shape} and "
                         f"{v.shape}")
    if blocks is not None:
        u, v = block_means(u, blocks), block_means(v, blocks)
    n = u.shape[0]
    ub, vb = u.mean(axis=0), v.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(vb != 0, ub / np.where(vb != 0, vb, 1.0), np.nan)
        se = (np.std(u - r * v, axis=0, ddof=1) / math.sqrt(n) / np.abs(vb)) if n > 1 else np.full_like(r, np.nan)
    se = np.where(np.isfinite(r), se, np.nan)
    if r.ndim == 0:
        return float(r), float(se)
    return r, se
