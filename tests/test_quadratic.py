"""Quadratic problems: construction, batched loss and gradient, noise models, spectra, bad input, finite data."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import quadratic
from quadratic import LeastSquares, Quadratic
from sde import minibatch_indices


def _spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


@given(seed=st.integers(0, 2**32 - 1), d=st.integers(1, 8), rotate=st.booleans())
def test_loss_and_grad_batched(seed, d, rotate):
    rng = np.random.default_rng(seed)
    q = Quadratic.from_spectrum(rng.uniform(0.1, 2.0, d), rotate=rotate, rng=rng, minimum=rng.standard_normal(d))
    theta = rng.standard_normal((3, 4, d))
    delta = theta - q.minimum
    expected = 0.5 * np.einsum("abi,ij,abj->ab", delta, q.hessian, delta)
    np.testing.assert_allclose(q.loss(theta), expected, rtol=1e-12)
    np.testing.assert_allclose(q.grad(theta), delta @ q.hessian, rtol=1e-12)
    # The gradient is the derivative of the loss (central differences, exact for a quadratic up to rounding).
    e = np.eye(d)[0] * 1e-4
    fd = (q.loss(theta + e) - q.loss(theta - e)) / 2e-4
    np.testing.assert_allclose(fd, q.grad(theta)[..., 0], rtol=1e-6, atol=1e-9)
    assert q.trace == pytest.approx(np.trace(q.hessian))
    np.testing.assert_allclose(np.sort(q.eigenvalues), np.sort(np.linalg.eigvalsh(q.hessian)), rtol=1e-10)


def test_noise_models():
    rng = np.random.default_rng(0)
    h = _spd(rng, 4)
    np.testing.assert_allclose(Quadratic(h).noise_covariance, h)
    np.testing.assert_allclose(Quadratic(h, noise_covariance=2.5).noise_covariance, 2.5 * h)
    c = _spd(rng, 4)
    q = Quadratic(h, noise_covariance=c)
    assert not q.commutes
    with pytest.raises(ValueError, match="does not commute"):
        q.noise_eigenvalues
    assert Quadratic(h, noise_covariance=h @ h).commutes


def test_degenerate_hessian_gets_a_basis_that_diagonalises_commuting_noise():
    rng = np.random.default_rng(1)
    q_rot = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    h = (q_rot * np.array([1.0, 1.0, 0.5, 0.5])) @ q_rot.T
    c = (q_rot * np.array([3.0, 1.0, 2.0, 0.0])) @ q_rot.T
    q = Quadratic(h, noise_covariance=c)
    assert q.commutes
    ct = q.eigenvectors.T @ c @ q.eigenvectors
    np.testing.assert_allclose(ct - np.diag(np.diag(ct)), 0.0, atol=1e-10)
    np.testing.assert_allclose(sorted(q.noise_eigenvalues), [0.0, 1.0, 2.0, 3.0], atol=1e-10)


@pytest.mark.parametrize("hessian, match", [
    (np.array([[1.0, 0.5], [0.0, 1.0]]), "hessian must be symmetric"),
    (np.array([[1.0, 0.0], [0.0, -1.0]]), "hessian must be symmetric positive definite"),
    (np.array([[1.0, np.nan], [np.nan, 1.0]]), "hessian contains NaN"),
    (np.ones((2, 3)), "hessian must be a square matrix"),
])
def test_bad_hessian(hessian, match):
    with pytest.raises(ValueError, match=match):
        Quadratic(hessian)


def test_bad_noise_and_minimum():
    with pytest.raises(ValueError, match="noise_covariance must be symmetric positive semi-definite"):
        Quadratic(np.eye(2), noise_covariance=np.diag([1.0, -1.0]))
    with pytest.raises(ValueError, match=r"noise_covariance must have shape \(2, 2\)"):
        Quadratic(np.eye(2), noise_covariance=np.eye(3))
    with pytest.raises(ValueError, match="minimum must have length 2"):
        Quadratic(np.eye(2), minimum=[0.0])
    with pytest.raises(ValueError, match="eigenvalues must all be > 0"):
        Quadratic.from_spectrum([1.0, 0.0])
    with pytest.raises(ValueError, match="theta must have last axis of length 2"):
        Quadratic(np.eye(2)).loss(np.zeros(3))


def test_spectra(tmp_path):
    np.testing.assert_allclose(quadratic.logspace(0.01, 1, 3), [1, 0.1, 0.01])
    np.testing.assert_allclose(quadratic.powerlaw(2.0, 3), [1, 1 / 4, 1 / 9])
    mp = quadratic.marchenko_pastur(50, ratio=0.25, rng=np.random.default_rng(0))
    # Support of the Marchenko–Pastur law for q = 1/4: [(1-1/2)^2, (1+1/2)^2] = [0.25, 2.25], up to finite-size
    # fluctuations of order n^(-2/3) at the edges.
    assert mp.min() > 0.25 * 0.7 and mp.max() < 2.25 * 1.2
    np.save(tmp_path / "s.npy", np.array([0.5, 2.0]))
    (tmp_path / "s.txt").write_text("0.5, 2.0\n1.0")
    np.testing.assert_allclose(quadratic.parse_spectrum(f"file:{tmp_path / 's.npy'}"), [2.0, 0.5])
    np.testing.assert_allclose(quadratic.parse_spectrum(f"file:{tmp_path / 's.txt'}"), [2.0, 1.0, 0.5])
    # A matrix is not a spectrum (it was once flattened into a problem of another dimension).
    np.save(tmp_path / "m.npy", np.array([[2.0, 1.0], [1.0, 2.0]]))
    (tmp_path / "m.txt").write_text("2 1\n1 2\n")
    for name in ("m.npy", "m.txt"):
        with pytest.raises(ValueError, match=r"must hold a 1-D list of eigenvalues.*shape \(2, 2\).*eigvalsh"):
            quadratic.parse_spectrum(f"file:{tmp_path / name}")
    for bad, match in [("logspace:1:0.1:3", "high"), ("wat:1", "not of the form"), ("file:/nonexistent", "does not"),
                       ("logspace:0:1:3", "must be > 0"), ("powerlaw:1:2.5", "integer")]:
        with pytest.raises(ValueError, match=match):
            quadratic.parse_spectrum(bad)


def test_least_squares_is_the_quadratic_of_its_data():
    rng = np.random.default_rng(2)
    p = LeastSquares.sample(300, [1.0, 0.3, 0.1], noise_std=0.7, rotate=True, rng=rng)
    theta = rng.standard_normal(3)
    assert p.full_loss(theta) - p.full_loss(p.minimum) == pytest.approx(float(p.loss(theta)), rel=1e-10)
    np.testing.assert_allclose(p.per_example_grads(theta).mean(axis=0), p.grad(theta), atol=1e-12)
    np.testing.assert_allclose(p.population_noise_covariance(p.minimum), p.noise_covariance, atol=1e-12)
    # Σ_pop(θ) = Σ* + K(m) + M(mmᵀ) for a point mass at θ (the identity the exact minibatch theory uses).
    m = theta - p.minimum
    np.testing.assert_allclose(p.population_noise_covariance(theta),
                               p.noise_covariance + p.cross_noise(m) + p.multiplicative_noise(np.outer(m, m)),
                               atol=1e-10)
    with pytest.raises(ValueError, match="batch_size must be <= dataset_size N = 300"):
        p.batch_noise_factor(301)
    with pytest.raises(ValueError, match="need at least as many examples"):
        LeastSquares(np.ones((2, 3)), np.ones(2))


@pytest.mark.parametrize("sampling", ["with", "without", "epoch"])
def test_minibatch_noise_covariance(sampling):
    # Batches drawn by the simulator's own sampler, at a fixed θ ≠ θ*: the empirical covariance of g_B against
    # κ Σ_pop(θ), κ = 1/S with replacement and (N−S)/(S(N−1)) otherwise. Tested on the trace (one z-test per
    # sampling scheme, confidence 0.999 over the three); the epoch scheme's batches within an epoch are
    # dependent but each is a uniform subset, so its marginal covariance is the without-replacement one.
    from sgd_noise_common.stats import sidak_z as z_critical

    rng = np.random.default_rng(5)
    n, s, draws = 40, 10, 40000
    p = LeastSquares.sample(n, [1.0, 0.5, 0.2], noise_std=1.0, rng=rng)
    theta = p.minimum + 0.5
    idx = minibatch_indices(n, s, draws=draws, sampling=sampling, rng=rng)[0]
    g_all = p.per_example_grads(theta)
    gb = g_all[idx].mean(axis=1)
    dev = gb - p.grad(theta)
    kappa = p.batch_noise_factor(s, sampling)
    target = kappa * np.trace(p.population_noise_covariance(theta))
    sq = np.sum(dev**2, axis=1)
    # Batch means of squared deviations: consecutive epoch batches are dependent, so average over blocks of
    # n/s = 4 batches (one epoch) before taking the standard error.
    block = sq[: draws - draws % 4].reshape(-1, 4).mean(axis=1)
    se = block.std(ddof=1) / np.sqrt(block.size)
    z = (block.mean() - target) / se
    assert abs(z) < z_critical(0.999, 3), (z, block.mean(), target)
    # With replacement the factor is 1/S, visibly different from (N−S)/(S(N−1)) = 0.0769 vs 0.1 here.
    other = (1 / s if sampling != "with" else (n - s) / (s * (n - 1))) * np.trace(p.population_noise_covariance(theta))
    assert abs(block.mean() - other) / se > 10
