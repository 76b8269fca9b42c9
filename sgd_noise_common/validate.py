"""Input checks shared by every layer: each raises ``ValueError`` naming the parameter, the value given and what is
allowed."""

from __future__ import annotations

import numbers

import numpy as np

# Relative tolerance for symmetry and semi-definiteness: matrices built in floating point (a rotation QΛQᵀ, an
# empirical covariance) are symmetric and PSD only to a few hundred ulps of their largest entry.
SYMMETRY_RTOL = 1e-10


def as_square_matrix(name: str, value, *, size: int | None = None) -> np.ndarray:
    """``value`` as a finite float64 square matrix (of side ``size`` when given)."""
    try:
        m = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a square matrix of real numbers: {exc}") from None
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {m.shape}")
    if size is not None and m.shape[0] != size:
        raise ValueError(f"{name} must have shape ({size}, {size}) to match the Hessian, got {m.shape}")
    if m.shape[0] == 0:
        raise ValueError(f"{name} must not be empty")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name} contains NaN or infinite entries")
    return m


def check_symmetric(name: str, m: np.ndarray) -> np.ndarray:
    """``m`` symmetrised, after checking it is symmetric to ``SYMMETRY_RTOL`` of its largest entry."""
    scale = max(float(np.max(np.abs(m))), np.finfo(float).tiny)
    asym = float(np.max(np.abs(m - m.T)))
    if asym > SYMMETRY_RTOL * scale:
        raise ValueError(f"{name} must be symmetric; max |M - M^T| = {asym:.3g} (relative {asym / scale:.3g})")
    return 0.5 * (m + m.T)


def check_spd(name: str, m: np.ndarray) -> np.ndarray:
    """Eigenvalues of symmetric ``m`` after checking they are all > 0 (symmetric positive definite)."""
    ev = np.linalg.eigvalsh(m)
    if ev[0] <= 0.0:
        raise ValueError(
            f"{name} must be symmetric positive definite; its smallest eigenvalue is {ev[0]:.6g} (must be > 0)"
        )
    return ev


def check_psd(name: str, m: np.ndarray) -> np.ndarray:
    """Eigenvalues of symmetric ``m`` (rounding negatives clipped to 0) after checking it is PSD."""
    ev = np.linalg.eigvalsh(m)
    scale = max(float(np.max(np.abs(ev))), np.finfo(float).tiny)
    if ev[0] < -SYMMETRY_RTOL * scale * m.shape[0]:
        raise ValueError(
            f"{name} must be symmetric positive semi-definite; its smallest eigenvalue is {ev[0]:.6g} (must be >= 0)"
        )
    return np.clip(ev, 0.0, None)


def as_vector(name: str, value, *, size: int | None = None) -> np.ndarray:
    """``value`` as a finite 1-D float64 array (of length ``size`` when given)."""
    try:
        v = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a vector of real numbers: {exc}") from None
    if v.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {v.shape}")
    if size is not None and v.shape[0] != size:
        raise ValueError(f"{name} must have length {size}, got {v.shape[0]}")
    if v.size == 0:
        raise ValueError(f"{name} must not be empty")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} contains NaN or infinite entries")
    return v


def generator(name: str, rng):
    """``rng`` (a seed or a ``numpy.random.Generator``) as a Generator; ``None`` is refused, for the toolkit never
    draws from the operating system's entropy (a result must be reproducible from what its call was given).

    >>> float(generator("rng", 0).random()) == float(np.random.default_rng(0).random())
    True
    """
    if rng is None:
        raise ValueError(f"{name} is required here (a seed or a numpy.random.Generator): results are reproducible "
                         "only from a stated seed, so the toolkit never draws from fresh entropy")
    try:
        return np.random.default_rng(rng)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a seed (an integer >= 0) or a numpy.random.Generator, got {rng!r} "
                         f"({exc})") from None


def positive_float(name: str, value) -> float:
    """``value`` as a finite float > 0."""
    x = _real(name, value)
    if not x > 0.0:
        raise ValueError(f"{name} must be > 0, got {x!r}")
    return x


def nonnegative_float(name: str, value) -> float:
    """``value`` as a finite float >= 0."""
    x = _real(name, value)
    if not x >= 0.0:
        raise ValueError(f"{name} must be >= 0, got {x!r}")
    return x


def float_in(name: str, value, low: float, high: float, *, closed_high: bool = False) -> float:
    """``value`` as a float in [low, high) (or [low, high] with ``closed_high``)."""
    x = _real(name, value)
    ok = low <= x <= high if closed_high else low <= x < high
    if not ok:
        bracket = "]" if closed_high else ")"
        raise ValueError(f"{name} must lie in [{low}, {high}{bracket}, got {x!r}")
    return x


def positive_int(name: str, value, *, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and float(value).is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    x = float(value)
    if not np.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x!r}")
    return x
