"""The numba Gaussian streams: the ziggurat tables close, the draws are standard normal, streams are reproducible."""

import numba
import numpy as np
from scipy import stats

from sde import _random


def test_ziggurat_tables_close():
    # With the right base-layer edge r the top layer's area equals every other layer's: 1e-11 allows rounding in
    # the 255-step recursion (each step loses a few ulps).
    *_, closing = _random.ziggurat_tables()
    assert abs(closing) < 1e-11
    # A wrong r breaks the identity visibly, so the check can fail.
    *_, bad = _random.ziggurat_tables(r=3.6)
    assert abs(bad) > 1e-3


def test_normals_are_standard_normal():
    # 2^21 draws; moments as z-scores and a KS test, each at family-wise confidence 0.999 over 5 tests.
    states = _random.seed_states(np.random.default_rng(12345), 64)
    out = np.empty((64, 2**15))
    x = _random.fill_normals(states, out).ravel()
    n = x.size
    zs = [x.mean() / np.sqrt(1 / n), (x.var() - 1) / np.sqrt(2 / n), np.mean(x**3) / np.sqrt(15 / n),
          (np.mean(x**4) - 3) / np.sqrt(96 / n)]
    from zcrit import z_critical

    zc = z_critical(0.999, 5)
    assert all(abs(z) < zc for z in zs), zs
    assert stats.kstest(x, "norm").pvalue > 0.001 / 5
    # The tail beyond r comes from the tail algorithm: its frequency matches P(|X| > r) within 4 standard errors.
    p = 2 * stats.norm.sf(_random.ZIGGURAT_R)
    k = np.sum(np.abs(x) > _random.ZIGGURAT_R)
    assert abs(k - n * p) < 4 * np.sqrt(n * p)


def test_streams_independent_of_thread_count():
    outs = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        states = _random.seed_states(np.random.default_rng(7), 8)
        outs.append(_random.fill_normals(states, np.empty((8, 1000))).copy())
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    np.testing.assert_array_equal(outs[0], outs[1])
