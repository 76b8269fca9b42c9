"""Issue 13 (first part): top-k eigenpairs to a requested accuracy and the SLQ density, on small float64 networks
whose Hessian is formed exactly (the operator itself is checked against torch.func.hessian in test_nets.py)."""

import numpy as np
import pytest
from scipy.stats import wasserstein_distance

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from zcrit import z_critical  # noqa: E402

from nets.curvature import HessianOperator, spectral_density, top_eigenvalues  # noqa: E402
from nets.curvature.lanczos import extreme_eigenpairs  # noqa: E402


def _problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(40, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    return model, x, y


def _dense(model, x, y):
    op = HessianOperator(model, F.cross_entropy, x, y, batch_size=16, dtype=torch.float64)
    h = np.column_stack([op.matvec(e) for e in np.eye(op.dim)])
    return 0.5 * (h + h.T)


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_top_k_eigenvalues_to_1e8(which):
    model, x, y = _problem()
    exact = np.linalg.eigvalsh(_dense(model, x, y))
    want = exact[::-1][:4] if which == "largest" else exact[:4]
    res = top_eigenvalues(model, F.cross_entropy, x, y, k=4, batch_size=16, which=which, tol=1e-10,
                          dtype=torch.float64, rng=0)
    assert res.converged and res.bn_statistics == "no batch norm"
    np.testing.assert_allclose(res.eigenvalues, want, rtol=1e-8, atol=1e-10 * abs(exact).max())
    assert list(res.eigenvalues) == sorted(res.eigenvalues, reverse=which == "largest")
    # The residual bound is a bound: every eigenvalue lies within its residual of an exact eigenvalue.
    assert np.all(np.abs(res.eigenvalues - want) <= res.residuals + 1e-12)
    v = res.eigenvectors
    np.testing.assert_allclose(v.T @ v, np.eye(4), atol=1e-8)


def test_the_stopping_rule_is_the_requested_accuracy():
    # A spectrum with a small gap: a loose tol stops early with a residual within tol; a tight one continues.
    ev = np.concatenate([[10.0, 9.99], np.linspace(0.1, 5.0, 200)])
    h = np.diag(ev)
    loose = extreme_eigenpairs(lambda v: h @ v, 202, k=1, tol=1e-3, rng=1)
    tight = extreme_eigenpairs(lambda v: h @ v, 202, k=1, tol=1e-12, rng=1)
    assert loose["converged"] and loose["residuals"][0] <= 1e-3 * loose["eigenvalues"][0]
    # Kahan: an eigenvalue lies within the residual of the Ritz value (here 9.99, closer than the gap to 10).
    assert np.min(np.abs(ev - loose["eigenvalues"][0])) <= loose["residuals"][0]
    assert tight["matvecs"] > loose["matvecs"] and abs(tight["eigenvalues"][0] - 10.0) < 1e-10


def test_slq_moments_within_their_error():
    model, x, y = _problem(1)
    h = _dense(model, x, y)
    n = h.shape[0]
    d = spectral_density(model, F.cross_entropy, x, y, batch_size=16, num_runs=40, num_steps=12,
                         dtype=torch.float64, rng=3)
    assert d.nodes.shape == d.weights.shape == (40, 12)
    np.testing.assert_allclose(d.weights.sum(axis=1), 1.0, atol=1e-12)
    z = z_critical(0.999, 3)  # three moments, Šidák at 99.9 %
    for p in (1, 2, 3):
        exact = np.trace(np.linalg.matrix_power(h, p)) / n
        est, se = d.moment(p)
        assert abs(est - exact) < z * se, (p, est, exact, se)


def test_slq_density_approaches_the_spectrum_as_runs_grow():
    model, x, y = _problem(2)
    ev = np.linalg.eigvalsh(_dense(model, x, y))
    dist = {}
    for runs in (1, 32):
        w1 = []
        for seed in range(6):
            d = spectral_density(model, F.cross_entropy, x, y, batch_size=16, num_runs=runs, num_steps=10,
                                 dtype=torch.float64, rng=seed)
            w1.append(wasserstein_distance(d.nodes.ravel(), ev, d.weights.ravel()))
        dist[runs] = float(np.mean(w1))
    assert dist[32] < 0.5 * dist[1], dist


def test_density_is_normalised_and_plots(tmp_path):
    model, x, y = _problem(3)
    d = spectral_density(model, F.cross_entropy, x, y, batch_size=16, num_runs=3, num_steps=8,
                         dtype=torch.float64, rng=0)
    grid, dens = d.density()
    assert abs(np.trapezoid(dens, grid) - 1.0) < 1e-3
    d.plot(tmp_path / "density.png")
    assert (tmp_path / "density.png").stat().st_size > 1000
    js = d.to_dict()
    assert set(js["moments"]) == {"m1", "m2", "m3"}
