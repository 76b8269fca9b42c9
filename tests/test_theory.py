"""Closed forms: the eigenbasis solver against scipy's Lyapunov solvers, against sympy, and their limits."""

import numpy as np
import pytest
import sympy as sp
from hypothesis import given
from hypothesis import strategies as st

from quadratic import LeastSquares, Quadratic
from sde import eq7_loss, expected_loss, learning_curve, stationary_covariance, symbolic


def _problem(seed, d, rotate, commuting):
    rng = np.random.default_rng(seed)
    lam = rng.uniform(0.05, 1.0, d)
    if commuting:
        return Quadratic.from_spectrum(lam, rotate=rotate, rng=rng, noise_covariance=rng.uniform(0.0, 2.0, d),
                                       minimum=rng.standard_normal(d))
    a = rng.standard_normal((d, d))
    q = Quadratic.from_spectrum(lam, rotate=True, rng=rng)
    return Quadratic(q.hessian, noise_covariance=a @ a.T / d, minimum=rng.standard_normal(d))


settings_kw = dict(seed=st.integers(0, 2**32 - 1), d=st.integers(1, 6), rotate=st.booleans(),
                   commuting=st.booleans(), eta_frac=st.floats(0.01, 0.95), s=st.integers(1, 64),
                   mu=st.sampled_from([0.0, 0.5, 0.9]), gamma=st.sampled_from([0.0, 0.1]),
                   process=st.sampled_from(["sgd", "sde"]))


@given(**settings_kw)
def test_eigen_solver_matches_scipy_lyapunov(seed, d, rotate, commuting, eta_frac, s, mu, gamma, process):
    q = _problem(seed, d, rotate, commuting)
    eta = eta_frac * 2 * (1 + mu) / (q.lambda_max + gamma)
    kw = dict(process=process, momentum=mu, weight_decay=gamma)
    a = stationary_covariance(q, eta, s, **kw)
    b = stationary_covariance(q, eta, s, solver="scipy", **kw)
    # Both are exact; 1e-8 relative covers the conditioning of the augmented momentum system near the edge of
    # stability (eta_frac up to 0.95), where scipy's bilinear transform loses a few digits.
    np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10 * np.abs(b).max())


def test_paper_eq7_for_c_equal_h():
    q = Quadratic.from_spectrum([2.0, 1.0, 0.3], rotate=True, rng=np.random.default_rng(0))
    np.testing.assert_allclose(stationary_covariance(q, 0.1, 8, process="sde"), 0.1 / 16 * np.eye(3), atol=1e-15)
    assert expected_loss(q, 0.1, 8, process="sde") == pytest.approx(0.1 / 32 * q.trace, rel=1e-13)
    assert eq7_loss(q, 0.1, 8) == pytest.approx(0.1 / 32 * q.trace, rel=1e-15)
    # Any C: E(l) = eta Tr(C) / (4S) for the SDE.
    q2 = Quadratic(q.hessian, noise_covariance=np.diag([1.0, 0.0, 2.0]))
    assert expected_loss(q2, 0.1, 8, process="sde") == pytest.approx(0.1 * 3.0 / 32, rel=1e-12)
    # Discrete SGD, exact identity E(l) = (eta/4)(Tr(C)/S + Tr(H Σ H)).
    sig = stationary_covariance(q2, 0.3, 8)
    lhs = expected_loss(q2, 0.3, 8)
    assert lhs == pytest.approx(0.3 / 4 * (3.0 / 8 + np.trace(q2.hessian @ sig @ q2.hessian)), rel=1e-12)


def test_equal_ratio_gives_equal_sde_loss():
    q = Quadratic.from_spectrum(np.geomspace(1, 0.01, 20))
    vals = [expected_loss(q, 0.01 * b, 10 * b, process="sde") for b in (1, 2, 5, 10)]
    np.testing.assert_allclose(vals, vals[0], rtol=1e-13)
    sgd = [expected_loss(q, 0.01 * b, 10 * b) for b in (1, 10, 150)]
    assert sgd[0] < sgd[1] < sgd[2]  # the discrete correction grows with eta at fixed ratio


@given(eta=st.floats(0.01, 1.9), s=st.integers(1, 100), lam=st.floats(0.05, 1.0), c=st.floats(0.0, 3.0),
       mu=st.floats(0.0, 0.95), gamma=st.floats(0.0, 0.5))
def test_symbolic_matches_numeric(eta, s, lam, c, mu, gamma):
    a = lam + gamma
    eta = eta / a * (1 + mu) * 0.99  # inside the stability region
    q = Quadratic.from_spectrum([lam], noise_covariance=[c])
    sub = {symbolic.eta: eta, symbolic.S: s, symbolic.lam: lam, symbolic.c: c, symbolic.mu: mu,
           symbolic.gamma: gamma}
    num = stationary_covariance(q, eta, s, momentum=mu, weight_decay=gamma)[0, 0]
    sym = float(symbolic.momentum_stationary_variance(weight_decay=True).result.subs(sub))
    assert sym == pytest.approx(num, rel=1e-9, abs=1e-300)
    if mu == 0.0:
        sym0 = float(symbolic.sgd_stationary_variance(weight_decay=True).result.subs(sub))
        assert sym0 == pytest.approx(num, rel=1e-9, abs=1e-300)
    ou = float(symbolic.ou_stationary_variance(noise=symbolic.c).result.subs(sub | {symbolic.lam: a}))
    assert ou == pytest.approx(stationary_covariance(q, eta, s, process="sde", weight_decay=gamma)[0, 0], rel=1e-12)


def test_symbolic_derivations():
    em = symbolic.sgd_as_euler_maruyama()
    assert em.steps[2][1] == 0  # Euler–Maruyama at dt = eta is SGD
    assert not ({symbolic.eta, symbolic.S} & em.result.free_symbols)
    i, q = sp.symbols("i q", integer=True, positive=True)
    el = symbolic.ou_expected_loss().result
    assert sp.simplify(el - symbolic.eta / (4 * symbolic.S) * sp.Sum(sp.IndexedBase("lambda")[i], (i, 1, q))) == 0
    ser = symbolic.discrete_correction_series().result
    assert sp.simplify(ser.coeff(symbolic.eta, 2) - symbolic.lam**2 / (8 * symbolic.S)) == 0
    assert sp.simplify(symbolic.finite_data_factor().result
                       - (symbolic.N - symbolic.S) / (symbolic.S * (symbolic.N - 1))) == 0
    for d in symbolic.all_derivations():
        assert d.title in str(d) and "$" in d.latex()


def test_discrete_series_matches_numeric_correction():
    # E_sgd/E_eq7 − 1 ≈ eta Tr(H²)/(2 Tr H) to first order in eta.
    lam = np.array([1.0, 0.5, 0.2])
    q = Quadratic.from_spectrum(lam)
    for eta in (1e-3, 1e-2):
        rel = expected_loss(q, eta, 4) / eq7_loss(q, eta, 4) - 1
        first = eta * np.sum(lam**2) / (2 * np.sum(lam))
        assert abs(rel - first) < 2 * first * eta  # the O(eta²) remainder


@pytest.mark.parametrize("kw, match", [
    (dict(eta=0.0), "eta must be > 0"),
    (dict(eta=-1.0), "eta must be > 0"),
    (dict(eta=2.0), r"eta\*lambda_max = 2 >= 2"),
    (dict(eta=4.5, momentum=0.5), r"2\(1\+momentum\)"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(batch_size=11, dataset_size=10), "batch_size must be <= dataset_size N = 10"),
    (dict(momentum=1.0), r"momentum must lie in \[0.0, 1.0\)"),
    (dict(weight_decay=-0.1), "weight_decay must be >= 0"),
    (dict(process="ode"), "process must be one of"),
    (dict(noise="minibatch"), "needs a finite-data problem"),
])
def test_bad_input_is_rejected(kw, match):
    q = Quadratic.from_spectrum([1.0, 0.5])
    args = dict(eta=0.1, batch_size=4) | kw
    with pytest.raises(ValueError, match=match):
        expected_loss(q, args.pop("eta"), args.pop("batch_size"), **args)


def test_learning_curve_reaches_stationarity():
    rng = np.random.default_rng(0)
    q = _problem(3, 5, True, False)
    k = 4000
    for mu, gamma in [(0.0, 0.0), (0.7, 0.05)]:
        lc = learning_curve(q, np.full(k, 0.3), np.full(k, 1 / 8), momentum=mu, weight_decay=gamma,
                            theta0=rng.standard_normal(5))
        assert lc[-1] == pytest.approx(expected_loss(q, 0.3, 8, momentum=mu, weight_decay=gamma), rel=1e-9)


def test_minibatch_theory_reduces_to_gaussian_without_multiplicative_noise():
    # With one example per direction repeated... use a large N and tiny eta: the multiplicative term is O(eta),
    # so the exact minibatch value approaches the Gaussian one with C = Σ*.
    p = LeastSquares.sample(2000, [1.0, 0.4, 0.1], noise_std=1.0, rng=np.random.default_rng(1))
    for eta in (1e-2, 1e-3):
        mb = expected_loss(p, eta, 5, noise="minibatch", sampling="with")
        ga = expected_loss(p, eta, 5)
        assert abs(mb / ga - 1) < 2 * eta * p.trace  # the relative size of M(Σ) ~ eta Tr(A)/(2S)
    with pytest.raises(ValueError, match="no closed-form stationary law for sampling='epoch'"):
        expected_loss(p, 0.1, 5, noise="minibatch", sampling="epoch")
