"""Invariants of the theory as properties over the problems and settings drawn by ``quadratic.strategies``.

Every tolerance is derived from a known source of error, not tuned. Three recur:

* The SDE's closed forms are products and quotients of the data, accurate to a few ulps: rtol 1e-12 leaves a
  margin of ~4500 ulps (and covers cond(H) <= 1e3 in sums over the d² entries of Σ).
* The discrete-time transfer factor of ``sde.theory`` is η²/(1 − (1−ηa_i)(1−ηa_j)) (and a 4×4 solve of the same
  conditioning with momentum): the subtraction loses digits like eps/(η a_min), a_min = λ_min + γ (measured against
  50-digit mpmath: 4e-11 relative at ηa = 1e-6). ``_discrete_rtol`` is that bound with a 256× margin.
* When C commutes with a rotated H, ``Quadratic`` treats eigenvalues closer than ``DEGENERACY_RTOL``·λ_max as one
  eigenspace and picks the basis in it that diagonalises C, so the closed forms solve the problem for a Hessian
  that differs from H by up to that spread w: Σ is off by ~w/a_min relative (``_cluster_rtol``; 1e-10 relative for
  eigenvalues 1 and 1 + 1e-10). Tests that compare with H itself (residuals, identities with Tr(HΣH)) allow it;
  tests that compare two results of the same problem need not."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import quadratic.strategies as qst
from quadratic import Quadratic, batch_noise_factor
from quadratic.problem import DEGENERACY_RTOL
from sde import eq7_loss, expected_loss, stationary_covariance

EPS = np.finfo(float).eps
EXAMPLES = 60  # per property: ~0.1-0.3 s each, the file in a few seconds


def _discrete_rtol(q, s):
    """Relative accuracy of the discrete (``process="sgd"``) closed forms for problem ``q`` under setting ``s``."""
    return 256 * EPS * (1.0 + 1.0 / (s.eta * (q.eigenvalues.min() + s.weight_decay)))


def _cluster_rtol(q, s):
    """Relative error from solving with the eigenvalues of a near-degenerate cluster of H treated as equal."""
    if q.is_diagonal or not q.commutes:
        return 0.0
    lam = np.sort(q.eigenvalues)
    clusters = np.split(lam, np.flatnonzero(np.diff(lam) > DEGENERACY_RTOL * lam[-1]) + 1)
    return 16 * max(c[-1] - c[0] for c in clusters) / (lam[0] + s.weight_decay)


def _basis_atol(q, s, sig):
    """Absolute accuracy of entries of Σ: the eigenbasis V of H is exact to eps·‖H‖, which perturbs entries by
    about eps·cond(H_γ)·max|Σ| (16·d× margin)."""
    a = q.eigenvalues + s.weight_decay
    return 16 * q.dim * EPS * a.max() / a.min() * np.abs(sig).max()


def _sde(q, s, **kw):
    return expected_loss(q, s.eta, s.batch_size, process="sde", **s.kwargs, **kw)


def _sgd(q, s, **kw):
    return expected_loss(q, s.eta, s.batch_size, process="sgd", **s.kwargs, **kw)


# ----------------------------------------------------------------------------------------------- the strategies
def test_all_names_exist():
    for name in qst.__all__:
        assert hasattr(qst, name), name


@settings(max_examples=EXAMPLES)
@given(kind=st.sampled_from(qst.NOISE_KINDS), rotated=st.booleans(), data=st.data())
def test_strategies_draw_what_they_declare(kind, rotated, data):
    q, s = data.draw(qst.problems_with_settings(noise=kind, rotated=rotated, shifted=None))
    assert 1 <= q.dim <= qst.MAX_DIM
    # Eigenvalues of a rotated H come back from eigh with an error of a few eps·λ_max.
    slack = 16 * EPS * qst.MAX_EIG
    assert qst.MIN_EIG - slack <= q.eigenvalues.min() and q.lambda_max <= qst.MAX_EIG + slack
    assert q.commutes == (kind != "noncommuting")
    # A "rotated" 1×1 H is still diagonal.
    assert q.is_diagonal == ((not rotated or q.dim == 1) and kind != "noncommuting")
    if kind == "equal":
        np.testing.assert_array_equal(q.noise_covariance, q.hessian)
    assert 1 <= s.batch_size <= 1000 and 0.0 <= s.momentum <= 0.95 and 0.0 <= s.weight_decay <= 1.0
    # Stable with the documented 10 % margin (one ulp of slack for the product η(λ_max + γ)).
    assert s.stability_fraction(q.lambda_max) <= qst.MAX_FRACTION * (1 + 4 * EPS)
    assert np.isfinite(_sgd(q, s))


# ---------------------------------------------------------------------------------------------- the properties
@settings(max_examples=EXAMPLES)
@given(case=qst.problems_with_settings(shifted=None), k=st.integers(2, 64))
def test_sde_loss_depends_on_ratio_only(case, k):
    """(a) The OU process sees η and S only through η/S (η/(1−μ)/S with momentum), for any C, γ and θ*."""
    q, s = case
    big = s.scaled(k)
    # rtol 1e-12: the two differ only in the rounding of kη/(kS), a few ulps.
    assert _sde(q, big) == pytest.approx(_sde(q, s), rel=1e-12)
    sig = stationary_covariance(q, s.eta, s.batch_size, process="sde", **s.kwargs)
    big_sig = stationary_covariance(q, big.eta, big.batch_size, process="sde", **big.kwargs)
    # Entries that cancel to ~0 in the parameter basis are accurate only relative to the largest one.
    np.testing.assert_allclose(big_sig, sig, rtol=1e-12, atol=1e-12 * np.abs(sig).max())


@settings(max_examples=EXAMPLES)
@given(case=qst.problems_with_settings(max_momentum=0.0, min_fraction=1e-2, max_fraction=0.45))
def test_discrete_gap_halves_with_eta(case):
    r"""(b) At fixed η/S the gap between discrete SGD and the SDE is O(η): halving (η, S) halves it, up to the
    next order, which is bounded exactly.

    In the eigenbasis only the diagonal of C̃ = VᵀCV enters the loss, and for μ = 0 the exact forms give
    E_sgd / E_sde − 1 = Σ_i w_i x_i/(1 − x_i), x_i = η a_i/2, w_i ∝ λ_i c̃_ii / a_i (w_i >= 0, Σ w_i = 1), any C.
    Term by term, gap(η)/gap(2η) = (1 − x)/(2 − x) with x the value at 2η, so the ratio lies in
    [(1 − x_max)/(2 − x_max), 1/2]: 1/2 up to the next-order term x_max/4.
    """
    q, s = case
    big = s.scaled(2)  # at most 0.9 of the stability bound (max_fraction=0.45 above)
    small_gap = _sgd(q, s) - _sde(q, s)
    big_gap = _sgd(q, big) - _sde(q, big)
    x_max = big.eta * (q.lambda_max + s.weight_decay) / 2
    ratio = small_gap / big_gap
    # Each gap is a difference of two losses of size E, each accurate to _discrete_rtol relative.
    tol = ratio * (_discrete_rtol(q, s) * _sgd(q, s) / small_gap + _discrete_rtol(q, big) * _sgd(q, big) / big_gap)
    assert (1 - x_max) / (2 - x_max) - tol <= ratio <= 0.5 + tol


@settings(max_examples=EXAMPLES)
@given(case=qst.problems_with_settings(noise="equal", max_momentum=0.0, max_weight_decay=0.0))
def test_eq7_is_the_first_order_of_discrete_sgd(case):
    r"""(b) With C = H: E_sgd = Eq. (7)·(1 + η Tr(H²)/(2 Tr H) + R), i.e. η Tr H/(4S) + η² Tr(H²)/(8S) + …, with
    the remainder R = Σ w_i x_i²/(1 − x_i) (w_i = λ_i/Tr H, x_i = ηλ_i/2) between Σ w_i x_i² and that over 1 − x_max.
    """
    q, s = case
    lam, eta = q.eigenvalues, s.eta
    g = _sgd(q, s) / eq7_loss(q, eta, s.batch_size) - 1
    rem = g - eta * np.sum(lam**2) / (2 * np.sum(lam))
    lo = eta**2 * np.sum(lam**3) / (4 * np.sum(lam))
    hi = lo / (1 - eta * q.lambda_max / 2)
    tol = (_discrete_rtol(q, s) + _cluster_rtol(q, s)) * (1 + g)
    assert lo - tol <= rem <= hi + tol


@settings(max_examples=EXAMPLES)
@given(case=qst.problems_with_settings(shifted=None))
def test_discrete_correction_only_adds(case):
    """E_sgd >= E_sde for every stable setting: per eigendirection the discrete factor 1/(2 − ηa/(1+μ)) >= 1/2
    (the loss needs only the diagonal of VᵀCV, which is >= 0). This is the example of docs/checks.md."""
    q, s = case
    assert _sgd(q, s) >= _sde(q, s)


@settings(max_examples=EXAMPLES)
@given(case=qst.problems_with_settings(max_momentum=0.0, shifted=None))
def test_momentum_tends_to_plain_sgd(case):
    """(c) The momentum solution (a 4×4 solve per pair of directions) at μ = 1e-15 matches the plain one (μ = 0
    exactly takes the plain code path, so comparing at 0 itself would compare a function with itself)."""
    q, s = case
    mu = 1e-15
    # |d log σ_i²/dμ| = |1 − (ηa_i)/(2 − ηa_i)| <= 10 at μ = 0 for ηa_i <= 1.8, so the true change is <= 10μ.
    rtol = 10 * mu + 2 * _discrete_rtol(q, s)
    plain = stationary_covariance(q, s.eta, s.batch_size, **s.kwargs)
    heavy = stationary_covariance(q, s.eta, s.batch_size, momentum=mu, weight_decay=s.weight_decay)
    np.testing.assert_allclose(heavy, plain, rtol=rtol, atol=rtol * np.abs(plain).max())
    assert expected_loss(q, s.eta, s.batch_size, momentum=mu, weight_decay=s.weight_decay) == pytest.approx(
        _sgd(q, s), rel=rtol)


@settings(max_examples=EXAMPLES)
@given(case=st.sampled_from(["equal", "scaled", "commuting"]).flatmap(
    lambda kind: qst.problems_with_settings(noise=kind)))
def test_momentum_commuting_closed_form(case):
    r"""(c) Commuting H and C: Σ is diagonal in the eigenbasis with
    σ_i² = η c_i / (S a_i (1 − μ)(2 − η a_i/(1 + μ))), a_i = λ_i + γ (docs/theory.md)."""
    q, s = case
    v, a, c, mu = q.eigenvectors, q.eigenvalues + s.weight_decay, q.noise_eigenvalues, s.momentum
    sig = v.T @ stationary_covariance(q, s.eta, s.batch_size, **s.kwargs) @ v
    closed = s.eta * c / (s.batch_size * a * (1 - mu) * (2 - s.eta * a / (1 + mu)))
    atol = _basis_atol(q, s, sig)
    np.testing.assert_allclose(np.diag(sig), closed, rtol=_discrete_rtol(q, s), atol=atol)
    # Off the diagonal Σ̃_ij = T_ij C̃_ij, and C̃ = VᵀCV is diagonal only up to the error of the eigenvectors V,
    # eps·λ_max/gap for eigenvalues a gap apart (those closer than DEGENERACY_RTOL·λ_max share one eigenspace, in
    # which V is chosen to diagonalise C). T_ij <= max T_kk, so |Σ̃_ij| <= max T_kk · max c_k · eps·λ_max/gap.
    lam = np.sort(q.eigenvalues)
    gaps = np.diff(lam)
    gaps = gaps[gaps > DEGENERACY_RTOL * lam[-1]]
    if gaps.size:
        t = s.eta / (s.batch_size * a * (1 - mu) * (2 - s.eta * a / (1 + mu)))
        atol += 16 * q.dim * EPS * lam[-1] / gaps.min() * t.max() * c.max()
    np.testing.assert_allclose(sig - np.diag(np.diag(sig)), 0.0, atol=atol)


@settings(max_examples=EXAMPLES)
@given(case=qst.problems_with_settings(max_weight_decay=0.0), gamma=st.floats(1e-3, 1.0),
       process=st.sampled_from(["sgd", "sde"]))
def test_weight_decay_is_a_shift_of_the_hessian(case, gamma, process):
    r"""(d) Weight decay γ is H → H + γI in the drift, the noise unchanged: the stationary covariance of (H, C, γ)
    equals that of (H + γI, C, 0), for any θ* (Σ does not depend on it). The losses differ by what they measure:
    with θ* = 0, E(H + γI, C, 0) = ½Tr((H + γI)Σ) = E(H, C, γ) + (γ/2) Tr Σ."""
    q, s0 = case
    # Rescale η so that η(λ_max + γ) keeps the drawn fraction of the stability bound.
    s = qst.SGDSetting(s0.eta * q.lambda_max / (q.lambda_max + gamma), s0.batch_size, s0.momentum, gamma)
    shifted = Quadratic(q.hessian + gamma * np.eye(q.dim), noise_covariance=q.noise_covariance)
    kw = dict(process=process, momentum=s.momentum)
    sig = stationary_covariance(q, s.eta, s.batch_size, weight_decay=gamma, **kw)
    ref = stationary_covariance(shifted, s.eta, s.batch_size, **kw)
    # H + γI is decomposed anew: its eigenvalues move by a few eps·(λ_max + γ), i.e. eps·cond relative, on top of
    # the discrete rounding; and the two may group near-degenerate eigenvalues differently.
    a = q.eigenvalues + gamma
    rtol = _discrete_rtol(q, s) + 256 * EPS * a.max() / a.min() + _cluster_rtol(q, s) + _cluster_rtol(shifted, s0)
    np.testing.assert_allclose(sig, ref, rtol=rtol, atol=rtol * np.abs(ref).max())
    if not np.any(q.minimum):
        e = expected_loss(q, s.eta, s.batch_size, weight_decay=gamma, **kw)
        assert e + gamma / 2 * np.trace(sig) == pytest.approx(expected_loss(shifted, s.eta, s.batch_size, **kw),
                                                              rel=rtol)


@settings(max_examples=200)  # cheap: pure arithmetic
@given(n=st.integers(2, 10**12), data=st.data())
def test_batch_noise_factor(n, data):
    r"""(e) κ(S, N) = (N − S)/(S(N − 1)): 1 at S = 1, 0 at S = N, strictly decreasing in S, non-decreasing in N,
    and 1/S − κ = (S − 1)/(S(N − 1)) exactly, so |κS − 1| <= (S − 1)/(N − 1) → 0 as N → ∞."""
    s = data.draw(st.integers(1, n), label="S")
    kappa = batch_noise_factor(s, n)
    exact = Fraction(n - s, s * (n - 1))
    assert abs(Fraction(kappa) - exact) <= EPS * exact  # correctly rounded up to one ulp
    # κS − 1 = −(S − 1)/(N − 1): the product κ·S adds one more rounding.
    assert 0.0 <= 1.0 - kappa * s <= (s - 1) / (n - 1) + 2 * EPS
    assert kappa <= 1.0 / s
    assert batch_noise_factor(1, n) == 1.0 and batch_noise_factor(n, n) == 0.0
    if s < n:
        # κ(S) − κ(S + 1) = N/(S(S + 1)(N − 1)) > 0, at least ~4/N relative: far above rounding for N <= 1e12.
        assert batch_noise_factor(s + 1, n) < kappa
    # κ(S, N + 1) − κ(S, N) = (S − 1)/(S N (N − 1)) >= 0 may be below one ulp: rounding is monotone, so >=.
    assert batch_noise_factor(s, n + 1) >= kappa
    assert batch_noise_factor(s, n, sampling="epoch") == kappa
    assert batch_noise_factor(s, n, sampling="with") == batch_noise_factor(s) == 1.0 / s


@settings(max_examples=EXAMPLES)
@given(case=qst.problems_with_settings(), process=st.sampled_from(["sgd", "sde"]))
def test_lyapunov_equation_holds(case, process):
    r"""(f) Σ solves its Lyapunov equation, H_γ = H + γI, κ = 1/S:
    SGD (μ = 0 only: for μ > 0 the equation is on the state (θ, b) and only the θ-block is returned)
    Σ = (I − ηH_γ)Σ(I − ηH_γ) + η²κC; SDE H_γΣ + ΣH_γ = (η/(1−μ))κC.

    The residual is measured against the sizes of the terms it subtracts, ‖Σ‖ + ‖AΣA‖ + ‖Q‖ (SGD) and
    2‖H_γΣ‖ + ‖Q‖ (SDE): the rounding of forming the residual itself is eps times those. Relative to ‖Q‖ alone it
    would be eps/(η a_min) for SGD (Σ ~ Q/(η a)), no test of the solver.
    """
    q, s = case
    if process == "sgd":
        s = qst.SGDSetting(s.eta / (1 + s.momentum), s.batch_size, 0.0, s.weight_decay)
    d = q.dim
    hg = q.hessian + s.weight_decay * np.eye(d)
    kappa = 1.0 / s.batch_size
    sig = stationary_covariance(q, s.eta, s.batch_size, process=process, **s.kwargs)
    norm = np.linalg.norm
    if process == "sgd":
        a = np.eye(d) - s.eta * hg
        q_term = s.eta**2 * kappa * q.noise_covariance
        residual = sig - a @ sig @ a - q_term
        scale = norm(sig) + norm(a @ sig @ a) + norm(q_term)
    else:
        q_term = s.eta / (1 - s.momentum) * kappa * q.noise_covariance
        residual = hg @ sig + sig @ hg - q_term
        scale = 2 * norm(hg @ sig) + norm(q_term)
    # 1e-12 of the terms: ~4500 eps, for products of d <= 8 terms and the eigenbasis change (1500 random draws gave
    # at most ~1e-15; relative to ‖Q‖ alone the SGD residual reached 2e-10).
    assert norm(residual) <= (1e-12 + _cluster_rtol(q, s)) * scale


@settings(max_examples=EXAMPLES)
@given(case=qst.problems_with_settings(max_weight_decay=0.0, shifted=None), data=st.data())
def test_trace_identities(case, data):
    r"""Without weight decay, any C: the SDE's E = η κ Tr(C) / (4(1 − μ)) exactly (trace of its Lyapunov equation),
    κ = (N − S)/(S(N − 1)) with a finite dataset; and discrete SGD (μ = 0) E = (η/4)(κ Tr C + Tr(HΣH))."""
    q, s = case
    n = data.draw(st.one_of(st.none(), st.integers(s.batch_size, 10**6)), label="dataset_size")
    kappa = batch_noise_factor(s.batch_size, n)
    sde = _sde(q, s, dataset_size=n)
    # rtol 1e-12: ½Tr(HΣ) is summed over d² products of a well-conditioned Σ (cond(H) <= 1e3 costs ~1e3 eps).
    assert sde == pytest.approx(s.eta * kappa * q.noise_trace / (4 * (1 - s.momentum)),
                                rel=1e-12 + _cluster_rtol(q, s), abs=0.0)
    if s.momentum == 0.0:
        h = q.hessian
        sig = stationary_covariance(q, s.eta, s.batch_size, dataset_size=n)
        sgd = _sgd(q, s, dataset_size=n)
        assert sgd == pytest.approx(s.eta / 4 * (kappa * q.noise_trace + np.trace(h @ sig @ h)),
                                    rel=_discrete_rtol(q, s) + _cluster_rtol(q, s), abs=0.0)


@settings(max_examples=30)
@given(p=qst.least_squares_problems(), seed=qst.seeds(), eta_fraction=st.floats(0.01, 0.9))
def test_least_squares_noise(p, seed, eta_fraction):
    r"""Real minibatch noise: Σ_pop(θ* + δ) = Σ* + M(δδᵀ) + K(δ) exactly (the multiplicative and cross terms that
    the minibatch theory iterates on), and the full batch drawn without replacement has no noise at all."""
    delta = np.random.default_rng(seed).standard_normal(p.dim)
    pop = p.population_noise_covariance(p.minimum + delta)
    parts = p.noise_covariance + p.multiplicative_noise(np.outer(delta, delta)) + p.cross_noise(delta)
    # Sums over N <= 200 examples of products of four data entries: ~N eps relative to the largest term.
    np.testing.assert_allclose(parts, pop, rtol=0, atol=1e-12 * max(np.abs(pop).max(), np.abs(parts).max()))
    eta = eta_fraction * 2 / p.lambda_max
    n = p.dataset_size
    assert expected_loss(p, eta, n, noise="minibatch", sampling="without") == 0.0
    assert expected_loss(p, eta, n, dataset_size=n) == 0.0
