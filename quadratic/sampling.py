r"""How many examples a minibatch averages, and what that does to the gradient noise.

A minibatch of S examples drawn from a population with per-example gradient covariance Σ has covariance κΣ:

.. math:: \kappa = \frac1S \quad\text{(with replacement, or unlimited data)},\qquad
          \kappa = \frac{N-S}{S(N-1)} \quad\text{(without replacement from N)}.

The second vanishes at S = N (the full batch has no noise), which is why linear scaling of (η, S) breaks on small
datasets (the paper's Fig. 5). This module is the one home of κ: the theory (``sde.theory``), the simulators, the
two-batch noise-scale estimators (``sde.diagnostics``) and ``LeastSquares`` all call ``batch_noise_factor``.
"""

from __future__ import annotations

import numpy as np

from sgd_noise_common import validate

__all__ = ["SAMPLINGS", "batch_noise_factor", "check_batch_size", "finite_data_factor"]

#: Minibatch sampling schemes: i.i.d. with replacement, a fresh subset without replacement each step, and epochs of
#: a reshuffled permutation cut into consecutive batches (the incomplete last batch of an epoch is dropped).
SAMPLINGS = ("with", "without", "epoch")


def check_batch_size(batch_size, dataset_size: int | None) -> int:
    """``batch_size`` as an int in [1, N] (N = ``dataset_size`` when given)."""
    s = validate.positive_int("batch_size", batch_size)
    if dataset_size is not None and s > dataset_size:
        raise ValueError(f"batch_size must be <= dataset_size N = {dataset_size}, got S = {s}")
    return s


def finite_data_factor(batch_size, dataset_size):
    """(N − S)/(N − 1): by how much drawing a batch of S out of N examples without replacement lowers the noise
    against drawing with replacement (the finite-population correction; κ = this/S). ``batch_size`` may be an
    array (a curve over S), with every S in [1, N].

    >>> finite_data_factor(10, 100), finite_data_factor(100, 100), finite_data_factor(1, 1)
    (0.9090909090909091, 0.0, 0.0)
    """
    n = validate.positive_int("dataset_size", dataset_size)
    s = np.asarray(batch_size, dtype=np.float64)
    if not np.all((s >= 1) & (s <= n)):
        raise ValueError(f"batch_size must lie in [1, dataset_size N = {n}], got {batch_size!r}")
    out = (n - s) / (n - 1) if n > 1 else np.zeros_like(s)
    return float(out) if out.ndim == 0 else out


def batch_noise_factor(batch_size: int, dataset_size: int | None = None, *, sampling: str = "without") -> float:
    """κ with Cov(g_B) = κ Σ_pop for a batch of ``batch_size`` examples.

    Args:
        batch_size: S, 1 <= S (<= N when ``dataset_size`` is given).
        dataset_size: N, or ``None`` for unlimited data (κ = 1/S).
        sampling: ``"with"`` replacement (κ = 1/S), ``"without"`` (κ = (N−S)/(S(N−1))) or ``"epoch"`` (a batch of
            a reshuffled epoch is marginally a uniform subset, so κ is the without-replacement value; consecutive
            batches are dependent, though).

    Returns:
        κ; 0 when S = N without replacement.

    >>> batch_noise_factor(10), batch_noise_factor(10, 100), batch_noise_factor(10, 100, sampling="with")
    (0.1, 0.09090909090909091, 0.1)
    >>> batch_noise_factor(100, 100)
    0.0
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if dataset_size is not None:
        dataset_size = validate.positive_int("dataset_size", dataset_size)
    s = check_batch_size(batch_size, dataset_size)
    n = dataset_size
    if n is None or sampling == "with":
        return 1.0 / s
    return finite_data_factor(s, n) / s
