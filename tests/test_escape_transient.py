"""The linearised law's transient (issue 20's escape): E‖ζ_t‖² of SGD started at a point, from
``sde.theory.multiplicative_transient`` through ``nets.basin.linearised_covariance(transient_steps=...)``.

Held to what is known independently: a brute-force moment recursion over every batch of S out of N on a small
nonlinear network (no κ, no fourth-moment or cross-term formula), the stationary law it must tend to, and torch's
own SGD on least squares (where the linearisation is exact), by Monte Carlo."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from cases import half_mse, linear_problem
from scipy.stats import norm
from test_linearised import per_example_derivatives, tiny_data, tiny_net
from torch import nn

from nets.basin import find_minimum, linearised_covariance, set_flat_parameters
from nets.sgd import make_optimizer, sgd_step
from nets.stationary import IndependentBatches
from sde.theory import multiplicative_transient
from sgd_noise_common.seeds import spawn_seeds


def enumerated_transient(g, h, theta, v, *, eta, s, mu, gamma, steps):
    """E‖ζ_t‖² by brute force: the exact first and second moments of the state (ζ, b), torch's momentum, averaged
    over every batch of s of the N examples, started at ζ = 0 with an empty buffer."""
    gp, hp, tp = g @ v, np.einsum("ia,nij,jb->nab", v, h, v), v.T @ theta
    k = v.shape[1]
    eye = np.eye(k)
    maps = []
    for batch in itertools.combinations(range(g.shape[0]), s):
        idx = list(batch)
        gb = hp[idx].mean(axis=0) + gamma * eye
        fb = gp[idx].mean(axis=0) + gamma * tp  # the batch gradient at ζ = 0
        maps.append((np.block([[eye - eta * gb, -eta * mu * eye], [gb, mu * eye]]), np.concatenate([-eta * fb, fb])))
    m, p = np.zeros(2 * k), np.zeros((2 * k, 2 * k))
    gmat, force = hp.mean(axis=0) + gamma * eye, gp.mean(axis=0) + gamma * tp
    out, loss = [0.0], [0.0]
    for _ in range(steps):
        m_new, p_new = np.zeros_like(m), np.zeros_like(p)
        for a, c in maps:
            am = a @ m
            m_new += (am + c) / len(maps)
            p_new += (a @ p @ a.T + np.outer(am, c) + np.outer(c, am) + np.outer(c, c)) / len(maps)
        m, p = m_new, p_new
        out.append(float(np.trace(p[:k, :k])))
        loss.append(float(force @ m[:k] + 0.5 * np.sum(gmat * p[:k, :k])))
    return np.array(out), np.array(loss)


@pytest.mark.parametrize("mu, gamma, eta", [(0.0, 0.05, 0.2), (0.7, 0.05, 0.2), (0.0, 0.05, 4.0)])
def test_the_transient_against_every_batch_enumerated(mu, gamma, eta):
    """A 17-parameter tanh network with cross-entropy, a little off its minimum (so the force and the cross term
    between the batch's gradient and curvature both enter), in the parameter basis and along 4 random orthonormal
    directions, 15 steps, E‖ζ_t‖² and the quadratic model's expected loss change to 1e-9 relative: with η = 4
    the point is mean-square unstable and the moments grow."""
    x, y = tiny_data()
    model = tiny_net()
    m = find_minimum(model, nn.functional.cross_entropy, x, y, batch_size=7, weight_decay=gamma, grad_tol=1e-10)
    set_flat_parameters(model, m.theta + np.random.default_rng(3).normal(0.0, 0.05, m.theta.size))
    g, h, theta = per_example_derivatives(model, x, y)
    q = np.linalg.qr(np.random.default_rng(4).standard_normal((theta.size, 4)))[0]
    grew = []
    for v in (None, q):
        basis = np.eye(theta.size) if v is None else v
        want, want_loss = enumerated_transient(g, h, theta, basis, eta=eta, s=3, mu=mu, gamma=gamma, steps=15)
        r = linearised_covariance(model, nn.functional.cross_entropy, x, y, eta=eta, batch_size=3, momentum=mu,
                                  weight_decay=gamma, directions=v, transient_steps=15)
        assert r.transient.shape == (16,) and r.transient[0] == 0.0
        assert np.allclose(r.transient, want, rtol=1e-9, atol=0.0)
        assert np.allclose(r.transient_loss, want_loss, rtol=1e-9, atol=1e-12 * np.max(np.abs(want_loss)))
        grew.append(r.spectral_radius >= 1 and want[-1] > 100 * want[1])
    assert any(grew) == (eta == 4.0)


def test_the_transient_tends_to_the_stationary_law():
    """Where a stationary law exists, E[ζζᵀ] tends to Σ + ζ*ζ*ᵀ (the law is about the fixed point ζ*)."""
    p, model, x, y = linear_problem(n=60, spectrum=(4.0, 2.0, 1.0, 0.5), seed=6, noise_std=3.0)
    set_flat_parameters(model, p.minimum + np.random.default_rng(1).normal(0.0, 0.5, p.dim))
    for mu, gamma in ((0.0, 0.0), (0.6, 0.05)):
        r = linearised_covariance(model, half_mse, x, y, eta=0.1, batch_size=5, momentum=mu, weight_decay=gamma,
                                  transient_steps=3000)
        assert r.stable
        want = np.trace(r.covariance) + r.fixed_point @ r.fixed_point
        assert r.transient[-1] == pytest.approx(want, rel=1e-8)


def _zscores_ok(dist, predicted, confidence=0.99):
    """Each step's mean over the chains within z·(its standard error) of ``predicted``, z for ``confidence``
    jointly over the steps (Šidák)."""
    steps = dist.shape[1]
    mean, se = dist.mean(axis=0), dist.std(axis=0, ddof=1) / math.sqrt(dist.shape[0])
    z = norm.ppf(1 - (1 - confidence ** (1 / steps)) / 2)
    return np.all(np.abs(mean - predicted) < z * se), (mean - predicted) / se


def test_the_transient_of_torch_sgd_on_least_squares():
    """torch's SGD (``nets.sgd``, momentum 0.3) with independent batches (``IndependentBatches``, as the escape draws
    them) on the quadratic network, started off the minimum, where the linearisation is exact: 2000 chains of 6
    steps, the mean of ‖θ_t − θ₀‖² against the transient at 99 % jointly over the steps, fixed seeds. A stable
    point (ρ = 0.69): there the distances are light-tailed and the normal interval is trustworthy; the unstable
    case, whose distances are heavy-tailed, is the next test."""
    p, model, x, y = linear_problem(n=40, spectrum=(4.0, 2.0, 1.0, 0.5), seed=6, noise_std=3.0)
    theta0 = p.minimum + np.random.default_rng(1).normal(0.0, 0.3, p.dim)
    set_flat_parameters(model, theta0)
    eta, s, mu, steps, chains = 0.3, 10, 0.3, 6, 2000
    r = linearised_covariance(model, half_mse, x, y, eta=eta, batch_size=s, momentum=mu, transient_steps=steps)
    seeds = spawn_seeds(11, tuple(range(chains)))
    start = torch.tensor(theta0)
    dist = np.empty((chains, steps))
    for c in range(chains):
        set_flat_parameters(model, theta0)
        opt = make_optimizer(model, eta=eta, momentum=mu)
        batches = IndependentBatches(40, seed=seeds[c])
        for t in range(steps):
            idx = batches.next(s)
            sgd_step(model, opt, x[idx], y[idx], loss_fn=half_mse)
            dz = model.weight.detach().reshape(-1) - start
            dist[c, t] = float(dz @ dz)
    ok, z = _zscores_ok(dist, r.transient[1:])
    assert ok, z


def test_the_escape_from_an_unstable_point_by_monte_carlo():
    """Plain SGD on least squares at a mean-square unstable η (ρ = 2.45, the mean update unstable too), 100 000
    chains (numpy, vectorised) of 5 steps from a point off the minimum: the mean of ‖θ_t − θ₀‖², which grows
    ~40×, against the transient at 99 % jointly. So many chains because the growing distances are heavy-tailed
    (a product of random matrices): with 2 000 the normal interval is too narrow on the low side."""
    p, model, x, y = linear_problem(n=40, spectrum=(4.0, 2.0, 1.0, 0.5), seed=6, noise_std=3.0)
    theta0 = p.minimum + np.random.default_rng(1).normal(0.0, 0.3, p.dim)
    set_flat_parameters(model, theta0)
    eta, s, steps, chains = 0.45, 10, 5, 100_000
    r = linearised_covariance(model, half_mse, x, y, eta=eta, batch_size=s, transient_steps=steps)
    assert r.spectral_radius > 2 and r.additive_radius > 1
    rng = np.random.default_rng(0)
    theta = np.tile(theta0, (chains, 1))
    dist = np.empty((chains, steps))
    for t in range(steps):
        idx = np.argsort(rng.random((chains, 40)), axis=1)[:, :s]  # S of N without replacement, afresh each step
        xb, yb = p.inputs[idx], p.targets[idx]
        theta -= eta * np.einsum("cbi,cb->ci", xb, np.einsum("cbi,ci->cb", xb, theta) - yb) / s
        dist[:, t] = ((theta - theta0) ** 2).sum(axis=1)
    ok, z = _zscores_ok(dist, r.transient[1:])
    assert ok, z
    assert r.transient[-1] > 20 * r.transient[1]


def test_multiplicative_transient_refuses_bad_arguments():
    zero = lambda x: 0 * x  # noqa: E731
    with pytest.raises(ValueError, match="eta"):
        multiplicative_transient(np.eye(2), np.zeros(2), np.eye(2), zero, lambda m: np.zeros((2, 2)), eta=0.0,
                                 kappa=0.1, steps=3)
    with pytest.raises(ValueError, match="curvature and noise"):
        multiplicative_transient(np.eye(3), np.zeros(2), np.eye(2), zero, lambda m: np.zeros((2, 2)), eta=0.1,
                                 kappa=0.1, steps=3)
    with pytest.raises(ValueError, match="steps"):
        multiplicative_transient(np.eye(2), np.zeros(2), np.eye(2), zero, lambda m: np.zeros((2, 2)), eta=0.1,
                                 kappa=0.1, steps=-1)


def test_the_transient_stops_before_overflow():
    _, out = multiplicative_transient(np.eye(1) * 100.0, np.ones(1), np.eye(1), lambda x: 0 * x,
                                   lambda m: np.zeros((1, 1)), eta=1.0, kappa=0.1, steps=400)
    assert np.isfinite(out[:10]).all() and np.isinf(out[-1]).all()
