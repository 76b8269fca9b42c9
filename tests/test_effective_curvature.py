"""The effective curvature λ_eff = ⟨x ∂_uL⟩/⟨x²⟩ and Yaida's per-direction relation over the recorded stationary
phase of ``nets.stationary.examine_basin`` (issue 20).

* On a quadratic network (a linear model with the half-squared loss, ``quadratic.LeastSquares``), along every
  eigenvector λ_eff is the eigenvalue λ exactly; a curvature 15 % off fails the same test.
* On a non-quadratic 2-D torch model, a quartic well L(θ) = mean_n Σ_i [½a_i(θ_i − c_ni)² + ¼bθ_i⁴] whose minimum
  is θ = 0 (the c_n are centred), λ_eff differs from the Hessian's λ = a_i at the mean, and agrees with λ_eff from an
  independent numpy simulation of the same SGD recursion.

Every statistical test states its confidence (two-sided z, Šidák over the directions tested) and uses a fixed seed.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from cases import half_mse
from torch import nn

from nets.stationary import BasinResult, BasinSettings, examine_basin
from quadratic import LeastSquares
from sgd_noise_common.files import jsonable
from sgd_noise_common.stats import sidak_z


def _quadratic_run(*, mu, gamma, record_steps, seed):
    p = LeastSquares.sample(60, [4.0, 2.0, 1.0, 0.5], noise_std=3.0, rotate=True, rng=np.random.default_rng(6))
    x, y = torch.tensor(p.inputs), torch.tensor(p.targets)
    torch.manual_seed(0)
    model = nn.Linear(p.dim, 1, bias=False).double()
    st = BasinSettings(burn_in=500, mean_steps=500, record_steps=record_steps, eval_every=100, window=250, top_k=2,
                       random_directions=1, eig_tol=1e-10, grad_tol=1e-10, trace_rtol=0.2, batches=40,
                       control_steps=0, measure_batch=60)
    out = examine_basin(model, half_mse, x, y, eta=0.15, batch_size=6, momentum=mu, weight_decay=gamma, settings=st,
                        seed=seed)
    lam = np.sort(np.linalg.eigvalsh(p.hessian))[::-1][:2] + gamma
    return out, lam


def _check_quadratic(out, lam):
    top = out.rows("eigenvector")
    assert [r.curvature for r in top] == pytest.approx(lam, rel=1e-8)
    z = sidak_z(0.999, 2)  # two distinct directions (those at the mean are the same eigenvectors)
    for r in top + out.rows("eigenvector-at-mean"):
        assert abs(r.effective_curvature - r.curvature) < z * r.effective_curvature_stderr, r
        # Yaida's relation along the direction, a stationary state's identity.
        assert abs(r.fdr_ratio - 1.0) < z * r.fdr_ratio_stderr, r
        # The power: a curvature 15 % off (enough to triple the prediction near ηλ = 2) fails the same test.
        assert abs(r.effective_curvature - 1.15 * r.curvature) > z * r.effective_curvature_stderr, r
        assert abs(r.effective_curvature - 0.85 * r.curvature) > z * r.effective_curvature_stderr, r
    for r in out.rows("random"):
        assert math.isfinite(r.effective_curvature) and r.effective_curvature_stderr > 0


def test_effective_curvature_is_the_eigenvalue_on_a_quadratic_network():
    """Plain SGD, η = 0.15, S = 6 of 60 (ηλ = 0.6 and 0.3), 12 000 recorded steps, seed 3: λ_eff = λ and Yaida's
    per-direction ratio = 1 within z·stderr at 99.9 % (Šidák over the two directions); λ(1 ± 0.15) rejected. The
    result reads back from JSON, and an earlier stationary.json without the new fields reads with NaN in them."""
    out, lam = _quadratic_run(mu=0.0, gamma=0.0, record_steps=12000, seed=3)
    _check_quadratic(out, lam)
    d = json.loads(json.dumps(jsonable(out), allow_nan=False))
    assert jsonable(BasinResult.from_dict(d)) == jsonable(out)
    for row in d["directions"]:  # an earlier file: no such fields
        for name in ("effective_curvature", "effective_curvature_stderr", "fdr_ratio", "fdr_ratio_stderr"):
            del row[name]
    old = BasinResult.from_dict(d)
    assert all(math.isnan(r.effective_curvature) and math.isnan(r.fdr_ratio_stderr) for r in old.directions)
    assert [r.variance for r in old.directions] == [r.variance for r in out.directions]


@pytest.mark.slow
def test_effective_curvature_with_momentum_and_weight_decay_on_a_quadratic_network():
    """As above with momentum 0.5 and weight decay 0.05 (the gradient along u then includes γθ, and λ = eig(H) + γ),
    20 000 recorded steps, seed 4, 99.9 %."""
    out, lam = _quadratic_run(mu=0.5, gamma=0.05, record_steps=20000, seed=4)
    _check_quadratic(out, lam)


# ------------------------------------------------------------------------------------------------ the quartic well
A = np.array([1.0, 0.5])
B = 3.0
ETA, S, N = 0.2, 2, 20


class Well(nn.Module):
    """θ ∈ R², the same for every example: the output is θ repeated over the batch."""

    def __init__(self):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(2, dtype=torch.float64))

    def forward(self, x):
        return self.theta.expand(x.shape[0], 2)


def _centres():
    c = np.random.default_rng(11).standard_normal((N, 2))
    return c - c.mean(axis=0)  # the minimum is then θ = 0, where H = diag(a)


CENTRES = torch.tensor(_centres())


def quartic(out, n, reduction="mean"):
    """½a_i(θ_i − c_ni)² + ¼bθ_i⁴ summed over i, for the examples n (the targets are the examples' indices into
    ``CENTRES``, so that the evaluation's accuracy is a harmless number): its Hessian at θ is diag(a + 3bθ²)."""
    a = torch.as_tensor(A, dtype=out.dtype)
    per = (0.5 * a * (out - CENTRES[n]) ** 2 + 0.25 * B * out ** 4).sum(dim=1)
    return per.mean() if reduction == "mean" else per


def _numpy_effective_curvature(c, *, chains=400, burn_in=300, steps=3000, seed=5):
    """The same SGD, θ ← θ − η(a(θ − c̄_B) + bθ³) with B of S drawn afresh without replacement, in numpy, over
    independent chains: λ_eff per coordinate (the eigen-directions at θ = 0) pooled over chains and steps, with the
    error from the chains' scatter (delta method over the chains' own sums)."""
    rng = np.random.default_rng(seed)
    th = np.zeros((chains, 2))
    xs, gs = [], []
    for k in range(burn_in + steps):
        idx = np.argsort(rng.random((chains, N)), axis=1)[:, :S]
        g = A * (th - c[idx].mean(axis=1)) + B * th ** 3
        if k >= burn_in:
            xs.append(th.copy())
            gs.append(g)
        th = th - ETA * g
    x, g = np.array(xs), np.array(gs)  # (steps, chains, 2)
    x = x - x.mean(axis=(0, 1))
    u = (x * g).mean(axis=0)  # per chain
    v = (x * x).mean(axis=0)
    lam = u.mean(axis=0) / v.mean(axis=0)
    se = np.std(u - lam * v, axis=0, ddof=1) / math.sqrt(chains) / v.mean(axis=0)
    return lam, se


def test_effective_curvature_of_a_quartic_well_matches_an_independent_simulation():
    """η = 0.2, S = 2 of 20, a = (1, 0.5), b = 3; 16 000 recorded steps of examine_basin (seed 2) and 400 numpy chains
    of 3 000 steps (seed 5). Along both eigen-directions at the minimum (e_1, the top eigenvector, and e_2, the
    random direction orthogonal to it): λ_eff agrees with the simulation's within z·√(se² + se_ref²), and Yaida's
    per-direction ratio is 1 within z·se, z at 99.9 % (Šidák over 2 directions); λ_eff exceeds the Hessian's
    eigenvalue at the stationary mean by more than z·se (the quartic wall stiffens the path)."""
    c = CENTRES.numpy()
    x = torch.zeros(N, 1, dtype=torch.float64)
    y = torch.arange(N)
    model = Well()
    st = BasinSettings(burn_in=1000, mean_steps=1000, record_steps=16000, eval_every=200, window=500, top_k=1,
                       random_directions=1, eig_tol=1e-10, grad_tol=1e-10, trace_rtol=0.2, batches=40,
                       control_steps=0, measure_batch=N)
    out = examine_basin(model, quartic, x, y, eta=ETA, batch_size=S, settings=st, seed=2)
    assert out.minimum.certified and np.allclose([out.lambda_max], [A[0]], rtol=1e-8)
    ref, ref_se = _numpy_effective_curvature(c)
    z = sidak_z(0.999, 2)
    rows = out.rows("eigenvector") + out.rows("random")
    for axis, r in enumerate(rows):
        assert r.curvature == pytest.approx(A[axis], rel=1e-6)
        tol = z * math.hypot(r.effective_curvature_stderr, ref_se[axis])
        assert abs(r.effective_curvature - ref[axis]) < tol, (axis, r.effective_curvature, ref[axis], tol)
        assert abs(r.fdr_ratio - 1.0) < z * r.fdr_ratio_stderr, r
    at_mean = out.rows("eigenvector-at-mean")[0]
    assert at_mean.effective_curvature - at_mean.curvature > z * at_mean.effective_curvature_stderr, at_mean
    # The reference itself separates the two: the quadratic part alone (b = 0) would give λ_eff = a.
    assert np.all(ref - A > 10 * ref_se), (ref, ref_se)
