"""Critical values of families of z-tests: the one home of the thresholds that the checks, the experiments and the
tests judge their z-scores by.

A family of ``tests`` two-sided z-tests passes as a whole with probability at least ``confidence`` under the null
when each test uses the critical value of ``bonferroni_z`` (any dependence between the tests) or, slightly smaller,
of ``sidak_z`` (independent tests, exactly ``confidence``).
"""

from __future__ import annotations

__all__ = ["bonferroni_z", "sidak_z"]


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
