"""Simulators against the exact closed forms: z-tests with stated confidence and a Bonferroni/Šidák correction."""

import subprocess
import sys

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quadratic import LeastSquares, Quadratic, batch_noise_factor
from sde import (
    EULER_WEAK_ORDER,
    CyclicBatchSize,
    CyclicLR,
    SimulationDiverged,
    StepDecay,
    expected_loss,
    learning_curve,
    simulate,
)
from sgd_noise_common.stats import sidak_z as z_critical

CONFIDENCE = 0.999  # family-wise, per property test
EXAMPLES = 20


@settings(max_examples=EXAMPLES)
@given(seed=st.integers(0, 2**32 - 1), d=st.integers(1, 8), rotate=st.booleans(),
       noise=st.sampled_from(["h", "commuting", "dense"]), eta_frac=st.floats(0.05, 0.9), s=st.integers(1, 32),
       mu=st.sampled_from([0.0, 0.0, 0.5, 0.9]), gamma=st.sampled_from([0.0, 0.05]))
def test_sgd_matches_exact_stationary_loss(seed, d, rotate, noise, eta_frac, s, mu, gamma):
    rng = np.random.default_rng(seed)
    lam = rng.uniform(0.1, 1.0, d)  # λ_min >= λ_max/10 keeps relaxation well inside the run
    if noise == "h":
        q = Quadratic.from_spectrum(lam, rotate=rotate, rng=rng, minimum=rng.standard_normal(d))
    elif noise == "commuting":
        q = Quadratic.from_spectrum(lam, rotate=rotate, rng=rng, noise_covariance=rng.uniform(0.1, 2, d))
    else:
        a = rng.standard_normal((d, d))
        q = Quadratic(Quadratic.from_spectrum(lam, rotate=True, rng=rng).hessian, noise_covariance=a @ a.T / d)
    eta = eta_frac * 2 * (1 + mu) / (q.lambda_max + gamma)
    res = simulate(q, eta, s, steps=4000, chains=64, momentum=mu, weight_decay=gamma, rng=rng)
    exact = expected_loss(q, eta, s, momentum=mu, weight_decay=gamma)
    assert abs(res.z_score(exact)) < z_critical(CONFIDENCE, EXAMPLES), (res.mean_loss, res.stderr, exact)


@settings(max_examples=10)
@given(seed=st.integers(0, 2**32 - 1), ratio=st.sampled_from([0.002, 0.01]), rotate=st.booleans())
def test_equal_ratio_gives_equal_sde_loss(seed, ratio, rotate):
    # Two (eta, S) with the same ratio: their exact-OU stationary losses agree (two-sample z-test, 0.999 over 10).
    rng = np.random.default_rng(seed)
    q = Quadratic.from_spectrum(np.geomspace(1, 0.1, 10), rotate=rotate, rng=rng)
    a = simulate(q, ratio * 5, 5, steps=6000, chains=64, method="exact", rng=rng)
    b = simulate(q, ratio * 40, 40, steps=6000, chains=64, method="exact", rng=rng)
    z = (a.mean_loss - b.mean_loss) / np.hypot(a.stderr, b.stderr)
    assert abs(z) < z_critical(CONFIDENCE, 10)


def test_dense_and_eigen_kernels_agree():
    # Same seed, commuting noise: the dense path draws the same normals and multiplies them by diag(√c), so the
    # two agree to rounding (1e-12 relative: a BLAS product against a scalar multiply).
    q = Quadratic.from_spectrum([1.0, 0.4, 0.1, 0.05], rotate=True, rng=np.random.default_rng(0),
                                noise_covariance=[0.5, 1.0, 2.0, 0.0])
    for kw in (dict(), dict(momentum=0.5), dict(method="exact")):
        a = simulate(q, 0.5, 4, steps=2000, chains=16, kernel="eigen", rng=np.random.default_rng(1), **kw)
        b = simulate(q, 0.5, 4, steps=2000, chains=16, kernel="dense", rng=np.random.default_rng(1), **kw)
        assert (a.kernel, b.kernel) == ("eigen", "dense")
        np.testing.assert_allclose(a.chain_means, b.chain_means, rtol=1e-10)
    with pytest.raises(ValueError, match="kernel='eigen' needs a noise covariance that commutes"):
        simulate(Quadratic(np.diag([1.0, 2.0]), noise_covariance=np.ones((2, 2))), 0.1, 1, steps=10, chains=2,
                 kernel="eigen", rng=0)


def test_exact_ou_sampler_matches_ou_for_any_dt():
    a = np.random.default_rng(3).standard_normal((4, 4))
    q = Quadratic(Quadratic.from_spectrum([1.0, 0.5, 0.2, 0.1], rotate=True, rng=np.random.default_rng(2)).hessian,
                  noise_covariance=a @ a.T / 4)
    exact = expected_loss(q, 0.2, 4, process="sde")
    for dt in (0.2, 1.0, 3.0):
        r = simulate(q, 0.2, 4, steps=3000, chains=128, method="exact", dt=dt, rng=np.random.default_rng(5))
        assert abs(r.z_score(exact)) < z_critical(CONFIDENCE, 3)


@pytest.mark.slow
def test_euler_maruyama_weak_order():
    # Bias of the Euler–Maruyama stationary loss against the OU value, at four dt: the fitted log-log slope must
    # agree with the slope of the exact EM bias (z-test on the slope, 0.999), and that slope tends to
    # EULER_WEAK_ORDER as dt → 0. Each point is also z-tested against the exact EM value ((eta/dt)·SGD(dt)).
    q = Quadratic.from_spectrum([1.0, 0.6, 0.3, 0.2])
    eta, s = 0.1, 1
    ou = expected_loss(q, eta, s, process="sde")
    dts = np.array([0.2, 0.1, 0.05, 0.025])
    bias, se = [], []
    for dt in dts:
        r = simulate(q, eta, s, dt=dt, steps=int(40 / dt) + 2000, chains=1024, rng=np.random.default_rng(11))
        em_exact = eta / dt * expected_loss(q, dt, s)
        assert abs(r.z_score(em_exact)) < z_critical(CONFIDENCE, 5)
        bias.append(r.mean_loss - ou)
        se.append(r.stderr)
    bias, se = np.array(bias), np.array(se)
    y, w = np.log(bias), (bias / se) ** 2  # var(log bias) ≈ (se/bias)²
    x = np.log(dts)
    xm = np.sum(w * x) / np.sum(w)
    slope = np.sum(w * (x - xm) * y) / np.sum(w * (x - xm) ** 2)
    slope_se = 1.0 / np.sqrt(np.sum(w * (x - xm) ** 2))
    exact_bias = np.array([eta / dt * expected_loss(q, dt, s) - ou for dt in dts])
    exact_slope = np.polyfit(x, np.log(exact_bias), 1, w=np.sqrt(w))[0]
    assert abs(slope - exact_slope) / slope_se < z_critical(CONFIDENCE, 5)
    tiny = np.array([1e-4, 1e-5])
    tiny_slope = np.diff(np.log([eta / dt * expected_loss(q, dt, s) - ou for dt in tiny]))[0] / np.diff(np.log(tiny))[0]
    assert abs(tiny_slope - EULER_WEAK_ORDER) < 1e-3


def test_schedules_follow_the_exact_learning_curve():
    # Chain-averaged curve against the moment recursion at 6 recorded points each, 0.999 over all 18 points.
    q = Quadratic.from_spectrum([1.0, 0.5, 0.2], rotate=True, rng=np.random.default_rng(0))
    theta0 = np.array([1.0, -1.0, 0.5])
    steps = 300
    for sched in (CyclicLR(0.2, 100), CyclicBatchSize(0.2, 100), StepDecay(0.5, 100)):
        r = simulate(q, 0.5, 8, steps=steps, chains=512, schedule=sched, record_every=50, theta0=theta0,
                     rng=np.random.default_rng(4), burn_in=0)
        etas, sizes = sched.values(0.5, 8, steps)
        exact = learning_curve(q, etas, [batch_noise_factor(int(b)) for b in sizes], theta0=theta0)[r.curve_steps]
        z = (r.curve[1:] - exact[1:]) / r.curve_stderr[1:]
        assert np.all(np.abs(z) < z_critical(CONFIDENCE, 18)), z
        assert r.curve[0] == pytest.approx(exact[0])


@pytest.mark.parametrize("sampling", ["with", "without"])
def test_minibatch_sgd_matches_exact_multiplicative_theory(sampling):
    p = LeastSquares.sample(200, [1.0, 0.5, 0.2, 0.1], noise_std=1.0, rng=np.random.default_rng(8))
    for kw in (dict(), dict(momentum=0.5, weight_decay=0.1)):
        r = simulate(p, 0.4, 8, steps=8000, chains=128, noise="minibatch", sampling=sampling,
                     rng=np.random.default_rng(9), **kw)
        exact = expected_loss(p, 0.4, 8, noise="minibatch", sampling=sampling, **kw)
        assert abs(r.z_score(exact)) < z_critical(CONFIDENCE, 4), (r.mean_loss, r.stderr, exact)
        # The Gaussian-noise model (C = Σ*) misses the multiplicative noise: the simulation resolves the gap.
        gauss = expected_loss(p, 0.4, 8, dataset_size=None if sampling == "with" else 200, **kw)
        assert abs(r.z_score(gauss)) > 5


def test_reproducible_whatever_the_thread_count():
    q = Quadratic.from_spectrum([1.0, 0.3], rotate=True, rng=np.random.default_rng(0))
    p = LeastSquares.sample(50, [1.0, 0.3], rng=np.random.default_rng(1))
    out = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        a = simulate(q, 0.3, 2, steps=500, chains=7, rng=42).chain_means
        b = simulate(p, 0.3, 5, steps=500, chains=7, rng=42, noise="minibatch", sampling="epoch").chain_means
        out.append((a, b))
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])


def test_bad_input_and_divergence():
    q = Quadratic.from_spectrum([1.0, 0.5])
    with pytest.raises(ValueError, match=r"eta\*lambda_max = 2.5 >= 2"):
        simulate(q, 2.5, 1, steps=10, chains=2, rng=0)
    with pytest.raises(ValueError, match="need eta < 2"):
        simulate(q, 2.5, 1, steps=10, chains=2, rng=0, schedule=CyclicLR(0.2, 4))
    with pytest.raises(ValueError, match=r"factor must lie in \[0.0, 1.0\]"):
        simulate(q, 0.1, 1, steps=10, chains=2, rng=0, schedule=StepDecay(2.0, 5))
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        simulate(q, 0.1, 1, steps=0, chains=2, rng=0)
    with pytest.raises(ValueError, match="rng is required"):
        simulate(q, 0.1, 1, steps=10, chains=2, rng=None)
    with pytest.raises(ValueError, match="dt\\*\\(lambda_max\\+weight_decay\\) = 2.5 >= 2"):
        simulate(q, 0.1, 1, steps=10, chains=2, dt=2.5, rng=0)
    with pytest.raises(ValueError, match="batch_size must be <= dataset_size N = 10; the schedule reaches S = 50"):
        simulate(q, 0.1, 10, steps=10, chains=2, dataset_size=10, schedule=CyclicBatchSize(0.2, 4), rng=0)
    # Multiplicative minibatch noise can diverge below eta*lambda_max = 2: a clear error, not NaN.
    p = LeastSquares.sample(20, [1.0] * 10, noise_std=1.0, rng=np.random.default_rng(0))
    with pytest.raises((SimulationDiverged, ValueError), match="diverged|no stationary distribution"):
        simulate(p, 1.9 / p.lambda_max, 1, steps=20000, chains=4, noise="minibatch", sampling="with", rng=0)


def test_compiled_code_is_cached_for_a_second_process():
    code = ("import numpy as np; from quadratic import Quadratic; from sde import simulate, _kernels\n"
            "simulate(Quadratic.from_spectrum([1.0]), 0.1, 1, steps=10, chains=2, rng=0, burn_in=0)\n"
            "print(sum(_kernels.gaussian_kernel.stats.cache_hits.values()))")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True) for _ in range(2)]
    assert int(runs[1].stdout.strip()) >= 1, runs[1].stdout
