"""Random streams for the numba kernels, one per chain, so that a seed gives the same numbers whatever the thread count.

Why by hand: numba's own ``np.random`` inside ``njit`` keeps one hidden state per thread (not reproducible across
thread counts), and a numpy ``Generator`` passed into numba is a single stream that threads cannot share. So every
chain owns a small stream seeded from the caller's ``numpy.random.Generator``:

- Gaussian noise (``normal_block``): counter-based SplitMix64 draws turned into normals by a vectorised Box–Muller
  transform, a block of draws at a time (see the section below for why not a ziggurat).
- Minibatch indices (``next_u64``, ``next_double``): xoshiro256++ (Blackman & Vigna 2019), drawn one at a time.

``tests/test_random.py`` checks the building blocks against numpy to the ulp, the distribution (moments,
Kolmogorov–Smirnov, tails, the Box–Muller pairs' radius and angle) and the streams' reproducibility.
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
# Why not a ziggurat (numpy's method, and this module's until the kernels were vectorised): the Gaussian kernels draw
# d normals per chain and step, and at d = 100 the draws cost a third of the dense kernel's matrix products. The
# ziggurat is fast per draw but serial (a table lookup and a rare rejection branch per draw, a xoshiro state carried
# from draw to draw): LLVM cannot put it in SIMD registers. Here every draw is a pure function of (key, counter):
# SplitMix64's output function applied to a Weyl sequence (Steele, Lea & Flood 2014; it passes BigCrush). Box–Muller
# turns each pair of draws into two normals with branch-free ports of fdlibm's log, sin and cos kernels (within
# 1 ulp). A block of draws is then one loop that LLVM vectorises (8 lanes with AVX-512): measured 0.57 ns per normal
# on 2 cores against 0.93 for the ziggurat, and the kernels' loops around it vectorise too. Each chain owns a key
# (64 random bits) and a counter of draws. Streams of different keys are stretches of one period-2^64 sequence;
# two overlap with probability about chains² × draws / 2^64 (1e-9 for 256 chains of 4e5 draws).
#
# Why not float32, which would double the lanes: measured only 1.3x faster here (the 64-bit draws dominate), for
# normals accurate to 1e-7 instead of 1e-16. Why not a SIMD ziggurat: a gather from a 256-entry table costs 1.4 cycles
# per element on this CPU (Zen 4), two per draw, more than the whole Box–Muller. Where the time goes, per normal on
# one core (1.13 ns): the log 0.48, sin and cos 0.25, the SplitMix64 draws 0.25, the square root 0.08.

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


@nb.njit(error_model="numpy", fastmath={"contract"})
def normal_block(key, counter, out, n):
    """Fill ``out[:n]`` (``n`` even) with standard normals from draws ``counter, …, counter + n − 1`` of stream
    ``key``; the caller advances its counter by ``n``. A block is a function of ``(key, counter, n)``.

    Draw pair j gives one normal at j and one at j + n/2 (two unit-stride stores, which vectorise). The radius uses
    53 bits, u = (k + 1) 2^-53 in (0, 1], so |x| <= √(106 ln 2) = 8.57 (a cut at probability 1e-17); the angle uses
    56 bits.
    """
    half = n // 2
    # Two slices, so that both stores have indices numba knows are non-negative (``out[j + half]`` with a run-time
    # ``half`` gets a negative-index wraparound test per store, which costs about 40%).
    lo = out[:half]
    hi = out[half:2 * half]
    sign = np.uint64(0x8000000000000000)
    weyl = key + counter * _GAMMA  # the Weyl sequence key + i γ at draw i = counter + 2j
    for j in range(half):
        r1 = mix64(weyl)
        r2 = mix64(weyl + _GAMMA)
        weyl += _GAMMA + _GAMMA
        u = np.float64(r1 >> np.uint64(11)) * _TWO_M53 + _TWO_M53  # exact: (k + 1) 2^-53
        rho = math.sqrt(-2.0 * log_positive(u))
        # The angle: x uniform in [−π/4, π/4) (53 bits), then a random symmetry of the square (3 bits: swap the
        # coordinates, flip each sign). The 8 symmetries carry the wedge onto each quarter of the circle twice (a
        # flip of sin maps the wedge onto itself), so (a, b) is uniform on the circle.
        x = np.float64(r2 & np.uint64(0x1FFFFFFFFFFFFF)) * _ANGLE_STEP - _QUARTER_PI
        cx = cos_kernel(x)
        sx = sin_kernel(x)
        swap = (r2 & sign) != np.uint64(0)
        a = sx if swap else cx
        b = cx if swap else sx
        lo[j] = _double_of(_bits_of(rho * a) ^ ((r2 << np.uint64(1)) & sign))
        hi[j] = _double_of(_bits_of(rho * b) ^ ((r2 << np.uint64(2)) & sign))


def seed_streams(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` counter-based streams for ``normal_block``: shape ``(n, 2)`` uint64, a random key and a zero counter."""
    streams = np.zeros((n, 2), dtype=np.uint64)
    streams[:, 0] = rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)
    return streams


@nb.njit(parallel=True, cache=True)
def _fill_block_normals(streams, out):
    per = out.shape[1]
    for c in nb.prange(streams.shape[0]):
        buf = np.empty(per + per % 2)
        normal_block(streams[c, 0], streams[c, 1], buf, buf.size)
        streams[c, 1] += np.uint64(buf.size)
        out[c] = buf[:per]


def fill_block_normals(streams: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` (shape ``(streams, m)``) with normals by ``normal_block``, row ``c`` from stream ``c`` as one
    block; the counters advance in place (by ``m`` rounded up to even)."""
    _fill_block_normals(streams, out)
    return out
