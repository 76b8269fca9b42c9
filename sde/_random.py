"""Random streams for the numba kernels, one per chain, so that a seed gives the same numbers whatever the thread count.

Why by hand: numba's own ``np.random`` inside ``njit`` keeps one hidden state per thread (not reproducible across
thread counts), and a numpy ``Generator`` passed into numba is a single stream that threads cannot share. So every
chain owns a small stream seeded from the caller's ``numpy.random.Generator``:

- Gaussian noise (``normal_block``): counter-based SplitMix64 draws turned into normals by a vectorised Box–Muller
  transform, a block of draws at a time (see the section below for why not a ziggurat).
- Minibatch indices (``next_u64``, ``next_double``): xoshiro256++ (Blackman & Vigna 2019), drawn one at a time.

``tests/test_random.py`` checks the building blocks against numpy to the ulp, the distribution (moments,
Kolmogorov–Smirnov, tails, the Box–Muller quadruples' radius, split and angles) and the streams' reproducibility.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from llvmlite import ir as llvm_ir
from numba import types
from numba.extending import intrinsic

__all__ = ["seed_states", "next_u64", "next_double", "seed_streams", "normal_block", "fill_block_normals"]


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


# --- Counter-based streams and a vectorised Box–Muller: the Gaussian kernels' normals -------------------------------
#
# Every draw is a pure function of (key, counter): SplitMix64's output function applied to a Weyl sequence (Steele,
# Lea & Flood 2014; it passes BigCrush), so a block of draws is one loop without carried state, which LLVM
# vectorises; a ziggurat (a table lookup and a rejection branch per draw, state carried from draw to draw) cannot
# be. Box–Muller in four dimensions turns five draws into four normals with one log (R² = −2 log(u₁u₂) ~ χ²₄, split
# into two circles by a third uniform), using branch-free ports of fdlibm's log, sin and cos kernels (within 1 ulp).
# Each chain owns a key (64 random bits) and a counter of draws. Streams of different keys are stretches of one
# period-2^64 sequence; two overlap with probability about chains² × draws / 2^64 (1e-9 for 256 chains of 4e5
# draws). The measurements behind these choices are in benchmarks/simulate_speed.py.

_GAMMA = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, the Weyl increment of SplitMix64
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_TWO_M53 = 1.0 / 9007199254740992.0
_QUARTER_PI = 0.7853981633974483
_ANGLE_STEP = 1.5707963267948966 * _TWO_M53  # π/2 × 2^-53, exact
# fdlibm e_log.c: ln 2 split in two, and the minimax coefficients of log(1+f) in s = f/(2+f).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_LG1, _LG2, _LG3, _LG4 = 6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01, \
    2.222219843214978396e-01
_LG5, _LG6, _LG7 = 1.818357216161805012e-01, 1.531383769920937332e-01, 1.479819860511658591e-01
# fdlibm k_sin.c and k_cos.c: sin and cos on [-π/4, π/4].
_S1, _S2, _S3 = -1.66666666666666324348e-01, 8.33333333332248946124e-03, -1.98412698298579493134e-04
_S4, _S5, _S6 = 2.75573137070700676789e-06, -2.50507602534068634195e-08, 1.58969099521155010221e-10
_C1, _C2, _C3 = 4.16666666666666019037e-02, -1.38888888888741095749e-03, 2.48015872894767294178e-05
_C4, _C5, _C6 = -2.75573143513906633035e-07, 2.08757232129817482790e-09, -1.13596475577881948265e-11


@intrinsic
def _bits_of(typingctx, x):
    """The IEEE-754 bits of a float64 as a uint64 (a free register move: numba has no scalar bit cast)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.IntType(64))
    return types.uint64(types.float64), codegen


@intrinsic
def _double_of(typingctx, x):
    """The float64 whose IEEE-754 bits are the uint64 ``x``."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.DoubleType())
    return types.float64(types.uint64), codegen


@nb.njit(inline="always")
def mix64(z):
    """SplitMix64's output function: a bijection of uint64 with full avalanche."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@nb.njit(inline="always")
def log_positive(x):
    """log(x) for a positive normal double, fdlibm's algorithm without its branches (which only handle zero,
    negative, subnormal, infinite and NaN arguments)."""
    # x = 2^k m with m in [√½, √2): offsetting the bits by those of √½ makes the exponent field roll over at √2
    # (FreeBSD msun's reduction, on all 64 bits at once), so that f = m − 1 is small on both sides.
    ix = np.int64(_bits_of(x) - np.uint64(0x3FE6A09E667F3BCD))
    k = ix >> np.int64(52)
    m = _double_of(_bits_of(x) - np.uint64(k << np.int64(52)))
    f = m - 1.0
    dk = np.float64(k)
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    # fdlibm's two interleaved halves of the polynomial, summed last (written as one sum, the contraction into a
    # multiply-add chains them: measured 1.5x slower).
    t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
    t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
    r = t2 + t1
    hfsq = 0.5 * f * f
    return dk * _LN2_HI - ((hfsq - (s * (hfsq + r) + dk * _LN2_LO)) - f)


@nb.njit(inline="always")
def sin_kernel(x):
    """sin(x) for |x| <= π/4 (fdlibm __kernel_sin)."""
    z = x * x
    return x + z * x * (_S1 + z * (_S2 + z * (_S3 + z * (_S4 + z * (_S5 + z * _S6)))))


@nb.njit(inline="always")
def cos_kernel(x):
    """cos(x) for |x| <= π/4 (fdlibm __kernel_cos)."""
    z = x * x
    r = z * (_C1 + z * (_C2 + z * (_C3 + z * (_C4 + z * (_C5 + z * _C6)))))
    hz = 0.5 * z
    w = 1.0 - hz
    return w + (((1.0 - w) - hz) + z * r)


@nb.njit(inline="always")
def _on_circle(r, rho):
    """The point at radius ``rho`` and a uniform angle drawn from the 64-bit word ``r``.

    The angle: x uniform in [−π/4, π/4) (53 bits), then a random symmetry of the square (3 more bits: swap the
    coordinates, flip each sign). The 8 symmetries carry the wedge onto each quarter of the circle twice (a flip of
    sin maps the wedge onto itself), so the point is uniform on the circle.
    """
    sign = np.uint64(0x8000000000000000)
    x = np.float64(r & np.uint64(0x1FFFFFFFFFFFFF)) * _ANGLE_STEP - _QUARTER_PI
    c = cos_kernel(x)
    s = sin_kernel(x)
    swap = (r & sign) != np.uint64(0)
    a = s if swap else c
    b = c if swap else s
    return (_double_of(_bits_of(rho * a) ^ ((r << np.uint64(1)) & sign)),
            _double_of(_bits_of(rho * b) ^ ((r << np.uint64(2)) & sign)))


@nb.njit(inline="always")
def _unit_open(r):
    """(k + 1) 2^-53 in (0, 1] from the top 53 bits k of ``r`` (exact)."""
    return np.float64(r >> np.uint64(11)) * _TWO_M53 + _TWO_M53


#: 64-bit draws per normal in ``normal_block``: 5 draws give 4 normals.
DRAWS_PER_4 = 5


@nb.njit(error_model="numpy", fastmath={"contract"})
def normal_block(key, counter, out, n):
    """Fill ``out[:n]`` (``n`` a multiple of 4) with standard normals from draws ``counter, counter + 1, …`` of
    stream ``key``, and return the counter after the last draw used (``counter + 5n/4``). A block is a function of
    ``(key, counter, n)``.

    Box–Muller in four dimensions: 5 draws (u1, u2, v, two angles) give the 4 normals
    R √v (cos φ1, sin φ1) and R √(1−v) (cos φ2, sin φ2), with R² = −2 log(u1 u2) ~ χ²₄ (a sum of two exponentials)
    and v uniform: |z1|² ~ Uniform(0, 1) for a uniform point (z1, z2) on the 3-sphere in C². One log per 4 normals
    instead of one per 2 (see the note above). With u in (0, 1] on 53 bits, R <= √(212 ln 2) = 12.1. Quadruple j
    goes to j, j + n/4, j + n/2, j + 3n/4 (four unit-stride stores, which vectorise).
    """
    q = n // 4
    # Slices, so that the stores have indices numba knows are non-negative (``out[j + q]`` with a run-time ``q``
    # gets a negative-index wraparound test per store, which costs about 40%).
    o0 = out[:q]
    o1 = out[q:2 * q]
    o2 = out[2 * q:3 * q]
    o3 = out[3 * q:4 * q]
    g = _GAMMA
    weyl = key + counter * g  # the Weyl sequence key + i γ at draw i
    for j in range(q):
        r1 = mix64(weyl)
        r2 = mix64(weyl + g)
        r3 = mix64(weyl + g * np.uint64(2))
        r4 = mix64(weyl + g * np.uint64(3))
        r5 = mix64(weyl + g * np.uint64(4))
        weyl += g * np.uint64(DRAWS_PER_4)
        radius = math.sqrt(-2.0 * log_positive(_unit_open(r1) * _unit_open(r2)))
        v = np.float64(r3 >> np.uint64(11)) * _TWO_M53  # in [0, 1): 1 − v is exact
        o0[j], o1[j] = _on_circle(r4, radius * math.sqrt(v))
        o2[j], o3[j] = _on_circle(r5, radius * math.sqrt(1.0 - v))
    return counter + np.uint64(DRAWS_PER_4 * q)


def seed_streams(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` counter-based streams for ``normal_block``: shape ``(n, 2)`` uint64, a random key and a zero counter."""
    streams = np.zeros((n, 2), dtype=np.uint64)
    streams[:, 0] = rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)
    return streams


@nb.njit(parallel=True, cache=True)
def _fill_block_normals(streams, out):
    per = out.shape[1]
    for c in nb.prange(streams.shape[0]):
        buf = np.empty(per + (-per) % 4)
        streams[c, 1] = normal_block(streams[c, 0], streams[c, 1], buf, buf.size)
        out[c] = buf[:per]


def fill_block_normals(streams: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` (shape ``(streams, m)``) with normals by ``normal_block``, row ``c`` from stream ``c`` as one
    block of ``m`` rounded up to a multiple of 4; the counters advance in place."""
    _fill_block_normals(streams, out)
    return out
