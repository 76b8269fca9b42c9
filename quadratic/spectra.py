"""Hessian spectra: the families used in the checks and a parser for their command-line form.

Each function returns a 1-D array of eigenvalues, all > 0, in descending order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common import validate

__all__ = ["logspace", "linear", "powerlaw", "marchenko_pastur", "from_file", "parse_spectrum", "SPECTRUM_HELP"]


def logspace(low: float, high: float, dim: int) -> np.ndarray:
    """``dim`` eigenvalues log-spaced between ``low`` and ``high``.

    >>> logspace(0.01, 1.0, 3).tolist()
    [1.0, 0.1, 0.01]
    """
    low, high, dim = _range("logspace", low, high, dim)
    return np.geomspace(high, low, dim)


def linear(low: float, high: float, dim: int) -> np.ndarray:
    """``dim`` eigenvalues evenly spaced between ``low`` and ``high``.

    >>> linear(1.0, 3.0, 3).tolist()
    [3.0, 2.0, 1.0]
    """
    low, high, dim = _range("linear", low, high, dim)
    return np.linspace(high, low, dim)


def powerlaw(alpha: float, dim: int, *, scale: float = 1.0) -> np.ndarray:
    r"""Power-law spectrum :math:`\lambda_i = \text{scale}\cdot i^{-\alpha}`, i = 1..dim, as measured on networks.

    >>> powerlaw(1.0, 4).tolist()
    [1.0, 0.5, 0.3333333333333333, 0.25]
    """
    alpha = validate.nonnegative_float("alpha", alpha)
    dim = validate.positive_int("dim", dim)
    scale = validate.positive_float("scale", scale)
    return scale * np.arange(1, dim + 1, dtype=np.float64) ** (-alpha)


def marchenko_pastur(dim: int, *, ratio: float = 0.5, variance: float = 1.0,
                     rng: np.random.Generator | None = None) -> np.ndarray:
    r"""Eigenvalues of a sample covariance :math:`\frac1n X^\top X`, X an n×dim matrix of N(0, variance) entries.

    Their density tends to the Marchenko–Pastur law with ratio q = dim/n, supported on
    :math:`\sigma^2 (1 \pm \sqrt q)^2`. ``ratio`` < 1 keeps the matrix positive definite.
    """
    dim = validate.positive_int("dim", dim)
    ratio = validate.float_in("ratio", ratio, np.finfo(float).eps, 1.0)
    variance = validate.positive_float("variance", variance)
    rng = np.random.default_rng(rng)
    n = max(dim + 1, int(round(dim / ratio)))
    x = rng.standard_normal((n, dim)) * np.sqrt(variance)
    ev = np.linalg.eigvalsh(x.T @ x / n)
    return ev[::-1].copy()


def from_file(path) -> np.ndarray:
    """Eigenvalues read from a ``.npy`` file or a text file (whitespace- or comma-separated numbers; a table of
    several equal rows of several numbers is a matrix, and refused), in decreasing order.

    Raises:
        ValueError: naming the file when it is missing, unreadable, not one-dimensional (a matrix is refused: give
            its eigenvalues, e.g. ``numpy.linalg.eigvalsh(M)``), or holds a value that is not > 0.
    """
    p = Path(path)
    name = f"spectrum file {str(p)!r}"
    if not p.is_file():
        raise ValueError(f"{name} does not exist")
    try:
        if p.suffix == ".npy":
            values = np.load(p, allow_pickle=False)
        else:
            rows = [line.replace(",", " ").split() for line in p.read_text().splitlines()]
            rows = [r for r in rows if r]
            if len(rows) > 1 and len(rows[0]) > 1 and all(len(r) == len(rows[0]) for r in rows):
                values = np.empty((len(rows), len(rows[0])))  # a table of rows and columns: reported as 2-D below
            else:
                values = np.array([x for r in rows for x in r], dtype=np.float64)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{name} could not be read as numbers: {exc}") from None
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{name} must hold a 1-D list of eigenvalues, got an array of shape {values.shape}; for a "
                         "matrix M, give its eigenvalues (numpy.linalg.eigvalsh(M))")
    values = validate.as_vector(name, values)
    if np.any(values <= 0):
        raise ValueError(f"{name}: eigenvalues must all be > 0; smallest is {values.min():.6g}")
    return np.sort(values)[::-1].copy()


SPECTRUM_HELP = ("logspace:LOW:HIGH:DIM, linear:LOW:HIGH:DIM, powerlaw:ALPHA:DIM[:SCALE], "
                 "mp:DIM[:RATIO[:VARIANCE]] (Marchenko-Pastur), file:PATH (.npy or text)")


def parse_spectrum(spec: str, *, rng: np.random.Generator | None = None) -> np.ndarray:
    """Eigenvalues from a short specification such as ``logspace:0.01:1:100`` (see ``SPECTRUM_HELP``).

    >>> parse_spectrum("powerlaw:2:3").tolist()
    [1.0, 0.25, 0.1111111111111111]
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"spectrum {spec!r} is not of the form {SPECTRUM_HELP}")
    kind, _, rest = spec.partition(":")
    if kind == "file":
        return from_file(rest)
    parts = rest.split(":")
    try:
        if kind == "logspace" and len(parts) == 3:
            return logspace(float(parts[0]), float(parts[1]), _int(parts[2]))
        if kind == "linear" and len(parts) == 3:
            return linear(float(parts[0]), float(parts[1]), _int(parts[2]))
        if kind == "powerlaw" and len(parts) in (2, 3):
            scale = float(parts[2]) if len(parts) == 3 else 1.0
            return powerlaw(float(parts[0]), _int(parts[1]), scale=scale)
        if kind == "mp" and 1 <= len(parts) <= 3:
            ratio = float(parts[1]) if len(parts) > 1 else 0.5
            variance = float(parts[2]) if len(parts) > 2 else 1.0
            return marchenko_pastur(_int(parts[0]), ratio=ratio, variance=variance, rng=rng)
    except ValueError as exc:
        raise ValueError(f"spectrum {spec!r}: {exc}") from None
    raise ValueError(f"spectrum {spec!r} is not of the form {SPECTRUM_HELP}")


def _int(text: str) -> int:
    value = float(text)
    if not value.is_integer():
        raise ValueError(f"dimension must be an integer, got {text!r}")
    return int(value)


def _range(kind: str, low, high, dim):
    low = validate.positive_float(f"{kind} low", low)
    high = validate.positive_float(f"{kind} high", high)
    if high < low:
        raise ValueError(f"{kind}: high ({high}) must be >= low ({low})")
    return low, high, validate.positive_int("dim", dim)
