"""Critical values for the statistical tests."""

from scipy.stats import norm


def z_critical(confidence: float, tests: int) -> float:
    """Two-sided |z| bound so that ``tests`` independent z-tests all pass with probability ``confidence`` (Šidák)."""
    alpha = 1.0 - confidence ** (1.0 / tests)
    return float(norm.isf(alpha / 2.0))
