"""The basin pieces (``nets.basin``) and the stationary sampler (``nets.stationary``) on a *quadratic network*: a
linear model with squared loss, whose Hessian, noise covariance and stationary law are known exactly
(``quadratic.LeastSquares``, ``sde.theory``). Statistical tests say their confidence; each has a companion showing
that a deliberately wrong factor fails the same test."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from cases import half_mse, linear_problem
from torch import nn

from nets.basin import (
    directional_variances,
    find_minimum,
    flat_parameters,
    predicted_variances,
    projected_noise,
    quadratic_control,
    quadratic_profile,
    set_flat_parameters,
)
from nets.curvature import HessianOperator
from nets.stationary import BasinResult, BasinSettings, examine_basin
from quadratic import LeastSquares, Quadratic
from sde.theory import expected_loss, stationary_covariance
from sgd_noise_common.files import jsonable
from sgd_noise_common.stats import sidak_z as z_critical


def solve_ridge(p: LeastSquares, gamma: float) -> np.ndarray:
    x, y = p.inputs, p.targets
    return np.linalg.solve(x.T @ x / p.dataset_size + gamma * np.eye(p.dim), x.T @ y / p.dataset_size)


def pop_cov(p: LeastSquares, theta) -> np.ndarray:
    g = p.per_example_grads(theta)
    return np.cov(g.T, bias=True)


# ----------------------------------------------------------------------------------------------- minimum finder
@pytest.mark.parametrize("method", ["trust-krylov", "L-BFGS-B"])
@pytest.mark.parametrize("gamma", [0.0, 0.05])
def test_find_minimum_reaches_the_exact_minimum_and_certifies_it(method, gamma):
    p, model, x, y = linear_problem()
    exact = solve_ridge(p, gamma)
    start = exact + 0.5 * np.random.default_rng(1).standard_normal(p.dim)
    before = flat_parameters(model)
    m = find_minimum(model, half_mse, x, y, batch_size=64, weight_decay=gamma, start=start, grad_tol=1e-9,
                     method=method)
    assert m.certified and m.grad_norm <= 1e-9
    lam_min = np.linalg.eigvalsh(p.hessian)[0] + gamma
    # ‖θ − θ*‖ ≤ ‖∇L‖/λ_min on a quadratic: the certificate bounds the error.
    assert np.linalg.norm(m.theta - exact) <= m.grad_norm / lam_min * (1 + 1e-6) + 1e-12
    assert m.loss <= m.start_loss
    assert "no batch norm" in m.bn_statistics
    if gamma:
        assert math.isfinite(m.loss_bound) and m.distance_bound == pytest.approx(m.grad_norm / gamma)
    assert np.array_equal(flat_parameters(model), before)  # the model itself is untouched


def test_find_minimum_says_when_it_is_not_certified():
    p, model, x, y = linear_problem()
    # Rounding bounds the gradient near 1e-16 * |X||y|: 1e-30 cannot be certified, and it must say so.
    m = find_minimum(model, half_mse, x, y, batch_size=64, start=np.full(p.dim, 5.0), grad_tol=1e-30,
                     method="L-BFGS-B", max_iter=1)
    assert not m.certified and m.notes and m.grad_norm > 1e-30


@pytest.mark.parametrize("bad, match", [(dict(method="newton"), "method"), (dict(grad_tol=0.0), "grad_tol"),
                                        (dict(max_iter=0), "max_iter"), (dict(start=np.zeros(3)), "start")])
def test_find_minimum_rejects_bad_arguments(bad, match):
    _, model, x, y = linear_problem()
    with pytest.raises(ValueError, match=match):
        find_minimum(model, half_mse, x, y, batch_size=64, **bad)


# --------------------------------------------------------------------------------------------- noise, predictions
@pytest.mark.parametrize("gamma", [0.0, 0.05])
def test_projected_noise_is_the_population_covariance_on_any_directions(gamma):
    p, model, x, y = linear_problem()
    theta = solve_ridge(p, gamma)
    set_flat_parameters(model, theta)
    op = HessianOperator(model, half_mse, x, y, batch_size=37, weight_decay=gamma, dtype=torch.float64)
    u = np.linalg.qr(np.random.default_rng(2).standard_normal((p.dim, 3)))[0]
    out = projected_noise(op, u, batch_size=64)  # 200 = 3 * 64 + 8: a partial last batch
    exact = u.T @ pop_cov(p, theta) @ u
    assert np.allclose(out["cov"], exact, rtol=1e-10, atol=1e-13)
    assert np.allclose(out["mean"], u.T @ p.per_example_grads(theta).mean(axis=0), atol=1e-12)


def test_predicted_variances_are_the_diagonal_of_the_exact_law_in_the_eigenbasis():
    # A noise covariance that does not commute with H: the diagonal in H's eigenbasis needs only c_ii.
    rng = np.random.default_rng(3)
    q = Quadratic.from_spectrum([3.0, 1.0, 0.2], rotate=True, rng=rng)
    a = rng.standard_normal((3, 3))
    c = a @ a.T + 0.1 * np.eye(3)
    q = Quadratic(q.hessian, noise_covariance=c)
    v, lam = q.eigenvectors, q.eigenvalues
    c_ii = np.diag(v.T @ c @ v)
    for mu in (0.0, 0.7):
        sig = stationary_covariance(q, 0.3, 8, momentum=mu, dataset_size=50)
        pred = predicted_variances(lam, c_ii, eta=0.3, batch_size=8, dataset_size=50, momentum=mu)
        assert np.allclose(pred, np.diag(v.T @ sig @ v), rtol=1e-12)
    kappa = (50 - 8) / (8 * 49)
    assert np.allclose(predicted_variances(lam, c_ii, eta=0.3, batch_size=8, dataset_size=50),
                       0.3 * c_ii * kappa / (lam * (2 - 0.3 * lam)), rtol=1e-12)
    # No stationary law: NaN, not a number.
    assert math.isnan(predicted_variances([10.0], [1.0], eta=0.3, batch_size=8)[0])
    with pytest.raises(ValueError, match="dampening"):
        predicted_variances([1.0], [1.0], eta=0.1, batch_size=4, momentum=0.5, dampening=0.1)


def test_directional_variances_of_white_noise():
    x = np.random.default_rng(4).standard_normal((20000, 2)) * [1.0, 3.0]
    out = directional_variances(x, batches=20)
    # 99.9 % two-sided, two numbers (Bonferroni).
    z = z_critical(0.999, 2)
    assert np.all(np.abs(out["variance"] - [1.0, 9.0]) < z * out["variance_stderr"])
    assert np.all(np.abs(out["mean"]) < z * out["mean_stderr"])


# ------------------------------------------------------------------------------------------------ profile, control
def test_quadratic_profile_is_exactly_quadratic_on_a_quadratic_network():
    p, model, x, y = linear_problem()
    op = HessianOperator(model, half_mse, x, y, batch_size=64, dtype=torch.float64)
    u = p.eigenvectors[:, :2]
    out = quadratic_profile(op, p.minimum, u, p.eigenvalues[:2], [0.1, 0.3])
    assert np.allclose(out["ratio"], 1.0, atol=1e-9)
    assert out["delta"].shape == (2, 6)
    # The half matters: against a rise of a r² (no ½) the same profile is off by 2.
    assert not np.allclose(out["delta"] / (2 * out["quadratic"]), 1.0, atol=0.1)


def test_quadratic_profile_away_from_the_minimum_subtracts_the_slope():
    p, model, x, y = linear_problem()
    op = HessianOperator(model, half_mse, x, y, batch_size=64, dtype=torch.float64)
    theta = p.minimum + 0.3
    grad = p.hessian @ (theta - p.minimum)
    u = p.eigenvectors[:, :2]
    assert np.allclose(quadratic_profile(op, theta, u, p.eigenvalues[:2], [0.1, 0.3], gradient=grad)["ratio"], 1.0,
                       atol=1e-9)
    assert not np.allclose(quadratic_profile(op, theta, u, p.eigenvalues[:2], [0.1, 0.3])["ratio"], 1.0, atol=0.1)


def test_quadratic_control_is_exact_when_the_bulk_is_flat():
    # Top-2 eigenvalues, and a bulk of 3 equal eigenvalues: the lumped bulk reproduces the full problem's law.
    lam = np.array([5.0, 2.0, 0.3, 0.3, 0.3])
    c = np.array([1.5, 0.7, 0.2, 0.1, 0.05])
    full = Quadratic.from_spectrum(lam, noise_covariance=c)
    for mu in (0.0, 0.5):
        ctrl = quadratic_control(lam[:2], c[:2], trace_h=lam.sum(), trace_c=c.sum(), num_params=5, eta=0.2,
                                 batch_size=4, dataset_size=100, momentum=mu, simulate_steps=None)
        exact = expected_loss(full, 0.2, 4, momentum=mu, dataset_size=100)
        assert ctrl.exact_loss == pytest.approx(exact, rel=1e-12)
        assert ctrl.top_loss + ctrl.bulk_loss == pytest.approx(exact, rel=1e-12)


def test_quadratic_control_simulation_agrees_with_its_exact_loss():
    ctrl = quadratic_control([5.0, 2.0], [1.5, 0.7], trace_h=7.9, trace_c=2.55, num_params=5, eta=0.2,
                             batch_size=4, dataset_size=100, simulate_steps=20000, chains=64, rng=5)
    # 99.9 % two-sided.
    assert abs(ctrl.simulated_loss - ctrl.exact_loss) < z_critical(0.999, 1) * ctrl.simulated_stderr


# ------------------------------------------------------------------------------------ the whole stationary phase
def _exact_minibatch_variances(p: LeastSquares, gamma, eta, s, mu):
    """v_iᵀΣv_i of the exact stationary law of minibatch SGD (multiplicative noise, S of N without replacement),
    along the eigenvectors of H + γI, and the exact excess loss over the objective's minimum."""
    sig = stationary_covariance(p, eta, s, momentum=mu, weight_decay=gamma, noise="minibatch", sampling="without")
    v = p.eigenvectors
    return np.diag(v.T @ sig @ v), 0.5 * float(np.sum((p.hessian + gamma * np.eye(p.dim)) * sig))


@pytest.mark.slow
@pytest.mark.parametrize("mu, gamma", [(0.0, 0.0), (0.6, 0.05)])
def test_examine_basin_matches_the_exact_law_of_a_quadratic_network(mu, gamma):
    """Every number of the stationary phase against the exact theory: the minimum, the eigenvalues, the noise,
    the per-direction variances and the excess loss (99.9 % two-sided, Bonferroni over the directions), the
    quadratic control (exact: the bulk here is not flat, so only its top part is compared) and the profile.
    Dividing the prediction by the without-replacement factor (N−1)/(N−S), i.e. forgetting it, fails the test."""
    n, s, eta = 60, 20, 0.03
    p, model, x, y = linear_problem(n=n, spectrum=(4.0, 2.0, 1.0, 0.5), seed=6, noise_std=3.0)
    st = BasinSettings(burn_in=500, mean_steps=2000, record_steps=40000, eval_every=20, window=500, top_k=2,
                       random_directions=1, eig_tol=1e-10, grad_tol=1e-10, trace_rtol=0.01, batches=40,
                       control_steps=0, measure_batch=n, alignment_examples=n)
    torch.manual_seed(0)
    out = examine_basin(model, half_mse, x, y, eta=eta, batch_size=s, momentum=mu, weight_decay=gamma, settings=st,
                        seed=1)
    theta_min = solve_ridge(p, gamma)
    assert out.minimum.certified
    lam = np.linalg.eigvalsh(p.hessian)[::-1] + gamma
    rows = out.directions
    top = [r for r in rows if r.kind == "eigenvector"]
    assert [r.curvature for r in top] == pytest.approx(lam[:2], rel=1e-8)
    v = np.linalg.eigh(p.hessian)[1][:, ::-1]
    c_exact = np.diag(v.T @ pop_cov(p, theta_min) @ v)
    assert [r.noise for r in top] == pytest.approx(c_exact[:2], rel=1e-8)
    exact_var, exact_loss = _exact_minibatch_variances(p, gamma, eta, s, mu)
    order = np.argsort(-(np.linalg.eigvalsh(p.hessian)))
    exact_var = exact_var[::-1][:2] if np.all(order == np.arange(p.dim)[::-1]) else exact_var[order][:2]
    z = z_critical(0.999, 3)
    measured = np.array([r.variance for r in top])
    se = np.array([r.variance_stderr for r in top])
    assert np.all(np.abs(measured - exact_var) < z * se), (measured, exact_var, se)
    # The library's own prediction (additive noise at θ_min) passes the same test; it differs from the exact
    # multiplicative law by O(η/(1−μ)·κ·Tr H), 1.3 % here.
    pred = np.array([r.predicted for r in top])
    assert np.all(np.abs(measured - pred) < z * se)
    assert np.allclose(pred, exact_var, rtol=0.02)
    # A wrong factor: forgetting the without-replacement factor must fail the same test.
    wrong = pred * (n - 1) / (n - s)
    assert not np.all(np.abs(measured - wrong) < z * se)
    # The same test along the eigenvectors taken at the stationary mean (the local OU picture), where H and C
    # equal those at the minimum up to the multiplicative noise's O(|θ̄ − θ*|) change.
    at_mean = [r for r in rows if r.kind == "eigenvector-at-mean"]
    assert [r.curvature for r in at_mean] == pytest.approx(lam[:2], rel=1e-8)
    assert all(abs(r.ratio - 1) < z * r.ratio_stderr for r in at_mean)
    assert abs(out.excess - exact_loss) < z * out.excess_stderr
    # The fluctuation–dissipation estimate ½⟨O_R⟩ (momentum included) of the same excess.
    assert abs(out.e_fdr - exact_loss) < z * out.e_fdr_stderr
    for r in rows:
        assert np.allclose(r.profile_ratio, 1.0, atol=1e-6)
    assert abs(out.distance_in_spreads) < 1.0
    # C against the data loss's H at the stationary mean θ̄, which lies within a fraction of a spread of θ_min, where
    # the exact cosine is taken (C's change over that distance is far below the cosine's error).
    c_pop = pop_cov(p, theta_min)
    cos = np.sum(c_pop * p.hessian) / (np.linalg.norm(c_pop) * np.linalg.norm(p.hessian))
    al = out.alignment_at_mean
    assert abs(al["cosine"] - cos) < z * al["cosine_stderr"], (al["cosine"], cos, al["cosine_stderr"])
    # The typed result survives its JSON (NaN as null) whole.
    back = BasinResult.from_dict(json.loads(json.dumps(jsonable(out), allow_nan=False)))
    assert jsonable(back) == jsonable(out)
    assert back.rows("random") and math.isnan(back.rows("random")[0].predicted)


def test_examine_basin_refuses_what_it_cannot_test_before_any_work():
    _, model, x, y = linear_problem()
    with pytest.raises(ValueError, match="dampening"):
        examine_basin(model, half_mse, x, y, eta=0.1, batch_size=8, momentum=0.5, dampening=0.1)
    bn = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).double()
    with pytest.raises(ValueError, match="batch norm"):
        examine_basin(bn, half_mse, x, y, eta=0.1, batch_size=8)
    with pytest.raises(ValueError, match="window and batches"):
        examine_basin(model, half_mse, x, y, eta=0.1, batch_size=8, settings=BasinSettings(window=1))
    with pytest.raises(ValueError, match="batch_size"):
        examine_basin(model, half_mse, x, y, eta=0.1, batch_size=10**6)


def test_a_diverging_chain_reports_its_exact_step_though_it_reads_the_loss_back_rarely(monkeypatch):
    """The stationary chain checks its loss every ``CHECK_EVERY`` steps (one read-back, not one per step), and still
    names the first step whose loss is not finite: the same step as a check after every step."""
    from nets import stationary
    from nets.stationary import StationaryDiverged

    st = BasinSettings(burn_in=200, mean_steps=100, record_steps=100, eval_every=10, window=50, top_k=1,
                       random_directions=0, control_steps=0, measure_batch=60)
    found = []
    for every in (stationary.CHECK_EVERY, 1):
        monkeypatch.setattr(stationary, "CHECK_EVERY", every)
        _, model, x, y = linear_problem(n=60)
        with torch.no_grad():
            model.weight.zero_()  # the same start for both (nn.Linear's own draw is from the global generator)
        out = examine_basin(model, half_mse, x, y, eta=3.0, batch_size=8, settings=st, seed=0)
        assert isinstance(out, StationaryDiverged), out
        found.append(out.step)
    assert found[0] == found[1] and 1 <= found[0] < 200, found
