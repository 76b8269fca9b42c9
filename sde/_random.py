"""Counter-free parallel Gaussian streams for the numba kernels: xoshiro256++ and a 256-layer ziggurat.

Why by hand: the kernels run chains in parallel (``prange``) and must give the same numbers for a seed whatever the
thread count. numba's own ``np.random`` inside ``njit`` keeps one hidden state per thread (not reproducible across
thread counts), and a numpy ``Generator`` passed into numba is a single stream that threads cannot share. So every
chain owns a small xoshiro256++ state (Blackman & Vigna 2019), seeded from the caller's ``numpy.random.Generator``,
and turns its 64-bit words into normals with the ziggurat of Marsaglia & Tsang (2000) in the 256-layer, 52-bit form
numpy itself uses. The tables are computed here from the two constants ``R`` and ``V``; ``tests/test_random.py``
checks the distribution (moments and a Kolmogorov–Smirnov test) and the table's closing identity.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

__all__ = ["ZIGGURAT_R", "ziggurat_tables", "seed_states", "next_u64", "next_double", "next_normal", "fill_normals"]

#: Right edge of the base layer of the 256-layer ziggurat (numpy's ``ziggurat_nor_r``).
ZIGGURAT_R = 3.6541528853610087963519472518
_LAYERS = 256
_MANTISSA = 2.0**52


def ziggurat_tables(r: float = ZIGGURAT_R, layers: int = _LAYERS):
    """Layer tables ``(k, w, f)`` of the ziggurat for the standard normal density, and the closing error.

    Layer 0 is the base (the rectangle [0, r] × [0, f(r)] plus the tail, of area ``v``), layer ``layers − 1`` the
    top. ``x[i]`` is the right edge of layer ``i``; ``k[i] = ⌊2^52 x[i+1]/x[i]⌋`` is the fast-accept bound on the
    52-bit magnitude, ``w[i] = x[i]/2^52`` turns it into ``x`` and ``f[i] = exp(−x[i]²/2)``.

    Returns:
        ``(k, w, f, closing)``: ``closing`` is the relative mismatch between the area of the top layer and ``v``,
        which vanishes (to rounding) when ``r`` is the right constant for ``layers``.
    """
    def f(x):
        return math.exp(-0.5 * x * x)

    # Area under each layer: the base rectangle plus the Gaussian tail beyond r.
    v = r * f(r) + math.sqrt(math.pi / 2.0) * math.erfc(r / math.sqrt(2.0))
    x = np.zeros(layers + 1)
    x[0] = v / f(r)
    x[1] = r
    for i in range(1, layers - 1):
        arg = v / x[i] + f(x[i])
        if not 0.0 < arg <= 1.0:  # a wrong r runs the recursion off the density's range
            return None, None, None, math.inf
        x[i + 1] = math.sqrt(-2.0 * math.log(arg))
    x[layers] = 0.0
    closing = (x[layers - 1] * (1.0 - f(x[layers - 1])) - v) / v
    # k as int64: it is compared with the signed 53-bit magnitude.
    k = np.array([int(_MANTISSA * x[i + 1] / x[i]) for i in range(layers)], dtype=np.int64)
    w = x[:layers] / _MANTISSA
    fx = np.array([f(xi) for xi in x])
    return k, w, fx, closing


_K, _W, _F, _CLOSING = ziggurat_tables()
_INV_R = 1.0 / ZIGGURAT_R


def seed_states(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` independent xoshiro256++ states (shape ``(n, 4)``, uint64) drawn from ``rng``.

    Each state is four words from ``rng``; an all-zero state (the one fixed point of xoshiro) has probability
    2^-256 and is replaced all the same.
    """
    states = rng.integers(0, np.iinfo(np.uint64).max, size=(n, 4), dtype=np.uint64, endpoint=True)
    zero = ~states.any(axis=1)
    states[zero, 0] = np.uint64(0x9E3779B97F4A7C15)
    return states


@nb.njit(inline="always")
def _rotl(x, k):
    return (x << np.uint64(k)) | (x >> np.uint64(64 - k))


@nb.njit(inline="always")
def next_u64(s0, s1, s2, s3):
    """One xoshiro256++ step: returns ``(word, s0, s1, s2, s3)``, the state passed and returned as scalars so
    that it stays in registers inside the kernels."""
    result = _rotl(s0 + s3, 23) + s0
    t = s1 << np.uint64(17)
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = _rotl(s3, 45)
    return result, s0, s1, s2, s3


@nb.njit(inline="always")
def next_double(s0, s1, s2, s3):
    """A uniform double in [0, 1) with 53 random bits: ``(u, s0, s1, s2, s3)``."""
    r, s0, s1, s2, s3 = next_u64(s0, s1, s2, s3)
    return np.float64(r >> np.uint64(11)) * (1.0 / 9007199254740992.0), s0, s1, s2, s3


@nb.njit
def _normal_slow(s0, s1, s2, s3, idx, x, k, w, f):
    # Rejection part of the ziggurat (about 1.2% of draws): the tail for the base layer, the wedge otherwise,
    # then fresh draws until one is accepted.
    while True:
        if idx == 0:
            while True:
                # 1 − U lies in (0, 1]: no log(0).
                u1, s0, s1, s2, s3 = next_double(s0, s1, s2, s3)
                u2, s0, s1, s2, s3 = next_double(s0, s1, s2, s3)
                xx = -_INV_R * math.log(1.0 - u1)
                yy = -math.log(1.0 - u2)
                if yy + yy > xx * xx:
                    return (-(ZIGGURAT_R + xx) if x < 0.0 else ZIGGURAT_R + xx), s0, s1, s2, s3
        u, s0, s1, s2, s3 = next_double(s0, s1, s2, s3)
        if f[idx] + u * (f[idx + 1] - f[idx]) < math.exp(-0.5 * x * x):
            return x, s0, s1, s2, s3
        r, s0, s1, s2, s3 = next_u64(s0, s1, s2, s3)
        idx = np.int64(r & np.uint64(0xFF))
        v = np.int64(r) >> np.int64(11)
        x = np.float64(v) * w[idx]
        if abs(v) < k[idx]:
            return x, s0, s1, s2, s3


@nb.njit(inline="always")
def next_normal(s0, s1, s2, s3, k, w, f):
    """A standard normal by the ziggurat with tables ``k, w, f``: ``(x, s0, s1, s2, s3)``.

    The low 8 bits of the word pick the layer and the top 53 bits, read as a signed integer, give sign and
    magnitude at once: no data-dependent branch on the sign.
    """
    r, s0, s1, s2, s3 = next_u64(s0, s1, s2, s3)
    idx = np.int64(r & np.uint64(0xFF))
    v = np.int64(r) >> np.int64(11)
    x = np.float64(v) * w[idx]
    if abs(v) < k[idx]:
        return x, s0, s1, s2, s3
    return _normal_slow(s0, s1, s2, s3, idx, x, k, w, f)


@nb.njit(parallel=True, cache=True)
def _fill_normals(states, out, k, w, f):
    n_streams = states.shape[0]
    per = out.shape[1]
    for c in nb.prange(n_streams):
        s0, s1, s2, s3 = states[c, 0], states[c, 1], states[c, 2], states[c, 3]
        for j in range(per):
            out[c, j], s0, s1, s2, s3 = next_normal(s0, s1, s2, s3, k, w, f)
        states[c, 0], states[c, 1], states[c, 2], states[c, 3] = s0, s1, s2, s3


def fill_normals(states: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` (shape ``(streams, m)``) with standard normals, row ``c`` from stream ``states[c]``.

    The states advance in place, so consecutive calls continue the streams.
    """
    _fill_normals(states, out, _K, _W, _F)
    return out


def tables():
    """The module's ziggurat tables ``(k, w, f)`` for passing into kernels."""
    return _K, _W, _F
