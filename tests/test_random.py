"""The numba random streams: the Box–Muller building blocks to the ulp, the draws standard normal (moments, KS, tails,
the quadruples' radius, split and angles), the streams reproducible and independent."""

import math

import numba
import numpy as np
import pytest
from scipy import stats

from sde import _random
from sgd_noise_common.stats import sidak_z as z_critical

ULP = np.finfo(np.float64).eps


@numba.njit
def _log_all(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = _random.log_positive(x[i])
    return out


@numba.njit
def _sincos_all(x):
    out = np.empty((2, x.size))
    for i in range(x.size):
        out[0, i] = _random.sin_kernel(x[i])
        out[1, i] = _random.cos_kernel(x[i])
    return out


def _normals(seed, streams=64, per=2**15):
    s = _random.seed_streams(np.random.default_rng(seed), streams)
    return _random.fill_block_normals(s, np.empty((streams, per)))


def test_log_within_two_ulps_of_numpy():
    # The Box–Muller radius takes log of u in [2^-53, 1]; test that range densely on a log scale, plus the whole
    # normal range and the points where the mantissa reduction switches (√2 and powers of two).
    rng = np.random.default_rng(0)
    x = np.concatenate([np.exp(-rng.uniform(0.0, 37.0, 200_000)), rng.uniform(0.0, 1.0, 100_000),
                        np.exp(rng.uniform(-700.0, 700.0, 100_000)),
                        np.nextafter(np.sqrt(2.0) * 2.0 ** np.arange(-60, 60), np.inf),
                        np.sqrt(2.0) * 2.0 ** np.arange(-60, 60), 2.0 ** np.arange(-60, 60), [1.0]])
    x = x[x > 0]
    ref = np.log(x)
    err = np.abs(_log_all(x) - ref)
    # fdlibm's log is within 1 ulp; allow 2 for numpy's own rounding. At x = 1 the log must be exactly 0.
    assert np.all(err <= 2 * ULP * np.maximum(np.abs(ref), np.finfo(np.float64).tiny)), err.max()
    assert _log_all(np.array([1.0]))[0] == 0.0


def test_sin_cos_kernels_within_one_ulp():
    x = np.concatenate([np.random.default_rng(1).uniform(-math.pi / 4, math.pi / 4, 200_000), [0.0, 1e-300]])
    sc = _sincos_all(x)
    assert np.all(np.abs(sc[0] - np.sin(x)) <= ULP * np.maximum(np.abs(np.sin(x)), 1e-300))
    assert np.all(np.abs(sc[1] - np.cos(x)) <= ULP)


def test_normals_are_standard_normal():
    # 2^21 draws. Moments as z-scores, a KS test and a tail count, at family-wise confidence 0.999 over 6 tests.
    x = _normals(12345).ravel()
    n = x.size
    zc = z_critical(0.999, 6)
    zs = [x.mean() / np.sqrt(1 / n), (x.var() - 1) / np.sqrt(2 / n), np.mean(x**3) / np.sqrt(15 / n),
          (np.mean(x**4) - 3) / np.sqrt(96 / n)]
    assert all(abs(z) < zc for z in zs), zs
    assert stats.kstest(x, "norm").pvalue > 0.001 / 6
    # Tails: the count beyond 4 (expected 133) as a Poisson z-score; none beyond the radius cut √(212 ln 2)
    # (u1 u2 >= 2^-106).
    p = 2 * stats.norm.sf(4.0)
    k = np.sum(np.abs(x) > 4.0)
    assert abs(k - n * p) / np.sqrt(n * p) < zc
    assert np.abs(x).max() <= math.sqrt(212 * math.log(2))


def test_box_muller_quadruples_have_chi4_radius_uniform_split_and_angles():
    # Quadruple j of a block is (x[j], x[j + n/4], x[j + n/2], x[j + 3n/4]) = R (√v cos φ1, √v sin φ1, √(1−v) cos φ2,
    # √(1−v) sin φ2): R² ~ χ²₄, v uniform, both angles uniform, R and v independent. A wrong quadrant, sign, split or
    # radius shows in one of these tests.
    x = _normals(7, streams=16, per=2**16)
    q = x.shape[1] // 4
    a, b, c, d = (x[:, k * q:(k + 1) * q].ravel() for k in range(4))
    r2 = a * a + b * b + c * c + d * d
    v = (a * a + b * b) / r2
    alpha = 0.001 / 5
    assert stats.kstest(r2, "chi2", args=(4,)).pvalue > alpha
    assert stats.kstest(v, "uniform").pvalue > alpha
    for y, z in ((a, b), (c, d)):
        assert stats.kstest(np.arctan2(z, y), "uniform", args=(-math.pi, 2 * math.pi)).pvalue > alpha
    # Independence of radius and split: Spearman correlation as a z-score.
    rho = stats.spearmanr(r2[:100_000], v[:100_000]).statistic
    assert abs(rho) * math.sqrt(100_000) < z_critical(1 - alpha, 1)


def test_draws_uncorrelated_within_and_across_streams():
    # Lag-1 correlation within a block, and the correlation between streams of neighbouring keys, as z-scores.
    x = _normals(3, streams=2, per=2**20)
    n = x.shape[1]
    zc = z_critical(0.999, 3)
    for row in x:
        assert abs(np.corrcoef(row[:-1], row[1:])[0, 1]) * math.sqrt(n) < zc
    keys = np.array([[1, 0], [2, 0]], dtype=np.uint64)  # adjacent keys, the worst case for a Weyl sequence
    y = _random.fill_block_normals(keys, np.empty((2, n)))
    assert abs(np.corrcoef(y[0], y[1])[0, 1]) * math.sqrt(n) < zc


def test_streams_reproducible_and_counters_advance():
    s = _random.seed_streams(np.random.default_rng(5), 4)
    first = _random.fill_block_normals(s.copy(), np.empty((4, 100)))
    np.testing.assert_array_equal(first, _random.fill_block_normals(s.copy(), np.empty((4, 100))))
    t = s.copy()
    _random.fill_block_normals(t, np.empty((4, 101)))  # widths round up to a multiple of 4: 104 normals, 130 draws
    assert np.all(t[:, 1] == 130) and np.all(t[:, 0] == s[:, 0])
    second = _random.fill_block_normals(t, np.empty((4, 100)))
    assert not np.any(np.isin(second, first))


def test_streams_independent_of_thread_count():
    outs = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        outs.append(_normals(7, streams=8, per=1000))
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("n", [4, 12, 3200])
def test_block_is_a_function_of_key_counter_and_size(n):
    out = np.empty(n)
    end = _random.normal_block(np.uint64(9), np.uint64(40), out, n)
    assert end == 40 + n * _random.DRAWS_PER_4 // 4
    again = np.full(n + 4, np.nan)
    _random.normal_block(np.uint64(9), np.uint64(40), again, n)
    np.testing.assert_array_equal(out, again[:n])
    assert np.all(np.isnan(again[n:]))  # writes nothing beyond n


def _plus_one(x):
    return x + 1


def test_kernel_caches_dropped_when_their_dependencies_change():
    # numba's cache does not see edits in another module (numba #1833); sde._kernels stamps its cache with a digest
    # of sde._random and empties it when the digest changes. Exercised here on a throw-away cached function.
    from sde import _kernels

    first = numba.njit(cache=True)(_plus_one)
    first(1)
    digest = np.random.default_rng().bytes(32).hex()  # a digest no earlier run left behind
    assert _kernels.drop_stale_caches([first], digest)  # a new digest: emptied
    assert not _kernels.drop_stale_caches([first], digest)  # the same digest: kept
    second = numba.njit(cache=True)(_plus_one)
    second(1)
    assert sum(second.stats.cache_misses.values()) == 1  # compiled afresh after the emptying ...
    third = numba.njit(cache=True)(_plus_one)
    third(1)
    assert sum(third.stats.cache_hits.values()) == 1  # ... and cached again since
