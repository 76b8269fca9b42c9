"""Hessian spectra: the families used in the checks and a parser for their command-line form.

Each function returns a 1-D array of eigenvalues, all > 0, in descending order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sgd_noise_common import validate

__all__ = ["logspace", "linear", "powerlaw", "marchenko_pastur", "from_file", "parse_spectrum", "spectrum_info",
           "SpectrumInfo", "SPECTRUM_HELP"]


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


def marchenko_pastur(dim: int, *, rng: np.random.Generator | int, ratio: float = 0.5,
                     variance: float = 1.0) -> np.ndarray:
    r"""Eigenvalues of a sample covariance :math:`\frac1n X^\top X`, X an n×dim matrix of N(0, variance) entries.

    Their density tends to the Marchenko–Pastur law with ratio q = dim/n, supported on
    :math:`\sigma^2 (1 \pm \sqrt q)^2`. ``ratio`` < 1 keeps the matrix positive definite.
    """
    dim = validate.positive_int("dim", dim)
    ratio = validate.float_in("ratio", ratio, np.finfo(float).eps, 1.0)
    variance = validate.positive_float("variance", variance)
    rng = validate.generator("rng", rng)
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
    if p.is_dir():
        raise ValueError(f"{name} is a folder; give a file of eigenvalues (.npy, or text such as .txt or .csv)")
    if not p.exists():
        raise ValueError(f"{name} does not exist")
    if not p.is_file():
        raise ValueError(f"{name} is not a regular file; give a file of eigenvalues (.npy, .txt or .csv)")
    not_numeric = (f"{name} is not a numeric array: give a .npy file of numbers, or a text file (.txt, .csv) of "
                   "numbers separated by spaces or commas")
    try:
        if p.suffix == ".npy":
            try:
                values = np.load(p, allow_pickle=False)
            except (ValueError, EOFError):  # not an .npy file, or an array of Python objects
                raise ValueError(not_numeric) from None
            if not isinstance(values, np.ndarray) or values.dtype.kind not in "biuf":
                raise ValueError(not_numeric)
        else:
            rows = [line.replace(",", " ").split() for line in p.read_text().splitlines()]
            rows = [r for r in rows if r]
            if len(rows) > 1 and len(rows[0]) > 1 and all(len(r) == len(rows[0]) for r in rows):
                values = np.empty((len(rows), len(rows[0])))  # a table of rows and columns: reported as 2-D below
            else:
                try:
                    values = np.array([x for r in rows for x in r], dtype=np.float64)
                except ValueError:
                    raise ValueError(not_numeric) from None
    except UnicodeDecodeError:
        raise ValueError(not_numeric) from None
    except OSError as exc:
        raise ValueError(f"{name} could not be read: {exc.strerror or exc}") from None
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


@dataclass(frozen=True)
class SpectrumInfo:
    """What a spectrum specification describes, known without drawing or building it.

    Attributes:
        dim: the number of eigenvalues.
        low: the smallest eigenvalue (for ``mp``, the lower edge of the Marchenko–Pastur law, halved: the sample's
            smallest eigenvalue scatters around the edge).
        high: the largest (for ``mp``, the upper edge, doubled).
        build_bytes: memory that building the spectrum takes (``mp`` draws an n×dim matrix).
        build_flops: arithmetic that building it takes.
    """

    dim: int
    low: float
    high: float
    build_bytes: float
    build_flops: float


def spectrum_info(spec: str) -> SpectrumInfo:
    """Check a specification (``SPECTRUM_HELP``) and say what it describes, without building the spectrum (a file
    is read). Raises the errors ``parse_spectrum`` would, before any memory of the spectrum's size is taken.

    >>> spectrum_info("logspace:0.01:1:100").dim, spectrum_info("powerlaw:2:3").low
    (100, 0.1111111111111111)
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"spectrum {spec!r} is not of the form {SPECTRUM_HELP}")
    kind, _, rest = spec.partition(":")
    if kind == "file":
        values = from_file(rest)
        return SpectrumInfo(values.size, float(values.min()), float(values.max()), 0.0, 0.0)
    parts = rest.split(":")
    try:
        if kind in ("logspace", "linear") and len(parts) == 3:
            low, high, dim = _range(kind, float(parts[0]), float(parts[1]), _int(parts[2]))
            return SpectrumInfo(dim, low, high, 8.0 * dim, 10.0 * dim)
        if kind == "powerlaw" and len(parts) in (2, 3):
            alpha = validate.nonnegative_float("alpha", float(parts[0]))
            dim = validate.positive_int("dim", _int(parts[1]))
            scale = validate.positive_float("scale", float(parts[2]) if len(parts) == 3 else 1.0)
            return SpectrumInfo(dim, scale * float(dim) ** (-alpha), scale, 8.0 * dim, 10.0 * dim)
        if kind == "mp" and 1 <= len(parts) <= 3:
            dim = validate.positive_int("dim", _int(parts[0]))
            ratio = validate.float_in("ratio", float(parts[1]) if len(parts) > 1 else 0.5, np.finfo(float).eps,
                                      1.0)
            variance = validate.positive_float("variance", float(parts[2]) if len(parts) > 2 else 1.0)
            n = max(dim + 1, int(round(dim / ratio)))
            edge = np.sqrt(ratio)
            return SpectrumInfo(dim, 0.5 * variance * (1.0 - edge) ** 2, 2.0 * variance * (1.0 + edge) ** 2,
                                8.0 * (n * dim + 3.0 * dim * dim), 2.0 * n * dim * dim + 10.0 * dim**3)
    except ValueError as exc:
        raise ValueError(f"spectrum {spec!r}: {exc}") from None
    raise ValueError(f"spectrum {spec!r} is not of the form {SPECTRUM_HELP}")


def _int(text: str) -> int:
    value = float(text)
    if not np.isfinite(value) or not value.is_integer():
        raise ValueError(f"dimension must be an integer, got {text!r}")
    return int(value)


def _range(kind: str, low, high, dim):
    low = validate.positive_float(f"{kind} low", low)
    high = validate.positive_float(f"{kind} high", high)
    if high < low:
        raise ValueError(f"{kind}: high ({high}) must be >= low ({low})")
    return low, high, validate.positive_int("dim", dim)
