"""Linear algebra of covariance matrices that numpy and scipy do not give in the form needed here."""

from __future__ import annotations

import numpy as np

__all__ = ["psd_sqrt"]


def psd_sqrt(matrix) -> np.ndarray:
    r"""The symmetric square root F = Fᵀ with F F = M of a symmetric positive semi-definite M.

    Unlike a Cholesky factor it exists for a singular M (a noise covariance of low rank), and unlike
    ``scipy.linalg.sqrtm`` it never returns complex values from rounding: eigenvalues of M that rounding made
    slightly negative are clipped to 0. M is symmetrised first, so a matrix symmetric to rounding is accepted.
    Noise with covariance M is F ξ with ξ standard normal.

    >>> f = psd_sqrt([[4.0, 0.0], [0.0, 0.0]])
    >>> f.tolist()
    [[2.0, 0.0], [0.0, 0.0]]
    """
    m = np.asarray(matrix, dtype=np.float64)
    w, u = np.linalg.eigh(0.5 * (m + m.T))
    return (u * np.sqrt(np.clip(w, 0.0, None))) @ u.T
